"""List sweeps: observe every active conference of an account with a few list calls.

Once per interval per account (elected across instances by `SweepStore.try_start`),
the sweeper lists `Status=in-progress` then `Status=init`, page by page, and
applies each page to the watches it shows: an unchanged conference costs a
fingerprint and a dictionary lookup, a changed one is parsed and recorded like
any observation. Watches the sweep observes but the lists no longer show
(ended, or not listed yet) are handed back to one-by-one fetching, so nothing
is decided from absence alone. Memory is bounded by one page plus the sets of
SIDs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from monitor.db.store import Batch, Store
from monitor.db.sweeps import SweepState, SweepStore
from monitor.domain import fingerprint
from monitor.fetcher import ConferenceSource, owner_id
from monitor.recorder import PollReport, Recorder
from monitor.twilio.payloads import ConferencePage, PayloadError, listed_sid, parse_listed

log = logging.getLogger("monitor.sweep")

LISTED_STATUSES = ("in-progress", "init")
# Sweeps of an account that have not succeeded for this many intervals (and nobody
# holds a live sweep lease): its watches fall back to one-by-one fetching.
STALE_AFTER_INTERVALS = 2
ACCOUNTS_TTL_S = 5.0  # a new account's first sweep waits at most this long
# The last sweeper starts the next sweep at its due time, others this much later
# (at most a quarter interval), so sweeps stay with one live instance.
STICKY_GRACE_S = 1.0
SWEEP_TICK_S = 0.25  # how often the daemon looks for a due sweep; due times live in the DB


class SweepAborted(Exception):
    """The sweep stopped early: another instance took it over, or we are stopping."""


@dataclass
class SweepReport:
    account_sid: str
    pages: int = 0
    listed: int = 0
    changed: int = 0
    rejected: int = 0
    missing: int = 0
    discovered: int = 0
    error: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Sweeper:
    def __init__(
        self,
        store: Store,
        source: ConferenceSource,
        recorder: Recorder,
        *,
        interval_s: float,
        lease_s: float,
        use_list: bool = True,
        discover: bool = False,
    ) -> None:
        self.store = store
        self.sweeps = SweepStore(store)
        self.source = source
        self.recorder = recorder
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.use_list = use_list
        self.discover = discover
        self.owner = owner_id(self)
        self.grace_s = min(STICKY_GRACE_S, interval_s / 4)
        # Accounts whose sweeps keep failing: their watches are fetched one by one
        # (and not handed back to the sweep) until a sweep succeeds again.
        self.stale_accounts: set[str] = set()
        # What the database said last, so an instance that is not sweeping asks a
        # few times per interval instead of four times a second (idle instances
        # are most of the cost of running several).
        self._accounts: list[str] = []
        self._accounts_at = -math.inf
        self._not_before: dict[str, float] = {}  # account -> monotonic time to ask again
        # Called when watches were handed to one-by-one fetching, so they go at once.
        self.on_handover: Callable[[], None] = lambda: None

    def run_due(
        self, stop: threading.Event, extra_accounts: tuple[str, ...] = ()
    ) -> list[SweepReport]:
        """Sweep every account whose sweep is due and not running elsewhere."""
        reports = []
        for account in self._known_accounts(extra_accounts):
            if stop.is_set():
                break
            if time.monotonic() < self._not_before.get(account, -math.inf):
                continue
            self._fall_back_if_stale(account)
            if self.sweeps.try_start(
                account, self.owner, utcnow(), self.interval_s, self.lease_s, self.grace_s
            ):
                self._not_before.pop(account, None)
                reports.append(self.sweep(account, stop))
            else:
                due_s = self.sweeps.due_in(account, self.owner, utcnow(), self.grace_s)
                wait_s = min(due_s, self.interval_s)
                self._not_before[account] = time.monotonic() + wait_s
        return reports

    def _known_accounts(self, extra_accounts: tuple[str, ...]) -> list[str]:
        """The accounts with watches, re-read at most every interval (5 s at most)."""
        if time.monotonic() - self._accounts_at >= min(self.interval_s, ACCOUNTS_TTL_S):
            now = utcnow()
            for account in extra_accounts:
                self.sweeps.ensure(account, now)
            self._accounts = self.sweeps.accounts()
            self._accounts_at = time.monotonic()
        return self._accounts

    def sweep(self, account: str, stop: threading.Event | None = None) -> SweepReport:
        report = SweepReport(account)
        started = time.monotonic()
        known = self.sweeps.active_states(account)
        if not known and not self.discover:
            self.sweeps.finish(
                account, self.owner, utcnow(), listed=0, missing=0, pages=0, error=None
            )
            return report
        responsible = (
            {s for s, st in known.items() if st.mode == "list"} if self.use_list else set()
        )
        seen: set[str] = set()
        try:
            for status in LISTED_STATUSES:
                self._list(account, status, known, seen, report, stop)
        except SweepAborted as exc:
            report.error = str(exc)
        except Exception as exc:  # Twilio refused or failed: fetches cover until it works
            report.error = _first_line(exc)
            log.warning(
                "listing conferences of %s failed: %s",
                account,
                report.error,
                extra={"event": "sweep.failed"},
            )
        if report.error is None:
            missing = sorted(responsible - seen)
            report.missing = self.sweeps.hand_to_fetch(missing, utcnow())
            if report.missing:
                self.on_handover()
            self.stale_accounts.discard(account)
        # Each conference should be seen again within an interval. Sweeps start an
        # interval apart, so one that runs slower than the last (a busy database, a
        # slow Twilio page) would see the conferences of its last pages later than
        # that; starting the next one early by this sweep's duration (plus a sweep
        # tick) covers a next sweep up to twice as slow, for a few more list calls.
        lead_s = min(time.monotonic() - started + SWEEP_TICK_S, self.interval_s / 4)
        self.sweeps.finish(
            account,
            self.owner,
            utcnow(),
            lead_s=lead_s,
            listed=report.listed,
            missing=report.missing,
            pages=report.pages,
            error=report.error,
        )
        self.recorder.metrics.swept(report.error is None, time.monotonic() - started)
        return report

    def _list(
        self,
        account: str,
        status: str,
        known: dict[str, SweepState],
        seen: set[str],
        report: SweepReport,
        stop: threading.Event | None,
    ) -> None:
        requested_at = utcnow()
        for page in self.source.list_conference_pages(status=status, account_sid=account):
            report.pages += 1
            self._apply(account, page, requested_at, known, seen, report)
            if stop is not None and stop.is_set():
                raise SweepAborted("stopping")
            if not self.sweeps.renew(account, self.owner, utcnow(), self.lease_s):
                raise SweepAborted("another instance took the sweep over")
            requested_at = utcnow()  # the next page is requested as the loop resumes

    def _apply(
        self,
        account: str,
        page: ConferencePage,
        requested_at: datetime,
        states: dict[str, SweepState],
        seen: set[str],
        report: SweepReport,
    ) -> None:
        """Apply one page: fingerprints first, and parse only what changed."""
        listed: dict[str, tuple[dict, str]] = {}
        for item in page.items:
            sid = listed_sid(item)
            if sid is None:
                report.rejected += 1
                continue
            listed[sid] = (item, fingerprint(item))
        report.listed += len(listed)
        self.recorder.metrics.observed("list", len(listed))
        batch, changed, touched = Batch(), [], []
        # While sweeps keep failing, fetches own the watches; else the sweep takes them.
        stale = account in self.stale_accounts
        for sid, (_item, digest) in listed.items():
            state = states.get(sid)
            if state is None:
                if self.discover:
                    changed.append(sid)
            elif not self.use_list:
                continue
            elif state.current_hash == digest and state.current_snapshot_id is not None:
                touched.append(state.current_snapshot_id)
                seen.add(sid)
                target = state.mode if stale else "list"
                if state.consecutive_errors or state.mode != target:
                    batch.seen[sid] = target
            else:
                changed.append(sid)
        self.recorder.touches.add_many(touched, requested_at.timestamp())
        changed, added = self._discovered(account, changed, states, report)
        self._add_changes(account, batch, changed, added, listed, requested_at, seen, report)
        self.recorder.commit(batch, PollReport())

    def _discovered(
        self, account: str, changed: list[str], states: dict[str, SweepState], report: SweepReport
    ) -> tuple[list[str], set[str]]:
        """Watch unwatched conferences the lists show (`polling.discover`)."""
        unknown = [sid for sid in changed if sid not in states]
        if not unknown:
            return changed, set()
        mode = "list" if self.use_list else "fetch"
        added = set(self.store.add_watches(unknown, account, "discovered", utcnow(), mode=mode))
        report.discovered += len(added)
        for sid in sorted(added):
            log.info("discovered %s", sid, extra={"event": "watch.discovered", "sid": sid})
        # Recorded from this page (a baseline), then fetched or swept like any watch.
        return [sid for sid in changed if sid in states or sid in added], added

    def _add_changes(
        self,
        account: str,
        batch: Batch,
        changed: list[str],
        added: set[str],
        listed: dict[str, tuple[dict, str]],
        requested_at: datetime,
        seen: set[str],
        report: SweepReport,
    ) -> None:
        if not changed:
            return
        full = self.store.watch_states(changed)
        for sid in changed:
            watch = full.get(sid)
            if watch is None:
                continue  # removed meanwhile
            try:
                conference = parse_listed(listed[sid][0], account)
            except PayloadError as exc:
                report.rejected += 1  # not seen: fetched on its own, where the error is recorded
                log.warning(
                    "listed conference %s is malformed, fetching it on its own: %s",
                    sid,
                    exc,
                    extra={"event": "sweep.bad_item", "sid": sid},
                )
                continue
            seen.add(sid)
            report.changed += 1
            self.recorder.add_seen(
                batch, watch, conference, requested_at, "list", discovered=sid in added
            )

    def _fall_back_if_stale(self, account: str) -> None:
        """Sweeps of this account stopped succeeding: fetch its watches one by one."""
        if not self.use_list:
            return
        now = utcnow()
        limit = now - timedelta(seconds=self.interval_s * STALE_AFTER_INTERVALS)
        if not self.sweeps.stale(account, now, limit):
            self.stale_accounts.discard(account)
            return
        first = account not in self.stale_accounts
        self.stale_accounts.add(account)
        moved = self.sweeps.hand_account_to_fetch(account, now)
        if moved:
            self.on_handover()
        if first:
            log.warning(
                "no list sweep of %s has succeeded for %.0fs: fetching its watches one by one "
                "(%d handed over) until a sweep works again",
                account,
                self.interval_s * STALE_AFTER_INTERVALS,
                moved,
                extra={"event": "sweep.stale"},
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
