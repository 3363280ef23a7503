"""POST each event to a URL, signed per Standard Webhooks, optionally in a body of your shape.

Without a template the body is the stored event document, byte for byte, so every
retry is identical. With one, the body is the template filled in for the event (see
`template.py`). Signing is on unless the configuration says `sign = false`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from monitor.notify import template as templates
from monitor.notify.base import Message
from monitor.notify.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    MAX_RETRY_AFTER_S,
    HttpPoster,
    checked_headers,
    display_url,
    parse_retry_after,
    secret_display_url,
)
from monitor.notify.signing import decode_secret, headers_for

__all__ = ["MAX_RETRY_AFTER_S", "WebhookNotifier", "display_url", "parse_retry_after"]

_SIGNING_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})


class WebhookNotifier:
    """Delivers events to `url`, signed with a `whsec_` secret unless `secret` is None.

    `webhook-id` is the event id, so every retry of one event carries the same id;
    the timestamp and signature are fresh at each attempt. Redirects are not followed.
    """

    def __init__(
        self,
        name: str,
        url: str,
        secret: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.time,
        template: Any = None,
        url_is_secret: bool = False,
        pool_size: int = 4,
    ) -> None:
        if not name:
            raise ValueError("webhook notifier needs a name")
        try:
            self._key = decode_secret(secret) if secret is not None else None
        except ValueError as exc:
            raise ValueError(f"webhook {name!r}: {exc}") from None
        if template is not None and (why := templates.problems(template)):
            raise ValueError(f"webhook {name!r}: {why[0]}")
        self.name = name
        self._headers = checked_headers(name, headers or {}, _SIGNING_HEADERS)
        self._clock = clock
        self._template = template
        scrub: tuple[str, ...] = (secret, secret.removeprefix("whsec_")) if secret else ()
        scrub += tuple(self._headers.values())
        if url_is_secret:
            scrub += (url,)
        self._http = HttpPoster(
            name,
            url,
            display=secret_display_url(url) if url_is_secret else display_url(url),
            timeout_s=timeout_s,
            max_response_bytes=max_response_bytes,
            pool_size=pool_size,
            scrub=scrub,
            clock=clock,
        )
        self.safe_url = self._http.display
        self.timeout_s = self._http.timeout_s
        self.max_response_bytes = max_response_bytes

    def __repr__(self) -> str:
        return f"WebhookNotifier(name={self.name!r}, url={self.safe_url!r})"

    @property
    def signed(self) -> bool:
        return self._key is not None

    def body(self, message: Message) -> bytes:
        if self._template is None:
            return message.body.encode("utf-8")
        return templates.render(self._template, message)

    def send(self, message: Message) -> int:
        """POST once; the 2xx status, or `DeliveryError` saying whether to retry."""
        body = self.body(message)
        headers = {**self._headers, "Content-Type": "application/json"}
        if self._key is not None:
            headers.update(headers_for(self._key, message.event_id, int(self._clock()), body))
        else:
            headers["webhook-id"] = message.event_id  # still the idempotency key
        return self._http.post(body, headers)

    def close(self) -> None:
        self._http.close()
