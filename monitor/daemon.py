"""The `run` command: APScheduler as the clock, signals, systemd notify, health endpoint.

The scheduler only ticks; what is due lives in the database, so a restart
resumes where the last process stopped. The main thread waits for signals:
SIGTERM/SIGINT stop cleanly (running ticks finish, within a bounded grace),
SIGHUP reloads the config.

systemd protocol (monitor/sdnotify.py): READY=1 once the database answers, the
schema is current and the scheduler runs; STATUS= a one-line summary; WATCHDOG=1
from a scheduler job, only while the poll loop makes progress; RELOADING=1 (with
MONOTONIC_USEC) then READY=1 around a reload; STOPPING=1 on shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from monitor.api.routes import register as register_history
from monitor.app import (
    App,
    build_notifiers,
    effective_notifiers,
    recipients_for,
)
from monitor.callbacks.endpoint import CallbackEndpoint
from monitor.callbacks.intake import Intake
from monitor.callbacks.writer import CallbackWriter
from monitor.config import ConfigError, Settings, load_settings
from monitor.db.engine import require_current_schema
from monitor.domain import Conference
from monitor.httpapi import HealthServer
from monitor.httppool import DEFAULT_WORKERS
from monitor.metrics import Metrics
from monitor.notify.base import Notifier
from monitor.outcomes import PollPolicy
from monitor.retention import maintenance_job
from monitor.sdnotify import SystemdNotifier
from monitor.service import ConferenceSource
from monitor.sweeper import SWEEP_TICK_S
from monitor.touches import FLUSH_EVERY_S
from monitor.twilio.errors import TwilioError
from monitor.twilio.payloads import ConferencePage

log = logging.getLogger("monitor.daemon")

POLL_TICK_S = 0.25  # how often to look for due watches; due times themselves live in the DB
MAINTENANCE_TICK_S = 15.0
SHUTDOWN_GRACE_S = 8.0  # under the SPEC's 10 s and the unit's TimeoutStopSec=15s
# A failing tick (database down) is logged when it starts failing, then at most this often.
FAILURE_LOG_EVERY_S = 60.0
# Without a watchdog, /readyz still reports a poll loop silent for this long.
DEFAULT_STALL_LIMIT_S = 60.0
# After new events: dispatcher ticks this far apart, until this many in a row find nothing.
DISPATCH_FOLLOW_UP_S = 0.05
DISPATCH_FOLLOW_UPS = 2
SHUTDOWN_POLL_S = 0.5
# Listener threads with status callbacks on: each waits for its group's commit.
CALLBACK_HTTP_WORKERS = 64


def stall_limit_s(settings: Settings, watchdog_timeout_s: float | None) -> float:
    """How long the poll loop may go without progress before it counts as hung.

    Progress is marked every time the fetch loop looks for answers (at least
    every 0.1 s while it waits), so the longest healthy gap is one database
    statement; a Twilio call never lasts longer than `twilio.request_deadline`.
    The limit is the watchdog timeout (so a hang is reported within about two
    timeouts), but never less than one whole Twilio call.
    """
    return max(watchdog_timeout_s or DEFAULT_STALL_LIMIT_S, settings.twilio.request_deadline_s)


@dataclass
class _JobHealth:
    """Failure state of one scheduled job, so an outage logs once, not 4 times a second."""

    failures: int = 0
    since: float = 0.0
    last_logged: float = 0.0


class _TwilioErrorCounter:
    """The poller's Twilio source, counting every error Twilio answered with.

    Counted by Twilio error code (20404, 20003, 20429...), else HTTP status; errors
    without an answer (timeouts, refused connections) are `polls_total{outcome=
    "transient"}` only. One count per failed fetch or listing, after retries.
    """

    def __init__(self, source: ConferenceSource, metrics: Metrics) -> None:
        self._source = source
        self._metrics = metrics

    def _count(self, exc: TwilioError) -> None:
        if exc.status_code is not None:
            self._metrics.count_twilio_error(exc.code or exc.status_code)

    def fetch_conference(self, sid: str, *, account_sid: str | None = None) -> Conference:
        try:
            return self._source.fetch_conference(sid, account_sid=account_sid)
        except TwilioError as exc:
            self._count(exc)
            raise

    def list_conference_pages(self, **kwargs: Any) -> Iterator[ConferencePage]:
        try:
            yield from self._source.list_conference_pages(**kwargs)
        except TwilioError as exc:
            self._count(exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class _SkipMaxInstances(logging.Filter):
    """APScheduler warns each time a 0.25 s tick finds the previous one still running.

    A long poll tick is normal (a big batch, a slow Twilio); a hung one is what the
    watchdog and /readyz report. The warning would only flood the journal.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


