import gzip
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from pipeline import fetch
from pipeline.fetch import FetchError, fetch_feed
from tests.feedserver import respond, sequence

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'


def fetch_error(url: str, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch_feed(url, **kwargs)
    return caught.value


def test_it_returns_the_body_and_validators_of_a_feed(feed_server):
    headers = {
        "Content-Type": "application/rss+xml; charset=utf-8",
        "ETag": '"v1"',
        "Last-Modified": "Mon, 23 Nov 2026 09:00:00 GMT",
    }
    feed_server.route("/rss", body=RSS, headers=headers)

    result = fetch_feed(feed_server.url("/rss"))

    assert (result.status, result.content, result.attempts) == (200, RSS, 1)
    assert result.etag == '"v1"'
    assert result.last_modified == "Mon, 23 Nov 2026 09:00:00 GMT"
    assert result.content_type == "application/rss+xml; charset=utf-8"
    assert not result.not_modified


def test_it_drops_a_validator_too_long_to_store(feed_server):
    feed_server.route("/rss", body=RSS, headers={"ETag": '"' + "x" * 600 + '"'})

    assert fetch_feed(feed_server.url("/rss")).etag is None


def test_it_sends_a_user_agent_and_asks_for_feeds(feed_server):
    feed_server.route("/rss", body=RSS)

    fetch_feed(feed_server.url("/rss"))

    sent = feed_server.requests[0][2]
    assert sent["User-Agent"].startswith("Newsbeat/")
    assert "application/rss+xml" in sent["Accept"]


def test_it_sends_validators_and_reports_not_modified_on_304(feed_server):
    feed_server.route("/rss", status=304, headers={"ETag": '"v1"'})

    result = fetch_feed(
        feed_server.url("/rss"), etag='"v1"', last_modified="Mon, 23 Nov 2026 09:00:00 GMT"
    )

    assert result.not_modified
    assert (result.status, result.content) == (304, b"")
    sent = feed_server.requests[0][2]
    assert sent["If-None-Match"] == '"v1"'
    assert sent["If-Modified-Since"] == "Mon, 23 Nov 2026 09:00:00 GMT"


def test_a_304_without_validators_keeps_the_ones_sent(feed_server):
    feed_server.route("/rss", status=304)

    result = fetch_feed(feed_server.url("/rss"), etag='"v1"', last_modified="Mon, 23 Nov 2026")

    assert (result.etag, result.last_modified) == ('"v1"', "Mon, 23 Nov 2026")


def test_it_sends_no_validators_when_it_has_none(feed_server):
    feed_server.route("/rss", body=RSS)

    fetch_feed(feed_server.url("/rss"))

    sent = feed_server.requests[0][2]
    assert "If-None-Match" not in sent
    assert "If-Modified-Since" not in sent


def test_it_retries_a_500_and_returns_the_next_200(feed_server):
    feed_server.route("/rss", handler=sequence((500, b"oops", {}), (200, RSS, {})))

    result = fetch_feed(feed_server.url("/rss"))

    assert (result.status, result.content, result.attempts) == (200, RSS, 2)
    assert len(feed_server.requests) == 2


def test_it_gives_up_after_the_configured_number_of_attempts(feed_server, settings):
    settings.NEWSBEAT_FETCH_ATTEMPTS = 3
    feed_server.route("/rss", status=503)

    error = fetch_error(feed_server.url("/rss"))

    assert (error.reason, error.transient) == ("http_503", True)
    assert len(feed_server.requests) == 3


def test_it_does_not_retry_a_404(feed_server):
    feed_server.route("/gone", status=404)

    error = fetch_error(feed_server.url("/gone"))

    assert (error.reason, error.transient) == ("http_404", False)
    assert str(error) == f"feed {feed_server.url('/gone')} returned 404"
    assert len(feed_server.requests) == 1


def test_it_waits_as_long_as_retry_after_asks_on_429(feed_server):
    feed_server.route("/rss", handler=sequence((429, b"", {"Retry-After": "1"}), (200, RSS, {})))
    started = time.monotonic()

    result = fetch_feed(feed_server.url("/rss"))

    # The backoff alone is a few hundredths of a second in tests: only Retry-After explains 1 s.
    assert time.monotonic() - started >= 1.0
    assert result.attempts == 2


def test_it_gives_up_at_once_when_retry_after_reaches_past_the_deadline(feed_server, settings):
    settings.NEWSBEAT_FETCH_DEADLINE = 5
    feed_server.route("/rss", status=429, headers={"Retry-After": "3600"})
    started = time.monotonic()

    error = fetch_error(feed_server.url("/rss"))

    assert time.monotonic() - started < 1.0
    assert (error.reason, error.transient, error.retry_after) == ("http_429", True, 3600)
    assert len(feed_server.requests) == 1


def test_retries_stop_before_the_deadline(feed_server, settings):
    settings.NEWSBEAT_FETCH_ATTEMPTS = 50
    settings.NEWSBEAT_FETCH_DEADLINE = 1
    settings.NEWSBEAT_FETCH_BACKOFF = 0.2
    feed_server.route("/rss", status=503)
    started = time.monotonic()

    error = fetch_error(feed_server.url("/rss"))

    # Past the 1 s deadline only by the time of the last request, never by another backoff.
    assert time.monotonic() - started < 1.3
    assert error.reason == "http_503"
    assert len(feed_server.requests) < 50


def test_it_retries_when_the_server_hangs_up_without_answering(feed_server):
    def hang_up(request_handler):
        request_handler.close_connection = True  # no status line at all

    answers = iter([hang_up, lambda handler: respond(handler, 200, RSS)])
    feed_server.route("/rss", handler=lambda handler: next(answers)(handler))

    result = fetch_feed(feed_server.url("/rss"))

    assert (result.content, result.attempts) == (RSS, 2)


def test_it_times_out_a_server_that_never_answers(feed_server, settings):
    settings.NEWSBEAT_FETCH_READ_TIMEOUT = 0.2
    settings.NEWSBEAT_FETCH_ATTEMPTS = 2
    stop = threading.Event()
    feed_server.route("/rss", handler=lambda handler: stop.wait(2))

    try:
        error = fetch_error(feed_server.url("/rss"))
    finally:
        stop.set()

    assert (error.reason, error.transient) == ("timeout", True)
    assert len(feed_server.requests) == 2


def test_it_cuts_off_a_server_that_sends_one_byte_a_second(feed_server, settings):
    settings.NEWSBEAT_FETCH_DEADLINE = 2
    stop = threading.Event()

    def drip(request_handler):
        request_handler.send_response(200)
        request_handler.send_header("Content-Length", "100")
        request_handler.end_headers()
        for _ in range(100):
            if stop.wait(1):
                return
            request_handler.wfile.write(b"x")
            request_handler.wfile.flush()

    feed_server.route("/slow", handler=drip)
    started = time.monotonic()

    try:
        error = fetch_error(feed_server.url("/slow"))
    finally:
        stop.set()

    assert error.reason == "deadline"
    assert 2.0 <= time.monotonic() - started < 3.5
    assert len(feed_server.requests) == 1


def test_it_refuses_a_body_announced_over_the_cap_before_reading_it(feed_server, settings):
    settings.NEWSBEAT_FETCH_MAX_BYTES = 1024
    # The announced length is a lie: reading the body would end in a broken-off download, so
    # too_large can only come from the Content-Length check.
    feed_server.route("/big", body=b"x", headers={"Content-Length": "100000000"})

    error = fetch_error(feed_server.url("/big"))

    assert (error.reason, error.transient) == ("too_large", False)
    assert len(feed_server.requests) == 1


def test_it_refuses_a_chunked_body_over_the_cap(feed_server, settings):
    settings.NEWSBEAT_FETCH_MAX_BYTES = 1024
    feed_server.route("/big", body=b"x" * 4096, headers={"Transfer-Encoding": "chunked"})

    error = fetch_error(feed_server.url("/big"))

    assert (error.reason, error.transient) == ("too_large", False)


def test_it_accepts_a_chunked_body_under_the_cap(feed_server, settings):
    settings.NEWSBEAT_FETCH_MAX_BYTES = 1024
    feed_server.route("/rss", body=RSS, headers={"Transfer-Encoding": "chunked"})

    assert fetch_feed(feed_server.url("/rss")).content == RSS


def test_it_refuses_a_gzip_bomb(feed_server, settings):
    settings.NEWSBEAT_FETCH_MAX_BYTES = 1024 * 1024
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    assert len(bomb) < settings.NEWSBEAT_FETCH_MAX_BYTES  # small on the wire
    feed_server.route("/bomb", body=bomb, headers={"Content-Encoding": "gzip"})

    error = fetch_error(feed_server.url("/bomb"))

    assert error.reason == "too_large"


def test_it_decodes_a_gzip_encoded_feed(feed_server):
    feed_server.route("/rss", body=gzip.compress(RSS), headers={"Content-Encoding": "gzip"})

    assert fetch_feed(feed_server.url("/rss")).content == RSS


def test_it_follows_redirects_and_reports_the_final_url(feed_server):
    feed_server.route("/old", status=301, headers={"Location": "/middle"})
    feed_server.route("/middle", status=302, headers={"Location": feed_server.url("/new")})
    feed_server.route("/new", body=RSS)

    result = fetch_feed(feed_server.url("/old"))

    assert (result.url, result.content) == (feed_server.url("/new"), RSS)
    assert [path for _, path, _ in feed_server.requests] == ["/old", "/middle", "/new"]


def test_it_detects_a_redirect_loop(feed_server):
    feed_server.route("/a", status=302, headers={"Location": "/b"})
    feed_server.route("/b", status=302, headers={"Location": "/a"})

    error = fetch_error(feed_server.url("/a"))

    assert (error.reason, error.transient) == ("redirect_loop", False)
    assert len(feed_server.requests) == 2


def test_it_stops_after_too_many_redirects(feed_server):
    for hop in range(10):
        feed_server.route(f"/r{hop}", status=307, headers={"Location": f"/r{hop + 1}"})

    error = fetch_error(feed_server.url("/r0"))

    assert error.reason == "too_many_redirects"
    assert len(feed_server.requests) == fetch.MAX_REDIRECTS + 1


def test_it_refuses_a_loopback_feed_unless_private_feeds_are_allowed(feed_server, settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False
    feed_server.route("/rss", body=RSS)

    error = fetch_error(feed_server.url("/rss"))

    assert (error.reason, error.transient) == ("private_address", False)
    assert feed_server.requests == []


def test_it_refuses_a_redirect_to_a_private_address(feed_server, settings, monkeypatch):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False
    # Pretend the feed server is on the internet, so only the redirect target is private.
    is_public = fetch._is_public_address
    monkeypatch.setattr(fetch, "_is_public_address", lambda ip: ip == "127.0.0.1" or is_public(ip))
    metadata = "http://169.254.169.254/latest/meta-data/"
    feed_server.route("/rss", status=302, headers={"Location": metadata})

    error = fetch_error(feed_server.url("/rss"))

    # "resolves to": refused before connecting, not only by the check on the connected socket.
    assert str(error) == f"feed {metadata} resolves to non-public address 169.254.169.254"
    assert error.reason == "private_address"


def test_it_refuses_a_host_that_turns_private_between_check_and_connect(
    feed_server, settings, monkeypatch
):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False
    # The check sees a public address; the connection then lands on 127.0.0.1 (DNS rebinding).
    monkeypatch.setattr(fetch, "_resolve", lambda url, host, port: ["93.184.216.34"])
    feed_server.route("/rss", body=RSS)

    error = fetch_error(feed_server.url("/rss"))

    assert error.reason == "private_address"
    assert feed_server.requests == []


@pytest.mark.parametrize(
    "address",
    [
        *("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254"),
        *("100.64.0.1", "0.0.0.0", "224.0.1.1", "240.0.0.1"),
        *("::1", "fe80::1%eth0", "fc00::1", "ff0e::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"),
    ],
)
def test_non_public_addresses_are_not_public(address):
    assert not fetch._is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_internet_addresses_are_public(address):
    assert fetch._is_public_address(address)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/feed.xml", "file:///etc/passwd", "gopher://example.com/"]
)
def test_it_refuses_schemes_other_than_http_and_https(url):
    error = fetch_error(url)

    assert (error.reason, error.transient) == ("bad_scheme", False)


def test_it_refuses_a_redirect_to_a_local_file(feed_server):
    feed_server.route("/rss", status=302, headers={"Location": "file:///etc/passwd"})

    assert fetch_error(feed_server.url("/rss")).reason == "bad_scheme"


def test_it_ignores_proxy_settings_in_the_environment(feed_server, monkeypatch):
    # A proxy that refuses every connection: using it would fail the fetch.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    feed_server.route("/rss", body=RSS)

    assert fetch_feed(feed_server.url("/rss")).content == RSS


def test_it_keeps_credentials_out_of_error_messages(feed_server):
    feed_server.route("/private", status=401)
    url = feed_server.url("/private").replace("://", "://reader:s3cret@")

    error = fetch_error(url)

    assert error.reason == "http_401"
    assert "s3cret" not in str(error)


def test_fetch_error_rebuilds_from_its_args_as_celery_does():
    error = FetchError("feed http://x/y returned 503", "http_503", True, 2.0)

    # Celery's JSON result backend stores exc.args and calls the class with them again.
    copy = FetchError(*json.loads(json.dumps(error.args)))

    assert (str(copy), copy.reason, copy.transient, copy.retry_after) == (
        "feed http://x/y returned 503",
        "http_503",
        True,
        2.0,
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("120", 120.0), (None, None), ("soon", None), ("", None)]
)
def test_retry_after_is_read_as_seconds(value, expected):
    assert fetch._parse_retry_after(value) == expected


def test_retry_after_is_read_as_an_http_date():
    when = datetime.now(UTC) + timedelta(seconds=90)

    seconds = fetch._parse_retry_after(format_datetime(when, usegmt=True))

    assert 85 <= seconds <= 90
