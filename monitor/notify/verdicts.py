"""How one outcome changes a notifier's standing: pauses, the circuit breaker, disabling.

A mixin of `Dispatcher` (it uses the dispatcher's lock, outbox and lanes), kept apart
so the rules read on their own: an answer (2xx or a refusal) closes a circuit being
probed; 429/503 with `Retry-After` pauses the notifier exactly that long, everywhere;
failures in a row, lasting long enough, open the circuit; 410 disables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from monitor.db.outbox import NotifierStatus, Outbox
from monitor.notify.base import DeliveryError
from monitor.notify.health import NotifierHealth, breaker_trips, health_of
from monitor.notify.lane import Lane, Queued
from monitor.notify.reporting import report_disabled
from monitor.notify.retry import counts_against_breaker, notifier_pause_s

log = logging.getLogger("monitor.dispatch")


class Verdicts:
    outbox: Outbox
    on_health: Callable[[NotifierHealth], None] | None
    _lock: threading.Lock
    _reported_disabled: set[str]

    def _release(self, queued: Sequence[Queued]) -> None:
        raise NotImplementedError

    def _wake(self, lane: Lane, after_s: float) -> None:
        raise NotImplementedError

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
            trip = reopen or (breaker_trips(policy, failures, lasted_s) and not lane.circuit_open)
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
        report_disabled(lane.name, reason, just_now=True)

    def _publish(self, lane: Lane, state: NotifierStatus | None, now: datetime) -> None:
        if self.on_health is not None:
            self.on_health(health_of(lane, state, now))
        if state is not None and state.circuit is None and lane.circuit_open:
            with self._lock:  # closed elsewhere (another instance's probe, or an operator)
                lane.circuit_open, lane.consecutive_failures = False, 0
                lane.held_until = 0.0
