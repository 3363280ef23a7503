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

import heapq
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from monitor.db.outbox import AttemptOutcome, Claimed, NotifierStatus, Outbox
from monitor.notify.base import DeliveryError, Message, Notifier
from monitor.notify.lane import Lane, Queued
from monitor.notify.recorder import DEFAULT_INTERVAL_S, Recorder
from monitor.notify.retry import (
    DEFAULT_BREAKER_COOLDOWN_S,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_BREAKER_WINDOW_S,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRY_AFTER_S,
    RETRY_DELAYS_S,
    DeliveryPolicy,
    counts_against_breaker,
    next_outcome,
    notifier_pause_s,
)

__all__ = ["RETRY_DELAYS_S", "Dispatcher", "NotifierHealth", "next_outcome", "utcnow"]

log = logging.getLogger("monitor.dispatch")

# What one attempt may cost beyond the notifier's own timeout: recording its outcome.
ATTEMPT_MARGIN_S = 2.0
DEFAULT_ATTEMPT_S = 10.0  # for notifiers without a `timeout_s` (the log notifier)
_OWNER_MAX_CHARS = 64  # deliveries.lease_owner
_WAIT_STEP_S = 0.005
WAKE_HORIZON_S = 300.0  # later retries are left to the dispatch tick
WAKE_SLACK_S = 0.01  # past the due time, so the row's `next_attempt_at <= now` holds
WAKE_GRID_S = 0.05


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NotifierHealth:
    """What /metrics shows of one notifier: its circuit, pause and thresholds."""

    name: str
    state: str  # ok | paused | open | probing | disabled
    consecutive_failures: int
    policy: DeliveryPolicy
    until: datetime | None = None
    reason: str | None = None


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
            for lane in self._all_lanes():
                lane.wakes.clear()
                if lane.alarm is not None:
                    lane.alarm.cancel()
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
        return [_health(lane, states.get(lane.name), now) for lane in lanes]

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
        """Claim for `lane` again in `after_s` (a retry or a pause ending), not at a tick.

        The dispatch tick would do it too, up to an interval late; within the horizon a
        timer is cheap and keeps `retry_delays` and `Retry-After` exact.
        """
        if after_s > WAKE_HORIZON_S or self._stopping.is_set():
            return
        # On a coarse grid, so a burst of retries shares one wake-up (and one claim).
        due = time.monotonic() + max(after_s, 0.0) + WAKE_SLACK_S
        at = math.ceil(due / WAKE_GRID_S) * WAKE_GRID_S
        with self._lock:
            if at not in lane.wakes:
                heapq.heappush(lane.wakes, at)
                self._arm(lane)

    def _arm(self, lane: Lane) -> None:
        """One timer per lane, for its earliest wake-up (caller holds the lock)."""
        if not lane.wakes:
            return
        at = lane.wakes[0]
        if lane.alarm is not None and lane.alarm_at <= at:
            return
        if lane.alarm is not None:
            lane.alarm.cancel()
        lane.alarm = threading.Timer(max(0.0, at - time.monotonic()), self._alarm, args=(lane,))
        lane.alarm.daemon = True
        lane.alarm_at = at
        lane.alarm.start()

    def _alarm(self, lane: Lane) -> None:
        with self._lock:
            lane.alarm = None
            now = time.monotonic()
            while lane.wakes and lane.wakes[0] <= now + WAKE_GRID_S:
                heapq.heappop(lane.wakes)
            self._arm(lane)
        if self._stopping.is_set() or lane.retired:
            return
        try:
            self.tick_lane(lane.name)
        except Exception as exc:  # the next tick tries again
            log.debug("wake-up claim for %s failed: %s", lane.name, _first_line(exc))

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
                log.warning("claiming more for %s failed: %s", lane.name, _first_line(exc))
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
        self._report(lane.name, row, outcome, error)
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

    # -- the notifier's health -----------------------------------------------------------

    def _judge(self, lane: Lane, error: DeliveryError | None, now: datetime) -> None:
        """What one outcome says about the receiver as a whole."""
        if error is None or (error.permanent and not error.disable):
            # An answer, even a refusal: the receiver is there.
            with self._lock:
                lane.consecutive_failures = 0
                probing, lane.probing = lane.probing, False
                lane.circuit_open = False
            if probing:
                self.outbox.close_circuit(lane.name, now)
                log.info(
                    "circuit of notifier %s closed: the probe went through",
                    lane.name,
                    extra={"event": "notifier.circuit_closed", "notifier": lane.name},
                )
            return
        if error.disable:
            self._disable(lane, error, now)
            return
        pause_s = notifier_pause_s(error, lane.policy.max_retry_after_s)
        if pause_s is not None:
            self._pause(lane, pause_s, error, now)
        elif counts_against_breaker(error):
            self._count_failure(lane, error, now)

    def _pause(self, lane: Lane, pause_s: float, error: DeliveryError, now: datetime) -> None:
        reason = f"HTTP {error.status_code} with Retry-After {pause_s:g}s"
        with self._lock:
            queued = lane.hold(pause_s, reason)
            probing, lane.probing = lane.probing, False
        self._release(queued)
        self._wake(lane, pause_s)
        until = now + timedelta(seconds=pause_s)
        if probing:  # the circuit stays open, for as long as the receiver asked
            self.outbox.open_circuit(lane.name, until, reason, lane.consecutive_failures, now)
        else:
            self.outbox.pause_notifier(lane.name, until, reason, now)
        log.warning(
            "notifier %s paused until %s: its receiver answered %s",
            lane.name,
            until.isoformat(timespec="seconds"),
            reason,
            extra={"event": "notifier.paused", "notifier": lane.name},
        )

    def _count_failure(self, lane: Lane, error: DeliveryError, now: datetime) -> None:
        policy = lane.policy
        with self._lock:
            lane.consecutive_failures += 1
            failures = lane.consecutive_failures
            if failures == 1:
                lane.streak_since = time.monotonic()
            lasted_s = time.monotonic() - lane.streak_since
            reopen = lane.probing
            trip = reopen or (
                policy.breaker_threshold > 0
                and failures >= policy.breaker_threshold
                and lasted_s >= policy.breaker_window_s
                and not lane.circuit_open
            )
            if not trip:
                return
            lane.probing, lane.circuit_open = False, True
            queued = lane.hold(policy.breaker_cooldown_s, "circuit open")
        self._release(queued)
        self._wake(lane, policy.breaker_cooldown_s)
        until = now + timedelta(seconds=policy.breaker_cooldown_s)
        what = "the probe failed" if reopen else f"{failures} consecutive failures"
        reason = f"circuit open: {what}; last: {error.message}"
        self.outbox.open_circuit(lane.name, until, reason, failures, now)
        log.error(
            "notifier %s: %s; circuit open, one probe after %s",
            lane.name,
            what,
            until.isoformat(timespec="seconds"),
            extra={"event": "notifier.circuit_open", "notifier": lane.name},
        )

    def _disable(self, lane: Lane, error: DeliveryError, now: datetime) -> None:
        reason = error.message  # "POST <url>: HTTP 410 Gone: disabling this notifier..."
        with self._lock:
            queued = lane.take_queue()
            self._reported_disabled.add(lane.name)
        self._release(queued)
        self.outbox.disable_notifier(lane.name, reason, now)
        log.error(
            "notifier %s disabled, its deliveries wait: %s; "
            "`conference-monitor deliveries retry ID` re-enables it",
            lane.name,
            reason,
            extra={"event": "notifier.disabled", "notifier": lane.name},
        )

    def _publish(self, lane: Lane, state: NotifierStatus | None, now: datetime) -> None:
        if self.on_health is not None:
            self.on_health(_health(lane, state, now))
        if state is not None and state.circuit is None and lane.circuit_open:
            with self._lock:  # closed elsewhere (another instance's probe, or an operator)
                lane.circuit_open, lane.consecutive_failures = False, 0
                lane.held_until = 0.0

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

    def _report(
        self, name: str, row: Claimed, outcome: AttemptOutcome, error: DeliveryError | None
    ) -> None:
        event_id = row.event_id
        extra = {
            "event_id": event_id,
            "notifier": name,
            "sid": row.conference_sid,
            "event": f"delivery.{outcome.status}",
        }
        if self.on_outcome:
            counted = "disabled" if error is not None and error.disable else outcome.status
            self.on_outcome(name, counted, outcome.duration_ms / 1000)
        if error is None:
            log.debug("delivered %s to %s", event_id, name, extra=extra)
        elif outcome.status == "pending":
            log.warning(
                "delivery of %s to %s failed (%s); retry at %s",
                event_id,
                name,
                error.message,
                outcome.next_attempt_at.isoformat() if outcome.next_attempt_at else "?",
                extra=extra,
            )
        else:
            log.error(
                "delivery of %s to %s is %s: %s",
                event_id,
                name,
                outcome.status,
                error.message,
                extra=extra,
            )

    def _report_disabled(self, states: Mapping[str, NotifierStatus]) -> None:
        """Say once per process that a configured notifier is off (e.g. after a restart)."""
        disabled = {n: s.disabled_reason or "" for n, s in states.items() if s.disabled_at}
        with self._lock:
            names = set(self._lanes) & set(disabled)
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


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _health(lane: Lane, state: NotifierStatus | None, now: datetime) -> NotifierHealth:
    failures, policy = lane.consecutive_failures, lane.policy
    if state is None:
        return NotifierHealth(lane.name, "ok", failures, policy)
    if state.disabled_at is not None:
        return NotifierHealth(lane.name, "disabled", failures, policy, None, state.disabled_reason)
    if state.circuit is not None:
        circuit = "probing" if state.circuit == "probing" else "open"
        return NotifierHealth(
            lane.name, circuit, failures, policy, state.paused_until, state.pause_reason
        )
    if state.paused_until is not None and state.paused_until > now:
        return NotifierHealth(
            lane.name, "paused", failures, policy, state.paused_until, state.pause_reason
        )
    return NotifierHealth(lane.name, "ok", failures, policy)
