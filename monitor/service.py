"""Composes the I/O: claim due watches, fetch them from Twilio, persist what was seen.

`Poller.poll_due()` is one tick of the daemon and `Poller.poll_sids()` is the
`poll` command; both go through the same outcome logic and the same store call,
so a conference polled by hand and by the daemon leaves the same history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from monitor import outcomes
from monitor.db.store import BatchResult, Miss, Observation, Store, WatchState
from monitor.domain import Conference, EventType
from monitor.events import NewEvent
from monitor.ratelimit import RateLimiter
from monitor.twilio.errors import (
    BadPayload,
    ConferenceNotFound,
    CredentialsRejected,
    RateLimited,
    TwilioError,
)

log = logging.getLogger("monitor.poll")

FetchResult = Conference | Exception


def utcnow() -> datetime:
    return datetime.now(UTC)


# Below this many due watches of one account, one fetch each is cheaper than two lists.
LIST_MIN_WATCHES = 5
ACTIVE_STATUSES = ("init", "in-progress")


class ConferenceSource(Protocol):
    """What the poller needs from Twilio (the real client satisfies it)."""

    def fetch_conference(self, sid: str, *, account_sid: str | None = None) -> Conference: ...

    def list_conferences(
        self, *, status: str | None = None, account_sid: str | None = None
    ) -> Iterable[Conference]: ...


@dataclass
class PollReport:
    """What one tick did, for logs, metrics and the `poll` command."""

    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    result: BatchResult = field(default_factory=BatchResult)
    observed: list[Conference] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class Poller:
    def __init__(
        self,
        store: Store,
        source: ConferenceSource,
        policy: outcomes.PollPolicy,
        recipients: outcomes.Recipients,
        *,
        concurrency: int = 8,
        jitter_s: float = 0.0,
        batch_size: int = 500,
        use_list: bool = True,
        limiter: RateLimiter | None = None,
        on_poll: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.policy = policy
        self.recipients = recipients
        self.jitter_s = jitter_s
        self.batch_size = batch_size
        self.use_list = use_list
        self.limiter = limiter or RateLimiter(0)
        self.on_poll = on_poll
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="poll")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def poll_due(self, now: datetime | None = None) -> PollReport:
        """Claim what is due and poll it; database errors propagate to the caller."""
        now = now or utcnow()
        watches = self.store.claim_due_watches(
            now, self.batch_size, self.policy.interval_s, self.jitter_s
        )
        return self._poll(watches)

    def poll_sids(
        self, sids: Sequence[str], account_sid: str, label: str | None = None
    ) -> PollReport:
        """Fetch the given SIDs now (watching any that are new) and record the results."""
        self.store.add_watches(sids, account_sid, label, utcnow())
        watches = [w for w in (self.store.get_watch(s) for s in sids) if w is not None]
        return self._poll(watches)

    def _poll(self, watches: list[WatchState]) -> PollReport:
        report = PollReport(claimed=len(watches))
        if not watches:
            return report
        listed, to_fetch = self._observe_by_list(watches) if self.use_list else ([], watches)
        fetched: list[tuple[WatchState, FetchResult, str]] = [(w, c, "list") for w, c in listed]
        fetched += [(w, r, "poll") for w, r in self._pool.map(self._fetch, to_fetch)]
        observations: list[Observation] = []
        misses: list[Miss] = []
        auth_events: list[NewEvent] = []
        ok_accounts: set[str] = set()
        for watch, result, via in fetched:
            now = utcnow()
            if isinstance(result, Conference):
                observations.append(outcomes.observation(watch, result, now, via, self.recipients))
                report.observed.append(result)
                report.count("ok")
                ok_accounts.add(watch.account_sid)
            else:
                misses.append(self._miss(watch, result, now, report, auth_events))
        report.result = self.store.record(observations, misses, auth_events, ok_accounts)
        _log_outcomes(report.result)
        return report

    def discover(self, account_sid: str) -> list[str]:
        """Watch every active conference of the account not yet watched (`polling.discover`)."""
        active = self._list_active(account_sid)
        if not active:
            return []
        added = self.store.add_watches(sorted(active), account_sid, "discovered", utcnow())
        for sid in added:
            log.info("discovered %s", sid, extra={"event": "watch.discovered", "sid": sid})
        return added

    def _observe_by_list(
        self, watches: list[WatchState]
    ) -> tuple[list[tuple[WatchState, Conference]], list[WatchState]]:
        """Observe active conferences two list calls at a time instead of one fetch each.

        Watches missing from both lists (completed, or not yet visible) are left to
        a fetch of their own, so nothing is decided from absence alone.
        """
        by_account: dict[str, list[WatchState]] = {}
        for watch in watches:
            by_account.setdefault(watch.account_sid, []).append(watch)
        listed: list[tuple[WatchState, Conference]] = []
        to_fetch: list[WatchState] = []
        for account, group in by_account.items():
            started = utcnow()
            active = self._list_active(account) if len(group) >= LIST_MIN_WATCHES else None
            seconds = (utcnow() - started).total_seconds()
            for watch in group:
                found = active.get(watch.sid) if active is not None else None
                if found is not None:
                    listed.append((watch, found))
                    if self.on_poll:  # each conference observed is one poll, outcome ok
                        self.on_poll("ok", seconds)
                else:
                    to_fetch.append(watch)
        return listed, to_fetch

    def _list_active(self, account: str) -> dict[str, Conference] | None:
        seen: dict[str, Conference] = {}
        try:
            for status in ACTIVE_STATUSES:  # later status wins if one moved between calls
                self.limiter.acquire()
                for conference in self.source.list_conferences(status=status, account_sid=account):
                    seen[conference.sid] = conference
        except Exception as exc:
            log.warning(
                "listing active conferences of %s failed, fetching one by one: %s",
                account,
                exc,
                extra={"event": "poll.list_failed"},
            )
            return None
        return seen

    def _fetch(self, watch: WatchState) -> tuple[WatchState, FetchResult]:
        self.limiter.acquire()
        started = utcnow()
        try:
            result: FetchResult = self.source.fetch_conference(
                watch.sid, account_sid=watch.account_sid
            )
        except Exception as exc:  # every failure becomes a recorded Miss, never a crash
            result = exc
        if self.on_poll:
            self.on_poll(_outcome_name(result), (utcnow() - started).total_seconds())
        return watch, result

    def _miss(
        self,
        watch: WatchState,
        error: Exception,
        now: datetime,
        report: PollReport,
        auth_events: list[NewEvent],
    ) -> Miss:
        name = _outcome_name(error)
        report.count(name)
        report.errors[watch.sid] = str(error)
        if isinstance(error, ConferenceNotFound):
            miss = outcomes.not_found(watch, now, self.policy, self.recipients)
            if miss.new_status:
                log.warning("%s", miss.error, extra={"event": "watch.not_found", "sid": watch.sid})
            return miss
        if isinstance(error, CredentialsRejected):
            self._auth_failed(watch, error, now, auth_events)
            return outcomes.failed(watch, now, str(error), outcomes.AUTH_FAILED_RETRY_S)
        retry_in = self.policy.interval_s
        if isinstance(error, RateLimited) and error.retry_after_s:
            retry_in = max(retry_in, error.retry_after_s)
        log.warning(
            "poll of %s failed: %s",
            watch.sid,
            error,
            extra={"event": "poll.failed", "sid": watch.sid},
        )
        return outcomes.failed(watch, now, str(error), retry_in)

    def _auth_failed(
        self, watch: WatchState, error: Exception, now: datetime, auth_events: list[NewEvent]
    ) -> None:
        """One candidate event per account and batch; the store keeps only a new episode's."""
        if any(e.account_sid == watch.account_sid for e in auth_events):
            return
        auth_events.append(
            outcomes.auth_failed_event(
                watch.account_sid, watch.sid, now, str(error), self.recipients
            )
        )


