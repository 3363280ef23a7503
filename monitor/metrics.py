"""Prometheus metrics behind plain methods, so callers never touch prometheus objects.

Each `Metrics` owns its registry (not the process-global one), so tests and
several daemons in one process never collide on metric names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from monitor.domain import EVENT_TYPES

logger = logging.getLogger(__name__)

PREFIX = "conference_monitor"
POLL_OUTCOMES = (
    "ok",
    "not_found",
    "auth_failed",
    "rate_limited",
    "transient",
    "bad_payload",
    "error",
)
CALLBACK_RESULTS = (
    "accepted",
    "duplicate",
    "stale",
    "unwatched",
    "ignored",
    "bad_signature",
    "unknown_account",
    "malformed",
    "too_large",
    "unsupported_media",
    "unavailable",
)
# Receipt to commit of a status callback: a group commit takes milliseconds.
CALLBACK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DELIVERY_OUTCOMES = ("delivered", "retry", "failed", "dead", "disabled")
NOTIFIER_STATES = ("ok", "paused", "open", "probing", "disabled")
# The outbox calls a row that will be tried again "pending"; the metric says "retry".
_DELIVERY_ALIASES = {"pending": "retry"}
# A Twilio fetch takes tens of milliseconds; the client timeout caps it near 10 s.
POLL_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NotifierHealthLike(Protocol):
    """What the dispatcher reports of a notifier (`monitor.notify.dispatcher.NotifierHealth`)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def until(self) -> datetime | None: ...
    @property
    def policy(self) -> Any: ...


class _ProcessCollector(ProcessCollector):
    """The stock process collector, working under systemd's ProcSubset=pid too.

    It reads the boot time from /proc/stat, which ProcSubset=pid hides; without it
    the stock collector silently exports nothing. CLOCK_BOOTTIME gives the same.
    """

    def _boot_time(self) -> float:
        try:
            return float(super()._boot_time())
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _known(value: str, allowed: tuple[str, ...], what: str) -> bool:
    """Whether a label value is one of the documented ones.

    An unknown one is logged and not counted: a typo must not mint a new series,
    and metrics must never break the poll or delivery they observe.
    """
    if value in allowed:
        return True
    logger.warning(
        "event=metrics.unknown_label %s=%r expected=%s",
        what,
        value,
        "|".join(allowed),
        extra={"event": "metrics.unknown_label"},
    )
    return False


