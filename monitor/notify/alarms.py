"""Wake-ups at given moments, one timer per key: a retry or a pause ending on time.

The dispatch tick would catch such moments too, up to a tick late; a timer keeps
`retry_delays` and `Retry-After` exact. Moments are put on a coarse grid so a burst
of retries shares one wake-up (and one claim).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable

HORIZON_S = 300.0  # later moments are left to the dispatch tick
SLACK_S = 0.01  # past the due time, so a row's `next_attempt_at <= now` holds by then
GRID_S = 0.05


class Alarms:
    def __init__(self, ring: Callable[[str], None]) -> None:
        self._ring = ring
        self._lock = threading.Lock()
        self._moments: dict[str, list[float]] = {}  # key -> heap of monotonic times
        self._timers: dict[str, tuple[threading.Timer, float]] = {}
        self._stopped = False

    def wake(self, key: str, after_s: float) -> None:
        """Call `ring(key)` in `after_s` seconds (from a timer thread)."""
        if after_s > HORIZON_S:
            return
        due = time.monotonic() + max(after_s, 0.0) + SLACK_S
        at = math.ceil(due / GRID_S) * GRID_S
        with self._lock:
            if self._stopped:
                return
            moments = self._moments.setdefault(key, [])
            if at not in moments:
                heapq.heappush(moments, at)
                self._arm(key)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            timers, self._timers = self._timers, {}
            self._moments.clear()
        for timer, _ in timers.values():
            timer.cancel()

    def _arm(self, key: str) -> None:
        """One timer per key, for its earliest moment (caller holds the lock)."""
        moments = self._moments.get(key)
        if not moments:
            return
        at = moments[0]
        current = self._timers.get(key)
        if current is not None and current[1] <= at:
            return
        if current is not None:
            current[0].cancel()
        timer = threading.Timer(max(0.0, at - time.monotonic()), self._fire, args=(key,))
        timer.daemon = True
        self._timers[key] = (timer, at)
        timer.start()

    def _fire(self, key: str) -> None:
        with self._lock:
            self._timers.pop(key, None)
            moments = self._moments.get(key, [])
            now = time.monotonic()
            while moments and moments[0] <= now + GRID_S:
                heapq.heappop(moments)
            self._arm(key)
            if self._stopped:
                return
        self._ring(key)
