"""Fetch a feed over HTTP and hand back its bytes.

One call to `fetch_feed` is bounded on every side: http/https only, no loopback, private or other
non-public addresses (checked on every redirect hop and again on the connected socket, so a DNS
answer that changes between the check and the connect cannot slip through), redirects followed by
hand, a size cap counted on the decoded body (a gzip bomb is refused), connect and read timeouts,
and one wall-clock deadline for all attempts together. Transient failures (connection errors,
timeouts, 429, 5xx) are retried with exponential backoff and jitter; nothing else is.
"""

import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import tenacity
import urllib3.exceptions
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

logger = logging.getLogger(__name__)

USER_AGENT = "Newsbeat/0.1 (feed fetcher)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
MAX_REDIRECTS = 5
CHUNK_SIZE = 64 * 1024
# Backoff unit in seconds: waits are about 1, 2, 4 ... units plus up to one unit of jitter, at
# most 16 units. Tests shrink it with settings.NEWSBEAT_FETCH_BACKOFF.
DEFAULT_BACKOFF = 1.0
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Longer validators are dropped (the next GET is then unconditional): they must fit Source.etag
# and Source.last_modified. A real Last-Modified is a 29-character HTTP date.
ETAG_MAX = 500
LAST_MODIFIED_MAX = 100


class FetchError(Exception):
    """A feed could not be fetched. The message names the URL and what happened.

    `reason` is a short code stored on the source ('http_404', 'timeout', 'too_large', ...);
    `transient` says whether trying again later may succeed; `retry_after` is the delay in seconds
    the server asked for (429/503 with Retry-After), else None.
    """

    def __init__(
        self, message: str, reason: str, transient: bool = False, retry_after: float | None = None
    ) -> None:
        # All four in args, so the error survives pickling and Celery's JSON result backend.
        super().__init__(message, reason, transient, retry_after)
        self.message = message
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class FetchResult:
    url: str  # final URL after redirects
    status: int  # 200 or 304
    content: bytes  # b"" on 304
    etag: str | None
    last_modified: str | None
    content_type: str | None
    attempts: int

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def fetch_feed(
    url: str, *, etag: str | None = None, last_modified: str | None = None
) -> FetchResult:
    """GET a feed, conditionally when `etag` or `last_modified` is given.

    Returns a FetchResult with status 200 and the decoded body, or status 304 and b"". Raises
    FetchError for anything else, after retrying transient failures within the deadline.
    """
    started = time.monotonic()
    deadline_seconds = settings.NEWSBEAT_FETCH_DEADLINE
    deadline = started + deadline_seconds
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        # stop_before_delay rather than stop_after_delay: never sleep into the deadline only to
        # find there is no time left for the attempt.
        stop=(
            tenacity.stop_after_attempt(settings.NEWSBEAT_FETCH_ATTEMPTS)
            | tenacity.stop_before_delay(deadline_seconds)
        ),
        wait=_backoff_wait(),
        before_sleep=_log_retry,
        reraise=True,
    )
    with _session() as session:
        try:
            for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    result = _fetch_once(session, url, headers, deadline, number)
        except FetchError as error:
            logger.warning(
                "event=fetch_failed url=%s reason=%s attempts=%d ms=%d",
                _display(url),
                error.reason,
                retrying.statistics.get("attempt_number", 1),
                _ms_since(started),
            )
            raise
    logger.info(
        "event=fetch_done url=%s status=%s bytes=%d ms=%d attempts=%d",
        _display(result.url),
        result.status,
        len(result.content),
        _ms_since(started),
        result.attempts,
    )
    return result


