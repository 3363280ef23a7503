"""The history API over real HTTP on loopback, against a real SQLite file and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.api.auth import token_digest
from monitor.api.routes import register
from monitor.config import Settings, load_settings
from monitor.db.engine import make_engine, upgrade
from monitor.domain import EventType
from monitor.httpapi import HealthServer
from monitor.metrics import Metrics
from tests.historydata import ACCOUNT, add_conference, add_watch_event, sid

T0 = datetime(2026, 11, 20, tzinfo=UTC)
TOKEN = "test-token-0123456789abcdef"
OTHER = "AC" + "b" * 32
REASONS = ("last-participant-left", "conference-ended-via-api")


def seed(engine: Engine) -> None:
    """Ten conferences an hour apart (eight finished), a not-found watch, an auth
    failure, and three conferences watched at the very same instant."""
    for n in range(10):
        created = T0 + timedelta(hours=n)
        add_conference(
            engine,
            n,
            created=created,
            started=created + timedelta(minutes=1),
            ended=created + timedelta(minutes=10 + n) if n < 8 else None,
            reason=REASONS[n % 2] if n < 8 else None,
            label="team-a" if n < 5 else "team-b",
            account=OTHER if n == 9 else ACCOUNT,
            detail_snapshots=1 if n == 0 else 0,
        )
    add_watch_event(engine, EventType.WATCH_NOT_FOUND, T0 + timedelta(hours=12), n=50)
    add_watch_event(engine, EventType.WATCH_AUTH_FAILED, T0 + timedelta(hours=13))
    for n in (20, 21, 22):
        add_conference(engine, n, created=T0 + timedelta(hours=15))


@dataclass
class Api:
    base: str
    engine: Engine
    url: str
    settings: Settings

    def get(self, path: str, token: str | None = TOKEN, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.base + path, params=params, headers=headers, timeout=10)

    def ok(self, path: str, **params: Any) -> Any:
        resp = self.get(path, **params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def walk(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a listing, page by page."""
        items: list[dict[str, Any]] = []
        cursor = params.pop("cursor", None)
        for _ in range(1000):
            page = self.ok(path, **params, **({"cursor": cursor} if cursor else {}))
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items
            assert page["items"], "a page with a cursor must not be empty"
        raise AssertionError("paging never ended")


def settings_for(url: str, **env: str) -> Settings:
    return load_settings(
        None,
        {
            "CONFERENCE_MONITOR_DATABASE_URL": url,
            "CONFERENCE_MONITOR_API_TOKEN_SHA256": token_digest(TOKEN),
            **env,
        },
    )


@contextmanager
def scratch_pg(admin_url: str) -> Iterator[str]:
    name = f"cm_hist_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def running(url: str, settings: Callable[[], Settings] | None = None, **env: str) -> Iterator[Api]:
    """The API on a loopback listener over the database at `url` (migrated here)."""
    engine = make_engine(url)
    upgrade(engine)
    fixed = settings_for(url, **env)
    server = HealthServer(
        "127.0.0.1:0", Metrics(process_metrics=False), lambda: (True, "ready"), shutdown_poll_s=0.01
    )
    register(server, engine, settings or (lambda: fixed))
    server.start()
    try:
        yield Api(f"http://127.0.0.1:{server.address[1]}", engine, url, fixed)
    finally:
        server.stop()
        engine.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A seeded history served over HTTP, shared by the read-only tests of this module."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("history")
        with running(f"sqlite:///{folder}/monitor.db") as served:
            seed(served.engine)
            yield served
        return
    with scratch_pg(request.getfixturevalue("pg_admin_url")) as url, running(url) as served:
        seed(served.engine)
        yield served


# -- conferences ------------------------------------------------------------------------


