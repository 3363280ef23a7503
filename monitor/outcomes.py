"""Pure decisions about one poll's outcome: what to write and when to look again.

Given a claimed watch and either the conference Twilio returned or the error it
raised, these functions build the `Observation` or `Miss` that the store writes.
No I/O and no clock: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.db.store import Miss, Observation, WatchState
from monitor.domain import Conference, EventType, Status
from monitor.events import NewEvent, transition_event, watch_event, with_notifiers
from monitor.lifecycle import detect

# How soon to retry a 404 inside the grace period: Twilio's own lag is about 2 s.
NOT_FOUND_RETRY_S = 1.0
# A rejected credential is not fixed by hammering: look again at this pace.
AUTH_FAILED_RETRY_S = 60.0

Recipients = Callable[[str, dict[str, object]], tuple[str, ...]]


@dataclass(frozen=True)
class PollPolicy:
    interval_s: float
    not_found_grace_s: float


ACTIVE_STATUSES = frozenset({Status.INIT, Status.IN_PROGRESS})


def observation(
    watch: WatchState,
    conference: Conference,
    observed_at: datetime,
    via: str,
    recipients: Recipients,
    *,
    use_list: bool = False,
    discovered: bool = False,
) -> Observation:
    """Detect transitions and attach each event's notifiers.

    `observed_at` is when the state was current (a request's start). With
    `use_list`, an active conference is handed to its account's list sweep. A
    watch `discovered` by this very observation has nothing to compare with:
    its first sight is a baseline.
    """
    after = not discovered and reached_after_watch(conference, watch.created_at)
    transitions, state = detect(watch.lifecycle, conference.status, after_watch=after)
    events: list[NewEvent] = []
    for transition in transitions:
        event = transition_event(conference, transition, observed_at, via)
        events.append(with_notifiers(event, recipients(event.type, event.data)))
    mode = "list" if use_list and conference.status in ACTIVE_STATUSES else "fetch"
    return Observation(watch, conference, observed_at, via, state, tuple(events), mode)


def reached_after_watch(conference: Conference, watch_created_at: datetime) -> bool:
    """Whether the conference's current status was reached after the watch began.

    Twilio's dates have whole seconds, so a change in the watch's own second
    counts as after it: a missed alert is worse than an alert for a conference
    that changed in the very second it was watched.
    """
    when = conference.date_updated or conference.date_created
    return when is not None and when >= watch_created_at.replace(microsecond=0)


def not_found(watch: WatchState, now: datetime, policy: PollPolicy, recipients: Recipients) -> Miss:
    """A 404: retry quickly during the grace period, then end the watch with an event."""
    # The grace runs from the first 404 in a row, so a conference Twilio shows
    # late (new) or briefly loses is not declared missing on one answer.
    first = watch.first_not_found_at or now
    waited = (now - first).total_seconds()
    if waited < policy.not_found_grace_s:
        retry_in = min(NOT_FOUND_RETRY_S, policy.interval_s)
        return Miss(
            watch.sid,
            now,
            f"not found (404), retrying for {policy.not_found_grace_s - waited:.1f}s more",
            now + timedelta(seconds=retry_in),
            first_not_found_at=first,
        )
    detail = (
        f"{watch.sid} not found by Twilio for {waited:.1f}s (grace {policy.not_found_grace_s}s)"
    )
    event = watch_event(
        EventType.WATCH_NOT_FOUND,
        conference_sid=watch.sid,
        account_sid=watch.account_sid,
        at=now,
        detail=detail,
    )
    event = with_notifiers(event, recipients(event.type, event.data))
    return Miss(
        watch.sid,
        now,
        detail,
        now,
        first,
        new_status="not_found",
        events=(event,),
        version=watch.version,
    )


def failed(watch: WatchState, now: datetime, error: str, retry_in_s: float) -> Miss:
    """A transient failure: keep the watch, record the error, look again later."""
    return Miss(
        watch.sid,
        now,
        error,
        now + timedelta(seconds=retry_in_s),
        first_not_found_at=watch.first_not_found_at,
    )


def auth_failed_event(
    account_sid: str, sid: str, now: datetime, error: str, recipients: Recipients
) -> NewEvent:
    event = watch_event(
        EventType.WATCH_AUTH_FAILED,
        conference_sid=sid,
        account_sid=account_sid,
        at=now,
        detail=f"Twilio rejected the credentials for account {account_sid}: {error}",
    )
    return with_notifiers(event, recipients(event.type, event.data))
