"""One overall deadline per outgoing attempt, kept by a single watcher thread.

Socket timeouts bound each read, not the sum: a receiver sending a byte every few
seconds never trips them. When an attempt's time is up the watcher shuts its socket
down, which unblocks whatever read (status line, headers, body) is waiting on it.
One thread serves every attempt in the process: a timer thread per request would
cost more than the request itself at a thousand deliveries a second.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time

# Expiry is checked at most this often; a deadline may fire this much late.
GRANULARITY_S = 0.05


class Deadline:
    """One attempt's deadline; `watch` hands it the socket to cut when time is up."""

    __slots__ = ("at", "expired", "done", "_sock", "_lock")

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False
        self.done = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def cancel(self) -> None:
        with self._lock:
            self.done = True
            self._sock = None

    def _expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            _shutdown(self._sock)

    def __enter__(self) -> Deadline:
        _current.deadline = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.deadline = None
        self.cancel()


class _Watcher:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> Deadline:
        deadline = Deadline(time.monotonic() + seconds)
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._cond.notify()
        return deadline

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._pop_due(time.monotonic())
                if not due:
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(None if wait is None else max(wait, GRANULARITY_S))
                    continue
            for deadline in due:
                deadline._expire()

    def _pop_due(self, now: float) -> list[Deadline]:
        due = []
        while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
            deadline = heapq.heappop(self._heap)[2]
            if not deadline.done:
                due.append(deadline)
        return due


_WATCHER = _Watcher()
_current = threading.local()


def start(seconds: float) -> Deadline:
    """A deadline `seconds` from now; use it as a context manager around the attempt."""
    return _WATCHER.start(seconds)


def watch_current(sock: socket.socket | None) -> None:
    """Called by a connection about to wait for an answer: the current attempt's socket."""
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # Already closed: nothing left to interrupt.
        sock.shutdown(socket.SHUT_RDWR)
