"""History API and web view latency, and retention's effect on poll ticks, on a big database.

Seeds (unless --reuse) N conferences with ~10 events each (seed_history.py), serves the
API and the web view on a loopback listener in this process, and prints for each page:
client-observed latency p50/p99/max over --requests requests (the web pages' own
Server-Timing too). Deep pages are reached by following cursors, never by offset.

Then the retention figure: synthetic poll ticks (a write transaction touching 500 active
watches' snapshots, as the poller's touch path does) every 250 ms, first alone, then while
retention prunes one day of data (ages set so exactly the oldest day is past them); tick
durations p50/p99/max for both phases. Finally bytes per conference lifecycle.

    .venv/bin/python benchmarks/bench_history.py --url sqlite:////tmp/hist.db --conferences 100000
    .venv/bin/python benchmarks/bench_history.py --url postgresql+psycopg://postgres@127.0.0.1/hist

Loopback only; bounded in time; never part of the test run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, bindparam, func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_history import seed  # noqa: E402

from monitor.api.auth import token_digest  # noqa: E402
from monitor.api.routes import register  # noqa: E402
from monitor.config import load_settings  # noqa: E402
from monitor.db.engine import make_engine  # noqa: E402
from monitor.db.models import Snapshot, Watch  # noqa: E402
from monitor.httpapi import HealthServer  # noqa: E402
from monitor.metrics import Metrics  # noqa: E402
from monitor.retention import Retention  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
S, W = Snapshot.__table__, Watch.__table__


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
        f"max {ordered[-1] * 1000:7.1f} ms"
    )


class Client:
    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def get(self, path: str) -> tuple[float, float | None, Any]:
        started = time.perf_counter()
        resp = self.session.get(self.base + path, timeout=30)
        took = time.perf_counter() - started
        if resp.status_code != 200:
            raise SystemExit(f"{path}: HTTP {resp.status_code}: {resp.text[:200]}")
        timing = resp.headers.get("Server-Timing", "")
        server = float(timing.split("dur=")[1]) / 1000 if "dur=" in timing else None
        return took, server, resp

    def measure(self, label: str, paths: Callable[[int], str], count: int) -> None:
        took, server = [], []
        for i in range(count):
            t, s, _ = self.get(paths(i))
            took.append(t)
            if s is not None:
                server.append(s)
        line = f"  {label:42} {figures(took)}"
        if server:
            line += f"   (server p99 {sorted(server)[min(len(server) - 1, int(len(server) * 0.99))] * 1000:.1f} ms)"
        print(line)

    def cursors(self, path: str, pages: int) -> list[str]:
        """Cursors of the first `pages` pages of a listing, followed one by one."""
        found, cursor = [], None
        for _ in range(pages):
            sep = "&" if "?" in path else "?"
            _, _, resp = self.get(path + (f"{sep}cursor={cursor}" if cursor else ""))
            cursor = resp.json()["next_cursor"]
            if cursor is None:
                break
            found.append(cursor)
        return found


def api_and_web(engine: Engine, url: str, count: int) -> None:
    settings = load_settings(
        None,
        {
            "CONFERENCE_MONITOR_DATABASE_URL": url,
            "CONFERENCE_MONITOR_API_TOKEN_SHA256": token_digest(TOKEN),
        },
    )
    server = HealthServer("127.0.0.1:0", Metrics(process_metrics=False), lambda: (True, "ok"))
    register(server, engine, lambda: settings)
    server.start()
    try:
        c = Client(f"http://127.0.0.1:{server.address[1]}")
        rnd = random.Random(5)
        with engine.connect() as conn:  # conferences that exist (retention may have run)
            known = list(conn.execute(select(W.c.sid)).scalars())
        sids = [rnd.choice(known) for _ in range(count)]
        deep_conf = c.cursors("/api/v1/conferences?limit=100", 300)
        deep_events = c.cursors("/api/v1/events?limit=100", 300)
        with engine.connect() as conn:
            newest = conn.execute(select(func.max(W.c.created_at))).scalar_one()
        day = (newest - timedelta(days=1)).strftime("%Y-%m-%d")
        print(f"API (limit=100 unless noted), {count} requests each")
        c.measure("conferences, first page", lambda i: "/api/v1/conferences?limit=100", count)
        c.measure("conferences, deep pages (up to 300)", lambda i: f"/api/v1/conferences?limit=100&cursor={deep_conf[i % len(deep_conf)]}", count)  # fmt: skip
        c.measure("conferences ?status=active", lambda i: "/api/v1/conferences?status=active&limit=100", count)  # fmt: skip
        c.measure("conferences ?label=team-7&since=7d", lambda i: "/api/v1/conferences?label=team-7&since=7d&limit=100", count)  # fmt: skip
        c.measure("events, first page", lambda i: "/api/v1/events?limit=100", count)
        c.measure("events, deep pages (up to 300)", lambda i: f"/api/v1/events?limit=100&cursor={deep_events[i % len(deep_events)]}", count)  # fmt: skip
        c.measure("events ?type=conference.ended", lambda i: "/api/v1/events?type=conference.ended&limit=100", count)  # fmt: skip
        c.measure("events ?sid=(random)", lambda i: f"/api/v1/events?sid={sids[i]}", count)
        c.measure("deliveries, first page", lambda i: "/api/v1/deliveries?limit=100", count)
        c.measure("deliveries ?status=dead (none)", lambda i: "/api/v1/deliveries?status=dead", count)  # fmt: skip
        c.measure("conferences/{sid} (random)", lambda i: f"/api/v1/conferences/{sids[i]}", count)
        c.measure("summary, last 24h", lambda i: "/api/v1/summary?since=1d", count)
        c.measure("summary, last 7d", lambda i: "/api/v1/summary?since=7d", max(10, count // 5))
        print("web view (client time; server time from Server-Timing)")
        c.measure("/ui/ (active now)", lambda i: "/ui/", count)
        c.measure("/ui/conferences", lambda i: "/ui/conferences", count)
        c.measure("/ui/events", lambda i: "/ui/events", count)
        c.measure("/ui/conferences/{sid} (random)", lambda i: f"/ui/conferences/{sids[i]}", count)
        c.measure(f"/ui/day?date={day}", lambda i: f"/ui/day?date={day}", max(10, count // 5))
    finally:
        server.stop()


def poll_ticks(engine: Engine, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """A write transaction like the poller's touch of 500 watches, every 250 ms."""
    with engine.connect() as conn:
        active = conn.execute(
            select(W.c.sid, W.c.current_snapshot_id).where(W.c.status == "active").limit(500)
        ).all()
    touch_s = (
        update(S)
        .where(S.c.id == bindparam("k"))
        .values(last_observed_at=bindparam("t"), observation_count=S.c.observation_count + 1)
    )
    touch_w = update(W).where(W.c.sid == bindparam("k")).values(last_polled_at=bindparam("t"))
    took: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        now = datetime.now(UTC)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(touch_s, [{"k": r.current_snapshot_id, "t": now} for r in active])
            conn.execute(touch_w, [{"k": r.sid, "t": now} for r in active])
        took.append(time.perf_counter() - started)
        time.sleep(max(0.0, 0.25 - took[-1]))
    return took


