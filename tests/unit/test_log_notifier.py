"""LogNotifier: one readable, structured record per event."""

from __future__ import annotations

import json
import logging

import pytest

from monitor.notify.base import Message
from monitor.notify.log import LogNotifier

CONF = "CF" + "0" * 31 + "1"
CALL = "CA" + "f" * 32
ENDED = {
    "conference_sid": CONF,
    "account_sid": "AC" + "1" * 32,
    "friendly_name": "Daily stand-up",
    "from_status": "init",
    "to_status": "completed",
    "skipped": ["in-progress"],
    "reason_conference_ended": "last-participant-left",
    "call_sid_ending_conference": CALL,
}


def _message(event_type: str, data: object, event_id: str = "evt_1") -> Message:
    body = json.dumps({"type": event_type, "timestamp": "2024-05-01T12:00:00+00:00", "data": data})
    return Message(event_id, event_type, body)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="monitor.events")
    return caplog


def test_one_structured_record_per_send(log: pytest.LogCaptureFixture) -> None:
    notifier = LogNotifier("audit")
    assert notifier.send(_message("conference.ended", ENDED, "evt_42")) is None

    [record] = log.records
    assert (record.name, record.levelno) == ("monitor.events", logging.INFO)
    extras = {k: getattr(record, k) for k in ("event", "event_id", "notifier", "sid", "data")}
    assert extras == {
        "event": "conference.ended",
        "event_id": "evt_42",
        "notifier": "audit",
        "sid": CONF,
        "data": ENDED,
    }
    text = record.getMessage()
    for part in ("conference.ended", CONF, "init -> completed", "skipped=in-progress"):
        assert part in text
    assert "reason=last-participant-left" in text and f"ended_by={CALL}" in text


def test_started_event_names_the_transition(log: pytest.LogCaptureFixture) -> None:
    data = {"conference_sid": CONF, "from_status": "init", "to_status": "in-progress"}
    LogNotifier("audit").send(_message("conference.started", data))
    [record] = log.records
    assert record.getMessage() == f"conference.started {CONF} init -> in-progress"


def test_account_event_without_a_conference(log: pytest.LogCaptureFixture) -> None:
    data = {"account_sid": "AC" + "1" * 32}
    LogNotifier("audit").send(_message("watch.auth_failed", data))
    [record] = log.records
    assert record.sid is None
    assert record.getMessage() == f"watch.auth_failed {'AC' + '1' * 32}"


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"data": "text"}'])
def test_an_unreadable_body_still_logs_one_line(log: pytest.LogCaptureFixture, body: str) -> None:
    LogNotifier("audit").send(Message("evt_9", "conference.ended", body))
    [record] = log.records
    assert record.data == {} and record.event_id == "evt_9"


def test_a_given_logger_is_used(log: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("monitor.events.custom")
    LogNotifier("audit", logger).send(_message("conference.started", {"conference_sid": CONF}))
    assert [r.name for r in log.records] == ["monitor.events.custom"]
