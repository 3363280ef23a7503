"""`demo`: the whole pipeline on one machine, no Twilio account, well under a minute.

The simulator plays Twilio, a loopback receiver plays the webhook consumer (it
verifies every signature), and the real daemon polls a temporary SQLite file.
Conferences walk through every kind of lifecycle; the log shows each event as
it happens; the history is printed at the end.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitor.app import App
from monitor.config import Settings, load_settings
from monitor.daemon import Daemon
from monitor.db import queries
from monitor.db.engine import upgrade
from monitor.domain import END_REASONS
from monitor.notify.signing import decode_secret, verify
from monitor.output import emit
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN, SimulatorServer
from monitor.simulator.state import DEFAULT_ACCOUNT_SID
from monitor.twilio.client import TwilioClient

DEMO_TIMEOUT_S = 45.0
GHOST_SID = "CF" + "0" * 31 + "1"

# (friendly name, first status, script steps). Times are seconds after the start.
SCENARIOS: list[tuple[str, str, list[dict[str, Any]]]] = [
    (
        "standup",
        "init",
        [
            {"after_s": 1.5, "status": "in-progress"},
            {"after_s": 5.0, "status": "completed", "reason": "last-participant-left"},
        ],
    ),
    (
        "lone-caller",
        "init",
        [
            {"after_s": 2.0, "status": "completed", "reason": "last-participant-left"},
        ],
    ),
    (
        "incident-bridge",
        "in-progress",
        [
            {
                "after_s": 4.0,
                "status": "completed",
                "reason": "participant-with-end-conference-on-exit-left",
            },
        ],
    ),
    (
        "moderated",
        "init",
        [
            {"after_s": 1.0, "status": "in-progress"},
            {
                "after_s": 3.5,
                "status": "completed",
                "reason": "participant-with-end-conference-on-exit-kicked",
            },
        ],
    ),
    (
        "town-hall",
        "in-progress",
        [
            {"after_s": 3.0, "status": "completed", "reason": "last-participant-kicked"},
        ],
    ),
    ("ended-by-api", "in-progress", []),  # ended through the API by the demo itself
]


class _Receiver(BaseHTTPRequestHandler):
    key: bytes = b""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = verify(self.key, dict(self.headers.items()), body)
        self.send_response(204 if ok else 400)
        self.end_headers()
        doc = json.loads(body)
        sid = doc["data"].get("conference_sid")
        print(
            f"  webhook  <- {doc['type']:<20} {sid} signature {'verified' if ok else 'INVALID'}",
            flush=True,
        )

    def log_message(self, *_args: Any) -> None:
        pass


def _write_config(folder: Path, sim_url: str, hook_url: str, secret: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""# written by `conference-monitor demo`
[twilio]
account_sid = "{DEFAULT_ACCOUNT_SID}"
auth_token = "{DEFAULT_AUTH_TOKEN}"
base_url = "{sim_url}"

[database]
url = "sqlite:///{folder}/demo.db"

[polling]
interval = "500ms"
jitter = "100ms"
not_found_grace = "3s"

[dispatch]
interval = "250ms"

[[notifiers]]
name = "log"
type = "log"

[[notifiers]]
name = "receiver"
type = "webhook"
url = "{hook_url}"
secret = "{secret}"
"""
    )
    return path


def _drive(app: App, daemon: Daemon, sim: SimulatorServer, ctl: SimulatorControl) -> None:
    """Create the conferences, end one through the API, stop the daemon when all is done."""
    sids = {}
    for name, status, steps in SCENARIOS:
        sid = ctl.create_conference(friendly_name=name, status=status)["sid"]
        if steps:
            ctl.script(sid, steps)
        sids[name] = sid
    app.store.add_watches([*sids.values(), GHOST_SID], DEFAULT_ACCOUNT_SID, "demo", _now())
    print(f"  watching {len(sids) + 1} conferences (one of them never existed)\n", flush=True)
    time.sleep(3.0)
    with TwilioClient(
        account_sid=DEFAULT_ACCOUNT_SID,
        username=DEFAULT_ACCOUNT_SID,
        password=DEFAULT_AUTH_TOKEN,
        base_url=sim.url,
    ) as client:
        client.end_conference(sids["ended-by-api"])
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while time.monotonic() < deadline:
        active = app.store.watch_counts().get("active", 0)
        backlog, _ = app.outbox.backlog()
        if active == 0 and backlog == 0:
            break
        time.sleep(0.25)
    daemon.request_stop()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _print_summary(settings: Settings) -> None:
    app = App.open(settings)
    try:
        rows = queries.events(app.engine, limit=1000, oldest_first=True)
        watches = app.store.list_watches()
        deliveries = app.outbox.listing(limit=1000)
    finally:
        app.close()
    print("\nEvents, oldest first (`conference-monitor events` shows them newest first):")
    shown = []
    for row in rows:
        data = json.loads(row["body"])["data"]
        shown.append(
            {
                "at": row["occurred_at"],
                "type": row["type"],
                "name": data.get("friendly_name"),
                "from": row["from_status"],
                "to": row["to_status"],
                "skipped": row["skipped"] or None,
                "reason": row["reason_conference_ended"],
                "ending_call": row["call_sid_ending_conference"],
            }
        )
    emit(
        shown,
        ("at", "type", "name", "from", "to", "skipped", "reason", "ending_call"),
        as_json=False,
    )
    print("\nWatches:")
    emit(watches, ("sid", "status", "last_status", "label"), as_json=False)
    delivered = sum(1 for d in deliveries if d["status"] == "delivered")
    print(
        f"\nDeliveries: {delivered} of {len(deliveries)} delivered "
        f"(log and signed webhook; `conference-monitor deliveries` lists them)"
    )
    reasons = {r["reason_conference_ended"] for r in rows if r["reason_conference_ended"]}
    print(f"End reasons seen: {len(reasons)} of {len(END_REASONS)}")


def run_demo(keep: bool = False) -> int:
    folder = Path(tempfile.mkdtemp(prefix="conference-monitor-demo-"))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    _Receiver.key = decode_secret(secret)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/conference"
    try:
        with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl:
            config = _write_config(folder, sim.url, hook_url, secret)
            print(
                f"conference-monitor demo\n  simulator  {sim.url}\n  receiver   {hook_url}\n"
                f"  database   {folder / 'demo.db'}\n  config     {config}\n",
                flush=True,
            )
            settings = load_settings(config, {})
            app = App.open(settings)
            upgrade(app.engine)
            daemon = Daemon(app, config, {})
            driver = threading.Thread(target=_drive, args=(app, daemon, sim, ctl), daemon=True)
            driver.start()
            daemon.run()
            driver.join(timeout=5)
            _print_summary(settings)
    finally:
        receiver.shutdown()
        receiver.server_close()
        if keep:
            print(f"\nkept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
