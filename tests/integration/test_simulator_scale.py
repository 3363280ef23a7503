"""The simulator's bulk control routes, and listing 100,000 conferences page by page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from monitor.simulator import DEFAULT_AUTH_TOKEN, SimulatorControl, SimulatorServer
from monitor.simulator.control import SimulatorControlError
from monitor.twilio import TwilioClient
from monitor.twilio.payloads import listed_sid

OTHER_ACCOUNT = "AC" + "6" * 32


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(list_default_status=None) as server:
        yield server


@pytest.fixture
def ctl(sim: SimulatorServer) -> Iterator[SimulatorControl]:
    with SimulatorControl(sim.url, timeout_s=120) as control:
        yield control


@pytest.fixture
def client(sim: SimulatorServer) -> Iterator[TwilioClient]:
    with TwilioClient(
        account_sid=sim.account_sid,
        username=sim.account_sid,
        password=DEFAULT_AUTH_TOKEN,
        base_url=sim.url,
        request_deadline_s=30.0,
    ) as c:
        yield c


def test_bulk_create_returns_sids_in_order_with_the_fields_asked(ctl: SimulatorControl) -> None:
    sids = ctl.create_conferences(
        5, status="in-progress", friendly_name="room-{n}", region="ie1", account_sid=OTHER_ACCOUNT
    )
    assert len(set(sids)) == 5
    made = [ctl.conference(sid) for sid in sids]
    assert [c["friendly_name"] for c in made] == [f"room-{n}" for n in range(5)]
    assert {(c["status"], c["region"], c["account_sid"]) for c in made} == {
        ("in-progress", "ie1", OTHER_ACCOUNT)
    }


@pytest.mark.parametrize(
    "body",
    [
        {"count": 0},
        {"count": True},
        {"count": "10"},
        {"count": 2_000_000},
        {},
        {"count": 3, "sid": "CF" + "a" * 32},  # one SID cannot name many conferences
        {"count": 3, "status": "ringing"},
        {"count": 3, "account_sid": "AC123"},
        {"count": 3, "colour": "red"},
    ],
)
def test_bulk_create_refuses_bad_requests_and_creates_nothing(
    sim: SimulatorServer, body: dict[str, object]
) -> None:
    response = requests.post(f"{sim.url}/_sim/conferences/bulk", json=body, timeout=10)
    assert response.status_code == 400 and response.json()["error"]
    assert len(sim.state) == 0


def test_scripts_for_many_conferences_at_once(sim: SimulatorServer, ctl: SimulatorControl) -> None:
    a, b, c = ctl.create_conferences(3)
    scheduled = ctl.script_many(
        {
            a: [{"after_s": 0, "status": "in-progress"}],
            b: [
                {"after_s": 0, "status": "in-progress"},
                {"after_s": 0, "status": "completed", "reason": "last-participant-kicked"},
            ],
        }
    )
    assert scheduled == 3
    assert ctl.conference(a)["status"] == "in-progress"
    ended = ctl.conference(b)
    assert (ended["status"], ended["reason_conference_ended"]) == (
        "completed",
        "last-participant-kicked",
    )
    assert ctl.conference(c)["status"] == "init"
    assert ctl.script_all([a, c], [{"after_s": 0, "status": "completed"}]) == 2
    assert {ctl.conference(s)["status"] for s in (a, c)} == {"completed"}
    assert [t["status"] for t in ctl.transitions(a)] == ["init", "in-progress", "completed"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sids": ["CF" + "0" * 32], "steps": [{"after_s": 0, "status": "completed"}]}, 404),
        ({"sids": "CF", "steps": []}, 400),
        ({"scripts": {"SID": [{"after_s": 0}]}}, 400),
        ({"scripts": {}, "sids": []}, 400),
        ({"steps": [{"after_s": 0, "status": "completed"}]}, 400),
    ],
)
def test_bad_bulk_scripts_schedule_nothing(
    sim: SimulatorServer, ctl: SimulatorControl, body: dict[str, object], status: int
) -> None:
    [sid] = ctl.create_conferences(1)
    if "sids" in body and isinstance(body["sids"], list):
        body = body | {"sids": [sid, *body["sids"]]}  # a real SID with an unknown one
    response = requests.post(f"{sim.url}/_sim/scripts", json=body, timeout=10)
    assert response.status_code == status
    assert ctl.conference(sid)["status"] == "init"  # all or nothing


def test_control_errors_name_the_unknown_conference(ctl: SimulatorControl) -> None:
    unknown = "CF" + "0" * 32
    with pytest.raises(SimulatorControlError, match=unknown) as caught:
        ctl.script_all([unknown], [{"after_s": 0, "status": "completed"}])
    assert caught.value.status == 404


@pytest.mark.slow
def test_100k_conferences_page_through_completely(
    ctl: SimulatorControl, client: TwilioClient
) -> None:
    sids = ctl.create_conferences(100_000, status="in-progress")
    pages = list(client.list_conference_pages(status="in-progress"))
    assert len(pages) == 100 and all(len(page.items) == 1000 for page in pages)
    listed = [listed_sid(item) for page in pages for item in page.items]
    assert len(listed) == len(set(listed)) == 100_000 and set(listed) == set(sids)
    assert [page.page for page in pages] == list(range(100))

    ended = sids[::100]  # 1,000 end at once; the listing shrinks by exactly those
    assert ctl.script_all(ended, [{"after_s": 0, "status": "completed"}]) == 1000
    assert set(listed_sids(client, "in-progress")) == set(sids) - set(ended)
    assert sorted(listed_sids(client, "completed")) == sorted(ended)


def listed_sids(client: TwilioClient, status: str) -> list[str | None]:
    return [listed_sid(i) for p in client.list_conference_pages(status=status) for i in p.items]
