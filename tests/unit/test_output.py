"""Tables and values for people: escaped, no reprs, fitted to the width."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import pytest

from monitor.output import (
    Column,
    View,
    cell,
    column_widths,
    display_width,
    emit,
    escape,
    fit,
    jsonable,
    render_table,
    terminal_width,
)

WHEN = datetime(2026, 3, 1, 14, 5, 9, 123456, tzinfo=UTC)


class Colour(StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("a\nb", "a\\nb"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("\x1b[2Jx", "\\x1b[2Jx"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("left\u202eright", "left\\u202eright"),
        ("line\u2028sep", "line\\u2028sep"),
        ("café 会議", "café 会議"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert escape(raw) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "-"),
        ("", "-"),
        (True, "yes"),
        (0, "0"),
        (18.148957000221344, "18.1"),
        (float("nan"), "-"),
        (Colour.RED, "red"),
        ([Colour.RED, "conference.ended"], "red, conference.ended"),
        ([], "-"),
        ({"a": 1}, '{"a":1}'),
        (WHEN, "2026-03-01 14:05:09Z"),
        (WHEN.astimezone(timezone(timedelta(hours=2))), "2026-03-01 14:05:09Z"),
        ("evil\n\x1b[2J", "evil\\n\\x1b[2J"),
        (["x\ny"], "x\\ny"),
    ],
)
def test_cell(value: object, shown: str) -> None:
    assert cell(value) == shown


def test_local_time_carries_its_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    import time

    time.tzset()
    try:
        assert cell(WHEN, local_time=True) == "2026-03-01 15:05:09 CET"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_jsonable_has_no_python_types() -> None:
    doc = jsonable({"at": WHEN, "kind": Colour.RED, "many": (1, Colour.RED), "bad": float("inf")})
    assert json.dumps(doc) == (
        '{"at": "2026-03-01T14:05:09.123456Z", "kind": "red", "many": [1, "red"], "bad": null}'
    )


def test_display_width_and_fit() -> None:
    assert display_width("会議") == 4 and display_width("e\u0301") == 1
    assert fit("abcdef", 4) == "abc…"
    assert fit("abcd", 4) == "abcd"
    assert fit("会議会議", 5) == "会議…"
    assert display_width(fit("会議会議", 5)) <= 5


def test_column_widths_shrink_the_widest_first() -> None:
    assert column_widths([10, 30, 5], [4, 8, 5], None) == [10, 30, 5]
    assert column_widths([10, 30, 5], [4, 8, 5], 40) == [10, 21, 5]  # 36 + 2 gaps of 2
    assert column_widths([10, 30, 5], [10, 8, 5], 10) == [10, 8, 5]  # cannot: stays at minimum


ROWS = [
    {"sid": "CF" + "a" * 32, "name": "incident bridge " * 4, "extra": "x", "rank": "low"},
    {"sid": "CF" + "b" * 32, "name": "standup", "extra": "y", "rank": "high"},
]
COLUMNS = [
    Column("sid", min_width=34, keep=9),
    Column("name", min_width=8, keep=5),
    Column("rank", min_width=4, keep=1),
    Column("extra", wide_only=True),
]


def test_table_fits_drops_least_kept_and_wide_shows_all() -> None:
    fitted = render_table(ROWS, COLUMNS, View(width=60))
    assert all(display_width(line) <= 60 for line in fitted.lines)
    assert fitted.lines[0].split() == ["SID", "NAME", "RANK"]
    assert "…" in fitted.lines[1] and fitted.hidden == 0
    narrow = render_table(ROWS, COLUMNS, View(width=46))
    assert narrow.lines[0].split() == ["SID", "NAME"] and narrow.hidden == 1
    wide = render_table(ROWS, COLUMNS, View(width=46, wide=True))
    assert wide.lines[0].split() == ["SID", "NAME", "RANK", "EXTRA"]
    assert "incident bridge " * 3 in wide.lines[1]


def test_emit_json_and_empty() -> None:
    out = io.StringIO()
    assert emit(ROWS[:1], COLUMNS, as_json=True, out=out) == 1
    assert json.loads(out.getvalue())["sid"] == "CF" + "a" * 32
    out = io.StringIO()
    assert emit([], COLUMNS, as_json=False, out=out, empty="no rows") == 0
    assert out.getvalue() == "no rows\n"


def test_terminal_width_comes_from_columns_or_the_terminal() -> None:
    assert terminal_width(io.StringIO(), {"COLUMNS": "99"}) == 99
    assert terminal_width(io.StringIO(), {"COLUMNS": "wide"}) is None  # not a terminal
    assert terminal_width(io.StringIO(), {}) is None
