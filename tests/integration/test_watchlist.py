"""Bulk watch adds (`Store.add_many`) and listing counts on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert, text

from monitor.db import queries
from monitor.db.engine import make_engine, upgrade
from monitor.db.store import ADD_CHUNK, Store

ACCOUNT = "AC" + "1" * 32
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def sid(i: int) -> str:
    return f"CF{i:032x}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM watches")).scalar_one())


def test_add_more_than_one_chunk_then_relabel(engine: Engine) -> None:
    sids = [sid(i) for i in range(ADD_CHUNK * 2 + 5)]
    seen: list[tuple[int, int]] = []
    first = Store(engine).add_many(
        sids + sids[:3], ACCOUNT, "a", NOW, progress=lambda d, t: seen.append((d, t))
    )
    assert first.added == set(sids) and not first.relabelled and not first.unchanged
    assert seen == [(1000, len(sids)), (2000, len(sids)), (len(sids), len(sids))]
    assert count(engine) == len(sids)
    again = Store(engine).add_many(sids[:2] + [sid(99_999)], ACCOUNT, "b", NOW, relabel=True)
    assert again.added == {sid(99_999)}
    assert again.relabelled == set(sids[:2])
    same = Store(engine).add_many(sids[:2], ACCOUNT, "b", NOW, relabel=True)
    assert same.unchanged == set(sids[:2]) and not same.relabelled
    kept = Store(engine).add_many(sids[2:4], ACCOUNT, None, NOW)
    assert kept.unchanged == set(sids[2:4])
    assert queries.labels(engine, sids[:4]) == {
        sids[0]: "b",
        sids[1]: "b",
        sids[2]: "a",
        sids[3]: "a",
    }


def test_a_failure_part_way_leaves_nothing(engine: Engine) -> None:
    def stop(done: int, _total: int) -> None:
        if done >= 2000:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        Store(engine).add_many([sid(i) for i in range(3000)], ACCOUNT, None, NOW, progress=stop)
    assert count(engine) == 0


def test_counts_match_the_filters(engine: Engine) -> None:
    events = [
        {
            "id": f"evt_{i}",
            "type": "conference.ended" if i % 2 else "conference.started",
            "conference_sid": sid(i % 3) if i < 3 else sid(100 + i),  # one ended/started each
            "account_sid": ACCOUNT,
            "skipped": "",
            "occurred_at": NOW - timedelta(hours=i),
            "body": "{}",
        }
        for i in range(10)
    ]
    deliveries = [
        {
            "event_id": f"evt_{i}",
            "notifier": "log" if i < 6 else "hook",
            "event_type": "conference.ended",
            "status": "failed" if i < 3 else "pending",
            "attempts": 0,
            "created_at": NOW,
            "next_attempt_at": NOW,
        }
        for i in range(10)
    ]
    with engine.begin() as conn:
        conn.execute(insert(queries.E), events)
        conn.execute(insert(queries.D), deliveries)
    assert queries.count_events(engine) == 10
    assert queries.count_events(engine, types=["conference.ended"]) == 5
    assert queries.count_events(engine, sid=sid(0)) == 1
    assert queries.count_events(engine, since=NOW - timedelta(hours=2, minutes=30)) == 3
    assert queries.count_events(engine, until=NOW - timedelta(hours=8)) == 2
    assert queries.count_deliveries(engine) == 10
    assert queries.count_deliveries(engine, "failed") == 3
    assert queries.count_deliveries(engine, "pending", "log") == 3
