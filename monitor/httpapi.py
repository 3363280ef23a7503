"""The health and metrics endpoint: /healthz, /readyz and /metrics over plain HTTP.

It runs on the standard library's threading server in a daemon thread, so a
slow scrape or a stuck readiness check never blocks polling, and the process
can exit without waiting on it.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitor.metrics import Metrics

logger = logging.getLogger("monitor.http")

Readiness = Callable[[], tuple[bool, str]]
READINESS_TIMEOUT_S = 2.0
# A client that connects and then says nothing must not hold a thread forever.
CLIENT_TIMEOUT_S = 10.0
# The serving loop checks for stop() this often; stop() waits up to this long.
SHUTDOWN_POLL_S = 0.5
TEXT = "text/plain; charset=utf-8"


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: HealthServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own server_bind does a reverse DNS lookup (getfqdn) for a
        # name nothing here reads; without DNS that can stall the daemon's start.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "conference-monitor"
    sys_version = ""  # do not advertise the Python version
    timeout = CLIENT_TIMEOUT_S

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, TEXT, b"method not allowed\n", True, "GET, HEAD")

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _respond(self, send_body: bool) -> None:
        try:
            status, content_type, body = self.server.api.route(urlsplit(self.path).path)
        except Exception:
            logger.exception("serving %s failed", self.path, extra={"event": "http.handler_failed"})
            status, content_type, body = HTTPStatus.INTERNAL_SERVER_ERROR, TEXT, b"error\n"
        self._send(status, content_type, body, send_body)

    def _send(
        self, status: int, content_type: str, body: bytes, send_body: bool, allow: str = ""
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
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
    ) -> None:
        self._bind = parse_listen(listen)
        self._shutdown_poll_s = shutdown_poll_s
        self._metrics = metrics
        self._readiness = _SingleFlight(readiness, readiness_timeout_s)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
        self._server = _Server(self._bind, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(self._shutdown_poll_s,),
            name="monitor-http",
            daemon=True,
        )
        self._thread.start()
        logger.debug("listening on %s:%d", *self.address, extra={"event": "http.listening"})

    def stop(self) -> None:
        """Stop accepting, close the socket and wait for the serving loop to end."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def route(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        if path == "/healthz":
            return HTTPStatus.OK, TEXT, b"ok\n"
        if path == "/readyz":
            ready, detail = self._readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return status, TEXT, (detail + "\n").encode()
        if path == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE_LATEST, self._metrics.render()
        return HTTPStatus.NOT_FOUND, TEXT, b"not found\n"
