"""One-by-one fetches of due watches, as a pipeline rather than in batches.

Due watches are claimed (with a lease) into a bounded window of requests in
flight; each result is recorded as soon as it arrives, a few at a time, and a
freed slot is refilled at once. A conference whose answer is slow (a Twilio
that drips bytes, a request that runs to its deadline) holds one slot and
delays only itself, never the rest of the tick.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from monitor.db.store import Batch, Store, WatchState
from monitor.domain import Conference
from monitor.ratelimit import RateLimiter
from monitor.recorder import PollReport, Recorder, outcome_name
from monitor.twilio.payloads import ConferencePage

log = logging.getLogger("monitor.poll")

WAIT_FOR_RESULT_S = 0.1  # how long to wait for the next answer before looking for due work
# Answers are gathered for up to this long (or RECORD_BATCH_MAX of them) and recorded in
# one transaction: a transaction per answer would cost more than the fetch itself.
GATHER_S = 0.05
RECORD_BATCH_MAX = 200
# With nothing due, the next claim waits for the earliest due time, but at most this
# long: watches added or handed over by other processes are picked up within it.
IDLE_ASK_S = 1.0
_OWNER_MAX_CHARS = 64


class ConferenceSource(Protocol):
    """What polling needs from Twilio (the real client satisfies it)."""

    def fetch_conference(self, sid: str, *, account_sid: str | None = None) -> Conference: ...

    def list_conference_pages(
        self, *, status: str | None = None, account_sid: str | None = None
    ) -> Iterable[ConferencePage]: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def owner_id(what: object) -> str:
    """Who holds a lease: host, process and object, short enough for the column."""
    suffix = f":{os.getpid()}:{id(what):x}"
    return socket.gethostname()[: _OWNER_MAX_CHARS - len(suffix)] + suffix


@dataclass(frozen=True)
class _Done:
    watch: WatchState
    result: Conference | Exception | None  # None: cancelled before it ran
    requested_at: datetime


class FetchPipeline:
    def __init__(
        self,
        store: Store,
        source: ConferenceSource,
        recorder: Recorder,
        *,
        concurrency: int,
        window: int,
        interval_s: float,
        jitter_s: float,
        lease_s: float,
        limiter: RateLimiter | None = None,
        on_poll: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.recorder = recorder
        self.window = window
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.lease_s = lease_s
        self.limiter = limiter or RateLimiter(0)
        self.on_poll = on_poll
        self.owner = owner_id(self)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch")
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: dict[Future[None], WatchState] = {}
        self._outstanding = 0  # submitted, answer not yet recorded (only run() changes it)
        # Nothing was due when last asked: don't ask again before this (monotonic) time.
        # Idle instances of several are most of the cost of running more than one.
        self._quiet_until = -math.inf

    def wake(self) -> None:
        """Look for due watches at the next tick (this process handed some to fetching)."""
        self._quiet_until = -math.inf

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(
        self,
        stop: threading.Event,
        *,
        fetch_mode_only: bool,
        progress: Callable[[], None] = lambda: None,
    ) -> PollReport:
        """Fetch everything due until nothing is due or in flight, or `stop` is set.

        Answers already received are recorded even when stopping; claimed
        watches whose fetch has not started are released at once.
        """
        report = PollReport()
        if time.monotonic() < self._quiet_until:
            return report
        while True:
            progress()
            if stop.is_set():
                self._cancel_queued()
            else:
                self._fill(fetch_mode_only, report)
            if self._outstanding == 0:
                if report.claimed == 0 and not stop.is_set():
                    self._quiet_until = time.monotonic() + self._idle_for(fetch_mode_only)
                return report
            done = self._collect()
            self._outstanding -= len(done)
            # A database error propagates: these answers are lost, and their watches
            # are fetched again once the lease lapses.
            self._record(done, report)

    def _fill(self, fetch_mode_only: bool, report: PollReport) -> None:
        """Claim more once half the window is free: claims come in chunks, not one by one."""
        free = self.window - self._outstanding
        if free < max(1, self.window // 2):
            return
        watches = self.store.claim_due_watches(
            utcnow(),
            free,
            self.interval_s,
            self.jitter_s,
            owner=self.owner,
            lease_s=self.lease_s,
            fetch_mode_only=fetch_mode_only,
        )
        for watch in watches:
            future = self._pool.submit(self._fetch, watch)
            with self._lock:
                self._pending[future] = watch
            future.add_done_callback(self._finished)
        self._outstanding += len(watches)
        report.claimed += len(watches)

    def _idle_for(self, fetch_mode_only: bool) -> float:
        """Seconds until the earliest due watch, at most IDLE_ASK_S."""
        due = self.store.next_due(fetch_mode_only=fetch_mode_only)
        if due is None:
            return IDLE_ASK_S
        return min(max((due - utcnow()).total_seconds(), 0.0), IDLE_ASK_S)

    def _finished(self, future: Future[None]) -> None:
        with self._lock:
            watch = self._pending.pop(future)
        if future.cancelled():
            self._done.put(_Done(watch, None, utcnow()))

    def _cancel_queued(self) -> None:
        with self._lock:
            queued = list(self._pending)
        for future in queued:
            future.cancel()  # only those not yet running; the rest finish within the deadline

    def _fetch(self, watch: WatchState) -> None:
        self.limiter.acquire()
        requested_at = utcnow()
        try:
            result: Conference | Exception = self.source.fetch_conference(
                watch.sid, account_sid=watch.account_sid
            )
        except Exception as exc:  # every failure becomes a recorded Miss, never a crash
            result = exc
        if self.on_poll:
            seconds = (utcnow() - requested_at).total_seconds()
            self.on_poll(outcome_name(result), seconds)
        self._done.put(_Done(watch, result, requested_at))

    def _collect(self) -> list[_Done]:
        """Wait briefly for one answer, then gather those that follow it for a moment."""
        try:
            first = self._done.get(timeout=WAIT_FOR_RESULT_S)
        except queue.Empty:
            return []
        done = [first]
        until = time.monotonic() + GATHER_S
        while len(done) < RECORD_BATCH_MAX and len(done) < self._outstanding:
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                done.append(self._done.get(timeout=left))
            except queue.Empty:
                break
        return done

    def _record(self, done: list[_Done], report: PollReport) -> None:
        cancelled = [d.watch.sid for d in done if d.result is None]
        if cancelled:
            self.store.release(cancelled, self.owner)
        batch = Batch(owner=self.owner)
        observed = 0
        for item in done:
            if item.result is not None:
                observed += isinstance(item.result, Conference)
                self.recorder.add_result(batch, report, item.watch, item.result, item.requested_at)
        self.recorder.metrics.observed("poll", observed)
        self.recorder.commit(batch, report)
