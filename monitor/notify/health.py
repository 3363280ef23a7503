"""A notifier's health as shown in /metrics and `deliveries notifiers`; the breaker's rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from monitor.db.outbox import NotifierStatus
from monitor.notify.lane import Lane
from monitor.notify.retry import DeliveryPolicy


@dataclass(frozen=True)
class NotifierHealth:
    """What /metrics shows of one notifier: its circuit, pause and thresholds."""

    name: str
    state: str  # ok | paused | open | probing | disabled
    consecutive_failures: int
    policy: DeliveryPolicy
    until: datetime | None = None
    reason: str | None = None


def health_of(lane: Lane, state: NotifierStatus | None, now: datetime) -> NotifierHealth:
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


def breaker_trips(policy: DeliveryPolicy, failures: int, lasted_s: float) -> bool:
    """PURE: enough failures in a row, going on long enough, to call the receiver down."""
    return (
        policy.breaker_threshold > 0
        and failures >= policy.breaker_threshold
        and lasted_s >= policy.breaker_window_s
    )
