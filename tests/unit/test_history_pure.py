"""The pure parts of history: parameters and cursors, auth checks, percentiles, timeline
geometry, the retention planner."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from monitor.api.auth import (
    allowed,
    cookie_token,
    cookie_value,
    is_loopback,
    parse_token_lines,
    presented_token,
    token_accepted,
    token_digest,
)
from monitor.api.params import BadRequest, Query, make_cursor, parse_time, read_cursor
from monitor.report import percentile, render, safe
from monitor.retention import Conference, SnapshotRow, snapshots_to_delete
from monitor.web import timeline

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


# -- parameters and cursors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - timedelta(minutes=15)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-11-27T10:00:00Z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T11:00:00+01:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T10:00:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
    ],
)
def test_times_are_iso_or_a_duration_ago(text: str, expected: datetime) -> None:
    assert parse_time("since", text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "99999999999d", "0001-01-01T00:00:00+05:00", "-5m"])
def test_bad_times_name_the_parameter(text: str) -> None:
    with pytest.raises(BadRequest, match="^since "):
        parse_time("since", text, NOW)


def test_a_cursor_round_trips_and_refuses_tampering() -> None:
    key = (datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC), "CF" + "0" * 32)
    cursor = make_cursor("c", key)
    assert read_cursor("c", cursor, (datetime, str)) == key
    assert read_cursor("c", None, (datetime, str)) is None
    forged = [
        make_cursor("e", key),  # another listing's
        cursor[:-3],  # cut
        base64.urlsafe_b64encode(orjson.dumps(["c", "2026-11-27T10:00:00", "x"])).decode(),
        base64.urlsafe_b64encode(orjson.dumps(["c", 5, "x"])).decode(),
        base64.urlsafe_b64encode(orjson.dumps({"c": 1})).decode(),
        "!!!",
        "A" * 700,
    ]
    for token in forged:
        with pytest.raises(BadRequest, match="cursor"):
            read_cursor("c", token, (datetime, str))
    with pytest.raises(BadRequest):
        read_cursor("d", make_cursor("d", (True,)), (int,))


def test_query_refuses_unknown_repeated_empty_and_oversized_parameters() -> None:
    with pytest.raises(BadRequest, match="unknown parameter 'x'"):
        Query({"x": ["1"]}, ("limit",))
    with pytest.raises(BadRequest, match="more than once"):
        Query({"limit": ["1", "2"]}, ("limit",))
    with pytest.raises(BadRequest, match="label is empty"):
        Query({"label": [""]}, ("label",)).text("label")
    assert Query({"label": [""]}, ("label",), blank_is_absent=True).text("label") is None
    with pytest.raises(BadRequest, match="longer than 200"):
        Query({"label": ["x" * 201]}, ("label",)).text("label")
    long = Query({"status": ["y" * 500]}, ("status",))
    with pytest.raises(BadRequest) as info:
        long.choice("status", ("a",))
    assert len(str(info.value)) < 200  # the client's value is shortened when echoed
    q = Query({"type": ["a,b", "c"]}, ("type",), ("type",))
    assert q.many("type", ("a", "b", "c")) == ["a", "b", "c"]


# -- access ----------------------------------------------------------------------------


def test_token_lines_digests_and_problems() -> None:
    digests, problems = parse_token_lines(
        f"# c\n\nsha256:{'A' * 64}\nshort\nsha256:zz\n{'t' * 20}\nwith space inside x\n"
    )
    assert digests == {"a" * 64, token_digest("t" * 20)}
    assert [line for line, _ in problems] == [4, 5, 7]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("", False), ("fe80::1%eth0", False)],
)  # fmt: skip
def test_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_presented_tokens_and_acceptance() -> None:
    digests = {token_digest("right-token-0123456789")}
    assert presented_token("Bearer right-token-0123456789", None) == "right-token-0123456789"
    assert presented_token("bearer   x  ", None) == "x"
    assert presented_token("Basic abc", "cm_token=" + cookie_value("y")) is None  # header wins
    assert presented_token(None, "a=1; cm_token=" + cookie_value("tok;en=")) == "tok;en="
    assert presented_token(None, 'cm_token="unterminated') is None
    assert cookie_token("%%%") is None
    assert token_accepted("right-token-0123456789", digests)
    assert not token_accepted("right-token-012345678", digests)
    assert not token_accepted("", digests) and not token_accepted(None, digests)
    assert not token_accepted("x" * 5000, {token_digest("x" * 5000)})
    assert allowed("127.0.0.1", None, None, set(), allow_loopback=True)
    assert not allowed("10.0.0.2", None, None, set(), allow_loopback=True)
    assert not allowed("127.0.0.1", None, None, set(), allow_loopback=False)


# -- report ------------------------------------------------------------------------------


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert percentile([1.0, 2.0], 0) == 1.0


def test_terminal_text_cannot_carry_control_characters() -> None:
    assert safe("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    doc = {
        "since": "s",
        "until": "u",
        "conferences": {"started": 1, "ended": 1, "first_seen": 1, "irregular": 0},
        "end_reasons": {"reason\x07": 1},
        "duration_s": {"count": 1, "p50": 61.0, "p95": 61.0, "max": 61.0},
        "longest": [
            {"sid": "CF1", "friendly_name": "\x1b]0;pwned\x07", "duration_s": 61.0,
             "reason_conference_ended": None, "ended_at": "e"}
        ],
        "not_found": 0,
        "auth_failures": 0,
        "auth_failing_accounts": [],
        "watches_added": {"total": 1, "active": 0, "completed": 1, "not_found": 0},
        "deliveries_outstanding": {"pending": 0, "failed": 0, "dead": 0},
    }  # fmt: skip
    text = render(doc)
    assert "\x1b" not in text and "\x07" not in text
    assert "p50 1m1s" in text and "\\x1b]0;pwned" in text


# -- timeline ----------------------------------------------------------------------------


def snap(status: str, updated: datetime, first_seen: datetime, **kw: object) -> dict[str, object]:
    return {
        "status": status,
        "date_created": NOW,
        "date_updated": updated,
        "first_observed_at": first_seen,
        "last_observed_at": kw.get("last", first_seen),
    }


def at(**delta: float) -> datetime:
    return NOW + timedelta(**delta)


def test_phases_come_from_twilio_times() -> None:
    snaps = [
        snap("init", NOW, at(seconds=3)),
        snap("in-progress", at(minutes=1), at(minutes=1, seconds=4)),
        snap("completed", at(minutes=10), at(minutes=10, seconds=2)),
    ]
    p = timeline.phases(snaps)
    assert (p.created, p.started, p.ended) == (NOW, at(minutes=1), at(minutes=10))
    axis = timeline.axis_for(p, at(hours=5), [at(minutes=10, seconds=2)])
    assert axis == (NOW, at(minutes=10, seconds=2))
    init, live = timeline.segments(p, (NOW, at(minutes=10)))
    assert (init.status, init.x, round(init.width, 6)) == ("init", 0.0, 100.0)
    assert (live.status, live.x, round(live.width, 6)) == ("in-progress", 100.0, 900.0)


def test_a_running_conference_runs_to_the_axis_end_and_tiny_phases_still_show() -> None:
    p = timeline.Phases(NOW, at(seconds=1), None, at(hours=1))
    axis = timeline.axis_for(p, at(hours=2))
    assert axis == (NOW, at(hours=2))
    init, live = timeline.segments(p, axis)
    assert init.width == timeline.MIN_WIDTH and live.x + live.width == pytest.approx(1000.0)


def test_day_bars_are_clipped_to_the_day_and_skip_what_is_outside() -> None:
    day = (NOW.replace(hour=0), NOW.replace(hour=0) + timedelta(days=1))
    yesterday = timeline.Phases(
        day[0] - timedelta(hours=3), None, day[0] - timedelta(hours=2), None
    )
    assert timeline.segments(yesterday, day) == []
    overnight = timeline.Phases(
        day[0] - timedelta(hours=1), day[0] + timedelta(hours=6), None, None
    )
    init, live = timeline.segments(overnight, day, running_until=day[0] + timedelta(hours=12))
    assert init.x == 0.0 and live.x == 250.0 and live.width == pytest.approx(250.0)
    never_seen = timeline.Phases(None, None, None, None)
    assert timeline.segments(never_seen, day) == [] and timeline.axis_for(never_seen, NOW) is None


def test_the_timeline_markers_are_where_the_monitor_saw_each_event() -> None:
    axis = (NOW, NOW + timedelta(seconds=100))
    events = [
        {"occurred_at": NOW + timedelta(seconds=25), "type": "conference.started"},
        {"occurred_at": NOW + timedelta(seconds=200), "type": "conference.ended"},
    ]
    (marker,) = timeline.markers(events, axis)
    assert marker.x == 250.0 and marker.label == "conference.started"


# -- the retention planner -------------------------------------------------------------------


def test_snapshots_to_delete_keeps_first_last_current_and_what_events_point_at() -> None:
    old = NOW - timedelta(days=60)
    rows = [SnapshotRow(i, "CF1", old) for i in range(1, 6)] + [SnapshotRow(9, "CF2", old)]
    finished = Conference(
        first_id=1, last_id=5, current_id=5, finished=True, referenced=frozenset({3})
    )
    running = Conference(
        first_id=1, last_id=5, current_id=5, finished=False, referenced=frozenset({3})
    )
    cut = NOW - timedelta(days=30)
    assert snapshots_to_delete(rows, {"CF1": finished}, cut, "snapshots") == [2, 3, 4]
    assert snapshots_to_delete(rows, {"CF1": running}, cut, "snapshots") == []
    assert snapshots_to_delete(rows, {"CF1": running}, cut, "observations") == [2, 4]
    assert snapshots_to_delete(rows, {"CF1": finished}, old, "observations") == []  # not older
    lone = Conference(first_id=9, last_id=9, current_id=None, finished=True)
    assert snapshots_to_delete(rows, {"CF2": lone}, cut, "snapshots") == []
