"""Microsoft Teams: an Adaptive Card in a `message` envelope, as Workflows webhooks take it.

The same envelope is accepted by the older Office 365 connector URLs. The URL is the
credential, so only its host is ever shown. Text from events has markdown link
syntax broken up, so a friendly name cannot plant a clickable link in the card.
"""

from __future__ import annotations

import json
from typing import Any

from monitor.notify.base import Message
from monitor.notify.content import describe
from monitor.notify.posting import PostingNotifier

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
CARD_TYPE = "application/vnd.microsoft.card.adaptive"


def plain(text: str) -> str:
    """Event text as shown: markdown links broken up, so a name cannot carry a live link."""
    return text.replace("](", "] (")


def card(message: Message) -> dict[str, Any]:
    content = describe(message)
    color = "Attention" if content.event_type.startswith("watch.") else "Default"
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": plain(content.title),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            "color": "Warning" if content.is_test else color,
        },
        {
            "type": "FactSet",
            "facts": [{"title": label, "value": plain(value)} for label, value in content.facts],
        },
    ]
    return {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": body,
    }


def render(message: Message) -> bytes:
    doc = {
        "type": "message",
        "attachments": [{"contentType": CARD_TYPE, "contentUrl": None, "content": card(message)}],
    }
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def msteams_notifier(
    name: str, url: str, *, timeout_s: float, pool_size: int = 4
) -> PostingNotifier:
    return PostingNotifier(
        name, "msteams", url, render, url_is_secret=True, timeout_s=timeout_s, pool_size=pool_size
    )
