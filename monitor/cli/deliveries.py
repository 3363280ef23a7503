"""`deliveries`, `deliveries show`, `deliveries retry`: the notification outbox."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.app import effective_notifiers
from monitor.cli.base import (
    EXIT_FAILURE,
    EXIT_OK,
    Command,
    add_json,
    add_limit,
    add_table_options,
    opened,
    positive_int,
    view_of,
)
from monitor.config import Settings
from monitor.db import queries
from monitor.db.outbox import STATUSES
from monitor.notify.status import NOTIFIER_COLUMNS, annotate_pending, notifier_rows
from monitor.output import Column, cell, emit, escape, json_line, truncation_note

DELIVERY_COLUMNS = (
    Column("id", min_width=2, keep=9),
    Column("status", min_width=9, keep=8),
    Column("notifier", min_width=8, keep=7),
    Column("event_type", "event", min_width=21, keep=6),
    Column("conference_sid", "sid", min_width=34, keep=5),
    Column("attempts", "tries", min_width=5, keep=2),
    Column("next_attempt_at", "next attempt", min_width=20, keep=3),
    Column("last_status_code", "http", min_width=4, keep=2),
    Column("last_error", min_width=10, keep=4),
    Column("event_id", "event id", wide_only=True),
    Column("created_at", "queued", wide_only=True),
    Column("delivered_at", "delivered", wide_only=True),
)


def delivery_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Only a pending row has a next attempt."""
    shown = {k: v for k, v in row.items() if k not in ("lease_owner", "lease_until")}
    if shown["status"] != "pending":
        shown["next_attempt_at"] = None
    return shown


def cmd_deliveries(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with opened(settings) as app:
        rows = app.outbox.listing(args.status, args.notifier, args.limit)
        total = (
            queries.count_deliveries(app.engine, args.status, args.notifier)
            if len(rows) >= args.limit
            else 0
        )
        states = app.outbox.notifier_states()
    configured = {n.name for n in effective_notifiers(settings)}
    shown = [delivery_row(r) for r in rows]
    annotate_pending(shown, states, configured, datetime.now(UTC))  # why one is not moving
    view = view_of(args, env)
    emit(shown, DELIVERY_COLUMNS, as_json=args.json, empty="no deliveries", view=view)
    truncation_note(len(rows), total, "deliveries")
    return EXIT_OK


def cmd_deliveries_notifiers(
    args: argparse.Namespace, settings: Settings, env: Mapping[str, str]
) -> int:
    with opened(settings) as app:
        states = app.outbox.notifier_states()
    rows = notifier_rows(settings, states, datetime.now(UTC))
    emit(rows, NOTIFIER_COLUMNS, as_json=args.json, empty="no notifiers", view=view_of(args, env))
    return EXIT_OK


def cmd_deliveries_retry(
    args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]
) -> int:
    ids = list(dict.fromkeys(args.ids))
    with opened(settings) as app:
        requeued = set(app.outbox.retry(ids, datetime.now(UTC)))
    for delivery_id in ids:
        outcome = "queued" if delivery_id in requeued else "unchanged"
        if args.json:
            print(json_line({"id": delivery_id, "result": outcome}))
        elif outcome == "queued":
            print(f"delivery {delivery_id}: queued again")
        else:
            print(f"delivery {delivery_id}: not failed or dead (unchanged)")
    return EXIT_OK if len(requeued) == len(ids) else EXIT_FAILURE


SHOWN_FIELDS = (
    "id",
    "status",
    "notifier",
    "event_id",
    "event_type",
    "conference_sid",
    "attempts",
    "created_at",
    "next_attempt_at",
    "delivered_at",
    "last_status_code",
    "last_error",
)
ATTEMPT_COLUMNS = (
    Column("attempted_at", "attempted", min_width=20, keep=9),
    Column("status_code", "http", min_width=4, keep=8),
    Column("duration_ms", "ms", min_width=4, keep=6),
    Column("error", min_width=10, keep=7),
)


def cmd_deliveries_show(
    args: argparse.Namespace, settings: Settings, env: Mapping[str, str]
) -> int:
    with opened(settings) as app:
        shown = app.outbox.show(args.id)
    if shown is None:
        print(f"error: no delivery with id {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    sent = shown.pop("body")
    shown = {k: v for k, v in shown.items() if k not in ("lease_owner", "lease_until")}
    if args.json:
        print(json_line({**shown, "body": _body(sent)}))
        return EXIT_OK
    view = view_of(args, env)
    for key in SHOWN_FIELDS:
        print(f"{key:16} {cell(shown.get(key), view.local_time)}")
    print("body (exactly as sent):")
    print(escape(sent))  # JSON escapes C0 controls, not C1 or bidirectional ones
    print("attempts:")
    emit(shown["attempt_log"], ATTEMPT_COLUMNS, as_json=False, empty="  (none yet)", view=view)
    return EXIT_OK


def _body(text: str) -> Any:
    """The body as sent, parsed; kept as a string only if it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=STATUSES, help="only rows in this state (default: all)")
    parser.add_argument("--notifier", metavar="NAME", help="only rows for this notifier")
    add_limit(parser, "deliveries, newest first")
    add_table_options(parser)


def _retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", type=positive_int, metavar="ID", help="delivery id")
    add_json(parser, "one JSON object per id: its id and result (queued or unchanged)")


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=positive_int, metavar="ID", help="delivery id")
    add_table_options(parser)


COMMANDS = (
    Command(
        "deliveries",
        cmd_deliveries,
        "the notification outbox: what was sent where, what is pending or failed",
        (
            "conference-monitor deliveries --status failed",
            "conference-monitor deliveries --notifier oncall --json",
        ),
        _list_arguments,
    ),
    Command(
        "deliveries show",
        cmd_deliveries_show,
        "one delivery: the exact body sent and every attempt",
        ("conference-monitor deliveries show 42", "conference-monitor deliveries show 42 --json"),
        _show_arguments,
    ),
    Command(
        "deliveries notifiers",
        cmd_deliveries_notifiers,
        "each notifier's state (ok, paused, open, probing, disabled) and thresholds",
        (
            "conference-monitor deliveries notifiers",
            "conference-monitor deliveries notifiers --json",
        ),
        add_table_options,
    ),
    Command(
        "deliveries retry",
        cmd_deliveries_retry,
        "queue failed or dead deliveries again with a fresh retry window",
        ("conference-monitor deliveries retry 42 43",),
        _retry_arguments,
        description="Queue failed or dead deliveries again with a fresh retry window, and "
        "re-enable a notifier that a 410 Gone disabled.",
    ),
)
