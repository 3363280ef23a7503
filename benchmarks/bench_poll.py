"""Polling throughput, daemon CPU per poll, and detection latency, against the simulator.

Runs `conference-monitor run` as a subprocess (its own process, so its CPU time
is its own) against an in-process simulator with N watched conferences, and
prints: polls per second, daemon CPU ms per poll, snapshot rows written, and
detection latency (simulator transition time to event time) p50/p99.

    .venv/bin/python benchmarks/bench_poll.py --conferences 1000 --interval 1s --seconds 30

Loopback only; bounded in time; never part of the test run.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchlib import Receipts, cli, cpu_seconds, free_port, metrics, percentile, profile

from monitor.domain import END_REASONS
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN, SimulatorServer
from monitor.simulator.state import DEFAULT_ACCOUNT_SID


def observations(db: Path, port: int) -> tuple[int, int]:
    """(observations received from Twilio so far, snapshot rows). Unchanged observations
    reach the database about once a minute, so the count comes from `/metrics`."""
    total = sum(
        v for k, v in metrics(port).items() if k.startswith("conference_monitor_observations_total{")
    )
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()
    return int(total), int(rows)


SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-123456").decode()


def write_config(
    folder: Path, sim_url: str, interval: str, jitter: str, use_list: bool, hook_url: str, port: int
) -> Path:
    path = folder / "bench.toml"
    path.write_text(
        f"""
[twilio]
account_sid = "{DEFAULT_ACCOUNT_SID}"
auth_token = "{DEFAULT_AUTH_TOKEN}"
base_url = "{sim_url}"
concurrency = 16

[database]
url = "sqlite:///{folder}/bench.db"

[polling]
interval = "{interval}"
jitter = "{jitter}"
use_list = {str(use_list).lower()}
batch_size = 2000

[logging]
level = "WARNING"

[http]
listen = "127.0.0.1:{port}"

[[notifiers]]
name = "log"
type = "log"

[[notifiers]]
name = "hook"
type = "webhook"
url = "{hook_url}"
secret = "{SECRET}"
"""
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conferences", type=int, default=1000)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--jitter", default="100ms")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--transitions", type=int, default=200, help="ends scripted in window")
    parser.add_argument("--fetch-only", action="store_true", help="polling.use_list = false")
    parser.add_argument("--profile", help="py-spy output of the daemon in the window: .txt or .svg")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="cm-bench-"))
    with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl:
        print(f"creating {args.conferences} conferences in the simulator ...", flush=True)
        sids = ctl.create_conferences(
            args.conferences, friendly_name="bench-{n}", status="in-progress"
        )
        receipts = Receipts()
        port = free_port()
        config = write_config(
            folder, sim.url, args.interval, args.jitter, not args.fetch_only, receipts.url, port
        )
        cli(config, "db", "upgrade")
        (folder / "sids.txt").write_text("\n".join(sids) + "\n")
        cli(config, "watch", "add", "--from-file", str(folder / "sids.txt"))
        db = folder / "bench.db"
        log = (folder / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            print(f"daemon pid {daemon.pid}; warming up {args.warmup}s ...", flush=True)
            time.sleep(args.warmup)
            ended = random.sample(sids, min(args.transitions, len(sids)))
            for sid in ended:
                reason = random.choice([r for r in END_REASONS if r != "conference-ended-via-api"])
                at = random.uniform(0.5, args.seconds - 3)
                ctl.script(sid, [{"after_s": at, "status": "completed", "reason": reason}])
            cpu0, (obs0, rows0), t0 = (
                cpu_seconds(daemon.pid),
                observations(db, port),
                time.monotonic(),
            )
            spy = profile(args.profile, daemon.pid, args.seconds)
            time.sleep(args.seconds)
            if spy is not None:
                spy.wait()
            cpu1, (obs1, rows1), t1 = (
                cpu_seconds(daemon.pid),
                observations(db, port),
                time.monotonic(),
            )
            latencies = detection_latencies(db, ctl, ended)
            delivered = [
                receipts.ended_at[sid] - _ended_at(ctl, sid)
                for sid in ended
                if sid in receipts.ended_at
            ]
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
            log.close()
            receipts.close()
        stats = ctl.stats()
    polls = obs1 - obs0
    elapsed = t1 - t0
    mode = "fetch only" if args.fetch_only else "list + fetch"
    print(
        f"\nconferences={args.conferences} interval={args.interval} mode={mode} "
        f"window={elapsed:.1f}s"
    )
    ideal = (args.conferences - len(ended) / 2) / _seconds(args.interval)
    print(
        f"polls persisted      {polls} ({polls / elapsed:.1f}/s; every active watch once an "
        f"interval would be {ideal:.0f}/s, counting the {len(ended)} that end mid-window)"
    )
    print(
        f"daemon CPU           {(cpu1 - cpu0) * 1000 / max(polls, 1):.3f} ms per poll "
        f"({(cpu1 - cpu0) / elapsed * 100:.0f}% of one core)"
    )
    print(f"snapshot rows        {rows1 - rows0} written in the window ({rows1} in all)")
    print(f"simulator requests   {json.dumps(stats.get('by_kind', {}))}")
    if latencies:
        print(
            f"detection latency    p50 {statistics.median(latencies):.3f}s  "
            f"p99 {percentile(latencies, 0.99):.3f}s  max {max(latencies):.3f}s  "
            f"(n={len(latencies)}; target p99 <= interval + 1s)"
        )
    if delivered:
        print(
            f"transition to webhook p50 {statistics.median(delivered):.3f}s  "
            f"p99 {percentile(delivered, 0.99):.3f}s  (n={len(delivered)}, loopback receiver)"
        )
    print(f"(work folder {folder})")
    return 0


def _seconds(text: str) -> float:
    from monitor.durations import parse_duration

    return parse_duration(text)


def _ended_at(ctl: SimulatorControl, sid: str) -> float:
    return next(t["at"] for t in ctl.transitions(sid) if t["status"] == "completed")


def detection_latencies(db: Path, ctl: SimulatorControl, sids: list[str]) -> list[float]:
    """Event time minus the simulator's transition time, for each scripted end."""
    time.sleep(3.0)  # let the last scripted ends be seen
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = dict(
            conn.execute(
                "SELECT conference_sid, occurred_at FROM events WHERE type = 'conference.ended'"
            ).fetchall()
        )
    out = []
    for sid in sids:
        if sid not in rows:
            continue
        ended_at = [t["at"] for t in ctl.transitions(sid) if t["status"] == "completed"]
        if ended_at:
            seen = (
                datetime.fromisoformat(rows[sid]).timestamp()
                if "+" in rows[sid]
                else (datetime.fromisoformat(rows[sid] + "+00:00").timestamp())
            )
            out.append(seen - ended_at[0])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
