"""The systemd notify protocol (sd_notify) with no dependency.

systemd passes a datagram socket in NOTIFY_SOCKET; the daemon reports
readiness, status text, watchdog pings and reloads on it. Outside systemd
(NOTIFY_SOCKET unset) every call is a cheap no-op, so callers never branch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0


def _socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET as a connect() address; '@name' is Linux's abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and relative paths are not supported


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is meant for this process, else None."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = environ.get("WATCHDOG_PID")
    # systemd sets WATCHDOG_PID so a forked child does not ping for its parent.
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        logger.debug("WATCHDOG_USEC=%r is not a number", raw, extra={"event": "sdnotify.bad_env"})
        return None
    return usec if usec > 0 else None


class SystemdNotifier:
    """Sends sd_notify messages; never raises, since notifying is best effort."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SystemdNotifier:
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            logger.debug(
                "NOTIFY_SOCKET=%r is not supported", raw, extra={"event": "sdnotify.bad_env"}
            )
        return cls(address, _watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of newline-joined KEY=VALUE lines; True if sent."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # systemd drains the queue promptly; a bound wait means a stuck
                    # receiver costs one lost message, never a stalled daemon.
                    self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                logger.debug("sd_notify failed: %s", exc, extra={"event": "sdnotify.failed"})
                return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # A newline would start a new KEY=VALUE line and could inject other keys.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload (systemd 253+) requires."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
