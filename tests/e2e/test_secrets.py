"""No secret value ever reaches a log line, command output, error or HTTP body.

Distinctive values for the Twilio auth token, the API secret and the webhook
signing secret are fed in every way the SPEC allows (environment, systemd
credential files, the TOML file), then the CLI and the daemon are driven
through success and failure: `check` and `poll` accepted and rejected, a bad
config at start and at reload, a webhook receiver that fails and echoes the
secret back. Every byte printed or logged is searched for each value and for
the Basic-auth encodings that would carry them.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import ACCOUNT, cli, daemon, json_lines, wait_for
from tests.e2e.test_service import check_log_shape, events_of, get, http_port, notify_socket

pytestmark = pytest.mark.slow

TOKEN = f"tok-{uuid.uuid4().hex}"
API_KEY = "SK" + uuid.uuid4().hex  # an identifier, not a secret
API_SECRET = f"apisecret{uuid.uuid4().hex}"
WEBHOOK_KEY = base64.b64encode(f"hook-{uuid.uuid4().hex}".encode()).decode()
WEBHOOK_SECRET = "whsec_" + WEBHOOK_KEY
SLACK_TOKEN = f"slacktoken{uuid.uuid4().hex}"
SLACK_PATH = f"/services/T0/B0/{SLACK_TOKEN}"
ROUTING_KEY = f"routingkey{uuid.uuid4().hex}"
SMTP_USER = "monitor"
SMTP_PASSWORD = f"smtppass{uuid.uuid4().hex}"

FORBIDDEN = {
    "auth token": TOKEN,
    "API secret": API_SECRET,
    "webhook secret": WEBHOOK_SECRET,
    "webhook key": WEBHOOK_KEY,
    "Slack URL token": SLACK_TOKEN,
    "PagerDuty routing key": ROUTING_KEY,
    "SMTP password": SMTP_PASSWORD,
    "SMTP password (AUTH LOGIN)": base64.b64encode(SMTP_PASSWORD.encode()).decode(),
    "SMTP password (AUTH PLAIN)": base64.b64encode(
        f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()
    ).decode(),
    "Basic auth (token)": base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode(),
    "Basic auth (API key)": base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode(),
}


class Transcript:
    """Everything the tests saw printed, logged or served, for one final search."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, str]] = []

    def add(self, what: str, text: str) -> str:
        self.parts.append((what, text))
        return text

    def run(self, *args: str, config: Path, env: dict[str, str], rc: int) -> str:
        result = cli(*args, config=config, env=env)
        out = self.add(f"{' '.join(args)}: stdout", result.stdout)
        self.add(f"{' '.join(args)}: stderr", result.stderr)
        assert result.returncode == rc, (args, result.stdout, result.stderr)
        return out + result.stderr

    def leaks(self) -> list[str]:
        return [
            f"{name} in {what}"
            for what, text in self.parts
            for name, value in FORBIDDEN.items()
            if value in text
        ]


def config_text(
    sim_url: str,
    db_url: str,
    hook_url: str,
    extra: str = "",
    smtp: tuple[int, str] = (9, ""),
    vendor_url: str = "",
) -> str:
    return f"""
[twilio]
account_sid = "{ACCOUNT}"
base_url = "{sim_url}"
read_timeout = "2s"

[database]
url = "{db_url}"

[polling]
interval = "300ms"
jitter = "50ms"

[dispatch]
interval = "200ms"
retry_delays = ["300ms"]

[http]
listen = "127.0.0.1:0"

[logging]
level = "DEBUG"

[[notifiers]]
name = "log"
type = "log"

[[notifiers]]
name = "hook"
type = "webhook"
url = "{hook_url}"
secret_credential = "WEBHOOK_SECRET"
timeout = "2s"

[[notifiers]]
name = "chat"
type = "slack"
url_credential = "SLACK_URL"
timeout = "2s"

[[notifiers]]
name = "pager"
type = "pagerduty"
url = "{vendor_url or hook_url}"
routing_key_env = "PD_ROUTING_KEY"
timeout = "2s"

[[notifiers]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp[0]}
tls = "implicit"
ca_file = "{smtp[1]}"
username = "{SMTP_USER}"
password_credential = "SMTP_PASSWORD"
from = "monitor@example.com"
to = ["oncall@example.com"]
timeout = "2s"
{extra}
"""


