"""Nothing missed, nothing doubled: several daemons and `poll` commands on one database.

Every test here runs real daemons as subprocesses against the simulator on
loopback, with Twilio answering slower than the polling interval (so any
lease or compare-and-set that does not hold shows up as a second event), and
checks both the database and what a webhook receiver got.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from monitor.db.models import Event
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import (
    Daemon,
    Receiver,
    cli,
    daemon,
    receiver,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow
REASON = "participant-with-end-conference-on-exit-left"
CALL = "CA" + "c" * 32


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, SimulatorControl]]:
    with SimulatorServer() as server, SimulatorControl(server.url) as ctl:
        yield server, ctl


def transitions(db_url: str) -> collections.Counter[tuple[str, str]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Event.conference_sid, Event.type)).all()
    finally:
        engine.dispose()
    return collections.Counter((sid, kind) for sid, kind in rows)


def received_ids(hook: Receiver) -> dict[tuple[str, str], set[str]]:
    """(conference sid, event type) -> the webhook-ids it arrived under."""
    ids: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    with hook.lock:
        got = list(hook.received)
    for item in got:
        import json

        body = json.loads(item.body)
        ids[(body["data"]["conference_sid"], body["type"])].add(item.headers["webhook-id"])
    return ids


def walk(ctl: SimulatorControl, sids: list[str], start_s: float, end_s: float) -> None:
    """Script each conference init -> in-progress -> completed, staggered."""
    for i, sid in enumerate(sids):
        offset = 0.15 * i
        ctl.script(
            sid,
            [
                {"after_s": start_s + offset, "status": "in-progress"},
                {
                    "after_s": end_s + offset,
                    "status": "completed",
                    "reason": REASON,
                    "call_sid": CALL,
                },
            ],
        )


def setup(
    tmp_path: Path,
    server: SimulatorServer,
    ctl: SimulatorControl,
    db_url: str,
    hook: Receiver,
    n: int,
) -> tuple[Path, list[str]]:
    config = write_config(
        tmp_path,
        sim_url=server.url,
        db_url=db_url,
        hook_url=hook.url,
        interval="1s",
        extra='lease = "5s"\n',
    )
    assert cli("db", "upgrade", config=config).returncode == 0
    sids = [
        ctl.create_conference(friendly_name=f"room-{i}", status="init")["sid"] for i in range(n)
    ]
    added = cli("watch", "add", *sids, config=config)
    assert added.returncode == 0, added.stderr
    return config, sids


def assert_exactly_once(
    db_url: str, hook: Receiver, sids: list[str], *, started_seen: bool = True
) -> None:
    """One started (when its in-progress could be seen) and one ended per conference,
    each received under exactly one webhook-id."""
    counts = transitions(db_url)
    ids = received_ids(hook)
    for sid in sids:
        assert counts[(sid, "conference.ended")] == 1, (sid, counts)
        assert counts[(sid, "conference.started")] == int(started_seen), (sid, counts)
        for kind in ("conference.started", "conference.ended"):
            assert len(ids[(sid, kind)]) == counts[(sid, kind)], (sid, kind, ids[(sid, kind)])


def wait_all_delivered(db_url: str, hook: Receiver, sids: list[str], timeout: float) -> None:
    def done() -> bool:
        ids = received_ids(hook)
        return all(ids.get((s, "conference.ended")) for s in sids)

    wait_for(done, timeout, "every conference.ended delivered")


def run_daemons(config: Path, tmp_path: Path, n: int) -> list[Any]:
    return [daemon(config, tmp_path / f"d{i}.log") for i in range(n)]


def test_two_daemons_on_postgres_with_twilio_slower_than_the_interval(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl], pg_url: str
) -> None:
    server, ctl = sim
    with receiver() as hook:
        config, sids = setup(tmp_path, server, ctl, pg_url, hook, 12)
        ctl.add_fault("delay", delay_s=1.5)  # every request, lists included
        with daemon(config, tmp_path / "a.log"), daemon(config, tmp_path / "b.log"):
            walk(ctl, sids, start_s=3, end_s=13)
            wait_all_delivered(pg_url, hook, sids, 60)
            time.sleep(3)  # room for a duplicate to show up, if one were coming
        assert_exactly_once(pg_url, hook, sids)


def test_a_daemon_and_repeated_poll_commands(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl], pg_url: str
) -> None:
    server, ctl = sim
    with receiver() as hook:
        config, sids = setup(tmp_path, server, ctl, pg_url, hook, 8)
        ctl.add_fault("delay", delay_s=0.7)
        with daemon(config, tmp_path / "a.log"):
            walk(ctl, sids, start_s=2, end_s=8)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                polled = cli("poll", *sids, config=config)
                assert polled.returncode in (0, 1), polled.stderr
            wait_all_delivered(pg_url, hook, sids, 60)
            time.sleep(2)
        assert_exactly_once(pg_url, hook, sids)


def test_two_daemons_on_one_sqlite_file(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    server, ctl = sim
    db = f"sqlite:///{tmp_path}/shared.db"
    with receiver() as hook:
        config, sids = setup(tmp_path, server, ctl, db, hook, 8)
        ctl.add_fault("delay", delay_s=1.2)
        with daemon(config, tmp_path / "a.log"), daemon(config, tmp_path / "b.log"):
            walk(ctl, sids, start_s=2, end_s=11)
            wait_all_delivered(db, hook, sids, 60)
            time.sleep(2)
        assert_exactly_once(db, hook, sids)


def test_sigkill_of_one_of_three_instances_misses_and_doubles_nothing(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl], pg_url: str
) -> None:
    server, ctl = sim
    with receiver() as hook:
        config, sids = setup(tmp_path, server, ctl, pg_url, hook, 15)
        ctl.add_fault("delay", delay_s=0.3)
        # A killed sweeper's lease lapses after 2 request deadlines + 5 s (7 s here):
        # each conference stays in progress longer than that, so its start is seen.
        env = {"CONFERENCE_MONITOR_TWILIO_REQUEST_DEADLINE": "1s"}
        with (
            daemon(config, tmp_path / "a.log", env=env) as a,
            daemon(config, tmp_path / "b.log", env=env),
            daemon(config, tmp_path / "c.log", env=env),
        ):
            walk(ctl, sids, start_s=2, end_s=13)
            time.sleep(4)  # mid-run: some started, none ended
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(timeout=10)
            wait_all_delivered(pg_url, hook, sids, 90)
            time.sleep(2)
        assert_exactly_once(pg_url, hook, sids)


def test_a_conference_that_starts_and_ends_while_the_daemon_is_down_is_notified(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    server, ctl = sim
    db = f"sqlite:///{tmp_path}/late.db"
    old = ctl.create_conference(friendly_name="over-before-watching", status="completed")
    time.sleep(1.1)  # Twilio's dates have whole seconds: be clearly apart from the watch
    with receiver() as hook:
        config, (walked, started) = setup(tmp_path, server, ctl, db, hook, 2)
        assert cli("watch", "add", old["sid"], config=config).returncode == 0
        time.sleep(1.1)
        ctl.set_status(walked, "in-progress")
        ctl.set_status(walked, "completed", reason=REASON, call_sid=CALL)
        ctl.set_status(started, "in-progress")
        with daemon(config, tmp_path / "d.log"):
            wait_for(lambda: len(received_ids(hook)) >= 2, 30, "two notifications")
            time.sleep(1)
        bodies = {(b["data"]["conference_sid"], b["type"]): b for b in hook.bodies()}
        ended = bodies[(walked, "conference.ended")]["data"]
        assert ended["from_status"] == "init" and ended["skipped"] == ["in-progress"]
        assert ended["reason_conference_ended"] == REASON
        assert ended["call_sid_ending_conference"] == CALL
        began = bodies[(started, "conference.started")]["data"]
        assert (began["from_status"], began["to_status"]) == ("init", "in-progress")
        assert not [k for k in bodies if k[0] == old["sid"]]  # ended before it was watched
        counts = transitions(db)
        assert counts[(old["sid"], "conference.first_seen")] == 1
        assert counts[(old["sid"], "conference.ended")] == 0


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def test_disk_full_is_not_ready_then_recovers_with_nothing_lost(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    import os

    if os.geteuid() != 0 or not _mount_tmpfs(tmp_path / "small", "8m"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: this test needs root to mount a small tmpfs")
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    small = tmp_path / "small"
    try:
        _disk_full_scenario(tmp_path, small, sim)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _disk_full_scenario(
    tmp_path: Path, small: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    import urllib.request

    server, ctl = sim
    db = f"sqlite:///{small}/m.db"
    with receiver() as hook:
        config, sids = setup(tmp_path, server, ctl, db, hook, 6)
        config.write_text(config.read_text() + '\n[http]\nlisten = "127.0.0.1:0"\n')
        with daemon(config, tmp_path / "d.log") as d:
            port = _http_port(d)

            def ready() -> tuple[int, str]:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                        return r.status, r.read().decode()
                except urllib.error.HTTPError as e:
                    return e.code, e.read().decode()

            wait_for(lambda: ready()[0] == 200, 20, "ready")
            wait_for(lambda: len(transitions(db)) >= len(sids), 20, "baselines")
            filler = _fill(small)
            walk(ctl, sids, start_s=0.5, end_s=2)
            wait_for(lambda: ready()[0] == 503, 30, "/readyz 503 on a full disk")
            assert "cannot be written" in ready()[1]
            time.sleep(3)  # every conference ended while nothing could be written
            filler.unlink()
            wait_for(lambda: ready()[0] == 200, 60, "/readyz 200 again")
            wait_all_delivered(db, hook, sids, 60)
            time.sleep(1)
        # In-progress came and went while nothing could be written: each ended
        # says so with skipped = ["in-progress"], and none is lost or doubled.
        assert_exactly_once(db, hook, sids, started_seen=False)
        ended = [b for b in hook.bodies() if b["type"] == "conference.ended"]
        assert {tuple(b["data"]["skipped"]) for b in ended} == {("in-progress",)}


def _http_port(d: Daemon) -> int:
    def bound() -> int | None:
        for line in d.log_lines():
            if line.get("event") == "http.started":
                return int(line["msg"].rsplit(":", 1)[1])
        return None

    wait_for(lambda: bound() is not None, 20, "the HTTP listener")
    port = bound()
    assert port is not None
    return port
