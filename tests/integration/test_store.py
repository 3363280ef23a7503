"""Store round trips on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, func, select

from monitor.db.engine import (
    SchemaBehind,
    current_revision,
    head_revision,
    make_engine,
    require_current_schema,
    upgrade,
)
from monitor.db.models import Base, Delivery, Event, Snapshot
from monitor.db.outbox import AttemptOutcome, Outbox
from monitor.db.store import Batch, BatchResult, Observation, Store
from monitor.domain import Conference, EventType, Transition
from monitor.events import NewEvent, transition_event, with_notifiers
from monitor.outcomes import PollPolicy, auth_failed_event, not_found, observation
from monitor.recorder import PollReport, Recorder
from monitor.touches import TouchBuffer

ACCOUNT = "AC" + "a" * 32
SID = "CF" + "1" * 32
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def conf(status: str, **kw: object) -> Conference:
    raw = {"sid": SID, "account_sid": ACCOUNT, "status": status, **kw}
    return Conference(sid=SID, account_sid=ACCOUNT, status=status, raw=raw)  # type: ignore[arg-type]


def everyone(_type: str, _data: dict[str, object]) -> tuple[str, ...]:
    return ("log", "hook")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_empty_database_is_behind(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with pytest.raises(SchemaBehind, match="conference-monitor db upgrade"):
            require_current_schema(engine)
    finally:
        engine.dispose()


def record(store: Store, *changes: Observation, at: datetime = T0, **kw: object) -> BatchResult:
    return store.record(Batch(changes=list(changes), **kw), at)  # type: ignore[arg-type]


def recorder(store: Store) -> Recorder:
    return Recorder(store, PolicyFor1s, everyone, TouchBuffer(), list_mode=lambda _a: False)


PolicyFor1s = PollPolicy(interval_s=1.0, not_found_grace_s=2.0)


def test_observations_bump_or_insert_snapshots_with_events_and_outbox(engine: Engine) -> None:
    store = Store(engine)
    assert store.add_watches([SID, SID], ACCOUNT, "room", T0) == [SID]
    assert store.add_watches([SID], ACCOUNT, None, T0) == []
    rec = recorder(store)

    def poll(status: str, at: datetime) -> None:
        (watch,) = store.claim_due_watches(at, 10, 1.0, 0.0, owner="me")
        batch = Batch(owner="me")
        rec.add_result(batch, PollReport(), watch, conf(status), at)
        rec.commit(batch)

    poll("init", T0)
    poll("init", T0 + timedelta(seconds=1))  # unchanged: counted in memory, no new row
    assert rec.flush_touches() == 1
    poll("in-progress", T0 + timedelta(seconds=2))
    poll("completed", T0 + timedelta(seconds=3))
    assert count(engine, Snapshot) == 3
    assert count(engine, Event) == 3  # first_seen, started, ended
    assert count(engine, Delivery) == 6  # two notifiers each (filters are the caller's)
    with engine.connect() as conn:
        first = conn.execute(select(Snapshot).order_by(Snapshot.id)).first()
        assert first is not None and first.observation_count == 2
        assert first.last_observed_at == T0 + timedelta(seconds=1)
    (row,) = store.list_watches()
    assert row["status"] == "completed" and row["high_status"] == "completed"
    assert store.claim_due_watches(T0 + timedelta(hours=1), 10, 1.0, 0.0) == []


def test_claim_pushes_next_poll_forward_and_holds_a_lease(engine: Engine) -> None:
    store = Store(engine)
    store.add_watches([SID], ACCOUNT, None, T0)
    assert len(store.claim_due_watches(T0, 10, 5.0, 0.0, owner="a", lease_s=30)) == 1
    assert store.claim_due_watches(T0 + timedelta(seconds=4), 10, 5.0, 0.0) == []
    # Due again, but a's lease is live: nobody else takes it until it lapses or is released.
    assert store.claim_due_watches(T0 + timedelta(seconds=5), 10, 5.0, 0.0, owner="b") == []
    assert len(store.claim_due_watches(T0 + timedelta(seconds=31), 10, 5.0, 0.0, owner="b")) == 1
    store.release([SID], "b")
    assert len(store.claim_due_watches(T0 + timedelta(seconds=40), 10, 5.0, 0.0, owner="c")) == 1


def test_list_mode_watches_are_left_to_the_sweep(engine: Engine) -> None:
    store = Store(engine)
    store.add_watches([SID], ACCOUNT, None, T0, mode="list")
    assert store.claim_due_watches(T0, 10, 1.0, 0.0, fetch_mode_only=True) == []
    assert len(store.claim_due_watches(T0, 10, 1.0, 0.0)) == 1


def test_two_observers_of_one_state_record_one_transition(engine: Engine) -> None:
    store = Store(engine)
    store.add_watches([SID], ACCOUNT, None, T0)
    (watch,) = store.watch_states([SID]).values()
    record(store, observation(watch, conf("init"), T0, "poll", everyone))
    (seen,) = store.watch_states([SID]).values()
    one = observation(seen, conf("in-progress"), T0 + timedelta(seconds=1), "poll", everyone)
    two = observation(seen, conf("in-progress"), T0 + timedelta(seconds=2), "list", everyone)
    assert record(store, one).observations == 1
    lost = record(store, two)
    assert (lost.observations, lost.dropped, lost.events) == (0, 1, [])
    with engine.connect() as conn:
        types = sorted(conn.scalars(select(Event.type)))
    assert types == ["conference.first_seen", "conference.started"]


def test_an_observation_older_than_the_recorded_one_is_dropped(engine: Engine) -> None:
    store = Store(engine)
    store.add_watches([SID], ACCOUNT, None, T0)
    (watch,) = store.watch_states([SID]).values()
    record(
        store, observation(watch, conf("completed"), T0 + timedelta(seconds=5), "poll", everyone)
    )
    (now,) = store.watch_states([SID]).values()
    stale = observation(now, conf("in-progress"), T0 + timedelta(seconds=1), "list", everyone)
    assert record(store, stale).dropped == 1
    assert [r["last_status"] for r in store.list_watches()] == ["completed"]


def test_a_batch_is_written_together_or_change_by_change_when_one_loses(engine: Engine) -> None:
    """Many changes are written in a few statements; one stale change makes the
    batch go again row by row, where only that one is dropped."""
    store = Store(engine)
    sids = [f"CF{i:032x}" for i in range(4)]
    store.add_watches(sids, ACCOUNT, None, T0)

    def seen(sid: str, status: str, at: datetime, watch: object = None) -> Observation:
        c = Conference(
            sid=sid, account_sid=ACCOUNT, status=status, raw={"sid": sid, "status": status}
        )  # type: ignore[arg-type]
        state = watch or store.watch_states([sid])[sid]
        return observation(state, c, at, "list", everyone)  # type: ignore[arg-type]

    first = record(store, *(seen(s, "init", T0) for s in sids))
    assert (first.observations, first.dropped, len(first.events)) == (4, 0, 4)
    before = store.watch_states([sids[0]])[sids[0]]
    record(store, seen(sids[0], "in-progress", T0 + timedelta(seconds=1)))
    at = T0 + timedelta(seconds=2)
    second = record(
        store,
        seen(sids[0], "in-progress", at, before),  # read before the change above: loses
        *(seen(s, "in-progress", at) for s in sids[1:]),
    )
    assert (second.observations, second.dropped, len(second.events)) == (3, 1, 3)
    assert store.health.problem() is None
    with engine.connect() as conn:
        started = sorted(
            conn.scalars(select(Event.conference_sid).where(Event.type == "conference.started"))
        )
        snapshots = int(conn.execute(select(func.count()).select_from(Snapshot)).scalar_one())
    assert started == sids
    assert snapshots == 8  # the lost change left no snapshot behind
    assert {r["last_status"] for r in store.list_watches()} == {"in-progress"}


def test_checking_for_recorded_transitions_uses_the_unique_index(sqlite_url: str) -> None:
    """A batch asks which of its started/ended already exist; that must be an index
    lookup (SQLite uses a partial index only when the query implies its WHERE
    literally), not a walk over every transition ever recorded."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    store = Store(engine)
    statements: list[tuple[str, object]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def capture(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("SELECT events.conference_sid, events.type"):
            statements.append((statement, parameters))

    sids = [f"CF{i:032x}" for i in range(3)]
    store.add_watches(sids, ACCOUNT, None, T0)
    for status, at in (("init", T0), ("in-progress", T0 + timedelta(seconds=1))):
        changes = []
        for s in sids:
            c = Conference(
                sid=s, account_sid=ACCOUNT, status=status, raw={"sid": s, "status": status}
            )  # type: ignore[arg-type]
            changes.append(observation(store.watch_states([s])[s], c, at, "list", everyone))
        assert len(record(store, *changes).events) == 3
    assert statements, "the batched path did not ask which transitions exist"
    statement, parameters = statements[0]
    with engine.connect() as conn:
        plan = " ".join(
            str(r[3]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        )  # type: ignore[arg-type]
    assert "uq_events_transition_once" in plan, plan
    engine.dispose()


def test_the_database_refuses_a_second_started_or_ended(engine: Engine) -> None:
    store = Store(engine)

    def events() -> list[NewEvent]:
        c = conf("completed")
        return [
            with_notifiers(transition_event(c, Transition(kind, "init", "x"), T0, "poll"), ("a",))
            for kind in (EventType.STARTED, EventType.ENDED, EventType.FIRST_SEEN)
        ]

    first, second = events(), events()
    assert store.write_events(first) == first
    # Whatever race the code loses, a second started/ended (other ids) is refused
    # quietly, with no outbox row; other event types are not limited.
    assert store.write_events(second) == [second[2]]
    with engine.connect() as conn:
        counts = dict(conn.execute(select(Event.type, func.count()).group_by(Event.type)).all())  # type: ignore[arg-type]
    assert counts == {"conference.started": 1, "conference.ended": 1, "conference.first_seen": 2}
    assert count(engine, Delivery) == 4


def test_not_found_after_grace_ends_the_watch_with_one_event(engine: Engine) -> None:
    store = Store(engine)
    store.add_watches([SID], ACCOUNT, None, T0)
    at = T0
    for _ in range(10):
        claimed = store.claim_due_watches(at, 10, 1.0, 0.0, owner="me")
        if claimed:
            miss = not_found(claimed[0], at, PolicyFor1s, everyone)
            store.record(Batch(misses=[miss], owner="me"), at)
        at += timedelta(seconds=1)
    (row,) = store.list_watches()
    assert row["status"] == "not_found"
    with engine.connect() as conn:
        types = list(conn.scalars(select(Event.type)))
    assert types == ["watch.not_found"]


def test_auth_failed_is_one_event_per_episode_until_cleared(engine: Engine) -> None:
    store = Store(engine)

    def failure(at: datetime) -> list:  # type: ignore[type-arg]
        event = auth_failed_event(ACCOUNT, SID, at, "rejected", everyone)
        return record(store, auth_failures=[event]).events

    assert [e.type for e in failure(T0)] == ["watch.auth_failed"]
    assert failure(T0 + timedelta(seconds=1)) == []  # same episode: no second event
    assert store.failing_accounts() == {ACCOUNT}
    assert record(store, ok_accounts={ACCOUNT}).recovered_accounts == [ACCOUNT]
    assert store.failing_accounts() == set()
    assert len(failure(T0 + timedelta(seconds=2))) == 1  # a new episode
    assert count(engine, Event) == 2 and count(engine, Delivery) == 4


def test_outbox_claim_lease_fence_and_ordering(engine: Engine) -> None:
    store, outbox = Store(engine), Outbox(engine)
    store.add_watches([SID], ACCOUNT, None, T0)
    for i, status in enumerate(["init", "in-progress", "completed"]):
        (watch,) = store.watch_states([SID]).values()
        record(store, observation(watch, conf(status), T0 + timedelta(seconds=i), "poll", everyone))
    now = T0 + timedelta(seconds=10)
    first = outbox.claim("hook", now, 10, "a", 30)
    # Only the oldest row of the conference: ended waits until started is done.
    assert [c.event_type for c in first] == ["conference.first_seen"]
    assert outbox.claim("hook", now, 10, "b", 30) == []  # leased
    assert not outbox.finish(first[0].id, "b", AttemptOutcome("delivered", now, 1.0, 200))
    assert outbox.finish(first[0].id, "a", AttemptOutcome("delivered", now, 1.0, 200))
    second = outbox.claim("hook", now, 10, "a", 30)
    assert [c.event_type for c in second] == ["conference.started"]
    outbox.finish(second[0].id, "a", AttemptOutcome("dead", now, 1.0, 500, "gave up"))
    third = outbox.claim("hook", now, 10, "a", 30)
    assert [c.event_type for c in third] == ["conference.ended"]
    assert outbox.retry([second[0].id, third[0].id], now) == [second[0].id]
    shown = outbox.show(second[0].id)
    assert shown is not None and shown["status"] == "pending"
    assert shown["created_at"] == now  # a whole retry window again
    assert [a["status_code"] for a in shown["attempt_log"]] == [500]


def test_disabled_notifier_survives_and_retry_reenables(engine: Engine) -> None:
    outbox = Outbox(engine)
    outbox.disable_notifier("hook", "410", T0)
    assert outbox.disabled_notifiers() == {"hook": "410"}
    assert outbox.enable_notifier("hook") is True
    assert outbox.disabled_notifiers() == {}


def test_backlog_counts_only_the_notifiers_asked_for(engine: Engine) -> None:
    store, outbox = Store(engine), Outbox(engine)
    store.add_watches([SID], ACCOUNT, None, T0)
    (watch,) = store.claim_due_watches(T0, 10, 1.0, 0.0)
    record(store, observation(watch, conf("init"), T0, "poll", everyone))
    count, oldest = outbox.backlog()
    assert count == 2 and oldest == T0
    assert outbox.backlog(["log"]) == (1, T0)
    assert outbox.backlog([]) == (0, None)


def test_schema_head_constant_names_the_newest_migration(sqlite_url: str) -> None:
    """Commands check the schema against SCHEMA_HEAD without loading Alembic."""
    from monitor.db.engine import SCHEMA_HEAD, current_revision, head_revision, make_engine, upgrade

    assert SCHEMA_HEAD == head_revision()
    engine = make_engine(sqlite_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == SCHEMA_HEAD
    engine.dispose()
