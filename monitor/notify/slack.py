"""Slack incoming webhooks: `text` (the notification and fallback) plus Block Kit `blocks`.

The webhook URL is the credential, so only its host is ever shown. Everything taken
from an event is escaped for Slack's mrkdwn (`&`, `<`, `>`), so a friendly name can
neither mention `@channel` nor forge a link.
"""

from __future__ import annotations

import json
from typing import Any

from monitor.notify.base import Message
from monitor.notify.content import describe
from monitor.notify.posting import PostingNotifier

HEADER_MAX_CHARS = 150  # Block Kit header text limit
FIELD_MAX_CHARS = 2000  # section field text limit
MAX_FIELDS = 10  # fields per section
TEXT_MAX_CHARS = 3000


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(message: Message) -> bytes:
    content = describe(message)
    facts = [(label, value) for label, value in content.facts if label != "Event"]
    fallback = _cut(content.title, TEXT_MAX_CHARS)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(escape(content.title), HEADER_MAX_CHARS)},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{label}*\n{escape(value)}", FIELD_MAX_CHARS)}
                for label, value in facts[:MAX_FIELDS]
            ],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": escape(
                        f"{content.event_type} · {content.event_id} · conference-monitor"
                    ),
                }
            ],
        },
    ]
    if not facts:
        blocks.pop(1)
    doc = {"text": escape(fallback), "blocks": blocks}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def slack_notifier(name: str, url: str, *, timeout_s: float, pool_size: int = 4) -> PostingNotifier:
    return PostingNotifier(
        name, "slack", url, render, url_is_secret=True, timeout_s=timeout_s, pool_size=pool_size
    )
