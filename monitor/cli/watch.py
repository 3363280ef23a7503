"""`watch add|remove|list`: which conference SIDs the daemon polls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

from monitor.cli.base import (
    EXIT_FAILURE,
    EXIT_OK,
    Command,
    UsageError,
    account_for,
    add_json,
    add_table_options,
    check_sids,
    opened,
    view_of,
)
from monitor.config import Settings
from monitor.db.store import AddResult
from monitor.domain import is_conference_sid
from monitor.output import Column, emit, escape, json_line

MAX_SID_FILE_BYTES = 64 * 1024 * 1024
MAX_LABEL_CHARS = 200  # watches.label is String(200)
PROGRESS_FROM = 5000  # SIDs; fewer are added before anyone would wonder
MAX_REPORTED = 1000  # malformed lines listed; the count says how many more


def read_sid_lines(name: str, stdin: BinaryIO | None = None) -> list[tuple[int, str]]:
    """(line number, text) for each SID line of FILE or `-` (stdin); `#` starts a comment."""
    where = "standard input" if name == "-" else f"file '{escape(name)}'"
    try:
        if name == "-":
            data = (stdin or sys.stdin.buffer).read(MAX_SID_FILE_BYTES + 1)
        else:
            with open(name, "rb") as handle:
                data = handle.read(MAX_SID_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror}") from None
    if len(data) > MAX_SID_FILE_BYTES:
        raise UsageError(f"{where} is larger than {MAX_SID_FILE_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if content:
            lines.append((number, content))
    return lines


def sids_from(args: argparse.Namespace, stdin: BinaryIO | None = None) -> list[str]:
    """The SIDs on the command line and in --from-file; every bad one reported, by line."""
    bad = [f"argument: '{escape(s)}'" for s in args.sids if not is_conference_sid(s)]
    sids = list(args.sids)
    if args.from_file is not None:
        label = "-" if args.from_file == "-" else escape(args.from_file)
        for number, text in read_sid_lines(args.from_file, stdin):
            if is_conference_sid(text):
                sids.append(text)
            else:
                bad.append(f"{label}:{number}: '{escape(text)}'")
    if bad:
        shown = bad[:MAX_REPORTED]
        more = f"\n  ... and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
        raise UsageError(
            f"{len(bad)} malformed conference SID(s) (expected CF followed by 32 hex digits); "
            "nothing was changed:\n  " + "\n  ".join(shown) + more
        )
    if not sids:
        raise UsageError("no SIDs given: name them as arguments or with --from-file")
    return list(dict.fromkeys(sids))


class Progress:
    """`written 12000/40000 SIDs` on a terminal's stderr, rewritten in place."""

    def __init__(self, total: int, err: TextIO) -> None:
        self.err = err
        self.active = total >= PROGRESS_FROM and err.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.active:
            end = "\n" if done >= total else ""
            print(f"\rwritten {done}/{total} SIDs", end=end, file=self.err, flush=True)


def cmd_watch_add(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    sids = sids_from(args)
    if args.label is not None and len(args.label) > MAX_LABEL_CHARS:
        raise UsageError(f"--label is longer than {MAX_LABEL_CHARS} characters")
    account = account_for(args, settings)
    with opened(settings) as app:
        result = app.store.add_many(
            sids,
            account,
            args.label or None,
            datetime.now(UTC),
            # With list sweeps, the next sweep observes new watches (thousands in a few
            # list calls); those it does not list are then fetched one by one.
            mode="list" if settings.polling.use_list else "fetch",
            relabel=args.label is not None,
            progress=Progress(len(sids), sys.stderr),
        )
    for sid in sids:
        outcome = _outcome(sid, result)
        if args.json:
            print(json_line({"sid": sid, "result": outcome}))
        else:
            print(f"{outcome.replace('_', ' ')} {sid}")
    return EXIT_OK


def _outcome(sid: str, result: AddResult) -> str:
    if sid in result.added:
        return "watching"
    return "relabelled" if sid in result.relabelled else "already_watched"


def cmd_watch_remove(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    sids = check_sids(args.sids)
    with opened(settings) as app:
        removed = set(app.store.remove_watches(sids))
    for sid in sids:
        outcome = "removed" if sid in removed else "not_watched"
        if args.json:
            print(json_line({"sid": sid, "result": outcome}))
        else:
            print(f"{outcome.replace('_', ' ')} {sid}")
    return EXIT_OK if len(removed) == len(sids) else EXIT_FAILURE


WATCH_COLUMNS = (
    Column("sid", min_width=34, keep=9),
    Column("status", min_width=9, keep=8),
    Column("last_status", min_width=11, keep=5),
    Column("label", min_width=8, keep=6),
    Column("last_polled_at", "last polled", min_width=20, keep=2),
    Column("next_poll_at", "next poll", min_width=20, keep=3),
    Column("last_error", min_width=10, keep=4),
    Column("account_sid", "account", wide_only=True),
    Column("created_at", "created", wide_only=True),
    Column("consecutive_errors", "errors", wide_only=True),
)


def watch_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A finished watch is never polled again: it has no next poll."""
    shown = dict(row)
    if shown.get("status") != "active":
        shown["next_poll_at"] = None
    return {k: v for k, v in shown.items() if k not in ("current_hash", "high_status")}


def cmd_watch_list(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with opened(settings) as app:
        rows = [watch_row(r) for r in app.store.list_watches(args.status)]
    emit(rows, WATCH_COLUMNS, as_json=args.json, empty="no watches", view=view_of(args, env))
    return EXIT_OK


def _sid_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "sids",
        nargs="+" if required else "*",
        metavar="SID",
        help="conference SID, CF followed by 32 hex digits",
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _sid_arguments(parser, required=False)
    parser.add_argument(
        "--from-file",
        metavar="FILE",
        help="also read SIDs from FILE, one a line ('-' for standard input; blank lines "
        "and '#' comments are skipped)",
    )
    parser.add_argument(
        "--label",
        metavar="TEXT",
        help="free text shown in listings; replaces the label of SIDs already watched "
        "('' clears it)",
    )
    parser.add_argument(
        "--account", metavar="AC...", help="account SID (default: twilio.account_sid)"
    )
    add_json(parser, "one JSON object per SID: its sid and result")


def _remove_arguments(parser: argparse.ArgumentParser) -> None:
    _sid_arguments(parser, required=True)
    add_json(parser, "one JSON object per SID: its sid and result")


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status",
        choices=("active", "completed", "not_found"),
        help="only watches in this state (default: all)",
    )
    add_table_options(parser)


COMMANDS = (
    Command(
        "watch add",
        cmd_watch_add,
        "start watching conference SIDs (or relabel watched ones)",
        (
            'conference-monitor watch add CF0123456789abcdef0123456789abcdef --label "bridge"',
            "conference-monitor watch add --from-file sids.txt",
            "some-command | conference-monitor watch add --from-file -",
        ),
        _add_arguments,
        description="Start watching conference SIDs. Every SID is checked first: one "
        "malformed SID (reported with its line number) means nothing is written.",
    ),
    Command(
        "watch remove",
        cmd_watch_remove,
        "stop watching SIDs (their history is kept)",
        ("conference-monitor watch remove CF0123456789abcdef0123456789abcdef",),
        _remove_arguments,
    ),
    Command(
        "watch list",
        cmd_watch_list,
        "watched SIDs, their last status, last and next poll, last error",
        (
            "conference-monitor watch list",
            "conference-monitor watch list --status active --json | jq -r .sid",
        ),
        _list_arguments,
    ),
)