def _log_outcomes(result: BatchResult) -> None:
    for account in result.recovered_accounts:
        log.info(
            "Twilio accepts the credentials for account %s again",
            account,
            extra={"event": "account.auth_ok"},
        )
    for event in result.events:
        if event.type == EventType.WATCH_AUTH_FAILED:
            log.error(
                "%s (watch %s); check TWILIO_AUTH_TOKEN or TWILIO_API_KEY/TWILIO_API_SECRET",
                event.data["detail"],
                event.conference_sid,
                extra={"event": "watch.auth_failed", "sid": event.conference_sid},
            )
        else:
            _log_detection(event)


def _log_detection(event: NewEvent) -> None:
    extra: dict[str, Any] = {
        "event": "transition.detected",
        "sid": event.conference_sid,
        "event_id": event.id,
    }
    if event.type == EventType.IRREGULAR:
        log.warning(
            "%s went from %s back or sideways to %s: kept in history, not notified",
            event.conference_sid,
            event.from_status,
            event.to_status,
            extra=extra,
        )
    else:
        log.debug("%s %s -> %s", event.type, event.from_status, event.to_status, extra=extra)


def _outcome_name(result: object) -> str:
    if isinstance(result, Conference):
        return "ok"
    for kind, name in (
        (ConferenceNotFound, "not_found"),
        (CredentialsRejected, "auth_failed"),
        (RateLimited, "rate_limited"),
        (BadPayload, "bad_payload"),
        (TwilioError, "transient"),
    ):
        if isinstance(result, kind):
            return name
    return "error"
