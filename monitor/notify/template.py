"""PURE: a webhook body shaped by the operator, for receivers with a format of their own.

The template is a JSON-shaped value (a TOML table in the config) whose strings may
hold `${name}` placeholders (Python `string.Template`). Only strings are filled in,
never keys or structure, and the result is serialised by `json.dumps`: an event can
never break out of its string or inject JSON, whatever its friendly name holds. A
string that is exactly one placeholder takes the value itself (`"$skipped"` stays a
list, `"$data"` the whole data object). Unknown names are refused when the config is
loaded, not at delivery.
"""

from __future__ import annotations

import json
import re
from string import Template
from typing import Any

from monitor.notify.base import Message
from monitor.notify.content import REASONS, describe, duration

DATA_FIELDS = (
    "conference_sid",
    "account_sid",
    "friendly_name",
    "region",
    "from_status",
    "to_status",
    "skipped",
    "reason_conference_ended",
    "call_sid_ending_conference",
    "date_created",
    "date_updated",
    "observed_at",
    "detected_via",
    "detail",
)
VARIABLES = frozenset(
    {"type", "event_id", "timestamp", "title", "text", "data", "duration", "reason_text"}
    | set(DATA_FIELDS)
)
MAX_DEPTH = 8
_WHOLE = re.compile(r"^\$(?:\{([_a-z][_a-z0-9]*)\}|([_a-z][_a-z0-9]*))$", re.IGNORECASE)


def problems(template: Any) -> list[str]:
    """Why `template` cannot be used: bad placeholders, unknown names, odd values."""
    found: list[str] = []
    _check(template, "template", found, 0)
    return found


def _check(value: Any, where: str, found: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        found.append(f"{where}: nested deeper than {MAX_DEPTH} levels")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(item, f"{where}.{key}", found, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", found, depth + 1)
    elif isinstance(value, str):
        template = Template(value)
        if not template.is_valid():
            found.append(f"{where}: a '$' that starts no ${{name}} (write '$$' for a dollar sign)")
            return
        unknown = sorted(set(template.get_identifiers()) - VARIABLES)
        if unknown:
            known = ", ".join(sorted(VARIABLES))
            found.append(f"{where}: unknown placeholder {', '.join(unknown)}; known: {known}")
    elif not (value is None or isinstance(value, (bool, int, float))):
        found.append(f"{where}: only strings, numbers, booleans, arrays and tables are allowed")


def variables(message: Message) -> dict[str, Any]:
    """Every value a placeholder can name, for one event."""
    try:
        doc: dict[str, Any] = message.document()
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    assert isinstance(data, dict)
    content = describe(message)
    reason = data.get("reason_conference_ended")
    values: dict[str, Any] = {field: data.get(field) for field in DATA_FIELDS}
    values.update(
        type=message.event_type,
        event_id=message.event_id,
        timestamp=doc.get("timestamp"),
        title=content.title,
        text=content.text(),
        data=data,
        duration=duration(data.get("date_created"), data.get("date_updated")),
        reason_text=REASONS.get(reason, reason) if isinstance(reason, str) else None,
    )
    return values


def render(template: Any, message: Message) -> bytes:
    """The body for one event: the template filled in, as compact UTF-8 JSON."""
    values = variables(message)
    text = {
        k: "" if v is None else v if isinstance(v, str) else _flat(v) for k, v in values.items()
    }
    filled = _fill(template, values, text)
    return json.dumps(filled, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _fill(value: Any, values: dict[str, Any], text: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, values, text) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values, text) for item in value]
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return values[whole[1] or whole[2]]
        return Template(value).substitute(text)
    return value


def _flat(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
