"""A loopback HTTP server for tests that fetch over real sockets.

    server = FeedServer()                      # listening on 127.0.0.1:<random port> at once
    server.route("/rss", body=b"<rss ...>", headers={"Content-Type": "application/rss+xml"})
    server.route("/moved", status=301, headers={"Location": server.url("/rss")})
    server.route("/slow", handler=drip)        # drip(request_handler) writes the whole response
    requests.get(server.url("/rss"))
    server.requests                            # [("GET", "/rss", {"Host": ..., ...})]
    server.close()

Routes match the request path exactly, first with its query string, then without it. Unknown
paths answer 404. A route may be replaced at any time, also while requests are in flight.

Two helpers build handlers: `respond(request_handler, status, body, headers)` writes one complete
response, and `sequence(*responses)` answers successive requests with successive
(status, body, headers) tuples, repeating the last one:

    server.route("/flaky", handler=sequence((500, b"", {}), (200, b"<rss ...>", {})))

Responses are HTTP/1.1. A plain route gets a Content-Length for its body unless `headers` sets
Content-Length (so a test can lie about it) or `Transfer-Encoding: chunked` (then the body is sent
as one chunk and a terminating chunk). A `handler` writes status line, headers and body itself;
the connection is closed after it, so the handler need not frame the body.
"""

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Handler = Callable[[BaseHTTPRequestHandler], None]


class _Route:
    def __init__(self, body: bytes, status: int, headers: dict, handler: Handler | None):
        self.body = body
        self.status = status
        self.headers = headers
        self.handler = handler


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        feed_server = self.server.feed_server
        feed_server._record(self.command, self.path, dict(self.headers.items()))
        route = feed_server._find(self.path)
        if route is None:
            self._send(404, {"Content-Type": "text/plain"}, b"not found\n")
        elif route.handler is not None:
            self.close_connection = True
            route.handler(self)
        else:
            self._send(route.status, route.headers, route.body)

    def _send(self, status: int, headers: dict, body: bytes) -> None:
        names = {name.lower() for name in headers}
        chunked = any(
            name.lower() == "transfer-encoding" and value.lower() == "chunked"
            for name, value in headers.items()
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if not chunked and "content-length" not in names:
            self.send_header("Content-Length", str(len(body)))
        if "content-length" in names:
            # The declared length may be a lie; closing keeps the next request off this socket.
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD" or status in (204, 304):
            return
        if chunked:
            if body:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # keep test output quiet


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    feed_server: "FeedServer"

    def handle_error(self, request, client_address) -> None:
        # Clients in tests hang up on purpose (deadline, size cap): a broken pipe is expected.
        pass


class FeedServer:
    """ThreadingHTTPServer on 127.0.0.1, random port, serving in a daemon thread."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.feed_server = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"feedserver-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def route(
        self,
        path: str,
        body: bytes = b"",
        status: int = 200,
        headers: dict | None = None,
        handler: Handler | None = None,
    ) -> None:
        with self._lock:
            self._routes[path] = _Route(body, status, dict(headers or {}), handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FeedServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _record(self, method: str, path: str, headers: dict) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def _find(self, path: str) -> _Route | None:
        with self._lock:
            return self._routes.get(path) or self._routes.get(path.split("?", 1)[0])


def respond(
    request_handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict | None = None,
) -> None:
    """Write one complete response (with Content-Length) from inside a handler."""
    request_handler._send(status, dict(headers or {}), body)


def sequence(*responses: tuple[int, bytes, dict]) -> Handler:
    """A handler answering the n-th request with the n-th (status, body, headers); the last
    one repeats."""
    served = []
    lock = threading.Lock()

    def handler(request_handler: BaseHTTPRequestHandler) -> None:
        with lock:
            index = min(len(served), len(responses) - 1)
            served.append(index)
        respond(request_handler, *responses[index])

    return handler