# Secrets written straight into the file, next to real mistakes.
BROKEN = f"""
[[notifiers]]
name = "inline"
type = "webhook"
url = "ftp://example.com/hook"
secret = "{WEBHOOK_SECRET}"
"""


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "TWILIO_API_KEY").write_text(API_KEY + "\n")
    (folder / "TWILIO_API_SECRET").write_text(API_SECRET + "\n")
    (folder / "WEBHOOK_SECRET").write_text(WEBHOOK_SECRET + "\n")
    (folder / "SMTP_PASSWORD").write_text(SMTP_PASSWORD + "\n")
    return folder


@pytest.fixture
def sims() -> Iterator[tuple[SimulatorServer, SimulatorServer]]:
    """One simulator accepting our secrets, one rejecting them."""
    with (
        SimulatorServer(auth_token=TOKEN, api_keys={API_KEY: API_SECRET}) as good,
        SimulatorServer(auth_token="another-token", api_keys={}) as bad,
    ):
        yield good, bad


@dataclass
class Hook:
    url: str
    received: list[tuple[bytes, dict[str, str]]]


@contextmanager
def failing_receiver(expected: str = WEBHOOK_SECRET) -> Iterator[Hook]:
    """A receiver that fails with 500, its error page repeating the secret it expected."""
    hook = Hook("", [])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.received.append((body, dict(self.headers.items())))
            # Echoes the secret it expected, the path it was called on and what it got.
            page = f"check failed: expected secret {expected} at ".encode()
            page += self.path.encode() + b" for " + body[:300]
            self.send_response(500)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    hook.url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@contextmanager
