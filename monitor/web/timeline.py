"""Pure geometry for the web view: a conference's phases drawn to scale, and day bars.

Times come from Twilio where it has them (`date_created` for the start,
`date_updated` of the snapshot that first showed a status), else from when the
monitor observed it, so the picture shows the conference, not the poll rhythm.
Positions are in thousandths of the drawing's width (an SVG viewBox of 1000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

WIDTH = 1000.0
MIN_WIDTH = 2.0  # a phase of a few seconds in a long axis still shows
COLOURS = {"init": "#e0a526", "in-progress": "#2f9e44", "completed": "#495057"}


@dataclass(frozen=True)
class Phases:
    """When the conference entered each status; None where it never did (or not yet)."""

    created: datetime | None
    started: datetime | None
    ended: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class Segment:
    status: str
    start: datetime
    end: datetime
    x: float
    width: float
    colour: str

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class Marker:
    x: float
    label: str
    at: datetime


def _entered(snapshots: Sequence[dict[str, Any]], status: str) -> datetime | None:
    for snap in snapshots:
        if snap.get("status") == status:
            return snap.get("date_updated") or snap.get("first_observed_at")
    return None


def phases(snapshots: Sequence[dict[str, Any]]) -> Phases:
    """Phase times from a conference's snapshots, oldest first."""
    if not snapshots:
        return Phases(None, None, None, None)
    first = snapshots[0]
    created = first.get("date_created") or first.get("first_observed_at")
    return Phases(
        created=created,
        started=_entered(snapshots, "in-progress"),
        ended=_entered(snapshots, "completed"),
        last_seen=max(s["last_observed_at"] for s in snapshots),
    )


def position(at: datetime, axis: tuple[datetime, datetime]) -> float:
    """Where `at` falls on the axis, 0..WIDTH."""
    return _x(at, axis[0], max((axis[1] - axis[0]).total_seconds(), 1e-3))


def _x(at: datetime, start: datetime, span_s: float) -> float:
    return max(0.0, min(WIDTH, (at - start).total_seconds() / span_s * WIDTH))


def segments(
    p: Phases, axis: tuple[datetime, datetime], running_until: datetime | None = None
) -> list[Segment]:
    """The init and in-progress bars, clipped to `axis`; a phase still running (no end
    yet) lasts until `running_until`, by default the end of the axis."""
    start, end = axis
    span_s = max((end - start).total_seconds(), 1e-3)
    if p.created is None:
        return []
    parts: list[tuple[str, datetime, datetime]] = []
    running_until = p.ended or min(running_until or end, end)
    init_end = p.started or running_until
    if p.started is None or p.started > p.created:
        parts.append(("init", p.created, max(init_end, p.created)))
    if p.started is not None:
        parts.append(("in-progress", p.started, max(running_until, p.started)))
    drawn = []
    for status, a, b in parts:
        if b < start or a > end:
            continue
        x, x_end = _x(a, start, span_s), _x(b, start, span_s)
        width = max(x_end - x, MIN_WIDTH)
        drawn.append(Segment(status, a, b, min(x, WIDTH - width), width, COLOURS[status]))
    return drawn


def axis_for(
    p: Phases, now: datetime, observed: Sequence[datetime] = ()
) -> tuple[datetime, datetime] | None:
    """From creation to the end (or now, while running), widened to the last observation."""
    if p.created is None:
        return None
    end = p.ended or now
    return p.created, max(end, p.created, *observed)


def markers(events: Sequence[dict[str, Any]], axis: tuple[datetime, datetime]) -> list[Marker]:
    """Where the monitor observed each event, on the same axis (ticks under the bars)."""
    start, end = axis
    span_s = max((end - start).total_seconds(), 1e-3)
    return [
        Marker(_x(e["occurred_at"], start, span_s), e["type"], e["occurred_at"])
        for e in events
        if start <= e["occurred_at"] <= end
    ]
