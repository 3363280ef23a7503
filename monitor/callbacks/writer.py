"""Group commit: one thread records queued callbacks, many to a transaction.

Each callback is decided against its watch as read (and locked) inside the
transaction, then the group is written in a few statements
(`Store.write_changes`): snapshots, the watches' compare-and-set, events and
outbox rows together, as polls write them. If any compare-and-set loses, the
transaction is rolled back and the group recorded again row by row
(`Store.write_change`, re-reading a watch once when it loses). The request
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
from sqlalchemy.exc import DBAPIError, IntegrityError

from monitor.callbacks.decide import STALE, advanced, decide
from monitor.callbacks.intake import UNAVAILABLE, Intake, Pending
from monitor.db.store import BatchResult, LostRace, Observation, Store, WatchState
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
        batched: bool = True,
    ) -> None:
        self.store = store
        self.recorder = recorder  # read per group: a reload may replace recipients
        self.intake = intake
        self.watch_unknown = watch_unknown
        self.metrics = metrics or Metrics(process_metrics=False)
        self.max_group = max_group
        self.batched = batched  # False: always row by row (the fallback path)
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
        batched = self.batched
        try:
            for attempt in range(1, DEADLOCK_RETRIES + 2):
                result = BatchResult()
                now = datetime.now(UTC)
                try:
                    with self.store.writing() as conn:
                        if batched:
                            by_item = self._batched(conn, ordered, now, recorder, result)
                        else:
                            by_item = {
                                id(item): self._one(conn, item, now, recorder, result)
                                for item in ordered
                            }
                    break
                except (LostRace, IntegrityError):
                    if not batched:
                        raise
                    batched = False  # something changed under us: row by row, each by CAS
                except DBAPIError as exc:
                    if attempt >= DEADLOCK_RETRIES or not _retryable(exc):
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

    def _batched(
        self,
        conn: Connection,
        ordered: list[Pending],
        now: datetime,
        recorder: Recorder,
        result: BatchResult,
    ) -> dict[int, str]:
        """Decide every callback against the rows read (and locked) here, then write
        the accepted ones in a few statements: the common, fast path."""
        watches = self.store.lock_watches(conn, [i.form.conference_sid for i in ordered])
        outcomes: dict[int, str] = {}
        changes = []
        for item in ordered:
            form = item.form
            watch = watches.get(form.conference_sid) or self._auto_watch(conn, item, now)
            if watch is None:
                outcomes[id(item)] = UNWATCHED
                continue
            decision = _decide(watch, item, recorder)
            if isinstance(decision, str):
                outcomes[id(item)] = decision
                watches[form.conference_sid] = watch
                continue
            changes.append(decision)
            outcomes[id(item)] = ACCEPTED
            watches[form.conference_sid] = advanced(watch, decision)
        self.store.write_changes(conn, changes, now, result)
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
        watch = self.store.lock_watch(conn, form.conference_sid) or self._auto_watch(
            conn, item, now
        )
        if watch is None:
            return UNWATCHED
        for _attempt in range(2):
            decision = _decide(watch, item, recorder)
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

    def _auto_watch(self, conn: Connection, item: Pending, now: datetime) -> WatchState | None:
        """With `watch_unknown`, watch an unwatched conference in this transaction."""
        if not self.watch_unknown:
            return None
        form = item.form
        self.store.insert_watch(conn, form.conference_sid, form.account_sid, now)
        return self.store.lock_watch(conn, form.conference_sid)

    def _answer(self, item: Pending, outcome: str) -> None:
        self.metrics.count_callback(outcome)
        if outcome != UNAVAILABLE:
            self.metrics.callback_committed(time.monotonic() - item.received_mono)
        item.finish(outcome)


def _retryable(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def _decide(watch: WatchState, item: Pending, recorder: Recorder) -> Observation | str:
    form = item.form
    return decide(
        watch,
        form,
        item.received_at,
        recorder.recipients,
        use_list=recorder.list_mode(form.account_sid),
    )
