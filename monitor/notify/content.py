"""PURE: what a person should read about an event, for chat, paging and email notifiers.

Every human-facing notifier (Slack, Teams, PagerDuty, email) shows the same facts in
the same words; only the markup differs. Values come from the stored event document;
nothing here is escaped for any format (each renderer escapes for its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.notify.base import Message

TEST_MARK = "[TEST] "

REASONS = {
    "conference-ended-via-api": "ended through the API",
    "participant-with-end-conference-on-exit-left": "a participant with endConferenceOnExit left",
    "participant-with-end-conference-on-exit-kicked": (
        "a participant with endConferenceOnExit was removed"
    ),
    "last-participant-kicked": "the last participant was removed",
    "last-participant-left": "the last participant left",
}
_HEADLINES = {
    "conference.started": "Conference started",
    "conference.ended": "Conference ended",
    "conference.first_seen": "Conference first seen",
    "watch.not_found": "Conference not found",
    "watch.auth_failed": "Twilio rejected the credentials",
}


@dataclass(frozen=True)
class Content:
    """The facts of one event, ready to lay out: a title and labelled lines."""

    event_type: str
    event_id: str
    title: str
    facts: tuple[tuple[str, str], ...]
    conference_sid: str | None
    account_sid: str | None
    is_test: bool
    timestamp: str | None

    def text(self) -> str:
        """Plain text: the title, then one `Label: value` line per fact."""
        return "\n".join([self.title, *(f"{label}: {value}" for label, value in self.facts)])


def describe(message: Message) -> Content:
    doc = _document(message)
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    assert isinstance(data, dict)
    is_test = bool(data.get("test"))
    sid, account = _str(data.get("conference_sid")), _str(data.get("account_sid"))
    return Content(
        event_type=message.event_type,
        event_id=message.event_id,
        title=(TEST_MARK if is_test else "") + _title(message.event_type, data),
        facts=tuple(_facts(message, data)),
        conference_sid=sid,
        account_sid=account,
        is_test=is_test,
        timestamp=_str(doc.get("timestamp")),
    )


def _title(event_type: str, data: dict[str, Any]) -> str:
    headline = _HEADLINES.get(event_type, event_type)
    subject = _str(data.get("friendly_name")) or _str(data.get("conference_sid"))
    if event_type == "watch.auth_failed":
        subject = _str(data.get("account_sid"))
    title = f"{headline}: {subject}" if subject else headline
    reason = _str(data.get("reason_conference_ended"))
    if event_type == "conference.ended" and reason:
        title += f" ({REASONS.get(reason, reason)})"
    return title


def _facts(message: Message, data: dict[str, Any]) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []

    def add(label: str, value: object) -> None:
        text = _str(value)
        if text:
            facts.append((label, text))

    add("Conference", data.get("friendly_name"))
    add("SID", data.get("conference_sid"))
    if data.get("to_status"):
        change = f"{data.get('from_status') or 'none'} → {data['to_status']}"
        skipped = data.get("skipped")
        if isinstance(skipped, list) and skipped:
            change += f" (skipped {', '.join(map(str, skipped))})"
        add("Status", change)
    reason = _str(data.get("reason_conference_ended"))
    if reason:
        add("End reason", f"{REASONS.get(reason, reason)} ({reason})")
    add("Ended by call", data.get("call_sid_ending_conference"))
    if message.event_type == "conference.ended":
        add("Duration", duration(data.get("date_created"), data.get("date_updated")))
    add("Detail", data.get("detail"))
    add("Account", data.get("account_sid"))
    add("Region", data.get("region"))
    add("Observed", data.get("observed_at"))
    add("Event", message.event_id)
    return facts


def duration(start: object, end: object) -> str | None:
    """`1h 02m 03s` between two ISO-8601 times, or None if either is missing or odd."""
    try:
        began = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        ended = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
        seconds = int((ended - began).total_seconds())
    except (TypeError, ValueError):
        return None
    if seconds < 0:
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _document(message: Message) -> dict[str, Any]:
    try:
        doc = message.document()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)