def _fetch_once(
    session: requests.Session, url: str, headers: dict, deadline: float, attempts: int
) -> FetchResult:
    """One attempt: follow up to MAX_REDIRECTS redirects by hand, checking every hop."""
    seen = {url}
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        check_url(current)
        with _get(session, current, headers, deadline) as response:
            if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                target = _redirect_target(current, response.headers["Location"])
                if target in seen:
                    raise FetchError(
                        f"feed {_display(url)} redirects in a loop at {_display(target)}",
                        "redirect_loop",
                    )
                logger.debug(
                    "event=fetch_redirect url=%s status=%s to=%s",
                    _display(current),
                    response.status_code,
                    _display(target),
                )
                seen.add(target)
                current = target
                continue
            _check_status(current, response)
            etag = _bounded(response.headers.get("ETag"), ETAG_MAX)
            last_modified = _bounded(response.headers.get("Last-Modified"), LAST_MODIFIED_MAX)
            not_modified = response.status_code == 304
            if not_modified:
                # A 304 need not repeat the validators; the ones sent are still current.
                etag = etag or headers.get("If-None-Match")
                last_modified = last_modified or headers.get("If-Modified-Since")
            return FetchResult(
                url=current,
                status=response.status_code,
                content=b"" if not_modified else _read_body(response, deadline),
                etag=etag,
                last_modified=last_modified,
                content_type=response.headers.get("Content-Type"),
                attempts=attempts,
            )
    raise FetchError(
        f"feed {_display(url)} redirects more than {MAX_REDIRECTS} times", "too_many_redirects"
    )


def _get(session: requests.Session, url: str, headers: dict, deadline: float) -> requests.Response:
    remaining = _remaining(url, deadline)
    timeout = (
        min(settings.NEWSBEAT_FETCH_CONNECT_TIMEOUT, remaining),
        min(settings.NEWSBEAT_FETCH_READ_TIMEOUT, remaining),
    )
    try:
        return session.get(
            url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
        )
    except requests.Timeout as error:
        raise FetchError(f"feed {_display(url)} timed out: {error}", "timeout", True) from error
    except requests.exceptions.SSLError as error:
        # A certificate problem will not fix itself in a few seconds.
        raise FetchError(f"feed {_display(url)} failed TLS: {error}", "tls_error") from error
    except requests.ConnectionError as error:
        raise FetchError(
            f"feed {_display(url)} could not connect: {error}", "connection_error", True
        ) from error
    except requests.RequestException as error:
        raise FetchError(f"feed {_display(url)} is not a valid URL: {error}", "bad_url") from error


def _check_status(url: str, response: requests.Response) -> None:
    status = response.status_code
    if status in (200, 304):
        return
    message = f"feed {_display(url)} returned {status}"
    if status == 429 or status >= 500:
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        raise FetchError(message, f"http_{status}", True, retry_after)
    raise FetchError(message, f"http_{status}")


def _read_body(response: requests.Response, deadline: float) -> bytes:
    """Read the decoded body, refusing it past the size cap or the deadline.

    Content-Length (the size on the wire) is checked first; the decoded bytes are counted while
    streaming, so a small compressed body that inflates past the cap is cut off too. read1 returns
    whatever one socket read brings instead of waiting for a full chunk, so a server sending one
    byte a second meets the deadline check between reads.
    """
    url = response.url
    max_bytes = settings.NEWSBEAT_FETCH_MAX_BYTES
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(
            f"feed {_display(url)} is {declared} bytes, over the {max_bytes} byte cap", "too_large"
        )
    chunks = []
    size = 0
    while True:
        _remaining(url, deadline)
        try:
            chunk = response.raw.read1(CHUNK_SIZE, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as error:
            raise FetchError(f"feed {_display(url)} timed out: {error}", "timeout", True) from error
        except urllib3.exceptions.DecodeError as error:
            raise FetchError(
                f"feed {_display(url)} has a broken Content-Encoding: {error}", "decode_error"
            ) from error
        except urllib3.exceptions.HTTPError as error:
            raise FetchError(
                f"feed {_display(url)} broke off: {error}", "connection_error", True
            ) from error
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"feed {_display(url)} is over the {max_bytes} byte cap", "too_large")
        chunks.append(chunk)


def _remaining(url: str, deadline: float) -> float:
    """Seconds left before the deadline; raises FetchError('deadline') when none are."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(
            f"feed {_display(url)} took longer than {settings.NEWSBEAT_FETCH_DEADLINE} s",
            "deadline",
            True,
        )
    return remaining


# --- Addresses ----------------------------------------------------------------------------------


def check_url(url: str) -> None:
    """Refuse a URL that is not http/https or whose host resolves to a non-public address.

    Raises FetchError: 'bad_scheme', 'bad_url', 'private_address', or 'dns_error' when the name
    does not resolve. The host goes through the system resolver, the one the connection uses,
    so the unusual spellings of an address it accepts (2130706433, 0177.0.0.1, 0x7f.1 and 127.1
    are all 127.0.0.1; so is ①②⑦.0.0.1 after IDNA mapping) are checked as the address they
    connect to. Source.url is validated with this too (pipeline/models.py).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"feed {_display(url)} is not http or https", "bad_scheme")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as error:  # a port that is not a number or out of range
        raise FetchError(f"feed {_display(url)} has a bad port: {error}", "bad_url") from error
    if not host:
        raise FetchError(f"feed {_display(url)} has no host", "bad_url")
    if settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS:
        return
    port = port or (443 if parts.scheme == "https" else 80)
    for address in _resolve(url, host, port):
        if not _is_public_address(address):
            raise FetchError(
                f"feed {_display(url)} resolves to non-public address {address}",
                "private_address",
            )