class Metrics:
    """The daemon's metrics; `render()` is the /metrics body."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._refresher: Callable[[], None] | None = None
        self._render_lock = threading.Lock()
        self._known_watch_statuses: set[str] = set()
        self._define_poll_metrics()
        self._define_flow_metrics()
        self._define_notifier_metrics()
        self._define_config_metrics()
        self._define_observation_metrics()
        self._define_callback_metrics()
        if process_metrics:  # the stock collectors live on the global registry; own copies
            _ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _define_poll_metrics(self) -> None:
        r = self.registry
        self._polls = Counter(
            f"{PREFIX}_polls",
            "Conference polls by outcome (a conference seen in a list sweep counts as ok).",
            ["outcome"],
            registry=r,
        )
        for outcome in POLL_OUTCOMES:  # export zeros so rate() works from the first scrape
            self._polls.labels(outcome)
        self._poll_duration = Histogram(
            f"{PREFIX}_poll_duration_seconds",
            "Time taken by one conference poll, any outcome.",
            buckets=POLL_BUCKETS_S,
            registry=r,
        )
        self._twilio_errors = Counter(
            f"{PREFIX}_twilio_errors",
            "Errors answered by Twilio, by Twilio error code or else HTTP status.",
            ["code"],
            registry=r,
        )
        self._last_poll = Gauge(
            f"{PREFIX}_last_poll_timestamp_seconds",
            "Unix time of the most recent finished poll; alert when it stops moving.",
            registry=r,
        )

    def _define_flow_metrics(self) -> None:
        r = self.registry
        self._watches = Gauge(f"{PREFIX}_watches", "Watches by status.", ["status"], registry=r)
        self._transitions = Counter(
            f"{PREFIX}_transitions", "Detected transitions and watch events.", ["type"], registry=r
        )
        for kind in EVENT_TYPES:
            self._transitions.labels(kind)
        self._deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Notification delivery attempts by notifier and outcome.",
            ["notifier", "outcome"],
            registry=r,
        )
        self._backlog = Gauge(
            f"{PREFIX}_outbox_backlog", "Deliveries not yet delivered or dead.", registry=r
        )
        self._oldest_age = Gauge(
            f"{PREFIX}_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending delivery; 0 when none is pending.",
            registry=r,
        )
        self._snapshots = Counter(
            f"{PREFIX}_snapshots_written", "Conference snapshot rows written.", registry=r
        )

    def _define_notifier_metrics(self) -> None:
        r = self.registry
        self._delivery_duration = Histogram(
            f"{PREFIX}_delivery_duration_seconds",
            "Time taken by one delivery attempt, any outcome.",
            ["notifier"],
            buckets=DELIVERY_BUCKETS_S,
            registry=r,
        )
        self._notifier_state = Gauge(
            f"{PREFIX}_notifier_state",
            "1 for the state each notifier is in: ok, paused (Retry-After), open "
            "(circuit breaker), probing (one request decides) or disabled (410).",
            ["notifier", "state"],
            registry=r,
        )
        self._failures = Gauge(
            f"{PREFIX}_notifier_consecutive_failures",
            "Failed attempts in a row, as counted by this instance.",
            ["notifier"],
            registry=r,
        )
        self._paused_until = Gauge(
            f"{PREFIX}_notifier_paused_until_timestamp_seconds",
            "Unix time until which the notifier is held back; 0 when it is not.",
            ["notifier"],
            registry=r,
        )
        self._threshold = Gauge(
            f"{PREFIX}_notifier_breaker_threshold",
            "Consecutive failures that open the notifier's circuit (0: never).",
            ["notifier"],
            registry=r,
        )
        self._cooldown = Gauge(
            f"{PREFIX}_notifier_breaker_cooldown_seconds",
            "How long an open circuit waits before its one probe.",
            ["notifier"],
            registry=r,
        )
        self._window = Gauge(
            f"{PREFIX}_notifier_breaker_window_seconds",
            "How long failures must go on, as well as their number, to open the circuit.",
            ["notifier"],
            registry=r,
        )
        self._concurrency = Gauge(
            f"{PREFIX}_notifier_concurrency",
            "Deliveries in flight at most, per notifier and instance.",
            ["notifier"],
            registry=r,
        )

    def set_notifier_health(self, health: NotifierHealthLike) -> None:
        """A notifier's state and thresholds, as the dispatcher saw them at its last tick."""
        name = health.name
        for state in NOTIFIER_STATES:
            self._notifier_state.labels(name, state).set(1 if health.state == state else 0)
        self._failures.labels(name).set(health.consecutive_failures)
        self._paused_until.labels(name).set(health.until.timestamp() if health.until else 0)
        self._threshold.labels(name).set(health.policy.breaker_threshold)
        self._cooldown.labels(name).set(health.policy.breaker_cooldown_s)
        self._window.labels(name).set(health.policy.breaker_window_s)
        self._concurrency.labels(name).set(health.policy.concurrency)

    def _define_config_metrics(self) -> None:
        r = self.registry
        self._reloads = Counter(
            f"{PREFIX}_config_reloads", "Configuration reloads by result.", ["result"], registry=r
        )
        for result in ("success", "failure"):
            self._reloads.labels(result)
        self._reload_ok = Gauge(
            f"{PREFIX}_config_last_reload_success",
            "1 if the last configuration (re)load succeeded, else 0.",
            registry=r,
        )
        self._reload_ok.set(1)  # the daemon only runs after its first load succeeded

    def _define_observation_metrics(self) -> None:
        r = self.registry
        self._observed = Counter(
            f"{PREFIX}_observations",
            "Conferences received from Twilio, by how (poll: one fetch; list: a sweep).",
            ["via"],
            registry=r,
        )
        self._persisted = Counter(
            f"{PREFIX}_observations_persisted",
            "Observations written to the database: changed (a new snapshot), or unchanged "
            "(the current snapshot's count, written about once a minute).",
            ["kind"],
            registry=r,
        )
        self._dropped = Counter(
            f"{PREFIX}_observations_dropped",
            "Changed observations not recorded because another observer recorded "
            "the conference first (a lost compare-and-set) or knew a newer state.",
            registry=r,
        )
        for via in ("poll", "list", "callback"):
            self._observed.labels(via)
        for kind in ("changed", "unchanged"):
            self._persisted.labels(kind)
        self._writable = Gauge(
            f"{PREFIX}_database_writable",
            "1 while observations can be written, 0 after a write failed (disk full, locked, "
            "read-only) until one succeeds.",
            registry=r,
        )
        self._writable.set(1)
        self._sweeps = Counter(
            f"{PREFIX}_sweeps", "List sweeps of an account, by result.", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self._sweeps.labels(result)
        self._sweep_seconds = Histogram(
            f"{PREFIX}_sweep_duration_seconds",
            "Time one list sweep of an account took.",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )

    def _define_callback_metrics(self) -> None:
        r = self.registry
        self._callbacks = Counter(
            f"{PREFIX}_callbacks",
            "Twilio status callbacks received, by result: accepted (recorded), duplicate "
            "(a replayed SequenceNumber), stale (nothing new), unwatched, ignored (participant "
            "events), or refused (bad_signature, unknown_account, malformed, too_large, "
            "unsupported_media, unavailable).",
            ["result"],
            registry=r,
        )
        for result in CALLBACK_RESULTS:
            self._callbacks.labels(result)
        self._callback_seconds = Histogram(
            f"{PREFIX}_callback_commit_seconds",
            "Time from a status callback's receipt to the commit that recorded it.",
            buckets=CALLBACK_BUCKETS_S,
            registry=r,
        )

    def count_callback(self, result: str) -> None:
        if _known(result, CALLBACK_RESULTS, "result"):
            self._callbacks.labels(result).inc()

    def callback_committed(self, seconds: float) -> None:
        self._callback_seconds.observe(max(0.0, seconds))

    def observed(self, via: str, n: int = 1) -> None:
        """Count observations; a listed conference is also a successful poll of it,
        so `polls_total{outcome="ok"}` and the last-poll time move in list mode too."""
        if n:
            self._observed.labels(via).inc(n)
            if via == "list":
                self._polls.labels("ok").inc(n)
                self._last_poll.set_to_current_time()

    def persisted(self, kind: str, n: int = 1) -> None:
        if n:
            self._persisted.labels(kind).inc(n)

    def dropped(self, n: int = 1) -> None:
        if n:
            self._dropped.inc(n)

    def set_writable(self, ok: bool) -> None:
        self._writable.set(1 if ok else 0)

    def swept(self, ok: bool, seconds: float) -> None:
        self._sweeps.labels("ok" if ok else "failed").inc()
        self._sweep_seconds.observe(max(seconds, 0.0))

    def observe_poll(self, outcome: str, seconds: float) -> None:
        """Record one finished poll: its outcome, how long it took, and when."""
        if _known(outcome, POLL_OUTCOMES, "poll_outcome"):
            self._polls.labels(outcome).inc()
        self._poll_duration.observe(max(seconds, 0.0))
        self._last_poll.set_to_current_time()

    def count_twilio_error(self, code: int | str) -> None:
        self._twilio_errors.labels(str(code)).inc()

    def count_transition(self, type: str) -> None:
        self._transitions.labels(type).inc()

    def count_delivery(self, notifier: str, outcome: str, seconds: float | None = None) -> None:
        """Count one attempt; the outbox's own "pending" is accepted as "retry"."""
        outcome = _DELIVERY_ALIASES.get(outcome, outcome)
        if _known(outcome, DELIVERY_OUTCOMES, "delivery_outcome"):
            self._deliveries.labels(notifier, outcome).inc()
        if seconds is not None:
            self._delivery_duration.labels(notifier).observe(max(seconds, 0.0))

    def set_watches(self, counts: Mapping[str, int]) -> None:
        """Replace the per-status watch counts; a status no longer present drops to 0."""
        for status in self._known_watch_statuses - counts.keys():
            self._watches.labels(status).set(0)
        for status, count in counts.items():
            self._watches.labels(status).set(count)
        self._known_watch_statuses.update(counts)

    def set_outbox(self, backlog: int, oldest_age_s: float | None) -> None:
        self._backlog.set(backlog)
        self._oldest_age.set(max(oldest_age_s, 0.0) if oldest_age_s is not None else 0.0)

    def config_reloaded(self, ok: bool) -> None:
        self._reloads.labels("success" if ok else "failure").inc()
        self._reload_ok.set(1 if ok else 0)

    def snapshots_written(self, n: int = 1) -> None:
        self._snapshots.inc(n)

    def set_refresher(self, fn: Callable[[], None] | None) -> None:
        """Register a callback run before each render, to refresh gauges lazily."""
        self._refresher = fn

    def render(self) -> bytes:
        """The Prometheus text exposition, after running the refresher if any."""
        with self._render_lock:  # concurrent scrapes must not run the refresher twice at once
            if self._refresher is not None:
                try:
                    self._refresher()
                except Exception as exc:
                    # Stale gauges beat a failed scrape: the counters still matter.
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    logger.warning(
                        "gauges not refreshed, serving the last values: %s",
                        first[:300],
                        extra={"event": "metrics.refresh_failed"},
                    )
                    logger.debug("metrics refresh traceback", exc_info=True)
            return generate_latest(self.registry)
