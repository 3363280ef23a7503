"""Composes observing: list sweeps, one-by-one fetches and the `poll` command.

All three go through the same `Recorder`, so a conference polled by hand, by a
sweep or by a fetch leaves the same history, and whichever observer records a
transition first is the only one that does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from monitor import outcomes
from monitor.db.store import Batch, Store
from monitor.domain import Conference
from monitor.events import NewEvent
from monitor.fetcher import ConferenceSource, FetchPipeline
from monitor.metrics import Metrics
from monitor.ratelimit import RateLimiter
from monitor.recorder import PollReport, Recorder
from monitor.sweeper import Sweeper, SweepReport
from monitor.touches import TouchBuffer

__all__ = ["ConferenceSource", "PollReport", "Poller", "SweepReport"]

# Requests in flight per unit of concurrency: enough to keep every slot busy
# while answers are recorded, few enough that a claimed watch waits little.
WINDOW_PER_SLOT = 4
LEASE_MARGIN_S = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def fetch_lease_s(request_deadline_s: float, window: int, concurrency: int) -> float:
    """Long enough for a claimed watch to wait its turn in the window and be fetched."""
    return request_deadline_s * (window / concurrency + 1) + LEASE_MARGIN_S


def sweep_lease_s(request_deadline_s: float) -> float:
    """A sweep renews its lease after every page, so the lease covers one page's
    request (and one retry) plus applying it: this is also how long a dead
    instance's sweep takes to be taken over."""
    return 2 * request_deadline_s + LEASE_MARGIN_S


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
        discover: bool = False,
        request_deadline_s: float = 4.0,
        limiter: RateLimiter | None = None,
        on_poll: Callable[[str, float], None] | None = None,
        metrics: Metrics | None = None,
        on_events: Callable[[list[NewEvent]], None] | None = None,
    ) -> None:
        self.store = store
        self.use_list = use_list
        self._lists_off = False  # list-mode watches handed back since lists were turned off
        self.concurrency = concurrency
        self.touches = TouchBuffer()
        self.recorder = Recorder(
            store,
            policy,
            recipients,
            self.touches,
            list_mode=self._list_mode,
            metrics=metrics,
            on_events=on_events,
        )
        window = max(1, min(batch_size, concurrency * WINDOW_PER_SLOT))
        self.fetcher = FetchPipeline(
            store,
            source,
            self.recorder,
            concurrency=concurrency,
            window=window,
            interval_s=policy.interval_s,
            jitter_s=jitter_s,
            lease_s=fetch_lease_s(request_deadline_s, window, concurrency),
            limiter=limiter,
            on_poll=on_poll,
        )
        self.sweeper = Sweeper(
            store,
            source,
            self.recorder,
            interval_s=policy.interval_s,
            lease_s=sweep_lease_s(request_deadline_s),
            use_list=use_list,
            discover=discover,
        )
        self.sweeper.on_handover = self.fetcher.wake

    @property
    def source(self) -> ConferenceSource:
        return self.fetcher.source

    @source.setter
    def source(self, source: ConferenceSource) -> None:
        self.fetcher.source = self.sweeper.source = source

    def _list_mode(self, account_sid: str) -> bool:
        return self.use_list and account_sid not in self.sweeper.stale_accounts

    def configure(
        self,
        policy: outcomes.PollPolicy,
        recipients: outcomes.Recipients,
        *,
        jitter_s: float,
        use_list: bool,
        discover: bool,
    ) -> None:
        """Apply a reloaded config to the next pass (work in flight keeps the old one)."""
        self.recorder.policy = policy
        self.recorder.recipients = recipients
        self.fetcher.interval_s = self.sweeper.interval_s = policy.interval_s
        self.fetcher.jitter_s = jitter_s
        self.use_list = self.sweeper.use_list = use_list
        self._lists_off = self._lists_off and not use_list
        self.sweeper.discover = discover

    def close(self) -> None:
        self.fetcher.close()

    def poll_due(
        self, stop: threading.Event | None = None, progress: Callable[[], None] = lambda: None
    ) -> PollReport:
        """Fetch every due watch (those the sweeps do not cover) until none is left."""
        if not self.use_list and not self._lists_off:
            # Lists were turned off: no sweep will observe list-mode watches any more.
            self.sweeper.sweeps.hand_all_to_fetch(utcnow())
            self._lists_off = True
            self.fetcher.wake()
        return self.fetcher.run(stop or threading.Event(), fetch_mode_only=True, progress=progress)

    def sweep_due(
        self, stop: threading.Event | None = None, accounts: tuple[str, ...] = ()
    ) -> list[SweepReport]:
        """Run the list sweeps that are due (for `accounts` too, even with no watches)."""
        if not (self.use_list or self.sweeper.discover):
            return []
        return self.sweeper.run_due(stop or threading.Event(), accounts)

    def flush_touches(self) -> int:
        return self.recorder.flush_touches()

    def poll_sids(
        self, sids: Sequence[str], account_sid: str, label: str | None = None
    ) -> PollReport:
        """Fetch the given SIDs now (watching any that are new) and record the results."""
        self.store.add_watches(sids, account_sid, label, utcnow())
        states = self.store.watch_states(sids)
        watches = [states[s] for s in sids if s in states]

        def fetch(watch_sid: str, account: str) -> tuple[Conference | Exception, datetime]:
            requested_at = utcnow()
            try:
                return self.source.fetch_conference(watch_sid, account_sid=account), requested_at
            except Exception as exc:  # recorded as a miss, like the daemon's
                return exc, requested_at

        report = PollReport(claimed=len(watches))
        batch = Batch()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(watches)))) as pool:
            results = pool.map(lambda w: fetch(w.sid, w.account_sid), watches)
            for watch, (result, requested_at) in zip(watches, results, strict=True):
                self.recorder.add_result(batch, report, watch, result, requested_at)
        self.recorder.metrics.observed("poll", len(report.observed))
        self.recorder.commit(batch, report)
        self.recorder.flush_touches()  # a command has no later flush
        return report