def _resolve(url: str, host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        # EAI_AGAIN is a resolver hiccup; a name that does not exist stays missing.
        transient = error.errno == socket.EAI_AGAIN
        raise FetchError(
            f"feed {_display(url)} host {host} does not resolve: {error}", "dns_error", transient
        ) from error
    return [info[4][0] for info in infos]


def _is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if ip.version == 6:
        # An IPv6 address that carries an IPv4 one (mapped ::ffff:a.b.c.d, 6to4 2002::/16,
        # Teredo) is only as public as that IPv4 address; site-local fec0::/10 is deprecated
        # but still routed inside some networks.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not _is_public_address(str(embedded)):
            return False
        if ip.is_site_local:
            return False
    # is_global already excludes loopback, private, link-local, shared (100.64/10), unspecified
    # and documentation ranges; it counts multicast and NAT64 (64:ff9b::/96) as global.
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


class _PublicOnlyConnectionMixin:
    """Check the address the socket actually connected to.

    `check_url` resolves the name before the request, but the connection resolves it again: a
    DNS answer that turns private in between (DNS rebinding) is caught here, before any byte of
    the request is sent.
    """

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if settings.NEWSBEAT_ALLOW_PRIVATE_FEEDS:
            return sock
        address = sock.getpeername()[0]
        if not _is_public_address(address):
            sock.close()
            raise FetchError(
                f"feed host {self.host} connected to non-public address {address}",
                "private_address",
            )
        return sock


class _PublicOnlyHTTPConnection(_PublicOnlyConnectionMixin, HTTPConnection):
    pass


class _PublicOnlyHTTPSConnection(_PublicOnlyConnectionMixin, HTTPSConnection):
    pass


class _PublicOnlyHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicOnlyHTTPConnection


class _PublicOnlyHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicOnlyHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _PublicOnlyHTTPPool,
            "https": _PublicOnlyHTTPSPool,
        }


def _session() -> requests.Session:
    session = requests.Session()
    # Environment proxies would bypass the address checks, and .netrc would leak credentials.
    session.trust_env = False
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = ACCEPT
    adapter = _PublicOnlyAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --- Retries ------------------------------------------------------------------------------------


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, FetchError) and error.transient


def _backoff_wait() -> Callable[[tenacity.RetryCallState], float]:
    unit = getattr(settings, "NEWSBEAT_FETCH_BACKOFF", DEFAULT_BACKOFF)
    backoff = tenacity.wait_exponential_jitter(multiplier=unit, jitter=unit, max=16 * unit)

    def wait(retry_state: tenacity.RetryCallState) -> float:
        # Never come back sooner than the server asked; stop_before_delay gives up instead when
        # the asked-for delay would run past the deadline.
        error = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(error, "retry_after", None) or 0.0
        return max(backoff(retry_state), asked)

    return wait


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    error = retry_state.outcome.exception()
    logger.info(
        "event=fetch_retry reason=%s attempt=%d wait_ms=%d error=%s",
        getattr(error, "reason", type(error).__name__),
        retry_state.attempt_number,
        retry_state.upcoming_sleep * 1000,
        error,
    )


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- Helpers ------------------------------------------------------------------------------------


def _redirect_target(current: str, location: str) -> str:
    """The absolute URL a Location header points to, without its fragment."""
    parts = urlsplit(urljoin(current, location.strip()))
    return urlunsplit(parts._replace(fragment=""))


def _bounded(value: str | None, limit: int) -> str | None:
    return value if value and len(value) <= limit else None


def _display(url: str) -> str:
    """The URL without user:password, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
