"""Rows as the API's JSON documents: ISO-8601 UTC times, events exactly as `events --json`.

Pure: dicts from `monitor.db.history` in, JSON-ready dicts out. The OpenAPI
document (monitor/api/openapi.py) describes exactly these shapes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from monitor.api.params import iso

CONFERENCE_FIELDS = (
    "sid",
    "account_sid",
    "label",
    "watch_status",
    "status",
    "friendly_name",
    "region",
    "reason_conference_ended",
    "call_sid_ending_conference",
    "date_created",
    "date_updated",
    "watched_at",
    "started_at",
    "ended_at",
    "last_polled_at",
    "last_error",
)
SNAPSHOT_FIELDS = (
    "id",
    "status",
    "friendly_name",
    "region",
    "reason_conference_ended",
    "call_sid_ending_conference",
    "date_created",
    "date_updated",
    "detected_via",
    "first_observed_at",
    "last_observed_at",
    "observation_count",
)
DELIVERY_FIELDS = (
    "id",
    "event_id",
    "notifier",
    "event_type",
    "conference_sid",
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
    "delivered_at",
    "last_status_code",
    "last_error",
)
ATTEMPT_FIELDS = ("attempted_at", "status_code", "error", "duration_ms")


def plain(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def _pick(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: plain(row.get(name)) for name in fields}


def duration_s(row: dict[str, Any]) -> float | None:
    """Twilio's own duration of a finished conference: date_updated minus date_created."""
    start, end = row.get("date_created"), row.get("date_updated")
    if row.get("status") != "completed" or start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def conference(row: dict[str, Any]) -> dict[str, Any]:
    return {**_pick(row, CONFERENCE_FIELDS), "duration_s": duration_s(row)}


def event(row: dict[str, Any]) -> dict[str, Any]:
    """`{"id", "type", "timestamp", "data"}`: the stored notification document with its id."""
    return {"id": row["id"], **orjson.loads(row["body"])}


def snapshot(row: dict[str, Any]) -> dict[str, Any]:
    try:
        raw = orjson.loads(row["raw_json"])
    except orjson.JSONDecodeError:
        raw = None
    return {**_pick(row, SNAPSHOT_FIELDS), "raw": raw}


def delivery(row: dict[str, Any]) -> dict[str, Any]:
    doc = _pick(row, DELIVERY_FIELDS)
    if "attempt_log" in row:
        doc["attempt_log"] = [_pick(a, ATTEMPT_FIELDS) for a in row["attempt_log"]]
    return doc


def conference_detail(found: dict[str, Any]) -> dict[str, Any]:
    return {
        **conference(found),
        "snapshots": [snapshot(s) for s in found["snapshots"]],
        "events": [event(e) for e in found["events"]],
        "deliveries": [delivery(d) for d in found["deliveries"]],
    }
