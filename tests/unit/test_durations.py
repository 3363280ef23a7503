import math

import pytest

from monitor.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("90d", 90 * 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("5", 5.0),
        ("2.5", 2.5),
        ("  5s  ", 5.0),
        (5, 5.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "-5s", "-1", "5x", "5sec", "s", "5 s", "5S", "1e3", "5s-", "abc", "1h30"],
)
def test_parse_duration_rejects_text_and_names_it(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, True, None, [5]])
def test_parse_duration_rejects_other_values(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (5, "5s"),
        (3.05, "3s50ms"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (90 * 86400, "90d"),
        (25 * 3600, "1d1h"),
        (0.0005, "0.0005s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 0.001, 0.25, 1.5, 59, 61.5, 3599.999, 86400 * 3.5, 0.0005])
def test_format_then_parse_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf])
def test_format_duration_rejects_what_cannot_be_parsed_back(seconds: float) -> None:
    with pytest.raises(ValueError):
        format_duration(seconds)


@pytest.mark.parametrize(("text", "seconds"), [("1w", 604800.0), ("2w3d", 17 * 86400.0)])
def test_weeks(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
