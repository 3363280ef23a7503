"""Observation at scale: N watched conferences, one or more daemons, SQLite or PostgreSQL.

Starts the simulator (`conference-monitor simulate`, its own process) with N
in-progress conferences, watches them all (`watch add --from-file`), runs M
daemons (`conference-monitor run`, default configuration apart from the
interval), waits for the first pass, then measures K intervals:

- watches observed within each interval: at the end of each interval, how many
  distinct conferences the simulator answered (listed or fetched) in the
  interval before, as a share of N; and observations per interval (each
  daemon's `/metrics`, list sweeps and fetches) over N, which window edges can
  push above or below 100%;
- daemon CPU per conference per interval (`/proc/PID/stat`, all daemons summed);
- RSS now and at its peak (`/proc/PID/status` VmRSS, VmHWM) of each daemon;
- Twilio list calls per interval (the simulator's request counts);
- with `--ending P`, P% of the conferences end at random times in each interval:
  detection latency (the simulator's transition time to the event's time, and to
  the webhook's receipt) p50/p99;
- duplicated started/ended events (must be 0).

    .venv/bin/python benchmarks/bench_scale.py --conferences 100000 --interval 10s
    .venv/bin/python benchmarks/bench_scale.py --conferences 100000 --pg postgresql+psycopg://postgres@127.0.0.1:5432/test --instances 2
    .venv/bin/python benchmarks/bench_scale.py --conferences 10000 --interval 5s --ending 1

Loopback only; bounded in time; never part of the test run.
"""

from __future__ import annotations

import argparse
import base64
import math
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchlib import Receipts, cli, cpu_seconds, free_port, metrics, percentile, profile
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from monitor.durations import parse_duration
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN
from monitor.simulator.state import DEFAULT_ACCOUNT_SID

SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-123456").decode()
REASONS = ("last-participant-left", "participant-with-end-conference-on-exit-left")


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    now = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    peak = int(re.search(r"VmHWM:\s+(\d+)", status)[1])  # type: ignore[index]
    return now / 1024, peak / 1024


def observed(sample: dict[str, float]) -> float:
    return sum(
        sample.get(f'conference_monitor_observations_total{{via="{via}"}}', 0.0)
        for via in ("poll", "list")
    )


def database(args: argparse.Namespace, folder: Path) -> tuple[str, str | None]:
    """(url, name of a scratch PostgreSQL database to drop afterwards)."""
    if not args.pg:
        return f"sqlite:///{folder}/bench.db", None
    name = f"cm_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(args.pg).set(database=name).render_as_string(hide_password=False), name


def write_config(
    folder: Path, sim_url: str, db_url: str, args: argparse.Namespace, hook: str
) -> Path:
    path = folder / "bench.toml"
    notifier = (
        f'\n[[notifiers]]\nname = "hook"\ntype = "webhook"\nurl = "{hook}"\nsecret = "{SECRET}"\n'
        if args.ending
        else '\n[[notifiers]]\nname = "log"\ntype = "log"\nevents = ["watch.auth_failed"]\n'
    )
    path.write_text(
        f"""
[twilio]
account_sid = "{DEFAULT_ACCOUNT_SID}"
auth_token = "{DEFAULT_AUTH_TOKEN}"
base_url = "{sim_url}"

[database]
url = "{db_url}"

[polling]
interval = "{args.interval}"

[logging]
level = "WARNING"
{notifier}"""
    )
    return path


