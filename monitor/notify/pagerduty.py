"""PagerDuty Events API v2: trigger (and resolve) alerts keyed by the conference SID.

With `trigger_on = "started"`, `conference.started` triggers an alert and
`conference.ended` resolves it (same `dedup_key`: the conference SID), so an
incident is open exactly while the bridge is up. With `trigger_on = "ended"`, the end
alone triggers. Watch events always trigger, keyed by type and SID or account. The
routing key is a secret: never shown, and scrubbed from any echoed error.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from monitor.notify.base import Message
from monitor.notify.content import Content, describe
from monitor.notify.posting import PostingNotifier

SUMMARY_MAX_CHARS = 1024
DEDUP_MAX_CHARS = 255


def action_for(content: Content, trigger_on: str) -> str:
    """A sample from `notify test` always triggers: a resolve would show nobody anything."""
    if content.is_test:
        return "trigger"
    if trigger_on == "started" and content.event_type == "conference.ended":
        return "resolve"
    return "trigger"


def dedup_key(content: Content) -> str:
    if content.event_type.startswith("conference.") and content.conference_sid:
        key = content.conference_sid
    else:
        key = f"{content.event_type}:{content.conference_sid or content.account_sid or '-'}"
    if content.is_test:
        key = f"test:{content.event_id}"  # a sample never touches a real incident
    return key[:DEDUP_MAX_CHARS]


def event(
    message: Message, routing_key: str, *, trigger_on: str, severity: str, source: str
) -> dict[str, Any]:
    content = describe(message)
    action = action_for(content, trigger_on)
    doc: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key(content),
    }
    if action == "trigger":
        doc["payload"] = {
            "summary": content.title[:SUMMARY_MAX_CHARS],
            "source": source,
            "severity": severity,
            "timestamp": content.timestamp,
            "component": content.conference_sid or "twilio",
            "group": "twilio-conferences",
            "class": content.event_type,
            "custom_details": dict(content.facts),
        }
        if doc["payload"]["timestamp"] is None:
            del doc["payload"]["timestamp"]
    return doc


def pagerduty_notifier(
    name: str,
    url: str,
    routing_key: str,
    *,
    trigger_on: str = "started",
    severity: str = "error",
    source: str | None = None,
    timeout_s: float,
    pool_size: int = 4,
) -> PostingNotifier:
    origin = source or f"conference-monitor@{socket.gethostname()}"

    def render(message: Message) -> bytes:
        doc = event(message, routing_key, trigger_on=trigger_on, severity=severity, source=origin)
        return json.dumps(doc, ensure_ascii=False).encode("utf-8")

    return PostingNotifier(
        name,
        "pagerduty",
        url,
        render,
        url_is_secret=False,
        timeout_s=timeout_s,
        pool_size=pool_size,
        scrub=(routing_key,),
    )
