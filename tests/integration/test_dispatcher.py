"""The dispatcher against a real database and real webhook receivers on loopback.

No part of the dispatcher, outbox or notifier is replaced: rows are written by the
store, claimed and recorded by the outbox, posted by `WebhookNotifier` to HTTP
servers on 127.0.0.1 that answer as each test scripts them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine

from monitor.config_schema import DispatchSettings
from monitor.db.engine import make_engine, upgrade
from monitor.db.outbox import Claimed, Outbox
from monitor.db.store import Store
from monitor.domain import EventType, new_event_id
from monitor.events import NewEvent, document
from monitor.notify.base import DeliveryError
from monitor.notify.dispatcher import Dispatcher, next_outcome
from monitor.notify.retry import DEFAULT_CONCURRENCY
from monitor.notify.webhook import WebhookNotifier

ACCOUNT = "AC" + "a" * 32
SECRET = "whsec_" + base64.b64encode(b"dispatcher-test-secret-0123456789").decode()
QUICK_DELAYS = (0.05, 0.1)
WAIT_S = 20.0


# --- A scripted receiver --------------------------------------------------------------


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: threading.Event | None = None  # answer only once this is set


@dataclass
class Request:
    webhook_id: str
    body: dict[str, Any]
    answered: int | None = None  # the status, set just before the reply goes out


class Hook(ThreadingHTTPServer):
    """Records every POST; `answer(request, index)` decides the reply (default 204)."""

    daemon_threads = True

    def __init__(self, answer: Callable[[Request, int], Answer] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer or (lambda _r, _i: Answer())
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.released = threading.Event()  # set at teardown: nothing stays held

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def ids(self, answered: int | None = None) -> list[str]:
        with self.lock:
            return [
                r.webhook_id for r in self.requests if answered is None or r.answered == answered
            ]

    def delivered(self) -> list[str]:
        """webhook-ids answered 2xx, in the order the answers went out."""
        with self.lock:
            return [r.webhook_id for r in self.requests if r.answered and r.answered < 300]


class _Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = Request(self.headers["webhook-id"], json.loads(raw))
        with self.server.lock:
            self.server.requests.append(request)
            index = len(self.server.requests) - 1
        answer = self.server.answer(request, index)
        if answer.hold is not None:
            while not (answer.hold.is_set() or self.server.released.is_set()):
                answer.hold.wait(0.05)
        with self.server.lock:  # before the reply leaves: the notifier may act on it at once
            request.answered = answer.status
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the notifier stopped reading: the point of some tests
            self.wfile.write(answer.body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[Callable[..., Hook]]:
    started: list[tuple[Hook, threading.Thread]] = []

    def start(answer: Callable[[Request, int], Answer] | None = None) -> Hook:
        hook = Hook(answer)
        thread = threading.Thread(target=hook.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((hook, thread))
        return hook

    yield start
    for hook, thread in started:
        hook.released.set()
        hook.shutdown()
        hook.server_close()
        thread.join(5)


# --- Database, events, dispatchers ------------------------------------------------------


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """SQLite and PostgreSQL: for what depends on the claim and lease SQL."""
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[Engine]:
    """SQLite only: for what is about receivers, not SQL."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def make_event(
    type_: str, sid: str, notifiers: tuple[str, ...], name: str = "room", **data: Any
) -> NewEvent:
    at = datetime.now(UTC)
    event_id = new_event_id()
    payload = {"conference_sid": sid, "account_sid": ACCOUNT, "friendly_name": name, **data}
    return NewEvent(
        id=event_id,
        type=type_,
        conference_sid=sid,
        account_sid=ACCOUNT,
        occurred_at=at,
        body=document(type_, event_id, at, payload),
        notifiers=notifiers,
    )


def sid(n: int) -> str:
    return f"CF{n:032x}"


def lifecycle(store: Store, count: int, notifiers: tuple[str, ...]) -> list[NewEvent]:
    """started then ended for `count` conferences, written the way a poll writes them."""
    events = []
    for n in range(count):
        started = make_event(EventType.STARTED, sid(n), notifiers)
        ended = make_event(EventType.ENDED, sid(n), notifiers)
        store.write_events([started])
        store.write_events([ended])
        events += [started, ended]
    return events


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(outbox: Outbox, notifiers: dict[str, Any], **kwargs: Any) -> Dispatcher:
        kwargs.setdefault("retry_delays_s", QUICK_DELAYS)
        kwargs.setdefault("attempt_margin_s", 0.5)
        kwargs.setdefault("breaker_cooldown_s", 0.2)
        dispatcher = Dispatcher(outbox, notifiers, **kwargs)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.close(5.0)
        dispatcher.wait(5.0)


