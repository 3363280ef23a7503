"""The `run` command: APScheduler as the clock, signals, systemd notify, health endpoint.

The scheduler only ticks; what is due lives in the database, so a restart
resumes where the last process stopped. The main thread waits for signals:
SIGTERM/SIGINT stop cleanly (running ticks finish), SIGHUP reloads the config.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from monitor.app import App, build_notifiers, effective_notifiers, recipients_for
from monitor.config import ConfigError, Settings, load_settings
from monitor.db.engine import require_current_schema
from monitor.httpapi import HealthServer
from monitor.outcomes import PollPolicy
from monitor.sdnotify import SystemdNotifier

log = logging.getLogger("monitor.daemon")

POLL_TICK_S = 0.25  # how often to look for due watches; due times themselves live in the DB
MAINTENANCE_TICK_S = 15.0
SHUTDOWN_GRACE_S = 8.0  # under systemd's and the SPEC's 10 s


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
            executors={"default": SchedulerPool(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.http: HealthServer | None = None
        self.last_poll_at: datetime | None = None
        self.db_ok = True

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        require_current_schema(self.app.engine)
        poller = self.app.with_poller()
        self.app.with_dispatcher()
        self._start_http()
        self._install_signals()
        self._add_jobs(poller.policy.interval_s)
        self.scheduler.start()
        watches = sum(self.app.store.watch_counts().values())
        log.info(
            "conference-monitor running: %d watches, database %s, notifiers %s",
            watches,
            self.app.settings.database.safe_url,
            ", ".join(n.name for n in effective_notifiers(self.app.settings)),
            extra={"event": "daemon.started"},
        )
        self.sd.ready()
        self._refresh_status()
        try:
            self._wait()
        finally:
            self._shutdown()
        return 0

    def _wait(self) -> None:
        while not self.stop_requested.is_set():
            self.stop_requested.wait(0.2)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()

    def _shutdown(self) -> None:
        log.info("stopping: finishing work in flight", extra={"event": "daemon.stopping"})
        self.sd.stopping()
        started = time.monotonic()
        self.scheduler.shutdown(wait=True)
        if self.app.dispatcher is not None:
            left = max(0.5, SHUTDOWN_GRACE_S - (time.monotonic() - started))
            self.app.dispatcher.drain(left)
        if self.http is not None:
            self.http.stop()
        self.app.close()
        self.sd.close()
        log.info("stopped", extra={"event": "daemon.stopped"})

    def request_stop(self, *_args: Any) -> None:
        self.stop_requested.set()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _add_jobs(self, interval_s: float) -> None:
        add = self.scheduler.add_job
        add(self._guard(self.poll_tick), "interval", seconds=POLL_TICK_S, id="poll")
        dispatch_s = self.app.settings.dispatch.interval_s
        add(self._guard(self.dispatch_tick), "interval", seconds=dispatch_s, id="dispatch")
        add(self._guard(self._refresh_status), "interval", seconds=MAINTENANCE_TICK_S, id="status")
        watchdog_s = self.sd.watchdog_interval_s()
        if watchdog_s:
            add(self.sd.watchdog, "interval", seconds=watchdog_s, id="watchdog")

    def _guard(self, job: Callable[[], None]) -> Callable[[], None]:
        """Log a failed tick (e.g. database down) and keep the schedule going."""

        def run() -> None:
            try:
                job()
                if not self.db_ok:
                    log.info("database reachable again", extra={"event": "db.recovered"})
                self.db_ok = True
            except Exception as exc:
                if self.db_ok:
                    log.error(
                        "%s failed: %s", job.__name__, _short(exc), extra={"event": "tick.failed"}
                    )
                self.db_ok = False

        run.__name__ = job.__name__
        return run

    # -- ticks -------------------------------------------------------------------------

    def poll_tick(self) -> None:
        poller = self.app.with_poller()
        while not self.stop_requested.is_set():
            report = poller.poll_due()
            if report.claimed == 0:
                return
            self.last_poll_at = datetime.now(UTC)
            self.app.metrics.snapshots_written(report.result.snapshots_written)
            for event in report.result.events:
                self.app.metrics.count_transition(event.type)
            if report.claimed < poller.batch_size:
                return

    def dispatch_tick(self) -> None:
        if self.app.dispatcher is not None:
            self.app.dispatcher.tick()

    def _refresh_status(self) -> None:
        counts = self.app.store.watch_counts()
        backlog, oldest = self.app.outbox.backlog()
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
        self.app.metrics.set_watches(counts)
        self.app.metrics.set_outbox(backlog, age)
        last = self.last_poll_at.strftime("%H:%M:%S") if self.last_poll_at else "never"
        self.sd.status(
            f"{counts.get('active', 0)} active watches, last poll {last}, "
            f"{backlog} deliveries pending"
        )

    # -- health --------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.scheduler.running:
            return False, "scheduler not running"
        try:
            with self.app.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return False, f"database unreachable: {_short(exc)}"
        return True, "ready"

    def _start_http(self) -> None:
        listen = self.app.settings.http.listen
        if listen:
            self.http = HealthServer(listen, self.app.metrics, self.readiness)
            self.app.metrics.set_refresher(self._refresh_status)
            self.http.start()
            log.info("health and metrics on http://%s", listen, extra={"event": "http.started"})

    # -- reload --------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config; apply notifiers and polling, or keep the old one on error."""
        self.sd.reloading()
        try:
            new = load_settings(self.config_path, self.environ)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem, extra={"event": "config.invalid"})
            log.error("keeping the running configuration", extra={"event": "config.kept"})
            self.app.metrics.config_reloaded(False)
            self.sd.ready()
            return False
        self._apply(new)
        self.app.metrics.config_reloaded(True)
        log.info("configuration reloaded", extra={"event": "config.reloaded"})
        self.sd.ready()
        return True

    def _apply(self, new: Settings) -> None:
        old = self.app.settings
        if new.database.url != old.database.url or new.http != old.http:
            log.warning(
                "database.url and [http] changes need a restart; kept the running values",
                extra={"event": "config.restart_needed"},
            )
            new = _with(new, database=old.database, http=old.http)
        self.app.settings = new
        poller = self.app.with_poller()
        polling = new.polling
        poller.policy = PollPolicy(polling.interval_s, polling.not_found_grace_s)
        poller.jitter_s = polling.jitter_s
        poller.batch_size = polling.batch_size
        poller.recipients = recipients_for(new)
        if self.app.dispatcher is not None:
            self.app.dispatcher.set_notifiers(build_notifiers(new))


def _with(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def _short(exc: BaseException) -> str:
    text_ = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text_[:300]


def run_daemon(
    settings: Settings, config_path: str | Path | None, environ: Mapping[str, str]
) -> int:
    app = App.open(settings)
    return Daemon(app, config_path, environ).run()
