"""WebhookNotifier against real receivers on loopback: well-behaved, hostile and absent."""

from __future__ import annotations

import base64
import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from monitor.notify.base import DeliveryError, Message
from monitor.notify.signing import verify
from monitor.notify.webhook import MAX_RETRY_AFTER_S, WebhookNotifier

KEY = b"a 32 byte key for webhook tests!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = json.dumps(
    {
        "type": "conference.ended",
        "timestamp": "2024-05-01T12:00:00+00:00",
        "data": {"conference_sid": "CF" + "a" * 32, "friendly_name": "Daily stand-up ☕"},
    },
    ensure_ascii=False,
)
MESSAGE = Message("evt_0123456789ab0123456789abcdefabcd", "conference.ended", BODY)
FIXED_NOW = 1_700_000_000.0
QUICK_S = 0.5
# Long enough that a notifier without an overall deadline would sit through it.
TRICKLE_STEPS, TRICKLE_PAUSE_S = 100, 0.1


# --- A recording receiver ------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    echo_header: str = ""  # answer with the value of this request header


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.reply = Reply()

    def url(self, path: str = "/hook", userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append(Received(self.path, dict(self.headers.items()), body))
        reply = self.server.reply
        payload = (
            self.headers.get(reply.echo_header, "").encode() if reply.echo_header else reply.body
        )
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


@pytest.fixture
def elsewhere() -> Iterator[Receiver]:
    yield from _serve()


@pytest.fixture
def make_notifier() -> Iterator[Callable[..., WebhookNotifier]]:
    made: list[WebhookNotifier] = []

    def make(url: str, **kwargs: Any) -> WebhookNotifier:
        kwargs.setdefault("timeout_s", QUICK_S)
        notifier = WebhookNotifier("hook", url, kwargs.pop("secret", SECRET), **kwargs)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()


def _failure(notifier: WebhookNotifier, message: Message = MESSAGE) -> DeliveryError:
    with pytest.raises(DeliveryError) as raised:
        notifier.send(message)
    return raised.value


# --- A raw TCP receiver that misbehaves ----------------------------------------------


class RawServer:
    """Accepts one connection, reads the request, then runs `behave(conn, result)`."""

    def __init__(self, behave: Callable[[socket.socket, dict[str, Any]], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self.result: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(behave,), daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join()
        self._listener.close()

    def _run(self, behave: Callable[[socket.socket, dict[str, Any]], None]) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                _read_request(conn)
                behave(conn, self.result)
            except OSError as exc:
                self.result["error"] = type(exc).__name__


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(4096)


def _silent(conn: socket.socket, result: dict[str, Any]) -> None:
    result["client_closed"] = conn.recv(1) == b""


def _trickle_headers(conn: socket.socket, result: dict[str, Any]) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(TRICKLE_STEPS):
        conn.sendall(b"y")
        time.sleep(TRICKLE_PAUSE_S)
    conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
    result["completed"] = True


def _trickle_body(conn: socket.socket, result: dict[str, Any]) -> None:
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {TRICKLE_STEPS}\r\n\r\n".encode())
    for _ in range(TRICKLE_STEPS):
        conn.sendall(b"y")
        time.sleep(TRICKLE_PAUSE_S)
    result["completed"] = True


HUGE_BYTES = 5 * 1024 * 1024


def _huge_body(conn: socket.socket, result: dict[str, Any]) -> None:
    # A small send buffer so the kernel cannot absorb the body for a client that stopped.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE_BYTES}\r\n\r\n".encode())
    chunk = b"x" * 65536
    result["sent"] = 0
    while result["sent"] < HUGE_BYTES:
        result["sent"] += conn.send(chunk)


# --- Signatures ----------------------------------------------------------------------


def test_delivery_verifies_with_the_reference_library(receiver: Receiver, make_notifier) -> None:
    notifier = make_notifier(receiver.url(), headers={"X-Tenant": "blue"})
    assert notifier.send(MESSAGE) == 200

    [got] = receiver.received
    assert got.body == BODY.encode("utf-8")
    assert Webhook(SECRET).verify(got.body, got.headers)["data"]["friendly_name"].endswith("☕")
    assert got.headers["webhook-id"] == MESSAGE.event_id
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("conference-monitor/")
    assert got.headers["X-Tenant"] == "blue"

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"ended", b"begun"), got.headers)
    wrong = "whsec_" + base64.b64encode(b"some other 32 byte key for tests").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(wrong).verify(got.body, got.headers)


def test_retries_keep_the_id_and_sign_a_fresh_timestamp(receiver: Receiver, make_notifier) -> None:
    ticks = iter([FIXED_NOW, FIXED_NOW + 60])
    notifier = make_notifier(receiver.url(), clock=lambda: next(ticks))
    notifier.send(MESSAGE)
    notifier.send(MESSAGE)

    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == MESSAGE.event_id
    assert first.headers["webhook-timestamp"] == str(int(FIXED_NOW))
    assert second.headers["webhook-timestamp"] == str(int(FIXED_NOW) + 60)
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    for got in (first, second):
        assert verify(KEY, got.headers, got.body, now=FIXED_NOW + 60)


# --- Status codes --------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_returns_the_status(receiver: Receiver, make_notifier, status: int) -> None:
    receiver.reply = Reply(status, body=b"" if status == 204 else b"thanks")
    assert make_notifier(receiver.url()).send(MESSAGE) == status


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_delay"),
    [
        (500, None, None),
        (503, None, None),
        (429, None, None),
        (429, "7", 7.0),
        (503, "0", 0.0),
        (429, email.utils.formatdate(FIXED_NOW + 120, usegmt=True), 120.0),
        (503, email.utils.formatdate(FIXED_NOW - 120, usegmt=True), 0.0),
        (429, "soon", None),
        (503, "-5", None),
        (429, "99999999999", MAX_RETRY_AFTER_S),
    ],
)
def test_429_and_5xx_are_retryable_with_retry_after(
    receiver: Receiver, make_notifier, status: int, retry_after: str | None, expected_delay
) -> None:
    receiver.reply = Reply(status, {"Retry-After": retry_after} if retry_after else {}, b"busy")
    error = _failure(make_notifier(receiver.url(), clock=lambda: FIXED_NOW))
    assert (error.permanent, error.disable, error.status_code) == (False, False, status)
    assert error.retry_after_s == expected_delay
    assert f"HTTP {status}" in error.message and "busy" in error.message


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_permanent(receiver: Receiver, make_notifier, status: int) -> None:
    receiver.reply = Reply(status, {"Retry-After": "5"}, b'{"error": "no such hook"}')
    error = _failure(make_notifier(receiver.url()))
    assert (error.permanent, error.disable, error.status_code) == (True, False, status)
    assert error.retry_after_s is None
    assert "no such hook" in error.message


