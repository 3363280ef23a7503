"""Status callbacks recorded on the poll path, on SQLite and PostgreSQL.

The poller fetches from the simulator on loopback; callbacks go through the
real group-commit writer (and, for the endpoint tests, the real listener),
signed with the official SDK's `RequestValidator`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update
from twilio.request_validator import RequestValidator

from monitor.app import App
from monitor.callbacks.decide import CONFIRM_AFTER
from monitor.callbacks.endpoint import CallbackEndpoint
from monitor.callbacks.form import CallbackForm, parse
from monitor.callbacks.intake import Intake, Pending
from monitor.callbacks.writer import CallbackWriter
from monitor.config import load_settings
from monitor.db.engine import upgrade
from monitor.db.models import Event, Snapshot, Watch
from monitor.httpapi import HealthServer
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN, SimulatorServer
from monitor.simulator.state import DEFAULT_ACCOUNT_SID

ACCOUNT = DEFAULT_ACCOUNT_SID
TOKEN = DEFAULT_AUTH_TOKEN
CALL = "CA" + "c" * 32
REASON = "participant-with-end-conference-on-exit-left"


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, SimulatorControl]]:
    with SimulatorServer() as server, SimulatorControl(server.url) as ctl:
        yield server, ctl


@pytest.fixture
def app(db_url: str, sim: tuple[SimulatorServer, SimulatorControl]) -> Iterator[App]:
    environ = {
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "CONFERENCE_MONITOR_TWILIO_BASE_URL": sim[0].url,
        "CONFERENCE_MONITOR_DATABASE_URL": db_url,
        "CONFERENCE_MONITOR_POLLING_INTERVAL": "30s",
        "CONFERENCE_MONITOR_POLLING_USE_LIST": "false",
    }
    application = App.open(load_settings(None, environ))
    upgrade(application.engine)
    application.with_poller()
    yield application
    application.close()


def writer(app: App, *, watch_unknown: bool = False, batched: bool = True) -> CallbackWriter:
    return CallbackWriter(
        app.store,
        lambda: app.with_poller().recorder,
        Intake(),
        watch_unknown=watch_unknown,
        metrics=app.metrics,
        batched=batched,
    )


def fields(sid: str, event: str, seq: int, at: datetime | None = None) -> dict[str, str]:
    form = {
        "ConferenceSid": sid,
        "AccountSid": ACCOUNT,
        "FriendlyName": "room",
        "StatusCallbackEvent": event,
        "SequenceNumber": str(seq),
        "Timestamp": format_datetime(at or datetime.now(UTC), usegmt=True),
    }
    if event == "conference-end":
        form.update(ReasonConferenceEnded=REASON, CallSidEndingConference=CALL)
    return form


def callback(sid: str, event: str, seq: int, at: datetime | None = None) -> CallbackForm:
    return parse(list(fields(sid, event, seq, at).items()))


def send(w: CallbackWriter, *forms: CallbackForm) -> list[str]:
    now = datetime.now(UTC)
    return w.write_group([Pending(f, now, time.monotonic()) for f in forms])


def poll(app: App, *sids: str) -> None:
    """Make the watches due now and run one pass of fetches."""
    with app.engine.begin() as conn:
        due = datetime.now(UTC) - timedelta(seconds=1)
        if app.store.is_postgres:  # rows in SID order, as every writer takes them
            order = select(Watch.sid).where(Watch.sid.in_(sids)).order_by(Watch.sid)
            conn.execute(order.with_for_update())
        conn.execute(update(Watch).where(Watch.sid.in_(sids)).values(next_poll_at=due))
    app.with_poller().poll_due()


def events(app: App) -> collections.Counter[tuple[str, str]]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(Event.conference_sid, Event.type)).all()
    return collections.Counter((sid, kind) for sid, kind in rows)


def event_rows(app: App, sid: str) -> list[Any]:
    with app.engine.connect() as conn:
        query = select(Event).where(Event.conference_sid == sid).order_by(Event.occurred_at)
        return list(conn.execute(query))


def watch_row(app: App, sid: str) -> Any:
    with app.engine.connect() as conn:
        return conn.execute(select(Watch).where(Watch.sid == sid)).one()


def new_conference(app: App, ctl: SimulatorControl, status: str = "init") -> str:
    sid = str(ctl.create_conference(friendly_name="room", status=status)["sid"])
    app.store.add_watches([sid], ACCOUNT, None, datetime.now(UTC) - timedelta(seconds=5))
    return sid


def test_callback_then_poll_gives_one_started(app: App, sim: Any) -> None:
    _server, ctl = sim
    sid = new_conference(app, ctl)
    poll(app, sid)  # baseline: init
    ctl.set_status(sid, "in-progress")
    assert send(writer(app), callback(sid, "conference-start", 1)) == ["accepted"]
    watch = watch_row(app, sid)
    assert watch.mode == "fetch" and watch.callback_sequence == 1
    # A confirming poll is due shortly (Twilio's API may lag its callbacks a little).
    assert watch.next_poll_at <= datetime.now(UTC) + CONFIRM_AFTER
    poll(app, sid)
    poll(app, sid)
    counts = events(app)
    assert counts[(sid, "conference.started")] == 1
    started = next(e for e in event_rows(app, sid) if e.type == "conference.started")
    assert '"detected_via":"callback"' in started.body
    with app.engine.connect() as conn:
        snaps = conn.execute(
            select(Snapshot.detected_via, Snapshot.region).where(Snapshot.conference_sid == sid)
        ).all()
    # The poll's snapshot fills what the callback lacked (the region).
    assert [v for v, _ in snaps] == ["poll", "callback", "poll"]
    assert snaps[-1][1] is not None and snaps[1][1] is None


def test_poll_then_callback_gives_one_started(app: App, sim: Any) -> None:
    _server, ctl = sim
    sid = new_conference(app, ctl)
    poll(app, sid)
    ctl.set_status(sid, "in-progress")
    poll(app, sid)
    assert send(writer(app), callback(sid, "conference-start", 1)) == ["stale"]
    ctl.set_status(sid, "completed", REASON, CALL)
    poll(app, sid)
    assert send(writer(app), callback(sid, "conference-end", 2)) == ["stale"]
    counts = events(app)
    assert counts[(sid, "conference.started")] == 1 and counts[(sid, "conference.ended")] == 1
    assert all('"detected_via":"poll"' in e.body for e in event_rows(app, sid))


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "row-by-row"])
def test_replayed_and_out_of_order_callbacks(app: App, sim: Any, batched: bool) -> None:
    _server, ctl = sim
    sid = new_conference(app, ctl)
    w = writer(app, batched=batched)
    start, end = callback(sid, "conference-start", 1), callback(sid, "conference-end", 2)
    assert send(w, start) == ["accepted"]
    assert send(w, start) == ["duplicate"]  # a replay
    assert send(w, end, end) == ["accepted", "duplicate"]  # twice in one group
    assert send(w, start) == ["duplicate"]
    other = new_conference(app, ctl)
    # The end arrives before the start: ended (start skipped), then the start is old news.
    assert send(
        w, callback(other, "conference-end", 2), callback(other, "conference-start", 1)
    ) == [
        "accepted",
        "duplicate",
    ]
    counts = events(app)
    assert counts[(sid, "conference.started")] == 1 and counts[(sid, "conference.ended")] == 1
    assert counts[(other, "conference.ended")] == 1 and counts[(other, "conference.started")] == 0
    assert not any(kind == "conference.irregular" for (_s, kind) in counts)
    ended = next(e for e in event_rows(app, sid) if e.type == "conference.ended")
    assert ended.reason_conference_ended == REASON and ended.call_sid_ending_conference == CALL


def test_auto_watch_off_and_on(app: App) -> None:
    sid = "CF" + "d" * 32
    assert send(writer(app), callback(sid, "conference-start", 1)) == ["unwatched"]
    assert app.store.get_watch(sid) is None and not events(app)
    assert send(writer(app, watch_unknown=True), callback(sid, "conference-start", 1)) == [
        "accepted"
    ]
    watch = watch_row(app, sid)
    assert watch.account_sid == ACCOUNT and watch.status == "active"
    assert events(app) == {(sid, "conference.first_seen"): 1, (sid, "conference.started"): 1}


def test_end_callback_keeps_the_watch_active_until_a_poll_confirms(app: App, sim: Any) -> None:
    _server, ctl = sim
    sid = new_conference(app, ctl, "in-progress")
    poll(app, sid)
    ctl.set_status(sid, "completed", REASON, CALL)
    assert send(writer(app), callback(sid, "conference-end", 2)) == ["accepted"]
    assert watch_row(app, sid).status == "active"
    poll(app, sid)
    assert watch_row(app, sid).status == "completed"
    assert events(app)[(sid, "conference.ended")] == 1


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "row-by-row"])
def test_a_poll_racing_callbacks_records_each_transition_once(
    app: App, sim: Any, batched: bool
) -> None:
    """Polls and callbacks observe the same conferences at once: one started and one
    ended each, whoever wins; on both of the writer's paths."""
    _server, ctl = sim
    sids = [new_conference(app, ctl) for _ in range(20)]
    poll(app, *sids)
    w = writer(app, batched=batched)
    w.start()
    stop = threading.Event()

    poll_failures: list[str] = []

    def keep_polling() -> None:
        while not stop.is_set():
            try:
                poll(app, *sids)
            except Exception as exc:  # the daemon's tick guard logs and retries the same way
                poll_failures.append(str(exc).splitlines()[0])

    poller = threading.Thread(target=keep_polling)
    poller.start()
    try:
        for step, (status, event) in enumerate(
            (("in-progress", "conference-start"), ("completed", "conference-end")), start=1
        ):
            for sid in sids:
                ctl.set_status(sid, status, *((REASON, CALL) if step == 2 else ()))
            answers: list[str] = []
            senders = [
                threading.Thread(
                    target=lambda s=sid, e=event, n=step, got=answers: got.append(
                        w.intake.submit(callback(s, e, n), datetime.now(UTC))
                    )
                )
                for sid in sids
            ]
            for t in senders:
                t.start()
            for t in senders:
                t.join()
            assert set(answers) <= {"accepted", "stale"}, answers
            time.sleep(0.3)
    finally:
        stop.set()
        poller.join()
        w.stop()
    assert poll_failures == []  # rows are locked in SID order: no deadlock either way
    counts = events(app)
    for sid in sids:
        assert counts[(sid, "conference.started")] == 1, sid
        assert counts[(sid, "conference.ended")] == 1, sid
    assert not any(kind == "conference.irregular" for (_s, kind) in counts)


