"""Parsing a conference status callback's form fields."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from monitor.callbacks.form import FormError, parse, parse_pairs, parse_timestamp

SID = "CF" + "b" * 32
ACCOUNT = "AC" + "a" * 32
CALL = "CA" + "c" * 32


def fields(**changes: str | None) -> list[tuple[str, str]]:
    base: dict[str, str | None] = {
        "ConferenceSid": SID,
        "AccountSid": ACCOUNT,
        "FriendlyName": "room-1",
        "StatusCallbackEvent": "conference-end",
        "SequenceNumber": "7",
        "Timestamp": "Tue, 01 Dec 2026 04:14:26 +0100",
        "ReasonConferenceEnded": "last-participant-left",
        "CallSidEndingConference": CALL,
    }
    base.update(changes)
    return [(k, v) for k, v in base.items() if v is not None]


def test_a_conference_end_is_typed() -> None:
    form = parse(parse_pairs(urlencode(fields()).encode()))
    assert form.conference_sid == SID and form.account_sid == ACCOUNT
    assert form.status == "completed" and form.sequence == 7
    assert form.timestamp == datetime(2026, 12, 1, 3, 14, 26, tzinfo=UTC)
    assert form.reason == "last-participant-left" and form.ending_call_sid == CALL


def test_start_has_no_end_fields_and_participant_events_no_status() -> None:
    start = parse(fields(StatusCallbackEvent="conference-start"))
    assert start.status == "in-progress" and start.reason is None and start.ending_call_sid is None
    assert parse(fields(StatusCallbackEvent="participant-join")).status is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ConferenceSid": "CF123"}, "ConferenceSid must be"),
        ({"ConferenceSid": SID + "\n"}, "ConferenceSid must be"),
        ({"ConferenceSid": None}, "ConferenceSid is missing"),
        ({"AccountSid": "ACxyz"}, "AccountSid must be"),
        ({"SequenceNumber": "-1"}, "SequenceNumber"),
        ({"SequenceNumber": "²"}, "SequenceNumber"),
        ({"Timestamp": "yesterday"}, "Timestamp"),
        ({"Timestamp": None}, "Timestamp is missing"),
        ({"StatusCallbackEvent": "Conference End"}, "StatusCallbackEvent"),
        ({"CallSidEndingConference": "CA1"}, "CallSidEndingConference"),
        ({"FriendlyName": "x" * 300}, "FriendlyName"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, str | None], message: str) -> None:
    with pytest.raises(FormError, match=message):
        parse(fields(**change))


def test_repeated_fields_and_non_forms_are_refused() -> None:
    with pytest.raises(FormError, match="repeated"):
        parse([*fields(), ("SequenceNumber", "8")])
    with pytest.raises(FormError, match="UTF-8"):
        parse_pairs(b"\xff\xfe")
    with pytest.raises(FormError):
        parse_pairs(b"&".join([b"a=1"] * 200))  # more fields than any callback has


def test_timestamps_are_aware_utc() -> None:
    assert parse_timestamp("Tue, 01 Dec 2026 04:14:26 -0000").tzinfo is UTC
    assert parse_timestamp("Tue, 01 Dec 2026 04:14:26 GMT") == datetime(
        2026, 12, 1, 4, 14, 26, tzinfo=UTC
    )
