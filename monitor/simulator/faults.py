"""Injected faults and request counts for the simulator's API: pure, thread-safe."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from monitor.simulator.state import Clock, new_sid


@dataclass
class Fault:
    """An injected failure for API requests; `remaining=None` means unlimited."""

    id: str
    kind: str
    remaining: int | None = None
    until: float | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    sid: str | None = None


FAULT_KINDS = ("429", "500", "503", "delay", "garbage", "404", "401")


class FaultBook:
    """Faults in the order added; the first live one matching a request is served."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        kind: str,
        *,
        count: int | None = None,
        for_s: float | None = None,
        retry_after: float | None = None,
        delay_s: float | None = None,
        sid: str | None = None,
    ) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        count = None if count is None else int(count)
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        until = None if for_s is None else self._clock() + float(for_s)
        wait = None if retry_after is None else float(retry_after)
        fault = Fault(new_sid("FT"), kind, count, until, wait, float(delay_s or 0.0), sid)
        with self._lock:
            self._faults.append(fault)
        return fault.id

    def take(self, path: str) -> Fault | None:
        """The fault to serve for this request path, counting it as used."""
        now = self._clock()
        with self._lock:
            self._faults = [f for f in self._faults if _live(f, now)]
            for fault in self._faults:
                if fault.sid is None or fault.sid in path:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def clear(self) -> int:
        with self._lock:
            cleared = len(self._faults)
            self._faults.clear()
        return cleared


def _live(fault: Fault, now: float) -> bool:
    return (fault.remaining is None or fault.remaining > 0) and (
        fault.until is None or now < fault.until
    )


class RequestStats:
    """Counts of API requests by kind, for benchmarks and tests."""

    KINDS = ("fetch", "list", "update")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def record(self, kind: str, faulted: bool) -> None:
        with self._lock:
            self._requests += 1
            self._by_kind[kind] = self._by_kind.get(kind, 0) + 1
            self._faults += int(faulted)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_kind": dict(self._by_kind),
                "faults_served": self._faults,
            }

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._faults = 0
            self._by_kind: dict[str, int] = dict.fromkeys(self.KINDS, 0)
