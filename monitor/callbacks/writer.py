"""Group commit: one thread records queued callbacks, many to a transaction.

Each callback is decided against its watch as read inside the transaction,
then written by the store's compare-and-set (`Store.write_change`), the same
path polls take: snapshot, events and outbox rows together. The request
threads are answered only after the commit; a database failure answers every
callback of the group 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from monitor.callbacks.decide import STALE, decide
from monitor.callbacks.intake import UNAVAILABLE, Intake, Pending
from monitor.db.store import BatchResult, Store
from monitor.metrics import Metrics
from monitor.recorder import Recorder

log = logging.getLogger("monitor.callbacks")

ACCEPTED = "accepted"
UNWATCHED = "unwatched"
MAX_GROUP = 500
DEADLOCK_RETRIES = 3
# PostgreSQL's deadlock_detected and serialization_failure: the transaction may simply rerun.
_RETRYABLE_SQLSTATES = ("40P01", "40001")
IDLE_WAIT_S = 0.2  # how often an idle writer checks for stop()


class CallbackWriter:
    def __init__(
        self,
        store: Store,
        recorder: Callable[[], Recorder],
        intake: Intake,
        *,
        watch_unknown: bool = False,
        metrics: Metrics | None = None,
        max_group: int = MAX_GROUP,
    ) -> None:
        self.store = store
        self.recorder = recorder  # read per group: a reload may replace recipients
        self.intake = intake
        self.watch_unknown = watch_unknown
        self.metrics = metrics or Metrics(process_metrics=False)
        self.max_group = max_group
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor-callbacks", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the group in hand, then answer what is still queued 503."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for item in self.intake.close():
            self._answer(item, UNAVAILABLE)

    def _run(self) -> None:
        while not self._stop.is_set():
            group = self.intake.take(self.max_group, IDLE_WAIT_S)
            if group:
                self.write_group(group)

    def write_group(self, group: list[Pending]) -> list[str]:
        """Record a group in one transaction and answer each callback."""
        recorder = self.recorder()
        # Rows are locked in SID order (arrival order within a conference), and a
        # deadlock with a concurrent poll's transaction is retried: PostgreSQL
        # aborts one side, and nothing of ours was written.
        ordered = sorted(group, key=lambda item: item.form.conference_sid)
        try:
            for attempt in range(1, DEADLOCK_RETRIES + 1):
                result = BatchResult()
                now = datetime.now(UTC)
                try:
                    with self.store.writing() as conn:
                        by_item = {
                            id(item): self._one(conn, item, now, recorder, result)
                            for item in ordered
                        }
                    break
                except DBAPIError as exc:
                    if attempt == DEADLOCK_RETRIES or not _retryable(exc):
                        raise
            outcomes = [by_item[id(item)] for item in group]
        except Exception as exc:
            log.error(
                "recording %d status callbacks failed: %s",
                len(group),
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                extra={"event": "callbacks.write_failed"},
            )
            outcomes = [UNAVAILABLE] * len(group)
        else:
            recorder.published(result)
        for item, outcome in zip(group, outcomes, strict=True):
            self._answer(item, outcome)
        return outcomes

    def _one(
        self,
        conn: Connection,
        item: Pending,
        now: datetime,
        recorder: Recorder,
        result: BatchResult,
    ) -> str:
        form = item.form
        watch = self.store.lock_watch(conn, form.conference_sid)
        if watch is None:
            if not self.watch_unknown:
                return UNWATCHED
            self.store.insert_watch(conn, form.conference_sid, form.account_sid, now)
            watch = self.store.lock_watch(conn, form.conference_sid)
            assert watch is not None
        for _attempt in range(2):
            decision = decide(watch, form, item.received_at, recorder.recipients)
            if isinstance(decision, str):
                return decision
            if self.store.write_change(conn, decision, now, result):
                return ACCEPTED
            # Lost the compare-and-set to a concurrent observer: look again, once.
            again = self.store.lock_watch(conn, form.conference_sid)
            if again is None:
                return UNWATCHED
            watch = again
        return STALE

    def _answer(self, item: Pending, outcome: str) -> None:
        self.metrics.count_callback(outcome)
        if outcome != UNAVAILABLE:
            self.metrics.callback_committed(time.monotonic() - item.received_mono)
        item.finish(outcome)


def _retryable(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES
