"""Logging that fits journald: plain lines by default, JSON lines on request.

Structured fields come from `extra=` (`event`, `sid`, `event_id`, `notifier`,
`data`); the plain format appends the SID and ids so grep still finds them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

FIELDS = ("event", "sid", "event_id", "notifier", "data")


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
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [
            f"{name}={getattr(record, name)}"
            for name in ("event", "sid", "event_id", "notifier")
            if getattr(record, name, None) is not None
        ]
        return f"{text} [{' '.join(tags)}]" if tags else text


def configure(fmt: str = "plain", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
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
