"""`/status/` rendered by headless Chromium (the Debian `chromium` package): the page paints and
the run charts are drawn.

Chromium takes no cookie on its command line, so the browser first opens a test-only view that
sets the session cookie of a logged-in staff user and sends it on to the page.
"""

import shutil
import struct
import subprocess
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponseRedirect
from django.test import Client
from django.urls import include, path
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from monitoring.models import Status, TaskExecution

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs the Debian chromium package: apt-get install chromium"
    ),
]

SUCCEEDED_GREEN = (0x2E, 0x7D, 0x32)
FAILED_RED = (0xC6, 0x28, 0x28)


def enter(request: HttpRequest) -> HttpResponseRedirect:
    """Test only: give the browser the session cookie named in the query, then go on."""
    response = HttpResponseRedirect(request.GET["next"])
    response.set_cookie(settings.SESSION_COOKIE_NAME, request.GET["session"])
    return response


urlpatterns = [path("test-enter/", enter), path("", include("project.urls"))]


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,900",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what
    Chromium writes), with the five PNG row filters undone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0), (depth, interlace)
            assert colour in (2, 6), colour
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    step = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * step
    previous = bytearray(stride)
    pixels = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[i - step] if i >= step else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                near = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + near) & 0xFF
        pixels.extend(tuple(line[x : x + 3]) for x in range(0, stride, step))
        previous = line
    return width, height, pixels


@pytest.fixture
def page_url(live_server, settings, transactional_db):
    """The URL that opens /status/ as a logged-in staff user, with one job's 30 runs: the
    last one failed, the one before succeeded, so the job is late (an orange badge: the
    only green and red on the page are the bars)."""
    settings.ROOT_URLCONF = __name__
    interval = IntervalSchedule.objects.create(every=900, period=IntervalSchedule.SECONDS)
    job = PeriodicTask.objects.create(
        name="poll-news", task="pipeline.poll_news", interval=interval
    )
    now = timezone.now()
    for i in range(30):
        started = now - timedelta(minutes=5 + 15 * (29 - i))
        TaskExecution.objects.create(
            task_id=f"run-{i}",
            task_name=job.task,
            periodic_task_name=job.name,
            status=Status.FAILED if i % 5 == 4 else Status.SUCCEEDED,
            started_at=started,
            duration=timedelta(seconds=1 + i % 7),
        )
    client = Client()
    client.force_login(User.objects.create_user("alice", is_staff=True))
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return f"{live_server.url}/test-enter/?session={session}&next=/status/"


def test_status_page_draws_one_bar_per_run_in_chromium(page_url, tmp_path):
    dom = chromium(tmp_path, page_url, "--dump-dom").stdout

    assert 'data-job="poll-news"' in dom
    chart = dom[dom.index('<svg class="nb-chart"') : dom.index("</svg>", dom.index("nb-chart"))]
    assert chart.count("<rect ") == 30


def test_status_page_screenshot_shows_the_chart_bars(page_url, tmp_path):
    shot = tmp_path / "status.png"

    chromium(tmp_path, page_url, f"--screenshot={shot}")

    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 900)
    assert len(set(pixels)) > 20, "the screenshot is blank"
    # 24 succeeded and 6 failed bars, each 3 px wide and at least 4 px high (a run of 1 s
    # next to the longest of 7 s in a 32 px chart).
    assert pixels.count(SUCCEEDED_GREEN) >= 24 * 3 * 4
    assert pixels.count(FAILED_RED) >= 6 * 3 * 4