def test_a_database_failure_answers_unavailable(tmp_path: Path, app: App) -> None:
    from monitor.db.engine import make_engine
    from monitor.db.store import Store

    empty = make_engine(f"sqlite:///{tmp_path}/no-schema.db")  # no tables: every write fails
    try:
        w = CallbackWriter(Store(empty), lambda: app.with_poller().recorder, Intake())
        assert send(w, callback("CF" + "e" * 32, "conference-start", 1)) == ["unavailable"]
    finally:
        empty.dispose()


# -- the endpoint, over HTTP ------------------------------------------------------------


@pytest.fixture
def endpoint(app: App) -> Iterator[tuple[str, CallbackWriter]]:
    w = writer(app)
    server = HealthServer("127.0.0.1:0", app.metrics, lambda: (True, "ready"))
    cb = CallbackEndpoint({ACCOUNT: TOKEN}, w.intake.submit, app.metrics)
    server.add_route(cb.route("/twilio/conference-events", 4096))
    proxied = CallbackEndpoint(
        {ACCOUNT: TOKEN},
        w.intake.submit,
        app.metrics,
        public_url="https://monitor.example.com/hooks/twilio",
    )
    server.add_route(proxied.route("/behind-proxy", 4096))
    server.start()
    w.start()
    host, port = server.address
    try:
        yield f"http://{host}:{port}", w
    finally:
        server.stop()
        w.stop()


