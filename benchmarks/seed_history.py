"""Bulk-seed a history database for benchmarks: N conferences over D days, written with
raw executemany (SQLite) or COPY (PostgreSQL), so a million events take a minute, not an hour.

Each conference: a watch, snapshots init / init (a detail change) / in-progress /
completed, events first_seen, started, `extra` irregular flaps, ended (so with the
default 7 flaps, 10 events a conference), a webhook delivery and attempt for
started and ended. The newest `active_share` of conferences are still running.

    .venv/bin/python benchmarks/seed_history.py sqlite:////tmp/h.db --conferences 100000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from monitor.db.engine import make_engine, upgrade
from monitor.domain import END_REASONS

ACCOUNT = "AC" + "5" * 32
COLUMNS = {
    "watches": "sid account_sid label status created_at next_poll_at last_polled_at last_status "
    "high_status current_snapshot_id current_hash consecutive_errors",
    "snapshots": "id conference_sid account_sid status friendly_name region "
    "reason_conference_ended call_sid_ending_conference date_created date_updated content_hash "
    "raw_json detected_via first_observed_at last_observed_at observation_count",
    "events": "id type conference_sid account_sid snapshot_id from_status to_status skipped "
    "reason_conference_ended call_sid_ending_conference occurred_at body duration_s",
    "deliveries": "id event_id notifier event_type conference_sid status attempts created_at "
    "next_attempt_at delivered_at last_status_code",
    "delivery_attempts": "id delivery_id attempted_at status_code duration_ms",
}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Seeder:
    def __init__(self, start: datetime, days: float, conferences: int, extra: int) -> None:
        self.start, self.span = start, timedelta(days=days)
        self.count, self.extra = conferences, extra
        self.snapshot_id = self.delivery_id = 0
        self.random = random.Random(11)

    def conference(self, n: int) -> dict[str, list[tuple[Any, ...]]]:
        rows: dict[str, list[tuple[Any, ...]]] = {k: [] for k in COLUMNS}
        sid = f"CF{n:032x}"
        created = self.start + self.span * (n / self.count)
        running = n >= self.count * 0.995
        minutes = self.random.choice((3, 8, 15, 25, 40, 60, 95))
        steps = [("init", created), ("init", created + timedelta(seconds=20))]
        steps.append(("in-progress", created + timedelta(seconds=45)))
        if not running:
            steps.append(("completed", created + timedelta(minutes=minutes)))
        reason = END_REASONS[n % len(END_REASONS)]
        name = f"bridge-{n % 5000}"
        ids = []
        for i, (status, at) in enumerate(steps):
            self.snapshot_id += 1
            ids.append(self.snapshot_id)
            done = status == "completed"
            raw = {
                "sid": sid,
                "account_sid": ACCOUNT,
                "friendly_name": name if i != 1 else name + " (renamed)",
                "status": status,
                "region": "us1",
                "reason_conference_ended": reason if done else None,
                "call_sid_ending_conference": f"CA{n:032x}" if done else None,
                "date_created": created.isoformat(),
                "date_updated": at.isoformat(),
            }
            until = steps[i + 1][1] if i + 1 < len(steps) else at + timedelta(seconds=30)
            rows["snapshots"].append(
                (self.snapshot_id, sid, ACCOUNT, status, raw["friendly_name"], "us1",
                 raw["reason_conference_ended"], raw["call_sid_ending_conference"], created,
                 at, f"{n:016x}{i:016x}", json.dumps(raw), "list", at + timedelta(seconds=2),
                 until, max(1, int((until - at).total_seconds() // 5)))
            )  # fmt: skip
        self._events(rows, n, sid, steps, ids, reason, name, created)
        last = steps[-1]
        rows["watches"].append(
            (sid, ACCOUNT, f"team-{n % 20}", "active" if running else "completed", created,
             created + timedelta(seconds=5), last[1] + timedelta(seconds=30), last[0], last[0],
             ids[-1], None, 0)
        )  # fmt: skip
        return rows

    def _events(self, rows: Any, n: int, sid: str, steps: Any, ids: Any, reason: str,
                name: str, created: datetime) -> None:  # fmt: skip
        plan: list[tuple[str, str | None, str, datetime, int]] = [
            ("conference.first_seen", None, "init", steps[0][1], ids[0]),
            ("conference.started", "init", "in-progress", steps[2][1], ids[2]),
        ]
        for k in range(self.extra):
            at = steps[2][1] + timedelta(seconds=10 + k)
            back = k % 2 == 0
            plan.append(("conference.irregular", "in-progress" if back else "init",
                         "init" if back else "in-progress", at, ids[2]))  # fmt: skip
        if len(steps) == 4:
            plan.append(("conference.ended", "in-progress", "completed", steps[3][1], ids[3]))
        for k, (kind, before, after, at, snapshot) in enumerate(plan):
            observed = at + timedelta(seconds=2)
            event_id = f"evt_{int(observed.timestamp() * 1000):012x}{n:016x}{k:04x}"
            ended = kind == "conference.ended"
            data = {
                "event_id": event_id, "conference_sid": sid, "account_sid": ACCOUNT,
                "friendly_name": name, "region": "us1", "from_status": before,
                "to_status": after, "skipped": [],
                "reason_conference_ended": reason if ended else None,
                "call_sid_ending_conference": f"CA{n:032x}" if ended else None,
                "date_created": iso(created), "date_updated": iso(at),
                "observed_at": iso(observed), "detected_via": "list",
            }  # fmt: skip
            body = json.dumps({"type": kind, "timestamp": iso(observed), "data": data},
                              separators=(",", ":"))  # fmt: skip
            rows["events"].append(
                (event_id, kind, sid, ACCOUNT, snapshot, before, after, "",
                 data["reason_conference_ended"], data["call_sid_ending_conference"], observed,
                 body, (at - created).total_seconds() if ended else None)
            )  # fmt: skip
            if kind in ("conference.started", "conference.ended"):
                self.delivery_id += 1
                rows["deliveries"].append(
                    (self.delivery_id, event_id, "oncall", kind, sid, "delivered", 1, observed,
                     observed, observed + timedelta(milliseconds=35), 204)
                )  # fmt: skip
                rows["delivery_attempts"].append(
                    (self.delivery_id, self.delivery_id, observed, 204, 35.0)
                )


def batches(seeder: Seeder, size: int = 5000) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    pending: dict[str, list[tuple[Any, ...]]] = {k: [] for k in COLUMNS}
    for n in range(seeder.count):
        for table, rows in seeder.conference(n).items():
            pending[table] += rows
        if (n + 1) % size == 0 or n + 1 == seeder.count:
            yield pending
            pending = {k: [] for k in COLUMNS}


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def write_sqlite(engine: Engine, batch: dict[str, list[tuple[Any, ...]]]) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN")
        for table in COLUMNS:  # parents first: watches, snapshots, events, deliveries, attempts
            names = COLUMNS[table].split()
            sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            cursor.executemany(sql, [tuple(map(_sqlite_value, r)) for r in batch[table]])
        cursor.execute("COMMIT")
    finally:
        raw.close()


def write_postgres(engine: Engine, batch: dict[str, list[tuple[Any, ...]]]) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table in COLUMNS:
            names = ", ".join(COLUMNS[table].split())
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in batch[table]:
                    copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def seed(url: str, conferences: int, days: float, extra: int, end: datetime) -> Engine:
    engine = make_engine(url)
    upgrade(engine)
    seeder = Seeder(end - timedelta(days=days), days, conferences, extra)
    write = write_postgres if engine.dialect.name == "postgresql" else write_sqlite
    started = time.monotonic()
    for batch in batches(seeder):
        write(engine, batch)
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        for table in ("snapshots", "deliveries", "delivery_attempts"):  # ids were given
            raw.cursor().execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        raw.commit()
        raw.close()
        # Autovacuum would get there in time; a steady state has the visibility map set,
        # so counts are index-only scans.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    print(f"seeded {conferences} conferences in {time.monotonic() - started:.0f}s")
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=100.0)
    parser.add_argument("--flaps", type=int, default=7, help="irregular events per conference")
    args = parser.parse_args()
    seed(args.url, args.conferences, args.days, args.flaps, datetime.now(UTC)).dispose()


if __name__ == "__main__":
    main()
