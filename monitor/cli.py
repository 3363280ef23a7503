"""The command line: parse, call one service function, print. Exit 0 / 1 / 2.

0 is success, 1 a runtime failure (database, Twilio), 2 bad usage or bad
configuration. Listings print aligned columns, or one JSON object a line with
`--json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor import __version__, logs
from monitor.app import App, MissingCredentials, effective_notifiers
from monitor.config import ConfigError, Settings, load_settings
from monitor.db import queries
from monitor.db.engine import SchemaBehind, require_current_schema, upgrade
from monitor.db.outbox import STATUSES
from monitor.domain import EVENT_TYPES, is_conference_sid
from monitor.durations import parse_duration
from monitor.output import emit, jsonable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.handler in (cmd_simulate, cmd_demo):
            logs.configure(args.log_format or "plain", args.log_level or "INFO")
            return int(args.handler(args, None, environ))
        settings = load_settings(args.config, environ)
        logs.configure(
            args.log_format or settings.logging.format, args.log_level or settings.logging.level
        )
        return int(args.handler(args, settings, environ))
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SchemaBehind, MissingCredentials) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a runtime failure: say what, not a traceback
        logging.getLogger("monitor").debug("command failed", exc_info=True)
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


# -- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (or CONFERENCE_MONITOR_CONFIG)")
    common.add_argument("--log-format", choices=("plain", "json"))
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    parser = argparse.ArgumentParser(
        prog="conference-monitor",
        description="Watch Twilio conferences; record and notify when they start and end.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, handler: Callable[..., int], help_: str, *parents: Any) -> Any:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common, *parents])
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the daemon in the foreground (systemd Type=notify aware)")
    _add_watch(sub, common, listing)
    p = add("poll", cmd_poll, "fetch conferences now, record and print them", listing)
    p.add_argument("sids", nargs="+", metavar="SID")
    p.add_argument("--account", help="account SID (default: twilio.account_sid)")
    p = add(
        "history", cmd_history, "a conference's snapshots and transitions, oldest first", listing
    )
    p.add_argument("sid", metavar="SID")
    p = add("events", cmd_events, "transitions across conferences, newest first", listing)
    p.add_argument("--since", help="ISO-8601 time, or a duration ago such as 15m or 2d")
    p.add_argument("--until", help="ISO-8601 time, or a duration ago")
    p.add_argument("--type", action="append", dest="types", metavar="TYPE", help="repeatable")
    p.add_argument("--sid", help="only this conference")
    p.add_argument("--limit", type=int, default=100)
    _add_deliveries(sub, common, listing)
    p = add("report", cmd_report, "starts, ends, end reasons and durations over a window", listing)
    p.add_argument("--since", default="7d", help="ISO-8601 time or a duration ago (default 7d)")
    p.add_argument("--until", help="ISO-8601 time or a duration ago (default now)")
    db = sub.add_parser("db", help="database schema").add_subparsers(metavar="ACTION")
    p = db.add_parser("upgrade", help="apply Alembic migrations", parents=[common])
    p.set_defaults(handler=cmd_db_upgrade)
    add("check", cmd_check, "validate config, reach the database, verify Twilio credentials")
    p = add("simulate", cmd_simulate, "serve the Twilio conference API simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--account-sid", default=None, help="account SID the simulator accepts")
    p.add_argument("--auth-token", default=None, help="auth token the simulator accepts")
    p = add("demo", cmd_demo, "the whole pipeline on this machine, no Twilio account needed")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser


def _add_watch(sub: Any, common: Any, listing: Any) -> None:
    watch = sub.add_parser("watch", help="manage watched conference SIDs")
    actions = watch.add_subparsers(metavar="ACTION")
    p = actions.add_parser("add", help="watch SIDs", parents=[common])
    p.add_argument("sids", nargs="+", metavar="SID")
    p.add_argument("--label", help="free text shown in listings")
    p.add_argument("--account", help="account SID (default: twilio.account_sid)")
    p.set_defaults(handler=cmd_watch_add)
    p = actions.add_parser("remove", help="stop watching SIDs (history is kept)", parents=[common])
    p.add_argument("sids", nargs="+", metavar="SID")
    p.set_defaults(handler=cmd_watch_remove)
    p = actions.add_parser("list", help="watched SIDs", parents=[common, listing])
    p.add_argument("--status", choices=("active", "completed", "not_found"))
    p.set_defaults(handler=cmd_watch_list)


def _add_deliveries(sub: Any, common: Any, listing: Any) -> None:
    p = sub.add_parser("deliveries", help="the notification outbox", parents=[common, listing])
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--notifier")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(handler=cmd_deliveries)
    actions = p.add_subparsers(metavar="ACTION")
    r = actions.add_parser("retry", help="queue failed or dead deliveries again", parents=[common])
    r.add_argument("ids", nargs="+", type=int, metavar="ID")
    r.set_defaults(handler=cmd_deliveries_retry)
    s = actions.add_parser("show", help="body and every attempt", parents=[common, listing])
    s.add_argument("id", type=int, metavar="ID")
    s.set_defaults(handler=cmd_deliveries_show)


# -- helpers ---------------------------------------------------------------------------


def check_sids(sids: Sequence[str]) -> list[str]:
    bad = [s for s in sids if not is_conference_sid(s)]
    if bad:
        raise UsageError(
            "malformed conference SID "
            + ", ".join(repr(s) for s in bad)
            + " (expected CF followed by 32 hex digits); nothing was changed"
        )
    return list(dict.fromkeys(sids))


def account_for(args: argparse.Namespace, settings: Settings) -> str:
    from monitor.domain import is_account_sid

    account = getattr(args, "account", None) or settings.twilio.account_sid
    if not account:
        raise UsageError("no account SID: pass --account AC... or set TWILIO_ACCOUNT_SID")
    if not is_account_sid(account):
        raise UsageError(f"malformed account SID {account!r} (expected AC + 32 hex digits)")
    return account


@contextmanager
def opened(settings: Settings) -> Iterator[App]:
    """The app for one command, on a schema that is current; closed afterwards."""
    app = App.open(settings)
    try:
        require_current_schema(app.engine)
        yield app
    finally:
        app.close()


def parse_when(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"cannot read time {text!r}: use ISO-8601 or a duration like 15m"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- commands --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from monitor.daemon import run_daemon

    return run_daemon(settings, args.config or environ.get("CONFERENCE_MONITOR_CONFIG"), environ)


def cmd_watch_add(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    sids = check_sids(args.sids)
    account = account_for(args, settings)
    with opened(settings) as app:
        added = app.store.add_watches(sids, account, args.label, datetime.now(UTC))
    for sid in sids:
        print(f"{'watching' if sid in added else 'already watched'} {sid}")
    return EXIT_OK


def cmd_watch_remove(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    sids = check_sids(args.sids)
    with opened(settings) as app:
        removed = app.store.remove_watches(sids)
    for sid in sids:
        print(f"{'removed' if sid in removed else 'not watched'} {sid}")
    return EXIT_OK if len(removed) == len(sids) else EXIT_FAILURE


WATCH_COLUMNS = (
    "sid",
    "status",
    "last_status",
    "label",
    "last_polled_at",
    "next_poll_at",
    "last_error",
)


def cmd_watch_list(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    with opened(settings) as app:
        rows = app.store.list_watches(args.status)
    emit(rows, WATCH_COLUMNS, as_json=args.json, empty="no watches")
    return EXIT_OK


def cmd_poll(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    sids = check_sids(args.sids)
    account = account_for(args, settings)
    with opened(settings) as app:
        report = app.with_poller().poll_sids(sids, account)
    seen = {c.sid: c for c in report.observed}
    events: dict[str, list[str]] = {}
    for event in report.result.events:
        events.setdefault(event.conference_sid or "", []).append(event.type)
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
    emit(
        rows,
        ("sid", "status", "friendly_name", "reason_conference_ended", "events", "error"),
        as_json=args.json,
    )
    return EXIT_OK if not report.errors else EXIT_FAILURE


def cmd_history(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    (sid,) = check_sids([args.sid])
    with opened(settings) as app:
        snaps = queries.snapshots(app.engine, sid)
        evts = queries.events(app.engine, sid=sid, limit=100_000, oldest_first=True)
    rows = [_snapshot_row(s) for s in snaps] + [_event_row(e) for e in evts]
    rows.sort(key=lambda r: (r["at"], 0 if r["kind"] == "snapshot" else 1))
    emit(rows, ("at", "kind", "status", "detail"), as_json=args.json, empty=f"no history for {sid}")
    return EXIT_OK


def _snapshot_row(s: dict[str, Any]) -> dict[str, Any]:
    until = f"{s['last_observed_at']:%H:%M:%S}"
    detail = f"seen {s['observation_count']}x until {until} via {s['detected_via']}"
    if s["reason_conference_ended"]:
        detail += f"; {s['reason_conference_ended']}"
    return {
        "at": s["first_observed_at"],
        "kind": "snapshot",
        "status": s["status"],
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
    detail = f"{e['from_status'] or '(none)'} -> {e['to_status']}"
    if e["skipped"]:
        detail += f" (skipped {e['skipped']})"
    if e["reason_conference_ended"]:
        detail += f"; {e['reason_conference_ended']}"
    if e["call_sid_ending_conference"]:
        detail += f" by {e['call_sid_ending_conference']}"
    return {
        "at": e["occurred_at"],
        "kind": e["type"],
        "status": e["to_status"],
        "detail": detail,
        "event_id": e["id"],
        "data": json.loads(e["body"])["data"],
    }


def cmd_events(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    bad = [t for t in args.types or [] if t not in EVENT_TYPES]
    if bad:
        raise UsageError(f"unknown event type {', '.join(bad)}; known: {', '.join(EVENT_TYPES)}")
    if args.sid:
        check_sids([args.sid])
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    now = datetime.now(UTC)
    with opened(settings) as app:
        rows = queries.events(
            app.engine,
            since=parse_when(args.since, now),
            until=parse_when(args.until, now),
            types=args.types,
            sid=args.sid,
            limit=args.limit,
        )
    if args.json:
        for row in rows:
            doc = json.loads(row["body"])
            print(json.dumps({"id": row["id"], **doc}, separators=(",", ":")))
        return EXIT_OK
    shown = [{**_event_row(r), "sid": r["conference_sid"], "type": r["type"]} for r in rows]
    emit(shown, ("at", "type", "sid", "detail", "event_id"), as_json=False, empty="no events")
    return EXIT_OK


DELIVERY_COLUMNS = (
    "id",
    "status",
    "notifier",
    "event_type",
    "conference_sid",
    "attempts",
    "next_attempt_at",
    "last_status_code",
    "last_error",
)


def cmd_deliveries(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    with opened(settings) as app:
        rows = app.outbox.listing(args.status, args.notifier, args.limit)
        disabled = app.outbox.disabled_notifiers()
    configured = {n.name for n in effective_notifiers(settings)}
    for row in rows:
        if row["status"] != "pending":
            continue
        if row["notifier"] in disabled:
            row["last_error"] = f"notifier disabled: {disabled[row['notifier']]}"
        elif row["notifier"] not in configured:
            row["last_error"] = "notifier not in the configuration: waiting for it to return"
    emit(rows, DELIVERY_COLUMNS, as_json=args.json, empty="no deliveries")
    return EXIT_OK


def cmd_deliveries_retry(
    args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]
) -> int:
    with opened(settings) as app:
        requeued = app.outbox.retry(args.ids, datetime.now(UTC))
    for delivery_id in args.ids:
        state = "queued again" if delivery_id in requeued else "not failed or dead (unchanged)"
        print(f"delivery {delivery_id}: {state}")
    return EXIT_OK if len(requeued) == len(set(args.ids)) else EXIT_FAILURE


def cmd_deliveries_show(
    args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]
) -> int:
    with opened(settings) as app:
        shown = app.outbox.show(args.id)
    if shown is None:
        print(f"error: no delivery with id {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(jsonable(shown), separators=(",", ":")))
        return EXIT_OK
    for key in (
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
        "last_error",
    ):
        print(f"{key:16} {shown.get(key) if shown.get(key) is not None else '-'}")
    print("body:")
    print(shown["body"])
    print("attempts:")
    emit(
        shown["attempt_log"],
        ("attempted_at", "status_code", "duration_ms", "error"),
        as_json=False,
        empty="  (none yet)",
    )
    return EXIT_OK


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


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    app = App.open(settings)
    try:
        before, after = upgrade(app.engine)
    finally:
        app.close()
    where = settings.database.safe_url
    if before == after:
        print(f"database {where} is up to date (revision {after})")
    else:
        print(f"database {where} upgraded from {before or 'empty'} to {after}")
    return EXIT_OK


def cmd_check(_args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    from monitor.check import run_checks

    return run_checks(settings)


def cmd_simulate(args: argparse.Namespace, _settings: None, environ: Mapping[str, str]) -> int:
    from monitor.simulator.server import serve_forever

    kwargs: dict[str, Any] = {}
    if args.account_sid:
        kwargs["account_sid"] = args.account_sid
    if args.auth_token:
        kwargs["auth_token"] = args.auth_token
    serve_forever(args.host, args.port, **kwargs)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, _settings: None, environ: Mapping[str, str]) -> int:
    from monitor.demo import run_demo

    return run_demo(keep=args.keep)
