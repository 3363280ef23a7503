"""Injected faults and request counts for the simulator's API: pure, thread-safe.

Two families: faults that replace the answer (an error status, garbage, a
delay before it), and hostile answers that bend a successful one (`drip` it a
byte at a time, make it `huge`, `loop` its paging, break one list item, or
answer for a different conference or account).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from monitor.simulator.records import Clock, new_sid

# Served instead of the real answer.
ERROR_KINDS = ("429", "500", "503", "404", "401", "garbage")
# Bend a successful answer: see monitor.simulator.hostile.
HOSTILE_KINDS = ("drip", "huge", "loop", "malformed_item", "mismatch")
FAULT_KINDS = (*ERROR_KINDS, "delay", *HOSTILE_KINDS)
LIST_ONLY = ("loop", "malformed_item")
FRAMINGS = ("length", "chunked", "close")
MISMATCH_FIELDS = ("sid", "account_sid")
MAX_HUGE_BYTES = 4 * 1024**3


@dataclass
class Fault:
    """An injected failure for API requests; `remaining=None` means unlimited.

    `sid` limits a fault to requests whose path names it, except for
    `malformed_item`, where it names the list item to break (None: each page's
    first). `framing` is how a `huge` body is delimited, `field` what a
    `mismatch` changes, `endless` makes a `loop` never repeat a URI.
    """

    id: str
    kind: str
    remaining: int | None = None
    until: float | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    sid: str | None = None
    size_bytes: int = 0
    framing: str = "length"
    field: str = "sid"
    endless: bool = False

    def applies(self, path: str, kind: str) -> bool:
        if self.kind in LIST_ONLY:
            return kind == "list"
        if self.kind == "mismatch" and kind not in ("fetch", "update"):
            return False
        return self.sid is None or self.sid in path


class FaultBook:
    """Faults in the order added; the first live one matching a request is served."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, kind: str, **options: Any) -> str:
        """Options: count, for_s, retry_after, delay_s, sid, size_bytes, framing, field, endless."""
        fault = _build(new_sid("FT"), kind, self._clock(), **options)
        with self._lock:
            self._faults.append(fault)
        return fault.id

    def take(self, path: str, kind: str = "other") -> Fault | None:
        """The fault to serve for this request (its path and kind), counting it as used."""
        if not self._faults:
            return None
        now = self._clock()
        with self._lock:
            self._faults = [f for f in self._faults if _live(f, now)]
            for fault in self._faults:
                if fault.applies(path, kind):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def clear(self) -> int:
        with self._lock:
            cleared = len(self._faults)
            self._faults.clear()
        return cleared


def _build(
    fault_id: str,
    kind: str,
    now: float,
    *,
    count: int | None = None,
    for_s: float | None = None,
    retry_after: float | None = None,
    delay_s: float | None = None,
    sid: str | None = None,
    size_bytes: int | None = None,
    framing: str | None = None,
    field: str | None = None,
    endless: bool | None = None,
) -> Fault:
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
    count = None if count is None else int(count)
    if count is not None and count < 1:
        raise ValueError("count must be at least 1")
    if kind == "loop" and sid is not None:
        raise ValueError("a loop fault bends list paging: it takes no sid")
    if framing is not None and framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    if field is not None and field not in MISMATCH_FIELDS:
        raise ValueError(f"field must be one of {MISMATCH_FIELDS}, got {field!r}")
    size = int(size_bytes or 0)
    if kind == "huge" and not 0 < size <= MAX_HUGE_BYTES:
        raise ValueError(f"a huge fault needs size_bytes from 1 to {MAX_HUGE_BYTES}")
    delay = float(delay_s or 0.0)
    if kind == "drip" and not delay > 0:
        raise ValueError("a drip fault needs delay_s > 0 (the pause between bytes)")
    return Fault(
        fault_id,
        kind,
        count,
        None if for_s is None else now + float(for_s),
        None if retry_after is None else float(retry_after),
        delay,
        sid,
        size,
        framing or "length",
        field or "sid",
        bool(endless),
    )


def _live(fault: Fault, now: float) -> bool:
    return (fault.remaining is None or fault.remaining > 0) and (
        fault.until is None or now < fault.until
    )


class RequestStats:
    """Counts of API requests by kind, and bytes of hostile bodies sent, for tests."""

    KINDS = ("fetch", "list", "update")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def record(self, kind: str, faulted: bool) -> None:
        with self._lock:
            self._requests += 1
            self._by_kind[kind] = self._by_kind.get(kind, 0) + 1
            self._faults += int(faulted)

    def streamed(self, sent: int, complete: bool) -> None:
        """A drip or huge body ended: `sent` bytes written, all of it or cut by the client."""
        with self._lock:
            self._streamed_bytes += sent
            self._streams_cut += int(not complete)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_kind": dict(self._by_kind),
                "faults_served": self._faults,
                "streamed_bytes": self._streamed_bytes,
                "streams_cut": self._streams_cut,
            }

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._faults = 0
            self._streamed_bytes = 0
            self._streams_cut = 0
            self._by_kind: dict[str, int] = dict.fromkeys(self.KINDS, 0)
