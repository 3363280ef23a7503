"""The web view under /ui/: server-rendered HTML, no JavaScript, nothing fetched from outside.

Pages: active conferences now, all conferences, recent events, one conference
(its timeline to scale, snapshots, events, deliveries and attempts) and a day
of conferences as bars. Access is the API's: a bearer token (the login form
keeps it in an HttpOnly, SameSite=Strict cookie) or loopback when allowed.
Jinja2 escapes everything rendered; a Content-Security-Policy forbids scripts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from monitor.api import documents
from monitor.api.auth import COOKIE_NAME, cookie_value, token_accepted
from monitor.api.openapi import WATCH_STATUSES
from monitor.api.params import BadRequest, Query, check_window, make_cursor, read_cursor, shown
from monitor.api.routes import is_authorized
from monitor.config_schema import ApiSettings
from monitor.db import history
from monitor.domain import EVENT_TYPES, EventType, is_conference_sid
from monitor.durations import format_duration
from monitor.httpapi import Request, Response
from monitor.report import safe
from monitor.web import timeline

HTML = "text/html; charset=utf-8"
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
)
PAGE_ROWS = 100
DAY_ROWS = 300
Clock = Callable[[], datetime]


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _length(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(round(max(seconds, 0.0)))


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("monitor.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, length=_length, text=lambda v: safe(v) if v else "-")
    return env


class WebView:
    """Route handler for everything under /ui/."""

    MAX_FORM_BYTES = 4096

    def __init__(
        self,
        engine: Engine,
        settings: Callable[[], ApiSettings],
        now: Clock | None = None,
        *,
        page_rows: int = PAGE_ROWS,
        day_rows: int = DAY_ROWS,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.now: Clock = now or (lambda: datetime.now(UTC))
        self.page_rows, self.day_rows = page_rows, day_rows
        self.env = environment()

    def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        response = self._route(request)
        took_ms = (time.perf_counter() - started) * 1000
        timing = ("Server-Timing", f"app;dur={took_ms:.1f}")
        return Response(
            response.status, response.body, response.content_type, (*response.headers, timing)
        )

    def _route(self, request: Request) -> Response:
        if not self.settings().enabled:  # turned off by a reload: as if never served
            return Response(HTTPStatus.NOT_FOUND, b"not found\n")
        name = request.path.removeprefix("/ui/")
        if name in ("login", "logout"):
            return self.login(request) if name == "login" else self.logout(request)
        if not is_authorized(request, self.settings()):
            return self.render("login.html", HTTPStatus.UNAUTHORIZED, failed=False)
        if request.method == "POST":
            return self.render("error.html", HTTPStatus.METHOD_NOT_ALLOWED, message="read only")
        try:
            return self._page(request, name)
        except BadRequest as exc:
            return self.render("error.html", HTTPStatus.BAD_REQUEST, message=str(exc))
        except OperationalError:
            message = "the database did not answer in time"
            return self.render("error.html", HTTPStatus.SERVICE_UNAVAILABLE, message=message)

    def _page(self, request: Request, name: str) -> Response:
        if name.startswith("conferences/"):
            return self.conference(request, name.removeprefix("conferences/"))
        pages = {"": self.active, "conferences": self.conferences, "events": self.events}
        page = {**pages, "day": self.day}.get(name)
        if page is None:
            return self.render("error.html", HTTPStatus.NOT_FOUND, message="no such page")
        return page(request)

    def render(self, template: str, status: int = HTTPStatus.OK, **context: Any) -> Response:
        here = template.removesuffix(".html")  # the nav entry to highlight
        html = self.env.get_template(template).render(now=self.now(), here=here, **context)
        return Response(status, html.encode(), HTML, SECURITY_HEADERS)

    # -- access --------------------------------------------------------------------

    def login(self, request: Request) -> Response:
        if request.method != "POST":
            return self.render("login.html", failed=False)
        try:
            form = parse_qs(request.body.decode("utf-8", "replace"), max_num_fields=5)
        except ValueError:  # more fields than a login form has
            form = {}
        token = (form.get("token") or [""])[0].strip()
        if not token_accepted(token, self.settings().token_hashes):
            return self.render("login.html", HTTPStatus.UNAUTHORIZED, failed=True)
        cookie = f"{COOKIE_NAME}={cookie_value(token)}; Path=/; HttpOnly; SameSite=Strict"
        return Response(
            HTTPStatus.SEE_OTHER, b"", HTML, (("Location", "/ui/"), ("Set-Cookie", cookie))
        )

    def logout(self, _request: Request) -> Response:
        cookie = f"{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        headers = (("Location", "/ui/login"), ("Set-Cookie", cookie))
        return Response(HTTPStatus.SEE_OTHER, b"", HTML, headers)

    # -- pages ---------------------------------------------------------------------

    def active(self, request: Request) -> Response:
        q = Query(request.query, ("cursor",), blank_is_absent=True)
        after = read_cursor("c", q.text("cursor", 600), (datetime, str))
        now = self.now()
        day = history.Window(now - timedelta(days=1), None)
        with history.reading(self.engine) as conn:
            rows = history.conferences(conn, status="active", limit=self.page_rows, after=after)
            counts = history.event_counts(conn, (EventType.STARTED, EventType.ENDED), day)
        rows, more = self._more(rows, self.page_rows, lambda r: ("c", (r["watched_at"], r["sid"])))
        return self.render(
            "active.html", rows=rows, next_link=self._link("/ui/", {}, more), counts=counts
        )

    def conferences(self, request: Request) -> Response:
        q = Query(
            request.query,
            ("status", "account", "label", "since", "until", "cursor"),
            blank_is_absent=True,
        )
        now = self.now()
        window = history.Window(q.time("since", now), q.time("until", now))
        check_window(window.since, window.until)
        filters = {
            "status": q.choice("status", WATCH_STATUSES),
            "account": q.account(),
            "label": q.text("label"),
        }
        after = read_cursor("c", q.text("cursor", 600), (datetime, str))
        with history.reading(self.engine) as conn:
            rows = history.conferences(
                conn, window=window, limit=self.page_rows, after=after, **filters
            )
        rows, more = self._more(rows, self.page_rows, lambda r: ("c", (r["watched_at"], r["sid"])))
        shown_filters = {k: v for k, v in _given(request).items() if k != "cursor"}
        return self.render(
            "conferences.html",
            rows=rows,
            filters=shown_filters,
            statuses=WATCH_STATUSES,
            next_link=self._link("/ui/conferences", shown_filters, more),
        )

    def events(self, request: Request) -> Response:
        q = Query(
            request.query,
            ("type", "sid", "since", "until", "cursor"),
            ("type",),
            blank_is_absent=True,
        )
        now = self.now()
        window = history.Window(q.time("since", now), q.time("until", now))
        check_window(window.since, window.until)
        types, sid = q.many("type", EVENT_TYPES), q.sid()
        after = read_cursor("e", q.text("cursor", 600), (datetime, str))
        with history.reading(self.engine) as conn:
            rows = history.events(
                conn, types=types, sid=sid, window=window, limit=self.page_rows, after=after
            )
        rows, more = self._more(rows, self.page_rows, lambda r: ("e", (r["occurred_at"], r["id"])))
        shown_filters = {k: v for k, v in _given(request).items() if k != "cursor"}
        return self.render(
            "events.html",
            events=[documents.event(r) for r in rows],
            filters=shown_filters,
            types=EVENT_TYPES,
            chosen=types,
            next_link=self._link("/ui/events", shown_filters, more),
        )

    def conference(self, request: Request, sid: str) -> Response:
        Query(request.query, ())
        if not is_conference_sid(sid):
            raise BadRequest(f"{shown(sid)} is not a conference SID (CF + 32 hex digits)")
        with history.reading(self.engine) as conn:
            found = history.conference(conn, sid)
        if found is None:
            return self.render("error.html", HTTPStatus.NOT_FOUND, message=f"no history for {sid}")
        phases = timeline.phases(found["snapshots"])
        observed = [e["occurred_at"] for e in found["events"]]
        axis = timeline.axis_for(phases, self.now(), observed)
        return self.render(
            "conference.html",
            c=found,
            duration=documents.duration_s(found),
            phases=phases,
            axis=axis,
            segments=timeline.segments(phases, axis) if axis else [],
            markers=timeline.markers(found["events"], axis) if axis else [],
            completed_x=_completed_x(phases, axis),
            events=[(e, documents.event(e)) for e in found["events"]],
        )

    def day(self, request: Request) -> Response:
        q = Query(request.query, ("date", "cursor"), blank_is_absent=True)
        start = _day_start(q.text("date"), self.now())
        end = start + timedelta(days=1)
        after = read_cursor("y", q.text("cursor", 600), (datetime, str))
        with history.reading(self.engine) as conn:
            rows = history.day(conn, start, end, limit=self.day_rows, after=after)
        rows, more = self._more(rows, self.day_rows, lambda r: ("y", (r["watched_at"], r["sid"])))
        now = self.now()
        bars = []
        for row in rows:
            p = _row_phases(row)
            running_until = now if row["watch_status"] == "active" else p.last_seen
            drawn = timeline.segments(p, (start, end), running_until)
            if drawn:
                bars.append((row, drawn))
        day_text = start.strftime("%Y-%m-%d")
        return self.render(
            "day.html",
            bars=bars,
            day=day_text,
            previous=(start - timedelta(days=1)).strftime("%Y-%m-%d"),
            following=end.strftime("%Y-%m-%d"),
            hours=[(h, h * timeline.WIDTH / 24) for h in range(25)],
            next_link=self._link("/ui/day", {"date": day_text}, more),
        )

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _more(
        rows: list[dict[str, Any]],
        limit: int,
        key: Callable[[dict[str, Any]], tuple[str, tuple[Any, ...]]],
    ) -> tuple[list[dict[str, Any]], str | None]:
        if len(rows) <= limit:
            return rows, None
        kind, values = key(rows[limit - 1])
        return rows[:limit], make_cursor(kind, values)

    @staticmethod
    def _link(path: str, params: dict[str, Any], cursor: str | None) -> str | None:
        if cursor is None:
            return None
        return f"{path}?{urlencode({**params, 'cursor': cursor}, doseq=True)}"


def _completed_x(phases: timeline.Phases, axis: tuple[datetime, datetime] | None) -> float | None:
    if phases.ended is None or axis is None:
        return None
    return min(timeline.position(phases.ended, axis), timeline.WIDTH - 4)


def _given(request: Request) -> dict[str, Any]:
    return {k: (v if len(v) > 1 else v[0]) for k, v in request.query.items() if v and v[0]}


def _day_start(text: str | None, now: datetime) -> datetime:
    if text is None:
        return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"date {shown(text)} is not a day written YYYY-MM-DD") from None


def _row_phases(row: dict[str, Any]) -> timeline.Phases:
    """Phases of a listed conference: Twilio's times where the row has them."""
    completed = row.get("status") == "completed"
    return timeline.Phases(
        created=row.get("date_created"),  # never observed (not found): nothing to draw
        started=row.get("started_at"),
        ended=(row.get("date_updated") if completed else None) or row.get("ended_at"),
        last_seen=row.get("last_polled_at"),
    )
