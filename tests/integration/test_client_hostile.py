"""TwilioClient against the simulator's hostile answers, over real loopback HTTP.

Each fault is one a broken proxy or a compromised endpoint could produce: a
body dripped a byte at a time, a body far over any sane size, paging that
never ends, one rotten item in a page, an answer about someone else. The
client must end every call within its deadline, read no more than its caps,
fail only what is broken, and never retry what cannot get better.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.app import build_client
from monitor.config import load_settings
from monitor.simulator import DEFAULT_AUTH_TOKEN, SimulatorControl, SimulatorServer
from monitor.twilio import (
    DeadlineExceeded,
    PagingError,
    ResourceMismatch,
    ResponseTooLarge,
    TransientError,
    TwilioClient,
)

MiB = 1024 * 1024
OTHER_ACCOUNT = "AC" + "6" * 32


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(list_default_status=None) as server:
        yield server


@pytest.fixture
def ctl(sim: SimulatorServer) -> Iterator[SimulatorControl]:
    with SimulatorControl(sim.url) as control:
        yield control


@pytest.fixture
def make_client(sim: SimulatorServer) -> Iterator[Callable[..., TwilioClient]]:
    clients: list[TwilioClient] = []

    def make(**options: Any) -> TwilioClient:
        defaults: dict[str, Any] = {
            "account_sid": sim.account_sid,
            "username": sim.account_sid,
            "password": DEFAULT_AUTH_TOKEN,
            "base_url": sim.url,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
        }
        client = TwilioClient(**(defaults | options))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def requests_of(ctl: SimulatorControl, kind: str) -> int:
    return int(ctl.stats()["by_kind"][kind])


def warnings_of(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


# -- the deadline ----------------------------------------------------------------


def test_a_dripped_body_is_cut_at_the_deadline(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("drip", sid=sid, delay_s=0.05)  # ~700 bytes: 35 s to send in full
    client = make_client(request_deadline_s=0.5, read_timeout_s=5.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        client.fetch_conference(sid)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 1.0  # the deadline and scheduling slack, not 35 s
    assert sid in str(caught.value) and "0.5s request deadline" in str(caught.value)
    assert f"/Conferences/{sid}.json" in str(caught.value)
    assert isinstance(caught.value, TransientError)
    stats = wait_for(lambda: ctl.stats() if ctl.stats()["streams_cut"] else None)
    assert 0 < stats["streamed_bytes"] < 100  # the server saw the client hang up early
    ctl.clear_faults()
    assert client.fetch_conference(sid).sid == sid  # the cut connection was not pooled


def test_the_deadline_covers_retries_and_their_waits(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("503")
    client = make_client(
        request_deadline_s=0.6, retry_budget_s=30, max_attempts=1000, backoff_initial_s=0.05
    )
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        client.fetch_conference(sid)
    assert time.monotonic() - started < 0.6 + 1.0
    assert caught.value.attempts == requests_of(ctl, "fetch") >= 2


class HeaderDripper:
    """A raw TCP server that sends a status line, then drips header bytes for ever."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not self.stop.wait(0.05):
                        conn.sendall(b"a")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_dripped_headers_are_cut_at_the_deadline_too(
    make_client: Callable[..., TwilioClient],
) -> None:
    dripper = HeaderDripper()
    try:
        client = make_client(base_url=dripper.url, request_deadline_s=0.5, read_timeout_s=5.0)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.fetch_conference("CF" + "a" * 32)
        assert time.monotonic() - started < 0.5 + 1.0  # not read_timeout per header byte
    finally:
        dripper.close()


