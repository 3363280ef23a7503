"""Webhook delivery figures on loopback: detection-to-receipt latency and throughput.

    .venv/bin/python benchmarks/bench_webhooks.py [--tick 1.0] [--pg URL]

(a) Latency: events are written to the outbox the way a poll writes them (the
    event's `occurred_at` is the moment the transition was detected), at random
    moments, while a `Dispatcher` is ticked every `--tick` seconds like the
    daemon's scheduler does (`[dispatch] interval`, default 1 s). The time from
    `occurred_at` to the receiver having the request is reported as p50/p99.
(b) Throughput: a backlog of rows is written first, then one dispatcher drains
    it to a healthy receiver; deliveries per second are reported.

Everything is real: a SQLite file in a temporary folder (or, with `--pg URL`, a
scratch database created on that PostgreSQL server and dropped afterwards), the
outbox SQL, `WebhookNotifier` signing and posting, an HTTP/1.1 receiver on
127.0.0.1 that checks every signature. Bounded: well under a minute.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.db.engine import make_engine, upgrade
from monitor.db.outbox import Outbox
from monitor.db.store import Store
from monitor.domain import EventType, new_event_id
from monitor.events import NewEvent, document
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.signing import decode_secret, verify
from monitor.notify.webhook import WebhookNotifier

SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-0123456789abcdef").decode()
ACCOUNT = "AC" + "b" * 32


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.key = decode_secret(SECRET)
        self.received: dict[str, float] = {}  # webhook-id -> first receipt (time.time())
        self.requests = 0
        self.bad_signatures = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a healthy receiver would
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        at = time.time()
        ok = verify(self.server.key, dict(self.headers.items()), body)
        with self.server.lock:
            self.server.requests += 1
            self.server.bad_signatures += 0 if ok else 1
            self.server.received.setdefault(self.headers["webhook-id"], at)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def serving() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def event(n: int) -> NewEvent:
    at = datetime.now(UTC)
    event_id = new_event_id()
    sid = f"CF{n:032x}"
    data = {"conference_sid": sid, "account_sid": ACCOUNT, "friendly_name": f"bench-{n}"}
    return NewEvent(
        id=event_id,
        type=EventType.STARTED,
        conference_sid=sid,
        account_sid=ACCOUNT,
        occurred_at=at,
        body=document(EventType.STARTED, event_id, at, data),
        notifiers=("hook",),
    )


def ticking(dispatcher: Dispatcher, interval_s: float, stop: threading.Event) -> threading.Thread:
    """The daemon's dispatch job: `tick()` every `interval_s` (fixed rate, like APScheduler)."""

    def run() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            dispatcher.tick()
            next_at += interval_s
            stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=run, name="dispatch-tick", daemon=True)
    thread.start()
    return thread


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def latency(engine: Engine, tick_s: float, count: int, window_s: float) -> dict[str, float]:
    store = Store(engine)
    with serving() as hook:
        notifier = WebhookNotifier("hook", hook.url, SECRET, timeout_s=5.0)
        dispatcher = Dispatcher(Outbox(engine), {"hook": notifier})
        stop = threading.Event()
        ticker = ticking(dispatcher, tick_s, stop)
        occurred: dict[str, float] = {}
        rng = random.Random(7)
        moments = sorted(rng.uniform(0, window_s) for _ in range(count))
        start = time.monotonic()
        for n, moment in enumerate(moments):
            time.sleep(max(0.0, start + moment - time.monotonic()))
            new = event(n)
            store.write_events([new])
            occurred[new.id] = new.occurred_at.timestamp()
        deadline = time.monotonic() + tick_s + 10
        while len(hook.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        ticker.join()
        dispatcher.close()
        lags = [hook.received[i] - occurred[i] for i in occurred if i in hook.received]
        return {
            "events": count,
            "received": len(lags),
            "bad_signatures": hook.bad_signatures,
            "p50": percentile(lags, 50),
            "p99": percentile(lags, 99),
            "max": max(lags),
            "mean": statistics.fmean(lags),
        }


def throughput(engine: Engine, count: int, batch_size: int, limit_s: float) -> dict[str, float]:
    store = Store(engine)
    chunk = 500
    for first in range(0, count, chunk):
        store.write_events([event(1_000_000 + n) for n in range(first, min(count, first + chunk))])
    with serving() as hook:
        notifier = WebhookNotifier("hook", hook.url, SECRET, timeout_s=5.0)
        dispatcher = Dispatcher(Outbox(engine), {"hook": notifier}, batch_size=batch_size)
        started = time.monotonic()
        deadline = started + limit_s
        # Ticks as often as the daemon could; a full batch makes the worker claim the next
        # one itself, so the tick rate barely matters here.
        while len(hook.received) < count and time.monotonic() < deadline:
            dispatcher.tick()
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        dispatcher.close()
        return {
            "rows": count,
            "delivered": len(hook.received),
            "requests": hook.requests,
            "bad_signatures": hook.bad_signatures,
            "seconds": elapsed,
            "per_second": len(hook.received) / elapsed,
        }


@contextmanager
def database(pg_admin_url: str | None, folder: str, name: str) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a scratch PostgreSQL database."""
    if pg_admin_url is None:
        yield f"sqlite:///{Path(folder)}/{name}.db"
        return
    scratch = f"cm_bench_{name}_{random.getrandbits(40):x}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{scratch}"'))
        yield make_url(pg_admin_url).set(database=scratch).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tick", type=float, default=1.0, help="dispatch interval, s (1.0)")
    parser.add_argument("--events", type=int, default=300, help="latency sample size (300)")
    parser.add_argument("--window", type=float, default=15.0, help="latency phase, s (15)")
    parser.add_argument("--rows", type=int, default=3000, help="throughput backlog (3000)")
    parser.add_argument("--batch-size", type=int, default=100, help="claim size (100)")
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="PostgreSQL server (any database on it) to create scratch databases on; "
        "default: SQLite files in a temporary folder",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        for phase in ("latency", "throughput"):
            with database(args.pg, folder, phase) as url:
                engine = make_engine(url)
                try:
                    upgrade(engine)
                    if phase == "latency":
                        lat = latency(engine, args.tick, args.events, args.window)
                    else:
                        thr = throughput(engine, args.rows, args.batch_size, limit_s=20.0)
                finally:
                    engine.dispose()

    where = "scratch PostgreSQL databases" if args.pg else "SQLite (WAL) in a temporary folder"
    print(f"python {' '.join(sys.argv)}")
    print(f"database: {where}; receiver: HTTP/1.1 on 127.0.0.1, 204, signatures checked")
    print(
        f"(a) detection -> receipt, dispatch tick {args.tick:g} s, "
        f"{lat['received']}/{lat['events']} events over {args.window:g} s: "
        f"p50 {lat['p50'] * 1000:.0f} ms, p99 {lat['p99'] * 1000:.0f} ms, "
        f"max {lat['max'] * 1000:.0f} ms, mean {lat['mean'] * 1000:.0f} ms; "
        f"p99 beyond the tick: {(lat['p99'] - args.tick) * 1000:+.0f} ms; "
        f"bad signatures {lat['bad_signatures']}"
    )
    print(
        f"(b) one dispatcher, one webhook notifier, batch {args.batch_size}: "
        f"{thr['delivered']}/{thr['rows']} rows in {thr['seconds']:.2f} s = "
        f"{thr['per_second']:.0f} deliveries/s "
        f"({thr['requests']} requests, bad signatures {thr['bad_signatures']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
