"""Delivers outbox rows to notifiers, outside any database transaction.

Each notifier has its own lane: rows claimed with a lease, sent by up to
`concurrency` worker threads, outcomes written in batches (`recorder.py`). Each row
follows its own retry schedule, so a failed event never delays another; a claim
never holds two rows of one conference, so `ended` waits for its `started`. A lane
is held back only when its receiver asks (429/503 with `Retry-After`) or its circuit
opens after consecutive failures lasting a while; both are recorded in `notifier_state`, so every
instance on the database respects them, and one probe (taken atomically in the
database) decides when the circuit closes. The consecutive-failure count itself is
per process. One slow or dead receiver only ever delays its own lane.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from monitor.db.outbox import AttemptOutcome, NotifierStatus, Outbox
from monitor.notify.alarms import Alarms
from monitor.notify.base import DeliveryError, Message, Notifier
from monitor.notify.health import NotifierHealth, health_of
from monitor.notify.lane import Lane, Queued
from monitor.notify.recorder import DEFAULT_INTERVAL_S, Recorder
from monitor.notify.reporting import first_line, report_disabled, report_outcome
from monitor.notify.retry import (
    DEFAULT_BREAKER_COOLDOWN_S,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_BREAKER_WINDOW_S,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRY_AFTER_S,
    RETRY_DELAYS_S,
    DeliveryPolicy,
    next_outcome,
)
from monitor.notify.verdicts import Verdicts

__all__ = ["RETRY_DELAYS_S", "Dispatcher", "NotifierHealth", "next_outcome", "utcnow"]

log = logging.getLogger("monitor.dispatch")

# What one attempt may cost beyond the notifier's own timeout: recording its outcome.
ATTEMPT_MARGIN_S = 2.0
DEFAULT_ATTEMPT_S = 10.0  # for notifiers without a `timeout_s` (the log notifier)
_OWNER_MAX_CHARS = 64  # deliveries.lease_owner
_WAIT_STEP_S = 0.005


def utcnow() -> datetime:
    return datetime.now(UTC)


def _owner_id(dispatcher: object) -> str:
    suffix = f":{os.getpid()}:{id(dispatcher):x}"
    return socket.gethostname()[: _OWNER_MAX_CHARS - len(suffix)] + suffix


class Dispatcher(Verdicts):
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
        concurrency: int = DEFAULT_CONCURRENCY,
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        breaker_window_s: float = DEFAULT_BREAKER_WINDOW_S,
        policy_for: Callable[[str], DeliveryPolicy] | None = None,
        on_health: Callable[[NotifierHealth], None] | None = None,
        record_interval_s: float = DEFAULT_INTERVAL_S,
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
        self.on_health = on_health
        self.attempt_margin_s = attempt_margin_s
        default = DeliveryPolicy(
            concurrency, breaker_threshold, breaker_cooldown_s, max_retry_after_s, breaker_window_s
        )
        self.policy_for = policy_for or (lambda _name: default)
        self._lock = threading.Lock()
        self._lanes: dict[str, Lane] = {}
        self._retired: list[Lane] = []  # replaced while busy; closed when idle
        self._reported_disabled: set[str] = set()
        self._stopping = threading.Event()
        self._recorder = Recorder(outbox, self.owner, self._after_recorded, record_interval_s)
        self._alarms = Alarms(self._ring)
        self.set_notifiers(notifiers)

    # -- the daemon's interface ---------------------------------------------------------

    def set_notifiers(self, notifiers: Mapping[str, Notifier]) -> None:
        """Swap notifiers (config reload); work in flight finishes with the old objects."""
        with self._lock:
            old, self._lanes = self._lanes, {}
            for name, notifier in notifiers.items():
                lane = old.pop(name, None)
                if lane is None or lane.notifier is not notifier:
                    if lane is not None:
                        old[name] = lane
                    lane = Lane(name, notifier, self.policy_for(name))
                self._lanes[name] = lane
            for lane in old.values():
                lane.retired = True
                self._release(lane.take_queue())
            self._retired += old.values()
        self._close_retired()

    def tick(self, now: datetime | None = None) -> int:
        """Claim due rows for every idle notifier and start delivering them; rows claimed."""
        if self._stopping.is_set():
            return 0
        now = now or utcnow()
        states = self.outbox.notifier_states()
        self._report_disabled(states)
        with self._lock:
            lanes = list(self._lanes.values())
        claimed = 0
        for lane in lanes:
            lane.policy = self.policy_for(lane.name)
            state = states.get(lane.name)
            self._publish(lane, state, now)
            if state is not None and state.disabled_at is not None:
                continue
            if state is not None and state.circuit is not None:
                claimed += self._probe(lane, state, now)
            elif state is None or not state.holds(now):
                claimed += self._fill(lane, now)
        return claimed

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the rows in flight and their outcomes' recording; True if all finished."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._idle():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_WAIT_STEP_S)
        return True

    def drain(self, timeout_s: float | None = None) -> bool:
        """Stop: claim nothing more, start no new attempt, and wait for those in flight.

        Claimed rows not yet attempted are released at once, so another instance (or
        the next run) takes them without waiting for the lease. True if all finished.
        """
        self._stopping.set()
        with self._lock:
            queued = [q for lane in self._all_lanes() for q in lane.take_queue()]
        self._alarms.stop()
        self._release(queued)
        return self.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain (without waiting again if `drain` already had its time) and close notifiers.

        A notifier still sending when the time is up is closed by its worker when the
        attempt ends; workers are daemon threads, so they never hold the process up.
        """
        if not self._stopping.is_set():
            self.drain(timeout_s)
        with self._lock:
            for lane in self._lanes.values():
                lane.retired = True
            self._retired += self._lanes.values()
            self._lanes = {}
        self._recorder.close(timeout_s)
        self._close_retired()

    def health(self) -> list[NotifierHealth]:
        """Each configured notifier's state as this instance sees it (reads the database)."""
        states, now = self.outbox.notifier_states(), utcnow()
        with self._lock:
            lanes = list(self._lanes.values())
        return [health_of(lane, states.get(lane.name), now) for lane in lanes]

    # -- claiming ---------------------------------------------------------------------

    def _fill(self, lane: Lane, now: datetime, *, limit: int | None = None) -> int:
        """Claim into an idle lane that may send; the number of rows claimed."""
        with self._lock:
            if not self._may_claim(lane) or not lane.idle():
                return 0
            lane.refilling = True
        try:
            return self._claim_into(lane, now, limit or self.batch_size, probe=lane.probing)
        finally:
            with self._lock:
                lane.refilling = False

    def _claim_into(self, lane: Lane, now: datetime, limit: int, *, probe: bool) -> int:
        lease_s = self._lease_for(lane.notifier)
        lease_end = time.monotonic() + lease_s
        rows = self.outbox.claim(lane.name, now, limit, self.owner, lease_s, probe=probe)
        if rows:
            with self._lock:
                lane.queue.extend(Queued(row, lease_end) for row in rows)
                self._spawn(lane)
        return len(rows)

    def _probe(self, lane: Lane, state: NotifierStatus, now: datetime) -> int:
        """An open circuit whose wait is over: one request, by one instance, decides."""
        if state.paused_until is not None and state.paused_until > now:
            return 0
        with self._lock:
            if not self._may_claim(lane) or not lane.idle():
                return 0
        if not self.outbox.acquire_probe(lane.name, now, self._lease_for(lane.notifier)):
            return 0
        with self._lock:
            lane.probing = True
        claimed = self._fill(lane, now, limit=1)
        if not claimed:  # nothing due to probe with: let the next tick try again
            with self._lock:
                lane.probing = False
            self.outbox.release_probe(lane.name, now)
        else:
            log.info(
                "circuit of notifier %s half-open: probing with one delivery",
                lane.name,
                extra={"event": "notifier.circuit_probing", "notifier": lane.name},
            )
        return claimed

    def _wake(self, lane: Lane, after_s: float) -> None:
        """Claim for `lane` again in `after_s` (a retry or a pause ending), not at a tick."""
        if not self._stopping.is_set():
            self._alarms.wake(lane.name, after_s)

    def _ring(self, name: str) -> None:
        if self._stopping.is_set():
            return
        try:
            self.tick_lane(name)
        except Exception as exc:  # the next tick tries again
            log.debug("wake-up claim for %s failed: %s", name, first_line(exc))

    def tick_lane(self, name: str) -> int:
        """`tick()` for one notifier: when a retry or a pause of it is due."""
        now = utcnow()
        with self._lock:
            lane = self._lanes.get(name)
        if lane is None:
            return 0
        state = self.outbox.notifier_states().get(name)
        if state is not None and state.disabled_at is not None:
            return 0
        if state is not None and state.circuit is not None:
            return self._probe(lane, state, now)
        if state is not None and state.holds(now):
            self._wake(lane, ((state.paused_until or now) - now).total_seconds())
            return 0
        return self._fill(lane, now)

    def _may_claim(self, lane: Lane) -> bool:
        return not (self._stopping.is_set() or lane.retired or lane.held())

    def _after_recorded(self, notifiers: set[str]) -> None:
        """Outcomes written: rows they held back (a conference's next event) may be due."""
        if self._stopping.is_set():
            return
        with self._lock:
            lanes = [self._lanes[n] for n in notifiers if n in self._lanes]
        now = utcnow()
        for lane in lanes:
            if not lane.probing and not lane.circuit_open:
                try:
                    self._fill(lane, now)
                except Exception as exc:  # the next tick tries again
                    log.debug("claim after recording failed: %s", exc)

    # -- workers ----------------------------------------------------------------------

    def _spawn(self, lane: Lane) -> None:
        """Start workers for the queued rows (caller holds the lock)."""
        for _ in range(lane.wanted_workers()):
            lane.workers += 1
            threading.Thread(
                target=self._work, args=(lane,), name=f"deliver-{lane.name}", daemon=True
            ).start()

    def _work(self, lane: Lane) -> None:
        try:
            while (item := self._next(lane)) is not None:
                try:
                    self._attempt(lane, item)
                finally:
                    with self._lock:
                        lane.in_flight.remove(item)
        except Exception as exc:  # e.g. database down: unrecorded rows are retried after the lease
            log.error(
                "delivering to %s stopped: %s: %s",
                lane.name,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                extra={"event": "dispatch.failed", "notifier": lane.name},
            )
        finally:
            with self._lock:
                lane.workers -= 1
            self._close_retired()

    def _next(self, lane: Lane) -> Queued | None:
        """The next row to attempt, claiming more as the queue runs low; None to stop.

        The claim for more starts while a few rows are still queued, so the other
        workers keep sending while it runs.
        """
        while True:
            with self._lock:
                may_refill = self._may_claim(lane) and not (
                    lane.refilling or lane.probing or lane.circuit_open
                )
                if self._may_claim(lane) and lane.queue:
                    item = lane.queue.popleft()
                    lane.in_flight.append(item)
                    prefetch = may_refill and len(lane.queue) < lane.policy.concurrency
                    lane.refilling = lane.refilling or prefetch
                    break
                stale = [] if may_refill else lane.take_queue()
                lane.refilling = lane.refilling or may_refill
            if not may_refill:
                self._release(stale)
                return None
            if not self._refill(lane):
                return None
        if prefetch:
            try:
                self._refill(lane)
            except Exception as exc:  # the queued rows still go; the next tick claims again
                log.warning("claiming more for %s failed: %s", lane.name, first_line(exc))
        return item

    def _refill(self, lane: Lane) -> bool:
        try:
            return self._claim_into(lane, utcnow(), self.batch_size, probe=False) > 0
        finally:
            with self._lock:
                lane.refilling = False

    def _attempt(self, lane: Lane, item: Queued) -> None:
        if time.monotonic() + self._attempt_budget(lane.notifier) > item.lease_end:
            self._renew(lane)  # a long queue: renew before the lease can lapse mid-attempt
        if item.lost:
            return  # our lease lapsed and another dispatcher took the row
        row = item.row
        attempted_at, started = utcnow(), time.monotonic()
        try:
            code = lane.notifier.send(Message(row.event_id, row.event_type, row.body))
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
                row,
                error,
                now,
                duration_ms,
                self.retry_delays_s,
                self.give_up_after_s,
                lane.policy.max_retry_after_s,
            )
            # The log says when the attempt began; the retry counts from when it ended.
            outcome = replace(outcome, attempted_at=attempted_at)
        self._recorder.add(lane.name, row, outcome)
        report_outcome(lane.name, row, outcome, error, self.on_outcome)
        self._judge(lane, error, now)
        if outcome.next_attempt_at is not None:
            self._wake(lane, (outcome.next_attempt_at - utcnow()).total_seconds())

    def _renew(self, lane: Lane) -> None:
        with self._lock:
            items = list(lane.in_flight) + list(lane.queue)
        lease_s = self._lease_for(lane.notifier)
        lease_end = time.monotonic() + lease_s
        kept = self.outbox.extend([q.row.id for q in items], self.owner, utcnow(), lease_s)
        for queued in items:
            queued.lease_end = lease_end
            queued.lost = queued.row.id not in kept

    # -- plumbing -----------------------------------------------------------------------

    def _release(self, queued: Sequence[Queued]) -> None:
        ids = [q.row.id for q in queued if not q.lost]
        if ids:
            self.outbox.release(ids, self.owner)

    def _idle(self) -> bool:
        with self._lock:
            busy = any(not lane.idle() for lane in self._all_lanes())
        return not busy and self._recorder.idle()

    def _all_lanes(self) -> list[Lane]:
        return [*self._lanes.values(), *self._retired]

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
            idle = [lane for lane in self._retired if lane.idle()]
            self._retired = [lane for lane in self._retired if not lane.idle()]
        for lane in idle:
            lane.notifier.close()

    def _report_disabled(self, states: Mapping[str, NotifierStatus]) -> None:
        """Say once per process that a configured notifier is off (e.g. after a restart)."""
        disabled = {n: s.disabled_reason or "" for n, s in states.items() if s.disabled_at}
        with self._lock:
            names = set(self._lanes) & set(disabled)
            new = names - self._reported_disabled
            self._reported_disabled = (self._reported_disabled & set(disabled)) | names
        for name in sorted(new):
            report_disabled(name, disabled[name], just_now=False)
