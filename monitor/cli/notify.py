"""`notify test`: a marked sample event through each real notifier."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from monitor.cli.base import Command, UsageError, add_json
from monitor.config import Settings


def cmd_notify_test(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    from monitor.notify.testsend import run_notify_test

    try:
        return run_notify_test(settings, args.notifier, as_json=args.json)
    except LookupError as exc:
        raise UsageError(str(exc)) from None


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--notifier",
        action="append",
        metavar="NAME",
        help="only this notifier (repeatable; default: every configured one)",
    )
    add_json(parser, "one JSON object per notifier: its outcome")


COMMANDS = (
    Command(
        "notify test",
        cmd_notify_test,
        "send a clearly marked sample conference.ended through each notifier; exit 1 if any fails",
        ("conference-monitor notify test", "conference-monitor notify test --notifier oncall"),
        _arguments,
        settings="full",
    ),
)