# -- size caps -------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_150_mb_body_is_refused_without_reading_it(
    ctl: SimulatorControl,
    make_client: Callable[..., TwilioClient],
    caplog: pytest.LogCaptureFixture,
    framing: str,
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("huge", sid=sid, size_bytes=150 * MiB, framing=framing)
    client = make_client()
    peak = PeakRss()
    with (
        caplog.at_level(logging.WARNING, "monitor.twilio"),
        pytest.raises(ResponseTooLarge) as caught,
    ):
        client.fetch_conference(sid)
    assert peak.growth_mib() < 50  # what was read is bounded by the 1 MiB cap
    assert caught.value.cap_bytes == MiB and requests_of(ctl, "fetch") == 1  # not retried
    [line] = warnings_of(caplog, "twilio.response_too_large")
    for part in (sid, f"/Conferences/{sid}.json", "1048576-byte cap"):
        assert part in line.getMessage()
    if framing == "length":
        assert "Content-Length" in line.getMessage()
    stats = wait_for(lambda: ctl.stats() if ctl.stats()["streams_cut"] else None)
    assert stats["streamed_bytes"] < 30 * MiB  # the server could not push it all


def test_a_big_page_under_the_page_cap_is_read_whole(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    sids = ctl.create_conferences(3, status="in-progress")
    ctl.add_fault("huge", size_bytes=3 * MiB, framing="chunked")
    [page] = make_client().list_conference_pages(status="in-progress")
    assert {item["sid"] for item in page.items} == set(sids)


def test_a_page_over_the_page_cap_is_refused(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    ctl.create_conferences(3, status="in-progress")
    ctl.add_fault("huge", size_bytes=3 * MiB)
    with pytest.raises(ResponseTooLarge) as caught:
        list(make_client(max_page_bytes=2 * MiB).list_conference_pages(status="in-progress"))
    assert caught.value.cap_bytes == 2 * MiB


def test_a_padded_conference_under_the_cap_is_stored_without_its_padding(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("huge", sid=sid, size_bytes=512 * 1024)
    conference = make_client().fetch_conference(sid)
    assert len(conference.raw["x_padding"]) > 500_000
    stored = conference.raw_json()
    assert len(stored) < 16 * 1024 and "x_padding" in stored and sid in stored


class PeakRss:
    """Peak resident memory from now on (Linux: /proc/self/clear_refs resets VmHWM)."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pytest.skip("cannot reset the peak RSS on this system")
        self.start = self._hwm_kib()

    def growth_mib(self) -> float:
        return (self._hwm_kib() - self.start) / 1024

    @staticmethod
    def _hwm_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/self/status")


# -- paging ----------------------------------------------------------------------


def test_a_next_page_uri_that_loops_back_stops_with_paging_error(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    ctl.create_conferences(3, status="in-progress")
    ctl.add_fault("loop")
    pages = make_client().list_conference_pages(status="in-progress")
    with pytest.raises(PagingError, match="repeats an earlier page") as caught:
        list(pages)
    assert "Page=0" in str(caught.value)  # names the URI it saw twice
    assert requests_of(ctl, "list") == 2


def test_an_endless_listing_stops_at_max_pages(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    ctl.create_conferences(3, status="in-progress")
    ctl.add_fault("loop", endless=True)
    seen = []
    with pytest.raises(PagingError, match="max_pages=7"):
        for page in make_client(max_pages=7).list_conference_pages(status="in-progress"):
            seen.append(page)
    assert len(seen) == 7 == requests_of(ctl, "list")


def test_max_pages_bounds_a_real_listing_too(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    sids = ctl.create_conferences(25, status="in-progress")
    with pytest.raises(PagingError):
        list(make_client(max_pages=4).list_conference_pages(status="in-progress", page_size=5))
    pages = list(make_client(max_pages=5).list_conference_pages(status="in-progress", page_size=5))
    assert [len(p.items) for p in pages] == [5] * 5
    assert sorted(item["sid"] for p in pages for item in p.items) == sorted(sids)


# -- one bad item, one wrong answer --------------------------------------------------


def test_a_malformed_item_fails_alone(
    ctl: SimulatorControl,
    make_client: Callable[..., TwilioClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sids = ctl.create_conferences(10, status="in-progress")
    bad = sids[4]
    ctl.add_fault("malformed_item", sid=bad)
    [page] = make_client().list_conference_pages(status="in-progress")
    assert len(page.items) == 10
    conferences, rejected = page.parsed
    assert sorted(c.sid for c in conferences) == sorted(set(sids) - {bad})
    [(sid, field)] = [(r.sid, r.error.field) for r in rejected]
    assert (sid, field) == (bad, "date_created")
    ctl.add_fault("malformed_item", sid=bad)
    with caplog.at_level(logging.WARNING, "monitor.twilio"):
        listed = {c.sid for c in make_client().list_conferences(status="in-progress")}
    assert listed == set(sids) - {bad}
    [line] = warnings_of(caplog, "twilio.item_rejected")
    assert bad in line.getMessage() and "date_created" in line.getMessage()


@pytest.mark.parametrize(
    ("field", "named"), [("sid", "answered with CF"), ("account_sid", "account AC")]
)
def test_an_answer_about_another_resource_is_not_retried(
    ctl: SimulatorControl, make_client: Callable[..., TwilioClient], field: str, named: str
) -> None:
    sid = ctl.create_conference()["sid"]
    ctl.add_fault("mismatch", sid=sid, field=field)
    with pytest.raises(ResourceMismatch, match=named) as caught:
        make_client(max_attempts=4).fetch_conference(sid)
    assert caught.value.attempts == 1 and requests_of(ctl, "fetch") == 1


def test_a_listed_conference_of_another_account_is_rejected(
    sim: SimulatorServer, ctl: SimulatorControl, make_client: Callable[..., TwilioClient]
) -> None:
    mine = ctl.create_conferences(2, status="in-progress")
    [foreign] = ctl.create_conferences(1, status="in-progress", account_sid=OTHER_ACCOUNT)
    [page] = make_client().list_conference_pages(status="in-progress", account_sid=OTHER_ACCOUNT)
    assert [c.sid for c in page.conferences] == [foreign]  # its own listing: fine
    [page] = make_client(account_sid=OTHER_ACCOUNT).list_conference_pages(
        status="in-progress", account_sid=sim.account_sid
    )
    assert sorted(c.sid for c in page.conferences) == sorted(mine)


# -- the list filters Twilio documents ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 2, 12, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def test_date_created_filters_use_twilio_parameter_names(
    make_client: Callable[..., TwilioClient],
) -> None:
    clock = Clock()
    with (
        SimulatorServer(clock=clock, list_default_status=None) as sim,
        SimulatorControl(sim.url) as ctl,
    ):
        by_day = {}
        for day in (2, 3, 4, 5):
            clock.now = datetime(2024, 1, day, 23, tzinfo=UTC).timestamp()
            by_day[day] = ctl.create_conference()["sid"]
        client = make_client(base_url=sim.url)
        after = [c.sid for c in client.list_conferences(date_created_after=date(2024, 1, 3))]
        assert after == [by_day[5], by_day[4], by_day[3]]
        both = client.list_conferences(
            date_created_after=date(2024, 1, 3), date_created_before=date(2024, 1, 4)
        )
        assert [c.sid for c in both] == [by_day[4], by_day[3]]


# -- TWILIO_EDGE / TWILIO_REGION reach the client ----------------------------------


@pytest.mark.parametrize(
    ("env", "origin"),
    [
        ({"TWILIO_EDGE": "dublin", "TWILIO_REGION": "ie1"}, "https://api.dublin.ie1.twilio.com"),
        ({"TWILIO_EDGE": "sydney"}, "https://api.sydney.us1.twilio.com"),
        ({"TWILIO_REGION": "au1"}, "https://api.sydney.au1.twilio.com"),
        ({}, "https://api.twilio.com"),
    ],
)
def test_twilio_edge_and_region_variables_pick_the_host(env: dict[str, str], origin: str) -> None:
    credentials = {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "token"}
    settings = load_settings(None, environ=credentials | env)
    with build_client(settings) as client:
        assert client.base_url == origin
        assert client.request_deadline_s == 4.0


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll until truthy; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError("timed out waiting")
