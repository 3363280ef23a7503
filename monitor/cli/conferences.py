"""`poll`, `history` and `events`: what the conferences did, for people and scripts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.cli.base import (
    EXIT_FAILURE,
    EXIT_OK,
    Command,
    UsageError,
    account_for,
    add_json,
    add_limit,
    add_table_options,
    check_sids,
    opened,
    parse_when,
    view_of,
)
from monitor.config import Settings
from monitor.db import queries
from monitor.domain import EVENT_TYPES
from monitor.output import Column, emit, format_time, json_line, truncation_note

POLL_COLUMNS = (
    Column("sid", min_width=34, keep=9),
    Column("status", min_width=11, keep=8),
    Column("friendly_name", "name", min_width=8, keep=4),
    Column("reason_conference_ended", "end reason", min_width=10, keep=6),
    Column("events", min_width=21, keep=5),
    Column("error", min_width=10, keep=7),
    Column("call_sid_ending_conference", "ended by", wide_only=True),
)


def cmd_poll(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    sids = check_sids(args.sids)
    account = account_for(args, settings)
    with opened(settings) as app:
        report = app.with_poller().poll_sids(sids, account)
    seen = {c.sid: c for c in report.observed}
    events: dict[str, list[str]] = {}
    for event in report.result.events:
        events.setdefault(event.conference_sid or "", []).append(str(event.type))
    rows = []
    for sid in sids:
        c = seen.get(sid)
        rows.append(
            {
                "sid": sid,
                "status": c.status if c else None,
                "friendly_name": c.friendly_name if c else None,
                "reason_conference_ended": c.reason_conference_ended if c else None,
                "call_sid_ending_conference": c.call_sid_ending_conference if c else None,
                "events": events.get(sid, []),
                "error": report.errors.get(sid),
            }
        )
    emit(rows, POLL_COLUMNS, as_json=args.json, view=view_of(args, env))
    return EXIT_OK if not report.errors else EXIT_FAILURE


HISTORY_COLUMNS = (
    Column("at", min_width=20, keep=9),
    Column("kind", min_width=21, keep=8),
    Column("status", min_width=11, keep=7),
    Column("name", min_width=8, keep=5),
    Column("detail", min_width=20, keep=6),
)


def cmd_history(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    (sid,) = check_sids([args.sid])
    with opened(settings) as app:
        snaps = queries.snapshots(app.engine, sid)
        evts = queries.events(app.engine, sid=sid, limit=100_000, oldest_first=True)
    rows = [_snapshot_row(s, args.local_time) for s in snaps] + [_event_row(e) for e in evts]
    rows.sort(key=lambda r: (r["at"], 0 if r["kind"] == "snapshot" else 1))
    view = view_of(args, env)
    emit(rows, HISTORY_COLUMNS, as_json=args.json, empty=f"no history for {sid}", view=view)
    return EXIT_OK


def _snapshot_row(s: dict[str, Any], local_time: bool) -> dict[str, Any]:
    until = format_time(s["last_observed_at"], local_time)
    detail = f"seen {s['observation_count']}x until {until} via {s['detected_via']}"
    if s["reason_conference_ended"]:
        detail += f"; {s['reason_conference_ended']}"
    return {
        "at": s["first_observed_at"],
        "kind": "snapshot",
        "status": s["status"],
        "name": s["friendly_name"],
        "detail": detail,
        **{
            k: s[k]
            for k in (
                "id",
                "observation_count",
                "last_observed_at",
                "friendly_name",
                "reason_conference_ended",
                "call_sid_ending_conference",
            )
        },
        "raw": json.loads(s["raw_json"]),
    }


def _event_row(e: dict[str, Any]) -> dict[str, Any]:
    detail = f"{e['from_status'] or '(none)'} -> {e['to_status'] or '(none)'}"
    if e["skipped"]:
        detail += f" (skipped {e['skipped']})"
    if e["reason_conference_ended"]:
        detail += f"; {e['reason_conference_ended']}"
    if e["call_sid_ending_conference"]:
        detail += f" by {e['call_sid_ending_conference']}"
    data = json.loads(e["body"]).get("data", {})
    return {
        "at": e["occurred_at"],
        "kind": e["type"],
        "status": e["to_status"],
        "name": data.get("friendly_name"),
        "detail": detail,
        "event_id": e["id"],
        "data": data,
    }


EVENT_COLUMNS = (
    Column("at", min_width=20, keep=9),
    Column("type", min_width=21, keep=8),
    Column("sid", min_width=34, keep=7),
    Column("name", min_width=8, keep=5),
    Column("label", min_width=8, keep=4),
    Column("detail", min_width=20, keep=6),
    Column("event_id", "event id", wide_only=True),
)


def cmd_events(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    if args.sid:
        check_sids([args.sid])
    now = datetime.now(UTC)
    filters: dict[str, Any] = {
        "since": parse_when(args.since, now),
        "until": parse_when(args.until, now),
        "types": args.types,
        "sid": args.sid,
    }
    with opened(settings) as app:
        rows = queries.events(app.engine, limit=args.limit, **filters)
        total = queries.count_events(app.engine, **filters) if len(rows) >= args.limit else 0
        labels = queries.labels(app.engine, [r["conference_sid"] or "" for r in rows])
    if args.json:
        for row in rows:
            print(json_line({"id": row["id"], **json.loads(row["body"])}))
    else:
        shown = [
            {
                **_event_row(r),
                "sid": r["conference_sid"],
                "type": r["type"],
                "label": labels.get(r["conference_sid"]),
            }
            for r in rows
        ]
        emit(shown, EVENT_COLUMNS, as_json=False, empty="no events", view=view_of(args, env))
    truncation_note(len(rows), total, "events")
    return EXIT_OK


def _poll_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sids", nargs="+", metavar="SID", help="conference SID to fetch")
    parser.add_argument(
        "--account", metavar="AC...", help="account SID (default: twilio.account_sid)"
    )
    add_table_options(parser)


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sid", metavar="SID", help="conference SID")
    add_table_options(parser)


def _events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        metavar="T",
        help="only events at or after T: ISO-8601, or a duration ago such as 15m, 2d or 1w",
    )
    parser.add_argument("--until", metavar="T", help="only events at or before T (like --since)")
    parser.add_argument(
        "--type",
        action="append",
        dest="types",
        metavar="TYPE",
        choices=EVENT_TYPES,
        help="only this event type; repeat for several (one of: %(choices)s)",
    )
    parser.add_argument("--sid", metavar="SID", help="only this conference")
    add_limit(parser, "events, newest first")
    add_table_options(parser)


def cmd_report(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    from monitor import report

    now = datetime.now(UTC)
    since, until = parse_when(args.since, now), parse_when(args.until, now) or now
    if since is None or since >= until:
        raise UsageError("--since must be earlier than --until")
    with opened(settings) as app:
        doc = report.summary(app.engine, since, until)
    print(json.dumps(doc, separators=(",", ":")) if args.json else report.render(doc))
    return EXIT_OK


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", default="7d", help="ISO-8601 time or a duration ago (default: %(default)s)"
    )
    parser.add_argument("--until", help="ISO-8601 time or a duration ago (default: now)")
    add_json(parser, "the report as one JSON object")


COMMANDS = (
    Command(
        "poll",
        cmd_poll,
        "fetch conferences from Twilio now, record and print them (no daemon needed)",
        ("conference-monitor poll CF0123456789abcdef0123456789abcdef",),
        _poll_arguments,
        settings="full",
    ),
    Command(
        "history",
        cmd_history,
        "a conference's snapshots and transitions, oldest first",
        (
            "conference-monitor history CF0123456789abcdef0123456789abcdef",
            "conference-monitor history CF0123456789abcdef0123456789abcdef --json | jq .raw",
        ),
        _history_arguments,
    ),
    Command(
        "events",
        cmd_events,
        "transitions across conferences, newest first",
        (
            "conference-monitor events --since 1h",
            "conference-monitor events --type conference.ended --since 1w --json",
        ),
        _events_arguments,
        description="Transitions across conferences, newest first. With --json, each "
        "line is the event's notification document with its id.",
    ),
    Command(
        "report",
        cmd_report,
        "starts, ends, end reasons, durations and failures over a window",
        ("conference-monitor report", "conference-monitor report --since 30d --json"),
        _report_arguments,
        description="Conferences started and ended, the end reasons, duration p50/p95/max, "
        "the longest conferences, not-found and auth failures; the same numbers as "
        "/api/v1/summary.",
    ),
)
