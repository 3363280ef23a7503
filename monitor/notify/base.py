"""The seam between the dispatcher and every way of telling someone about an event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol


class DeliveryError(Exception):
    """A delivery that did not succeed, and whether trying again can help.

    `permanent` stops retries (a 4xx other than 429). `disable` also turns the
    notifier off (HTTP 410 Gone). `retry_after_s` is the receiver's own request
    for a delay (`Retry-After`), honoured by the dispatcher's schedule.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        disable: bool = False,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent or disable
        self.disable = disable
        self.status_code = status_code
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Message:
    """One event as handed to a notifier.

    `body` is the exact JSON document `{"type", "timestamp", "data"}` stored with
    the event; a notifier sends it byte for byte so every retry is identical.
    """

    event_id: str
    event_type: str
    body: str

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


class Notifier(Protocol):
    """Delivers a message or raises `DeliveryError`. Returns the HTTP status, if any."""

    name: str

    def send(self, message: Message) -> int | None: ...

    def close(self) -> None: ...
