"""Log lines and metric callbacks for delivery outcomes and disabled notifiers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from monitor.db.outbox import AttemptOutcome, Claimed
from monitor.notify.base import DeliveryError

log = logging.getLogger("monitor.dispatch")


def report_outcome(
    name: str,
    row: Claimed,
    outcome: AttemptOutcome,
    error: DeliveryError | None,
    on_outcome: Callable[[str, str, float], None] | None,
) -> None:
    extra = {
        "event_id": row.event_id,
        "notifier": name,
        "sid": row.conference_sid,
        "event": f"delivery.{outcome.status}",
    }
    if on_outcome:
        counted = "disabled" if error is not None and error.disable else outcome.status
        on_outcome(name, counted, outcome.duration_ms / 1000)
    if error is None:
        log.debug("delivered %s to %s", row.event_id, name, extra=extra)
    elif outcome.status == "pending":
        log.warning(
            "delivery of %s to %s failed (%s); retry at %s",
            row.event_id,
            name,
            error.message,
            outcome.next_attempt_at.isoformat() if outcome.next_attempt_at else "?",
            extra=extra,
        )
    else:
        log.error(
            "delivery of %s to %s is %s: %s",
            row.event_id,
            name,
            outcome.status,
            error.message,
            extra=extra,
        )


def report_disabled(name: str, reason: str, *, just_now: bool) -> None:
    if just_now:
        log.error(
            "notifier %s disabled, its deliveries wait: %s; "
            "`conference-monitor deliveries retry ID` re-enables it",
            name,
            reason,
            extra={"event": "notifier.disabled", "notifier": name},
        )
    else:
        log.warning(
            "notifier %s is disabled (%s); its deliveries wait. "
            "`conference-monitor deliveries retry ID` re-enables it",
            name,
            reason,
            extra={"event": "notifier.disabled", "notifier": name},
        )


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
