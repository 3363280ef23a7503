"""Delivery figures on loopback: throughput, detection-to-receipt latency, failing receivers.

    .venv/bin/python benchmarks/bench_notify.py [--pg URL] [--scenario NAME ...]

Scenarios (all by default):
  healthy   3,000 events detected at about 1,000/s (100 every 0.1 s), to a receiver
            answering 204: deliveries/s from the first detection to the last receipt,
            and detection -> receipt p50/p99/max.
  backlog   3,000 rows already waiting, drained to a healthy receiver: deliveries/s.
  steady    300 events over 3 s to a healthy receiver: the baseline for `flaky`.
  flaky     the same 300 events to a receiver answering 500 to the first attempt of
            10% of the events, chosen at random: seconds from the last detection to the
            last receipt (figure to reach: within retry_delays[0] + 10 s), and the p99
            latency of the first-time successes (figure: unchanged from `steady`).
  flaky-requests  the same, but 10% of all requests fail independently, retries too:
            an event failing twice waits retry_delays[0] + retry_delays[1] by design.
  twice     20 events, each answered 500, then 429 with `Retry-After: 1`, then 204:
            seconds from the first detection until all are delivered (figure: <= 45 s).

The dispatcher runs as in the daemon: the default [dispatch] schedule, `tick()` every
second and right after each write (the daemon's dispatch-soon). Everything is real: a
SQLite file (or, with `--pg URL`, a scratch database created on that server and
dropped afterwards), the outbox SQL, `WebhookNotifier` signing, and a receiver in its
own process (it is another service; sharing our interpreter would measure its GIL,
not our dispatcher) that checks every signature. Each scenario is bounded in time.
Works against older versions of the dispatcher too (only the common arguments are used).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-0123456789abcdef").decode()
ACCOUNT = "AC" + "b" * 32
SCENARIOS = ("healthy", "backlog", "steady", "flaky", "flaky-requests", "twice")
WAIT_S = 60.0  # how long a failing-receiver scenario may take; --wait


# --- The receiver, in its own process ------------------------------------------------------


def serve(mode: str, seed: int) -> None:
    """`--serve MODE`: print the port, answer POSTs, give the records on GET /records."""
    from monitor.notify.signing import decode_secret, verify

    key = decode_secret(SECRET)
    rng = random.Random(seed)
    lock = threading.Lock()
    first_ok: dict[str, float] = {}
    tries: dict[str, int] = {}
    state = {"requests": 0, "bad_signatures": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            at = time.time()
            ok = verify(key, dict(self.headers.items()), body)
            event_id = self.headers.get("webhook-id", "")
            with lock:
                state["requests"] += 1
                state["bad_signatures"] += 0 if ok else 1
                tries[event_id] = attempt = tries.get(event_id, 0) + 1
                status, headers = answer(mode, attempt, rng)
                if status < 300:
                    first_ok.setdefault(event_id, at)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with lock:  # /count while waiting (cheap), /records once at the end
                whole = {"first_ok": first_ok, "tries": tries}
                doc = json.dumps(
                    {
                        **state,
                        "delivered": len(first_ok),
                        **(whole if "records" in self.path else {}),
                    }
                ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def answer(mode: str, attempt: int, rng: random.Random) -> tuple[int, dict[str, str]]:
    if mode == "flaky-requests" and rng.random() < 0.10:
        return 500, {}
    if mode == "flaky" and attempt == 1 and rng.random() < 0.10:
        return 500, {}
    if mode == "twice" and attempt == 1:
        return 500, {}
    if mode == "twice" and attempt == 2:
        return 429, {"Retry-After": "1"}
    return 204, {}


@contextmanager
def receiver(mode: str) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        process.kill()
        process.wait(10)


def records(url: str, what: str = "records") -> dict[str, Any]:
    with urllib.request.urlopen(url.replace("/hook", f"/{what}"), timeout=10) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


# --- The dispatcher side -------------------------------------------------------------------


def event(n: int) -> Any:
    from monitor.domain import EventType, new_event_id
    from monitor.events import NewEvent, document

    at = datetime.now(UTC)
    event_id = new_event_id()
    sid = f"CF{n:032x}"
    data = {"conference_sid": sid, "account_sid": ACCOUNT, "friendly_name": f"bench-{n}"}
    return NewEvent(
        id=event_id,
        type=EventType.ENDED,
        conference_sid=sid,
        account_sid=ACCOUNT,
        occurred_at=at,
        body=document(EventType.ENDED, event_id, at, data),
        notifiers=("hook",),
    )


class Run:
    """One dispatcher ticking like the daemon's, against a receiver URL."""

    def __init__(self, engine: Any, url: str) -> None:
        from monitor.db.outbox import Outbox
        from monitor.db.store import Store
        from monitor.notify.dispatcher import Dispatcher
        from monitor.notify.webhook import WebhookNotifier

        self.store = Store(engine)
        self.dispatcher = Dispatcher(
            Outbox(engine), {"hook": WebhookNotifier("hook", url, SECRET, timeout_s=5.0)}
        )
        self.occurred: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._tick_every_second, daemon=True)
        self._thread.start()

    def write(self, events: list[Any], *, kick: bool = True) -> None:
        self.store.write_events(events)
        for new in events:
            self.occurred[new.id] = new.occurred_at.timestamp()
        if kick:
            self.tick()

    def tick(self) -> None:
        with self._lock:  # the scheduler never runs the dispatch job twice at once
            self.dispatcher.tick()

    def _tick_every_second(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_at += 1.0
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def until(self, url: str, count: int, limit_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        while records(url, "count")["delivered"] < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return records(url)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.dispatcher.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def lags(run: Run, got: dict[str, Any], only_first_try: bool = False) -> list[float]:
    return [
        got["first_ok"][i] - at
        for i, at in run.occurred.items()
        if i in got["first_ok"] and (not only_first_try or got["tries"].get(i) == 1)
    ]


def streamed(engine: Any, mode: str, count: int, per_write: int, every_s: float) -> dict[str, Any]:
    with receiver(mode) as url:
        run = Run(engine, url)
        try:
            start = time.time()
            for first in range(0, count, per_write):
                run.write([event(n) for n in range(first, min(count, first + per_write))])
                time.sleep(max(0.0, start + (first // per_write + 1) * every_s - time.time()))
            last_detection = max(run.occurred.values())
            got = run.until(url, count, limit_s=WAIT_S if mode != "healthy" else 30)
        finally:
            run.close()
    receipts = list(got["first_ok"].values())
    lag = lags(run, got)
    first_try = lags(run, got, only_first_try=True)
    span = (max(receipts) - min(run.occurred.values())) if receipts else float("nan")
    return {
        "delivered": len(receipts),
        "events": count,
        "requests": got["requests"],
        "bad": got["bad_signatures"],
        "per_s": len(receipts) / span if receipts else 0.0,
        "after_last_s": (max(receipts) - last_detection) if receipts else float("nan"),
        "p50": percentile(lag, 50),
        "p99": percentile(lag, 99),
        "max": max(lag) if lag else float("nan"),
        "first_try_p99": percentile(first_try, 99),
        "span_s": span,
    }


def backlog(engine: Any, count: int) -> dict[str, Any]:
    with receiver("healthy") as url:
        run = Run.__new__(Run)  # no ticker yet: write first, then start the clock
        Run.__init__(run, engine, url)
        try:
            for first in range(0, count, 500):
                run.write([event(n) for n in range(first, min(count, first + 500))], kick=False)
            started = time.time()
            run.tick()
            got = run.until(url, count, limit_s=60)
        finally:
            run.close()
    receipts = list(got["first_ok"].values())
    span = max(receipts) - started if receipts else float("nan")
    return {"delivered": len(receipts), "events": count, "per_s": len(receipts) / span}


@contextmanager
def database(pg_admin_url: str | None, folder: str, name: str) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a scratch PostgreSQL database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

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


def scenario(name: str, engine: Any) -> str:
    if name == "healthy":
        r = streamed(engine, "healthy", 3000, 100, 0.1)
        return (
            f"healthy  {r['delivered']}/{r['events']} delivered, {r['per_s']:.0f} deliveries/s "
            f"(first detection -> last receipt {r['span_s']:.2f} s); detection -> receipt "
            f"p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms, "
            f"max {r['max'] * 1000:.0f} ms; bad signatures {r['bad']}"
        )
    if name == "backlog":
        r = backlog(engine, 3000)
        return f"backlog  {r['delivered']}/{r['events']} drained at {r['per_s']:.0f} deliveries/s"
    if name == "steady":
        r = streamed(engine, "healthy", 300, 10, 0.1)
        return (
            f"steady   {r['delivered']}/{r['events']} delivered; detection -> receipt "
            f"p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms"
        )
    if name in ("flaky", "flaky-requests"):
        r = streamed(engine, name, 300, 10, 0.1)
        return (
            f"{name:8} {r['delivered']}/{r['events']} delivered ({r['requests']} requests); "
            f"last receipt {r['after_last_s']:.1f} s after the last detection; "
            f"p99 {r['p99'] * 1000:.0f} ms, first-time successes p99 "
            f"{r['first_try_p99'] * 1000:.0f} ms"
        )
    r = streamed(engine, "twice", 20, 20, 0.0)
    return (
        f"twice    {r['delivered']}/{r['events']} delivered ({r['requests']} requests); "
        f"all within {r['span_s']:.1f} s of the first detection"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL server for scratch databases")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--wait", type=float, default=WAIT_S, help="limit per scenario, s (60)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    globals()["WAIT_S"] = args.wait
    if args.serve:
        serve(args.serve, seed=7)
        return 0
    from monitor.db.engine import make_engine, upgrade

    quiet = logging.getLogger("monitor")  # failing receivers log a warning per retry
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    where = "scratch PostgreSQL databases" if args.pg else "SQLite (WAL) in a temporary folder"
    print(f"python {' '.join(sys.argv)}")
    print(f"database: {where}; receiver: its own process, HTTP/1.1, signatures checked")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.scenario or SCENARIOS:
            with database(args.pg, folder, name) as url:
                engine = make_engine(url)
                try:
                    upgrade(engine)
                    print(scenario(name, engine), flush=True)
                finally:
                    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
