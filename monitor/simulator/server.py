"""A Twilio-compatible HTTP server for the Conference API, with a `/_sim/` control interface.

Stdlib only (`ThreadingHTTPServer`, keep-alive, daemon threads) so tests, the
demo and benchmarks run it in-process. A ticker thread applies scripted
status changes on time; a sender thread posts signed status callbacks.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import re
import signal
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from monitor.simulator.api import Reply, handle_api, json_reply, twilio_error
from monitor.simulator.callbacks import CallbackSender
from monitor.simulator.faults import FaultBook, RequestStats
from monitor.simulator.state import (
    DEFAULT_ACCOUNT_SID,
    Clock,
    SimulatorState,
    parse_steps,
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

    def wait(self, seconds: float) -> None:
        """Sleep, cut short by `stop()` (used by the delay fault)."""
        self._stopping.wait(seconds)


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


# -- the control interface ---------------------------------------------------

_CONTROL_CONF_RE = re.compile(r"^/_sim/conferences/(?P<sid>[^/]+)(?P<rest>/[a-z]+)?$")
_CREATE_FIELDS = (
    "friendly_name",
    "region",
    "status",
    "sid",
    "account_sid",
    "hidden_for_s",
    "status_callback",
)
_FAULT_FIELDS = ("count", "for_s", "retry_after", "delay_s", "sid")


def handle_control(sim: SimulatorServer, method: str, path: str, body: bytes) -> Reply:
    """JSON in, JSON out, no auth; bad input is a 400 `{"error": ...}`."""
    try:
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        status, payload = _control_route(sim, method, path, data)
    except KeyError as err:
        return json_reply(404, {"error": str(err.args[0] if err.args else err)})
    except (ValueError, TypeError) as err:
        return json_reply(400, {"error": str(err)})
    return json_reply(status, payload)


def _control_route(
    sim: SimulatorServer, method: str, path: str, data: dict[str, Any]
) -> tuple[int, Any]:
    state = sim.state
    route = (method, path)
    if route == ("POST", "/_sim/conferences"):
        kwargs = _fields(data, _CREATE_FIELDS)
        kwargs.setdefault("account_sid", sim.account_sid)
        callback = kwargs.get("status_callback")
        if callback is not None and not str(callback).startswith(("http://", "https://")):
            raise ValueError("status_callback must be an http(s) URL")
        return 201, state.create(**kwargs)
    if route == ("POST", "/_sim/faults"):
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ValueError("fault needs a kind")
        options = _fields({k: v for k, v in data.items() if k != "kind"}, _FAULT_FIELDS)
        return 201, {"id": sim.faults.add(kind, **options)}
    if route == ("DELETE", "/_sim/faults"):
        return 200, {"cleared": sim.faults.clear()}
    if route == ("GET", "/_sim/stats"):
        return 200, sim.stats.snapshot()
    if route == ("POST", "/_sim/reset"):
        sim.reset()
        return 200, {}
    if m := _CONTROL_CONF_RE.match(path):
        return _conference_route(sim, method, m["sid"], m["rest"] or "", data)
    raise KeyError(f"no control route {method} {path}")


def _fields(data: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The given fields, refusing unknown ones so a typo is an error, not a silent default."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected some of {list(allowed)}")
    return {k: v for k, v in data.items() if v is not None}


def _conference_route(
    sim: SimulatorServer, method: str, sid: str, rest: str, data: dict[str, Any]
) -> tuple[int, Any]:
    state = sim.state
    if (method, rest) == ("GET", ""):
        return 200, state.peek(sid)
    if (method, rest) == ("POST", "/status"):
        if "status" not in data:
            raise ValueError("status is required")
        return 200, state.set_status(sid, data["status"], data.get("reason"), data.get("call_sid"))
    if (method, rest) == ("POST", "/script"):
        steps = parse_steps(data.get("steps") or [])
        return 200, {"sid": sid, "scheduled": state.script(sid, steps)}
    if (method, rest) == ("GET", "/transitions"):
        return 200, state.transitions(sid)
    raise KeyError(f"no control route {method} {rest or '/'} for {sid}")


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
