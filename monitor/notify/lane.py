"""One notifier's share of the dispatcher: its queue of claimed rows and its health.

Plain state guarded by the dispatcher's lock; the dispatcher runs the threads.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from monitor.db.outbox import Claimed
from monitor.notify.base import Notifier
from monitor.notify.retry import DeliveryPolicy


@dataclass
class Queued:
    """A claimed row waiting for a worker; `lease_end` is monotonic, `lost` if taken over."""

    row: Claimed
    lease_end: float
    lost: bool = False


@dataclass
class Lane:
    name: str
    notifier: Notifier
    policy: DeliveryPolicy
    queue: deque[Queued] = field(default_factory=deque)
    in_flight: list[Queued] = field(default_factory=list)
    workers: int = 0
    refilling: bool = False
    probing: bool = False  # this instance holds the circuit's one probe
    retired: bool = False  # replaced by a reload: finish what is in flight, take nothing new
    consecutive_failures: int = 0
    streak_since: float = 0.0  # monotonic: the first failure of the current streak
    held_until: float = 0.0  # monotonic: a pause or an open circuit, seen by this instance
    hold_reason: str = ""
    circuit_open: bool = False

    def held(self) -> bool:
        return time.monotonic() < self.held_until

    def idle(self) -> bool:
        return not self.workers and not self.queue and not self.refilling

    def hold(self, seconds: float, reason: str) -> list[Queued]:
        """Stop sending for `seconds`; the queued rows, to release unattempted."""
        self.held_until = max(self.held_until, time.monotonic() + seconds)
        self.hold_reason = reason
        return self.take_queue()

    def take_queue(self) -> list[Queued]:
        taken = list(self.queue)
        self.queue.clear()
        return taken

    def wanted_workers(self) -> int:
        """More workers to start for the rows queued, up to the notifier's concurrency."""
        room = max(1, self.policy.concurrency) - self.workers
        return max(0, min(room, len(self.queue)))
