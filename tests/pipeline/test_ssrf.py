"""Feed URLs cannot reach loopback, private or metadata addresses: not when a source is saved,
not when it is fetched, in whatever spelling.

Only loopback is ever connected to here: the other ranges are checked without a connection
(fetch.check_url resolves but does not connect), so a broken check cannot send traffic anywhere.
"""

import base64

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from pipeline import fetch
from pipeline.fetch import FetchError, fetch_feed
from pipeline.models import Source, validate_feed_url

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'

# Each is 127.0.0.1 (or ::1) written another way; the feed server listens there.
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",  # decimal
    "0177.0.0.1",  # octal
    "0x7f.1",  # hexadecimal, two parts
    "0x7f000001",
    "017700000001",
    "127.1",  # short form
    "LOCALHOST",
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
]
NON_PUBLIC_URLS = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://[fe80::1]/",
    "http://10.0.0.1/feed",
    "http://172.16.0.1/feed",
    "http://192.168.1.1/feed",
    "http://100.64.0.1/feed",  # CGNAT
    "http://[fc00::1]/feed",  # unique local
    "http://[fd12:3456::1]/feed",
    "http://0/feed",  # 0.0.0.0 reaches the local host on Linux
    "http://[::]/feed",
    "http://[::1]/feed",
    "http://[2002:7f00:1::]/feed",  # 6to4 wrapping 127.0.0.1
    "http://[fec0::1]/feed",  # site-local
    "http://0xa9fea9fe/latest/meta-data/",  # 169.254.169.254 in hexadecimal
]


@pytest.fixture
def loopback_server(feed_server, settings):
    """The feed server with private addresses refused again (the fixture allows them)."""
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False
    feed_server.route("/rss", body=RSS)
    return feed_server


# --- At fetch time ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_fetch_refuses_loopback_in_any_spelling(loopback_server, host):
    url = f"http://{host}:{loopback_server.port}/rss"

    with pytest.raises(FetchError) as caught:
        fetch_feed(url)

    assert caught.value.reason == "private_address"
    assert loopback_server.requests == []


@pytest.mark.parametrize("url", NON_PUBLIC_URLS)
def test_non_public_addresses_are_refused_before_any_connection(settings, url):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False

    with pytest.raises(FetchError) as caught:
        fetch.check_url(url)

    assert caught.value.reason == "private_address"


@pytest.mark.parametrize(
    "address", ["2002:7f00:1::", "2002:a00:1::", "fec0::1", "::ffff:a9fe:a9fe", "100.64.0.1"]
)
def test_ipv6_wrapping_a_private_ipv4_address_is_not_public(address):
    assert not fetch._is_public_address(address)


def test_a_public_6to4_address_is_public():
    assert fetch._is_public_address("2002:5db8:d822::1")  # wraps 93.184.216.34


def test_fetch_ignores_netrc_credentials(feed_server, monkeypatch, tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login reader password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    feed_server.route("/rss", body=RSS)

    fetch_feed(feed_server.url("/rss"))

    [(_, _, headers)] = feed_server.requests
    assert "Authorization" not in headers
    assert base64.b64encode(b"reader:s3cret").decode() not in str(headers)


def test_fetch_never_goes_through_an_environment_proxy(feed_server, monkeypatch):
    from tests.feedserver import FeedServer

    with FeedServer() as proxy:
        proxy.route("/rss", body=b"from the proxy")
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url(""))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        feed_server.route("/rss", body=RSS)

        assert fetch_feed(feed_server.url("/rss")).content == RSS
        assert proxy.requests == []


# --- When a source is saved ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [*NON_PUBLIC_URLS, *(f"http://{host}/rss" for host in LOOPBACK_SPELLINGS)],
)
def test_a_source_on_a_non_public_address_cannot_be_saved(db, settings, url):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False

    with pytest.raises(ValidationError, match="non-public address"):
        Source.objects.create(name="internal", url=url)

    assert not Source.objects.exists()


@pytest.mark.parametrize("url", ["ftp://example.com/feed.xml", "file:///etc/passwd"])
def test_a_source_must_be_http_or_https(db, url):
    with pytest.raises(ValidationError, match="not http or https"):
        Source.objects.create(name="odd", url=url)


def test_a_source_on_loopback_can_be_saved_when_private_feeds_are_allowed(db, settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = True

    Source.objects.create(name="demo", url="http://127.0.0.1:8001/news.xml")

    assert Source.objects.count() == 1


def test_a_public_address_and_a_name_that_does_not_resolve_yet_are_accepted(db, settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False

    Source.objects.create(name="literal", url="https://93.184.216.34/rss")
    # .invalid never resolves: the fetch checks the address when there is one.
    Source.objects.create(name="later", url="https://feeds.newsbeat.invalid/rss")

    assert Source.objects.count() == 2


def test_the_validator_names_the_address(settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False

    with pytest.raises(ValidationError) as caught:
        validate_feed_url("http://169.254.169.254/latest/meta-data/")

    assert caught.value.messages == [
        "feed http://169.254.169.254/latest/meta-data/ resolves to non-public address "
        "169.254.169.254"
    ]


def test_the_admin_form_refuses_a_metadata_address(admin_client, settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False

    response = admin_client.post(
        "/admin/pipeline/source/add/",
        {"name": "metadata", "url": "http://169.254.169.254/latest/meta-data/", "kind": "news"},
    )

    assert response.status_code == 200  # the form again, with the error
    assert "non-public address 169.254.169.254" in response.content.decode()
    assert not Source.objects.exists()


def test_seed_demo_refuses_loopback_samples_unless_private_feeds_are_allowed(db, settings):
    settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS = False

    with pytest.raises(CommandError, match="NEWSBEAT_ALLOW_PRIVATE_FEEDS=1"):
        call_command("seed_demo", sample_base_url="http://127.0.0.1:8001/", verbosity=0)

    assert not Source.objects.exists()
