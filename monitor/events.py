"""Pure construction of events and their notification documents.

The document built here (`{"type", "timestamp", "data"}`) is stored with the
event and sent byte for byte by every notifier, on every retry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.domain import Conference, EventType, Transition, new_event_id


@dataclass(frozen=True)
class NewEvent:
    """An event about to be written, with the notifiers that want it."""

    id: str
    type: str
    conference_sid: str | None
    account_sid: str | None
    occurred_at: datetime
    body: str
    from_status: str | None = None
    to_status: str | None = None
    skipped: tuple[str, ...] = ()
    reason_conference_ended: str | None = None
    call_sid_ending_conference: str | None = None
    notifiers: tuple[str, ...] = field(default=())

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)["data"]
        return data


def duration_s(event: NewEvent) -> float | None:
    """Twilio's own duration of an ended conference (date_updated - date_created), as
    the history summary reports it; None for other events, or when a date is
    missing (a status callback's end carries no `date_created`)."""
    if event.type != EventType.ENDED:
        return None
    data = event.data
    try:
        start = datetime.fromisoformat(str(data["date_created"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(data["date_updated"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def document(event_type: str, event_id: str, at: datetime, data: dict[str, Any]) -> str:
    body = {"type": event_type, "timestamp": _iso(at), "data": {"event_id": event_id, **data}}
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


def conference_data(
    conference: Conference, transition: Transition, observed_at: datetime, detected_via: str
) -> dict[str, Any]:
    ended = transition.type == EventType.ENDED or conference.status == "completed"
    return {
        "conference_sid": conference.sid,
        "account_sid": conference.account_sid,
        "friendly_name": conference.friendly_name,
        "region": conference.region,
        "from_status": transition.from_status,
        "to_status": transition.to_status,
        "skipped": list(transition.skipped),
        "reason_conference_ended": conference.reason_conference_ended if ended else None,
        "call_sid_ending_conference": conference.call_sid_ending_conference if ended else None,
        "date_created": _iso(conference.date_created),
        "date_updated": _iso(conference.date_updated),
        "observed_at": _iso(observed_at),
        "detected_via": detected_via,
    }


def transition_event(
    conference: Conference, transition: Transition, observed_at: datetime, detected_via: str
) -> NewEvent:
    event_id = new_event_id()
    data = conference_data(conference, transition, observed_at, detected_via)
    return NewEvent(
        id=event_id,
        type=transition.type,
        conference_sid=conference.sid,
        account_sid=conference.account_sid,
        occurred_at=observed_at,
        body=document(transition.type, event_id, observed_at, data),
        from_status=transition.from_status,
        to_status=transition.to_status,
        skipped=transition.skipped,
        reason_conference_ended=data["reason_conference_ended"],
        call_sid_ending_conference=data["call_sid_ending_conference"],
    )


def watch_event(
    event_type: EventType,
    *,
    conference_sid: str | None,
    account_sid: str | None,
    at: datetime,
    detail: str,
    extra: dict[str, Any] | None = None,
) -> NewEvent:
    """`watch.not_found` or `watch.auth_failed`: no conference state, a human detail."""
    event_id = new_event_id()
    data: dict[str, Any] = {
        "conference_sid": conference_sid,
        "account_sid": account_sid,
        "friendly_name": None,
        "region": None,
        "from_status": None,
        "to_status": None,
        "skipped": [],
        "reason_conference_ended": None,
        "call_sid_ending_conference": None,
        "date_created": None,
        "date_updated": None,
        "observed_at": _iso(at),
        "detected_via": "poll",
        "detail": detail,
        **(extra or {}),
    }
    return NewEvent(
        id=event_id,
        type=event_type,
        conference_sid=conference_sid,
        account_sid=account_sid,
        occurred_at=at,
        body=document(event_type, event_id, at, data),
    )


def with_notifiers(event: NewEvent, notifiers: tuple[str, ...]) -> NewEvent:
    return NewEvent(**{**event.__dict__, "notifiers": notifiers})