def smtp_rejecting_logins(folder: Path) -> Iterator[tuple[int, str]]:
    """An implicit-TLS SMTP server (test CA) that turns every login down: (port, CA file)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = folder / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    class Box:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    def refuse(*_args: Any) -> AuthResult:
        return AuthResult(success=False)

    controller = Controller(
        Box(), hostname="127.0.0.1", port=port, ssl_context=context, authenticator=refuse
    )
    controller.start()
    try:
        yield port, str(ca_file)
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:.*login_data is deprecated")
def test_no_secret_in_any_output_or_log(
    tmp_path: Path, credentials: Path, sims: tuple[SimulatorServer, SimulatorServer]
) -> None:
    good, bad = sims
    seen = Transcript()
    db = f"sqlite:///{tmp_path}/m.db"
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "TWILIO_AUTH_TOKEN": TOKEN}
    # Rejected by Twilio, in a database of its own: the daemon's account stays in good standing.
    rejected = {
        **env,
        "CONFERENCE_MONITOR_TWILIO_BASE_URL": bad.url,
        "CONFERENCE_MONITOR_DATABASE_URL": f"sqlite:///{tmp_path}/rejected.db",
    }
    env["PD_ROUTING_KEY"] = ROUTING_KEY
    rejected["PD_ROUTING_KEY"] = ROUTING_KEY
    with (
        SimulatorControl(good.url) as ctl,
        failing_receiver() as hook,
        failing_receiver(expected="nothing") as vendor,  # echoes the Slack path, PD key
        smtp_rejecting_logins(tmp_path) as smtp,
    ):
        (credentials / "SLACK_URL").write_text(vendor.url.replace("/hook", SLACK_PATH) + "\n")
        config = tmp_path / "config.toml"
        config.write_text(config_text(good.url, db, hook.url, smtp=smtp, vendor_url=vendor.url))
        sid = ctl.create_conference(friendly_name="secrets", status="init")["sid"]
        seen.run("db", "upgrade", config=config, env=env, rc=0)
        seen.run("db", "upgrade", config=config, env=rejected, rc=0)
        assert "ok    twilio" in seen.run("check", config=config, env=env, rc=0)
        assert "FAIL  twilio" in seen.run("check", config=config, env=rejected, rc=1)
        seen.run("notify", "test", config=config, env=env, rc=1)
        seen.run("check", "--notifiers", config=config, env=env, rc=1)
        seen.run("poll", sid, config=config, env=env, rc=0)
        seen.run("poll", sid, config=config, env=rejected, rc=1)
        seen.run("watch", "add", sid, config=config, env=env, rc=0)

        broken = tmp_path / "broken.toml"
        broken.write_text(
            config_text(good.url, db, hook.url, BROKEN, smtp, vendor.url).replace(
                f'account_sid = "{ACCOUNT}"',
                f'account_sid = "{ACCOUNT}"\nauth_token = "{TOKEN}"\napi_secret = "{API_SECRET}"'
                '\nconcurrency = "lots"',
            )
        )
        errors = seen.run("check", config=broken, env={}, rc=2)
        assert "notifiers[5].url" in errors and "twilio.concurrency" in errors, errors

        log_path = tmp_path / "daemon.log"
        with (
            notify_socket() as sd,
            daemon(config, log_path, env={**env, "NOTIFY_SOCKET": sd.env_value}) as d,
        ):
            sd.wait_count("READY", "1", 1)
            port = http_port(d)
            ctl.set_status(sid, "in-progress")
            wait_for(lambda: len(hook.received) >= 2, 30, "two failed webhook attempts")
            wait_for(lambda: len(events_of(d, "delivery.pending")) >= 2, 30, "both logged")
            config.write_text(broken.read_text())
            d.process.send_signal(signal.SIGHUP)
            sd.wait_count("READY", "1", 2)
            assert events_of(d, "config.invalid")
            for path in ("/metrics", "/readyz", "/healthz"):
                seen.add(path, get(port, path)[1])
            assert d.stop(signal.SIGTERM) == 0
            seen.add("STATUS=", "\n".join(m.fields.get("STATUS", "") for m in sd.messages()))
        seen.add("daemon log", log_path.read_text())
        logged = check_log_shape(log_path)
        assert {"delivery.pending", "config.invalid"} <= {line.get("event") for line in logged}

        config.write_text(config_text(good.url, db, hook.url, smtp=smtp, vendor_url=vendor.url))
        listed = seen.run("deliveries", "--json", config=config, env=env, rc=0)
        failed = [row for row in json_lines(listed) if row["notifier"] == "hook"]
        assert failed and "***" in failed[0]["last_error"], failed  # the echo was scrubbed
        seen.run("deliveries", "show", str(failed[0]["id"]), config=config, env=env, rc=0)
        seen.run("events", "--json", config=config, env=env, rc=0)
        seen.run("history", sid, config=config, env=env, rc=0)

    # The secrets were really in play: Twilio accepted the API key, the webhook was
    # signed with the secret and the receiver answered with it.
    assert "API key " + API_KEY in "".join(text for _, text in seen.parts)
    body, headers = hook.received[0]
    standardwebhooks.Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert any(ROUTING_KEY.encode() in got for got, _ in vendor.received)  # and echoed back
    assert any(b'"blocks"' in got for got, _ in vendor.received)  # Slack, at its secret path
    assert seen.leaks() == []


def test_a_secret_pasted_into_secret_env_is_not_repeated(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[[notifiers]]
name = "a"
type = "webhook"
url = "https://example.com/hook"
secret_env = "{WEBHOOK_SECRET}"

[[notifiers]]
name = "b"
type = "webhook"
url = "https://example.com/hook"
secret_credential = "{WEBHOOK_SECRET}"
"""
    )
    result = cli("check", config=config)
    assert result.returncode == 2
    assert "secret_env" in result.stderr and "secret_credential" in result.stderr
    assert WEBHOOK_SECRET not in result.stdout + result.stderr
    assert json.dumps(WEBHOOK_SECRET) not in result.stderr
