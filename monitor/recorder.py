"""Turns what Twilio answered into a batch and records it: the one path every
observation takes, whether it came from a fetch, a list sweep or the `poll` command.

A changed conference becomes an `Observation` recorded by compare-and-set; an
unchanged one only moves the touch buffer (and, when its watch row needs a
write anyway, a bulk update); a failure becomes a `Miss`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor import outcomes
from monitor.db.store import Batch, BatchResult, Miss, Store, WatchState
from monitor.domain import Conference, EventType
from monitor.events import NewEvent
from monitor.metrics import Metrics
from monitor.touches import TouchBuffer
from monitor.twilio.errors import (
    BadPayload,
    ConferenceNotFound,
    CredentialsRejected,
    PagingError,
    RateLimited,
    ResourceMismatch,
    ResponseTooLarge,
    TwilioError,
)

log = logging.getLogger("monitor.poll")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PollReport:
    """What one pass did, for logs, metrics and the `poll` command."""

    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    result: BatchResult = field(default_factory=BatchResult)
    observed: list[Conference] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def merge(self, result: BatchResult) -> None:
        mine = self.result
        mine.snapshots_written += result.snapshots_written
        mine.observations += result.observations
        mine.dropped += result.dropped
        mine.events.extend(result.events)
        mine.recovered_accounts.extend(result.recovered_accounts)


class Recorder:
    """Decides, per outcome, what to write, and writes a batch in one transaction."""

    def __init__(
        self,
        store: Store,
        policy: outcomes.PollPolicy,
        recipients: outcomes.Recipients,
        touches: TouchBuffer,
        *,
        list_mode: Callable[[str], bool] = lambda _account: True,
        metrics: Metrics | None = None,
        on_events: Callable[[list[NewEvent]], None] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.recipients = recipients
        self.touches = touches
        self.list_mode = list_mode  # whether an account's active watches go to its sweep
        self.metrics = metrics or Metrics(process_metrics=False)
        self.on_events = on_events

    def add_result(
        self,
        batch: Batch,
        report: PollReport,
        watch: WatchState,
        result: Conference | Exception,
        requested_at: datetime,
    ) -> None:
        """Add one fetch outcome to `batch`."""
        if isinstance(result, Conference):
            self.add_seen(batch, watch, result, requested_at, "poll")
            report.observed.append(result)
            report.count("ok")
            batch.ok_accounts.add(watch.account_sid)
        else:
            batch.misses.append(self._miss(watch, result, utcnow(), report, batch))

    def add_seen(
        self,
        batch: Batch,
        watch: WatchState,
        conference: Conference,
        requested_at: datetime,
        via: str,
        *,
        discovered: bool = False,
    ) -> None:
        """A conference as Twilio showed it at `requested_at`: a change, or a touch."""
        use_list = self.list_mode(watch.account_sid)
        unchanged = (
            watch.current_snapshot_id is not None and conference.content_hash == watch.current_hash
        )
        if not unchanged:
            batch.changes.append(
                outcomes.observation(
                    watch,
                    conference,
                    requested_at,
                    via,
                    self.recipients,
                    use_list=use_list,
                    discovered=discovered,
                )
            )
            return
        assert watch.current_snapshot_id is not None
        self.touches.add(watch.current_snapshot_id, requested_at.timestamp())
        mode = "list" if use_list and conference.status in outcomes.ACTIVE_STATUSES else "fetch"
        # A fetch writes its watch row anyway (the lease, the last poll time); a sweep
        # only when something besides the counts must change.
        if via == "poll" or mode != watch.mode or watch.consecutive_errors:
            batch.seen[watch.sid] = mode

    def commit(self, batch: Batch, report: PollReport | None = None) -> BatchResult:
        """Record the batch; database errors propagate (and mark write health)."""
        if not batch:
            return BatchResult()
        result = self.store.record(batch, utcnow())
        self.published(result, report)
        return result

    def published(self, result: BatchResult, report: PollReport | None = None) -> None:
        """After a commit: metrics, logs, and wake the dispatcher for new events."""
        self.metrics.persisted("changed", result.observations)
        self.metrics.dropped(result.dropped)
        self.metrics.snapshots_written(result.snapshots_written)
        for event in result.events:
            self.metrics.count_transition(event.type)
        if report is not None:
            report.merge(result)
        log_outcomes(result)
        if result.events and self.on_events is not None:
            self.on_events(result.events)

    def flush_touches(self) -> int:
        """Write the buffered unchanged observations; on failure they wait for the next try."""
        taken = self.touches.take()
        if not taken:
            return 0
        try:
            self.store.flush_touches(taken)
        except Exception:
            self.touches.put_back(taken)
            raise
        count = sum(t.count for t in taken)
        self.metrics.persisted("unchanged", count)
        return count

    def _miss(
        self, watch: WatchState, error: Exception, now: datetime, report: PollReport, batch: Batch
    ) -> Miss:
        name = outcome_name(error)
        report.count(name)
        report.errors[watch.sid] = str(error)
        if isinstance(error, ConferenceNotFound):
            miss = outcomes.not_found(watch, now, self.policy, self.recipients)
            if miss.new_status:
                log.warning("%s", miss.error, extra={"event": "watch.not_found", "sid": watch.sid})
            return miss
        if isinstance(error, CredentialsRejected):
            if not any(e.account_sid == watch.account_sid for e in batch.auth_failures):
                batch.auth_failures.append(
                    outcomes.auth_failed_event(
                        watch.account_sid, watch.sid, now, str(error), self.recipients
                    )
                )
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


def log_outcomes(result: BatchResult) -> None:
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
        log.debug(
            "%s %s -> %s",
            event.type,
            event.from_status,
            event.to_status,
            extra=extra,
        )


def outcome_name(result: object) -> str:
    if isinstance(result, Conference):
        return "ok"
    for kind, name in (
        (ConferenceNotFound, "not_found"),
        (CredentialsRejected, "auth_failed"),
        (RateLimited, "rate_limited"),
        (BadPayload, "bad_payload"),
        (ResponseTooLarge, "bad_payload"),
        (ResourceMismatch, "bad_payload"),
        (PagingError, "bad_payload"),
        (TwilioError, "transient"),
    ):
        if isinstance(result, kind):
            return name
    return "error"