def duplicates(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT COUNT(*) FROM (SELECT conference_sid, type FROM events WHERE type"
                        " IN ('conference.started', 'conference.ended')"
                        " GROUP BY conference_sid, type HAVING COUNT(*) > 1) AS d"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def ended_events(db_url: str) -> dict[str, float]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT conference_sid, occurred_at FROM events WHERE type = 'conference.ended'"
                )
            ).all()
    finally:
        engine.dispose()
    out = {}
    for sid, at in rows:
        if isinstance(at, str):
            from datetime import datetime

            at = datetime.fromisoformat(at if "+" in at else at + "+00:00")
        elif at.tzinfo is None:
            from datetime import UTC

            at = at.replace(tzinfo=UTC)
        out[sid] = at.timestamp()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--interval", default="10s")
    parser.add_argument("--intervals", type=int, default=6, help="intervals measured")
    parser.add_argument("--instances", type=int, default=1, help="daemons on one database")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs and files")
    parser.add_argument("--pg", help="PostgreSQL admin URL (a scratch database is made)")
    parser.add_argument("--ending", type=float, default=0.0, help="%% ending per interval")
    parser.add_argument("--first-pass-timeout", type=float, default=900.0)
    parser.add_argument("--profile", help="py-spy output of daemon 0 while measuring: .txt or .svg")
    args = parser.parse_args()
    interval = parse_duration(args.interval)
    folder = Path(tempfile.mkdtemp(prefix="cm-scale-"))
    sim_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "monitor", "simulate", "--port", str(sim_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    daemons: list[tuple[subprocess.Popen[bytes], int]] = []
    db_url, scratch = database(args, folder)
    try:
        ctl = SimulatorControl(sim_url, timeout_s=600)
        _wait_up(ctl)
        print(f"creating {args.conferences} in-progress conferences ...", flush=True)
        sids = ctl.create_conferences(args.conferences, status="in-progress", friendly_name="b{n}")
        receipts = Receipts()
        config = write_config(folder, sim_url, db_url, args, receipts.url)
        cli(config, "db", "upgrade")
        (folder / "sids.txt").write_text("\n".join(sids) + "\n")
        started = time.monotonic()
        cli(config, "watch", "add", "--from-file", str(folder / "sids.txt"))
        print(f"watched in {time.monotonic() - started:.1f}s", flush=True)
        for i in range(args.instances):
            port = free_port()
            cfg = folder / f"d{i}.toml"
            cfg.write_text(config.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
            log = (folder / f"d{i}.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            daemons.append((proc, port))
        _wait_http(daemons)
        first = time.monotonic()
        while sum(observed(metrics(p)) for _, p in daemons) < args.conferences:
            if time.monotonic() - first > args.first_pass_timeout:
                raise SystemExit("first pass did not finish in time")
            time.sleep(1)
        print(f"first pass in {time.monotonic() - first:.1f}s; measuring ...", flush=True)
        time.sleep(interval)  # let the pass that follows the first settle
        spy = profile(args.profile, daemons[0][0].pid, interval * args.intervals)
        report = _measure(args, ctl, daemons, sids, interval)
        if spy is not None:
            spy.wait(timeout=60)
        if args.ending:
            time.sleep(interval + 3)
            report["latency"] = _latencies(ctl, db_url, receipts, report.pop("ended_sids"))
        report["duplicates"] = duplicates(db_url)
        _print(args, report)
    finally:
        for proc, _ in daemons:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in daemons:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        if scratch:
            admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
            admin.dispose()
        if args.keep:
            print(f"kept the daemons' logs and files in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _wait_up(ctl: SimulatorControl) -> None:
    for _ in range(100):
        try:
            ctl.stats()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit("the simulator did not start")


def _wait_http(daemons: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    for proc, port in daemons:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}")
            try:
                metrics(port)
                break
            except OSError:
                time.sleep(0.1)


def _measure(
    args: argparse.Namespace,
    ctl: SimulatorControl,
    daemons: list[tuple[subprocess.Popen[bytes], int]],
    sids: list[str],
    interval: float,
) -> dict[str, Any]:
    shares, covered, list_calls, ended_sids, sweeps = [], [], [], [], []
    cpu0 = sum(cpu_seconds(p.pid) for p, _ in daemons)
    t0 = time.monotonic()
    seen0 = sum(observed(metrics(port)) for _, port in daemons)
    lists0 = ctl.stats()["by_kind"].get("list", 0)
    alive = list(sids)
    for _ in range(args.intervals):
        alive_at_start = alive
        if args.ending:
            n = max(1, int(len(sids) * args.ending / 100))
            ending = random.sample(alive, n)
            alive = [s for s in alive if s not in set(ending)]
            ended_sids += ending
            ctl.script_many(
                {
                    sid: [
                        {
                            "after_s": random.uniform(0, interval),
                            "status": "completed",
                            "reason": random.choice(REASONS),
                        }
                    ]
                    for sid in ending
                }
            )
        time.sleep(interval)
        covered.append(ctl.served_within(interval) / len(alive_at_start))
        samples = [metrics(port) for _, port in daemons]
        seen = sum(observed(m) for m in samples)
        sweeps.append(_sweep_stats(samples))
        lists = ctl.stats()["by_kind"].get("list", 0)
        shares.append((seen - seen0) / len(alive_at_start))
        list_calls.append(lists - lists0)
        seen0, lists0 = seen, lists
    cpu = sum(cpu_seconds(p.pid) for p, _ in daemons) - cpu0
    elapsed = time.monotonic() - t0
    return {
        "shares": shares,
        "covered": covered,
        "list_calls": list_calls,
        "cpu_ms_per_conf_interval": cpu * 1000 / (len(sids) * elapsed / interval),
        "cpu_share": cpu / elapsed,
        "rss": [rss_mb(p.pid) for p, _ in daemons],
        "ended_sids": ended_sids,
        "sweeps": sweeps,
    }


def _sweep_stats(samples: list[dict[str, float]]) -> tuple[float, float]:
    """(sweeps finished so far, their total seconds), over all daemons."""
    count = sum(m.get("conference_monitor_sweep_duration_seconds_count", 0.0) for m in samples)
    total = sum(m.get("conference_monitor_sweep_duration_seconds_sum", 0.0) for m in samples)
    return count, total


def _latencies(
    ctl: SimulatorControl, db_url: str, receipts: Receipts, sids: list[str]
) -> dict[str, Any]:
    events = ended_events(db_url)
    detected, delivered, missing = [], [], 0
    for sid in sids:
        at = next((t["at"] for t in ctl.transitions(sid) if t["status"] == "completed"), None)
        if at is None or sid not in events:
            missing += 1
            continue
        detected.append(events[sid] - at)
        if sid in receipts.ended_at:
            delivered.append(receipts.ended_at[sid] - at)
    return {"detected": detected, "delivered": delivered, "missing": missing}


def _print(args: argparse.Namespace, r: dict[str, Any]) -> None:
    n, interval = args.conferences, parse_duration(args.interval)
    db = "PostgreSQL" if args.pg else "SQLite"
    print(f"\n{n} conferences, interval {args.interval}, {args.instances} daemon(s), {db}")
    covered = ", ".join(f"{s * 100:.1f}%" for s in r["covered"])
    print(f"observed within interval  {covered}  (min {min(r['covered']) * 100:.1f}%)")
    shares = ", ".join(f"{s * 100:.1f}%" for s in r["shares"])
    print(f"observations / N          {shares}")
    counts = [c for c, _ in r["sweeps"]]
    totals = [t for _, t in r["sweeps"]]
    done = [b - a for a, b in zip(counts, counts[1:], strict=False)]
    spent = [b - a for a, b in zip(totals, totals[1:], strict=False)]
    per = ", ".join(
        f"{d:.0f} ({t / d:.1f}s each)" if d else "0" for d, t in zip(done, spent, strict=True)
    )
    print(f"sweeps per interval       {per}")
    budget = 2 * math.ceil(n / 1000) + 2
    print(f"list calls per interval   {r['list_calls']}  (budget {budget})")
    print(
        f"daemon CPU                {r['cpu_ms_per_conf_interval']:.4f} ms per conference per "
        f"interval ({r['cpu_share'] * 100:.0f}% of one core, all daemons)"
    )
    for i, (now, peak) in enumerate(r["rss"]):
        print(f"daemon {i} RSS              {now:.0f} MB now, {peak:.0f} MB peak")
    print(f"duplicated started/ended  {r['duplicates']}")
    lat = r.get("latency")
    if lat and lat["detected"]:
        d, w = lat["detected"], lat["delivered"]
        print(
            f"detection                 p50 {statistics.median(d):.2f}s  p99 "
            f"{percentile(d, 0.99):.2f}s  max {max(d):.2f}s  (n={len(d)}, missing "
            f"{lat['missing']}; target p99 <= {interval + 1:g}s)"
        )
        if w:
            print(
                f"ended to webhook received p50 {statistics.median(w):.2f}s  p99 "
                f"{percentile(w, 0.99):.2f}s"
            )


if __name__ == "__main__":
    raise SystemExit(main())