def post(
    url: str,
    form: dict[str, str],
    *,
    signed_url: str | None = None,
    token: str = TOKEN,
    content_type: str = "application/x-www-form-urlencoded",
    body: bytes | None = None,
) -> requests.Response:
    sig = RequestValidator(token).compute_signature(signed_url or url, form)
    with requests.Session() as session:
        session.trust_env = False
        return session.post(
            url,
            data=body if body is not None else form,
            headers={"X-Twilio-Signature": sig, "Content-Type": content_type},
            timeout=10,
        )


def nothing_written(app: App, sid: str) -> bool:
    with app.engine.connect() as conn:
        snaps = conn.execute(select(func.count()).select_from(Snapshot)).scalar_one()
    watch = app.store.get_watch(sid)
    return snaps == 0 and not events(app) and (watch is None or watch.version == 0)


def test_endpoint_accepts_a_signed_callback(app: App, sim: Any, endpoint: Any) -> None:
    base, _w = endpoint
    sid = new_conference(app, sim[1])
    url = f"{base}/twilio/conference-events?site=a"
    assert post(url, fields(sid, "conference-start", 1)).status_code == 204
    assert events(app)[(sid, "conference.started")] == 1
    assert post(url, fields(sid, "participant-join", 2)).status_code == 204  # not recorded
    assert watch_row(app, sid).callback_sequence == 1