def webhook(name: str, hook: Hook, timeout_s: float = 2.0) -> WebhookNotifier:
    return WebhookNotifier(name, hook.url, SECRET, timeout_s=timeout_s)


def pump(
    dispatcher: Dispatcher, done: Callable[[], bool], what: str, *, settle: bool = True
) -> None:
    """Tick like the daemon's scheduler until `done()`; fail after WAIT_S.

    With `settle`, also wait for the batches in flight, so their outcomes are recorded.
    """
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        dispatcher.tick()
        time.sleep(0.02)
    if settle:
        assert dispatcher.wait(WAIT_S), f"batches still running after {what}"


def rows(outbox: Outbox, notifier: str | None = None) -> dict[str, dict[str, Any]]:
    return {r["event_id"]: r for r in outbox.listing(notifier=notifier, limit=10_000)}


def statuses(outbox: Outbox, notifier: str | None = None) -> Counter[str]:
    return Counter(r["status"] for r in rows(outbox, notifier).values())


# --- Tests ------------------------------------------------------------------------------


def test_ended_waits_until_started_is_delivered(
    engine: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    started_fails = 3

    def answer(request: Request, _index: int) -> Answer:
        tries = sum(1 for r in hook.requests if r.webhook_id == request.webhook_id)
        if request.body["type"] == EventType.STARTED and tries <= started_fails:
            return Answer(500)
        return Answer()

    hook = hooks(answer)
    outbox = Outbox(engine)
    events = lifecycle(Store(engine), 3, ("hook",))
    dispatcher = dispatchers(outbox, {"hook": webhook("hook", hook)})
    pump(dispatcher, lambda: len(hook.delivered()) == len(events), "every event delivered")

    for n in range(3):
        started, ended = events[2 * n].id, events[2 * n + 1].id
        seen = hook.ids()
        assert seen.count(started) == started_fails + 1
        # Not one attempt at `ended` before `started` got its 2xx.
        started_ok = next(
            i for i, r in enumerate(hook.requests) if r.webhook_id == started and r.answered == 204
        )
        assert seen.index(ended) > started_ok
        assert seen.count(ended) == 1
    assert statuses(outbox) == {"delivered": len(events)}


@pytest.mark.parametrize("fate", ["failed", "dead"])
def test_ended_goes_once_started_has_failed_or_died(
    fate: str,
    lite: Engine,
    hooks: Callable[..., Hook],
    dispatchers: Callable[..., Dispatcher],
) -> None:
    def answer(request: Request, _index: int) -> Answer:
        if request.body["type"] == EventType.STARTED:
            return Answer(400 if fate == "failed" else 503)
        return Answer()

    hook = hooks(answer)
    outbox = Outbox(lite)
    started, ended = lifecycle(Store(lite), 1, ("hook",))
    dispatcher = dispatchers(outbox, {"hook": webhook("hook", hook)}, give_up_after_s=0.3)
    pump(dispatcher, lambda: hook.delivered() == [ended.id], "ended delivered")
    assert rows(outbox)[started.id]["status"] == fate
    assert rows(outbox)[ended.id]["status"] == "delivered"
    assert hook.ids()[-1] == ended.id and hook.ids().count(ended.id) == 1


def test_one_hanging_receiver_never_delays_another_notifier(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    stuck = threading.Event()
    slow = hooks(lambda _r, _i: Answer(hold=stuck))
    fast = hooks()
    outbox = Outbox(lite)
    events = lifecycle(Store(lite), 5, ("slow", "fast"))
    dispatcher = dispatchers(
        outbox, {"slow": webhook("slow", slow, 10.0), "fast": webhook("fast", fast)}
    )
    pump(
        dispatcher,
        lambda: len(fast.delivered()) == len(events),
        "the fast receiver served",
        settle=False,  # the other notifier's worker is still waiting for its answer
    )
    # Everything reached the healthy receiver while the first requests to the other one
    # (as many as its concurrency allows) were still waiting for their answers.
    assert len(slow.requests) == DEFAULT_CONCURRENCY
    assert all(r.answered is None for r in slow.requests)
    assert sorted(fast.delivered()) == sorted(e.id for e in events)
    stuck.set()
    pump(dispatcher, lambda: len(slow.delivered()) == len(events), "the slow receiver served")


def test_a_huge_answer_or_a_redirect_neither_stalls_nor_misleads(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    five_mb = b"x" * (5 * 1024 * 1024)
    huge = hooks(lambda _r, _i: Answer(200, body=five_mb))
    huge_error = hooks(lambda _r, i: Answer(503, body=five_mb) if i == 0 else Answer())
    target = hooks()  # where the redirect points: must never be called
    moved = hooks(lambda _r, _i: Answer(307, headers={"Location": target.url}))
    outbox = Outbox(lite)
    names = ("huge", "huge_error", "moved")
    events = lifecycle(Store(lite), 10, names)
    notifiers = {
        "huge": webhook("huge", huge),
        "huge_error": webhook("huge_error", huge_error),
        "moved": webhook("moved", moved),
    }
    dispatcher = dispatchers(outbox, notifiers)
    pump(
        dispatcher,
        lambda: not any(r["status"] == "pending" for r in outbox.listing(limit=1000)),
        "every row settled",
    )
    assert statuses(outbox, "huge") == {"delivered": len(events)}
    assert statuses(outbox, "huge_error") == {"delivered": len(events)}
    assert len(huge_error.requests) == len(events) + 1  # one retry after the 5 MB 503
    # A redirect is a permanent failure, said so, and the target never hears from us.
    moved_rows = rows(outbox, "moved")
    assert {r["status"] for r in moved_rows.values()} == {"failed"}
    assert all(
        "307" in r["last_error"] and "not followed" in r["last_error"] for r in moved_rows.values()
    )
    assert all(r["last_status_code"] == 307 for r in moved_rows.values())
    assert target.requests == []


def test_410_disables_only_that_notifier_and_counts_as_disabled(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    gone = hooks(lambda _r, i: Answer(410) if i == 0 else Answer())
    fine = hooks()
    outbox = Outbox(lite)
    events = lifecycle(Store(lite), 4, ("gone", "fine"))
    counted: list[tuple[str, str]] = []
    dispatcher = dispatchers(
        outbox,
        {"gone": webhook("gone", gone), "fine": webhook("fine", fine)},
        on_outcome=lambda n, outcome, _s: counted.append((n, outcome)),
        concurrency=1,  # one request at a time: the 410 is the only answer before the stop
    )
    pump(dispatcher, lambda: len(fine.delivered()) == len(events), "the other notifier served")
    dispatcher.wait(WAIT_S)
    for _ in range(5):  # more ticks: the disabled notifier is left alone
        dispatcher.tick()
        dispatcher.wait(WAIT_S)
    assert len(gone.requests) == 1
    assert "gone" in outbox.disabled_notifiers()
    assert Counter(o for n, o in counted if n == "gone") == {"disabled": 1}
    first = gone.requests[0].webhook_id
    assert rows(outbox, "gone")[first]["status"] == "failed"
    assert statuses(outbox, "gone") == {"failed": 1, "pending": len(events) - 1}

    # Replaying the failed row re-enables the notifier; everything then goes out.
    (failed_id,) = [r["id"] for r in outbox.listing(status="failed")]
    assert outbox.retry([failed_id], datetime.now(UTC)) == [failed_id]
    pump(dispatcher, lambda: len(set(gone.delivered())) == len(events), "the replay")
    assert statuses(outbox, "gone") == {"delivered": len(events)}


def test_a_failing_receiver_is_left_alone_as_retry_after_asks(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    busy = hooks(lambda _r, _i: Answer(429, headers={"Retry-After": "3600"}))
    outbox = Outbox(lite)
    lifecycle(Store(lite), 5, ("busy",))
    dispatcher = dispatchers(outbox, {"busy": webhook("busy", busy)}, concurrency=1)
    assert dispatcher.tick() == 5  # five different conferences: one batch
    assert dispatcher.wait(WAIT_S)
    # One 429 and the rest of the batch waits; the receiver is not asked again.
    assert len(busy.requests) == 1
    assert dispatcher.tick() == 0
    listed = outbox.listing()
    (tried,) = [r for r in listed if r["attempts"]]
    assert tried["last_status_code"] == 429
    assert (tried["next_attempt_at"] - datetime.now(UTC)).total_seconds() > 3000
    assert all(r["lease_owner"] is None and r["status"] == "pending" for r in listed)


def test_drain_finishes_the_attempt_in_flight_and_releases_the_rest(
    engine: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    gate = threading.Event()
    hook = hooks(lambda _r, i: Answer(hold=gate if i == 0 else None))
    outbox = Outbox(engine)
    events = lifecycle(Store(engine), 5, ("hook",))
    first = dispatchers(outbox, {"hook": webhook("hook", hook, 10.0)}, concurrency=1)
    assert first.tick() == 5
    pump(first, lambda: len(hook.requests) == 1, "the first request", settle=False)
    assert first.drain(0.1) is False  # still waiting for the held answer
    assert first.tick() == 0  # drained: claims nothing
    gate.set()
    assert first.wait(WAIT_S)
    assert len(hook.requests) == 1 and hook.delivered() == [hook.requests[0].webhook_id]

    # The four rows never attempted were released, not left leased for a minute.
    left = [r for r in outbox.listing() if r["status"] == "pending"]
    assert len(left) == len(events) - 1 and all(r["lease_owner"] is None for r in left)
    second = dispatchers(outbox, {"hook": webhook("hook", hook)})
    pump(second, lambda: len(hook.delivered()) == len(events), "the rest by another dispatcher")
    assert Counter(hook.ids()) == Counter({e.id: 1 for e in events})


def test_a_batch_longer_than_the_lease_keeps_its_rows(
    engine: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    """Each answer takes a while; a second dispatcher keeps trying to claim the same rows."""

    def slowly(_r: Request, _i: int) -> Answer:
        time.sleep(0.25)
        return Answer()

    hook = hooks(slowly)
    outbox = Outbox(engine)
    events = lifecycle(Store(engine), 8, ("hook",))  # 8 rows in one batch: ~2 s of work
    # One at a time, each attempt with room to spare on a loaded machine (a timeout
    # would be retried, and the receiver would rightly see that event twice); the
    # lease is one attempt's budget (1.1 s), about half the batch.
    lease = {"lease_s": 0.6, "attempt_margin_s": 0.1, "concurrency": 1}
    one = dispatchers(outbox, {"hook": webhook("hook", hook, 1.0)}, **lease)
    two = dispatchers(outbox, {"hook": webhook("hook", hook, 1.0)}, **lease)
    assert one.tick() == 8
    stop = threading.Event()

    def rival() -> None:
        while not stop.is_set():
            two.tick()
            time.sleep(0.01)

    thread = threading.Thread(target=rival)
    thread.start()
    try:
        pump(one, lambda: len(set(hook.delivered())) == len(events), "every event")
    finally:
        stop.set()
        thread.join()
    assert Counter(hook.ids()) == Counter({e.id: 1 for e in events})


@pytest.mark.postgres
def test_two_dispatchers_on_one_postgres_deliver_each_row_once(
    pg_url: str, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    engine = make_engine(pg_url)
    try:
        upgrade(engine)
        hook = hooks()
        conferences = 150
        events = lifecycle(Store(engine), conferences, ("hook",))
        shares: Counter[int] = Counter()

        def counter(index: int) -> Callable[[str, str, float], None]:
            return lambda _n, _outcome, _s: shares.update([index])

        pair = [
            dispatchers(
                Outbox(engine),
                {"hook": webhook("hook", hook)},
                batch_size=7,
                on_outcome=counter(i),
            )
            for i in range(2)
        ]
        errors: list[BaseException] = []

        def run(dispatcher: Dispatcher) -> None:
            try:
                pump(dispatcher, lambda: len(hook.delivered()) >= len(events), "all rows")
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(d,)) for d in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for dispatcher in pair:
            dispatcher.wait(WAIT_S)
        assert not errors, errors
        assert Counter(hook.ids()) == Counter({e.id: 1 for e in events})
        owners = Counter(r["lease_owner"] for r in Outbox(engine).listing(limit=10_000))
        assert owners == {None: len(events)}
        # Both took a share, and the per-conference order held across the two.
        assert shares[0] > 0 and shares[1] > 0 and sum(shares.values()) == len(events)
        delivered = hook.delivered()
        for n in range(conferences):
            assert delivered.index(events[2 * n].id) < delivered.index(events[2 * n + 1].id)
    finally:
        engine.dispose()


def test_the_default_schedule_retries_for_more_than_a_day_then_gives_up() -> None:
    """Pure schedule check: a receiver down for good, tried on the default [dispatch] settings."""
    defaults = DispatchSettings()
    created = datetime(2026, 1, 1, tzinfo=UTC)
    at, attempts, delays = created, 0, []
    while True:
        row = Claimed(1, "evt_x", "conference.ended", "hook", sid(1), "{}", attempts, created)
        outcome = next_outcome(
            row,
            DeliveryError("HTTP 503"),
            at,
            1.0,
            defaults.retry_delays_s,
            defaults.give_up_after_s,
        )
        attempts += 1
        if outcome.status == "dead":
            break
        assert outcome.status == "pending" and outcome.next_attempt_at is not None
        delays.append((outcome.next_attempt_at - at).total_seconds())
        at = outcome.next_attempt_at
    assert delays == sorted(delays) and delays[0] == 5 and delays[-1] == 3600
    assert (at - created).total_seconds() >= 24 * 3600  # the last try came after a full day
    # A Retry-After longer than the schedule wins; a permanent error stops at once.
    row = Claimed(1, "evt_x", "conference.ended", "hook", sid(1), "{}", 0, created)
    asked = next_outcome(row, DeliveryError("429", retry_after_s=90), created, 1.0, (5,), 3600)
    assert asked.next_attempt_at == created + timedelta(seconds=90)
    refused = next_outcome(row, DeliveryError("400", permanent=True), created, 1.0, (5,), 3600)
    assert refused.status == "failed"
