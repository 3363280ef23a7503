"""TwilioClient against a real, scripted HTTP server on loopback.

Timing facts (a honoured Retry-After, a bounded retry budget) are read from the
server's own request timestamps rather than from the client's clock.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from monitor.twilio import (
    BadPayload,
    ConferenceNotFound,
    CredentialsRejected,
    RateLimited,
    RequestRejected,
    ResourceMismatch,
    TransientError,
    TwilioClient,
)
from monitor.twilio.errors import parse_retry_after

ACCOUNT = "AC" + "a" * 32
SUBACCOUNT = "AC" + "b" * 32
API_KEY = "SK" + "c" * 32
SID = "CF" + "d" * 32
TOKEN = "s3cr3t-auth-token-value"
CONF_PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Conferences/{SID}.json"
LIST_PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Conferences.json"


def conference_json(sid: str = SID, status: str = "in-progress") -> dict[str, Any]:
    prefix = f"/2010-04-01/Accounts/{ACCOUNT}/Conferences/{sid}"
    return {
        "account_sid": ACCOUNT,
        "api_version": "2010-04-01",
        "date_created": "Fri, 18 Feb 2011 19:26:50 +0000",
        "date_updated": "Fri, 18 Feb 2011 19:27:33 +0000",
        "friendly_name": "room",
        "sid": sid,
        "region": "us1",
        "status": status,
        "subresource_uris": {"participants": f"{prefix}/Participants.json"},
        "uri": f"{prefix}.json",
        "reason_conference_ended": None,
        "call_sid_ending_conference": None,
    }


def twilio_error(status: int, code: int, message: str) -> Reply:
    body = {"code": code, "message": message, "more_info": "https://x", "status": status}
    return Reply(status, body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str/bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str  # raw request target, exactly as the client sent it
    headers: dict[str, str]
    body: bytes
    at: float  # server's monotonic clock on arrival
    peer: int = 0  # the client's port: one per connection


class ScriptedServer(ThreadingHTTPServer):
    """Replies in order (the last one repeats), or per request through `router`."""

    daemon_threads = False  # server_close() joins handler threads: no stray sockets

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = [Reply(200, conference_json())]
        self.router: Callable[[Seen], Reply] | None = None
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)

    def next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            if self.router is not None:
                return self.router(seen)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(
            self.command,
            self.path,
            dict(self.headers),
            body,
            time.monotonic(),
            self.client_address[1],
        )
        reply = self.server.next_reply(seen)
        if reply.delay_s and self.server.stopping.wait(reply.delay_s):
            return
        payload = reply.body
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        data = payload.encode() if isinstance(payload, str) else (payload or b"")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join()


Observed = list[tuple[str, int | None, float]]


@pytest.fixture
def observed() -> Observed:
    return []


@pytest.fixture
def make_client(
    server: ScriptedServer, observed: Observed
) -> Iterator[Callable[..., TwilioClient]]:
    clients: list[TwilioClient] = []

    def make(**overrides: Any) -> TwilioClient:
        options: dict[str, Any] = {
            "account_sid": ACCOUNT,
            "username": ACCOUNT,
            "password": TOKEN,
            "base_url": server.url,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "on_response": lambda *args: observed.append(args),
        }
        client = TwilioClient(**(options | overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., TwilioClient]) -> TwilioClient:
    return make_client()


def test_fetch_parses_the_conference(client: TwilioClient, server: ScriptedServer) -> None:
    conference = client.fetch_conference(SID)
    assert (conference.sid, conference.status) == (SID, "in-progress")
    [seen] = server.seen
    assert (seen.method, seen.path) == ("GET", CONF_PATH)
    assert seen.headers["User-Agent"].startswith("conference-monitor/")


def test_429_retry_after_is_honoured(client: TwilioClient, server: ScriptedServer) -> None:
    server.script(
        Reply(429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "1"}),
        Reply(200, conference_json()),
    )
    assert client.fetch_conference(SID).sid == SID
    first, second = server.seen
    assert second.at - first.at >= 0.9


def test_429_without_retry_after_backs_off_and_succeeds(
    client: TwilioClient, server: ScriptedServer, observed: Observed
) -> None:
    server.script(twilio_error(429, 20429, "Too Many Requests"), Reply(200, conference_json()))
    assert client.fetch_conference(SID).sid == SID
    assert [status for _, status, _ in observed] == [429, 200]


def test_a_burst_of_5xx_is_retried(client: TwilioClient, server: ScriptedServer) -> None:
    server.script(Reply(500), Reply(503), Reply(502), Reply(200, conference_json()))
    assert client.fetch_conference(SID).sid == SID
    assert len(server.seen) == 4


def test_5xx_longer_than_the_budget_raises_transient(
    make_client: Callable[..., TwilioClient], server: ScriptedServer
) -> None:
    client = make_client(retry_budget_s=0.5, max_attempts=1000, backoff_max_s=0.1)
    server.script(Reply(500, {"code": 20500, "message": "Internal Server Error"}))
    with pytest.raises(TransientError) as caught:
        client.fetch_conference(SID)
    assert caught.value.status_code == 500 and caught.value.code == 20500
    assert len(server.seen) >= 3
    assert caught.value.attempts == len(server.seen)
    assert server.seen[-1].at - server.seen[0].at < 0.5


def test_max_attempts_bounds_the_retries(
    make_client: Callable[..., TwilioClient], server: ScriptedServer
) -> None:
    client = make_client(max_attempts=3)
    server.script(Reply(503))
    with pytest.raises(TransientError):
        client.fetch_conference(SID)
    assert len(server.seen) == 3


def test_slow_response_times_out_is_retried_within_budget(
    make_client: Callable[..., TwilioClient], server: ScriptedServer, observed: Observed
) -> None:
    client = make_client(read_timeout_s=0.2, retry_budget_s=1.0, max_attempts=10)
    server.script(Reply(200, conference_json(), delay_s=3.0))
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        client.fetch_conference(SID)
    elapsed = time.monotonic() - started
    assert len(server.seen) >= 2
    assert caught.value.status_code is None and caught.value.request_sent
    assert all(status is None for _, status, _ in observed)
    assert elapsed < 1.0 + 0.5  # the budget, plus scheduling slack
    assert SID in str(caught.value)


def test_404_is_not_retried(client: TwilioClient, server: ScriptedServer) -> None:
    server.script(twilio_error(404, 20404, "The requested resource was not found"))
    with pytest.raises(ConferenceNotFound) as caught:
        client.fetch_conference(SID)
    assert len(server.seen) == 1
    error = caught.value
    assert (error.status_code, error.code, error.sid) == (404, 20404, SID)
    assert SID in str(error) and f"{server.url}{CONF_PATH}" in str(error)


def test_a_404_after_a_5xx_stops_at_once(client: TwilioClient, server: ScriptedServer) -> None:
    server.script(Reply(503), twilio_error(404, 20404, "not found"), Reply(200, conference_json()))
    with pytest.raises(ConferenceNotFound) as caught:
        client.fetch_conference(SID)
    assert caught.value.attempts == len(server.seen) == 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: no wait
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_future_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    seconds = parse_retry_after(when)
    assert seconds is not None and 100 < seconds <= 120


def test_401_is_not_retried_and_hides_the_password(
    client: TwilioClient, server: ScriptedServer
) -> None:
    server.script(twilio_error(401, 20003, "Authenticate"))
    with pytest.raises(CredentialsRejected) as caught:
        client.verify_credentials()
    assert len(server.seen) == 1
    assert caught.value.code == 20003 and caught.value.status_code == 401
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.args)


def test_a_password_echoed_by_the_server_is_redacted(
    client: TwilioClient, server: ScriptedServer
) -> None:
    server.script(twilio_error(403, 20003, f"bad token {TOKEN}"))
    with pytest.raises(CredentialsRejected) as caught:
        client.fetch_conference(SID)
    assert TOKEN not in str(caught.value)
    assert "bad token ***" in str(caught.value)


def test_400_is_rejected_without_retry(client: TwilioClient, server: ScriptedServer) -> None:
    server.script(twilio_error(400, 21481, "Invalid PageToken"))
    with pytest.raises(RequestRejected):
        list(client.list_conferences())
    assert len(server.seen) == 1


def test_garbage_200_raises_bad_payload_after_retries(
    make_client: Callable[..., TwilioClient],
    server: ScriptedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(max_attempts=3)
    server.script(Reply(200, "<html>oops</html>"))
    with caplog.at_level(logging.WARNING, logger="monitor.twilio"), pytest.raises(BadPayload):
        client.fetch_conference(SID)
    assert len(server.seen) == 3
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "twilio.bad_payload"]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING and r.sid == SID for r in warnings)  # type: ignore[attr-defined]
    assert SID in warnings[0].getMessage() and CONF_PATH in warnings[0].getMessage()


def test_a_different_conference_in_the_body_is_a_permanent_mismatch(
    client: TwilioClient, server: ScriptedServer
) -> None:
    server.script(Reply(200, conference_json("CF" + "e" * 32)))
    with pytest.raises(ResourceMismatch, match="CF" + "e" * 32) as caught:
        client.fetch_conference(SID)
    assert not isinstance(caught.value, BadPayload | TransientError)
    assert len(server.seen) == 1 and caught.value.attempts == 1


def test_a_conference_of_another_account_is_a_permanent_mismatch(
    client: TwilioClient, server: ScriptedServer
) -> None:
    server.script(Reply(200, conference_json() | {"account_sid": SUBACCOUNT}))
    with pytest.raises(ResourceMismatch, match=SUBACCOUNT):
        client.fetch_conference(SID)
    assert len(server.seen) == 1


def test_basic_auth_with_the_auth_token(client: TwilioClient, server: ScriptedServer) -> None:
    client.fetch_conference(SID)
    assert _basic(server.seen[0]) == f"{ACCOUNT}:{TOKEN}"


def test_basic_auth_with_an_api_key(
    make_client: Callable[..., TwilioClient], server: ScriptedServer
) -> None:
    client = make_client(username=API_KEY, password="key-secret")
    client.fetch_conference(SID)
    assert _basic(server.seen[0]) == f"{API_KEY}:key-secret"
    assert server.seen[0].path == CONF_PATH  # the path still carries the AC sid


def test_list_follows_next_page_uri_exactly(client: TwilioClient, server: ScriptedServer) -> None:
    second = (
        f"{LIST_PATH}?Status=in-progress&DateCreated%3E=2021-01-01"
        "&PageSize=2&Page=1&PageToken=PACFx%2By"
    )
    third = f"{LIST_PATH}?Status=in-progress&PageSize=2&Page=2&PageToken=PACFzz"
    pages = {
        second: _page([conference_json("CF" + "2" * 32)], third),
        third: _page([], None),
    }
    first = _page([conference_json("CF" + "0" * 32), conference_json("CF" + "1" * 32)], second)
    server.router = lambda seen: Reply(200, pages.get(seen.path, first))
    sids = [
        c.sid
        for c in client.list_conferences(
            status="in-progress",
            friendly_name="My Room",
            date_created_after=date(2021, 1, 1),
            page_size=2,
        )
    ]
    assert sids == ["CF" + "0" * 32, "CF" + "1" * 32, "CF" + "2" * 32]
    assert [s.path for s in server.seen[1:]] == [second, third]
    query = parse_qs(urlsplit(server.seen[0].path).query)
    assert query == {
        "PageSize": ["2"],
        "Status": ["in-progress"],
        "FriendlyName": ["My Room"],
        "DateCreated>": ["2021-01-01"],  # Twilio's name; on the wire DateCreated%3E=2021-01-01
    }
    assert "DateCreated%3E=2021-01-01" in server.seen[0].path


def test_an_absolute_next_page_uri_is_refused(
    make_client: Callable[..., TwilioClient], server: ScriptedServer
) -> None:
    client = make_client(max_attempts=1)
    server.script(Reply(200, _page([], "https://elsewhere.example/steal")))
    with pytest.raises(BadPayload, match="next_page_uri"):
        list(client.list_conferences())


def test_subaccount_and_verify_paths(client: TwilioClient, server: ScriptedServer) -> None:
    server.script(Reply(200, _page([], None)))
    client.verify_credentials(SUBACCOUNT)
    assert server.seen[0].path == f"/2010-04-01/Accounts/{SUBACCOUNT}/Conferences.json?PageSize=1"


def test_end_conference_posts_the_form(client: TwilioClient, server: ScriptedServer) -> None:
    ended = conference_json(status="completed") | {
        "reason_conference_ended": "conference-ended-via-api"
    }
    server.script(Reply(200, ended))
    conference = client.end_conference(SID)
    assert conference.reason_conference_ended == "conference-ended-via-api"
    [seen] = server.seen
    assert (seen.method, seen.path, seen.body) == ("POST", CONF_PATH, b"Status=completed")


def test_end_conference_retries_429_but_not_5xx(
    client: TwilioClient, server: ScriptedServer
) -> None:
    server.script(Reply(429), Reply(200, conference_json(status="completed")))
    assert client.end_conference(SID).status == "completed"
    assert len(server.seen) == 2
    server.seen.clear()
    server.script(Reply(500))
    with pytest.raises(TransientError):
        client.end_conference(SID)
    assert len(server.seen) == 1


def test_rate_limit_past_the_budget_keeps_retry_after(
    make_client: Callable[..., TwilioClient], server: ScriptedServer
) -> None:
    client = make_client(retry_budget_s=2.0)
    server.script(Reply(429, {"code": 20429, "message": "slow down"}, {"Retry-After": "30"}))
    with pytest.raises(RateLimited) as caught:
        client.fetch_conference(SID)
    assert len(server.seen) == 1
    assert caught.value.retry_after_s == 30.0


def test_connection_refused_is_transient_and_retried(
    make_client: Callable[..., TwilioClient], observed: Observed
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}", max_attempts=3)
    with pytest.raises(TransientError) as caught:
        client.end_conference(SID)  # safe to repeat: nothing was sent
    assert caught.value.request_sent is False
    assert [(op, status) for op, status, _ in observed] == [("end", None)] * 3


def test_a_malformed_sid_is_refused_before_any_request(
    client: TwilioClient, server: ScriptedServer
) -> None:
    for call in (client.fetch_conference, client.end_conference):
        with pytest.raises(ValueError, match="CFnope"):
            call("CFnope")
    with pytest.raises(ValueError):
        client.fetch_conference(SID, account_sid="ACshort")
    assert server.seen == []


def test_pool_size_and_no_transport_retries(make_client: Callable[..., TwilioClient]) -> None:
    client = make_client(pool_size=7)
    manager = client.pool.manager
    assert manager.connection_pool_kw["maxsize"] == 7
    assert manager.connection_pool_kw["retries"].total is False


def test_context_manager_closes_the_pool(server: ScriptedServer) -> None:
    with TwilioClient(
        account_sid=ACCOUNT, username=ACCOUNT, password=TOKEN, base_url=server.url
    ) as c:
        c.fetch_conference(SID)
        assert len(c.pool.manager.pools) == 1
    assert len(c.pool.manager.pools) == 0


def test_bodies_are_asked_for_uncompressed(client: TwilioClient, server: ScriptedServer) -> None:
    """Bodies are capped and parsed as read: a gzip answer (which Twilio sends to a
    client that accepts it) would be garbage to the parser."""

    def router(seen: Seen) -> Reply:
        if "gzip" in seen.headers.get("Accept-Encoding", ""):
            packed = gzip.compress(json.dumps(conference_json()).encode())
            return Reply(200, packed, {"Content-Encoding": "gzip"})
        return Reply(200, conference_json())

    server.router = router
    assert client.fetch_conference(SID).sid == SID
    assert server.seen[0].headers["Accept-Encoding"] == "identity"


def test_a_connection_is_reused_across_fetches(
    client: TwilioClient, server: ScriptedServer
) -> None:
    for _ in range(5):
        client.fetch_conference(SID)
    assert len(server.seen) == 5
    assert len({s.peer for s in server.seen}) == 1


def _page(conferences: list[dict[str, Any]], next_page_uri: str | None) -> dict[str, Any]:
    return {
        "conferences": conferences,
        "next_page_uri": next_page_uri,
        "page": 0,
        "page_size": 2,
        "first_page_uri": LIST_PATH,
        "previous_page_uri": None,
        "uri": LIST_PATH,
        "start": 0,
        "end": len(conferences),
    }


def _basic(seen: Seen) -> str:
    scheme, _, encoded = seen.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(encoded).decode()


def test_proxy_variables_are_honoured(
    make_client: Callable[..., TwilioClient],
    server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    client = make_client(base_url="http://api.example.invalid")
    client.fetch_conference(SID)
    assert server.seen[0].path == f"http://api.example.invalid{CONF_PATH}"


@pytest.fixture
def tls_server(tmp_path: Any) -> Iterator[tuple[ScriptedServer, str]]:
    """The scripted server over TLS, with a certificate from a test CA (trustme)."""
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    srv = ScriptedServer()
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv, str(bundle)
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_https_is_verified_against_the_ca_bundle(
    tls_server: tuple[ScriptedServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twilio is HTTPS: the certificate is checked, against `REQUESTS_CA_BUNDLE` when set."""
    server, bundle = tls_server
    url = server.url.replace("http://", "https://")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    options = {"account_sid": ACCOUNT, "username": ACCOUNT, "password": TOKEN, "base_url": url}
    with TwilioClient(**options) as client:  # type: ignore[arg-type]
        assert client.fetch_conference(SID).sid == SID
        assert client.fetch_conference(SID).sid == SID
    assert len({s.peer for s in server.seen}) == 1  # one TLS connection, kept alive
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    untrusted = TwilioClient(**options, max_attempts=1)  # type: ignore[arg-type]
    try:
        with pytest.raises(TransientError, match="SSL"):
            untrusted.fetch_conference(SID)
    finally:
        untrusted.close()
    assert len(server.seen) == 2  # the unverified connection sent nothing
