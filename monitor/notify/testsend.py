"""`notify test`: a clearly marked sample `conference.ended` through each real notifier.

The sample goes through the same notifier objects the daemon builds (signed like a
real delivery, same payload code), but not through the outbox: nothing is written to
the database, nothing is retried, and filters do not apply (it is a test of the
path, not of the filters). `check --notifiers` uses it too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from monitor.config_schema import NotifierSettings, Settings
from monitor.domain import EventType, new_event_id
from monitor.events import document
from monitor.notify.base import DeliveryError, Message
from monitor.notify.factory import make_notifier

SAMPLE_SID = "CF" + "0" * 32
SAMPLE_ACCOUNT = "AC" + "0" * 32
SAMPLE_CALL = "CA" + "0" * 32
SAMPLE_NAME = "conference-monitor test notification"


@dataclass(frozen=True)
class SampleOutcome:
    name: str
    type: str
    ok: bool
    detail: str
    seconds: float


def sample_message(now: datetime | None = None) -> Message:
    """A `conference.ended` that says it is a test in its name, its data and its id."""
    now = now or datetime.now(UTC)
    event_id = new_event_id()
    data = {
        "conference_sid": SAMPLE_SID,
        "account_sid": SAMPLE_ACCOUNT,
        "friendly_name": SAMPLE_NAME,
        "region": "us1",
        "from_status": "in-progress",
        "to_status": "completed",
        "skipped": [],
        "reason_conference_ended": "last-participant-left",
        "call_sid_ending_conference": SAMPLE_CALL,
        "date_created": _iso(now - timedelta(minutes=12, seconds=5)),
        "date_updated": _iso(now),
        "observed_at": _iso(now),
        "detected_via": "poll",
        "test": True,
    }
    return Message(event_id, EventType.ENDED, document(EventType.ENDED, event_id, now, data))


def send_samples(specs: Iterable[NotifierSettings]) -> list[SampleOutcome]:
    message = sample_message()
    return [_send(spec, message) for spec in specs]


def _send(spec: NotifierSettings, message: Message) -> SampleOutcome:
    started = time.monotonic()
    try:
        notifier = make_notifier(spec)
    except ValueError as exc:
        return SampleOutcome(spec.name, spec.type, False, str(exc), 0.0)
    try:
        status = notifier.send(message)
        detail = f"delivered (HTTP {status})" if status else "delivered"
        ok = True
    except DeliveryError as exc:
        ok, detail = False, exc.message
    except Exception as exc:  # a notifier bug: say what, not a traceback
        ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        notifier.close()
    return SampleOutcome(spec.name, spec.type, ok, detail, time.monotonic() - started)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def run_notify_test(settings: Settings, names: list[str] | None, *, as_json: bool) -> int:
    """Send the sample through the chosen notifiers, print one line each; 1 if any failed.

    Raises LookupError for a name not in the configuration (a usage error).
    """
    from monitor.app import effective_notifiers

    specs = list(effective_notifiers(settings))
    if names:
        unknown = [n for n in names if n not in {s.name for s in specs}]
        if unknown:
            known = ", ".join(s.name for s in specs)
            raise LookupError(
                f"no notifier named {', '.join(map(repr, unknown))}; configured: {known}"
            )
        specs = [s for s in specs if s.name in names]
    results = send_samples(specs)
    for r in results:
        if as_json:
            print(
                json.dumps(
                    {
                        "notifier": r.name,
                        "type": r.type,
                        "ok": r.ok,
                        "detail": r.detail,
                        "seconds": round(r.seconds, 3),
                    }
                )
            )
        else:
            print(
                f"{'ok  ' if r.ok else 'FAIL'}  {r.name} ({r.type}): {r.detail} ({r.seconds:.2f}s)"
            )
    return 0 if all(r.ok for r in results) else 1
