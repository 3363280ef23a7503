"""Slack, Teams, PagerDuty, email and templated webhooks against real receivers on loopback.

Each receiver records exactly what arrived; the assertions check the payload shape
each vendor documents (Slack `text`/`blocks`, the Teams Adaptive Card envelope,
PagerDuty Events API v2 fields), an SMTP server (aiosmtpd) receives the mail over
STARTTLS and implicit TLS with a test CA (trustme), and secrets never show in errors.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from standardwebhooks.webhooks import Webhook

from monitor.domain import EventType, new_event_id
from monitor.events import document
from monitor.notify.base import DeliveryError, Message
from monitor.notify.msteams import msteams_notifier
from monitor.notify.pagerduty import pagerduty_notifier
from monitor.notify.slack import slack_notifier
from monitor.notify.smtp import EmailNotifier
from monitor.notify.testsend import sample_message
from monitor.notify.webhook import WebhookNotifier
from tests.e2e.harness import SECRET, Receiver, receiver

SID = "CF" + "ab" * 16
ACCOUNT = "AC" + "cd" * 16
CALL = "CA" + "ef" * 16
HOSTILE_NAME = 'Ops <!channel> & "friends" [click](https://evil.example)'
SLACK_PATH = "/services/T000/B000/slack-url-secret-0123456789"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefabcdef"


def conference_event(
    event_type: str = EventType.ENDED, name: str = HOSTILE_NAME, **extra: Any
) -> Message:
    at = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    event_id = new_event_id()
    data = {
        "conference_sid": SID,
        "account_sid": ACCOUNT,
        "friendly_name": name,
        "region": "ie1",
        "from_status": "in-progress" if event_type == EventType.ENDED else "init",
        "to_status": "completed" if event_type == EventType.ENDED else "in-progress",
        "skipped": [],
        "reason_conference_ended": (
            "participant-with-end-conference-on-exit-left"
            if event_type == EventType.ENDED
            else None
        ),
        "call_sid_ending_conference": CALL if event_type == EventType.ENDED else None,
        "date_created": "2026-05-01T12:00:00Z",
        "date_updated": "2026-05-01T12:29:55Z",
        "observed_at": "2026-05-01T12:30:00Z",
        "detected_via": "poll",
        **extra,
    }
    return Message(event_id, event_type, document(event_type, event_id, at, data))


def body_of(hook: Receiver, index: int = -1) -> dict[str, Any]:
    return hook.bodies()[index]


@contextmanager
def echoing(status: int) -> Iterator[str]:
    """A receiver answering `status` with the request body and path echoed back."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            page = self.path.encode() + b" " + body
            self.send_response(status)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- Slack --------------------------------------------------------------------------


def test_slack_gets_text_and_blocks_with_every_fact_escaped() -> None:
    with receiver() as hook:
        notifier = slack_notifier("chat", hook.url.replace("/hook", SLACK_PATH), timeout_s=5)
        assert notifier.send(conference_event()) == 204
        notifier.close()
        [got] = hook.received
    doc = json.loads(got.body)
    assert got.headers["Content-Type"] == "application/json"
    assert set(doc) == {"text", "blocks"}
    # The notification text: title with the reason, mrkdwn-escaped (no @channel ping).
    assert doc["text"].startswith("Conference ended: Ops &lt;!channel&gt; &amp;")
    assert "<!channel>" not in got.body.decode()
    header, section, context = doc["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) <= 150
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1] for f in section["fields"]}
    assert section["type"] == "section" and len(section["fields"]) <= 10
    assert all(f["type"] == "mrkdwn" for f in section["fields"])
    assert fields["*SID*"] == SID
    assert fields["*Status*"] == "in-progress → completed"
    assert fields["*End reason*"].endswith("(participant-with-end-conference-on-exit-left)")
    assert fields["*Ended by call*"] == CALL
    assert fields["*Duration*"] == "29m 55s"
    assert context["type"] == "context" and "conference.ended" in context["elements"][0]["text"]


def test_a_slack_url_never_shows_in_errors_or_repr() -> None:
    with echoing(404) as base:
        notifier = slack_notifier("chat", base + SLACK_PATH, timeout_s=5)
        with pytest.raises(DeliveryError) as failed:
            notifier.send(conference_event())
        notifier.close()
    assert failed.value.permanent and failed.value.status_code == 404
    assert "***" in failed.value.message  # the echo came back, scrubbed
    for text in (failed.value.message, repr(notifier)):
        assert "slack-url-secret" not in text and SLACK_PATH not in text
    assert "127.0.0.1" in failed.value.message


