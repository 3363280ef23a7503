"""Status callback figures on loopback: callback-to-webhook latency and callback throughput.

    .venv/bin/python benchmarks/bench_callbacks.py
    .venv/bin/python benchmarks/bench_callbacks.py --latency-conferences 1000 --window 10 \
        --throughput-watches 10000 --senders 16

(a) Latency: the simulator (`conference-monitor simulate`, its own process)
    holds N in-progress conferences whose `statusCallback` is the daemon; all
    are watched and polled (default interval 5s, list sweeps). They end at
    random moments within `--window` seconds; the simulator posts a signed
    `conference-end` for each, the daemon records it and delivers a webhook to
    a loopback receiver. Reported: the daemon's receipt of the callback (the
    callback snapshot's `first_observed_at`) to the webhook's arrival, p50/p99/
    max, how many ends each path detected, and duplicates (must be 0).
(b) Throughput: the daemon polls N steady in-progress conferences (list
    sweeps, SQLite) and M more in `init`; `--senders` threads move the latter
    to in-progress in the simulator a chunk at a time and post a signed
    `conference-start` for each, then the same with completed and
    `conference-end`, as fast as the daemon answers. Reported: callbacks
    answered 204 per second, how many recorded a transition (the rest found a
    poll had been first), other answers (must be none), polls made meanwhile.

Everything is real (daemon subprocess, SQLite file, simulator, HTTP on
127.0.0.1); bounded in time; never part of the test run. Both phases share the
machine with the simulator and the load generator: on 2 cores that is a
pessimistic setting for the daemon.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlencode

from benchlib import Receipts, cli, cpu_seconds, free_port, metrics, percentile, profile
from sqlalchemy import create_engine, text

from monitor.callbacks.signature import compute
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN
from monitor.simulator.state import DEFAULT_ACCOUNT_SID

SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-123456").decode()
PATH = "/twilio/conference-events"
REASON = "last-participant-left"
INTERVAL_S = 5.0  # the default polling interval
CHUNK = 50  # conferences whose simulated state changes just before their callbacks go


def write_config(folder: Path, sim_url: str, port: int, hook: str | None) -> Path:
    path = folder / f"bench-{port}.toml"
    notifier = (
        f'[[notifiers]]\nname = "hook"\ntype = "webhook"\nurl = "{hook}"\nsecret = "{SECRET}"\n'
        if hook
        else '[[notifiers]]\nname = "log"\ntype = "log"\nevents = ["watch.auth_failed"]\n'
    )
    path.write_text(
        f"""
[twilio]
account_sid = "{DEFAULT_ACCOUNT_SID}"
auth_token = "{DEFAULT_AUTH_TOKEN}"
base_url = "{sim_url}"

[database]
url = "sqlite:///{folder}/bench-{port}.db"

[polling]
interval = "{INTERVAL_S:g}s"

[http]
listen = "127.0.0.1:{port}"

[callbacks]
enabled = true

[logging]
level = "WARNING"