def test_conferences_page_newest_first_with_ties_broken_by_sid(api: Api) -> None:
    items = api.walk("/api/v1/conferences", limit=1)
    sids = [c["sid"] for c in items]
    assert len(sids) == len(set(sids)) == 14
    assert sids[:3] == [sid(22), sid(21), sid(20)]  # same instant: by sid, descending
    assert sids[3] == sid(50) and sids[-1] == sid(0)
    assert api.walk("/api/v1/conferences", limit=500) == items  # page size changes nothing


def test_a_full_last_page_has_no_cursor_and_an_empty_result_is_a_page(api: Api) -> None:
    page = api.ok("/api/v1/conferences", limit=14)
    assert len(page["items"]) == 14 and page["next_cursor"] is None
    page = api.ok("/api/v1/conferences", limit=13)
    assert len(page["items"]) == 13 and page["next_cursor"] is not None
    assert api.ok("/api/v1/conferences", label="nobody") == {"items": [], "next_cursor": None}


def test_conference_filters(api: Api) -> None:
    def sids(**params: Any) -> set[str]:
        return {c["sid"] for c in api.walk("/api/v1/conferences", **params)}

    assert sids(status="completed") == {sid(n) for n in range(8)}
    assert sids(status="not_found") == {sid(50)}
    assert sids(label="team-b") == {sid(n) for n in range(5, 10)}
    assert sids(account=OTHER) == {sid(9)}
    window = {"since": "2026-11-20T02:00:00Z", "until": "2026-11-20T04:00:00+00:00"}
    assert sids(**window) == {sid(2), sid(3)}
    assert sids(status="active", label="team-b", since="2026-11-20T08:00:00") == {sid(8), sid(9)}


def test_conference_items_carry_times_and_duration(api: Api) -> None:
    (item,) = [c for c in api.walk("/api/v1/conferences") if c["sid"] == sid(3)]
    assert item["watch_status"] == "completed" and item["status"] == "completed"
    assert item["date_created"] == "2026-11-20T03:00:00Z"
    assert item["started_at"] == "2026-11-20T03:01:02Z"  # observed two seconds later
    assert item["ended_at"] == "2026-11-20T03:13:02Z"
    assert item["duration_s"] == 13 * 60.0
    assert item["reason_conference_ended"] == "conference-ended-via-api"
    assert item["call_sid_ending_conference"] == "CA" + f"{3:032x}"


def test_one_conference_with_snapshots_events_deliveries_and_attempts(api: Api) -> None:
    doc = api.ok(f"/api/v1/conferences/{sid(0)}")
    assert [s["status"] for s in doc["snapshots"]] == ["init", "init", "in-progress", "completed"]
    assert doc["snapshots"][0]["raw"]["sid"] == sid(0)
    types = [e["type"] for e in doc["events"]]
    assert types == ["conference.first_seen", "conference.started", "conference.ended"]
    kinds = {d["event_type"] for d in doc["deliveries"]}
    assert kinds == {"conference.started", "conference.ended"}
    assert all(d["attempt_log"][0]["status_code"] == 204 for d in doc["deliveries"])
    missing = api.get(f"/api/v1/conferences/{sid(999)}")
    assert missing.status_code == 404 and sid(999) in missing.json()["error"]
    bad = api.get("/api/v1/conferences/CFnothex")
    assert bad.status_code == 400 and "conference SID" in bad.json()["error"]


# -- events, deliveries, summary ----------------------------------------------------------


def test_events_filters_and_paging(api: Api) -> None:
    everything = api.walk("/api/v1/events", limit=7)
    assert len(everything) == len({e["id"] for e in everything}) == 13 + 10 + 8 + 2
    stamps = [(e["timestamp"], e["id"]) for e in everything]
    assert stamps == sorted(stamps, reverse=True)
    ended = api.walk("/api/v1/events", type="conference.ended")
    assert len(ended) == 8
    assert {e["data"]["reason_conference_ended"] for e in ended} == set(REASONS)
    both = api.walk("/api/v1/events", type=["conference.ended", "watch.not_found"])
    assert len(both) == 9
    assert api.walk("/api/v1/events", type="conference.ended,watch.not_found") == both
    one = [e["type"] for e in api.walk("/api/v1/events", sid=sid(4))]
    assert one == ["conference.ended", "conference.started", "conference.first_seen"]
    window = api.walk("/api/v1/events", since="2026-11-20T12:00:00Z", until="2026-11-20T14:00:00Z")
    assert [e["type"] for e in window] == ["watch.auth_failed", "watch.not_found"]


