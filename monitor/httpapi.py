"""The daemon's HTTP listener: /healthz, /readyz and /metrics, plus routes others register.

It runs on a bounded listener (monitor/httppool.py: one selector thread, a
fixed pool of daemon worker threads, a connection cap), so a slow scrape, a
stuck readiness check or a flood of idle connections never blocks polling or
grows the thread count, and the process can exit without waiting on it.
Features that need HTTP (status callbacks, the history API) register a
`Route` with `add_route` before `start()`; a route sees a `Request` (body
already read, within its size cap) and returns a `Response`.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitor.httppool import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_WORKERS,
    HEADER_TIMEOUT_S,
    BoundedListener,
    Connection,
)
from monitor.metrics import Metrics

logger = logging.getLogger("monitor.http")

Readiness = Callable[[], tuple[bool, str]]
READINESS_TIMEOUT_S = 2.0
# The longest a reply may take to reach a client that reads slowly.
CLIENT_TIMEOUT_S = 10.0
# The serving loop checks for stop() this often; stop() waits up to this long.
SHUTDOWN_POLL_S = 0.5
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """One request as a route sees it; `body` is complete (never more than the route's cap)."""

    method: str
    path: str  # without the query string
    target: str  # path and query exactly as the client sent them
    query: Mapping[str, list[str]]
    headers: Message  # case-insensitive: headers.get("content-type")
    body: bytes
    client: str  # the peer's address


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """`path` matches exactly, or as a prefix when `prefix` is true (e.g. "/api/v1/")."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET", "HEAD")
    prefix: bool = False
    max_body_bytes: int = 0  # a larger declared body is refused with 413 before it is read
    on_too_large: Callable[[], None] | None = None  # told of each such refusal (metrics)
    # How the listener's own refusals (405, 400, 411, 413) look on this route: the
    # API documents JSON errors. (content type, body) for a status and a message.
    error_body: Callable[[int, str], tuple[str, bytes]] | None = None

    def refusal(self, status: int, message: str) -> tuple[str, bytes]:
        if self.error_body is not None:
            return self.error_body(status, message)
        return TEXT, message.encode() + b"\n"

    def matches(self, path: str) -> bool:
        return path.startswith(self.path) if self.prefix else path == self.path


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" (port 0 picks a free one) into (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 listen address as [addr]:port, got {listen!r}")
    return host, int(port_text)


class _SingleFlight:
    """Runs a readiness check with a deadline; concurrent probes share one run.

    The check runs on a daemon thread: a hung check cannot block shutdown, and
    at most one hung thread exists however often the probe is retried.
    """

    def __init__(self, fn: Readiness, timeout_s: float) -> None:
        self._fn = fn
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._inflight: Future[tuple[bool, str]] | None = None

    def _run(self, future: Future[tuple[bool, str]]) -> None:
        try:
            ok, detail = self._fn()
            future.set_result((bool(ok), str(detail)))
        except BaseException as exc:  # reported to the prober, never lost in a thread
            future.set_exception(exc)

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if self._inflight is None or self._inflight.done():
                self._inflight = Future()
                threading.Thread(
                    target=self._run, args=(self._inflight,), name="monitor-readiness", daemon=True
                ).start()
            future = self._inflight
        try:
            return future.result(timeout=self._timeout_s)
        except FutureTimeout:
            return False, "readiness check timed out"
        except BaseException as exc:  # raised in the check's thread; only reported here
            return False, f"readiness check failed: {str(exc) or type(exc).__name__}"


class _Handler(BaseHTTPRequestHandler):
    """Parses and answers one request whose head the listener has already read."""

    server_version = "conference-monitor"
    sys_version = ""  # do not advertise the Python version

    def __init__(self, conn: Connection, reader: io.BufferedIOBase, api: HealthServer) -> None:
        self._reader = reader
        self.api = api
        super().__init__(conn.sock, conn.address, None)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = self._reader
        self.wfile = self.connection.makefile("wb")

    def do_GET(self) -> None:
        self._respond()

    def do_HEAD(self) -> None:
        self._respond()

    def __getattr__(self, name: str) -> Any:
        # Any other method (POST, TRACE, QUERY...) goes to the route, which answers 405
        # with Allow when it does not take it: a client learns what to use, never 501.
        if name.startswith("do_") and name[3:].isalpha() and name[3:].isupper():
            return self._respond
        raise AttributeError(name)

    def _respond(self) -> None:
        send_body = self.command != "HEAD"
        path = urlsplit(self.path).path
        route = self.api.find_route(path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, TEXT, b"not found\n", send_body)
            return
        if self.command not in route.methods:
            allow = ", ".join(route.methods)
            self._refuse(route, HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", allow)
            return
        body = self._read_body(route)
        if body is None:
            return
        request = Request(
            method=self.command,
            path=path,
            target=self.path,
            query=parse_qs(urlsplit(self.path).query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            client=str(self.client_address[0]),
        )
        try:
            response = route.handler(request)
        except Exception:
            logger.exception("serving %s failed", path, extra={"event": "http.handler_failed"})
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"error\n")
        self._send(
            response.status, response.content_type, response.body, send_body, "", response.headers
        )

    def _read_body(self, route: Route) -> bytes | None:
        """The request body within the route's cap, or None after answering the error."""
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._refuse(route, HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted")
            return None
        if length_text is None:
            return b""
        if not length_text.isdigit():
            self.close_connection = True
            self._refuse(route, HTTPStatus.BAD_REQUEST, "bad Content-Length")
            return None
        length = int(length_text)
        if length > route.max_body_bytes:
            if route.on_too_large is not None:
                route.on_too_large()
            self.close_connection = True  # the unread body must not be parsed as a request
            self._refuse(route, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            return None
        try:
            body = self.rfile.read(length) if length else b""
        except OSError:  # the client timed out or went away mid-body
            self.close_connection = True
            return None
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _refuse(self, route: Route, status: int, message: str, allow: str = "") -> None:
        content_type, body = route.refusal(status, message)
        self._send(status, content_type, body, True, allow)

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        send_body: bool,
        allow: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.connection.settimeout(CLIENT_TIMEOUT_S)  # a client that never reads cannot hold us
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        names = {name.lower() for name, _ in headers}
        if "cache-control" not in names:
            self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.client_address[0], *args, extra={"event": "http.request"})


class HealthServer:
    """Serves liveness, readiness and Prometheus metrics on one listen address."""

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        readiness: Readiness,
        *,
        readiness_timeout_s: float = READINESS_TIMEOUT_S,
        shutdown_poll_s: float = SHUTDOWN_POLL_S,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        self._bind = parse_listen(listen)
        self._shutdown_poll_s = shutdown_poll_s
        self._workers, self._max_connections = workers, max_connections
        self._header_timeout_s = header_timeout_s
        self._metrics = metrics
        self._readiness = _SingleFlight(readiness, readiness_timeout_s)
        self._server: BoundedListener | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[Route] = [
            Route("/healthz", lambda _r: Response(HTTPStatus.OK, b"ok\n")),
            Route("/readyz", self._ready),
            Route("/metrics", self._render_metrics),
        ]

    def add_route(self, route: Route) -> None:
        """Serve `route` too; call before `start()`. The first match wins."""
        if self._server is not None:
            raise RuntimeError("add routes before the server starts")
        self._routes.append(route)

    def find_route(self, path: str) -> Route | None:
        return next((r for r in self._routes if r.matches(path)), None)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): with port 0 this is where the OS put it."""
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind now, so a taken port fails the daemon's start, then serve in a thread."""
        if self._server is not None:
            raise RuntimeError("HealthServer is already started")
        self._server = BoundedListener(
            self._bind,
            self._serve,
            workers=self._workers,
            max_connections=self._max_connections,
            header_timeout_s=self._header_timeout_s,
            poll_s=self._shutdown_poll_s,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="monitor-http", daemon=True
        )
        self._thread.start()
        logger.debug("listening on %s:%d", *self.address, extra={"event": "http.listening"})

    def _serve(self, conn: Connection, reader: io.BufferedIOBase) -> None:
        _Handler(conn, reader, self)

    def stop(self) -> None:
        """Stop accepting, close the socket and wait for the serving loop to end."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        if thread is not None:
            thread.join()
        server.server_close()

    def route(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path` (kept for direct callers)."""
        found = self.find_route(path)
        if found is None:
            return HTTPStatus.NOT_FOUND, TEXT, b"not found\n"
        response = found.handler(
            Request("GET", path, path, {}, Message(), b"", "")  # a direct call, not over the socket
        )
        return response.status, response.content_type, response.body

    def _ready(self, _request: Request) -> Response:
        ready, detail = self._readiness()
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return Response(status, (detail + "\n").encode())

    def _render_metrics(self, _request: Request) -> Response:
        return Response(HTTPStatus.OK, self._metrics.render(), CONTENT_TYPE_LATEST)
