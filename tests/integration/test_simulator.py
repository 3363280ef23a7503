"""The Twilio simulator over real loopback HTTP: every body it sends against Twilio's OpenAPI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from twilio.request_validator import RequestValidator

from monitor.domain import CALL_SID_RE, CONFERENCE_SID_RE
from monitor.simulator import (
    DEFAULT_AUTH_TOKEN,
    SimulatorControl,
    SimulatorControlError,
    SimulatorServer,
)
from tests.openapi import OPENAPI_PATH, REPO

SPEC_PATH = OPENAPI_PATH
SPEC_URI = "urn:twilio-conference-openapi"
FETCH = "/2010-04-01/Accounts/{AccountSid}/Conferences/{Sid}.json"
LIST = "/2010-04-01/Accounts/{AccountSid}/Conferences.json"
PARTICIPANTS = "/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}/Participants.json"
RFC2822_RE = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$")
JSON_TYPE = "application/json; charset=utf-8"
API_KEY, API_SECRET = "SK" + "7" * 32, "key-secret"
OTHER_ACCOUNT = "AC" + "6" * 32
T0 = datetime(2024, 1, 2, 12, 0, tzinfo=UTC).timestamp()


# -- the OpenAPI checker -------------------------------------------------------


def _allow_null_end_reason(doc: dict[str, Any]) -> None:
    """Twilio's own examples send `reason_conference_ended: null` while the enum it
    references is not nullable; the field's description says null until completed.
    This is the one adjustment the examples need (see test_twilio_examples_validate)."""
    enum = doc["components"]["schemas"]["conference_enum_reason_conference_ended"]
    enum["nullable"] = True
    enum["enum"] = [*enum["enum"], None]


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Spec:
    """Validates simulator responses against the schema of their path, method and status."""

    def __init__(self, path: Path, patched: bool = True) -> None:
        self.doc = json.loads(path.read_text())
        if patched:
            _allow_null_end_reason(self.doc)
        resource = Resource.from_contents(self.doc, default_specification=DRAFT4)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        schemas = self.doc["components"]["schemas"]
        self.conference_keys = set(schemas["api.v2010.account.conference"]["properties"])

    def validation_errors(self, path: str, method: str, status: int, body: Any) -> list[Any]:
        where = _pointer("paths", path, method, "responses", str(status))
        schema = {"$ref": f"{SPEC_URI}#/{where}/content/application~1json/schema"}
        validator = OAS30Validator(
            schema, registry=self.registry, format_checker=oas30_format_checker
        )
        return list(validator.iter_errors(body))

    def errors(self, path: str, method: str, status: int, body: Any) -> list[str]:
        found = self.validation_errors(path, method, status, body)
        return [f"{list(e.absolute_path)}: {e.message}" for e in found]

    def envelope_keys(self, path: str) -> set[str]:
        schema = self.doc["paths"][path]["get"]["responses"]["200"]["content"]
        return set(schema["application/json"]["schema"]["properties"])

    def check(self, path: str, method: str, response: requests.Response) -> Any:
        """The body, once it is known to be what Twilio would send for this status."""
        assert response.headers["Content-Type"] == JSON_TYPE
        body = response.json()
        if response.status_code >= 400:
            assert_twilio_error(body, response.status_code)
            return body
        assert self.errors(path, method, response.status_code, body) == []
        if path == FETCH:
            assert_conference(self, body)
        else:
            assert set(body) == self.envelope_keys(path)
            for conference in body.get("conferences", []):
                assert_conference(self, conference)
        return body


def assert_conference(spec: Spec, body: dict[str, Any]) -> None:
    # The schema requires nothing, so check every documented field is really there.
    assert set(body) == spec.conference_keys
    assert CONFERENCE_SID_RE.match(body["sid"])
    for name in ("date_created", "date_updated"):
        assert RFC2822_RE.match(body[name]), body[name]
        assert parsedate_to_datetime(body[name]).utcoffset() is not None


def assert_twilio_error(body: dict[str, Any], status: int, code: int | None = None) -> None:
    """The spec defines no error schema: check Twilio's documented error body instead."""
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["status"] == status
    assert isinstance(body["code"], int) and isinstance(body["message"], str)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{body['code']}"
    if code is not None:
        assert body["code"] == code


@pytest.fixture(scope="module")
def spec() -> Spec:
    assert SPEC_PATH.exists(), f"Twilio OpenAPI excerpt not found at {SPEC_PATH}"
    return Spec(SPEC_PATH)


