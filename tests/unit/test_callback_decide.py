"""What a callback means for a watch: forward only, replays dropped, baselines on first sight."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.callbacks.decide import CONFIRM_AFTER, DUPLICATE, STALE, decide
from monitor.callbacks.form import CallbackForm
from monitor.db.store import Observation, WatchState
from monitor.lifecycle import LifecycleState

SID = "CF" + "b" * 32
ACCOUNT = "AC" + "a" * 32
CALL = "CA" + "c" * 32
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WATCH = WatchState(SID, ACCOUNT, T0, LifecycleState(), None, None, None)


def nobody(_type: str, _data: dict[str, object]) -> tuple[str, ...]:
    return ("hook",)


def form(event: str, seq: int, at: datetime = T0 + timedelta(seconds=5)) -> CallbackForm:
    end = event == "conference-end"
    return CallbackForm(
        event,
        SID,
        ACCOUNT,
        "room",
        seq,
        at,
        "last-participant-left" if end else None,
        CALL if end else None,
    )


def seen(last: str, high: str, seq: int | None = None) -> WatchState:
    return replace(WATCH, lifecycle=LifecycleState(last, high, True), callback_sequence=seq)


def test_start_on_an_unseen_watch_is_a_baseline_and_a_start() -> None:
    received = T0 + timedelta(seconds=6)
    obs = decide(WATCH, form("conference-start", 1), received, nobody)
    assert isinstance(obs, Observation)
    assert [e.type for e in obs.events] == ["conference.first_seen", "conference.started"]
    assert obs.detected_via == "callback" and obs.sequence == 1
    assert obs.observed_at == received and obs.confirm_at == received + CONFIRM_AFTER
    started = obs.events[1]
    assert started.occurred_at == T0 + timedelta(seconds=5)
    assert started.data["detected_via"] == "callback" and started.notifiers == ("hook",)


def test_end_carries_reason_and_ending_call() -> None:
    obs = decide(seen("in-progress", "in-progress", 1), form("conference-end", 2), T0, nobody)
    assert isinstance(obs, Observation)
    (ended,) = obs.events
    assert ended.type == "conference.ended" and ended.skipped == ()
    assert ended.reason_conference_ended == "last-participant-left"
    assert ended.call_sid_ending_conference == CALL


def test_a_status_already_known_is_stale() -> None:
    assert decide(seen("in-progress", "in-progress"), form("conference-start", 1), T0, nobody) == (
        STALE
    )


def test_a_late_start_after_the_end_is_stale_not_irregular() -> None:
    assert decide(seen("completed", "completed", 2), form("conference-start", 3), T0, nobody) == (
        STALE
    )


def test_a_replayed_sequence_is_a_duplicate() -> None:
    watch = seen("init", "init", 5)
    assert decide(watch, form("conference-start", 5), T0, nobody) == DUPLICATE
    assert decide(watch, form("conference-end", 4), T0, nobody) == DUPLICATE


def test_end_before_start_ends_with_the_start_skipped_then_the_start_is_dropped() -> None:
    obs = decide(seen("init", "init"), form("conference-end", 2), T0, nobody)
    assert isinstance(obs, Observation)
    assert [(e.type, e.skipped) for e in obs.events] == [("conference.ended", ("in-progress",))]
    after = seen("completed", "completed", 2)
    assert decide(after, form("conference-start", 1), T0, nobody) == DUPLICATE


def test_a_timestamp_in_the_future_is_taken_as_the_receipt() -> None:
    received = T0 + timedelta(seconds=1)
    obs = decide(WATCH, form("conference-start", 1, T0 + timedelta(hours=1)), received, nobody)
    assert isinstance(obs, Observation)
    assert all(e.occurred_at == received for e in obs.events)
