"""Delivers outbox rows to notifiers, outside any database transaction.

Each tick claims due rows per notifier and hands them to a worker; a notifier
with work still in flight is skipped, so one slow or dead receiver only ever
delays itself. Outcomes follow a growing retry schedule for at least a day
(`Retry-After` honoured), then the row is dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from monitor.db.outbox import AttemptOutcome, Claimed, Outbox
from monitor.notify.base import DeliveryError, Message, Notifier

log = logging.getLogger("monitor.dispatch")

RETRY_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
MAX_RETRY_AFTER_S = 6 * 3600.0


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
        max_workers: int = 8,
        on_outcome: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_s = lease_s
        self.batch_size = batch_size
        self.give_up_after_s = give_up_after_s
        self.retry_delays_s = tuple(retry_delays_s)
        self.on_outcome = on_outcome
        self._notifiers = dict(notifiers)
        self._lock = threading.Lock()
        self._busy: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="deliver")

    def set_notifiers(self, notifiers: Mapping[str, Notifier]) -> None:
        """Swap notifiers (config reload); work in flight finishes with the old objects."""
        with self._lock:
            old, self._notifiers = self._notifiers, dict(notifiers)
        for name, notifier in old.items():
            if notifiers.get(name) is not notifier and name not in self._busy:
                notifier.close()

    def tick(self, now: datetime | None = None) -> int:
        """Claim due rows for every idle notifier and start delivering them."""
        now = now or utcnow()
        disabled = self.outbox.disabled_notifiers()
        started = 0
        with self._lock:
            notifiers = dict(self._notifiers)
        for name, notifier in notifiers.items():
            if name in disabled or self._is_busy(name):
                continue
            rows = self.outbox.claim(name, now, self.batch_size, self.owner, self.lease_s)
            if rows:
                with self._lock:
                    self._busy[name] = self._pool.submit(self._deliver_rows, notifier, rows)
                started += len(rows)
        return started

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait for work in flight; True if all of it finished."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for future in list(self._busy.values()):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future.result(timeout=remaining)
            except TimeoutError:
                return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self.drain(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for notifier in self._notifiers.values():
            notifier.close()

    def _is_busy(self, name: str) -> bool:
        future = self._busy.get(name)
        return future is not None and not future.done()

    def _deliver_rows(self, notifier: Notifier, rows: list[Claimed]) -> None:
        for index, row in enumerate(rows):
            keep_going = self._deliver_one(notifier, row)
            if not keep_going:
                # The receiver is failing: leave the rest for their next due time.
                self.outbox.release([r.id for r in rows[index + 1 :]], self.owner)
                return

    def _deliver_one(self, notifier: Notifier, row: Claimed) -> bool:
        started = time.monotonic()
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
            outcome = AttemptOutcome("delivered", now, duration_ms, code)
        else:
            outcome = next_outcome(
                row, error, now, duration_ms, self.retry_delays_s, self.give_up_after_s
            )
        if not self.outbox.finish(row.id, self.owner, outcome):
            log.warning("lease on delivery %s lost; outcome not recorded", row.id, extra=extra)
        self._report(row, outcome, error, extra)
        if error is not None and error.disable:
            self._disable(row.notifier, error, now)
        return error is None or error.permanent and not error.disable

    def _report(
        self, row: Claimed, outcome: AttemptOutcome, error: DeliveryError | None, extra: dict
    ) -> None:
        if self.on_outcome:
            self.on_outcome(row.notifier, outcome.status, outcome.duration_ms / 1000)
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
        reason = f"receiver answered 410 Gone: {error.message}"
        self.outbox.disable_notifier(name, reason, now)
        log.error(
            "notifier %s disabled: %s; `conference-monitor deliveries retry ID` re-enables it",
            name,
            reason,
            extra={"event": "notifier.disabled", "notifier": name},
        )
