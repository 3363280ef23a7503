"""The poller against the simulator on loopback, persisting to a real SQLite file.

Faults are injected by the simulator (429 with and without Retry-After, 500
bursts, slow answers, 404 for new conferences, rejected credentials, garbage);
each must end as a recorded observation or a recorded miss, never a crash and
never a half-written row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.app import App
from monitor.config import load_settings
from monitor.db.engine import upgrade
from monitor.db.models import Event, Snapshot
from monitor.service import Poller
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN, SimulatorServer
from monitor.simulator.state import DEFAULT_ACCOUNT_SID

ACCOUNT = DEFAULT_ACCOUNT_SID


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def ctl(sim: SimulatorServer) -> Iterator[SimulatorControl]:
    with SimulatorControl(sim.url) as control:
        yield control


def make_app(tmp_path: Path, sim: SimulatorServer, **env: str) -> App:
    environ = {
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
        "CONFERENCE_MONITOR_TWILIO_BASE_URL": sim.url,
        "CONFERENCE_MONITOR_TWILIO_READ_TIMEOUT": "500ms",
        "CONFERENCE_MONITOR_DATABASE_URL": f"sqlite:///{tmp_path}/poll.db",
        "CONFERENCE_MONITOR_POLLING_INTERVAL": "2s",
        "CONFERENCE_MONITOR_POLLING_JITTER": "0s",
        "CONFERENCE_MONITOR_POLLING_NOT_FOUND_GRACE": "1s",
        **env,
    }
    app = App.open(load_settings(None, environ))
    upgrade(app.engine)
    return app


@pytest.fixture
def app(tmp_path: Path, sim: SimulatorServer) -> Iterator[App]:
    application = make_app(tmp_path, sim)
    yield application
    application.close()


def counts(app: App) -> tuple[int, list[str]]:
    with app.engine.connect() as conn:
        snapshots = conn.execute(select(func.count()).select_from(Snapshot)).scalar_one()
        types = list(conn.scalars(select(Event.type).order_by(Event.occurred_at)))
    return int(snapshots), types


def poll_until(poller: Poller, done: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poller.poll_due()
        if done():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("retry_after", [1, None])
def test_429_is_retried_within_the_poll(
    app: App, ctl: SimulatorControl, retry_after: int | None
) -> None:
    sid = ctl.create_conference(status="init")["sid"]
    ctl.add_fault("429", count=1, **({"retry_after": retry_after} if retry_after else {}))
    report = app.with_poller().poll_sids([sid], ACCOUNT)
    assert report.outcomes == {"ok": 1}
    assert ctl.stats()["faults_served"] == 1
    assert counts(app) == (1, ["conference.first_seen"])


def test_a_burst_of_500s_is_retried(app: App, ctl: SimulatorControl) -> None:
    sid = ctl.create_conference(status="init")["sid"]
    ctl.add_fault("500", count=2)
    report = app.with_poller().poll_sids([sid], ACCOUNT)
    assert report.outcomes == {"ok": 1}
    assert ctl.stats()["faults_served"] == 2


def test_500s_past_the_budget_are_a_recorded_miss_then_recover(
    app: App, ctl: SimulatorControl
) -> None:
    sid = ctl.create_conference(status="init")["sid"]
    ctl.add_fault("500")
    poller = app.with_poller()
    report = poller.poll_sids([sid], ACCOUNT)
    assert report.outcomes == {"transient": 1}
    assert counts(app) == (0, [])
    (watch,) = app.store.list_watches()
    assert watch["status"] == "active" and "500" in watch["last_error"]
    ctl.clear_faults()
    assert poller.poll_sids([sid], ACCOUNT).outcomes == {"ok": 1}
    (watch,) = app.store.list_watches()
    assert watch["last_error"] is None


def test_a_slow_answer_past_the_read_timeout_is_a_transient_miss(
    app: App, ctl: SimulatorControl
) -> None:
    sid = ctl.create_conference(status="init")["sid"]
    ctl.add_fault("delay", delay_s=1.5)
    report = app.with_poller().poll_sids([sid], ACCOUNT)
    assert report.outcomes == {"transient": 1}
    assert "timed out" in report.errors[sid].lower() or "timeout" in report.errors[sid].lower()
    assert counts(app) == (0, [])


def test_garbage_200_is_logged_with_the_sid_and_never_a_snapshot(
    app: App, ctl: SimulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    sid = ctl.create_conference(status="init")["sid"]
    ctl.add_fault("garbage")
    with caplog.at_level(logging.WARNING):
        report = app.with_poller().poll_sids([sid], ACCOUNT)
    assert report.outcomes == {"bad_payload": 1}
    assert any(sid in r.getMessage() for r in caplog.records)
    assert counts(app) == (0, [])


def test_a_new_conference_404_within_grace_is_not_declared_missing(
    tmp_path: Path, sim: SimulatorServer, ctl: SimulatorControl
) -> None:
    app = make_app(tmp_path, sim, CONFERENCE_MONITOR_POLLING_NOT_FOUND_GRACE="5s")
    try:
        sid = ctl.create_conference(status="init", hidden_for_s=1.0)["sid"]
        poller = app.with_poller()
        app.store.add_watches([sid], ACCOUNT, None, _now())
        poll_until(poller, lambda: counts(app)[0] == 1)
        assert counts(app)[1] == ["conference.first_seen"]
        assert ctl.stats()["by_kind"]["fetch"] >= 2  # at least one early 404 was retried
    finally:
        app.close()


def test_a_sid_that_never_appears_ends_with_one_not_found(app: App) -> None:
    ghost = "CF" + "e" * 32
    poller = app.with_poller()
    app.store.add_watches([ghost], ACCOUNT, None, _now())
    poll_until(poller, lambda: app.store.list_watches()[0]["status"] == "not_found")
    assert counts(app) == (0, ["watch.not_found"])
    assert poller.poll_due().claimed == 0  # no longer polled


def test_rejected_credentials_give_one_event_and_polling_resumes(
    tmp_path: Path, sim: SimulatorServer, ctl: SimulatorControl
) -> None:
    sids = [ctl.create_conference(status="init")["sid"] for _ in range(3)]
    bad = make_app(tmp_path, sim, TWILIO_AUTH_TOKEN="wrong-token")
    try:
        report = bad.with_poller().poll_sids(sids, ACCOUNT)
        assert report.outcomes == {"auth_failed": 3}
        bad.with_poller().poll_sids(sids, ACCOUNT)
        assert counts(bad) == (0, ["watch.auth_failed"])
        assert bad.store.failing_accounts() == {ACCOUNT}
    finally:
        bad.close()
    good = make_app(tmp_path, sim)
    try:
        assert good.with_poller().poll_sids(sids, ACCOUNT).outcomes == {"ok": 3}
        assert good.store.failing_accounts() == set()
    finally:
        good.close()


def test_watches_are_handed_to_the_list_sweep_and_back(app: App, ctl: SimulatorControl) -> None:
    sids = [ctl.create_conference(status="in-progress")["sid"] for _ in range(8)]
    done = ctl.create_conference(status="completed")["sid"]
    poller = app.with_poller()
    assert poller.poll_sids([*sids, done], ACCOUNT).outcomes == {"ok": 9}
    modes = {w["sid"]: w["mode"] for w in app.store.list_watches()}
    assert modes == {**dict.fromkeys(sids, "list"), done: "fetch"}
    assert poller.poll_due().claimed == 0  # the sweep observes them now
    ctl.set_status(sids[0], "completed", reason="last-participant-left")
    (report,) = poller.sweep_due()
    assert (report.pages, report.listed, report.changed, report.missing) == (2, 7, 0, 1)
    assert ctl.stats()["by_kind"]["list"] == 2
    assert poller.poll_due().claimed == 1  # the one the lists no longer show
    assert counts(app)[1].count("conference.ended") == 2
    assert poller.sweep_due() == []  # not due again before the interval
    with app.engine.connect() as conn:
        via = dict(
            conn.execute(
                select(Snapshot.detected_via, func.count()).group_by(Snapshot.detected_via)
            ).all()
        )
    assert via == {"poll": 10}
    assert poller.flush_touches() == 7  # the unchanged ones the sweep saw


def test_a_sweep_records_changes_it_lists(
    tmp_path: Path, sim: SimulatorServer, ctl: SimulatorControl
) -> None:
    app = make_app(tmp_path, sim, CONFERENCE_MONITOR_POLLING_INTERVAL="200ms")
    try:
        sids = [ctl.create_conference(status="init")["sid"] for _ in range(5)]
        poller = app.with_poller()
        poller.poll_sids(sids, ACCOUNT)
        for sid in sids[:3]:
            ctl.set_status(sid, "in-progress")
        time.sleep(0.25)
        (report,) = poller.sweep_due()
        assert (report.listed, report.changed, report.missing) == (5, 3, 0)
        assert counts(app)[1].count("conference.started") == 3
        with app.engine.connect() as conn:
            listed = conn.execute(
                select(func.count()).where(Snapshot.detected_via == "list")
            ).scalar_one()
        assert listed == 3
    finally:
        app.close()


def test_fetch_only_when_lists_are_off(
    tmp_path: Path, sim: SimulatorServer, ctl: SimulatorControl
) -> None:
    app = make_app(tmp_path, sim, CONFERENCE_MONITOR_POLLING_USE_LIST="false")
    try:
        sids = [ctl.create_conference(status="in-progress")["sid"] for _ in range(6)]
        assert app.with_poller().poll_sids(sids, ACCOUNT).outcomes == {"ok": 6}
        assert ctl.stats()["by_kind"].get("list", 0) == 0
    finally:
        app.close()


def test_an_idle_poller_asks_again_when_the_next_watch_is_due(
    tmp_path: Path, sim: SimulatorServer, ctl: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing due, the poll tick does not claim (a write transaction) four times
    a second: it waits for the earliest due time, at most IDLE_ASK_S."""
    from monitor.fetcher import IDLE_ASK_S

    app = make_app(tmp_path, sim, CONFERENCE_MONITOR_POLLING_USE_LIST="false")
    try:
        sid = ctl.create_conference(status="in-progress")["sid"]
        poller = app.with_poller()
        assert poller.poll_sids([sid], ACCOUNT).outcomes == {"ok": 1}
        assert poller.poll_due().claimed == 1  # its first scheduled fetch: due again in 2 s
        claims: list[float] = []
        claim = app.store.claim_due_watches

        def counted(*args: object, **kwargs: object) -> object:
            claims.append(time.monotonic())
            return claim(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(app.store, "claim_due_watches", counted)
        started = time.monotonic()
        while time.monotonic() - started < 2.6:
            if poller.poll_due().claimed:
                break
            time.sleep(0.05)
        assert poller.poll_due().claimed == 0
        # Asked about once a second while waiting, then when the watch came due.
        assert 3 <= len(claims) <= 2.6 / IDLE_ASK_S + 3, claims  # not every 50 ms
        assert claims[-1] - started >= 1.5
        asked = len(claims)
        poller.poll_due()  # nothing due for 2 s: no claim
        poller.fetcher.wake()  # something was handed to fetching in this process
        poller.poll_due()
        assert len(claims) == asked + 1
    finally:
        app.close()


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_discover_watches_active_conferences_once(
    tmp_path: Path, sim: SimulatorServer, ctl: SimulatorControl
) -> None:
    app = make_app(
        tmp_path,
        sim,
        CONFERENCE_MONITOR_POLLING_DISCOVER="true",
        CONFERENCE_MONITOR_POLLING_INTERVAL="200ms",
    )
    try:
        active = [
            ctl.create_conference(status=s)["sid"] for s in ("init", "in-progress", "in-progress")
        ]
        ctl.create_conference(status="completed")
        poller = app.with_poller()
        (report,) = poller.sweep_due(accounts=(ACCOUNT,))
        assert report.discovered == 3
        assert sorted(w["sid"] for w in app.store.list_watches()) == sorted(active)
        assert {w["label"] for w in app.store.list_watches()} == {"discovered"}
        time.sleep(0.25)
        (again,) = poller.sweep_due(accounts=(ACCOUNT,))
        assert again.discovered == 0 and again.listed == 3
        assert counts(app)[1] == ["conference.first_seen"] * 3  # watched mid-way: baselines
    finally:
        app.close()
