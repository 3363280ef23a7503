"""Lifecycle detection, table-driven: every status pair, skips, regressions, unknowns."""

from __future__ import annotations

import itertools

import pytest

from monitor.domain import EventType
from monitor.lifecycle import LifecycleState, detect

STARTED, ENDED, IRREGULAR, FIRST = (
    EventType.STARTED,
    EventType.ENDED,
    EventType.IRREGULAR,
    EventType.FIRST_SEEN,
)
KNOWN = ["init", "in-progress", "completed"]


def run(statuses: list[str | None]) -> list[tuple[str, str | None, str | None, tuple[str, ...]]]:
    state = LifecycleState()
    out = []
    for status in statuses:
        transitions, state = detect(state, status)
        out.extend((t.type.value, t.from_status, t.to_status, t.skipped) for t in transitions)
    return out


@pytest.mark.parametrize("status", [*KNOWN, "paused", None])
def test_first_sight_is_a_baseline_whatever_the_status(status: str | None) -> None:
    assert run([status]) == [(FIRST.value, None, status, ())]


# Every ordered pair of known statuses, starting from a baseline of the first.
PAIRS = {
    ("init", "init"): [],
    ("init", "in-progress"): [(STARTED.value, "init", "in-progress", ())],
    ("init", "completed"): [(ENDED.value, "init", "completed", ("in-progress",))],
    ("in-progress", "init"): [(IRREGULAR.value, "in-progress", "init", ())],
    ("in-progress", "in-progress"): [],
    ("in-progress", "completed"): [(ENDED.value, "in-progress", "completed", ())],
    ("completed", "init"): [(IRREGULAR.value, "completed", "init", ())],
    ("completed", "in-progress"): [(IRREGULAR.value, "completed", "in-progress", ())],
    ("completed", "completed"): [],
}


@pytest.mark.parametrize(("a", "b"), list(itertools.product(KNOWN, KNOWN)))
def test_every_status_pair(a: str, b: str) -> None:
    assert run([a, b])[1:] == PAIRS[(a, b)]


def test_full_lifecycle_emits_started_then_ended_once() -> None:
    got = run(["init", "init", "in-progress", "in-progress", "completed", "completed"])
    assert [g[0] for g in got] == [FIRST.value, STARTED.value, ENDED.value]


def test_regression_never_produces_a_second_started() -> None:
    got = run(["init", "in-progress", "init", "in-progress", "completed"])
    assert [g[0] for g in got] == [
        FIRST.value,
        STARTED.value,
        IRREGULAR.value,
        IRREGULAR.value,
        ENDED.value,
    ]
    assert got[-1][3] == ()  # in-progress was seen before, so nothing was skipped


def test_completed_is_terminal_and_never_ended_twice() -> None:
    transitions, state = detect(LifecycleState(), "in-progress")
    _, state = detect(state, "completed")
    assert state.terminal
    _, state = detect(state, "in-progress")
    again, state = detect(state, "completed")
    assert [t.type for t in again] == [IRREGULAR]


def test_unknown_status_is_irregular_and_does_not_block_the_real_start() -> None:
    got = run(["init", "paused", "in-progress", "completed"])
    assert [g[0] for g in got] == [FIRST.value, IRREGULAR.value, STARTED.value, ENDED.value]
    assert got[2][1] == "paused"  # from_status is what we last saw


def test_first_seen_completed_is_terminal_without_ended() -> None:
    transitions, state = detect(LifecycleState(), "completed")
    assert [t.type for t in transitions] == [FIRST]
    assert state.terminal


def test_null_status_then_completed_reports_skipped() -> None:
    got = run([None, "completed"])
    assert got[1] == (ENDED.value, None, "completed", ("in-progress",))


def test_unknown_first_status_then_init_is_irregular() -> None:
    assert [g[0] for g in run(["weird", "init"])] == [FIRST.value, IRREGULAR.value]


def test_state_is_unchanged_when_nothing_changes() -> None:
    _, state = detect(LifecycleState(), "init")
    transitions, same = detect(state, "init")
    assert transitions == () and same is state


def first_sight_after_watch(status: str | None) -> list[tuple[str, str | None, str | None, tuple]]:
    transitions, state = detect(LifecycleState(), status, after_watch=True)
    assert state.last_status == status
    return [(t.type.value, t.from_status, t.to_status, t.skipped) for t in transitions]


def test_late_first_sight_in_progress_is_started_from_an_init_baseline() -> None:
    assert first_sight_after_watch("in-progress") == [
        (FIRST.value, None, "init", ()),
        (STARTED.value, "init", "in-progress", ()),
    ]


def test_late_first_sight_completed_is_ended_with_in_progress_skipped() -> None:
    assert first_sight_after_watch("completed") == [
        (FIRST.value, None, "init", ()),
        (ENDED.value, "init", "completed", ("in-progress",)),
    ]


@pytest.mark.parametrize("status", ["init", "paused", None])
def test_late_first_sight_of_init_or_unknown_is_only_a_baseline(status: str | None) -> None:
    assert first_sight_after_watch(status) == [(FIRST.value, None, status, ())]


def test_after_watch_is_ignored_once_seen() -> None:
    _, state = detect(LifecycleState(), "in-progress")
    transitions, _ = detect(state, "completed", after_watch=True)
    assert [(t.type.value, t.skipped) for t in transitions] == [(ENDED.value, ())]