# --- Microsoft Teams ----------------------------------------------------------------


def test_teams_gets_an_adaptive_card_in_a_message() -> None:
    with receiver(lambda _g, _i: (202, {})) as hook:
        notifier = msteams_notifier("teams", hook.url + "/workflows/secret-sig", timeout_s=5)
        assert notifier.send(conference_event()) == 202
        notifier.close()
        doc = body_of(hook)
    assert doc["type"] == "message"
    [attachment] = doc["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    title, facts = card["body"]
    assert title["type"] == "TextBlock" and title["text"].startswith("Conference ended: Ops")
    shown = {f["title"]: f["value"] for f in facts["facts"]}
    assert facts["type"] == "FactSet"
    assert shown["SID"] == SID and shown["Ended by call"] == CALL
    assert shown["Duration"] == "29m 55s"
    assert "](" not in json.dumps(card)  # a friendly name cannot plant a link


# --- PagerDuty ----------------------------------------------------------------------


def test_pagerduty_started_triggers_and_ended_resolves_with_the_sid_as_dedup_key() -> None:
    with receiver(lambda _g, _i: (202, {})) as hook:
        notifier = pagerduty_notifier(
            "pd", hook.url, ROUTING_KEY, severity="critical", source="bridge-watch", timeout_s=5
        )
        assert notifier.send(conference_event(EventType.STARTED, name="Incident 42")) == 202
        assert notifier.send(conference_event(EventType.ENDED, name="Incident 42")) == 202
        notifier.close()
        trigger, resolve = hook.bodies()
    assert trigger["routing_key"] == ROUTING_KEY
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == SID
    payload = trigger["payload"]
    assert payload["summary"] == "Conference started: Incident 42"
    assert (payload["severity"], payload["source"]) == ("critical", "bridge-watch")
    assert payload["timestamp"] == "2026-05-01T12:30:00Z"
    assert payload["custom_details"]["SID"] == SID
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": SID}


def test_pagerduty_ended_alone_can_trigger_and_the_routing_key_stays_secret() -> None:
    with receiver(lambda _g, _i: (202, {})) as hook:
        notifier = pagerduty_notifier("pd", hook.url, ROUTING_KEY, trigger_on="ended", timeout_s=5)
        assert notifier.send(conference_event()) == 202
        notifier.close()
        first = body_of(hook, 0)
    assert first["event_action"] == "trigger" and first["dedup_key"] == SID
    assert first["payload"]["severity"] == "error"
    assert first["payload"]["summary"].startswith("Conference ended: Ops")
    with echoing(400) as base:  # "invalid event", with our request echoed back
        notifier = pagerduty_notifier("pd", base + "/v2/enqueue", ROUTING_KEY, timeout_s=5)
        with pytest.raises(DeliveryError) as refused:
            notifier.send(conference_event())
        notifier.close()
    assert refused.value.permanent and "***" in refused.value.message
    assert ROUTING_KEY not in refused.value.message + repr(notifier)


# --- Webhook templates and unsigned webhooks ------------------------------------------


def test_a_template_shapes_the_body_safely_and_the_signature_covers_it() -> None:
    template = {
        "text": "${title} (${duration})",
        "conference": {"sid": "$conference_sid", "skipped": "$skipped", "raw": "$data"},
        "note": "costs $$0",
        "static": [1, True, None],
    }
    with receiver() as hook:
        notifier = WebhookNotifier("hook", hook.url, SECRET, template=template, timeout_s=5)
        message = conference_event()
        assert notifier.send(message) == 204
        notifier.close()
        [got] = hook.received
    doc = Webhook(SECRET).verify(got.body, got.headers)
    assert doc["text"] == (
        f"Conference ended: {HOSTILE_NAME} (a participant with endConferenceOnExit left) (29m 55s)"
    )
    assert doc["conference"]["sid"] == SID and doc["conference"]["skipped"] == []
    assert doc["conference"]["raw"]["friendly_name"] == HOSTILE_NAME
    assert doc["note"] == "costs $0" and doc["static"] == [1, True, None]
    assert got.headers["webhook-id"] == message.event_id


def test_an_unsigned_webhook_still_carries_the_event_id() -> None:
    with receiver() as hook:
        notifier = WebhookNotifier("hook", hook.url, None, timeout_s=5)
        message = conference_event()
        notifier.send(message)
        notifier.close()
        [got] = hook.received
    lowered = {k.lower(): v for k, v in got.headers.items()}
    assert lowered["webhook-id"] == message.event_id
    assert "webhook-signature" not in lowered and got.body == message.body.encode()


def test_a_bad_template_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown placeholder secret"):
        WebhookNotifier("hook", "http://127.0.0.1:9/", SECRET, template={"a": "${secret}"})


# --- Email ----------------------------------------------------------------------------

PASSWORD = "smtp-pass-0123456789"


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.reject = ""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, _o: Any
    ) -> str:
        if self.reject:
            return self.reject
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"monitor",
        PASSWORD.encode(),
    )
    return AuthResult(success=ok)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return server, str(path)