def test_endpoint_behind_a_proxy_checks_the_public_url(app: App, sim: Any, endpoint: Any) -> None:
    base, _w = endpoint
    sid = new_conference(app, sim[1])
    form = fields(sid, "conference-start", 1)
    local = f"{base}/behind-proxy"
    assert post(local, form).status_code == 403  # signed for the loopback URL: not what Twilio did
    assert nothing_written(app, sid)
    public = "https://monitor.example.com/hooks/twilio"
    assert post(local, form, signed_url=public).status_code == 204
    assert events(app)[(sid, "conference.started")] == 1


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("wrong_token", 403),
        ("tampered", 403),
        ("wrong_url", 403),
        ("no_signature", 403),
        ("unknown_account", 403),
        ("json", 415),
        ("too_large", 413),
        ("malformed", 400),
    ],
)
def test_endpoint_refusals_write_nothing(
    app: App, sim: Any, endpoint: Any, kind: str, status: int
) -> None:
    base, _w = endpoint
    sid = new_conference(app, sim[1])
    url = f"{base}/twilio/conference-events"
    form = fields(sid, "conference-start", 1)
    if kind == "wrong_token":
        answer = post(url, form, token="0" * 32)
    elif kind == "tampered":
        sig = RequestValidator(TOKEN).compute_signature(url, form)
        forged = {**form, "StatusCallbackEvent": "conference-end"}
        with requests.Session() as s:
            s.trust_env = False
            answer = s.post(url, data=forged, headers={"X-Twilio-Signature": sig}, timeout=10)
    elif kind == "wrong_url":
        answer = post(url, form, signed_url=url.replace("127.0.0.1", "example.com"))
    elif kind == "no_signature":
        with requests.Session() as s:
            s.trust_env = False
            answer = s.post(url, data=form, timeout=10)
    elif kind == "unknown_account":
        answer = post(url, {**form, "AccountSid": "AC" + "f" * 32})
    elif kind == "json":
        answer = post(url, form, content_type="application/json", body=b'{"a": 1}')
    elif kind == "too_large":
        answer = post(url, {**form, "Padding": "x" * 5000})
    else:
        answer = post(url, {**form, "SequenceNumber": "soon"})
    assert answer.status_code == status
    assert nothing_written(app, sid)
    metrics = app.metrics.render().decode()
    result = {
        "wrong_token": "bad_signature",
        "tampered": "bad_signature",
        "wrong_url": "bad_signature",
        "no_signature": "bad_signature",
        "json": "unsupported_media",
    }.get(kind, kind)
    assert f'conference_monitor_callbacks_total{{result="{result}"}} 1.0' in metrics


def test_a_batch_that_finds_a_row_changed_under_it_is_refused_whole(app: App, sim: Any) -> None:
    """`write_changes` writes only if every compare-and-set wins (else the writer
    rolls back and records the group row by row)."""
    from monitor.callbacks.decide import decide
    from monitor.db.store import BatchResult, LostRace

    _server, ctl = sim
    a, b = new_conference(app, ctl), new_conference(app, ctl)
    now = datetime.now(UTC)
    recipients = app.with_poller().recorder.recipients
    changes = []
    for sid in (a, b):
        watch = app.store.get_watch(sid)
        assert watch is not None
        obs = decide(watch, callback(sid, "conference-start", 1), now, recipients)
        assert not isinstance(obs, str)
        changes.append(obs)
    poll(app, b)  # the rows move on after the decisions were made
    with pytest.raises(LostRace), app.store.writing() as conn:
        app.store.write_changes(conn, changes, now, BatchResult())
    assert watch_row(app, a).callback_sequence is None
    assert watch_row(app, b).callback_sequence is None
    assert not any(kind == "conference.started" for (_s, kind) in events(app))
