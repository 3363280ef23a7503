"""Human durations ("500ms", "5s", "1h30m", "90d", "1w") to float seconds and back.

Config files and the command line speak in these; everything inside the
monitor works in float seconds, so the conversion lives in one place.
"""

from __future__ import annotations

import math
import re

UNIT_SECONDS: dict[str, float] = {
    "w": 604800.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# "ms" before "m" and "s" so "5ms" is milliseconds, not minutes followed by junk.
_PART = re.compile(rf"({_NUMBER})(ms|w|d|h|m|s)")
_COMPOUND = re.compile(rf"(?:{_NUMBER}(?:ms|w|d|h|m|s)\s*)+")
_BARE = re.compile(_NUMBER)
_HINT = (
    "expected a number of seconds or a number with a unit (ms, s, m, h, d, w), "
    "e.g. '5s', '1h30m', '1w'"
)


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`; bare numbers are seconds. ValueError names the text."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"invalid duration {text!r}: {_HINT}")
    seconds = _parse_text(text) if isinstance(text, str) else float(text)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"invalid duration {text!r}: must be finite")
    if seconds < 0:
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    return seconds


def _parse_text(text: str) -> float:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    if _BARE.fullmatch(stripped):
        return float(stripped)
    if not stripped or not _COMPOUND.fullmatch(stripped):
        raise ValueError(f"invalid duration {text!r}: {_HINT}")
    return sum(float(n) * UNIT_SECONDS[unit] for n, unit in _PART.findall(stripped))


def format_duration(seconds: float) -> str:
    """The shortest unit string that `parse_duration` reads back, e.g. 5400 -> "1h30m"."""
    if isinstance(seconds, bool) or math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}: must be finite and not negative")
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6:  # below millisecond precision: plain seconds
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts) or "0s"
