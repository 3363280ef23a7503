"""Status callbacks end to end: the simulator's signed callbacks drive the daemon.

The daemon runs as a subprocess with its listener on loopback; the simulator
posts signed `conference-start`/`conference-end` callbacks to it, and a webhook
receiver shows what was notified and how it was detected. Polling is slow
here (20 s) so a callback is what detects, except where the test says so.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, func, select

from monitor.db.models import Watch
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import Receiver, cli, daemon, receiver, wait_for, write_config

pytestmark = pytest.mark.slow
REASON = "participant-with-end-conference-on-exit-left"
CALL = "CA" + "c" * 32
PATH = "/twilio/conference-events"


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, SimulatorControl]]:
    with SimulatorServer() as server, SimulatorControl(server.url) as ctl:
        yield server, ctl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configure(
    tmp_path: Path, server: SimulatorServer, hook: Receiver, port: int, **options: str
) -> Path:
    watch_unknown = options.get("watch_unknown", "false")
    config = write_config(
        tmp_path,
        sim_url=server.url,
        db_url=f"sqlite:///{tmp_path}/monitor.db",
        hook_url=hook.url,
        interval=options.get("interval", "20s"),
        extra=(
            f'\n[http]\nlisten = "127.0.0.1:{port}"\n'
            f"\n[callbacks]\nenabled = true\nwatch_unknown = {watch_unknown}\n"
        ),
    )
    assert cli("db", "upgrade", config=config).returncode == 0
    return config


def notified(hook: Receiver) -> Counter[tuple[str, str, str]]:
    """(conference sid, type, detected_via) of every webhook received."""
    return Counter(
        (b["data"]["conference_sid"], b["type"], b["data"]["detected_via"]) for b in hook.bodies()
    )


def metric(port: int, name: str) -> float:
    with requests.Session() as s:
        s.trust_env = False
        text = s.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def baselines(tmp_path: Path) -> int:
    """Watches whose first observation is recorded."""
    engine = create_engine(f"sqlite:///{tmp_path}/monitor.db")
    try:
        with engine.connect() as conn:
            query = select(func.count()).where(Watch.current_snapshot_id.is_not(None))
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def listening(port: int) -> bool:
    try:
        with requests.Session() as s:
            s.trust_env = False
            return s.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_simulator_callbacks_drive_the_daemon(tmp_path: Path, sim: Any) -> None:
    server, ctl = sim
    port = free_port()
    with receiver() as hook:
        config = configure(tmp_path, server, hook, port)
        url = f"http://127.0.0.1:{port}{PATH}"
        sids = [
            ctl.create_conference(friendly_name=f"room-{i}", status="init", status_callback=url)[
                "sid"
            ]
            for i in range(3)
        ]
        assert cli("watch", "add", *sids, config=config).returncode == 0
        with daemon(config, tmp_path / "daemon.log") as run:
            wait_for(lambda: listening(port), 15, "the listener")
            # The first poll's baseline, so the callbacks are what detects the change.
            wait_for(lambda: baselines(tmp_path) == 3, 15, "the baseline polls")
            for sid in sids:
                ctl.script(
                    sid,
                    [
                        {"after_s": 0.1, "status": "in-progress"},
                        {"after_s": 0.6, "status": "completed", "reason": REASON, "call_sid": CALL},
                    ],
                )
            wait_for(lambda: len(hook.bodies()) >= 6, 15, "six webhooks")
            time.sleep(1.0)  # the confirming polls: nothing more may arrive
            got = notified(hook)
            for sid in sids:
                assert got[(sid, "conference.started", "callback")] == 1, got
                assert got[(sid, "conference.ended", "callback")] == 1, got
            assert sum(got.values()) == 6, got
            ended = [b for b in hook.bodies() if b["type"] == "conference.ended"]
            assert {(b["data"]["reason_conference_ended"], b["data"]["call_sid_ending_conference"])
                    for b in ended} == {(REASON, CALL)}  # fmt: skip
            assert metric(port, 'conference_monitor_callbacks_total{result="accepted"}') == 6
            assert metric(port, "conference_monitor_callback_commit_seconds_count") == 6
            assert run.stop() == 0


def test_daemon_down_while_callbacks_are_sent_then_polling_catches_up(
    tmp_path: Path, sim: Any
) -> None:
    server, ctl = sim
    port = free_port()
    with receiver() as hook:
        config = configure(tmp_path, server, hook, port, interval="500ms")
        url = f"http://127.0.0.1:{port}{PATH}"
        sid = ctl.create_conference(friendly_name="room", status="init", status_callback=url)["sid"]
        assert cli("watch", "add", sid, config=config).returncode == 0
        with daemon(config, tmp_path / "daemon.log") as first:
            wait_for(lambda: listening(port), 15, "the listener")
            wait_for(lambda: baselines(tmp_path) == 1, 15, "the baseline poll")
            assert first.stop() == 0
        # Nobody listens: both callbacks are lost, as they are when Twilio's POST fails.
        ctl.set_status(sid, "in-progress")
        ctl.set_status(sid, "completed", REASON, CALL)
        wait_for(lambda: len(ctl.transitions(sid)) >= 3, 5, "the simulated transitions")
        time.sleep(0.5)  # the simulator's sender has tried (and failed) by now
        with daemon(config, tmp_path / "daemon.log") as second:
            wait_for(lambda: len(hook.bodies()) >= 1, 15, "the catch-up webhook")
            time.sleep(1.0)
            assert second.stop() == 0
        got = notified(hook)
        assert got == {(sid, "conference.ended", "poll"): 1}, got
        (body,) = hook.bodies()
        assert body["data"]["skipped"] == ["in-progress"]


@pytest.mark.parametrize("watch_unknown", [True, False])
def test_auto_watch(tmp_path: Path, sim: Any, watch_unknown: bool) -> None:
    server, ctl = sim
    port = free_port()
    with receiver() as hook:
        config = configure(
            tmp_path, server, hook, port, watch_unknown="true" if watch_unknown else "false"
        )
        url = f"http://127.0.0.1:{port}{PATH}"
        with daemon(config, tmp_path / "daemon.log") as run:
            wait_for(lambda: listening(port), 15, "the listener")
            sid = ctl.create_conference(friendly_name="auto", status="init", status_callback=url)[
                "sid"
            ]
            ctl.set_status(sid, "in-progress")
            if watch_unknown:
                wait_for(lambda: len(hook.bodies()) >= 1, 15, "the started webhook")
                assert notified(hook) == {(sid, "conference.started", "callback"): 1}
            else:
                wait_for(
                    lambda: (
                        metric(port, 'conference_monitor_callbacks_total{result="unwatched"}') == 1
                    ),
                    15,
                    "the unwatched callback",
                )
                assert hook.bodies() == []
            assert run.stop() == 0
        listed = cli("watch", "list", "--json", config=config)
        assert listed.returncode == 0, listed.stderr
        assert (sid in listed.stdout) is watch_unknown
