"""`conference-monitor run` as systemd runs it: the notify protocol, reload, health, stop.

The daemon is a subprocess; NOTIFY_SOCKET is an AF_UNIX datagram socket this
test binds (abstract or path), so every READY/STATUS/WATCHDOG/RELOADING/STOPPING
the daemon sends is read back in order. The simulator plays Twilio, a loopback
server plays webhook receivers, and the databases are real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from monitor.config import ConfigError, load_settings
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import (
    Daemon,
    cli,
    daemon,
    json_lines,
    receiver,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

HTTP = '\n[http]\nlisten = "127.0.0.1:0"\n'
MISSING_SID = "CF" + "0" * 31 + "9"  # never created in the simulator: 404, Twilio code 20404


# -- the systemd side of NOTIFY_SOCKET -------------------------------------------------


@dataclass
class Datagram:
    at: float  # time.monotonic() when read
    fields: dict[str, str]


@dataclass
class NotifySocket:
    """What systemd is to the daemon: a datagram socket collecting its messages in order."""

    env_value: str
    sock: socket.socket
    received: list[Datagram] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return  # closed at teardown
            pairs = (line.partition("=") for line in data.decode().splitlines())
            with self.lock:
                self.received.append(Datagram(time.monotonic(), {k: v for k, _, v in pairs}))

    def messages(self) -> list[Datagram]:
        with self.lock:
            return list(self.received)

    def with_key(self, key: str, value: str | None = None) -> list[Datagram]:
        return [m for m in self.messages() if key in m.fields and value in (None, m.fields[key])]

    def count(self, key: str, value: str | None = None) -> int:
        return len(self.with_key(key, value))

    def wait_count(self, key: str, value: str | None, n: int, timeout: float = 20) -> None:
        wait_for(lambda: self.count(key, value) >= n, timeout, f"{n} x {key}={value or '*'}")

    def index_of(self, key: str, value: str | None = None, start: int = 0) -> int:
        for i, m in enumerate(self.messages()[start:], start):
            if key in m.fields and value in (None, m.fields[key]):
                return i
        raise AssertionError(f"no {key}={value or '*'} from message {start} on")


@contextmanager
def notify_socket(kind: str = "abstract") -> Iterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    folder = None
    if kind == "abstract":
        name = f"cm-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        env_value = "@" + name
    else:  # a path socket, in a short folder: AF_UNIX paths end at 108 bytes
        folder = tempfile.mkdtemp(prefix="cm-sd-")
        env_value = os.path.join(folder, "notify")
        sock.bind(env_value)
    listener = NotifySocket(env_value, sock)
    thread = threading.Thread(target=listener._read, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=5)
        if folder:
            os.unlink(env_value)
            os.rmdir(folder)


# -- HTTP endpoint helpers ----------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_port(d: Daemon, timeout: float = 20) -> int:
    found: list[int] = []

    def logged() -> bool:
        for line in d.log_lines():
            if line.get("event") == "http.started":
                found.append(int(re.findall(r":(\d+)$", line["msg"])[0]))
                return True
        return False

    wait_for(logged, timeout, "the health endpoint's address in the log")
    return found[0]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def metric(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, frozenset(labels.items())), 0.0)


def wait_metric(port: int, name: str, above: float, timeout: float = 20, **labels: str) -> float:
    seen: list[float] = []

    def moved() -> bool:
        seen.append(metric(port, name, **labels))
        return seen[-1] > above

    wait_for(moved, timeout, f"{name}{labels} above {above}")
    return seen[-1]


def stall_status(sd: NotifySocket) -> int | None:
    """Index of the STATUS= announcing a stalled poll loop, if sent yet."""
    for i, m in enumerate(sd.messages()):
        if m.fields.get("STATUS", "").startswith("poll loop stalled"):
            return i
    return None


def events_of(d: Daemon, event: str) -> list[dict[str, Any]]:
    return [line for line in d.log_lines() if line.get("event") == event]


def wait_logged(d: Daemon, event: str, timeout: float = 20, n: int = 1) -> None:
    wait_for(lambda: len(events_of(d, event)) >= n, timeout, f"log event {event}")


CONFERENCE_SID = re.compile(r"\bCF[0-9a-fA-F]{32}\b")


def check_log_shape(log_path: Path) -> list[dict[str, Any]]:
    """`--log-format json`: every line one JSON object; conference lines carry their SID,
    delivery lines their event id and notifier."""
    lines = [json.loads(raw) for raw in log_path.read_text().splitlines() if raw.strip()]
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys(), line
        sids = set(CONFERENCE_SID.findall(line["msg"]))
        if sids:
            assert line.get("sid") in sids, line
        if str(line.get("event", "")).startswith("delivery."):
            assert line.get("event_id") and line.get("notifier"), line
    return lines


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, SimulatorControl]]:
    with SimulatorServer() as server, SimulatorControl(server.url) as ctl:
        yield server, ctl


def prepare(tmp_path: Path, sim_url: str, db_url: str, *sids: str, **config: Any) -> Path:
    path = write_config(tmp_path, sim_url=sim_url, db_url=db_url, **config)
    upgraded = cli("db", "upgrade", config=path)
    assert upgraded.returncode == 0, upgraded.stderr
    if sids:
        added = cli("watch", "add", *sids, config=path)
        assert added.returncode == 0, added.stderr
    return path


# -- the protocol ------------------------------------------------------------------------

WATCHDOG_USEC = 600_000  # pings every 0.3 s


def test_ready_status_watchdog_reload_and_stopping(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    server, ctl = sim
    sid = ctl.create_conference(friendly_name="protocol", status="init")["sid"]
    config = prepare(tmp_path, server.url, f"sqlite:///{tmp_path}/m.db", sid, extra=HTTP)
    with notify_socket("abstract") as sd:
        env = {"NOTIFY_SOCKET": sd.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with daemon(config, tmp_path / "log", env=env) as d:
            sd.wait_count("READY", "1", 1)
            first = sd.messages()[0]
            assert first.fields == {"READY": "1"}, "READY=1 must come first, alone"
            # READY=1 followed the startup checks and the scheduler's start.
            assert events_of(d, "daemon.started")
            ready_at = first.at

            status = sd.with_key("STATUS")[0].fields["STATUS"]
            assert re.fullmatch(
                r"1 active watches, last poll (never|\d\d:\d\d:\d\d), 0 deliveries pending", status
            ), status

            # Half of WATCHDOG_USEC apart: ten pings in three seconds; ask for half.
            window = 3.0
            wait_for(lambda: time.monotonic() > ready_at + window, 10, "the ping window")
            pings = [
                m for m in sd.with_key("WATCHDOG", "1") if ready_at <= m.at <= ready_at + window
            ]
            assert len(pings) >= int(window / (WATCHDOG_USEC / 2e6)) // 2, len(pings)

            port = http_port(d)
            wait_metric(port, "conference_monitor_polls_total", 0, outcome="ok")

            # SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC, then READY=1 and a fresh STATUS.
            before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            mark = len(sd.messages())
            d.process.send_signal(signal.SIGHUP)
            sd.wait_count("READY", "1", 2)
            after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            reloading = sd.index_of("RELOADING", "1", mark)
            stamp = int(sd.messages()[reloading].fields["MONOTONIC_USEC"])
            assert before_usec <= stamp <= after_usec
            ready_again = sd.index_of("READY", "1", reloading)
            # STATUS= is a datagram of its own, sent just after READY=1.
            wait_for(
                lambda: any("STATUS" in m.fields for m in sd.messages()[ready_again:]),
                10,
                "a STATUS= after the reload",
            )
            status = sd.messages()[sd.index_of("STATUS", None, ready_again)].fields["STATUS"]
            assert re.fullmatch(
                r"1 active watches, last poll \d\d:\d\d:\d\d, 0 deliveries pending", status
            ), status

            mark = len(sd.messages())
            assert d.stop(signal.SIGTERM) == 0
            assert sd.index_of("STOPPING", "1", mark) >= mark
        assert events_of(d, "daemon.stopped")


def test_schema_behind_exits_1_naming_db_upgrade_and_never_ready(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    server, _ = sim
    config = write_config(tmp_path, sim_url=server.url, db_url=f"sqlite:///{tmp_path}/new.db")
    with notify_socket("path") as sd:
        env = {"NOTIFY_SOCKET": sd.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with daemon(config, tmp_path / "log", env=env) as d:
            assert d.process.wait(timeout=30) == 1
        output = (tmp_path / "log").read_text()
        assert "conference-monitor db upgrade" in output, output
        assert sd.count("READY") == 0 and sd.count("WATCHDOG") == 0, sd.messages()
    # The same socket and environment do get READY=1 once the schema is current.
    assert cli("db", "upgrade", config=config).returncode == 0
    with (
        notify_socket("path") as sd,
        daemon(config, tmp_path / "log2", env={"NOTIFY_SOCKET": sd.env_value}) as d,
    ):
        sd.wait_count("READY", "1", 1)
        assert d.stop(signal.SIGINT) == 0


# -- reload --------------------------------------------------------------------------------


def broken(good: str) -> str:
    """Three mistakes in one file: a bad duration, a wrong type, an unknown notifier type."""
    text_ = good.replace('interval = "300ms"', 'interval = "soon"')
    text_ = text_.replace('read_timeout = "2s"', "read_timeout = true")
    assert text_.count("soon") == 1 and "true" in text_
    return text_ + '\n[[notifiers]]\nname = "pigeon"\ntype = "carrier-pigeon"\n'


def test_sighup_keeps_old_config_when_broken_and_applies_a_new_notifier(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl]
) -> None:
    server, ctl = sim
    sid = ctl.create_conference(friendly_name="reloaded", status="init")["sid"]
    db = f"sqlite:///{tmp_path}/m.db"
    config = prepare(tmp_path, server.url, db, sid, extra=HTTP)
    good = config.read_text()
    with (
        notify_socket() as sd,
        receiver() as hook,
        daemon(config, tmp_path / "log", env={"NOTIFY_SOCKET": sd.env_value}) as d,
    ):
        sd.wait_count("READY", "1", 1)
        port = http_port(d)
        wait_metric(port, "conference_monitor_transitions_total", 0, type="conference.first_seen")

        # A broken file: every problem logged, the old configuration kept and polling on.
        config.write_text(broken(good))
        with pytest.raises(ConfigError) as rejected:
            load_settings(config, {})
        problems = rejected.value.problems
        assert len(problems) >= 3
        d.process.send_signal(signal.SIGHUP)
        sd.wait_count("READY", "1", 2)
        logged = [line["msg"] for line in events_of(d, "config.invalid")]
        assert logged == [f"reload rejected: {p}" for p in problems]
        assert events_of(d, "config.kept")
        assert metric(port, "conference_monitor_config_reloads_total", result="failure") == 1
        assert metric(port, "conference_monitor_config_reloads_total", result="success") == 0
        assert metric(port, "conference_monitor_config_last_reload_success") == 0
        # Polling goes on (the list sweep observes the watched conference now).
        seen = metric(port, "conference_monitor_observations_total", via="list")
        wait_metric(port, "conference_monitor_observations_total", seen, via="list")

        # A new webhook notifier: the next event reaches it.
        write_config(tmp_path, sim_url=server.url, db_url=db, hook_url=hook.url, extra=HTTP)
        d.process.send_signal(signal.SIGHUP)
        sd.wait_count("READY", "1", 3)
        assert events_of(d, "config.reloaded")
        assert metric(port, "conference_monitor_config_reloads_total", result="success") == 1
        assert metric(port, "conference_monitor_config_last_reload_success") == 1
        assert hook.bodies() == []
        ctl.set_status(sid, "in-progress")
        wait_for(lambda: len(hook.bodies()) >= 1, 20, "the new notifier's first delivery")
        (body,) = hook.bodies()
        assert body["type"] == "conference.started"
        assert body["data"]["conference_sid"] == sid
        wait_for(
            lambda: any(
                line.get("notifier") == "log" and line.get("event") == "conference.started"
                for line in d.log_lines()
            ),
            20,
            "the log notifier's line for the same event",
        )
        assert d.stop(signal.SIGTERM) == 0
    assert sd.count("WATCHDOG") == 0, "no WATCHDOG_USEC, no pings"


# -- health, metrics and a database outage --------------------------------------------


@pytest.mark.postgres
def test_readyz_follows_the_database_and_a_hung_poll_stops_the_watchdog(
    tmp_path: Path,
    sim: tuple[SimulatorServer, SimulatorControl],
    pg_url: str,
    pg_admin_url: str,
) -> None:
    server, ctl = sim
    sid = ctl.create_conference(friendly_name="outage", status="init")["sid"]
    config = prepare(tmp_path, server.url, pg_url, sid, MISSING_SID, extra=HTTP)
    name = pg_url.rsplit("/", 1)[1]
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    env = {
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        # The hang limit is the longest a healthy fetch can take; keep it short here.
        "CONFERENCE_MONITOR_TWILIO_CONNECT_TIMEOUT": "500ms",
    }
    try:
        with (
            notify_socket() as sd,
            daemon(config, tmp_path / "log", env={**env, "NOTIFY_SOCKET": sd.env_value}) as d,
        ):
            sd.wait_count("READY", "1", 1)
            port = http_port(d)
            assert get(port, "/healthz") == (200, "ok\n")
            assert get(port, "/readyz") == (200, "ready\n")

            # Counters move as polls happen.
            wait_metric(port, "conference_monitor_polls_total", 0, outcome="ok")
            listed = wait_metric(port, "conference_monitor_observations_total", 0, via="list")
            wait_metric(port, "conference_monitor_observations_total", listed, via="list")
            wait_metric(port, "conference_monitor_twilio_errors_total", 0, code="20404")
            wait_metric(port, "conference_monitor_polls_total", 0, outcome="not_found")
            assert metric(port, "conference_monitor_snapshots_written_total") >= 1
            ctl.set_status(sid, "in-progress")
            wait_metric(
                port, "conference_monitor_deliveries_total", 0, notifier="log", outcome="delivered"
            )
            assert (
                metric(port, "conference_monitor_transitions_total", type="conference.started") == 1
            )
            assert metric(port, "conference_monitor_watches", status="active") >= 1
            # The missing SID is fetched one by one, so fetch durations are recorded too.
            assert metric(port, "conference_monitor_poll_duration_seconds_count") >= 1

            # The database goes away: /readyz 503, polls fail with a logged error.
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
            wait_for(lambda: get(port, "/readyz")[0] == 503, 20, "/readyz 503")
            assert "database unreachable" in get(port, "/readyz")[1]
            wait_for(
                lambda: any(
                    line["msg"].startswith("poll_tick failed") and line["level"] == "error"
                    for line in events_of(d, "tick.failed")
                ),
                20,
                "a logged poll failure",
            )
            ctl.set_status(sid, "completed", reason="last-participant-left")
            # Down is not hung: ticks fail fast, so the watchdog keeps being fed.
            pings = sd.count("WATCHDOG", "1")
            sd.wait_count("WATCHDOG", "1", pings + 3)
            assert get(port, "/metrics")[0] == 200  # counters still served

            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), 30, "/readyz 200 again")
            wait_logged(d, "tick.recovered")
            wait_metric(port, "conference_monitor_transitions_total", 0, type="conference.ended")

            # A poll that hangs (a lock held forever) stops the pings; /readyz says why.
            locker = create_engine(pg_url)
            with locker.connect() as conn:
                conn.execute(text("LOCK TABLE watches IN ACCESS EXCLUSIVE MODE"))
                wait_for(lambda: stall_status(sd) is not None, 30, "STATUS= saying stalled")
                stalled = stall_status(sd)
                assert stalled is not None
                code, detail = get(port, "/readyz")
                assert code == 503 and detail.startswith("poll loop stalled"), detail
                hold_until = time.monotonic() + 6 * WATCHDOG_USEC / 1e6  # a dozen ping slots
                wait_for(lambda: time.monotonic() > hold_until, 10, "the lock held a while")
                assert [m for m in sd.messages()[stalled:] if "WATCHDOG" in m.fields] == []
                conn.rollback()
            locker.dispose()
            wait_logged(d, "watchdog.resumed")
            pings = sd.count("WATCHDOG", "1")
            sd.wait_count("WATCHDOG", "1", pings + 2)
            wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), 20, "/readyz 200")
            assert d.stop(signal.SIGTERM) == 0
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()

    lines = check_log_shape(tmp_path / "log")
    assert {"tick.failed", "tick.recovered", "watch.not_found"} <= {
        line.get("event") for line in lines
    }

    # Nothing half-written: every transition once, each with its snapshot and delivery.
    check = create_engine(pg_url)
    with check.connect() as conn:
        events = conn.execute(
            text(
                "SELECT type, snapshot_id, id FROM events WHERE conference_sid = :s"
                " ORDER BY occurred_at"
            ),
            {"s": sid},
        ).all()
        assert [e.type for e in events] == [
            "conference.first_seen",
            "conference.started",
            "conference.ended",
        ]
        statuses = (
            conn.execute(
                text("SELECT status FROM snapshots WHERE conference_sid = :s ORDER BY id"),
                {"s": sid},
            )
            .scalars()
            .all()
        )
        assert statuses == ["init", "in-progress", "completed"]
        orphans = conn.execute(
            text(
                "SELECT e.id FROM events e LEFT JOIN deliveries d ON d.event_id = e.id"
                " WHERE e.type <> 'conference.first_seen' AND e.conference_sid = :s"
                " AND d.id IS NULL"
            ),
            {"s": sid},
        ).all()
        assert orphans == []
    check.dispose()


# -- stopping --------------------------------------------------------------------------------


@contextmanager
def hanging_receiver() -> Iterator[tuple[str, list[str], threading.Event]]:
    """A webhook receiver that reads the request and never answers until released."""
    got: list[str] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.append(self.headers.get("webhook-id", ""))
            release.wait(60)

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", got, release
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def slow_hook(url: str) -> str:
    """A webhook notifier whose own timeout (60 s) is far past the stop deadline."""
    return f"""
