"""The official `twilio` SDK, pointed at the simulator, reads and ends conferences.

twilio 9.x builds every URL from its `Api` domain's `base_url`, so overriding
that one attribute sends all of its requests to the simulator unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from monitor.simulator import DEFAULT_AUTH_TOKEN, SimulatorControl, SimulatorServer

API_KEY, API_SECRET = "SK" + "3" * 32, "sdk-key-secret"
T0 = datetime(2024, 1, 2, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[SimulatorServer]:
    with SimulatorServer(api_keys={API_KEY: API_SECRET}, clock=clock) as server:
        yield server


@pytest.fixture
def ctl(sim: SimulatorServer) -> Iterator[SimulatorControl]:
    with SimulatorControl(sim.url) as control:
        yield control


def sdk_client(sim: SimulatorServer, username: str, password: str) -> Client:
    client = Client(username, password, account_sid=sim.account_sid)
    client.api.base_url = sim.url
    return client


@pytest.fixture
def client(sim: SimulatorServer) -> Iterator[Client]:
    client = sdk_client(sim, sim.account_sid, DEFAULT_AUTH_TOKEN)
    yield client
    client.http_client.session.close()


def test_sdk_fetches_a_conference(client: Client, ctl: SimulatorControl) -> None:
    sid = ctl.create_conference(friendly_name="sdk-room", region="de1")["sid"]
    ctl.set_status(sid, "completed", "last-participant-left", "CA" + "a" * 32)
    conference = client.conferences(sid).fetch()
    assert conference.sid == sid
    assert conference.friendly_name == "sdk-room" and conference.region == "de1"
    assert conference.status == "completed"
    assert conference.reason_conference_ended == "last-participant-left"
    assert conference.call_sid_ending_conference == "CA" + "a" * 32
    assert conference.date_created == datetime.fromtimestamp(T0, UTC)
    assert conference.api_version == "2010-04-01"


def test_sdk_lists_with_a_status_filter_across_pages(
    client: Client, ctl: SimulatorControl, clock: FakeClock
) -> None:
    live = []
    for i in range(7):
        clock.now = T0 + i
        live.append(ctl.create_conference(status="in-progress")["sid"])
        ctl.create_conference(status="completed")
    listed = client.conferences.list(status="in-progress", page_size=3)
    assert [c.sid for c in listed] == live[::-1]
    assert ctl.stats()["by_kind"]["list"] == 3  # 3 + 3 + 1, following next_page_uri


def test_sdk_date_filters_reach_the_simulator(
    client: Client, ctl: SimulatorControl, clock: FakeClock
) -> None:
    old = ctl.create_conference(status="in-progress")["sid"]
    clock.now = T0 + 2 * 86400
    new = ctl.create_conference(status="in-progress")["sid"]
    after = client.conferences.list(status="in-progress", date_created_after=date(2024, 1, 3))
    before = client.conferences.list(status="in-progress", date_created_before=date(2024, 1, 3))
    assert ([c.sid for c in after], [c.sid for c in before]) == ([new], [old])


def test_sdk_ends_a_conference(client: Client, ctl: SimulatorControl) -> None:
    sid = ctl.create_conference(status="in-progress")["sid"]
    ended = client.conferences(sid).update(status="completed")
    assert ended.status == "completed"
    assert ended.reason_conference_ended == "conference-ended-via-api"
    assert ended.call_sid_ending_conference is None
    assert ctl.stats()["by_kind"]["update"] == 1


def test_sdk_lists_participants_of_a_conference(client: Client, ctl: SimulatorControl) -> None:
    sid = ctl.create_conference(status="in-progress")["sid"]
    assert client.conferences(sid).participants.list() == []


def test_sdk_sees_twilio_errors(client: Client, ctl: SimulatorControl) -> None:
    with pytest.raises(TwilioRestException) as missing:
        client.conferences("CF" + "0" * 32).fetch()
    assert (missing.value.status, missing.value.code) == (404, 20404)
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("429", count=2, retry_after=1)
    with pytest.raises(TwilioRestException) as limited:
        client.conferences(sid).fetch()
    assert (limited.value.status, limited.value.code) == (429, 20429)
    # The SDK's list raises a bare TwilioException carrying the response instead.
    with pytest.raises(TwilioException) as page_error:
        client.conferences.list(status="init")
    assert page_error.value.args[1].status_code == 429
    assert client.conferences(sid).fetch().sid == sid


@pytest.mark.parametrize(
    ("username", "password", "ok"),
    [(API_KEY, API_SECRET, True), (API_KEY, "nope", False), (None, "wrong-token", False)],
)
def test_sdk_authenticates_with_an_api_key_or_fails_clearly(
    sim: SimulatorServer, ctl: SimulatorControl, username: str | None, password: str, ok: bool
) -> None:
    sid = ctl.create_conference()["sid"]
    client = sdk_client(sim, username or sim.account_sid, password)
    try:
        if ok:
            assert client.conferences(sid).fetch().sid == sid
        else:
            with pytest.raises(TwilioRestException) as err:
                client.conferences(sid).fetch()
            assert (err.value.status, err.value.code) == (401, 20003)
    finally:
        client.http_client.session.close()
