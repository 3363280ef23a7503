"""A Twilio-compatible HTTP server for the Conference API, with a `/_sim/` control interface.

Stdlib only (`ThreadingHTTPServer`, keep-alive, daemon threads) so tests, the
demo and benchmarks run it in-process. A ticker thread applies scripted
status changes on time; a sender thread posts signed status callbacks.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from monitor.simulator.admin import handle_control
from monitor.simulator.api import Reply, handle_api, twilio_error
from monitor.simulator.callbacks import CallbackSender
from monitor.simulator.faults import FaultBook, RequestStats
from monitor.simulator.state import (
    DEFAULT_ACCOUNT_SID,
    Clock,
    SimulatorState,
)

_log = logging.getLogger(__name__)

DEFAULT_AUTH_TOKEN = "simulator-auth-token"
TICK_S = 0.05
IDLE_CONNECTION_TIMEOUT_S = 60.0
# Twilio's list without `Status` returns only in-progress conferences since 2026-09-30
# (twilio-python 9.x docs); pass list_default_status=None for the older "all statuses".
LIST_DEFAULT_STATUS = "in-progress"


class SimulatorServer:
    """The simulator on a background thread; `with SimulatorServer() as sim: sim.url`.

    `clock` drives conference dates, scripts, hidden periods and fault expiry;
    `api_keys` maps `SK...` SIDs to secrets accepted instead of the auth token.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        api_keys: dict[str, str] | None = None,
        clock: Clock | None = None,
        list_default_status: str | None = LIST_DEFAULT_STATUS,
    ) -> None:
        self.host, self.port = host, port
        self.list_default_status = list_default_status
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._api_keys = dict(api_keys or {})
        self._callbacks = CallbackSender(auth_token)
        self.state = SimulatorState(clock=clock, listener=self._callbacks.enqueue)
        self.faults = FaultBook(clock)
        self.stats = RequestStats()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("simulator is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SimulatorServer:
        self._httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._serve, args=(self._httpd,), name="sim-http", daemon=True),
            threading.Thread(target=self._tick, name="sim-ticker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._callbacks.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join()
        self._callbacks.stop()
        self._httpd = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        self.state.reset()
        self.faults.clear()
        self.stats.reset()

    def authenticated(self, header: str | None) -> bool:
        """Basic auth with the account's token or an `SK...` key's secret."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if user == self.account_sid:
            expected: str | None = self._auth_token
        else:
            expected = self._api_keys.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    @staticmethod
    def _serve(httpd: ThreadingHTTPServer) -> None:
        httpd.serve_forever(poll_interval=TICK_S)  # short poll: stop() returns promptly

    def _tick(self) -> None:
        while not self._stopping.wait(TICK_S):
            try:
                self.state.advance()
            except Exception:  # the ticker must outlive any one bad step
                _log.exception("event=simulator_tick_failed")

    def wait(self, seconds: float) -> bool:
        """Sleep, cut short by `stop()` (delay and drip faults); True if stopping."""
        return self._stopping.wait(seconds)


def _pieces(reply: Reply) -> Iterator[bytes]:
    if reply.stream is not None:
        yield from reply.stream()
    elif reply.drip_s:
        body = reply.body
        yield from (body[i : i + 1] for i in range(len(body)))
    else:
        yield reply.body


def _framed(piece: bytes, framing: str) -> bytes:
    if framing != "chunked" or not piece:
        return piece
    return b"%x\r\n%b\r\n" % (len(piece), piece)


class _HTTPServer(ThreadingHTTPServer):
    """Tracks open connections so `stop()` can end idle keep-alive ones."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, sim: SimulatorServer) -> None:
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a deadline, a size cap) is normal here."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    # Headers and body in one segment, sent at once: no Nagle/delayed-ACK stall per reply.
    wbufsize = -1
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("event=simulator_request " + format, *args)

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        sim = self.server.sim
        try:
            if parts.path.startswith("/_sim/"):
                reply = handle_control(sim, method, parts.path, body)
            elif parts.path.startswith("/2010-04-01/"):
                reply = handle_api(sim, method, parts.path, parts.query, body, self.headers)
            else:
                reply = twilio_error(404, 20404)
        except Exception:
            _log.exception("event=simulator_handler_failed path=%s", parts.path)
            reply = twilio_error(500, 20500)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        if reply.stream is not None or reply.drip_s:
            self._send_slowly(reply)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_slowly(self, reply: Reply) -> None:
        """A hostile body: streamed (`huge`) or a byte at a time (`drip`), until the client
        hangs up or the server stops; counted in the stats either way."""
        sim, sent, complete = self.server.sim, 0, False
        length = reply.length if reply.stream is not None else len(reply.body)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            if reply.framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
            elif reply.framing == "close" or length is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            for piece in _pieces(reply):
                self.wfile.write(_framed(piece, reply.framing))
                self.wfile.flush()
                sent += len(piece)
                if reply.drip_s and sim.wait(reply.drip_s):
                    return
            if reply.framing == "chunked":
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            complete = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            if not complete:
                self.close_connection = True
            sim.stats.streamed(sent, complete)


def serve_forever(
    host: str,
    port: int,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    auth_token: str = DEFAULT_AUTH_TOKEN,
    api_keys: dict[str, str] | None = None,
    log: Callable[[str], Any] = print,
) -> None:
    """Run until Ctrl-C or SIGTERM (the `simulate` command); prints how to connect."""
    done = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main else None
    with SimulatorServer(
        host, port, account_sid=account_sid, auth_token=auth_token, api_keys=api_keys
    ) as sim:
        log(f"Twilio simulator listening on {sim.url}")
        log(f"  account SID {account_sid}  auth token {auth_token}")
        log(f"  API base URL {sim.url} (Twilio paths /2010-04-01/...); control {sim.url}/_sim/")
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        log("Twilio simulator stopped")