def test_events_are_the_documents_that_events_json_prints(api: Api, tmp_path: Path) -> None:
    from tests.e2e.harness import cli, json_lines

    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{api.url}"\n')
    printed = cli("events", "--json", "--limit", "1000", config=config)
    assert printed.returncode == 0, printed.stderr
    assert api.walk("/api/v1/events", limit=500) == json_lines(printed.stdout)


def test_deliveries_filter_and_page(api: Api) -> None:
    everything = api.walk("/api/v1/deliveries", limit=4)
    ids = [d["id"] for d in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) == 10 + 8
    assert {d["status"] for d in everything} == {"delivered"}
    assert api.walk("/api/v1/deliveries", status="dead") == []
    assert len(api.walk("/api/v1/deliveries", notifier="hook")) == 18
    assert api.walk("/api/v1/deliveries", notifier="other") == []


def test_summary_counts_reasons_and_durations(api: Api) -> None:
    doc = api.ok("/api/v1/summary", since="2026-11-20T00:00:00Z", until="2026-11-21T00:00:00Z")
    assert doc["conferences"] == {"started": 10, "ended": 8, "first_seen": 13, "irregular": 0}
    assert doc["end_reasons"] == {REASONS[0]: 4, REASONS[1]: 4}
    minutes = [10 + n for n in range(8)]  # durations 10..17 minutes
    assert doc["duration_s"] == {
        "count": 8,
        "p50": minutes[3] * 60.0,
        "p95": minutes[7] * 60.0,
        "max": 17 * 60.0,
    }
    assert [row["sid"] for row in doc["longest"]] == [sid(7), sid(6), sid(5), sid(4), sid(3)]
    assert doc["not_found"] == 1 and doc["auth_failures"] == 1
    assert doc["auth_failing_accounts"] == [ACCOUNT]
    assert doc["watches_added"] == {"total": 14, "active": 5, "completed": 8, "not_found": 1}
    narrow = api.ok("/api/v1/summary", since="2026-11-20T05:00:00Z", until="2026-11-20T06:00:00Z")
    assert narrow["conferences"]["ended"] == 1 and narrow["longest"][0]["sid"] == sid(5)


def test_summary_is_what_report_json_prints(api: Api, tmp_path: Path) -> None:
    from tests.e2e.harness import cli

    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{api.url}"\n')
    window = ("--since", "2026-11-20T00:00:00Z", "--until", "2026-11-21T00:00:00Z")
    printed = cli("report", *window, "--json", config=config)
    assert printed.returncode == 0, printed.stderr
    served = api.ok("/api/v1/summary", since=window[1], until=window[3])
    assert json.loads(printed.stdout) == served


