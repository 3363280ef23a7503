"""Delivers outbox rows to notifiers, outside any database transaction.

Each tick claims due rows per notifier and hands them to that notifier's own
worker thread; a notifier with work still in flight is skipped, so one slow or
dead receiver only ever delays itself. Outcomes follow a growing retry schedule
for at least a day (`Retry-After` honoured), then the row is dead. A receiver
that fails is left alone for a short pause (or as long as its `Retry-After`
asks) instead of being hit again at the next tick.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.db.outbox import AttemptOutcome, Claimed, Outbox
from monitor.notify.base import DeliveryError, Message, Notifier

log = logging.getLogger("monitor.dispatch")

RETRY_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
MAX_RETRY_AFTER_S = 6 * 3600.0
# What one attempt may cost beyond the notifier's own timeout: recording its outcome.
ATTEMPT_MARGIN_S = 2.0
DEFAULT_ATTEMPT_S = 10.0  # for notifiers without a `timeout_s` (the log notifier)
_OWNER_MAX_CHARS = 64  # deliveries.lease_owner


def utcnow() -> datetime:
    return datetime.now(UTC)


def next_outcome(
    row: Claimed,
    error: DeliveryError,
    now: datetime,
    duration_ms: float,
    delays_s: Sequence[float],
    give_up_after_s: float,
) -> AttemptOutcome:
    """Pure: what a failed attempt turns the row into."""
    base = dict(
        attempted_at=now,
        duration_ms=duration_ms,
        status_code=error.status_code,
        error=error.message,
    )
    if error.permanent:
        return AttemptOutcome(status="failed", **base)  # type: ignore[arg-type]
    delay = delays_s[min(row.attempts, len(delays_s) - 1)]
    if error.retry_after_s is not None:
        delay = max(delay, min(error.retry_after_s, MAX_RETRY_AFTER_S))
    retry_at = now + timedelta(seconds=delay)
    if (retry_at - row.created_at).total_seconds() > give_up_after_s:
        return AttemptOutcome(status="dead", **base)  # type: ignore[arg-type]
    return AttemptOutcome(status="pending", next_attempt_at=retry_at, **base)  # type: ignore[arg-type]


def pause_after(error: DeliveryError, delays_s: Sequence[float]) -> float:
    """Pure: how long to leave a notifier alone after a failure that may pass."""
    if error.retry_after_s is not None:
        return min(max(error.retry_after_s, delays_s[0]), MAX_RETRY_AFTER_S)
    return delays_s[0]


def _owner_id(dispatcher: object) -> str:
    suffix = f":{os.getpid()}:{id(dispatcher):x}"
    return socket.gethostname()[: _OWNER_MAX_CHARS - len(suffix)] + suffix


class Dispatcher:
    def __init__(
        self,
        outbox: Outbox,
        notifiers: Mapping[str, Notifier],
        *,
        lease_s: float = 60.0,
        batch_size: int = 100,
        give_up_after_s: float = 25 * 3600.0,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        on_outcome: Callable[[str, str, float], None] | None = None,
        attempt_margin_s: float = ATTEMPT_MARGIN_S,
    ) -> None:
        if not retry_delays_s:
            raise ValueError("retry_delays_s must not be empty")
        self.outbox = outbox
        self.owner = _owner_id(self)
        self.lease_s = lease_s
        self.batch_size = batch_size
        self.give_up_after_s = give_up_after_s
        self.retry_delays_s = tuple(retry_delays_s)
        self.on_outcome = on_outcome
        self.attempt_margin_s = attempt_margin_s
        self._notifiers = dict(notifiers)
        self._lock = threading.Lock()
        # One worker at most per notifier name, with the notifier object it is using.
        self._workers: dict[str, tuple[threading.Thread, Notifier]] = {}
        self._paused_until: dict[str, float] = {}  # monotonic
        self._retired: list[Notifier] = []  # replaced while busy; closed when idle
        self._reported_disabled: set[str] = set()
        self._stopping = threading.Event()

    def set_notifiers(self, notifiers: Mapping[str, Notifier]) -> None:
        """Swap notifiers (config reload); work in flight finishes with the old objects."""
        with self._lock:
            old, self._notifiers = self._notifiers, dict(notifiers)
            self._retired += [n for name, n in old.items() if notifiers.get(name) is not n]
        self._close_retired()

    def tick(self, now: datetime | None = None) -> int:
        """Claim due rows for every idle notifier and start delivering them; rows started."""
        if self._stopping.is_set():
            return 0
        now = now or utcnow()
        disabled = self.outbox.disabled_notifiers()
        self._report_disabled(disabled)
        started = 0
        with self._lock:
            notifiers = dict(self._notifiers)
        for name, notifier in notifiers.items():
            if name in disabled or self._is_busy(name) or self._is_paused(name):
                continue
            lease_s = self._lease_for(notifier)
            lease_end = time.monotonic() + lease_s
            rows = self.outbox.claim(name, now, self.batch_size, self.owner, lease_s)
            if rows:
                self._start(name, notifier, rows, lease_end)
                started += len(rows)
        return started

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the batches in flight to finish; True if all of them did."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            workers = [thread for thread, _ in self._workers.values()]
        for worker in workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                return False
        return True

    def drain(self, timeout_s: float | None = None) -> bool:
        """Stop: claim nothing more, start no new attempt, and wait for those in flight.

        Claimed rows not yet attempted are released at once, so another instance (or
        the next run) takes them without waiting for the lease. True if all finished.
        """
        self._stopping.set()
        return self.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain (without waiting again if `drain` already had its time) and close notifiers.

        A notifier still sending when the time is up is closed by its worker when the
        attempt ends; workers are daemon threads, so they never hold the process up.
        """
        if not self._stopping.is_set():
            self.drain(timeout_s)
        with self._lock:
            self._retired += list(self._notifiers.values())
            self._notifiers = {}
        self._close_retired()

    # -- workers --------------------------------------------------------------------

    def _start(self, name: str, notifier: Notifier, rows: list[Claimed], lease_end: float) -> None:
        worker = threading.Thread(
            target=self._run,
            args=(name, notifier, rows, lease_end),
            name=f"deliver-{name}",
            daemon=True,
        )
        with self._lock:
            self._workers[name] = (worker, notifier)
        worker.start()

    def _run(self, name: str, notifier: Notifier, rows: list[Claimed], lease_end: float) -> None:
        """Deliver a batch; while batches come back full and all goes well, claim the next."""
        try:
            while True:
                if not self._deliver_rows(notifier, rows, lease_end):
                    return
                if len(rows) < self.batch_size or not self._current(name, notifier):
                    return
                lease_s = self._lease_for(notifier)
                lease_end = time.monotonic() + lease_s
                rows = self.outbox.claim(name, utcnow(), self.batch_size, self.owner, lease_s)
                if not rows:
                    return
        except Exception as exc:  # e.g. database down: unrecorded rows are retried after the lease
            log.error(
                "delivering to %s stopped: %s: %s",
                name,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                extra={"event": "dispatch.failed", "notifier": name},
            )
        finally:
            with self._lock:
                entry = self._workers.get(name)
                if entry is not None and entry[0] is threading.current_thread():
                    del self._workers[name]
            self._close_retired()

    def _deliver_rows(self, notifier: Notifier, rows: list[Claimed], lease_end: float) -> bool:
        """Deliver claimed rows in order; False when the rest must wait (failing, stopping)."""
        name = notifier.name
        budget_s = self._attempt_budget(notifier)
        owned = {row.id for row in rows}
        for index, row in enumerate(rows):
            rest = [r.id for r in rows[index:] if r.id in owned]
            if not self._current(name, notifier):
                self.outbox.release(rest, self.owner)
                return False
            if time.monotonic() + budget_s > lease_end:
                # A long batch: renew the lease before it can lapse under an attempt.
                lease_s = self._lease_for(notifier)
                lease_end = time.monotonic() + lease_s
                owned = self.outbox.extend(rest, self.owner, utcnow(), lease_s)
            if row.id not in owned:
                continue  # our lease lapsed and another dispatcher took the row
            if not self._deliver_one(notifier, row):
                self.outbox.release([i for i in rest[1:] if i in owned], self.owner)
                return False
        return True

    def _deliver_one(self, notifier: Notifier, row: Claimed) -> bool:
        """One attempt, recorded; False if the receiver is failing (try the rest later)."""
        attempted_at, started = utcnow(), time.monotonic()
        extra = {"event_id": row.event_id, "notifier": row.notifier, "sid": row.conference_sid}
        try:
            code = notifier.send(Message(row.event_id, row.event_type, row.body))
            error: DeliveryError | None = None
        except DeliveryError as exc:
            code, error = exc.status_code, exc
        except Exception as exc:  # a notifier bug must not kill the dispatcher
            code, error = None, DeliveryError(f"{type(exc).__name__}: {exc}")
        now = utcnow()
        duration_ms = (time.monotonic() - started) * 1000
        if error is None:
            outcome = AttemptOutcome("delivered", attempted_at, duration_ms, code)
        else:
            outcome = next_outcome(
                row, error, now, duration_ms, self.retry_delays_s, self.give_up_after_s
            )
            # The log says when the attempt began; the retry counts from when it ended.
            outcome = replace(outcome, attempted_at=attempted_at)
        if not self.outbox.finish(row.id, self.owner, outcome):
            log.warning("lease on delivery %s lost; outcome not recorded", row.id, extra=extra)
        self._report(row, outcome, error, extra)
        if error is None:
            return True
        if error.disable:
            self._disable(row.notifier, error, now)
            return False
        if not error.permanent:
            self._pause(row.notifier, pause_after(error, self.retry_delays_s))
            return False
        return True  # this request was refused; the next one may well be accepted

    # -- state ------------------------------------------------------------------------

    def _current(self, name: str, notifier: Notifier) -> bool:
        """Still running, and `notifier` is still the one configured under `name`."""
        with self._lock:
            return not self._stopping.is_set() and self._notifiers.get(name) is notifier

    def _is_busy(self, name: str) -> bool:
        with self._lock:
            return name in self._workers

    def _is_paused(self, name: str) -> bool:
        with self._lock:
            return time.monotonic() < self._paused_until.get(name, 0.0)

    def _pause(self, name: str, seconds: float) -> None:
        with self._lock:
            self._paused_until[name] = time.monotonic() + seconds

    def _attempt_budget(self, notifier: Notifier) -> float:
        timeout_s = getattr(notifier, "timeout_s", None)
        base = timeout_s if isinstance(timeout_s, (int, float)) else DEFAULT_ATTEMPT_S
        return float(base) + self.attempt_margin_s

    def _lease_for(self, notifier: Notifier) -> float:
        """The configured lease, but never shorter than one attempt and its recording."""
        return max(self.lease_s, self._attempt_budget(notifier))

    def _close_retired(self) -> None:
        """Close replaced notifiers that no worker is using any more."""
        with self._lock:
            in_use = {id(n) for _, n in self._workers.values()}
            idle = [n for n in self._retired if id(n) not in in_use]
            self._retired = [n for n in self._retired if id(n) in in_use]
        for notifier in idle:
            notifier.close()

    # -- reporting ---------------------------------------------------------------------

    def _report(
        self, row: Claimed, outcome: AttemptOutcome, error: DeliveryError | None, extra: dict
    ) -> None:
        if self.on_outcome:
            counted = "disabled" if error is not None and error.disable else outcome.status
            self.on_outcome(row.notifier, counted, outcome.duration_ms / 1000)
        extra = {**extra, "event": f"delivery.{outcome.status}"}
        if error is None:
            log.debug("delivered %s to %s", row.event_id, row.notifier, extra=extra)
        elif outcome.status == "pending":
            log.warning(
                "delivery of %s to %s failed (%s); retry at %s",
                row.event_id,
                row.notifier,
                error.message,
                outcome.next_attempt_at.isoformat() if outcome.next_attempt_at else "?",
                extra=extra,
            )
        else:
            log.error(
                "delivery of %s to %s is %s: %s",
                row.event_id,
                row.notifier,
                outcome.status,
                error.message,
                extra=extra,
            )

    def _disable(self, name: str, error: DeliveryError, now: datetime) -> None:
        reason = error.message  # "POST <url>: HTTP 410 Gone: disabling this notifier..."
        self.outbox.disable_notifier(name, reason, now)
        with self._lock:
            self._reported_disabled.add(name)
        log.error(
            "notifier %s disabled, its deliveries wait: %s; "
            "`conference-monitor deliveries retry ID` re-enables it",
            name,
            reason,
            extra={"event": "notifier.disabled", "notifier": name},
        )

    def _report_disabled(self, disabled: Mapping[str, str]) -> None:
        """Say once per process that a configured notifier is off (e.g. after a restart)."""
        with self._lock:
            names = set(self._notifiers) & set(disabled)
            new = names - self._reported_disabled
            self._reported_disabled = (self._reported_disabled & set(disabled)) | names
        for name in sorted(new):
            log.warning(
                "notifier %s is disabled (%s); its deliveries wait. "
                "`conference-monitor deliveries retry ID` re-enables it",
                name,
                disabled[name],
                extra={"event": "notifier.disabled", "notifier": name},
            )
