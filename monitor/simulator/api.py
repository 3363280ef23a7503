"""The Twilio Conference API as the simulator serves it: routes, list paging, errors.

Faults are served first (they stand for the network and Twilio's edge), then
Basic auth, then the fetch, update, list and participants routes. Every body
sent is meant to validate against Twilio's OpenAPI description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson

from monitor.simulator.faults import ERROR_KINDS, HOSTILE_KINDS
from monitor.simulator.hostile import bend
from monitor.simulator.replies import JSON_TYPE, Reply, json_reply, twilio_error
from monitor.simulator.state import STATUSES, DateRange, ListQuery, SimulatorError

if TYPE_CHECKING:
    from monitor.simulator.server import SimulatorServer

__all__ = ["JSON_TYPE", "Reply", "handle_api", "json_reply", "twilio_error"]

MAX_PAGE_SIZE = 1000

_API = r"^/2010-04-01/Accounts/(?P<account>AC[0-9a-fA-F]{32})/Conferences"
LIST_RE = re.compile(_API + r"\.json$")
CONFERENCE_RE = re.compile(_API + r"/(?P<sid>[^/]+)\.json$")
PARTICIPANTS_RE = re.compile(_API + r"/(?P<sid>[^/]+)/Participants\.json$")


def _kind(method: str, path: str) -> str:
    if LIST_RE.match(path):
        return "list"
    if CONFERENCE_RE.match(path):
        return "update" if method == "POST" else "fetch"
    return "participants" if PARTICIPANTS_RE.match(path) else "other"


def handle_api(
    sim: SimulatorServer, method: str, path: str, query: str, body: bytes, headers: Any
) -> Reply:
    """Faults first (they model the network and Twilio's edge), then auth, then routes;
    a hostile fault then bends the successful answer."""
    kind = _kind(method, path)
    fault = sim.faults.take(path, kind)
    sim.stats.record(kind, faulted=fault is not None)
    if fault is not None and fault.kind in ERROR_KINDS:
        return _fault_reply(fault.kind, fault.retry_after)
    if fault is not None and fault.kind == "delay":
        sim.wait(fault.delay_s)
    if not sim.authenticated(headers.get("Authorization")):
        return twilio_error(401, 20003)
    params = dict(parse_qsl(query))
    try:
        reply = _route(sim, method, path, params, body)
    except SimulatorError as err:
        return twilio_error(err.status, err.code, err.message)
    if fault is not None and fault.kind in HOSTILE_KINDS:
        reply = bend(fault, reply, params)
    return reply


def _fault_reply(kind: str, retry_after: float | None) -> Reply:
    if kind == "garbage":
        return Reply(200, b"<html>oops")  # labelled JSON, as a broken proxy might
    reply = twilio_error(int(kind), {"401": 20003, "404": 20404}.get(kind, 20000 + int(kind)))
    if kind == "429" and retry_after is not None:
        reply.headers["Retry-After"] = f"{retry_after:g}"
    return reply


def _route(
    sim: SimulatorServer, method: str, path: str, params: dict[str, str], body: bytes
) -> Reply:
    state = sim.state
    if m := LIST_RE.match(path):
        _require(method, "GET")
        return Reply(200, list_body(sim, m["account"], params))
    if m := CONFERENCE_RE.match(path):
        _require(method, "GET", "POST")
        if method == "POST":
            conf = _update(sim, m["account"], m["sid"], dict(parse_qsl(body.decode())))
            return json_reply(200, conf) if conf else _not_found(path)
        found = state.fetch(m["account"], m["sid"])
        return Reply(200, found) if found else _not_found(path)
    if m := PARTICIPANTS_RE.match(path):
        _require(method, "GET")
        if not state.get(m["account"], m["sid"]):
            return _not_found(path)
        return json_reply(200, _participants_envelope(path, _page_size(params)))
    return _not_found(path)


def _not_found(path: str) -> Reply:
    return twilio_error(404, 20404, f"The requested resource {path} was not found")


def _require(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise SimulatorError(405, 20004, f"Method {method} not allowed")


def _update(
    sim: SimulatorServer, account: str, sid: str, form: dict[str, str]
) -> dict[str, Any] | None:
    status = form.get("Status")
    if status is None:  # AnnounceUrl / AnnounceMethod only: accepted, nothing to simulate
        return sim.state.get(account, sid)
    if status != "completed":
        raise SimulatorError(400, 20001, f"Invalid Status {status!r}: only 'completed'")
    return sim.state.end_via_api(account, sid)


def _page_size(params: Mapping[str, str]) -> int:
    raw = params.get("PageSize", "50")
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise SimulatorError(400, 20001, f"PageSize must be 1..{MAX_PAGE_SIZE}, got {raw!r}")
    return size


def _page_number(params: Mapping[str, str]) -> int:
    raw = params.get("Page", "0")
    if not raw.isdigit():
        raise SimulatorError(400, 20001, f"Page must be a whole number, got {raw!r}")
    if int(raw) > 0 and "PageToken" not in params:
        raise SimulatorError(400, 20001, "Page > 0 needs a PageToken: follow next_page_uri")
    return int(raw)


def _date(params: Mapping[str, str], name: str) -> date | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise SimulatorError(400, 20001, f"{name} must be YYYY-MM-DD, got {raw!r}") from None


def _date_range(params: Mapping[str, str], name: str) -> DateRange:
    return DateRange(_date(params, name), _date(params, name + "<"), _date(params, name + ">"))


FILTERS = ("Status", "FriendlyName") + tuple(
    f"{field}{op}" for field in ("DateCreated", "DateUpdated") for op in ("", "<", ">")
)


def parse_list_query(params: Mapping[str, str], default_status: str | None = None) -> ListQuery:
    """`default_status` applies when no `Status` is given (Twilio: in-progress since 2026-09-30)."""
    status = params.get("Status", default_status)
    if status is not None and status not in STATUSES:
        raise SimulatorError(400, 20001, f"Status must be one of {STATUSES}, got {status!r}")
    return ListQuery(
        status=status,
        friendly_name=params.get("FriendlyName"),
        created=_date_range(params, "DateCreated"),
        updated=_date_range(params, "DateUpdated"),
        page_size=_page_size(params),
        page_token=params.get("PageToken"),
    )


def list_body(sim: SimulatorServer, account: str, params: Mapping[str, str]) -> bytes:
    """The list page with Twilio's envelope; URIs keep the filters, `PageToken` is opaque.

    The conferences' cached JSON is spliced in as bytes: a page of 1,000 costs a join.
    """
    if account != sim.account_sid and not sim.state.has_account(account):
        raise SimulatorError(404, 20404, f"Account {account} not found")
    query = parse_list_query(params, sim.list_default_status)
    page = _page_number(params)
    found = sim.state.list_page(account, query)
    filters = [(k, params[k]) for k in FILTERS if k in params]
    base = f"/2010-04-01/Accounts/{account}/Conferences.json"

    def uri(number: int, token: str | None) -> str:
        pairs = [*filters, ("PageSize", str(query.page_size)), ("Page", str(number))]
        return f"{base}?{urlencode(pairs + ([('PageToken', token)] if token else []))}"

    start = page * query.page_size
    rest = {
        "first_page_uri": uri(0, None),
        "next_page_uri": uri(page + 1, found.next_token) if found.next_token else None,
        "previous_page_uri": (
            uri(page - 1, found.previous_token) if found.previous_token and page > 0 else None
        ),
        "page": page,
        "page_size": query.page_size,
        "start": start,
        "end": start + max(len(found.conferences) - 1, 0),
        "uri": uri(page, query.page_token),
    }
    return b'{"conferences":[' + b",".join(found.conferences) + b"]," + orjson.dumps(rest)[1:]


def _participants_envelope(path: str, page_size: int) -> dict[str, Any]:
    uri = f"{path}?PageSize={page_size}&Page=0"
    return {
        "participants": [],
        "first_page_uri": uri,
        "next_page_uri": None,
        "previous_page_uri": None,
        "page": 0,
        "page_size": page_size,
        "start": 0,
        "end": 0,
        "uri": uri,
    }
