"""What `deliveries` shows about notifiers: state, pause, circuit and the thresholds in force.

Pure: takes the shared `notifier_state` rows and the settings, returns printable rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from monitor.config_schema import Settings
from monitor.db.outbox import NotifierStatus

NOTIFIER_COLUMNS = (
    "notifier",
    "type",
    "state",
    "until",
    "consecutive_failures",
    "breaker_threshold",
    "breaker_cooldown_s",
    "breaker_window_s",
    "concurrency",
    "reason",
)


def state_of(status: NotifierStatus | None, now: datetime) -> tuple[str, datetime | None, str]:
    """(ok | paused | open | probing | disabled, until, why)."""
    if status is None:
        return "ok", None, ""
    if status.disabled_at is not None:
        return "disabled", None, status.disabled_reason or ""
    if status.circuit is not None:
        return status.circuit, status.paused_until, status.pause_reason or ""
    if status.paused_until is not None and status.paused_until > now:
        return "paused", status.paused_until, status.pause_reason or ""
    return "ok", None, ""


def notifier_rows(
    settings: Settings, states: Mapping[str, NotifierStatus], now: datetime
) -> list[dict[str, Any]]:
    from monitor.app import effective_notifiers

    d = settings.dispatch
    rows = []
    for spec in effective_notifiers(settings):
        state, until, why = state_of(states.get(spec.name), now)
        status = states.get(spec.name)
        rows.append(
            {
                "notifier": spec.name,
                "type": spec.type,
                "state": state,
                "until": until,
                "consecutive_failures": status.consecutive_failures if status else 0,
                "breaker_threshold": d.breaker_threshold,
                "breaker_cooldown_s": d.breaker_cooldown_s,
                "breaker_window_s": d.breaker_window_s,
                "concurrency": spec.concurrency,
                "reason": why,
            }
        )
    return rows


def annotate_pending(
    rows: list[dict[str, Any]],
    states: Mapping[str, NotifierStatus],
    configured: Collection[str],
    now: datetime,
) -> None:
    """Say, on each pending row, why its notifier is not sending it (if it is not)."""
    for row in rows:
        if row["status"] != "pending":
            continue
        state, until, why = state_of(states.get(row["notifier"]), now)
        if state == "disabled":
            row["last_error"] = f"notifier disabled: {why}"
        elif row["notifier"] not in configured:
            row["last_error"] = "notifier not in the configuration: waiting for it to return"
        elif state != "ok":
            when = until.isoformat(timespec="seconds") if until else "?"
            held = f"notifier {state} until {when}: {why}"
            row["last_error"] = f"{row['last_error']}; {held}" if row["last_error"] else held
