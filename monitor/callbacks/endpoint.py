"""The status callback route: refuse what is not Twilio's, record what is.

Checks run cheapest and least trusting first, and nothing is written before
the signature is verified: form content type (415), size (413, by the
listener), a configured account (403), the signature over the public URL
(403), then the fields (400). Participant events are answered 204 and not
recorded. A conference event is answered 204 once committed, 503 if it could
not be (a full queue, a database failure): polling catches up either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus

from monitor.callbacks import signature
from monitor.callbacks.form import CallbackForm, FormError, parse, parse_pairs
from monitor.callbacks.intake import UNAVAILABLE
from monitor.domain import ACCOUNT_SID_RE
from monitor.httpapi import Request, Response, Route
from monitor.metrics import Metrics
from monitor.output import escape

log = logging.getLogger("monitor.callbacks")

FORM = "application/x-www-form-urlencoded"
NO_CONTENT = Response(HTTPStatus.NO_CONTENT)
_MAX_LOGGED = 120
REFUSAL_LOG_EVERY_S = 10.0  # a flood of forged callbacks must not flood the journal

Submit = Callable[[CallbackForm, datetime], str]


def request_url(request: Request, public_url: str | None) -> str | None:
    """The URL Twilio signed: `public_url` (plus the request's query if it has none),
    else http:// + Host + the request target. None without a usable Host."""
    query = request.target.partition("?")[2]
    if public_url:
        if "?" in public_url or not query:
            return public_url
        return f"{public_url}?{query}"
    host = request.headers.get("Host")
    if not host or any(c in host for c in "/\\@ \t\r\n"):
        return None
    return f"http://{host}{request.target}"


class CallbackEndpoint:
    def __init__(
        self,
        tokens: Mapping[str, str],
        submit: Submit,
        metrics: Metrics,
        *,
        public_url: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tokens = dict(tokens)  # account SID -> auth token
        self.submit = submit
        self.metrics = metrics
        self.public_url = public_url
        self.clock = clock
        self._logged: dict[str, float] = {}

    def route(self, path: str, max_body: int) -> Route:
        return Route(path, self, ("POST",), False, max_body, self._too_large)

    def _too_large(self) -> None:
        self.metrics.count_callback("too_large")

    def __call__(self, request: Request) -> Response:
        received_at = self.clock()
        media = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media != FORM:
            return self._refuse("unsupported_media", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, request)
        try:
            pairs = parse_pairs(request.body)
        except FormError as exc:
            return self._refuse("malformed", HTTPStatus.BAD_REQUEST, request, str(exc))
        accounts = [value for name, value in pairs if name == "AccountSid"]
        token = self.tokens.get(accounts[0]) if len(accounts) == 1 else None
        if token is None:
            shown = accounts[0] if accounts and ACCOUNT_SID_RE.fullmatch(accounts[0]) else "?"
            return self._refuse("unknown_account", HTTPStatus.FORBIDDEN, request, shown)
        url = request_url(request, self.public_url)
        given = request.headers.get("X-Twilio-Signature") or ""
        if url is None or not signature.verify(url, pairs, token, given):
            return self._refuse("bad_signature", HTTPStatus.FORBIDDEN, request, url or "no Host")
        try:
            form = parse(pairs)
        except FormError as exc:
            return self._refuse("malformed", HTTPStatus.BAD_REQUEST, request, str(exc))
        if form.status is None:  # participant and other events: nothing to record
            self.metrics.count_callback("ignored")
            return NO_CONTENT
        self.metrics.observed("callback")
        outcome = self.submit(form, received_at)
        if outcome == UNAVAILABLE:
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, b"not recorded; try again\n")
        log.debug(
            "callback %s seq %d: %s",
            form.event,
            form.sequence,
            outcome,
            extra={"event": "callback.received", "sid": form.conference_sid},
        )
        return NO_CONTENT

    def _refuse(self, result: str, status: int, request: Request, detail: str = "") -> Response:
        self.metrics.count_callback(result)
        now = time.monotonic()
        quiet = now - self._logged.get(result, -REFUSAL_LOG_EVERY_S) < REFUSAL_LOG_EVERY_S
        if not quiet:
            self._logged[result] = now
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "refused a status callback from %s: %s%s",
            escape(request.client[:_MAX_LOGGED]),
            result,
            f" ({escape(detail[:_MAX_LOGGED])})" if detail else "",
            extra={"event": "callback.refused"},
        )
        message = {
            HTTPStatus.FORBIDDEN: b"forbidden\n",
            HTTPStatus.BAD_REQUEST: b"bad request\n",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE: b"expected application/x-www-form-urlencoded\n",
        }.get(HTTPStatus(status), b"refused\n")
        return Response(status, message)
