"""Logging that fits journald: plain lines by default, JSON lines on request.

Structured fields come from `extra=` (`event`, `sid`, `event_id`, `notifier`,
`data`); the plain format appends the SID and ids so grep still finds them.
Plain lines are escaped (a conference name cannot forge a log line), and
continuation lines of a traceback are indented. When stderr is the journal's
stream ($JOURNAL_STREAM), each line starts with its syslog priority `<N>` so
`journalctl -p warning` works, and plain lines drop the journal's own timestamp.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from monitor.output import escape

FIELDS = ("event", "sid", "event_id", "notifier", "data")
TAGS = ("event", "sid", "event_id", "notifier")
CONTINUATION = "    "
# sd-daemon(3) priorities, as syslog numbers them.
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
CRITICAL_PRIORITY = 2


def priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return CRITICAL_PRIORITY
    for level in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


def utc_time(record: logging.LogRecord) -> str:
    """`2026-03-01T14:05:09.123Z`: a log line's time, never ambiguous about its zone."""
    when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return when.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class PlainFormatter(logging.Formatter):
    """`<time> LEVEL logger: message [tags]`, every part escaped; no time under journald."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        head = f"{utc_time(record)} " if self.timestamps else ""
        text = f"{head}{record.levelname} {escape(record.name)}: {escape(record.getMessage())}"
        tags = [
            f"{name}={escape(str(getattr(record, name)))}"
            for name in TAGS
            if getattr(record, name, None) is not None
        ]
        if tags:
            text += f" [{' '.join(tags)}]"
        if record.exc_info:
            text += "\n" + _indented(self.formatException(record.exc_info))
        if record.stack_info:
            text += "\n" + _indented(self.formatStack(record.stack_info))
        return text


def _indented(block: str) -> str:
    """Each line escaped and indented: it reads as part of the record above it."""
    return "\n".join(CONTINUATION + escape(line) for line in block.splitlines())


class JournalFormatter(logging.Formatter):
    """Prefixes every line of the wrapped formatter's output with `<priority>`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines())


def is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when `stream` is the journal: $JOURNAL_STREAM names its device and inode."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def formatter_for(fmt: str, journal: bool) -> logging.Formatter:
    """JSON keeps its `ts` under journald: `journalctl -o cat | jq` has no other time."""
    inner = JsonFormatter() if fmt == "json" else PlainFormatter(timestamps=not journal)
    return JournalFormatter(inner) if journal else inner


def configure(
    fmt: str = "plain",
    level: str = "INFO",
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    stream = stream or sys.stderr
    journal = is_journal_stream(stream, os.environ if environ is None else environ)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(fmt, journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Python warnings and a thread's uncaught exception would otherwise reach stderr
    # as bare text, breaking one-JSON-object-a-line for whoever parses the journal.
    logging.captureWarnings(True)
    if threading.excepthook is threading.__excepthook__:  # leave a test runner's hook be
        threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("monitor").error(
        "uncaught exception in thread %s",
        name,
        exc_info=args.exc_value,
        extra={"event": "thread.crashed"},
    )
