"""Printing for people and for scripts: fitted, escaped tables, or one JSON object a line.

Whatever reaches a terminal passes `escape()` first: a friendly name, label or
error text holding a newline or an escape sequence must not forge a row or
repaint the screen. JSON escapes by itself. Tables fit the terminal (cells
are cut with "…"); `wide=True` shows every column in full.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TextIO

# C0 and C1 controls, DEL, line/paragraph separators and the bidirectional
# overrides that can make text read differently from what it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
ELLIPSIS = "…"
GAP = "  "


def escape(text: str) -> str:
    """`text` with every control character shown as an escape (`\\n`, `\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(found: re.Match[str]) -> str:
    char = found.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def jsonable(value: Any) -> Any:
    """Plain JSON types: enums as their value, times as ISO-8601 UTC with `Z`."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_line(value: Any) -> str:
    return json.dumps(jsonable(value), separators=(",", ":"))


@dataclass(frozen=True)
class View:
    """How a person wants tables: the width to fit (None: no limit), all columns, local time."""

    width: int | None = None
    wide: bool = False
    local_time: bool = False

    @classmethod
    def for_stream(
        cls,
        out: TextIO,
        *,
        wide: bool = False,
        local_time: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> View:
        return cls(terminal_width(out, environ), wide, local_time)


def terminal_width(out: TextIO, environ: Mapping[str, str] | None = None) -> int | None:
    """$COLUMNS if set, else the terminal's width; None when `out` is not a terminal."""
    environ = os.environ if environ is None else environ
    columns = environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(out.fileno()).columns if out.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def format_time(value: datetime, local_time: bool = False) -> str:
    """`2026-03-01 14:05:09Z` (UTC), or the local time with its zone's abbreviation."""
    if local_time:
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value: Any, local_time: bool = False) -> str:
    """One value as a person reads it: `-` for nothing, no Python reprs, escaped."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Enum):
        return cell(value.value)
    if isinstance(value, datetime):
        return format_time(value, local_time)
    if isinstance(value, float):
        return f"{value:.1f}" if math.isfinite(value) else "-"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(cell(v, local_time) for v in value) or "-"
    if isinstance(value, Mapping):
        return escape(json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":")))
    return escape(str(value))


@dataclass(frozen=True)
class Column:
    """A table column. It shrinks down to `min_width`; when even that is too wide, the
    columns with the lowest `keep` go first (the rightmost of equals); `wide_only`
    columns need --wide."""

    key: str
    header: str = ""
    min_width: int = 6
    wide_only: bool = False
    keep: int = 0

    @property
    def title(self) -> str:
        return (self.header or self.key.replace("_", " ")).upper()


def display_width(text: str) -> int:
    """Terminal cells: East Asian wide characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(text: str, width: int) -> str:
    """`text` cut to `width` cells, ending in "…" when anything was cut."""
    if display_width(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        size = _char_width(char)
        if used + size > width - 1:
            break
        kept.append(char)
        used += size
    return "".join(kept) + ELLIPSIS


def column_widths(natural: Sequence[int], minimum: Sequence[int], limit: int | None) -> list[int]:
    """Shrink the widest shrinkable column, one cell at a time, until the row fits."""
    widths = list(natural)
    if limit is None:
        return widths
    excess = row_width(widths) - limit
    while excess > 0:
        shrinkable = [i for i, w in enumerate(widths) if w > minimum[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def row_width(widths: Sequence[int]) -> int:
    return sum(widths) + len(GAP) * max(0, len(widths) - 1)


def columns_that_fit(columns: Sequence[Column], minimum: Sequence[int], limit: int) -> list[int]:
    """Indexes of the columns kept: drop the least kept until the rest fit at their minimum."""
    kept = list(range(len(columns)))
    drop_order = sorted(kept[1:], key=lambda i: (columns[i].keep, -i))
    for index in drop_order:
        if row_width([minimum[i] for i in kept]) <= limit:
            break
        kept.remove(index)
    return kept


@dataclass(frozen=True)
class Table:
    lines: list[str]
    hidden: int  # columns left out to fit the width


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], view: View) -> Table:
    """The header line and one line per row, fitted to `view.width`."""
    shown = [c for c in columns if view.wide or not c.wide_only]
    table = [[cell(row.get(c.key), view.local_time) for c in shown] for row in rows]
    natural = [
        max(display_width(c.title), *(display_width(r[i]) for r in table))
        for i, c in enumerate(shown)
    ]
    minimum = [min(n, max(c.min_width, len(c.title))) for n, c in zip(natural, shown, strict=True)]
    limit = None if view.wide else view.width
    kept = list(range(len(shown))) if limit is None else columns_that_fit(shown, minimum, limit)
    widths = column_widths([natural[i] for i in kept], [minimum[i] for i in kept], limit)
    lines = [_line([shown[i].title for i in kept], widths)]
    lines.extend(_line([r[i] for i in kept], widths) for r in table)
    return Table(lines, len(shown) - len(kept))


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    parts = []
    for value, width in zip(values, widths, strict=True):
        text = fit(value, width)
        parts.append(text + " " * (width - display_width(text)))
    return GAP.join(parts).rstrip()


def as_columns(columns: Sequence[str | Column]) -> list[Column]:
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def emit(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str | Column],
    *,
    as_json: bool,
    out: TextIO | None = None,
    empty: str = "(nothing)",
    view: View | None = None,
) -> int:
    """Print rows as a table or JSON lines; returns how many were printed."""
    out = out or sys.stdout
    rows = list(rows)
    if as_json:
        for row in rows:
            out.write(json_line(row) + "\n")
        return len(rows)
    if not rows:
        print(empty, file=out)
        return 0
    view = view or View.for_stream(out)
    table = render_table(rows, as_columns(columns), view)
    for line in table.lines:
        print(line, file=out)
    if table.hidden:
        print(
            f"({table.hidden} column(s) hidden to fit {view.width} columns; --wide shows all)",
            file=sys.stderr,
        )
    return len(rows)


def truncation_note(shown: int, total: int, what: str, err: TextIO | None = None) -> None:
    """On stderr, so it never mixes into a table or JSON lines on stdout."""
    if total > shown:
        print(
            f"showing {shown} of {total} {what}; use --limit {total} to see all",
            file=err or sys.stderr,
        )
