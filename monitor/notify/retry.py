"""PURE: what a failed attempt means for its row, and for its notifier as a whole.

Each row follows its own schedule (`retry_delays`, then dead after `give_up_after`),
so one event's failures never delay another's. A whole notifier is held back only
when its receiver asks (429 or 503 with `Retry-After`, honoured exactly up to a cap)
or when a circuit breaker sees `threshold` consecutive failures over at least
`window` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.db.outbox import AttemptOutcome, Claimed
from monitor.notify.base import DeliveryError

RETRY_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
DEFAULT_MAX_RETRY_AFTER_S = 3600.0
DEFAULT_CONCURRENCY = 4
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_COOLDOWN_S = 30.0
# A streak must also last this long: a burst of simultaneous first failures (a receiver
# that hiccups on everything at once) is not a receiver that is down.
DEFAULT_BREAKER_WINDOW_S = 10.0
# Statuses with which a receiver speaks for itself as a whole, not for one request.
PAUSING_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class DeliveryPolicy:
    """How one notifier is driven: parallel attempts, breaker, longest pause honoured."""

    concurrency: int = DEFAULT_CONCURRENCY
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD  # 0: never open the circuit
    breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    breaker_window_s: float = DEFAULT_BREAKER_WINDOW_S


def next_outcome(
    row: Claimed,
    error: DeliveryError,
    now: datetime,
    duration_ms: float,
    delays_s: Sequence[float],
    give_up_after_s: float,
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
) -> AttemptOutcome:
    """What a failed attempt turns the row into.

    A `Retry-After` replaces the schedule's delay for this attempt, shorter or longer:
    the receiver knows best when it can take the request again.
    """
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
        delay = min(max(error.retry_after_s, 0.0), max_retry_after_s)
    retry_at = now + timedelta(seconds=delay)
    if (retry_at - row.created_at).total_seconds() > give_up_after_s:
        return AttemptOutcome(status="dead", **base)  # type: ignore[arg-type]
    return AttemptOutcome(status="pending", next_attempt_at=retry_at, **base)  # type: ignore[arg-type]


def notifier_pause_s(error: DeliveryError, max_retry_after_s: float) -> float | None:
    """How long the receiver asked the whole notifier to wait, if it did (429/503 + Retry-After)."""
    if error.status_code not in PAUSING_STATUSES or error.retry_after_s is None:
        return None
    pause = min(error.retry_after_s, max_retry_after_s)
    return pause if pause > 0 else None


def counts_against_breaker(error: DeliveryError) -> bool:
    """Failures that say the receiver is unwell: not refusals (4xx) nor requested pauses."""
    return not error.permanent and error.retry_after_s is None
