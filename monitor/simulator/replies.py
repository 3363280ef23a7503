"""What the simulator sends back: a status, headers and a body, whole or streamed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

JSON_TYPE = "application/json; charset=utf-8"
ERROR_TEXT = {
    20001: "Invalid parameter",
    20003: "Authenticate",
    20004: "Method not allowed",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
}


@dataclass
class Reply:
    """A response. With `stream`, the body is produced as it is sent (`length` bytes, or
    unknown), delimited per `framing`; with `drip_s`, sent a byte at a time."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_TYPE
    stream: Callable[[], Iterator[bytes]] | None = None
    length: int | None = None
    framing: str = "length"  # "length" (Content-Length), "chunked", "close" (ends at EOF)
    drip_s: float = 0.0


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, orjson.dumps(payload))


def twilio_error(status: int, code: int, message: str | None = None) -> Reply:
    """Twilio's error body: code, message, more_info, status."""
    return json_reply(
        status,
        {
            "code": code,
            "message": message or ERROR_TEXT.get(code, "Error"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )
