"""The OpenAPI 3.0 description of /api/v1/, served at /api/v1/openapi.json.

Kept next to the code it describes and checked against live responses by the
tests (schema validation of every response, and schemathesis).
"""

from __future__ import annotations

from typing import Any

from monitor import __version__
from monitor.api.params import DEFAULT_LIMIT, MAX_LIMIT
from monitor.db.outbox import STATUSES
from monitor.domain import EVENT_TYPES

WATCH_STATUSES = ("active", "completed", "not_found")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


TIME = {"type": "string", "format": "date-time"}
NTIME = _nullable("string", format="date-time")
NSTR = _nullable("string")


def _object(properties: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": extra,
    }


CONFERENCE = {
    "sid": {"type": "string", "pattern": "^CF[0-9a-fA-F]{32}$"},
    "account_sid": NSTR,
    "label": NSTR,
    "watch_status": _nullable("string", enum=[*WATCH_STATUSES, None]),
    "status": NSTR,
    "friendly_name": NSTR,
    "region": NSTR,
    "reason_conference_ended": NSTR,
    "call_sid_ending_conference": NSTR,
    "date_created": NTIME,
    "date_updated": NTIME,
    "watched_at": NTIME,
    "started_at": NTIME,
    "ended_at": NTIME,
    "last_polled_at": NTIME,
    "last_error": NSTR,
    "duration_s": _nullable("number"),
}
SNAPSHOT = {
    "id": {"type": "integer"},
    "status": NSTR,
    "friendly_name": NSTR,
    "region": NSTR,
    "reason_conference_ended": NSTR,
    "call_sid_ending_conference": NSTR,
    "date_created": NTIME,
    "date_updated": NTIME,
    "detected_via": {"type": "string"},
    "first_observed_at": TIME,
    "last_observed_at": TIME,
    "observation_count": {"type": "integer", "minimum": 1},
    "raw": {"nullable": True, "description": "the Conference resource exactly as Twilio sent it"},
}
EVENT = {
    "id": {"type": "string", "pattern": "^evt_"},
    "type": {"type": "string", "enum": list(EVENT_TYPES)},
    "timestamp": TIME,
    "data": {"type": "object", "additionalProperties": True},
}
ATTEMPT = {
    "attempted_at": TIME,
    "status_code": _nullable("integer"),
    "error": NSTR,
    "duration_ms": {"type": "number"},
}
DELIVERY = {
    "id": {"type": "integer"},
    "event_id": {"type": "string"},
    "notifier": {"type": "string"},
    "event_type": {"type": "string"},
    "conference_sid": NSTR,
    "status": {"type": "string"},
    "attempts": {"type": "integer"},
    "created_at": TIME,
    "next_attempt_at": TIME,
    "delivered_at": NTIME,
    "last_status_code": _nullable("integer"),
    "last_error": NSTR,
}
COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
SUMMARY = {
    "since": TIME,
    "until": TIME,
    "conferences": _object(
        {k: {"type": "integer"} for k in ("started", "ended", "first_seen", "irregular")}
    ),
    "end_reasons": COUNTS,
    "duration_s": _object(
        {
            "count": {"type": "integer"},
            "p50": _nullable("number"),
            "p95": _nullable("number"),
            "max": _nullable("number"),
        }
    ),
    "longest": {
        "type": "array",
        "items": _object(
            {
                "sid": {"type": "string"},
                "friendly_name": NSTR,
                "duration_s": {"type": "number"},
                "reason_conference_ended": NSTR,
                "ended_at": TIME,
            }
        ),
    },
    "not_found": {"type": "integer"},
    "auth_failures": {"type": "integer"},
    "auth_failing_accounts": {"type": "array", "items": {"type": "string"}},
    "watches_added": _object(
        {k: {"type": "integer"} for k in ("total", "active", "completed", "not_found")}
    ),
    "deliveries_outstanding": _object(
        {k: {"type": "integer"} for k in ("pending", "failed", "dead")}
    ),
}


