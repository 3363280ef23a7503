"""Each delivery on its own clock: one event's failures never hold up the others.

Real outbox on SQLite and PostgreSQL, real `WebhookNotifier`, scripted receivers on
loopback (the helpers of test_dispatcher). Delays are chosen so that the wrong
behaviour (pausing a whole notifier after one failure) makes the test time out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from monitor.db.engine import make_engine, upgrade
from monitor.db.outbox import Outbox
from monitor.db.store import Store
from monitor.domain import EventType
from monitor.notify.dispatcher import Dispatcher, NotifierHealth
from tests.integration.test_dispatcher import (  # noqa: F401 (fixtures)
    Answer,
    Hook,
    WAIT_S,
    Request,
    dispatchers,
    engine,
    hooks,
    lifecycle,
    lite,
    make_event,
    pump,
    rows,
    sid,
    statuses,
    webhook,
)

LONG_S = 3600.0  # a delay no test waits for: if anything waits on it, the test times out


def test_one_failing_event_does_not_delay_the_others(
    engine: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    store = Store(engine)
    bad = make_event(EventType.ENDED, sid(999), ("hook",))
    store.write_events([bad])
    good = [make_event(EventType.ENDED, sid(n), ("hook",)) for n in range(30)]
    store.write_events(good)
    hook = hooks(lambda r, _i: Answer(500) if r.webhook_id == bad.id else Answer())
    outbox = Outbox(engine)
    dispatcher = dispatchers(
        outbox, {"hook": webhook("hook", hook)}, retry_delays_s=(LONG_S,), batch_size=7
    )
    pump(dispatcher, lambda: len(hook.delivered()) == len(good), "the healthy events")
    assert sorted(hook.delivered()) == sorted(e.id for e in good)
    assert hook.ids().count(bad.id) == 1  # tried once, then on its own schedule
    failed = rows(outbox)[bad.id]
    assert failed["status"] == "pending" and failed["attempts"] == 1
    assert (failed["next_attempt_at"] - datetime.now(UTC)).total_seconds() > LONG_S - 60


def test_a_flaky_receiver_gets_every_event_and_keeps_each_conferences_order(
    engine: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    """Every third request fails: each failed event is retried alone, order per conference kept."""
    hook = hooks(lambda _r, i: Answer(500) if i % 3 == 1 else Answer())
    outbox = Outbox(engine)
    events = lifecycle(Store(engine), 20, ("hook",))
    dispatcher = dispatchers(outbox, {"hook": webhook("hook", hook)}, retry_delays_s=(0.2,))
    pump(dispatcher, lambda: len(set(hook.delivered())) == len(events), "every event")
    assert statuses(outbox) == {"delivered": len(events)}
    delivered = hook.delivered()
    for n in range(20):
        started, ended = events[2 * n].id, events[2 * n + 1].id
        first_ended_try = hook.ids().index(ended)
        assert delivered.index(started) < len(delivered)
        # `ended` was not even tried before `started` got its 2xx.
        started_ok = next(
            i for i, r in enumerate(hook.requests) if r.webhook_id == started and r.answered == 204
        )
        assert first_ended_try > started_ok


def test_retry_after_pauses_only_that_notifier_for_exactly_that_long(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    busy = hooks(lambda _r, i: Answer(429, headers={"Retry-After": "1"}) if i == 0 else Answer())
    other = hooks(lambda _r, _i: Answer(503, headers={"Retry-After": str(int(LONG_S))}))
    fine = hooks()
    outbox = Outbox(lite)
    names = ("busy", "other", "fine")
    events = [make_event(EventType.ENDED, sid(n), names) for n in range(6)]
    Store(lite).write_events(events)
    dispatcher = dispatchers(
        outbox,
        {name: webhook(name, hook) for name, hook in zip(names, (busy, other, fine), strict=True)},
        retry_delays_s=(LONG_S,),  # the schedule alone would never come back in time
        concurrency=1,  # one request at a time: nothing else is in flight when the 429 comes
    )
    pump(dispatcher, lambda: len(fine.delivered()) == len(events), "the healthy notifier")
    pump(dispatcher, lambda: len(busy.delivered()) == len(events), "the paused notifier resumed")
    # `other` asked for an hour: one request, nothing since; `fine` never noticed.
    assert len(other.requests) == 1
    assert statuses(outbox, "other") == {"pending": len(events)}
    # `busy` asked for one second: its next request came that long after the 429's answer,
    # not after the schedule's first delay (an hour here), and the 429'd row went again.
    first = rows(outbox, "busy")[busy.requests[0].webhook_id]
    log = outbox.show(first["id"])["attempt_log"]  # type: ignore[index]
    answered = log[0]["attempted_at"] + timedelta(milliseconds=log[0]["duration_ms"])
    assert [a["status_code"] for a in log] == [429, 204]
    assert 1.0 <= (log[1]["attempted_at"] - answered).total_seconds() < 30
    state = outbox.notifier_states()["busy"]
    assert state.pause_reason == "HTTP 429 with Retry-After 1s"
    assert state.paused_until is not None
    # From the moment the answer came back (to the millisecond the log keeps).
    assert -0.01 <= (state.paused_until - answered).total_seconds() - 1.0 < 0.5
    assert statuses(outbox, "busy") == {"delivered": len(events)}
    assert "fine" not in outbox.notifier_states()


@pytest.mark.postgres
def test_a_pause_recorded_by_one_instance_holds_the_other_back(
    pg_url: str, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    engine = make_engine(pg_url)
    try:
        upgrade(engine)
        busy = hooks(
            lambda _r, i: Answer(429, headers={"Retry-After": "3600"}) if i == 0 else Answer()
        )
        Store(engine).write_events(
            [make_event(EventType.ENDED, sid(n), ("busy",)) for n in range(5)]
        )
        one = dispatchers(
            Outbox(engine), {"busy": webhook("busy", busy)}, concurrency=1, batch_size=1
        )
        two = dispatchers(Outbox(engine), {"busy": webhook("busy", busy)}, concurrency=1)
        assert one.tick() == 1
        assert one.wait(WAIT_S)
        assert len(busy.requests) == 1  # the 429, recorded in the shared notifier_state
        for _ in range(3):
            assert two.tick() == 0 and one.tick() == 0
        assert two.wait(WAIT_S) and len(busy.requests) == 1
        assert Outbox(engine).notifier_states()["busy"].paused_until is not None
    finally:
        engine.dispose()


def test_the_circuit_opens_after_consecutive_failures_and_one_probe_closes_it(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    down = threading.Event()
    down.set()
    probe_gate = threading.Event()
    seen_while_open: list[int] = []

    def answer(_r: Request, index: int) -> Answer:
        if down.is_set():
            return Answer(500)
        if not probe_gate.is_set():
            seen_while_open.append(index)
            return Answer(hold=probe_gate)  # the probe: held until the test looked
        return Answer()

    hook = hooks(answer)
    outbox = Outbox(lite)
    events = [make_event(EventType.ENDED, sid(n), ("hook",)) for n in range(12)]
    Store(lite).write_events(events)
    health: list[NotifierHealth] = []
    dispatcher = dispatchers(
        outbox,
        {"hook": webhook("hook", hook)},
        retry_delays_s=(0.05,),
        concurrency=1,
        breaker_threshold=3,
        breaker_cooldown_s=0.5,
        breaker_window_s=0,
        on_health=health.append,
    )
    pump(dispatcher, lambda: outbox.notifier_states().get("hook") is not None, "the circuit")
    state = outbox.notifier_states()["hook"]
    assert state.circuit == "open" and state.consecutive_failures == 3
    assert state.pause_reason is not None and "3 consecutive failures" in state.pause_reason
    assert len(hook.requests) == 3  # nothing more while open, though rows are due
    for _ in range(5):
        dispatcher.tick()
    assert len(hook.requests) == 3

    # Once the cooldown is over, one probe and only one, even with rows due and ticks coming.
    down.clear()
    pump(dispatcher, lambda: len(seen_while_open) == 1, "the probe", settle=False)
    for _ in range(5):
        dispatcher.tick()
        time.sleep(0.02)
    assert len(hook.requests) == 4 and outbox.notifier_states()["hook"].circuit == "probing"
    assert any(h.state == "probing" for h in health)
    probe_gate.set()
    pump(dispatcher, lambda: len(hook.delivered()) == len(events), "everything after the probe")
    state = outbox.notifier_states()["hook"]
    assert (state.circuit, state.paused_until, state.consecutive_failures) == (None, None, 0)
    assert statuses(outbox) == {"delivered": len(events)}
    assert [h.state for h in health if h.state != "ok"][:1] == ["open"]
    assert health[-1].policy.breaker_threshold == 3


def test_a_failed_probe_opens_the_circuit_again(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    hook = hooks(lambda _r, i: Answer(500) if i < 3 else Answer())  # the 3rd request: the probe
    outbox = Outbox(lite)
    Store(lite).write_events([make_event(EventType.ENDED, sid(n), ("hook",)) for n in range(4)])
    dispatcher = dispatchers(
        outbox,
        {"hook": webhook("hook", hook)},
        retry_delays_s=(0.05,),
        concurrency=1,
        breaker_threshold=2,
        breaker_cooldown_s=0.3,
        breaker_window_s=0,
    )
    pump(dispatcher, lambda: len(hook.requests) == 3, "the first probe")
    state = outbox.notifier_states()["hook"]
    assert state.circuit == "open" and "the probe failed" in (state.pause_reason or "")
    pump(dispatcher, lambda: len(hook.delivered()) == 4, "the second probe and the rest")
    assert outbox.notifier_states()["hook"].circuit is None


def test_concurrency_is_per_notifier_and_bounded(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    gate = threading.Event()
    hook = hooks(lambda _r, _i: Answer(hold=gate))
    outbox = Outbox(lite)
    events = [make_event(EventType.ENDED, sid(n), ("hook",)) for n in range(10)]
    Store(lite).write_events(events)
    dispatcher = dispatchers(outbox, {"hook": webhook("hook", hook, 10.0)}, concurrency=3)
    pump(dispatcher, lambda: len(hook.requests) == 3, "three requests at once", settle=False)
    for _ in range(5):
        dispatcher.tick()
        time.sleep(0.02)
    assert len(hook.requests) == 3 and all(r.answered is None for r in hook.requests)
    gate.set()
    pump(dispatcher, lambda: len(hook.delivered()) == len(events), "the rest")
    assert Counter(hook.ids()) == Counter({e.id: 1 for e in events})


def test_a_burst_of_failures_does_not_open_the_circuit_and_each_event_recovers(
    lite: Engine, hooks: Callable[..., Hook], dispatchers: Callable[..., Dispatcher]
) -> None:
    """Every event fails twice (500, then 429 with Retry-After: 1), all at once: no outage."""

    def answer(request: Request, _index: int) -> Answer:
        tries = sum(1 for r in hook.requests if r.webhook_id == request.webhook_id)
        if tries == 1:
            return Answer(500)
        if tries == 2:
            return Answer(429, headers={"Retry-After": "1"})
        return Answer()

    hook = hooks(answer)
    outbox = Outbox(lite)
    events = [make_event(EventType.ENDED, sid(n), ("hook",)) for n in range(10)]
    Store(lite).write_events(events)
    health: list[NotifierHealth] = []
    dispatcher = dispatchers(
        outbox,
        {"hook": webhook("hook", hook)},
        retry_delays_s=(0.2, LONG_S),
        breaker_threshold=3,  # ten failures in a row, but within a moment: not a dead receiver
        on_health=health.append,
    )
    pump(dispatcher, lambda: len(hook.delivered()) == len(events), "every event")
    assert Counter(hook.ids()) == Counter({e.id: 3 for e in events})
    assert statuses(outbox) == {"delivered": len(events)}
    assert "open" not in {h.state for h in health}
    assert outbox.notifier_states()["hook"].circuit is None