{notifier}"""
    )
    return path


def observed(port: int) -> float:
    sample = metrics(port)
    return sum(
        sample.get(f'conference_monitor_observations_total{{via="{via}"}}', 0.0)
        for via in ("poll", "list")
    )


class Daemon:
    def __init__(self, config: Path, port: int, folder: Path) -> None:
        self.port = port
        self.log = (folder / f"daemon-{port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(300):
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited with {self.proc.returncode}")
            try:
                metrics(port)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the daemon did not start")

    def wait_first_pass(self, db: Path, n: int, timeout_s: float = 300.0) -> None:
        """Until every watch has its first snapshot, then one interval more to settle."""
        started = time.monotonic()
        query = "SELECT COUNT(*) FROM watches WHERE current_snapshot_id IS NOT NULL"
        while (rows(db, query)[0][0] if db.exists() else 0) < n:
            if time.monotonic() - started > timeout_s:
                raise SystemExit("first pass did not finish in time")
            time.sleep(0.5)
        time.sleep(INTERVAL_S)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def rows(db: Path, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()


def as_epoch(value: object) -> float:
    at = datetime.fromisoformat(str(value))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def duplicates(db: Path) -> int:
    found = rows(
        db,
        "SELECT conference_sid, type FROM events WHERE type IN "
        "('conference.started', 'conference.ended') GROUP BY conference_sid, type "
        "HAVING COUNT(*) > 1",
    )
    return len(found)


def latency(
    args: argparse.Namespace, ctl: SimulatorControl, sim_url: str, folder: Path, sim_pid: int
) -> None:
    n, window = args.latency_conferences, args.window
    port = free_port()
    receipts = Receipts()
    config = write_config(folder, sim_url, port, receipts.url)
    cli(config, "db", "upgrade")
    callback_url = f"http://127.0.0.1:{port}{PATH}"
    sids = ctl.create_conferences(
        n, status="in-progress", friendly_name="lat{n}", status_callback=callback_url
    )
    (folder / "lat.txt").write_text("\n".join(sids) + "\n")
    cli(config, "watch", "add", "--from-file", str(folder / "lat.txt"))
    daemon = Daemon(config, port, folder)
    try:
        daemon.wait_first_pass(folder / f"bench-{port}.db", n)
        print(f"(a) {n} conferences watched and seen; ending them within {window:g}s ...")
        ctl.script_many(
            {
                sid: [
                    {"after_s": random.uniform(0, window), "status": "completed", "reason": REASON}
                ]
                for sid in sids
            }
        )
        spy = profile(args.profile, daemon.proc.pid, window)
        cpu_before, wall_before = cpu_seconds(daemon.proc.pid), time.monotonic()
        sim_before = cpu_seconds(sim_pid)
        deadline = time.monotonic() + window + 30
        while len(receipts.ended_at) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        wall = time.monotonic() - wall_before
        cpu = (cpu_seconds(daemon.proc.pid) - cpu_before) / wall
        sim_cpu = (cpu_seconds(sim_pid) - sim_before) / wall
        time.sleep(1.0)
        sample = metrics(port)
        if spy is not None:
            spy.wait(timeout=60)
    finally:
        daemon.stop()
        receipts.close()
    commit = _histogram(sample, "conference_monitor_callback_commit_seconds")
    db = folder / f"bench-{port}.db"
    received = {
        str(sid): as_epoch(at)
        for sid, at in rows(
            db,
            "SELECT conference_sid, first_observed_at FROM snapshots "
            "WHERE detected_via = 'callback' AND status = 'completed'",
        )
    }
    via = Counter(
        str(body).split('"detected_via":"')[1].split('"')[0]
        for (body,) in rows(db, "SELECT body FROM events WHERE type = 'conference.ended'")
    )
    delays = [receipts.ended_at[s] - at for s, at in received.items() if s in receipts.ended_at]
    ms = [d * 1000 for d in delays]
    print(
        f"(a) callback received -> webhook delivered, {len(ms)} conferences: "
        f"p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
        f"max {max(ms):.1f} ms (target p99 <= 200 ms)"
    )
    print(
        f"    receipt -> commit: {commit}; daemon CPU {cpu:.0%} of a core, simulator {sim_cpu:.0%}"
    )
    print(
        f"    ends detected via callback {via.get('callback', 0)}, via poll/list "
        f"{via.get('poll', 0) + via.get('list', 0)}; webhooks {len(receipts.ended_at)}/{n}; "
        f"duplicates {duplicates(db)}"
    )


def _histogram(sample: dict[str, float], name: str) -> str:
    """Mean and the share of observations under a few bucket bounds."""
    count = sample.get(f"{name}_count", 0.0)
    if not count:
        return "no observations"
    mean = sample.get(f"{name}_sum", 0.0) / count * 1000
    shares = []
    for bound in ("0.01", "0.05", "0.1", "0.25"):
        key = name + '_bucket{le="' + bound + '"}'
        shares.append(f"<= {float(bound) * 1000:g} ms {sample.get(key, 0) / count:.0%}")
    return f"mean {mean:.1f} ms; " + ", ".join(shares)


def post(port: int, url: str, form: dict[str, str]) -> int:
    body = urlencode(form).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": compute(url, form.items(), DEFAULT_AUTH_TOKEN),
        "Host": f"127.0.0.1:{port}",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", PATH, body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def form(sid: str, event: str, seq: int) -> dict[str, str]:
    fields = {
        "ConferenceSid": sid,
        "AccountSid": DEFAULT_ACCOUNT_SID,
        "FriendlyName": "load",
        "StatusCallbackEvent": event,
        "SequenceNumber": str(seq),
        "Timestamp": format_datetime(datetime.now(UTC), usegmt=True),
    }
    if event == "conference-end":
        fields["ReasonConferenceEnded"] = REASON
    return fields


def throughput(args: argparse.Namespace, ctl: SimulatorControl, sim_url: str, folder: Path) -> None:
    """Steady polling of `--throughput-watches` in-progress conferences, and signed
    callbacks for `--callback-conferences` more, as fast as the daemon answers."""
    n, m = args.throughput_watches, args.callback_conferences
    port = free_port()
    config = write_config(folder, sim_url, port, None)
    cli(config, "db", "upgrade")
    steady = ctl.create_conferences(n, status="in-progress", friendly_name="poll{n}")
    targets = ctl.create_conferences(m, status="init", friendly_name="load{n}")
    (folder / "load.txt").write_text("\n".join(steady + targets) + "\n")
    cli(config, "watch", "add", "--from-file", str(folder / "load.txt"))
    daemon = Daemon(config, port, folder)
    url = f"http://127.0.0.1:{port}{PATH}"
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    try:
        daemon.wait_first_pass(folder / f"bench-{port}.db", n + m)
        print(
            f"(b) {n} steady watches polled every {INTERVAL_S:g}s; posting {2 * m} signed "
            f"callbacks for {m} more conferences ..."
        )
        before = metrics(port)
        polls_before = observed(port)
        cpu_before = cpu_seconds(daemon.proc.pid)
        own_before = sum(os.times()[:2])
        started = time.monotonic()
        spy = profile(args.profile_throughput, daemon.proc.pid, 20)
        for step, (status, event) in enumerate(
            (("in-progress", "conference-start"), ("completed", "conference-end")), start=1
        ):
            chunks = iter([targets[i : i + CHUNK] for i in range(0, m, CHUNK)])

            def send(
                status: str = status,
                event: str = event,
                seq: int = step,
                chunks: Iterator[list[str]] = chunks,
            ) -> None:
                # Twilio's state moves a chunk at a time, just before its callbacks go.
                while True:
                    with lock:
                        chunk = next(chunks, None)
                    if chunk is None:
                        return
                    ctl.script_all(chunk, [{"after_s": 0, "status": status}])
                    for sid in chunk:
                        code = post(port, url, form(sid, event, seq))
                        with lock:
                            statuses[code] += 1

            threads = [threading.Thread(target=send) for _ in range(args.senders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(daemon.proc.pid) - cpu_before) / elapsed
        own = (sum(os.times()[:2]) - own_before) / elapsed
        after = metrics(port)
        polls = observed(port) - polls_before
        if spy is not None:
            spy.wait()
    finally:
        daemon.stop()
    total = sum(statuses.values())

    def delta(result: str) -> int:
        key = f'conference_monitor_callbacks_total{{result="{result}"}}'
        return int(after.get(key, 0) - before.get(key, 0))

    others = {k: v for k, v in statuses.items() if k != 204}
    print(
        f"(b) {statuses.get(204, 0)}/{total} callbacks answered 204 in {elapsed:.1f}s: "
        f"{statuses.get(204, 0) / elapsed:.0f} callbacks/s (target >= 500/s); "
        f"recorded {delta('accepted')}, a poll was first {delta('stale')}, other answers {others}"
    )
    doubled = duplicates(folder / f"bench-{port}.db")
    print(
        f"    polling meanwhile: {polls:.0f} conferences observed ({polls / elapsed:.0f}/s); "
        f"daemon CPU {cpu:.0%} of a core, load generator {own:.0%}; duplicates {doubled}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-conferences", type=int, default=1000)
    parser.add_argument("--window", type=float, default=10.0, help="seconds the ends spread over")
    parser.add_argument("--throughput-watches", type=int, default=10_000)
    parser.add_argument("--callback-conferences", type=int, default=5000)
    parser.add_argument("--senders", type=int, default=16, help="concurrent callback posters")
    parser.add_argument("--skip", choices=("latency", "throughput"))
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    parser.add_argument("--profile", help="py-spy output of the daemon in phase (a): .txt or .svg")
    parser.add_argument(
        "--profile-throughput", help="py-spy output of the daemon in phase (b), its first 20 s"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cm-callbacks-"))
    sim_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "monitor", "simulate", "--port", str(sim_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    try:
        ctl = SimulatorControl(sim_url, timeout_s=600)
        for _ in range(100):
            try:
                ctl.stats()
                break
            except Exception:
                time.sleep(0.1)
        if args.skip != "latency":
            latency(args, ctl, sim_url, folder, sim.pid)
        if args.skip != "throughput":
            throughput(args, ctl, sim_url, folder)
        print("reproduce: .venv/bin/python benchmarks/bench_callbacks.py " + " ".join(sys.argv[1:]))
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
