"""The daemon as a user runs it, against the simulator: every transition exactly once.

Twenty-two conferences of mixed lifecycles; the daemon is stopped with SIGTERM
mid-run and restarted; `events --json`, the log and the webhook receiver must
each show every expected event once, with the right reason and ending call.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from monitor.domain import END_REASONS
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from monitor.twilio.client import TwilioClient
from tests.e2e.harness import (
    ACCOUNT,
    TOKEN,
    cli,
    daemon,
    json_lines,
    receiver,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

SCRIPTED_REASONS = [r for r in END_REASONS if r != "conference-ended-via-api"]
GAP_S = 4.0  # between two steps of one conference: longer than a stop + restart, loaded


def plan() -> list[dict[str, Any]]:
    """(name, initial status, steps, expected event types after first_seen)."""
    cases: list[dict[str, Any]] = []
    for i, reason in enumerate(SCRIPTED_REASONS * 3):  # normal lifecycle, each reason 3x
        call = f"CA{i:032x}"
        cases.append(
            {
                "name": f"normal-{i}",
                "status": "init",
                "steps": [
                    {"after_s": 1.0 + i * 0.2, "status": "in-progress"},
                    {
                        "after_s": 1.0 + i * 0.2 + GAP_S * 2,
                        "status": "completed",
                        "reason": reason,
                        "call_sid": call,
                    },
                ],
                "expect": ["conference.started", "conference.ended"],
                "reason": reason,
                "call": call,
            }
        )
    for i, reason in enumerate(SCRIPTED_REASONS):  # init -> completed: skipped in-progress
        call = f"CA{i + 100:032x}"
        cases.append(
            {
                "name": f"skipped-{i}",
                "status": "init",
                "steps": [
                    {
                        "after_s": 1.5 + i * 0.3,
                        "status": "completed",
                        "reason": reason,
                        "call_sid": call,
                    }
                ],
                "expect": ["conference.ended"],
                "reason": reason,
                "call": call,
                "skipped": True,
            }
        )
    for i in range(3):  # first seen completed: a baseline only
        cases.append({"name": f"done-{i}", "status": "completed", "steps": [], "expect": []})
    for i in range(3):  # in progress, then ended through the API by the test
        cases.append(
            {
                "name": f"api-{i}",
                "status": "in-progress",
                "steps": [],
                "expect": ["conference.ended"],
                "reason": "conference-ended-via-api",
                "call": None,
                "via_api": True,
            }
        )
    return cases


def test_every_transition_exactly_once_across_sigterm_and_restart(tmp_path: Path) -> None:
    cases = plan()
    assert len(cases) >= 20
    with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl, receiver() as hook:
        config = write_config(
            tmp_path, sim_url=sim.url, db_url=f"sqlite:///{tmp_path}/e2e.db", hook_url=hook.url
        )
        assert cli("db", "upgrade", config=config).returncode == 0
        for case in cases:
            created = ctl.create_conference(friendly_name=case["name"], status=case["status"])
            case["sid"] = created["sid"]
        # Twilio's dates have whole seconds, and a status reached in the second the
        # watch was made counts as reached after it (notified): be clearly before.
        time.sleep(1.1)
        added = cli("watch", "add", *[c["sid"] for c in cases], config=config)
        assert added.returncode == 0, added.stderr
        log_path = tmp_path / "daemon.log"

        with daemon(config, log_path) as first:
            # Every conference gets its baseline before any of them moves.
            wait_for(
                lambda: (
                    len(json_lines(cli("events", "--json", config=config).stdout)) == len(cases)
                ),
                30,
                "a first_seen event for every conference",
            )
            for case in cases:
                if case["steps"]:
                    ctl.script(case["sid"], case["steps"])
            time.sleep(2.5)
            started = time.monotonic()
            assert first.stop(signal.SIGTERM) == 0
            assert time.monotonic() - started < 10
        with daemon(config, log_path) as second:
            time.sleep(1.0)
            with TwilioClient(
                account_sid=ACCOUNT, username=ACCOUNT, password=TOKEN, base_url=sim.url
            ) as client:
                for case in cases:
                    if case.get("via_api"):
                        client.end_conference(case["sid"])

            def all_done() -> bool:
                watches = json_lines(cli("watch", "list", "--json", config=config).stdout)
                pending = json_lines(
                    cli("deliveries", "--status", "pending", "--json", config=config).stdout
                )
                return all(w["status"] == "completed" for w in watches) and not pending

            wait_for(all_done, 60, "every watch completed and every delivery made")
            assert second.stop(signal.SIGTERM) == 0

        events = json_lines(cli("events", "--json", "--limit", "1000", config=config).stdout)
        check_events(cases, events)
        check_log(events, second.log_lines())  # both runs append to one log file
        check_webhooks(events, hook.bodies())


def check_events(cases: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    by_sid: dict[str, list[dict[str, Any]]] = {}
    for event in reversed(events):  # oldest first
        by_sid.setdefault(event["data"]["conference_sid"], []).append(event)
    for case in cases:
        got = by_sid[case["sid"]]
        types = [e["type"] for e in got]
        assert types == ["conference.first_seen", *case["expect"]], (case["name"], types)
        if "conference.ended" in case["expect"]:
            ended = got[-1]["data"]
            assert ended["reason_conference_ended"] == case["reason"], case["name"]
            assert ended["call_sid_ending_conference"] == case["call"], case["name"]
            assert ended["skipped"] == (["in-progress"] if case.get("skipped") else [])
            assert ended["friendly_name"] == case["name"]
    reasons = {
        e["data"]["reason_conference_ended"] for e in events if e["type"] == "conference.ended"
    }
    assert reasons == set(END_REASONS)


def check_log(events: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    notified = {e["id"] for e in events if e["type"] != "conference.first_seen"}
    logged = Counter(line["event_id"] for line in lines if line.get("logger") == "monitor.events")
    assert set(logged) == notified
    assert all(count == 1 for count in logged.values()), logged.most_common(3)


def check_webhooks(events: list[dict[str, Any]], bodies: list[dict[str, Any]]) -> None:
    notified = Counter(e["id"] for e in events if e["type"] != "conference.first_seen")
    received = Counter(b["data"]["event_id"] for b in bodies)
    assert set(received) == set(notified)


def test_discovery_watches_active_conferences_and_follows_them(tmp_path: Path) -> None:
    with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl:
        config = write_config(
            tmp_path,
            sim_url=sim.url,
            db_url=f"sqlite:///{tmp_path}/d.db",
            extra="",
        )
        text = config.read_text().replace('jitter = "50ms"', 'jitter = "50ms"\ndiscover = true')
        config.write_text(text)
        assert cli("db", "upgrade", config=config).returncode == 0
        live = ctl.create_conference(friendly_name="found", status="in-progress")["sid"]
        with daemon(config, tmp_path / "d.log") as running:

            def watched() -> list[dict[str, Any]]:
                return json_lines(cli("watch", "list", "--json", config=config).stdout)

            wait_for(lambda: [w["sid"] for w in watched()] == [live], 20, "discovery")
            ctl.set_status(live, "completed", reason="last-participant-left")
            wait_for(lambda: watched()[0]["status"] == "completed", 20, "the end of it")
            assert running.stop() == 0
        assert watched()[0]["label"] == "discovered"