def retention(engine: Engine, seconds: float, days: float) -> None:
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(W.c.created_at))).scalar_one()
    now = datetime.now(UTC)
    # Ages that put exactly the oldest day of history past each cutoff.
    age_s = (now - (oldest + timedelta(days=1))).total_seconds()
    settings = load_settings(None, {}).retention
    policy = replace(settings, events_s=age_s, snapshots_s=age_s, deliveries_s=age_s,
                     observations_s=age_s)  # fmt: skip
    print(f"retention of one day of data (ages {age_s / 86400:.1f}d), poll ticks every 250 ms")
    alone = poll_ticks(engine, seconds)
    print(f"  poll tick alone                            {figures(alone)}  (n={len(alone)})")
    result: dict[str, Any] = {}

    def prune() -> None:
        started = time.monotonic()
        pruner = Retention(engine, lambda: policy, budget_s=600)
        result["pruned"] = pruner.run_once(now)
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=prune)
    worker.start()
    during = poll_ticks(engine, 600, stop=_joined(worker))
    pruned = result["pruned"]
    print(f"  poll tick while pruning                    {figures(during)}  (n={len(during)})")
    print(
        f"  pruned in {result['seconds']:.1f}s: {pruned.events} events, {pruned.snapshots} "
        f"snapshots, {pruned.deliveries} deliveries, {pruned.attempts} attempts, "
        f"{pruned.watches} watches (complete: {pruned.complete})"
    )


def _joined(thread: threading.Thread) -> threading.Event:
    done = threading.Event()
    threading.Thread(target=lambda: (thread.join(), done.set()), daemon=True).start()
    return done


def sizes(url: str) -> None:
    """Bytes per conference lifecycle: seed a small, realistic history (no flaps) and measure."""
    engine = seed(url, 2000, 30, 0, datetime.now(UTC) - timedelta(days=45))
    print("database size per conference lifecycle (3 events, 4 snapshots, 2 deliveries + attempts)")
    print(f"  full history                               {_size(engine) / 2000:8.0f} bytes")
    policy = replace(load_settings(None, {}).retention, snapshots_s=86400.0, observations_s=86400.0)
    Retention(engine, lambda: policy, pause_s=0).run_once()
    print(f"  after snapshots age (first and last kept)  {_size(engine) / 2000:8.0f} bytes")
    engine.dispose()


def _size(engine: Engine) -> int:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM FULL"))
            tables = ("watches", "snapshots", "events", "deliveries", "delivery_attempts")
            return sum(
                int(conn.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar_one())
                for t in tables
            )
    raw = engine.raw_connection()  # autocommit (isolation_level None): VACUUM needs it
    try:
        cursor = raw.cursor()
        cursor.execute("VACUUM")
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(cursor.execute("PRAGMA page_size").fetchone()[0])
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="database to seed (or --reuse)")
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=100.0)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--tick-seconds", type=float, default=10.0)
    parser.add_argument("--reuse", action="store_true", help="the database is already seeded")
    parser.add_argument("--sizes-url", help="an empty database for the per-lifecycle size figure")
    parser.add_argument("--skip-retention", action="store_true")
    args = parser.parse_args()
    if args.reuse:
        engine = make_engine(args.url)
    else:
        engine = seed(args.url, args.conferences, args.days, 7, datetime.now(UTC))
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("watches", "events", "snapshots", "deliveries")}  # fmt: skip
    print(f"database {engine.url.render_as_string(hide_password=True)}: {counts}")
    api_and_web(engine, args.url, args.requests)
    if not args.skip_retention:
        retention(engine, args.tick_seconds, args.days)
    engine.dispose()
    if args.sizes_url:
        sizes(args.sizes_url)


if __name__ == "__main__":
    main()
