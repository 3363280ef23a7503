"""A notifier that posts a JSON body of a vendor's shape, made from each event.

Slack, Teams and PagerDuty differ only in the body (their modules render it) and in
which URL parts are secret; delivery, deadlines and outcomes are `HttpPoster`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.notify.base import Message
from monitor.notify.http import HttpPoster, display_url, secret_display_url

Render = Callable[[Message], bytes]


class PostingNotifier:
    def __init__(
        self,
        name: str,
        kind: str,
        url: str,
        render: Render,
        *,
        url_is_secret: bool,
        timeout_s: float,
        pool_size: int = 4,
        scrub: tuple[str, ...] = (),
    ) -> None:
        if not name:
            raise ValueError(f"{kind} notifier needs a name")
        self.name = name
        self.kind = kind
        self._render = render
        self._http = HttpPoster(
            name,
            url,
            display=secret_display_url(url) if url_is_secret else display_url(url),
            timeout_s=timeout_s,
            pool_size=pool_size,
            scrub=(*scrub, url) if url_is_secret else scrub,
        )
        self.safe_url = self._http.display
        self.timeout_s = self._http.timeout_s

    def __repr__(self) -> str:
        return f"PostingNotifier(name={self.name!r}, kind={self.kind!r}, url={self.safe_url!r})"

    def body(self, message: Message) -> bytes:
        return self._render(message)

    def send(self, message: Message) -> int:
        return self._http.post(self.body(message), {"Content-Type": "application/json"})

    def close(self) -> None:
        self._http.close()