@pytest.fixture
def smtp_server(tls: tuple[ssl.SSLContext, str]) -> Iterator[Any]:
    started: list[Controller] = []

    def start(mode: str) -> tuple[Mailbox, int]:
        box, port = Mailbox(), _free_port()
        kwargs: dict[str, Any] = {"authenticator": _login}
        if mode == "starttls":
            kwargs.update(tls_context=tls[0], require_starttls=True, auth_require_tls=True)
        elif mode == "implicit":
            kwargs.update(ssl_context=tls[0], auth_require_tls=False)
        else:
            kwargs = {}
        controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return box, port

    yield start
    for controller in started:
        controller.stop()


pytestmark_email = pytest.mark.filterwarnings("ignore:.*login_data is deprecated")


def mailer(port: int, mode: str, ca_file: str | None, **kwargs: Any) -> EmailNotifier:
    login = {"username": "monitor", "password": PASSWORD} if mode != "none" else {}
    return EmailNotifier(
        "mail",
        "127.0.0.1",
        port,
        mail_from="monitor@example.com",
        mail_to=["oncall@example.com", "lead@example.com"],
        tls=mode,
        ca_file=ca_file,
        timeout_s=5,
        **{**login, **kwargs},
    )


@pytestmark_email
@pytest.mark.parametrize("mode", ["starttls", "implicit", "none"])
def test_email_reaches_a_real_smtp_server(
    mode: str, smtp_server: Any, tls: tuple[ssl.SSLContext, str]
) -> None:
    box, port = smtp_server(mode)
    message = conference_event(name="Standup")
    mailer(port, mode, tls[1]).send(message)
    [(sender, recipients, raw)] = box.messages
    assert sender == "monitor@example.com"
    assert recipients == ["oncall@example.com", "lead@example.com"]
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["Subject"].startswith("[conference-monitor] Conference ended: Standup")
    assert mail["Message-ID"] == f"<{message.event_id}@conference-monitor>"
    text = mail.get_body().get_content()  # type: ignore[union-attr]
    for expected in (SID, CALL, "29m 55s", "participant-with-end-conference-on-exit-left"):
        assert expected in text


@pytestmark_email
def test_email_refusals_and_bad_logins_say_so_without_the_password(
    smtp_server: Any, tls: tuple[ssl.SSLContext, str]
) -> None:
    box, port = smtp_server("starttls")
    box.reject = "550 5.1.1 no such mailbox"
    with pytest.raises(DeliveryError) as refused:
        mailer(port, "starttls", tls[1]).send(conference_event())
    assert refused.value.permanent and "550" in refused.value.message
    box.reject = "451 4.3.0 try later"
    with pytest.raises(DeliveryError) as later:
        mailer(port, "starttls", tls[1]).send(conference_event())
    assert not later.value.permanent
    box.reject = ""
    with pytest.raises(DeliveryError) as login:
        mailer(port, "starttls", tls[1], password="wrong-" + PASSWORD).send(conference_event())
    with pytest.raises(DeliveryError) as untrusted:
        mailer(port, "starttls", None).send(conference_event())  # the test CA is not trusted
    assert "not trusted" in untrusted.value.message
    for error in (refused.value, later.value, login.value, untrusted.value):
        assert PASSWORD not in error.message
    assert box.messages == []


def test_the_sample_message_is_marked_as_a_test() -> None:
    message = sample_message()
    data = json.loads(message.body)["data"]
    assert message.event_type == "conference.ended" and data["test"] is True
    assert "test notification" in data["friendly_name"]
