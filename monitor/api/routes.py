"""The read-only JSON API under /api/v1/ and its registration on the daemon's listener.

Every request is authorized first, whatever its path, so a refusal tells an
unauthorized client nothing (not even which paths exist). Settings are read
per request, so a SIGHUP that changes the tokens applies at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from monitor.api import documents
from monitor.api.auth import allowed
from monitor.api.openapi import WATCH_STATUSES, document
from monitor.api.params import BadRequest, Query, check_window, make_cursor, read_cursor, shown
from monitor.config_schema import ApiSettings, Settings
from monitor.db import history
from monitor.db.outbox import STATUSES
from monitor.domain import EVENT_TYPES, is_conference_sid
from monitor.httpapi import HealthServer, Request, Response, Route
from monitor.report import summary

log = logging.getLogger("monitor.api")

PREFIX = "/api/v1/"
JSON = "application/json"
HEADERS = (("X-Content-Type-Options", "nosniff"),)
DEFAULT_SUMMARY_WINDOW = timedelta(days=7)
Clock = Callable[[], datetime]


def json_response(status: int, doc: Any) -> Response:
    return Response(status, orjson.dumps(doc), JSON, HEADERS)


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _json_refusal(status: int, message: str) -> tuple[str, bytes]:
    """The listener's own refusals on API paths, in the API's error format."""
    response = error(status, message)
    return response.content_type, response.body


UNAUTHORIZED = Response(
    HTTPStatus.UNAUTHORIZED,
    orjson.dumps({"error": "unauthorized"}),
    JSON,
    (*HEADERS, ("WWW-Authenticate", 'Bearer realm="conference-monitor"')),
)


def is_authorized(request: Request, settings: ApiSettings) -> bool:
    return allowed(
        request.client,
        request.headers.get("Authorization"),
        request.headers.get("Cookie"),
        settings.token_hashes,
        allow_loopback=settings.allow_loopback,
    )


def _page(
    rows: list[dict[str, Any]],
    limit: int,
    key: Callable[[dict[str, Any]], str],
    shape: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = key(rows[-1]) if more and rows else None
    return json_response(HTTPStatus.OK, {"items": [shape(r) for r in rows], "next_cursor": cursor})


class HistoryApi:
    """Route handler for everything under /api/v1/."""

    def __init__(
        self, engine: Engine, settings: Callable[[], ApiSettings], now: Clock | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.now: Clock = now or (lambda: datetime.now(UTC))

    def __call__(self, request: Request) -> Response:
        settings = self.settings()
        if not settings.enabled:  # turned off by a reload: as if never served
            return Response(HTTPStatus.NOT_FOUND, b"not found\n")
        if not is_authorized(request, settings):
            return UNAUTHORIZED
        name = request.path.removeprefix(PREFIX)
        try:
            if name.startswith("conferences/"):
                return self.conference(request, name.removeprefix("conferences/"))
            handler = self._handlers().get(name)
            if handler is None:
                return error(HTTPStatus.NOT_FOUND, "no such endpoint (see /api/v1/openapi.json)")
            return handler(request)
        except BadRequest as exc:
            return error(HTTPStatus.BAD_REQUEST, str(exc))
        except OperationalError as exc:
            log.warning("history query failed: %s", str(exc).splitlines()[0][:200])
            return error(HTTPStatus.SERVICE_UNAVAILABLE, "the database did not answer in time")

    def _handlers(self) -> dict[str, Callable[[Request], Response]]:
        return {
            "conferences": self.conferences,
            "events": self.events,
            "deliveries": self.deliveries,
            "summary": self.summary,
            "openapi.json": lambda _r: json_response(HTTPStatus.OK, document()),
        }

    def conferences(self, request: Request) -> Response:
        q = Query(
            request.query, ("status", "account", "label", "since", "until", "limit", "cursor")
        )
        now = self.now()
        window = history.Window(q.time("since", now), q.time("until", now))
        check_window(window.since, window.until)
        limit = q.limit()
        after = read_cursor("c", q.text("cursor", 600), (datetime, str))
        status, account, label = q.choice("status", WATCH_STATUSES), q.account(), q.text("label")
        with history.reading(self.engine) as conn:
            rows = history.conferences(
                conn,
                status=status,
                account=account,
                label=label,
                window=window,
                limit=limit,
                after=after,
            )
        return _page(
            rows,
            limit,
            lambda r: make_cursor("c", (r["watched_at"], r["sid"])),
            documents.conference,
        )

    def conference(self, request: Request, sid: str) -> Response:
        Query(request.query, ())
        if not is_conference_sid(sid):
            raise BadRequest(f"{shown(sid)} is not a conference SID (CF + 32 hex digits)")
        with history.reading(self.engine) as conn:
            found = history.conference(conn, sid)
        if found is None:
            return error(HTTPStatus.NOT_FOUND, f"no history for conference {sid}")
        return json_response(HTTPStatus.OK, documents.conference_detail(found))

    def events(self, request: Request) -> Response:
        q = Query(request.query, ("type", "sid", "since", "until", "limit", "cursor"), ("type",))
        now = self.now()
        window = history.Window(q.time("since", now), q.time("until", now))
        check_window(window.since, window.until)
        types, sid, limit = q.many("type", EVENT_TYPES), q.sid(), q.limit()
        after = read_cursor("e", q.text("cursor", 600), (datetime, str))
        with history.reading(self.engine) as conn:
            rows = history.events(
                conn,
                types=types,
                sid=sid,
                window=window,
                limit=limit,
                after=after,
            )
        return _page(
            rows, limit, lambda r: make_cursor("e", (r["occurred_at"], r["id"])), documents.event
        )

    def deliveries(self, request: Request) -> Response:
        q = Query(request.query, ("status", "notifier", "limit", "cursor"))
        status, notifier, limit = q.choice("status", STATUSES), q.text("notifier"), q.limit()
        after = read_cursor("d", q.text("cursor", 600), (int,))
        with history.reading(self.engine) as conn:
            rows = history.deliveries(
                conn,
                status=status,
                notifier=notifier,
                limit=limit,
                after=after[0] if after else None,
            )
        return _page(rows, limit, lambda r: make_cursor("d", (r["id"],)), documents.delivery)

    def summary(self, request: Request) -> Response:
        q = Query(request.query, ("since", "until"))
        now = self.now()
        until = q.time("until", now) or now
        since = q.time("since", now) or until - DEFAULT_SUMMARY_WINDOW
        check_window(since, until)
        return json_response(HTTPStatus.OK, summary(self.engine, since, until))


def _redirect(location: str) -> Callable[[Request], Response]:
    def answer(_request: Request) -> Response:
        return Response(HTTPStatus.FOUND, b"", headers=(("Location", location),))

    return answer


def register(server: HealthServer, engine: Engine, settings: Callable[[], Settings]) -> None:
    """Serve the API and the web view on `server`; `settings()` gives the current Settings."""
    from monitor.web.pages import WebView

    current = settings()
    if not current.api.enabled:
        return
    api_settings: Callable[[], ApiSettings] = lambda: settings().api  # noqa: E731
    server.add_route(
        Route(PREFIX, HistoryApi(engine, api_settings), prefix=True, error_body=_json_refusal)
    )
    web = WebView(engine, api_settings)
    server.add_route(Route("/ui/", web, ("GET", "HEAD", "POST"), True, web.MAX_FORM_BYTES))
    server.add_route(Route("/ui", _redirect("/ui/")))
    server.add_route(Route("/", _redirect("/ui/")))
    if not current.api.token_hashes and not current.api.allow_loopback:
        log.warning(
            "the history API and web view are on, but [api] names no token and does not "
            "allow loopback: every request will get 401",
            extra={"event": "api.no_tokens"},
        )