def _page(item: str) -> dict[str, Any]:
    return _object({"items": {"type": "array", "items": _ref(item)}, "next_cursor": NSTR})


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


WHEN = "ISO-8601 time (UTC unless an offset is given) or a duration ago such as 15m or 7d"
PAGING = [
    _param(
        "limit",
        f"items per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
    _param(
        "cursor",
        "next_cursor from the previous page",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 600},
    ),
]
SID_PATTERN = "^CF[0-9a-fA-F]{32}$"
SID_PARAM = _param("sid", "a conference SID", {"type": "string", "pattern": SID_PATTERN})


def _get(
    summary: str, ok: dict[str, Any], params: list[dict[str, Any]], *, missing: bool = False
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok}}},
        "400": {"description": "a parameter is invalid (the message names it)", **_ERROR},
        "401": {"description": "no valid bearer token", **_ERROR},
    }
    if missing:
        responses["404"] = {"description": "no such conference", **_ERROR}
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


_ERROR = {"content": {"application/json": {"schema": _ref("Error")}}}


def document() -> dict[str, Any]:
    paths = {
        "/api/v1/conferences": _get(
            "Watched conferences, newest first",
            _ref("ConferencePage"),
            [
                _param("status", "watch status", {"type": "string", "enum": list(WATCH_STATUSES)}),
                _param(
                    "account", "account SID", {"type": "string", "pattern": "^AC[0-9a-fA-F]{32}$"}
                ),
                _param("label", "the watch's label, exactly"),
                _param("since", f"watched at or after: {WHEN}"),
                _param("until", f"watched before: {WHEN}"),
                *PAGING,
            ],
        ),
        "/api/v1/conferences/{sid}": {
            "parameters": [
                {
                    "name": "sid",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": SID_PATTERN},
                }
            ],
            **_get(
                "One conference: its snapshots, events, deliveries and their attempts",
                _ref("ConferenceDetail"),
                [],
                missing=True,
            ),
        },
        "/api/v1/events": _get(
            "Events across conferences, newest first (documents as `events --json`)",
            _ref("EventPage"),
            [
                _param(
                    "type",
                    "event type; repeat or comma-separate for several",
                    {"type": "string"},
                ),
                SID_PARAM,
                _param("since", f"at or after: {WHEN}"),
                _param("until", f"before: {WHEN}"),
                *PAGING,
            ],
        ),
        "/api/v1/deliveries": _get(
            "The notification outbox, newest first",
            _ref("DeliveryPage"),
            [
                _param("status", "delivery status", {"type": "string", "enum": list(STATUSES)}),
                _param("notifier", "notifier name"),
                *PAGING,
            ],
        ),
        "/api/v1/summary": _get(
            "Counts, end reasons and durations over a window (the same as `report --json`)",
            _ref("Summary"),
            [
                _param("since", f"window start (default 7d): {WHEN}"),
                _param("until", f"window end (default now): {WHEN}"),
            ],
        ),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "conference-monitor history API",
            "version": __version__,
            "description": "Read-only history of watched Twilio conferences. Times are "
            "ISO-8601 UTC. Listings page with `next_cursor` (keyset; stable while rows "
            "are added).",
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _object({"error": {"type": "string"}}),
                "Conference": _object(CONFERENCE),
                "ConferenceDetail": _object(
                    {
                        **CONFERENCE,
                        "snapshots": {"type": "array", "items": _ref("Snapshot")},
                        "events": {"type": "array", "items": _ref("Event")},
                        "deliveries": {"type": "array", "items": _ref("DeliveryWithAttempts")},
                    }
                ),
                "Snapshot": _object(SNAPSHOT),
                "Event": _object(EVENT),
                "Delivery": _object(DELIVERY),
                "DeliveryWithAttempts": _object(
                    {**DELIVERY, "attempt_log": {"type": "array", "items": _object(ATTEMPT)}}
                ),
                "ConferencePage": _page("Conference"),
                "EventPage": _page("Event"),
                "DeliveryPage": _page("Delivery"),
                "Summary": _object(SUMMARY),
            },
        },
    }