# -- bad requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/api/v1/conferences", {"limit": "0"}, "limit"),
        ("/api/v1/conferences", {"limit": "501"}, "limit"),
        ("/api/v1/conferences", {"limit": "ten"}, "limit"),
        ("/api/v1/conferences", {"status": "done"}, "status"),
        ("/api/v1/conferences", {"stauts": "active"}, "stauts"),
        ("/api/v1/conferences", {"since": "yesterday"}, "since"),
        ("/api/v1/conferences", {"account": "AC1"}, "account"),
        ("/api/v1/conferences", {"since": "1d", "until": "2d"}, "since"),
        ("/api/v1/conferences", {"cursor": "not-a-cursor"}, "cursor"),
        ("/api/v1/events", {"type": "conference.over"}, "type"),
        ("/api/v1/events", {"sid": "CF123"}, "sid"),
        ("/api/v1/deliveries", {"status": "lost"}, "status"),
        ("/api/v1/summary", {"until": "2026-13-01"}, "until"),
        ("/api/v1/summary", {"limit": "5"}, "limit"),
        ("/api/v1/conferences", {"status": ""}, "status"),
        ("/api/v1/events", {"type": ""}, "type"),
    ],
)
def test_bad_parameters_are_400_naming_them(
    api: Api, path: str, params: dict[str, str], named: str
) -> None:
    resp = api.get(path, **params)
    assert resp.status_code == 400
    assert named in resp.json()["error"]


def test_a_cursor_only_works_for_its_own_listing(api: Api) -> None:
    cursor = api.ok("/api/v1/events", limit=1)["next_cursor"]
    assert api.get("/api/v1/conferences", cursor=cursor).status_code == 400
    assert api.get("/api/v1/deliveries", cursor=cursor).status_code == 400
    assert api.get("/api/v1/events", cursor=cursor + "x").status_code == 400


def test_unknown_endpoint_is_404_only_after_auth(api: Api) -> None:
    assert api.get("/api/v1/nothing").status_code == 404
    assert api.get("/api/v1/nothing", token=None).status_code == 401


def test_the_listeners_own_refusals_are_json_on_api_paths(api: Api) -> None:
    """A malformed Content-Length or a method the API does not take is refused before
    any handler runs; on /api/v1/ the refusal is still the documented JSON error."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(api.base).netloc
    for method, length, status, message in (
        ("GET", "dx&E", 400, "bad Content-Length"),
        ("POST", "0", 405, "method not allowed"),
    ):
        conn = http.client.HTTPConnection(host, timeout=10)
        try:
            conn.putrequest(method, "/api/v1/conferences")
            conn.putheader("Authorization", f"Bearer {TOKEN}")
            conn.putheader("Content-Length", length)
            conn.endheaders()
            resp = conn.getresponse()
            assert resp.status == status
            assert resp.getheader("Content-Type", "").startswith("application/json")
            assert json.loads(resp.read()) == {"error": message}
        finally:
            conn.close()
    health = requests.post(api.base + "/healthz", timeout=10)  # elsewhere: plain text
    assert health.status_code == 405 and health.text == "method not allowed\n"


# -- paging while rows are written ------------------------------------------------------------


def test_paging_is_stable_while_conferences_and_events_are_added(db_url: str) -> None:
    with running(db_url) as served:
        for n in range(6):
            add_conference(served.engine, n, created=T0 + timedelta(minutes=n))
        first = served.ok("/api/v1/conferences", limit=2)
        events_first = served.ok("/api/v1/events", limit=2)
        for n in range(6, 9):  # newer rows land while a client is half-way through
            add_conference(served.engine, n, created=T0 + timedelta(hours=1, minutes=n))
        rest = served.walk("/api/v1/conferences", limit=2, cursor=first["next_cursor"])
        seen = [c["sid"] for c in first["items"] + rest]
        assert seen == [sid(n) for n in (5, 4, 3, 2, 1, 0)]  # nothing repeated or skipped
        more_events = served.walk("/api/v1/events", limit=2, cursor=events_first["next_cursor"])
        assert len(events_first["items"]) + len(more_events) == 6


def test_a_query_past_its_deadline_is_cut_off_and_the_connection_stays_usable(
    db_url: str,
) -> None:
    from sqlalchemy.exc import OperationalError

    from monitor.db import history

    engine = make_engine(db_url)
    endless = text(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    try:
        with pytest.raises(OperationalError), history.reading(engine, timeout_s=0.2) as conn:
            conn.execute(endless)
        with history.reading(engine) as conn:  # the pooled connection has no deadline left over
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