class Daemon:
    def __init__(
        self, app: App, config_path: str | Path | None, environ: Mapping[str, str]
    ) -> None:
        self.app = app
        self.config_path = config_path
        self.environ = environ
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.sd = SystemdNotifier.from_environ(environ)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": SchedulerPool(8)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.http: HealthServer | None = None
        self.callbacks: CallbackWriter | None = None
        self._dispatch_wake = threading.Event()
        self.last_poll_at: datetime | None = None
        # A reload swaps notifiers, recipients and polling settings as one.
        self._config_lock = threading.Lock()
        self._jobs: dict[str, _JobHealth] = {}
        self._running = 0  # jobs executing now; shutdown waits for it to reach 0
        self._idle = threading.Condition()
        self._progress = time.monotonic()  # last sign of life of the poll loop
        self._stall_reported = False
        self.closed = False  # set once _shutdown has taken over closing the app
        watchdog_s = self.sd.watchdog_interval_s()
        self.stall_limit_s = stall_limit_s(app.settings, watchdog_s * 2 if watchdog_s else None)

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()  # first: a SIGTERM during startup still stops cleanly
        require_current_schema(self.app.engine)  # the database answers, the schema is current
        poller = self.app.with_poller(on_events=lambda _events: self._dispatch_soon())
        poller.source = _TwilioErrorCounter(poller.source, self.app.metrics)
        self.app.store.health.on_change = self._write_health_changed
        self.app.with_dispatcher()
        watches = self.app.store.watch_counts()
        try:
            self._start_http()
            self._add_jobs()
            logging.getLogger("apscheduler.scheduler").addFilter(_SkipMaxInstances())
            self._progress = time.monotonic()
            self.scheduler.start()
            threading.Thread(
                target=self._dispatch_loop, name="monitor-dispatch-soon", daemon=True
            ).start()
            log.info(
                "conference-monitor running: %d watches, database %s, notifiers %s",
                sum(watches.values()),
                self.app.settings.database.safe_url,
                ", ".join(n.name for n in effective_notifiers(self.app.settings)),
                extra={"event": "daemon.started"},
            )
            self.sd.ready()
            self._status_quietly()
            self._wait()
        finally:
            self._shutdown()
        return 0

    def _wait(self) -> None:
        while not self.stop_requested.is_set():
            self.stop_requested.wait(0.2)
            if self.reload_requested.is_set() and not self.stop_requested.is_set():
                self.reload_requested.clear()
                self.reload()

    def _shutdown(self) -> None:
        """Finish work in flight within SHUTDOWN_GRACE_S, then leave what is stuck.

        No tick starts once a stop is requested; running ticks and deliveries get
        the grace period. A delivery still stuck after it (a receiver slower than
        the grace) is abandoned: the dispatcher's workers are daemon threads, its
        lease lapses and the next start delivers it again, so nothing is lost. A
        tick still stuck (a database statement that never returns) runs on a pool
        thread the interpreter would wait for at exit, so the process ends itself
        with os._exit; either way the stop stays within the SPEC's 10 s.
        """
        self.stop_requested.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        log.info("stopping: finishing work in flight", extra={"event": "daemon.stopping"})
        self.sd.notify("STOPPING=1", "STATUS=stopping: finishing work in flight")
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        ticks_done = self._wait_idle(deadline)
        if ticks_done:
            self._flush_quietly()
        delivered = True
        if self.app.dispatcher is not None:
            try:
                delivered = self.app.dispatcher.drain(_left(deadline))
            except Exception as exc:  # the dispatcher should not raise; never fail a stop on it
                log.error(
                    "draining deliveries failed: %s",
                    _short(exc),
                    extra={"event": "daemon.stop_failed"},
                )
                delivered = False
        if self.http is not None:
            self.http.stop()
        if self.callbacks is not None:
            self.callbacks.stop(_left(deadline))
        self.closed = True
        if not delivered:
            log.warning(
                "a delivery is still in flight after %.0fs: left to the next start "
                "(retried once its lease lapses)",
                SHUTDOWN_GRACE_S,
                extra={"event": "daemon.abandoned"},
            )
        if not ticks_done:
            log.warning(
                "a tick is still running after %.0fs: exiting without it "
                "(its transaction is rolled back; the next start polls again)",
                SHUTDOWN_GRACE_S,
                extra={"event": "daemon.abandoned"},
            )
            log.info("stopped", extra={"event": "daemon.stopped"})
            self.sd.close()
            _exit_now(0)  # joining the stuck pool thread would outlast the stop timeout
        self.app.close()
        self.sd.close()
        log.info("stopped", extra={"event": "daemon.stopped"})

    def _flush_quietly(self) -> None:
        """Write the buffered unchanged observations before exiting (counts only)."""
        if self.app.poller is None:
            return
        try:
            self.app.poller.flush_touches()
        except Exception as exc:
            log.warning(
                "could not write the last observation counts: %s",
                _short(exc),
                extra={"event": "daemon.stop_failed"},
            )

    def _wait_idle(self, deadline: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout=_left(deadline))

    def request_stop(self, *_args: Any) -> None:
        self.stop_requested.set()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _add_jobs(self) -> None:
        add = self.scheduler.add_job
        add(self._guard(self.poll_tick), "interval", seconds=POLL_TICK_S, id="poll")
        dispatch_s = self.app.settings.dispatch.interval_s
        add(self._guard(self.dispatch_tick), "interval", seconds=dispatch_s, id="dispatch")
        add(self._guard(self._refresh_status), "interval", seconds=MAINTENANCE_TICK_S, id="status")
        prune = maintenance_job(self.app, self.stop_requested.is_set)
        every = self.app.settings.retention.interval_s
        add(self._guard(prune), "interval", seconds=every, id="retention")
        watchdog_s = self.sd.watchdog_interval_s()
        if watchdog_s:
            add(self.watchdog_tick, "interval", seconds=watchdog_s, id="watchdog")
        add(self._guard(self.sweep_tick), "interval", seconds=SWEEP_TICK_S, id="sweep")
        add(self._guard(self.flush_tick), "interval", seconds=FLUSH_EVERY_S, id="flush")

    def _guard(self, job: Callable[[], None]) -> Callable[[], None]:
        """Run a tick unless stopping; log failures (database down) once, and recovery."""
        name = job.__name__
        health = self._jobs.setdefault(name, _JobHealth())

        def run() -> None:
            if self.stop_requested.is_set():
                return
            with self._idle:
                self._running += 1
            try:
                job()
            except Exception as exc:
                self._failed(name, health, exc)
            else:
                if health.failures:
                    log.info(
                        "%s works again after %d failures in %.0fs",
                        name,
                        health.failures,
                        time.monotonic() - health.since,
                        extra={"event": "tick.recovered"},
                    )
                    health.failures = 0
            finally:
                if name == "poll_tick":
                    self._progress = time.monotonic()
                with self._idle:
                    self._running -= 1
                    self._idle.notify_all()

        run.__name__ = name
        return run

    def _failed(self, name: str, health: _JobHealth, exc: Exception) -> None:
        now = time.monotonic()
        health.failures += 1
        if health.failures == 1:
            health.since = health.last_logged = now
            log.error("%s failed: %s", name, _short(exc), extra={"event": "tick.failed"})
        elif now - health.last_logged >= FAILURE_LOG_EVERY_S:
            health.last_logged = now
            log.error(
                "%s still failing (%d times in %.0fs): %s",
                name,
                health.failures,
                now - health.since,
                _short(exc),
                extra={"event": "tick.failed"},
            )

    # -- ticks -------------------------------------------------------------------------

    def poll_tick(self) -> None:
        """Fetch what is due one by one, until nothing is due (results recorded as they come)."""
        report = self.app.with_poller().poll_due(self.stop_requested, self._mark_progress)
        if report.claimed:
            self.last_poll_at = datetime.now(UTC)

    def sweep_tick(self) -> None:
        """Run the list sweeps that are due (`polling.use_list`, `polling.discover`)."""
        polling = self.app.settings.polling
        account = self.app.settings.twilio.account_sid
        accounts = (account,) if polling.discover and account else ()
        if self.app.with_poller().sweep_due(self.stop_requested, accounts):
            self.last_poll_at = datetime.now(UTC)

    def flush_tick(self) -> None:
        """Write the buffered unchanged observations (last seen, counts)."""
        self.app.with_poller().flush_touches()

    def _mark_progress(self) -> None:
        self._progress = time.monotonic()

    def _write_health_changed(self, ok: bool) -> None:
        self.app.metrics.set_writable(ok)
        problem = self.app.store.health.problem()
        if problem is not None:
            self.sd.status(problem)
            log.error("%s", problem, extra={"event": "database.write_failed"})
        else:
            log.info("observations are written again", extra={"event": "database.write_ok"})
            self._status_quietly()

    def _dispatch_soon(self) -> None:
        """New outbox rows: claim them now rather than at the next dispatch tick."""
        self._dispatch_wake.set()

    def _dispatch_loop(self) -> None:
        """Ticks the dispatcher as soon as rows are written, then a few times more.

        A wake that comes while a notifier's workers are busy claims nothing (its
        workers refill themselves); the follow-up ticks catch rows written just as
        those workers ran out of work, so no event waits for the periodic tick.
        """
        while not self.stop_requested.is_set():
            if not self._dispatch_wake.wait(SHUTDOWN_POLL_S):
                continue
            quiet = 0
            while quiet < DISPATCH_FOLLOW_UPS and not self.stop_requested.is_set():
                woken = self._dispatch_wake.is_set()
                self._dispatch_wake.clear()
                try:
                    claimed = self.app.dispatcher.tick() if self.app.dispatcher else 0
                except Exception as exc:  # the periodic dispatch job reports failures
                    log.debug("dispatch failed: %s", _short(exc), extra={"event": "tick.failed"})
                    claimed = 0
                quiet = 0 if woken or claimed else quiet + 1
                self.stop_requested.wait(DISPATCH_FOLLOW_UP_S)

    def dispatch_tick(self) -> None:
        if self.app.dispatcher is not None:
            self.app.dispatcher.tick()

    def watchdog_tick(self) -> None:
        """WATCHDOG=1, sent by a scheduler job and only while the poll loop progresses.

        Being a job, it stops when the scheduler's loop hangs. Checking the poll
        loop's progress as well means a poll stuck forever (a database lock with no
        timeout, a wedged connection) also stops the pings and systemd restarts
        the daemon; a database that refuses connections is not a hang (ticks
        fail fast and are logged), so pings go on and /readyz says 503 instead.
        """
        if self.stop_requested.is_set():
            return
        silent_s = time.monotonic() - self._progress
        if silent_s <= self.stall_limit_s:
            if self._stall_reported:
                self._stall_reported = False
                log.info("poll loop is moving again", extra={"event": "watchdog.resumed"})
                # No database query here: this job must never block on what it watches.
                self.sd.status("poll loop is moving again")
            self.sd.watchdog()
        elif not self._stall_reported:
            self._stall_reported = True
            log.error(
                "poll loop has made no progress for %.0fs: withholding watchdog pings",
                silent_s,
                extra={"event": "watchdog.stalled"},
            )
            self.sd.status(f"poll loop stalled for {silent_s:.0f}s: watchdog pings withheld")

    def _refresh_status(self) -> None:
        """Refresh the gauges and STATUS=; when the database fails, say so and raise."""
        last = self.last_poll_at.strftime("%H:%M:%S") if self.last_poll_at else "never"
        try:
            counts = self.app.store.watch_counts()
            backlog, oldest = self.app.outbox.backlog(
                [n.name for n in effective_notifiers(self.app.settings)]
            )
        except Exception as exc:
            self.sd.status(f"database unreachable: {_short(exc)[:120]}; last poll {last}")
            raise
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
        self.app.metrics.set_watches(counts)
        self.app.metrics.set_outbox(backlog, age)
        problem = self.app.store.health.problem()
        if problem is not None:
            self.sd.status(f"{problem}; last poll {last}")
            return
        self.sd.status(
            f"{counts.get('active', 0)} active watches, last poll {last}, "
            f"{backlog} deliveries pending"
        )

    # -- health --------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.scheduler.running or self.stop_requested.is_set():
            return False, "scheduler not running"
        silent_s = time.monotonic() - self._progress
        if silent_s > self.stall_limit_s:
            return False, f"poll loop stalled: no progress for {silent_s:.0f}s"
        # Reachability first: "unreachable" says more than "cannot be written".
        try:
            with self.app.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return False, f"database unreachable: {_short(exc)}"
        problem = self.app.store.health.problem()
        if problem is not None:
            return False, problem
        return True, "ready"

    def _start_http(self) -> None:
        listen = self.app.settings.http.listen
        if listen:
            callbacks = self.app.settings.callbacks.enabled
            workers = CALLBACK_HTTP_WORKERS if callbacks else DEFAULT_WORKERS
            self.http = HealthServer(listen, self.app.metrics, self.readiness, workers=workers)
            if callbacks:
                self._add_callbacks(self.http)
            register_history(self.http, self.app.engine, lambda: self.app.settings)
            self.app.metrics.set_refresher(self._refresh_status)
            self.http.start()
            host, port = self.http.address
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.info("health and metrics on http://%s", where, extra={"event": "http.started"})

    def _add_callbacks(self, http: HealthServer) -> None:
        """The status callback route, and the writer thread that records what it accepts."""
        settings = self.app.settings
        tw, cb = settings.twilio, settings.callbacks
        tokens = (
            {tw.account_sid: tw.auth_token.reveal()} if tw.account_sid and tw.auth_token else {}
        )
        intake = Intake()
        self.callbacks = CallbackWriter(
            self.app.store,
            lambda: self.app.with_poller().recorder,
            intake,
            watch_unknown=cb.watch_unknown,
            metrics=self.app.metrics,
        )
        endpoint = CallbackEndpoint(
            tokens, intake.submit, self.app.metrics, public_url=cb.public_url
        )
        http.add_route(endpoint.route(cb.path, cb.max_body))
        self.callbacks.start()
        log.info(
            "status callbacks on %s%s",
            cb.path,
            " (unknown conferences are watched)" if cb.watch_unknown else "",
            extra={"event": "callbacks.started"},
        )

    # -- reload --------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config; apply notifiers, polling and dispatch, or keep the old one."""
        self.sd.reloading()
        log.info(
            "reloading %s", self.config_path or "configuration", extra={"event": "config.reloading"}
        )
        try:
            new = load_settings(self.config_path, self.environ)
            self._apply(new)
        except (ConfigError, ValueError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            for problem in problems:
                log.error("reload rejected: %s", problem, extra={"event": "config.invalid"})
            log.error(
                "keeping the running configuration (%d problems)",
                len(problems),
                extra={"event": "config.kept"},
            )
            self.app.metrics.config_reloaded(False)
            self.sd.ready()
            self._status_quietly()
            return False
        self.app.metrics.config_reloaded(True)
        log.info("configuration reloaded", extra={"event": "config.reloaded"})
        self.sd.ready()
        self._status_quietly()
        return True

    def _status_quietly(self) -> None:
        try:
            self._refresh_status()
        except Exception as exc:
            log.debug("status refresh failed: %s", _short(exc), extra={"event": "status.failed"})

    def _apply(self, new: Settings) -> None:
        """Swap in `new` whole, or raise ValueError and change nothing.

        Notifiers are built before anything is touched (a bad one rejects the
        reload); work in flight finishes with the objects it started with.
        """
        old = self.app.settings
        kept = {
            section: getattr(old, section)
            for section in ("database", "http", "twilio", "logging", "callbacks")
            if getattr(new, section) != getattr(old, section)
        }
        if kept:
            log.warning(
                "changes to %s need a restart; kept the running values",
                ", ".join(f"[{s}]" for s in kept),
                extra={"event": "config.restart_needed"},
            )
            new = replace(new, **kept)
        notifiers: dict[str, Notifier] = build_notifiers(new)
        recipients = recipients_for(new)
        poller = self.app.with_poller()
        polling, dispatch = new.polling, new.dispatch
        with self._config_lock:
            self.app.settings = new
            poller.configure(
                PollPolicy(polling.interval_s, polling.not_found_grace_s),
                recipients,
                jitter_s=polling.jitter_s,
                use_list=polling.use_list,
                discover=polling.discover,
            )
            dispatcher = self.app.dispatcher
            if dispatcher is not None:
                dispatcher.lease_s = dispatch.lease_s
                dispatcher.batch_size = dispatch.batch_size
                dispatcher.give_up_after_s = dispatch.give_up_after_s
                dispatcher.retry_delays_s = tuple(dispatch.retry_delays_s)
                dispatcher.set_notifiers(notifiers)
        if dispatch.interval_s != old.dispatch.interval_s and self.scheduler.running:
            self.scheduler.reschedule_job(
                "dispatch", trigger="interval", seconds=dispatch.interval_s
            )
        watchdog_s = self.sd.watchdog_interval_s()
        self.stall_limit_s = stall_limit_s(new, watchdog_s * 2 if watchdog_s else None)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _exit_now(code: int) -> None:
    """Flush what was logged and printed, then end the process without joining threads."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _short(exc: BaseException) -> str:
    text_ = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text_[:300]


def run_daemon(
    settings: Settings, config_path: str | Path | None, environ: Mapping[str, str]
) -> int:
    app = App.open(settings)
    daemon = Daemon(app, config_path, environ)
    try:
        return daemon.run()
    finally:
        if not daemon.closed:  # failed before the scheduler started (schema behind, ...)
            app.close()