# -- fixtures ------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(api_keys={API_KEY: API_SECRET}) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked(clock: FakeClock) -> Iterator[SimulatorServer]:
    # Lists every status when `Status` is absent, so filter tests need not name one.
    with SimulatorServer(clock=clock, list_default_status=None) as server:
        yield server


def _control(server: SimulatorServer) -> Iterator[SimulatorControl]:
    with SimulatorControl(server.url) as control:
        yield control


def _session(server: SimulatorServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        session.auth = (server.account_sid, DEFAULT_AUTH_TOKEN)
        yield session


@pytest.fixture
def ctl(sim: SimulatorServer) -> Iterator[SimulatorControl]:
    yield from _control(sim)


@pytest.fixture
def api(sim: SimulatorServer) -> Iterator[requests.Session]:
    yield from _session(sim)


@pytest.fixture
def clocked_ctl(clocked: SimulatorServer) -> Iterator[SimulatorControl]:
    yield from _control(clocked)


@pytest.fixture
def clocked_api(clocked: SimulatorServer) -> Iterator[requests.Session]:
    yield from _session(clocked)


def conf_url(sim: SimulatorServer, sid: str, account: str | None = None) -> str:
    return f"{sim.url}/2010-04-01/Accounts/{account or sim.account_sid}/Conferences/{sid}.json"


def list_url(sim: SimulatorServer, query: str = "", account: str | None = None) -> str:
    return f"{sim.url}/2010-04-01/Accounts/{account or sim.account_sid}/Conferences.json{query}"


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    """Poll until `condition()` is truthy; a deadline only to turn a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the spec itself -----------------------------------------------------------


def test_twilio_examples_validate_with_only_the_null_reason_adjustment() -> None:
    raw, patched = Spec(SPEC_PATH, patched=False), Spec(SPEC_PATH)
    count, raw_failures = 0, set()
    for path, item in patched.doc["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for status, response in op["responses"].items():
                for example in response["content"]["application/json"]["examples"].values():
                    count += 1
                    assert patched.errors(path, method, int(status), example["value"]) == []
                    for error in raw.validation_errors(path, method, int(status), example["value"]):
                        raw_failures.add(error.absolute_path[-1])
    assert count > 10
    assert raw_failures == {"reason_conference_ended"}


# -- fetch, update, participants -----------------------------------------------


def test_fetch_returns_the_conference_as_created(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    created = ctl.create_conference(friendly_name="standup", region="ie1")
    body = spec.check(FETCH, "get", api.get(conf_url(sim, created["sid"])))
    assert body == created
    assert body["status"] == "init" and body["region"] == "ie1"
    assert body["account_sid"] == sim.account_sid and body["api_version"] == "2010-04-01"
    assert body["uri"] == f"/2010-04-01/Accounts/{sim.account_sid}/Conferences/{body['sid']}.json"
    assert body["subresource_uris"]["participants"] == body["uri"][:-5] + "/Participants.json"
    assert body["reason_conference_ended"] is None and body["call_sid_ending_conference"] is None


@pytest.mark.parametrize(
    ("status", "reason", "call_sid"),
    [
        ("in-progress", None, None),
        ("completed", "last-participant-left", None),
        ("completed", "participant-with-end-conference-on-exit-kicked", "CA" + "b" * 32),
        ("completed", "conference-ended-via-api", "CA" + "c" * 32),
    ],
)
def test_fetch_in_every_status_validates(
    sim: SimulatorServer,
    ctl: SimulatorControl,
    api: requests.Session,
    spec: Spec,
    status: str,
    reason: str | None,
    call_sid: str | None,
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.set_status(sid, status, reason, call_sid)
    body = spec.check(FETCH, "get", api.get(conf_url(sim, sid)))
    assert (body["status"], body["reason_conference_ended"]) == (status, reason)
    if reason == "conference-ended-via-api" or status != "completed":
        assert body["call_sid_ending_conference"] is None
    else:
        assert CALL_SID_RE.match(body["call_sid_ending_conference"])
        assert call_sid in (None, body["call_sid_ending_conference"])


def test_update_ends_the_conference_via_api(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference(status="in-progress")["sid"]
    body = spec.check(FETCH, "post", api.post(conf_url(sim, sid), data={"Status": "completed"}))
    assert body["status"] == "completed"
    assert body["reason_conference_ended"] == "conference-ended-via-api"
    assert body["call_sid_ending_conference"] is None
    assert [t["status"] for t in ctl.transitions(sid)] == ["in-progress", "completed"]
    again = spec.check(FETCH, "post", api.post(conf_url(sim, sid), data={"Status": "completed"}))
    assert again == body


def test_update_accepts_announce_and_rejects_other_statuses(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference(status="in-progress")["sid"]
    announce = {"AnnounceUrl": "http://example.com/a.xml", "AnnounceMethod": "GET"}
    assert spec.check(FETCH, "post", api.post(conf_url(sim, sid), data=announce))["status"] == (
        "in-progress"
    )
    bad = api.post(conf_url(sim, sid), data={"Status": "in-progress"})
    assert bad.status_code == 400
    assert_twilio_error(spec.check(FETCH, "post", bad), 400, 20001)


def test_participants_is_an_empty_valid_page(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    created = ctl.create_conference()
    url = sim.url + created["subresource_uris"]["participants"]
    body = spec.check(PARTICIPANTS, "get", api.get(url))
    assert body["participants"] == [] and body["next_page_uri"] is None
    missing = api.get(url.replace(created["sid"], "CF" + "0" * 32))
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/2010-04-01/Accounts/{account}/Conferences/CF" + "0" * 32 + ".json",
        "/2010-04-01/Accounts/{account}/Conferences/not-a-sid.json",
        "/2010-04-01/Accounts/{account}/Calls.json",
        "/2010-04-01/Accounts/{other}/Conferences/{sid}.json",
        "/2010-04-01/Accounts/{unknown}/Conferences.json",
        "/nothing/here",
    ],
)
def test_unknown_resources_are_twilio_404s(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, path: str
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.create_conference(account_sid=OTHER_ACCOUNT)  # exists, but does not own `sid`
    unknown = "AC" + "9" * 32
    path = path.format(account=sim.account_sid, other=OTHER_ACCOUNT, unknown=unknown, sid=sid)
    response = api.get(sim.url + path)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == JSON_TYPE
    assert_twilio_error(response.json(), 404, 20404)


def test_a_subaccount_conference_is_read_through_its_own_path(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference(account_sid=OTHER_ACCOUNT)["sid"]
    assert spec.check(FETCH, "get", api.get(conf_url(sim, sid, OTHER_ACCOUNT)))["sid"] == sid
    assert api.get(conf_url(sim, sid)).status_code == 404
    listed = spec.check(LIST, "get", api.get(list_url(sim, "?Status=init", OTHER_ACCOUNT)))
    assert [c["sid"] for c in listed["conferences"]] == [sid]


def test_method_not_allowed_is_a_twilio_error(sim: SimulatorServer, api: requests.Session) -> None:
    response = api.put(list_url(sim))
    assert response.status_code == 405
    assert_twilio_error(response.json(), 405, 20004)


# -- authentication ------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (None, 200),  # the account SID and its auth token
        ((API_KEY, API_SECRET), 200),
        ("wrong-token", 401),
        ((API_KEY, "wrong-secret"), 401),
        (("SK" + "8" * 32, API_SECRET), 401),
        ((), 401),
    ],
)
def test_basic_auth(
    sim: SimulatorServer, ctl: SimulatorControl, auth: Any, status: int, spec: Spec
) -> None:
    sid = ctl.create_conference()["sid"]
    if auth == "wrong-token":
        auth = (sim.account_sid, "not-the-token")
    elif auth is None:
        auth = (sim.account_sid, DEFAULT_AUTH_TOKEN)
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(conf_url(sim, sid), auth=auth or None)
    assert response.status_code == status
    body = spec.check(FETCH, "get", response)
    if status == 401:
        assert body == {
            "code": 20003,
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401,
        }


# -- list: envelope, filters, paging ---------------------------------------------


def test_empty_list_page_validates(sim: SimulatorServer, api: requests.Session, spec: Spec) -> None:
    body = spec.check(LIST, "get", api.get(list_url(sim, "?Status=in-progress")))
    assert body["conferences"] == []
    assert (body["page"], body["page_size"], body["start"], body["end"]) == (0, 50, 0, 0)
    assert body["next_page_uri"] is None and body["previous_page_uri"] is None
    assert body["uri"] == body["first_page_uri"]
    assert body["uri"].endswith("/Conferences.json?Status=in-progress&PageSize=50&Page=0")


def test_list_without_status_shows_only_in_progress_by_default(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    """Twilio's documented default since 2026-09-30 (twilio-python 9.x list docs)."""
    live = ctl.create_conference(status="in-progress")["sid"]
    ctl.create_conference()
    ctl.create_conference(status="completed")
    body = spec.check(LIST, "get", api.get(list_url(sim)))
    assert [c["sid"] for c in body["conferences"]] == [live]
    assert "Status" not in body["uri"]


def test_list_without_status_can_show_every_status(
    clocked_ctl: SimulatorControl, clocked: SimulatorServer, clocked_api: requests.Session
) -> None:
    sids = {clocked_ctl.create_conference(status=s)["sid"] for s in ("init", "completed")}
    body = clocked_api.get(list_url(clocked)).json()
    assert {c["sid"] for c in body["conferences"]} == sids


def test_paging_follows_next_page_uri_to_every_conference_once(
    clocked: SimulatorServer,
    clocked_ctl: SimulatorControl,
    clocked_api: requests.Session,
    clock: FakeClock,
    spec: Spec,
) -> None:
    created = []
    for i in range(8):
        clock.now = T0 + i
        created.append(clocked_ctl.create_conference(friendly_name=f"room-{i}")["sid"])
    pages = [spec.check(LIST, "get", clocked_api.get(list_url(clocked, "?PageSize=3")))]
    while pages[-1]["next_page_uri"]:
        assert len(pages) < 10, "paging does not end"
        response = clocked_api.get(clocked.url + pages[-1]["next_page_uri"])
        pages.append(spec.check(LIST, "get", response))
    listed = [c["sid"] for page in pages for c in page["conferences"]]
    assert listed == created[::-1]  # newest first, each exactly once
    assert [(p["page"], p["start"], p["end"]) for p in pages] == [(0, 0, 2), (1, 3, 5), (2, 6, 7)]
    assert all("PageToken=" in p["uri"] for p in pages[1:])
    assert {p["first_page_uri"] for p in pages} == {pages[0]["uri"]}
    back = spec.check(LIST, "get", clocked_api.get(clocked.url + pages[2]["previous_page_uri"]))
    assert back["conferences"] == pages[1]["conferences"] and back["page"] == 1


def test_a_conference_created_while_paging_does_not_shift_later_pages(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    expected = {ctl.create_conference()["sid"] for _ in range(4)}
    first = spec.check(LIST, "get", api.get(list_url(sim, "?Status=init&PageSize=2")))
    ctl.create_conference()  # newer: sorts before everything already paged
    second = spec.check(LIST, "get", api.get(sim.url + first["next_page_uri"]))
    seen = [c["sid"] for c in first["conferences"] + second["conferences"]]
    assert len(seen) == 4 and set(seen) == expected


def test_list_filters_by_status_and_friendly_name(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    live = {ctl.create_conference(friendly_name="a", status="in-progress")["sid"] for _ in range(3)}
    ctl.create_conference(friendly_name="a")
    ended = ctl.create_conference(friendly_name="b", status="completed")["sid"]
    body = spec.check(LIST, "get", api.get(list_url(sim, "?Status=in-progress&PageSize=1000")))
    assert {c["sid"] for c in body["conferences"]} == live
    query = {"FriendlyName": "b", "Status": "completed"}
    body = spec.check(LIST, "get", api.get(list_url(sim), params=query))
    assert [c["sid"] for c in body["conferences"]] == [ended]
    assert "FriendlyName=b" in body["uri"]


@pytest.mark.parametrize(
    ("query", "expected_days"),
    [
        ("DateCreated=2024-01-03", [3]),
        ("DateCreated<=2024-01-03", [2, 3]),
        ("DateCreated>=2024-01-03", [3, 4]),
        ("DateCreated>=2024-01-03&DateCreated<=2024-01-03", [3]),
        ("DateUpdated=2024-01-05", [4]),
        ("DateUpdated<=2024-01-04", [2, 3]),
    ],
)
def test_list_filters_by_date(
    clocked: SimulatorServer,
    clocked_ctl: SimulatorControl,
    clocked_api: requests.Session,
    clock: FakeClock,
    spec: Spec,
    query: str,
    expected_days: list[int],
) -> None:
    by_day = {}
    for day in (2, 3, 4):
        clock.now = datetime(2024, 1, day, 23, 0, tzinfo=UTC).timestamp()
        by_day[day] = clocked_ctl.create_conference()["sid"]
    clock.now = datetime(2024, 1, 5, 1, 0, tzinfo=UTC).timestamp()
    clocked_ctl.set_status(by_day[4], "in-progress")  # updated on the 5th
    body = spec.check(LIST, "get", clocked_api.get(list_url(clocked, "?" + query)))
    assert [c["sid"] for c in body["conferences"]] == [by_day[d] for d in sorted(expected_days)][
        ::-1
    ]
    for pair in parse_qsl(query):
        assert urlencode([pair]) in body["uri"]  # filters are echoed, `<` as %3C


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("PageSize=1001", 20001),
        ("PageSize=0", 20001),
        ("PageSize=ten", 20001),
        ("DateCreated=2024-01-02T10:00:00Z", 20001),
        ("DateUpdated>=2024-01-02 10:00", 20001),
        ("Status=ringing", 20001),
        ("Page=2", 20001),
        ("Page=1&PageToken=made-up", 21481),
        ("Page=1&PageToken=PACF" + "d" * 32, 21481),
    ],
)
def test_bad_list_queries_are_400s(
    sim: SimulatorServer,
    ctl: SimulatorControl,
    api: requests.Session,
    spec: Spec,
    query: str,
    code: int,
) -> None:
    ctl.create_conference()
    response = api.get(list_url(sim, "?" + query))
    assert response.status_code == 400
    assert_twilio_error(spec.check(LIST, "get", response), 400, code)


def test_a_token_from_another_account_is_invalid(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session
) -> None:
    other = ctl.create_conference(account_sid=OTHER_ACCOUNT)["sid"]
    response = api.get(list_url(sim, f"?Page=1&PageToken=PA{other}"))
    assert response.status_code == 400 and response.json()["code"] == 21481


# -- lifecycle: scripts, manual changes, hidden conferences ---------------------------


def test_script_walks_the_lifecycle_on_the_servers_own_clock(
    ctl: SimulatorControl, sim: SimulatorServer, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference(friendly_name="scripted")["sid"]
    steps = [
        {"after_s": 0.05, "status": "in-progress"},
        {"after_s": 0.1, "status": "completed", "reason": "last-participant-kicked"},
    ]
    assert ctl.script(sid, steps) == 2
    final = wait_for(lambda: ctl.transitions(sid)[2:], "the script to finish")
    transitions = ctl.transitions(sid)
    assert [t["status"] for t in transitions] == ["init", "in-progress", "completed"]
    assert [t["reason"] for t in transitions] == [None, None, "last-participant-kicked"]
    assert CALL_SID_RE.match(final[0]["call_sid"])
    assert transitions[0]["at"] < transitions[1]["at"] < transitions[2]["at"]
    body = spec.check(FETCH, "get", api.get(conf_url(sim, sid)))
    assert body["reason_conference_ended"] == "last-participant-kicked"


def test_script_steps_are_applied_lazily_at_their_scheduled_time(
    clocked: SimulatorServer,
    clocked_ctl: SimulatorControl,
    clocked_api: requests.Session,
    clock: FakeClock,
    spec: Spec,
) -> None:
    sid = clocked_ctl.create_conference()["sid"]
    call = "CA" + "e" * 32
    end = {
        "after_s": 20,
        "status": "completed",
        "reason": "last-participant-left",
        "call_sid": call,
    }
    clocked_ctl.script(sid, [{"after_s": 10, "status": "in-progress"}, end])
    clock.now = T0 + 15
    assert spec.check(FETCH, "get", clocked_api.get(conf_url(clocked, sid)))["status"] == (
        "in-progress"
    )
    clock.now = T0 + 99
    listed = spec.check(LIST, "get", clocked_api.get(list_url(clocked, "?Status=completed")))
    assert [c["call_sid_ending_conference"] for c in listed["conferences"]] == [call]
    assert [t["at"] for t in clocked_ctl.transitions(sid)] == [T0, T0 + 10, T0 + 20]


def test_a_new_script_replaces_pending_steps(
    clocked_ctl: SimulatorControl, clock: FakeClock
) -> None:
    sid = clocked_ctl.create_conference()["sid"]
    clocked_ctl.script(sid, [{"after_s": 5, "status": "completed"}])
    clocked_ctl.script(sid, [{"after_s": 10, "status": "in-progress"}])
    clock.now = T0 + 60
    assert [t["status"] for t in clocked_ctl.transitions(sid)] == ["init", "in-progress"]


def test_status_may_go_backwards_for_regression_tests(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference(status="completed")["sid"]
    ctl.set_status(sid, "in-progress")
    ctl.set_status(sid, "init")
    body = spec.check(FETCH, "get", api.get(conf_url(sim, sid)))
    assert body["status"] == "init" and body["reason_conference_ended"] is None
    assert [t["status"] for t in ctl.transitions(sid)] == ["completed", "in-progress", "init"]


def test_hidden_conference_is_404_then_found(
    clocked: SimulatorServer,
    clocked_ctl: SimulatorControl,
    clocked_api: requests.Session,
    clock: FakeClock,
    spec: Spec,
) -> None:
    sid = clocked_ctl.create_conference(hidden_for_s=2)["sid"]
    early = clocked_api.get(conf_url(clocked, sid))
    assert early.status_code == 404
    assert_twilio_error(spec.check(FETCH, "get", early), 404, 20404)
    assert spec.check(LIST, "get", clocked_api.get(list_url(clocked)))["conferences"] == []
    assert clocked_ctl.conference(sid)["sid"] == sid  # the control view sees it
    clock.now = T0 + 2
    assert spec.check(FETCH, "get", clocked_api.get(conf_url(clocked, sid)))["sid"] == sid
    listed = spec.check(LIST, "get", clocked_api.get(list_url(clocked)))["conferences"]
    assert [c["sid"] for c in listed] == [sid]


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda c: c.create_conference(status="ringing"), 400),
        (lambda c: c.create_conference(sid="CF123"), 400),
        (lambda c: c.create_conference(account_sid="AC1"), 400),
        (lambda c: c.set_status("CF" + "0" * 32, "init"), 404),
        (lambda c: c.set_status(c.create_conference()["sid"], "completed", "bored"), 400),
        (lambda c: c.set_status(c.create_conference()["sid"], "completed", None, "CA1"), 400),
        (lambda c: c.script(c.create_conference()["sid"], [{"status": "completed"}]), 400),
        (lambda c: c.add_fault("418"), 400),
        (lambda c: c.add_fault("429", count=0), 400),
        (lambda c: c.add_fault("429", retry=5), 400),
        (lambda c: c.create_conference(friendlyname="typo"), 400),
        (lambda c: c.create_conference(status_callback="ftp://x"), 400),
        (lambda c: c._call("GET", "/_sim/nowhere"), 404),
    ],
)
def test_control_rejects_bad_requests(
    ctl: SimulatorControl, call: Callable[[SimulatorControl], Any], status: int
) -> None:
    with pytest.raises(SimulatorControlError) as err:
        call(ctl)
    assert err.value.status == status


