"""Retention keeps exactly what it promises, on SQLite and PostgreSQL, in any batch size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from monitor.config_schema import RetentionSettings
from monitor.db.engine import make_engine, upgrade
from monitor.domain import EventType
from monitor.retention import Retention
from tests.historydata import A, D, E, S, W, add_conference, add_watch_event, sid

NOW = datetime(2027, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = RetentionSettings(
    observations_s=DAY.total_seconds(),
    snapshots_s=30 * DAY.total_seconds(),
    events_s=400 * DAY.total_seconds(),
    deliveries_s=30 * DAY.total_seconds(),
    batch_size=500,
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def finished(engine: Engine, n: int, age: timedelta, **kw: Any) -> Any:
    created = NOW - age
    return add_conference(
        engine,
        n,
        created=created,
        started=created + timedelta(minutes=1),
        ended=created + timedelta(minutes=20),
        reason="last-participant-left",
        **kw,
    )


def history(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "watches": set(conn.scalars(select(W.c.sid))),
            "snapshots": set(conn.scalars(select(S.c.id))),
            "events": set(conn.scalars(select(E.c.id))),
            "deliveries": set(conn.scalars(select(D.c.id))),
            "attempts": conn.execute(select(func.count()).select_from(A)).scalar_one(),
            "unlinked": set(conn.scalars(select(E.c.id).where(E.c.snapshot_id.is_(None)))),
        }


def build(engine: Engine) -> dict[str, Any]:
    """One conference per rule, each just past (or short of) its age."""
    made = {
        "fresh": finished(engine, 1, 12 * 60 * 60 * timedelta(seconds=1), detail_snapshots=1),
        "detail": finished(engine, 2, 2 * DAY, detail_snapshots=2),
        "month": finished(engine, 3, 40 * DAY, detail_snapshots=1),
        "ancient": finished(engine, 4, 500 * DAY),
        "held": finished(engine, 5, 500 * DAY, delivery_status="pending"),
        "running": add_conference(
            engine, 6, created=NOW - 500 * DAY, started=NOW - 499 * DAY, detail_snapshots=1
        ),
    }
    made["auth"] = add_watch_event(engine, EventType.WATCH_AUTH_FAILED, NOW - 450 * DAY)
    made["lost"] = add_watch_event(engine, EventType.WATCH_NOT_FOUND, NOW - 410 * DAY, n=7)
    return made


def expected(before: dict[str, Any], made: dict[str, Any]) -> dict[str, Any]:
    """What the rules in monitor/retention.py promise to leave."""
    fresh, detail, month = made["fresh"], made["detail"], made["month"]
    ancient, held, running = made["ancient"], made["held"], made["running"]
    snapshots = set(before["snapshots"])
    # observations (1d): a snapshot no event points at, between first and last, goes.
    snapshots -= {detail.snapshot_ids[1], detail.snapshot_ids[2], month.snapshot_ids[1]}
    snapshots -= {running.snapshot_ids[1]}  # detail goes even while the watch is active
    # snapshots (30d): a finished conference keeps only its first and last.
    snapshots -= {month.snapshot_ids[2], held.snapshot_ids[1]}
    # events (400d): all of it goes, except what a pending delivery or an active watch holds.
    snapshots -= set(ancient.snapshot_ids)
    events = set(before["events"]) - set(ancient.event_ids) - {made["auth"], made["lost"]}
    events -= {held.event_ids[0]}  # first_seen has no delivery; started/ended are pending
    deliveries = set(before["deliveries"]) - set(ancient.delivery_ids)
    deliveries -= set(month.delivery_ids) | set(running.delivery_ids)  # finished, past 30d
    assert fresh.snapshot_ids[1] in snapshots  # 12 hours old: kept
    return {
        "watches": before["watches"] - {ancient.sid, sid(7)},
        "snapshots": snapshots,
        "events": events,
        "deliveries": deliveries,
        # Events whose snapshot went keep their document; only the link is gone.
        "unlinked": {month.event_ids[1], held.event_ids[1]},
    }


def check(engine: Engine, before: dict[str, Any], made: dict[str, Any]) -> None:
    after, want = history(engine), expected(before, made)
    for key in ("watches", "snapshots", "events", "deliveries", "unlinked"):
        assert after[key] == want[key], key
    assert after["attempts"] == len(after["deliveries"] - set(made["held"].delivery_ids))


@pytest.mark.parametrize("batch_size", [500, 2])
def test_retention_keeps_exactly_what_it_promises(engine: Engine, batch_size: int) -> None:
    made = build(engine)
    before = history(engine)
    retention = Retention(engine, lambda: replace(POLICY, batch_size=batch_size), pause_s=0)
    pruned = retention.run_once(NOW)
    assert pruned.complete
    check(engine, before, made)
    assert retention.run_once(NOW).total() == 0  # a second run finds nothing more


def test_a_run_cut_short_carries_on_next_time(engine: Engine) -> None:
    made = build(engine)
    before = history(engine)
    retention = Retention(engine, lambda: replace(POLICY, batch_size=1), pause_s=0, budget_s=0)
    runs = 0
    while not retention.run_once(NOW).complete:
        runs += 1
        assert runs < 200
    assert runs > 1  # each run did one batch and stopped
    check(engine, before, made)


def test_zero_keeps_forever_and_disabled_does_nothing(engine: Engine) -> None:
    build(engine)
    before = history(engine)
    forever = RetentionSettings(observations_s=0, snapshots_s=0, events_s=0, deliveries_s=0)
    assert Retention(engine, lambda: forever, pause_s=0).run_once(NOW).total() == 0
    off = replace(POLICY, enabled=False)
    assert Retention(engine, lambda: off, pause_s=0).run_once(NOW).total() == 0
    assert history(engine) == before


def test_a_retried_delivery_is_not_pruned(engine: Engine) -> None:
    made = {"month": finished(engine, 3, 40 * DAY)}
    with engine.begin() as conn:  # `deliveries retry` made it pending again, under our feet
        conn.execute(
            update(D).where(D.c.id == made["month"].delivery_ids[0]).values(status="pending")
        )
    Retention(engine, lambda: POLICY, pause_s=0).run_once(NOW)
    assert history(engine)["deliveries"] == {made["month"].delivery_ids[0]}


def test_the_daemon_job_reads_the_settings_of_the_moment(engine: Engine) -> None:
    from monitor.retention import maintenance_job

    created = datetime.now(UTC) - 40 * DAY  # the job reads the real clock
    made = add_conference(
        engine, 3, created=created, ended=created + timedelta(minutes=5), detail_snapshots=1
    )

    class App:
        def __init__(self) -> None:
            self.engine = engine
            self.settings = type("S", (), {"retention": replace(POLICY, enabled=False)})()

    app = App()
    job = maintenance_job(app)  # type: ignore[arg-type]
    job()
    assert made.snapshot_ids[1] in history(engine)["snapshots"]
    app.settings.retention = POLICY  # a reload
    job()
    assert made.snapshot_ids[1] not in history(engine)["snapshots"]
