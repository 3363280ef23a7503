"""What happened over a window: starts and ends, why they ended, how long they lasted.

The same document answers `conference-monitor report` and `GET /api/v1/summary`.
Durations are Twilio's own (`date_updated` at the end minus `date_created`), so
they do not depend on how often the monitor polled. Percentiles are nearest-rank:
p50 of four values is the second.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from monitor.api.params import iso
from monitor.db import history
from monitor.domain import EVENT_TYPES, EventType
from monitor.durations import format_duration
from monitor.output import escape as safe

LONGEST_SHOWN = 5


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None for no values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(
    engine: Engine, since: datetime, until: datetime, *, top: int = LONGEST_SHOWN
) -> dict[str, Any]:
    """The report for events in [since, until), and the state of things now."""
    window = history.Window(since, until)
    with history.reading(engine) as conn:
        counts = history.event_counts(conn, EVENT_TYPES, window)
        reasons_found = history.end_reasons(conn, window)
        durations = history.end_durations(conn, window)
        timed = [
            (float(d), sid, event_id, reason)
            for event_id, sid, reason, d in history.longest_ends(conn, window, top)
        ]
        details = history.end_details(conn, [t[2] for t in timed])
        watches = history.watch_counts(conn, window)
        outstanding = history.outstanding_deliveries(conn)
        failing = history.failing_accounts(conn)
    reasons: Counter[str] = Counter()
    for reason, n in reasons_found.items():
        reasons[reason or "unknown"] += n
    longest = [
        {
            "sid": sid,
            "friendly_name": details.get(event_id, {}).get("friendly_name"),
            "duration_s": round(seconds, 3),
            "reason_conference_ended": reason,
            "ended_at": details.get(event_id, {}).get("ended_at"),
        }
        for seconds, sid, event_id, reason in timed
    ]
    return build(since, until, counts, reasons, durations, longest, watches, outstanding, failing)


def build(
    since: datetime,
    until: datetime,
    counts: dict[str, int],
    reasons: dict[str, int],
    durations: Sequence[float],
    longest: list[dict[str, Any]],
    watches: dict[str, int],
    outstanding: dict[str, int],
    failing: list[dict[str, Any]],
) -> dict[str, Any]:
    """Pure: the summary document from what the queries found."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "since": iso(since),
        "until": iso(until),
        "conferences": {
            "started": counts.get(EventType.STARTED, 0),
            "ended": counts.get(EventType.ENDED, 0),
            "first_seen": counts.get(EventType.FIRST_SEEN, 0),
            "irregular": counts.get(EventType.IRREGULAR, 0),
        },
        "end_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "duration_s": {
            "count": len(durations),
            "p50": rounded(percentile(durations, 50)),
            "p95": rounded(percentile(durations, 95)),
            "max": rounded(durations[-1] if durations else None),
        },
        "longest": [{k: _plain(v) for k, v in row.items()} for row in longest],
        "not_found": counts.get(EventType.WATCH_NOT_FOUND, 0),
        "auth_failures": counts.get(EventType.WATCH_AUTH_FAILED, 0),
        "auth_failing_accounts": [row["account_sid"] for row in failing],
        "watches_added": {
            "total": sum(watches.values()),
            **{s: watches.get(s, 0) for s in ("active", "completed", "not_found")},
        },
        "deliveries_outstanding": {s: outstanding.get(s, 0) for s in ("pending", "failed", "dead")},
    }


def _plain(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def _length(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return format_duration(round(max(seconds, 0.0)))


def render(doc: dict[str, Any]) -> str:
    """The summary for a terminal; free text from Twilio (names, reasons) goes through
    `safe`, so a control character cannot rewrite the screen."""
    c, d = doc["conferences"], doc["duration_s"]
    failing = ", ".join(safe(a) for a in doc["auth_failing_accounts"])
    lines = [
        f"conference report {doc['since']} .. {doc['until']}",
        "",
        f"  started      {c['started']}",
        f"  ended        {c['ended']}",
        f"  first seen   {c['first_seen']}",
        f"  irregular    {c['irregular']}",
        f"  not found    {doc['not_found']}",
        f"  auth failed  {doc['auth_failures']}"
        + (f" (failing now: {failing})" if failing else ""),
        "",
        f"duration (n={d['count']})  p50 {_length(d['p50'])}  p95 {_length(d['p95'])}"
        f"  max {_length(d['max'])}",
        "",
        "end reasons",
    ]
    reasons = doc["end_reasons"] or {"(none)": 0}
    width = max(len(r) for r in reasons)
    lines += [f"  {safe(reason).ljust(width)}  {n}" for reason, n in reasons.items()]
    lines += ["", "longest"]
    if not doc["longest"]:
        lines.append("  (none)")
    for row in doc["longest"]:
        name = safe(row["friendly_name"] or "-")
        lines.append(
            f"  {row['sid']}  {_length(row['duration_s']).rjust(8)}  {name}"
            f"  ({safe(row['reason_conference_ended'] or 'unknown')})"
        )
    out = doc["deliveries_outstanding"]
    lines += [
        "",
        f"deliveries now: {out['pending']} pending, {out['failed']} failed, {out['dead']} dead",
    ]
    return "\n".join(lines)
