"""Hand-off between request threads and the one writer thread: a bounded queue.

A request thread enqueues its callback and waits until the writer has
committed it (or failed to), so a 204 always means "written". A full queue
or a writer that does not answer in time is refused at once (503): Twilio
and any proxy see it, and polling catches up on what was refused.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from monitor.callbacks.form import CallbackForm

UNAVAILABLE = "unavailable"
DEFAULT_QUEUE = 5000
DEFAULT_WAIT_S = 5.0  # under Twilio's 15 s callback timeout


@dataclass
class Pending:
    """One callback waiting for its group's commit; `result` is set before `done`."""

    form: CallbackForm
    received_at: datetime  # wall clock, for the record
    received_mono: float  # monotonic, for the receipt-to-commit histogram
    result: str = UNAVAILABLE
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, result: str) -> None:
        self.result = result
        self.done.set()


class Intake:
    def __init__(self, maxsize: int = DEFAULT_QUEUE, wait_s: float = DEFAULT_WAIT_S) -> None:
        self._queue: queue.Queue[Pending] = queue.Queue(maxsize)
        self.wait_s = wait_s
        self.closed = False

    def submit(self, form: CallbackForm, received_at: datetime) -> str:
        """Enqueue and wait for the outcome; UNAVAILABLE if full, closed or too slow."""
        if self.closed:
            return UNAVAILABLE
        item = Pending(form, received_at, time.monotonic())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return UNAVAILABLE
        if not item.done.wait(self.wait_s):
            return UNAVAILABLE  # the writer may still commit it; polling confirms either way
        return item.result

    def take(self, limit: int, timeout_s: float) -> list[Pending]:
        """Up to `limit` waiting callbacks: the first within `timeout_s`, then what is there."""
        try:
            first = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return []
        group = [first]
        while len(group) < limit:
            try:
                group.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return group

    def close(self) -> list[Pending]:
        """Refuse new callbacks; return those still queued, for the caller to answer."""
        self.closed = True
        left: list[Pending] = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                return left
