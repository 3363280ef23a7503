"""Pure lifecycle detection: what an observed status means, given what came before.

No I/O and no clock. The state remembers the last status seen and the highest
known status ever reached, so a regression (`in-progress` -> `init` ->
`in-progress`) can never produce a second `conference.started`.

A first observation is a silent baseline, unless the caller knows the status
was reached after the watch began (`after_watch`): then the watch's start
stands for an `init` baseline and the status reached since is a transition,
so a conference that started or ended while the daemon was down, or while
the database refused writes, is still notified.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.domain import STATUS_ORDER, EventType, Status, Transition


@dataclass(frozen=True)
class LifecycleState:
    """What detection needs to know about a conference between two observations."""

    last_status: str | None = None  # None: never observed
    high_status: str | None = None  # highest known status reached; never moves back
    seen: bool = False

    @property
    def terminal(self) -> bool:
        return self.high_status == Status.COMPLETED


def _rank(status: str | None) -> int | None:
    return STATUS_ORDER.get(status) if status is not None else None


def detect(
    state: LifecycleState, status: str | None, *, after_watch: bool = False
) -> tuple[tuple[Transition, ...], LifecycleState]:
    """Return the transitions implied by observing `status`, and the new state.

    `after_watch` matters only on first sight: the status was reached after the
    watch was created, so it is detected against an `init` baseline.
    """
    if not state.seen:
        rank = _rank(status)
        if after_watch and rank is not None and rank > 0:
            baseline = Transition(EventType.FIRST_SEEN, None, Status.INIT)
            seen = LifecycleState(Status.INIT, Status.INIT, True)
            return (baseline, _forward(seen, status)), LifecycleState(status, status, True)
        high = status if rank is not None else None
        first = Transition(EventType.FIRST_SEEN, None, status)
        return (first,), LifecycleState(status, high, True)
    if status == state.last_status:
        return (), state
    rank, high_rank = _rank(status), _rank(state.high_status)
    forward = rank is not None and (high_rank is None or rank > high_rank)
    if not forward:
        # Backward or unknown: kept in history, never a second started/ended.
        return (Transition(EventType.IRREGULAR, state.last_status, status),), LifecycleState(
            status, state.high_status, True
        )
    return (_forward(state, status),), LifecycleState(status, status, True)


def _forward(state: LifecycleState, status: str | None) -> Transition:
    if status == Status.IN_PROGRESS:
        return Transition(EventType.STARTED, state.last_status, status)
    if status == Status.COMPLETED:
        reached = _rank(state.high_status)
        skipped = ("in-progress",) if reached is None or reached < 1 else ()
        return Transition(EventType.ENDED, state.last_status, status, skipped)
    # Forward to `init` is only possible after an unknown first status.
    return Transition(EventType.IRREGULAR, state.last_status, status)