def test_duplicate_sid_is_rejected(ctl: SimulatorControl) -> None:
    sid = "CF" + "a" * 32
    assert ctl.create_conference(sid=sid)["sid"] == sid
    with pytest.raises(SimulatorControlError, match="already exists"):
        ctl.create_conference(sid=sid)


# -- faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code"),
    [("429", 20429), ("500", 20500), ("503", 20503), ("404", 20404), ("401", 20003)],
)
def test_error_faults_are_served_count_times(
    sim: SimulatorServer,
    ctl: SimulatorControl,
    api: requests.Session,
    spec: Spec,
    kind: str,
    code: int,
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault(kind, count=2)
    statuses = []
    for _ in range(3):
        response = api.get(conf_url(sim, sid))
        body = spec.check(FETCH, "get", response)
        statuses.append(response.status_code)
        if response.status_code >= 400:
            assert body["code"] == code
    assert statuses == [int(kind), int(kind), 200]
    assert ctl.stats()["faults_served"] == 2


@pytest.mark.parametrize(("retry_after", "header"), [(3, "3"), (0.5, "0.5"), (None, None)])
def test_429_retry_after_is_present_only_when_asked(
    sim: SimulatorServer,
    ctl: SimulatorControl,
    api: requests.Session,
    retry_after: float | None,
    header: str | None,
) -> None:
    options = {} if retry_after is None else {"retry_after": retry_after}
    ctl.add_fault("429", **options)
    response = api.get(list_url(sim))
    assert response.status_code == 429
    assert response.headers.get("Retry-After") == header
    assert_twilio_error(response.json(), 429, 20429)


def test_garbage_fault_is_a_200_that_is_not_json(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session
) -> None:
    ctl.add_fault("garbage", count=1)
    response = api.get(list_url(sim))
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert api.get(list_url(sim)).json()["conferences"] == []


def test_delay_fault_delays_then_answers_normally(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("delay", delay_s=30, count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.get(conf_url(sim, sid), timeout=0.2)
    ctl.add_fault("delay", delay_s=0.01, count=1)
    assert spec.check(FETCH, "get", api.get(conf_url(sim, sid)))["sid"] == sid
    assert ctl.stats()["faults_served"] == 2


def test_a_patient_client_gets_the_whole_dripped_body(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("drip", sid=sid, delay_s=0.001, count=1)
    assert spec.check(FETCH, "get", api.get(conf_url(sim, sid), timeout=30)) == ctl.conference(sid)
    # The server counts the stream once its last write returns, which can be just
    # after the client has read the last byte.
    deadline = time.monotonic() + 10
    while ctl.stats()["streamed_bytes"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = ctl.stats()
    assert stats["streams_cut"] == 0 and stats["streamed_bytes"] > 500


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_huge_body_is_valid_json_of_the_size_asked(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, framing: str
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("huge", sid=sid, size_bytes=200_000, framing=framing, count=1)
    response = api.get(conf_url(sim, sid))
    assert len(response.content) == 200_000
    assert response.json() | {"x_padding": None} == ctl.conference(sid) | {"x_padding": None}
    expected = {"length": "200000", "chunked": None, "close": None}[framing]
    assert response.headers.get("Content-Length") == expected


def test_bulk_conferences_list_as_valid_pages(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, spec: Spec
) -> None:
    sids = ctl.create_conferences(7, status="in-progress", friendly_name="r{n}")
    query = "?Status=in-progress&PageSize=3"
    pages = [spec.check(LIST, "get", api.get(list_url(sim, query)))]
    while pages[-1]["next_page_uri"]:
        pages.append(spec.check(LIST, "get", api.get(sim.url + pages[-1]["next_page_uri"])))
    assert sorted(c["sid"] for p in pages for c in p["conferences"]) == sorted(sids)
    assert [len(p["conferences"]) for p in pages] == [3, 3, 1]


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "drip"},  # needs delay_s
        {"kind": "huge"},  # needs size_bytes
        {"kind": "huge", "size_bytes": 10, "framing": "smoke"},
        {"kind": "loop", "sid": "CF" + "a" * 32},
        {"kind": "mismatch", "field": "friendly_name"},
    ],
)
def test_hostile_faults_refuse_incomplete_options(
    ctl: SimulatorControl, options: dict[str, Any]
) -> None:
    kind = options.pop("kind")
    with pytest.raises(SimulatorControlError) as caught:
        ctl.add_fault(kind, **options)
    assert caught.value.status == 400


def test_faults_match_by_sid_in_order_and_can_be_cleared(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session
) -> None:
    a, b = ctl.create_conference()["sid"], ctl.create_conference()["sid"]
    ctl.add_fault("500", sid=a, count=1)
    ctl.add_fault("503", sid=a, count=1)
    assert api.get(conf_url(sim, b)).status_code == 200
    assert [api.get(conf_url(sim, a)).status_code for _ in range(3)] == [500, 503, 200]
    ctl.add_fault("503")  # unlimited
    assert [api.get(conf_url(sim, b)).status_code for _ in range(2)] == [503, 503]
    assert ctl.stats()["faults_served"] == 4  # and the control routes are never faulted
    assert ctl.clear_faults() == 1
    assert api.get(conf_url(sim, b)).status_code == 200


def test_fault_for_s_expires_on_the_clock(
    clocked: SimulatorServer,
    clocked_ctl: SimulatorControl,
    clocked_api: requests.Session,
    clock: FakeClock,
) -> None:
    clocked_ctl.add_fault("500", for_s=5)
    assert clocked_api.get(list_url(clocked)).status_code == 500
    clock.now = T0 + 5
    assert clocked_api.get(list_url(clocked)).status_code == 200


def test_served_within_counts_conferences_answered_recently(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session
) -> None:
    """What a benchmark needs to tell "every watch observed this interval" from
    "as many observations as watches": distinct conferences, fetched or listed."""
    fetched, listed, idle = (ctl.create_conference()["sid"] for _ in range(3))
    ctl.script(idle, [{"after_s": 0, "status": "completed"}])
    assert api.get(conf_url(sim, fetched)).status_code == 200
    assert api.get(conf_url(sim, fetched)).status_code == 200
    page = api.get(list_url(sim), params={"Status": "init"}).json()
    assert {c["sid"] for c in page["conferences"]} == {fetched, listed}
    assert ctl.served_within(60) == 2
    time.sleep(0.3)
    assert api.get(conf_url(sim, fetched)).status_code == 200
    assert ctl.served_within(0.2) == 1
    with pytest.raises(SimulatorControlError):
        ctl.served_within(0)


def test_stats_count_requests_by_kind_and_reset_clears_everything(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session
) -> None:
    sid = ctl.create_conference()["sid"]
    api.get(conf_url(sim, sid))
    api.get(conf_url(sim, sid))
    api.get(list_url(sim))
    ctl.add_fault("500", count=1)
    api.post(conf_url(sim, sid), data={"Status": "completed"})
    assert ctl.stats() == {
        "requests": 4,
        "by_kind": {"fetch": 2, "list": 1, "update": 1},
        "faults_served": 1,
        "streamed_bytes": 0,
        "streams_cut": 0,
    }
    ctl.add_fault("503")
    ctl.reset()
    assert ctl.stats() == {
        "requests": 0,
        "by_kind": {"fetch": 0, "list": 0, "update": 0},
        "faults_served": 0,
        "streamed_bytes": 0,
        "streams_cut": 0,
    }
    assert api.get(conf_url(sim, sid)).status_code == 404  # gone, and not a 503


# -- status callbacks ------------------------------------------------------------


class Receiver:
    """A real loopback HTTP server recording every POST it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], dict[str, str]]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                received.append((self.path, dict(self.headers), dict(parse_qsl(body))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,))
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_status_callbacks_are_signed_and_complete(
    sim: SimulatorServer, ctl: SimulatorControl, receiver: Receiver
) -> None:
    callback = receiver.url + "/twilio/events?tenant=42"
    sid = ctl.create_conference(friendly_name="signed", status_callback=callback)["sid"]
    call = "CA" + "f" * 32
    reason = "participant-with-end-conference-on-exit-left"
    end = {"after_s": 0.04, "status": "completed", "reason": reason, "call_sid": call}
    ctl.script(sid, [{"after_s": 0.02, "status": "in-progress"}, end])
    wait_for(lambda: len(receiver.received) >= 2, "two callbacks")
    validator = RequestValidator(DEFAULT_AUTH_TOKEN)
    events = []
    for path, headers, form in receiver.received:
        assert urlsplit(callback).path + "?tenant=42" == path
        assert validator.validate(callback, form, headers["X-Twilio-Signature"])
        assert not RequestValidator("another-token").validate(
            callback, form, headers["X-Twilio-Signature"]
        )
        assert (form["ConferenceSid"], form["FriendlyName"]) == (sid, "signed")
        assert form["AccountSid"] == sim.account_sid
        assert RFC2822_RE.match(form["Timestamp"])
        events.append(form)
    assert [(e["StatusCallbackEvent"], e["SequenceNumber"]) for e in events] == [
        ("conference-start", "1"),
        ("conference-end", "2"),
    ]
    assert "ReasonConferenceEnded" not in events[0]
    assert events[1]["ReasonConferenceEnded"] == "participant-with-end-conference-on-exit-left"
    assert events[1]["CallSidEndingConference"] == call


def test_an_api_end_callback_has_no_ending_call(
    sim: SimulatorServer, ctl: SimulatorControl, api: requests.Session, receiver: Receiver
) -> None:
    callback = receiver.url + "/cb"
    sid = ctl.create_conference(status="in-progress", status_callback=callback)["sid"]
    api.post(conf_url(sim, sid), data={"Status": "completed"})
    wait_for(lambda: len(receiver.received) >= 2, "two callbacks")
    end = receiver.received[1][2]
    assert end["StatusCallbackEvent"] == "conference-end"
    assert end["ReasonConferenceEnded"] == "conference-ended-via-api"
    assert "CallSidEndingConference" not in end
    assert RequestValidator(DEFAULT_AUTH_TOKEN).validate(
        callback, end, receiver.received[1][1]["X-Twilio-Signature"]
    )


def test_a_failed_callback_is_dropped_and_the_simulator_carries_on(
    sim: SimulatorServer,
    ctl: SimulatorControl,
    api: requests.Session,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = Receiver()
    dead_url = dead.url
    dead.close()  # nothing listens there any more
    ctl.create_conference(status="in-progress", status_callback=dead_url + "/cb")
    ctl.create_conference(status="in-progress", status_callback=receiver.url + "/cb")
    wait_for(lambda: receiver.received, "the callback after the failed one")
    assert "simulator_callback_failed" in caplog.text
    assert api.get(list_url(sim)).status_code == 200


# -- the CLI entry point ---------------------------------------------------------


def test_serve_forever_prints_how_to_connect_and_stops_on_sigterm() -> None:
    code = "from monitor.simulator import serve_forever; serve_forever('127.0.0.1', 0)"
    with subprocess.Popen(
        [sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert url, first
        with requests.Session() as session:
            session.trust_env = False
            assert session.get(url.group(0) + "/_sim/stats").status_code == 200
        proc.terminate()
        rest = proc.stdout.read()
        assert proc.wait() == 0
    assert "auth token simulator-auth-token" in rest and "stopped" in rest