[[notifiers]]
name = "slow"
type = "webhook"
url = "{url}"
secret = "whsec_{"QUJD" * 8}"
timeout = "60s"
"""


@pytest.mark.postgres
def test_sigterm_and_sigint_stop_within_10s_while_work_hangs(
    tmp_path: Path, sim: tuple[SimulatorServer, SimulatorControl], pg_url: str
) -> None:
    """Both daemons are stuck in a delivery to a receiver that never answers; the
    SIGINT one (on PostgreSQL) also has a poll tick waiting forever on a table lock."""
    server, ctl = sim
    with hanging_receiver() as (url, got, _release), ExitStack() as stack:
        runs: list[tuple[signal.Signals, Path, str]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            folder = tmp_path / sig.name
            folder.mkdir()
            sid = ctl.create_conference(friendly_name=sig.name, status="init")["sid"]
            db = f"sqlite:///{folder}/m.db" if sig == signal.SIGTERM else pg_url
            config = prepare(folder, server.url, db, sid, extra=HTTP + slow_hook(url))
            runs.append((sig, config, sid))
        daemons = [stack.enter_context(daemon(c, c.parent / "log")) for _, c, _ in runs]
        for d in daemons:  # every conference has its baseline before it moves
            port = http_port(d)
            wait_metric(
                port, "conference_monitor_transitions_total", 0, type="conference.first_seen"
            )
        for _, _, sid in runs:
            ctl.set_status(sid, "in-progress")
        wait_for(lambda: len(got) >= 2, 30, "both daemons stuck in a delivery")

        # No lock_timeout: the next poll tick waits for this lock for ever.
        locker = create_engine(pg_url)
        stack.callback(locker.dispose)
        lock = stack.enter_context(locker.connect())
        lock.execute(text("LOCK TABLE watches IN ACCESS EXCLUSIVE MODE"))
        # A tick starts every 0.25 s, and none once stopping: let one reach the lock.
        locked = time.monotonic()
        wait_for(lambda: time.monotonic() > locked + 1.0, 5, "a poll tick to hit the lock")
        started = time.monotonic()
        for (sig, _, _), d in zip(runs, daemons, strict=True):
            d.process.send_signal(sig)
        for d in daemons:
            assert d.process.wait(timeout=10 - (time.monotonic() - started)) == 0
        lock.rollback()
        left = [[line["msg"] for line in events_of(d, "daemon.abandoned")] for d in daemons]
        assert [[m.split(" is still")[0] for m in msgs] for msgs in left] == [
            ["a delivery"],
            ["a delivery", "a tick"],
        ]
        for d in daemons:
            assert events_of(d, "daemon.stopped")

    # Left behind, not lost: the delivery is still in the outbox for the next start.
    for _, config, sid in runs:
        listed = cli("deliveries", "--status", "pending", "--json", config=config)
        pending = json_lines(listed.stdout)
        assert [(p["notifier"], p["conference_sid"], p["status"]) for p in pending] == [
            ("slow", sid, "pending")
        ]


# -- process metrics under ProcSubset=pid --------------------------------------------------


def test_process_metrics_survive_a_proc_without_stat(tmp_path: Path) -> None:
    """The unit's ProcSubset=pid hides /proc/stat; process_* metrics must not vanish."""
    from prometheus_client.process_collector import ProcessCollector

    from monitor.metrics import _ProcessCollector

    proc = tmp_path / "proc"  # like ProcSubset=pid: the process's entries, no /proc/stat
    proc.mkdir()
    (proc / "self").symlink_to("/proc/self")
    stock = {m.name for m in ProcessCollector(proc=str(proc), registry=None).collect()}
    ours = {m.name for m in _ProcessCollector(proc=str(proc), registry=None).collect()}
    assert stock == set()
    assert {"process_start_time_seconds", "process_resident_memory_bytes"} <= ours
