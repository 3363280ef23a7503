"""Attempt outcomes written in batches: one transaction for many deliveries.

A transaction per delivery caps a dispatcher near a few hundred deliveries a second
(more on PostgreSQL, where each commit is a round trip and a flush). Workers hand
their outcomes here; a writer thread collects for `interval_s` and records them all
with one fenced `finish_many`. An outcome not yet written when the process dies is
lost with its lease: the row is tried again later, with the same event id (at least
once, as before).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from monitor.db.outbox import AttemptOutcome, Claimed, Outbox

log = logging.getLogger("monitor.dispatch")

DEFAULT_INTERVAL_S = 0.05
MAX_BATCH = 500


@dataclass(frozen=True)
class Pending:
    notifier: str
    row: Claimed
    outcome: AttemptOutcome


class Recorder:
    """Buffers outcomes and writes them; `on_written(notifiers)` follows every batch."""

    def __init__(
        self,
        outbox: Outbox,
        owner: str,
        on_written: Callable[[set[str]], None],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.outbox = outbox
        self.owner = owner
        self.interval_s = interval_s
        self._on_written = on_written
        self._items: list[Pending] = []
        self._writing = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="record-outcomes", daemon=True)
        self._thread.start()

    def add(self, notifier: str, row: Claimed, outcome: AttemptOutcome) -> None:
        with self._cond:
            self._items.append(Pending(notifier, row, outcome))
            if len(self._items) == 1 or len(self._items) >= MAX_BATCH:
                self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return not self._items and not self._writing

    def flush(self) -> None:
        """Write whatever is buffered now, in the caller's thread."""
        with self._cond:
            batch, self._items = self._items, []
            self._writing += 1
        try:
            self._write(batch)
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Collect a little longer: many outcomes per transaction.
                self._cond.wait_for(lambda: len(self._items) >= MAX_BATCH, self.interval_s)
            self.flush()

    def _write(self, batch: list[Pending]) -> None:
        if not batch:
            return
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            try:
                kept = self.outbox.finish_many(self.owner, [(p.row.id, p.outcome) for p in chunk])
            except Exception as exc:  # database down: the leases lapse and the rows come back
                log.error(
                    "could not record %d delivery outcomes (%s: %s); those rows are tried "
                    "again once their lease lapses",
                    len(chunk),
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    extra={"event": "dispatch.record_failed"},
                )
                continue
            for lost in (p for p in chunk if p.row.id not in kept):
                log.warning(
                    "lease on delivery %s lost; outcome not recorded",
                    lost.row.id,
                    extra={"event_id": lost.row.event_id, "notifier": lost.notifier},
                )
        self._on_written({p.notifier for p in batch})