def test_410_disables_the_notifier(receiver: Receiver, make_notifier) -> None:
    receiver.reply = Reply(410)
    error = _failure(make_notifier(receiver.url()))
    assert (error.permanent, error.disable, error.status_code) == (True, True, 410)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(
    receiver: Receiver, elsewhere: Receiver, make_notifier, status: int
) -> None:
    receiver.reply = Reply(status, {"Location": elsewhere.url("/moved")})
    error = _failure(make_notifier(receiver.url()))
    assert (error.permanent, error.disable, error.status_code) == (True, False, status)
    assert f"redirect to {elsewhere.url('/moved')} not followed" in error.message
    assert len(receiver.received) == 1
    assert elsewhere.received == []


# --- Receivers that misbehave or are absent -------------------------------------------


def test_a_silent_receiver_is_cut_off_at_the_timeout(make_notifier) -> None:
    with RawServer(_silent) as server:
        error = _failure(make_notifier(server.url))
    assert server.result == {"client_closed": True}
    assert not error.permanent and error.status_code is None
    assert server.url in error.message


def test_trickled_headers_are_cut_off_by_the_deadline(make_notifier) -> None:
    with RawServer(_trickle_headers) as server:
        error = _failure(make_notifier(server.url))
    assert "completed" not in server.result
    assert not error.permanent and error.status_code is None
    assert server.url in error.message


def test_a_trickled_body_does_not_hold_a_2xx_back(make_notifier) -> None:
    with RawServer(_trickle_body) as server:
        assert make_notifier(server.url).send(MESSAGE) == 200
    assert "completed" not in server.result


def test_a_huge_body_is_not_read(make_notifier) -> None:
    with RawServer(_huge_body) as server:
        # A generous deadline: the cap, not the deadline, must be what stops the read.
        notifier = make_notifier(server.url, max_response_bytes=65536, timeout_s=10)
        assert notifier.send(MESSAGE) == 200
    assert server.result["sent"] < HUGE_BYTES
    assert server.result["error"] in {"ConnectionResetError", "BrokenPipeError"}


def test_connection_refused_is_retryable(make_notifier) -> None:
    url = _refused_url()
    error = _failure(make_notifier(url))
    assert not error.permanent and error.status_code is None
    assert url in error.message and "refused" in error.message.lower()


# --- Secrets stay secret --------------------------------------------------------------


def _refused_url(userinfo: str = "", query: str = "") -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://{userinfo}127.0.0.1:{port}/hook{query}"


def test_secrets_stay_out_of_repr_and_errors(receiver: Receiver, make_notifier) -> None:
    receiver.reply = Reply(400, echo_header="Authorization")
    token = "Bearer tok_live_0123456789"
    with_token = make_notifier(
        receiver.url("/hook?key=query-secret-42"), headers={"Authorization": token}
    )
    echoed_token = _failure(with_token).message
    with_password = make_notifier(receiver.url(userinfo="user:hunter2-pass@"))
    echoed_basic = _failure(with_password).message
    assert echoed_token.endswith(": ***") and echoed_basic.endswith(": Basic ***")  # echoes came
    refused = _failure(make_notifier(_refused_url("user:hunter2-pass@", "?key=query-secret-42")))

    basic = base64.b64encode(b"user:hunter2-pass").decode()
    secrets = [SECRET, SECRET.removeprefix("whsec_"), "tok_live_0123456789", "hunter2-pass", basic]
    texts = [repr(with_token), repr(with_password), echoed_token, echoed_basic, refused.message]
    for text in texts:
        for secret in [*secrets, "query-secret-42"]:
            assert secret not in text
    assert repr(with_password) == f"WebhookNotifier(name='hook', url='{receiver.url()}')"


def test_bad_configuration_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as bad_secret:
        WebhookNotifier("hook", "http://127.0.0.1:9/", "whsec_%%not-base64%%")
    assert "not-base64" not in str(bad_secret.value)
    with pytest.raises(ValueError) as bad_url:
        WebhookNotifier("hook", "ftp://user:pw-secret@example.com/", SECRET)
    assert "pw-secret" not in str(bad_url.value)
    with pytest.raises(ValueError) as bad_header:
        WebhookNotifier("hook", "http://127.0.0.1:9/", SECRET, headers={"A": "tok\nen"})
    assert "tok" not in str(bad_header.value)
    with pytest.raises(ValueError, match="set by the notifier"):
        WebhookNotifier("hook", "http://127.0.0.1:9/", SECRET, headers={"Webhook-Id": "x"})
