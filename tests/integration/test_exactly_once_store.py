"""Sweep election, hand-over and the 0002 migration, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import Engine, select, text

from monitor.db.engine import alembic_config, make_engine, upgrade
from monitor.db.models import Event
from monitor.db.store import Store
from monitor.db.sweeps import SweepStore

ACCOUNT = "AC" + "a" * 32
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def sid(i: int) -> str:
    return f"CF{i:032x}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_one_sweeper_per_account_and_interval(engine: Engine) -> None:
    sweeps = SweepStore(Store(engine))
    sweeps.ensure(ACCOUNT, T0)
    assert sweeps.try_start(ACCOUNT, "a", T0, 10.0, 30.0)
    assert not sweeps.try_start(ACCOUNT, "b", T0, 10.0, 30.0)  # a holds it
    sweeps.finish(ACCOUNT, "a", T0 + timedelta(seconds=1), listed=1, missing=0, pages=1, error=None)
    assert not sweeps.try_start(ACCOUNT, "b", T0 + timedelta(seconds=9), 10.0, 30.0)  # not due
    assert sweeps.try_start(ACCOUNT, "b", T0 + timedelta(seconds=10), 10.0, 30.0)
    # b dies mid-sweep (no finish): its lease lapses, then another instance takes over.
    assert not sweeps.renew(ACCOUNT, "a", T0 + timedelta(seconds=11), 30.0)
    assert not sweeps.try_start(ACCOUNT, "c", T0 + timedelta(seconds=25), 10.0, 30.0)
    assert sweeps.try_start(ACCOUNT, "c", T0 + timedelta(seconds=41), 10.0, 30.0)


def test_a_finished_sweep_brings_the_next_one_forward_by_its_lead(engine: Engine) -> None:
    """The next sweep starts early by the last one's duration (so a slower one still
    reaches each conference within an interval), never in the past, and not after
    a failed sweep."""
    sweeps = SweepStore(Store(engine))
    sweeps.ensure(ACCOUNT, T0)
    assert sweeps.try_start(ACCOUNT, "a", T0, 10.0, 30.0)  # next due T0 + 10 s
    done = T0 + timedelta(seconds=1)
    sweeps.finish(ACCOUNT, "a", done, listed=1, missing=0, pages=1, error=None, lead_s=1.25)
    assert sweeps.due_in(ACCOUNT, "a", done) == 7.75
    assert sweeps.try_start(ACCOUNT, "a", T0 + timedelta(seconds=8.75), 10.0, 30.0)
    late = T0 + timedelta(seconds=18)  # took 9.25 s: the lead cannot go before now
    sweeps.finish(ACCOUNT, "a", late, listed=1, missing=0, pages=1, error=None, lead_s=2.5)
    assert sweeps.due_in(ACCOUNT, "a", late) == 0.0
    assert sweeps.try_start(ACCOUNT, "a", late, 10.0, 30.0)
    failed = late + timedelta(seconds=1)
    sweeps.finish(ACCOUNT, "a", failed, listed=0, missing=0, pages=0, error="boom", lead_s=2.0)
    assert sweeps.due_in(ACCOUNT, "a", failed) == 9.0


def test_a_losing_instance_knows_when_to_ask_again(engine: Engine) -> None:
    """`due_in` lets an instance that is not sweeping wait instead of asking 4 times a second."""
    sweeps = SweepStore(Store(engine))
    sweeps.ensure(ACCOUNT, T0)
    assert sweeps.due_in(ACCOUNT, "b", T0) == 0.0
    assert sweeps.try_start(ACCOUNT, "a", T0, 10.0, 30.0)
    # a is sweeping: its lease (30 s) outlasts the next due time (10 s).
    assert sweeps.due_in(ACCOUNT, "b", T0 + timedelta(seconds=1)) == 29.0
    sweeps.finish(ACCOUNT, "a", T0 + timedelta(seconds=2), listed=1, missing=0, pages=1, error=None)
    assert sweeps.due_in(ACCOUNT, "b", T0 + timedelta(seconds=2)) == 8.0
    assert sweeps.due_in(ACCOUNT, "b", T0 + timedelta(seconds=12)) == 0.0
    assert sweeps.due_in("AC" + "0" * 32, "b", T0) == 0.0  # no row: ask now
    # With a grace, the last sweeper (a) may start at the due time, others later.
    assert sweeps.due_in(ACCOUNT, "a", T0 + timedelta(seconds=2), 1.0) == 8.0
    assert sweeps.due_in(ACCOUNT, "b", T0 + timedelta(seconds=2), 1.0) == 9.0


def test_sweeps_stay_with_the_last_sweeper_unless_it_is_late(engine: Engine) -> None:
    sweeps = SweepStore(Store(engine))
    sweeps.ensure(ACCOUNT, T0)
    assert sweeps.try_start(ACCOUNT, "a", T0, 10.0, 30.0, 1.0)  # nobody swept yet
    sweeps.finish(ACCOUNT, "a", T0 + timedelta(seconds=1), listed=1, missing=0, pages=1, error=None)
    due = T0 + timedelta(seconds=10)
    assert not sweeps.try_start(ACCOUNT, "b", due, 10.0, 30.0, 1.0)  # a's turn first
    assert sweeps.try_start(ACCOUNT, "a", due, 10.0, 30.0, 1.0)
    sweeps.finish(ACCOUNT, "a", due + timedelta(seconds=1), listed=1, missing=0, pages=1, error=None)
    # a is gone: b takes over once the grace has passed.
    due = T0 + timedelta(seconds=20)
    assert not sweeps.try_start(ACCOUNT, "b", due + timedelta(seconds=0.5), 10.0, 30.0, 1.0)
    assert sweeps.try_start(ACCOUNT, "b", due + timedelta(seconds=1), 10.0, 30.0, 1.0)


def test_an_idle_instance_asks_about_a_sweep_once_per_interval(engine: Engine) -> None:
    """Two sweepers, one account: the loser reads the row once more, then waits."""
    from sqlalchemy import event

    from monitor.sweeper import Sweeper

    store = Store(engine)
    SweepStore(store).ensure(ACCOUNT, T0)
    SweepStore(store).try_start(ACCOUNT, "someone else", datetime.now(UTC), 60.0, 120.0)
    idle = Sweeper(store, None, None, interval_s=60.0, lease_s=120.0)  # type: ignore[arg-type]
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    stop = threading.Event()
    for _ in range(20):
        assert idle.run_due(stop) == []
    assert len([s for s in statements if "account_sweeps" in s]) <= 4, statements


def test_a_sweep_that_keeps_failing_is_stale(engine: Engine) -> None:
    sweeps = SweepStore(Store(engine))
    sweeps.ensure(ACCOUNT, T0)
    limit = T0 + timedelta(seconds=30)
    assert not sweeps.stale(ACCOUNT, T0 + timedelta(seconds=60), limit)  # never tried yet
    assert sweeps.try_start(ACCOUNT, "a", T0, 10.0, 5.0)
    sweeps.finish(ACCOUNT, "a", T0 + timedelta(seconds=1), listed=0, missing=0, pages=0, error=None)
    # Tried and failed since the limit, last success before it: stale.
    assert sweeps.try_start(ACCOUNT, "a", T0 + timedelta(seconds=40), 10.0, 5.0)
    assert not sweeps.stale(ACCOUNT, T0 + timedelta(seconds=41), limit)  # running
    sweeps.finish(ACCOUNT, "a", T0 + timedelta(seconds=41), listed=0, missing=0, pages=0, error="x")
    assert sweeps.stale(ACCOUNT, T0 + timedelta(seconds=45), limit)
    # The attempt is older than the limit (a restart after a long stop): try again first.
    later = T0 + timedelta(seconds=100)
    assert not sweeps.stale(ACCOUNT, later + timedelta(seconds=1), later)
    assert sweeps.try_start(ACCOUNT, "a", later + timedelta(seconds=2), 10.0, 5.0)
    sweeps.finish(ACCOUNT, "a", later + timedelta(seconds=3), listed=0, missing=0, pages=0, error=None)
    assert not sweeps.stale(ACCOUNT, later + timedelta(seconds=4), later)


def test_watches_missing_from_the_lists_go_back_to_fetching(engine: Engine) -> None:
    store = Store(engine)
    sweeps = SweepStore(store)
    store.add_watches([sid(1), sid(2), sid(3)], ACCOUNT, None, T0, mode="list")
    modes = {s: st.mode for s, st in sweeps.active_states(ACCOUNT).items()}
    assert modes == dict.fromkeys([sid(1), sid(2), sid(3)], "list")
    assert sweeps.hand_to_fetch([sid(2)], T0 + timedelta(seconds=5)) == 1
    due = store.claim_due_watches(T0 + timedelta(seconds=5), 10, 1.0, 0.0, fetch_mode_only=True)
    assert [w.sid for w in due] == [sid(2)]
    assert sweeps.hand_account_to_fetch(ACCOUNT, T0) == 2
    assert {st.mode for st in sweeps.active_states(ACCOUNT).values()} == {"fetch"}


def test_bulk_add_is_linear_and_reports_what_it_added(engine: Engine) -> None:
    store = Store(engine)
    sids = [sid(i) for i in range(5000)]
    assert store.add_watches(sids[:10], ACCOUNT, None, T0) == sids[:10]
    added = store.add_watches(list(reversed(sids)) + sids[:3], ACCOUNT, "bulk", T0)
    assert added == list(reversed(sids[10:]))
    assert store.watch_counts() == {"active": 5000}
    assert SweepStore(store).accounts() == [ACCOUNT]


def test_migration_keeps_pre_existing_duplicate_transitions_as_history(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        command.upgrade(alembic_config(engine), "0001")
        rows = [
            ("evt_a", "conference.started", T0),
            ("evt_b", "conference.started", T0 + timedelta(seconds=1)),
            ("evt_c", "conference.ended", T0 + timedelta(seconds=2)),
            ("evt_d", "conference.ended", T0 + timedelta(seconds=2)),
        ]
        with engine.begin() as conn:
            for event_id, kind, at in rows:
                conn.execute(
                    text(
                        "INSERT INTO events (id, type, conference_sid, skipped, occurred_at, body)"
                        " VALUES (:i, :t, :s, '', :at, '{}')"
                    ),
                    {"i": event_id, "t": kind, "s": sid(1), "at": at.replace(tzinfo=None)},
                )
        upgrade(engine)
        with engine.connect() as conn:
            types = dict(conn.execute(select(Event.id, Event.type)).all())  # type: ignore[arg-type]
        assert types == {
            "evt_a": "conference.started",
            "evt_b": "conference.duplicate",
            "evt_c": "conference.ended",
            "evt_d": "conference.duplicate",
        }
    finally:
        engine.dispose()


def test_two_upgrades_at_once_migrate_once(pg_url: str) -> None:
    """Instances starting together (ExecStartPre=db upgrade on each) take turns."""
    import subprocess
    import sys

    code = "import sys; from monitor.db.engine import make_engine, upgrade; upgrade(make_engine(sys.argv[1]))"
    runs = [
        subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    engine = make_engine(pg_url)
    try:
        from monitor.db.engine import current_revision, head_revision

        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_migration_gives_existing_ends_their_duration(db_url: str) -> None:
    """0006 fills `events.duration_s` of each earlier end from its snapshot's dates."""
    engine = make_engine(db_url)
    try:
        command.upgrade(alembic_config(engine), "0005")
        naive = T0.replace(tzinfo=None)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO snapshots (id, conference_sid, account_sid, status, date_created,"
                    " date_updated, content_hash, raw_json, detected_via, first_observed_at,"
                    " last_observed_at, observation_count) VALUES (7, :s, :a, 'completed', :c, :u,"
                    " 'h', '{}', 'poll', :u, :u, 1)"
                ),
                {"s": sid(1), "a": ACCOUNT, "c": naive, "u": naive + timedelta(seconds=754.5)},
            )
            for event_id, kind, conference, snapshot in (
                ("evt_e", "conference.ended", 1, 7),
                ("evt_s", "conference.started", 1, 7),
                ("evt_x", "conference.ended", 2, None),  # no snapshot: unknown
            ):
                conn.execute(
                    text(
                        "INSERT INTO events (id, type, conference_sid, snapshot_id, skipped,"
                        " occurred_at, body) VALUES (:i, :t, :s, :snap, '', :at, '{}')"
                    ),
                    {"i": event_id, "t": kind, "s": sid(conference), "snap": snapshot, "at": naive},
                )
        upgrade(engine)
        with engine.connect() as conn:
            found = dict(conn.execute(select(Event.id, Event.duration_s)).all())  # type: ignore[arg-type]
        # SQLite's julianday() is exact to about 10 µs; the summary rounds to ms.
        assert found == {"evt_e": pytest.approx(754.5, abs=1e-3), "evt_s": None, "evt_x": None}
    finally:
        engine.dispose()
