"""A Twilio that drips, floods, loops or lies about one conference must not stop the
daemon from observing every other one (the daemon as a subprocess, the simulator
serving the bad answers)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from monitor.db.models import Event
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import cli, daemon, wait_for, write_config

pytestmark = pytest.mark.slow
INTERVAL_S = 1.0
# A liveness bound, not a performance figure: two intervals, plus time for the
# daemon to fall back from lists that never end, plus slack for a loaded machine.
WITHIN_S = 2 * INTERVAL_S + 8

FAULTS: dict[str, tuple[bool, dict[str, Any]]] = {
    # kind: (observed by list sweeps?, fault options; "BAD" is replaced by the bad SID)
    "drip": (False, {"kind": "drip", "delay_s": 1.0, "sid": "BAD"}),
    "huge": (False, {"kind": "huge", "size_bytes": 150_000_000, "sid": "BAD"}),
    "mismatch": (False, {"kind": "mismatch", "sid": "BAD"}),
    "malformed_item": (True, {"kind": "malformed_item", "sid": "BAD"}),
    "loop": (True, {"kind": "loop"}),
    "endless_loop": (True, {"kind": "loop", "endless": True}),
}


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, SimulatorControl]]:
    with SimulatorServer() as server, SimulatorControl(server.url) as ctl:
        yield server, ctl


def started(db_url: str) -> set[str]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(Event.conference_sid).where(Event.type == "conference.started")
            return set(conn.scalars(query))
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", list(FAULTS))
def test_one_bad_answer_delays_only_itself(
    name: str, tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    server, ctl = sim
    use_list, fault = FAULTS[name]
    db = f"sqlite:///{tmp_path}/m.db"
    config = write_config(tmp_path, sim_url=server.url, db_url=db, interval="1s")
    text = config.read_text().replace("[polling]\n", f"[polling]\nuse_list = {use_list}\n".lower())
    deadline = 'read_timeout = "2s"\nrequest_deadline = "3s"'
    config.write_text(text.replace('read_timeout = "2s"', deadline))
    assert cli("db", "upgrade", config=config).returncode == 0
    sids = [ctl.create_conference(status="init")["sid"] for _ in range(8)]
    bad = sids[0]
    assert cli("watch", "add", *sids, config=config).returncode == 0
    with daemon(config, tmp_path / "d.log") as d:
        wait_for(lambda: _baselines(db) >= len(sids), 30, "every baseline")
        options = {k: (bad if v == "BAD" else v) for k, v in fault.items()}
        ctl.add_fault(**options)
        for sid in sids:
            ctl.set_status(sid, "in-progress")
        others = set(sids[1:])
        wait_for(lambda: others <= started(db), WITHIN_S, f"the others observed despite {name}")
        assert d.process.poll() is None  # still running


def _baselines(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(Event.conference_sid).where(Event.type == "conference.first_seen")
            return len(collections.Counter(conn.scalars(query)))
    finally:
        engine.dispose()
