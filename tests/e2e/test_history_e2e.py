"""History from a running daemon: what it recorded, served over its own listener, agrees
with the CLI; `report` on a known history; the retention job runs in the daemon."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from monitor.db.engine import make_engine, upgrade
from monitor.domain import EventType
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import cli, daemon, json_lines, wait_for, write_config
from tests.historydata import add_conference, add_watch_event, sid

pytestmark = pytest.mark.slow

HISTORY = """
[http]
listen = "127.0.0.1:0"

[api]
allow_loopback = true

[retention]
interval = "1s"
"""


def listening_on(log_lines: list[dict[str, object]]) -> str | None:
    for line in log_lines:
        if line.get("event") == "http.started":
            found = re.search(r"http://\S+", str(line.get("msg", "")))
            if found:
                return found.group(0)
    return None


def test_a_running_daemon_serves_what_it_recorded(tmp_path: Path) -> None:
    with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl:
        config = write_config(
            tmp_path, sim_url=sim.url, db_url=f"sqlite:///{tmp_path}/h.db", extra=HISTORY
        )
        assert cli("db", "upgrade", config=config).returncode == 0
        engine = make_engine(f"sqlite:///{tmp_path}/h.db")
        long_ago = datetime.now(UTC) - timedelta(days=500)  # past every default age
        add_conference(engine, 99, created=long_ago, ended=long_ago + timedelta(minutes=3))
        engine.dispose()
        sids = [ctl.create_conference(friendly_name=f"bridge-{i}")["sid"] for i in range(2)]
        assert cli("watch", "add", *sids, "--label", "ops", config=config).returncode == 0
        started_at = datetime.now(UTC) - timedelta(minutes=1)
        with daemon(config, tmp_path / "d.log") as running:
            wait_for(lambda: listening_on(running.log_lines()) is not None, 20, "the listener")
            base = str(listening_on(running.log_lines()))
            for sid_ in sids:
                ctl.script(
                    sid_,
                    [
                        {"after_s": 0.5, "status": "in-progress"},
                        {"after_s": 1.5, "status": "completed", "reason": "last-participant-left"},
                    ],
                )

            def finished() -> bool:
                page = requests.get(base + "/api/v1/conferences?status=completed", timeout=10)
                return len(page.json()["items"]) == 2

            wait_for(finished, 30, "both conferences completed, seen through the API")
            served = requests.get(base + "/api/v1/events?limit=500", timeout=10).json()["items"]
            printed = json_lines(cli("events", "--json", config=config).stdout)
            assert served == printed and len(served) == 6
            detail = requests.get(f"{base}/api/v1/conferences/{sids[0]}", timeout=10).json()
            assert [s["status"] for s in detail["snapshots"]][-1] == "completed"
            assert detail["label"] == "ops" and detail["reason_conference_ended"]
            page = requests.get(f"{base}/ui/conferences/{sids[0]}", timeout=10)
            assert page.status_code == 200 and "last-participant-left" in page.text
            window = {"since": started_at.isoformat(), "until": datetime.now(UTC).isoformat()}
            summary = requests.get(base + "/api/v1/summary", params=window, timeout=10).json()
            assert summary["conferences"]["ended"] == 2
            reported = cli(
                "report", "--since", window["since"], "--until", window["until"], "--json",
                config=config,
            )  # fmt: skip
            assert json_lines(reported.stdout) == [summary]
            old = f"{base}/api/v1/conferences/{sid(99)}"
            wait_for(
                lambda: requests.get(old, timeout=10).status_code == 404,
                20,
                "the retention job to prune a conference from 500 days ago",
            )
            assert running.stop() == 0
        failures = [line for line in running.log_lines() if line.get("event") == "tick.failed"]
        assert failures == []


def test_report_on_a_known_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    engine = make_engine(url)
    upgrade(engine)
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    for n, minutes in enumerate((5, 30, 12, 90)):
        created = t0 + timedelta(hours=n)
        add_conference(
            engine,
            n,
            created=created,
            started=created + timedelta(seconds=30),
            ended=created + timedelta(minutes=minutes),
            reason="last-participant-left" if n != 2 else "conference-ended-via-api",
            name="incident \x1b[31mbridge" if n == 3 else None,
        )
    add_conference(engine, 9, created=t0 + timedelta(hours=5))  # still running
    add_watch_event(engine, EventType.WATCH_NOT_FOUND, t0 + timedelta(hours=6), n=7)
    add_watch_event(engine, EventType.WATCH_AUTH_FAILED, t0 + timedelta(hours=7))
    engine.dispose()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    window = ("--since", "2026-11-20T00:00:00Z", "--until", "2026-11-21T00:00:00Z")

    printed = cli("report", *window, config=config)
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout
    for expected in (
        "started      4",
        "ended        4",
        "not found    1",
        "auth failed  1 (failing now: AC",
        "duration (n=4)  p50 12m  p95 1h30m  max 1h30m",
        "last-participant-left     3",
        "conference-ended-via-api  1",
        f"{sid(3)}     1h30m  incident \\x1b[31mbridge  (last-participant-left)",
        "deliveries now: 0 pending, 0 failed, 0 dead",
    ):
        assert expected in text, (expected, text)
    assert "\x1b" not in text

    doc = json_lines(cli("report", *window, "--json", config=config).stdout)[0]
    assert doc["duration_s"] == {"count": 4, "p50": 720.0, "p95": 5400.0, "max": 5400.0}
    assert [row["sid"] for row in doc["longest"]] == [sid(3), sid(1), sid(2), sid(0)]

    empty = cli("report", "--since", "2025-01-01T00:00:00Z", "--until", "2025-01-02", config=config)
    assert "duration (n=0)  p50 -  p95 -  max -" in empty.stdout


def test_report_refuses_a_backwards_window_and_a_schema_that_is_behind(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/empty.db"\n')
    backwards = cli("report", "--since", "1d", "--until", "2d", config=config)
    assert backwards.returncode == 2 and "--since must be earlier" in backwards.stderr
    behind = cli("report", config=config)
    assert behind.returncode == 1 and "db upgrade" in behind.stderr
    assert sys.executable  # the CLI ran as a user runs it, in its own process
