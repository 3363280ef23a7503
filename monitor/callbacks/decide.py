"""What one verified conference callback means for its watch. Pure: no I/O, no clock.

Callbacks only move a conference forward: a status that is not ahead of the
highest one the watch knows (a late `conference-start` after the end, a
replay, an event a poll already recorded) yields nothing, so a callback can
never cause an `irregular` event or a second `started`. A callback whose
SequenceNumber is not above the last one accepted is a replay.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from monitor.callbacks.form import CallbackForm
from monitor.db.store import Observation, WatchState
from monitor.domain import STATUS_ORDER, Conference
from monitor.events import NewEvent, transition_event, with_notifiers
from monitor.lifecycle import detect
from monitor.outcomes import ACTIVE_STATUSES, Recipients

# The confirming poll comes this long after the callback: Twilio's API can lag its
# callbacks by a second or two, and a poll that still saw the old status would
# be recorded as a step back (an irregular event) before the next one agreed.
CONFIRM_AFTER = timedelta(seconds=2)
DUPLICATE = "duplicate"  # SequenceNumber already accepted: a replay
STALE = "stale"  # status not ahead of what the watch knows


def conference_of(form: CallbackForm) -> Conference:
    """The conference as the callback describes it (fields it lacks stay None)."""
    return Conference(
        sid=form.conference_sid,
        account_sid=form.account_sid,
        friendly_name=form.friendly_name,
        status=form.status,
        reason_conference_ended=form.reason,
        call_sid_ending_conference=form.ending_call_sid,
        date_updated=form.timestamp,
    )


def event_time(form: CallbackForm, received_at: datetime) -> datetime:
    """When the event happened: its Timestamp, unless that claims the future."""
    return min(form.timestamp, received_at)


def decide(
    watch: WatchState,
    form: CallbackForm,
    received_at: datetime,
    recipients: Recipients,
    *,
    use_list: bool = False,
) -> Observation | str:
    """The observation to record by compare-and-set, or why there is none.

    A status ahead of the watch's is detected against an `init` baseline when
    the watch has never been seen: the callback itself says the conference
    started (or ended) at its Timestamp. The observation's time is the
    receipt, so a poll that started before it is older and cannot overwrite
    it; the events carry the callback's Timestamp. A poll then confirms it:
    with `use_list`, an active conference is left to its account's next list
    sweep (which costs no request of its own); otherwise, or once it ended
    (lists show only active ones), it is fetched `CONFIRM_AFTER` later.
    """
    if watch.callback_sequence is not None and form.sequence <= watch.callback_sequence:
        return DUPLICATE
    status = form.status
    if status is None or not _ahead(status, watch.lifecycle.high_status):
        return STALE
    if watch.observed_at is not None and watch.observed_at > received_at:
        return STALE  # a poll that started after this callback arrived was recorded first
    conference = conference_of(form)
    transitions, state = detect(watch.lifecycle, status, after_watch=True)
    at = event_time(form, received_at)
    events: list[NewEvent] = []
    for transition in transitions:
        event = transition_event(conference, transition, at, "callback")
        events.append(with_notifiers(event, recipients(event.type, event.data)))
    return Observation(
        watch,
        conference,
        received_at,
        "callback",
        state,
        tuple(events),
        mode="list" if use_list and status in ACTIVE_STATUSES else "fetch",
        sequence=form.sequence,
        confirm_at=received_at + CONFIRM_AFTER,
    )


def _ahead(status: str, high: str | None) -> bool:
    rank = STATUS_ORDER[status]
    return high is None or rank > STATUS_ORDER.get(high, -1)


def advanced(watch: WatchState, obs: Observation) -> WatchState:
    """The watch as it will be once `obs` is recorded: what the next callback of the
    same group is decided against."""
    return replace(
        watch,
        lifecycle=obs.lifecycle,
        version=watch.version + 1,
        callback_sequence=obs.sequence,
        observed_at=obs.observed_at,
        current_hash=obs.conference.content_hash,
    )
