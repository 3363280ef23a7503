"""Unchanged observations, counted in memory and written at most about once a minute.

At 100,000 watched conferences, writing a row for every "still the same" would
be most of the daemon's work. The state that matters (status, snapshot,
events) is written the moment it changes; what waits here is only a snapshot's
last-seen time and observation count, flushed by a scheduler job, before a new
snapshot of the same conference is written, and at shutdown. A crash loses at
most a minute of those counts, never a transition.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.db.store import Touch

FLUSH_EVERY_S = 60.0


@dataclass(slots=True)
class _Pending:
    seen: float  # epoch seconds: a float is a third of a datetime's memory
    count: int


class TouchBuffer:
    """Thread-safe: sweeps and fetch workers add, the flush job takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}  # by snapshot id

    def add(self, snapshot_id: int, seen_epoch: float) -> None:
        self.add_many((snapshot_id,), seen_epoch)

    def add_many(self, snapshot_ids: Iterable[int], seen_epoch: float) -> None:
        """Snapshots seen unchanged at one time (one fetch, or one list page)."""
        pending = self._pending
        with self._lock:
            for snapshot_id in snapshot_ids:
                entry = pending.get(snapshot_id)
                if entry is None:
                    pending[snapshot_id] = _Pending(seen_epoch, 1)
                else:
                    entry.seen = max(entry.seen, seen_epoch)
                    entry.count += 1

    def take(self) -> list[Touch]:
        """Everything pending, now owned by the caller (`put_back` if writing fails).

        An entry names its snapshot, so one still pending when the conference's
        next snapshot is written is flushed to the right (older) row later.
        """
        with self._lock:
            taken, self._pending = self._pending, {}
        return [
            Touch(key, datetime.fromtimestamp(p.seen, UTC), p.count) for key, p in taken.items()
        ]

    def put_back(self, touches: list[Touch]) -> None:
        with self._lock:
            for t in touches:
                entry = self._pending.setdefault(t.snapshot_id, _Pending(0.0, 0))
                entry.seen = max(entry.seen, t.last_seen.timestamp())
                entry.count += t.count

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
