"""The `log` notifier: one line per event, readable as text and structured as JSON.

The message is for people; `extra=` carries the fields a JSON formatter emits, so
the same call serves `journalctl` readers and log pipelines.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from monitor.notify.base import Message

EVENTS_LOGGER = "monitor.events"


class LogNotifier:
    """Logs each event at INFO on `monitor.events`; never fails, returns no status."""

    def __init__(self, name: str, logger: logging.Logger | None = None) -> None:
        self.name = name
        self._logger = logger or logging.getLogger(EVENTS_LOGGER)

    def __repr__(self) -> str:
        return f"LogNotifier(name={self.name!r})"

    def send(self, message: Message) -> None:
        data = _data(message)
        extra = {
            "event": message.event_type,
            "event_id": message.event_id,
            "notifier": self.name,
            "sid": data.get("conference_sid"),
            "data": data,
        }
        self._logger.info("%s", summary(message.event_type, data), extra=extra)

    def close(self) -> None:
        pass


def summary(event_type: str, data: dict[str, Any]) -> str:
    """`conference.ended CF… "Standup" in-progress -> completed reason=… ended_by=CA…`."""
    parts = [event_type, str(data.get("conference_sid") or data.get("account_sid") or "-")]
    if data.get("friendly_name"):
        parts.append(json.dumps(data["friendly_name"], ensure_ascii=False))
    if data.get("to_status"):
        parts.append(f"{data.get('from_status') or 'none'} -> {data['to_status']}")
    skipped = data.get("skipped")
    if skipped:
        parts.append(
            f"skipped={','.join(map(str, skipped)) if isinstance(skipped, list) else skipped}"
        )
    if data.get("reason_conference_ended"):
        parts.append(f"reason={data['reason_conference_ended']}")
    if data.get("call_sid_ending_conference"):
        parts.append(f"ended_by={data['call_sid_ending_conference']}")
    return " ".join(parts)


def _data(message: Message) -> dict[str, Any]:
    """The event's `data` object; an unreadable body still gets its line logged."""
    try:
        data = message.document().get("data")
    except (ValueError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}
