"""What every command shares: the `Command` record, exit codes, argument helpers.

A command is one `Command(...)` value: its words, handler, one-line help and
at least one example are required, so `--help` is never bare. The list that
makes them the command line is `monitor.cli.commands.COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from monitor.app import App
from monitor.config import Settings
from monitor.db.engine import require_current_schema
from monitor.domain import is_account_sid, is_conference_sid
from monitor.durations import parse_duration
from monitor.output import View, escape

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, Any, Mapping[str, str]], int]
# "none": no configuration at all; "lenient": the configuration, secrets optional
# (the command never talks to Twilio or a webhook); "full": every secret present.
SettingsNeed = Literal["none", "lenient", "full"]


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


def _no_arguments(_parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    """One command line action, e.g. `Command("watch add", ...)`."""

    name: str
    handler: Handler
    help: str
    examples: tuple[str, ...]
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    description: str = ""
    settings: SettingsNeed = "lenient"
    # Decides per invocation, e.g. `check --offline` needs no secrets.
    settings_for: Callable[[argparse.Namespace], SettingsNeed] | None = None

    def __post_init__(self) -> None:
        if not self.help or not self.examples:
            raise ValueError(f"command {self.name!r} needs help text and at least one example")

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())

    def needs(self, args: argparse.Namespace) -> SettingsNeed:
        return self.settings_for(args) if self.settings_for else self.settings


# -- argument helpers ---------------------------------------------------------------


def add_json(parser: argparse.ArgumentParser, what: str = "one JSON object per line") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what}, for scripts")


def add_table_options(parser: argparse.ArgumentParser) -> None:
    """--json, --wide and --local-time, for commands that print a table."""
    add_json(parser)
    parser.add_argument(
        "--wide",
        action="store_true",
        help="show every column in full instead of fitting the terminal width",
    )
    parser.add_argument(
        "--local-time",
        action="store_true",
        help="show times in this machine's time zone instead of UTC",
    )


def add_limit(parser: argparse.ArgumentParser, what: str, default: int = 100) -> None:
    parser.add_argument(
        "--limit", type=positive_int, default=default, metavar="N", help=f"show at most N {what}"
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def view_of(args: argparse.Namespace, environ: Mapping[str, str]) -> View:
    return View.for_stream(
        sys.stdout,
        wide=getattr(args, "wide", False),
        local_time=getattr(args, "local_time", False),
        environ=environ,
    )


# -- shared checks ------------------------------------------------------------------


def check_sids(sids: Sequence[str]) -> list[str]:
    """The SIDs, once each, in order; every malformed one named, nothing changed."""
    bad = [s for s in sids if not is_conference_sid(s)]
    if bad:
        raise UsageError(
            "malformed conference SID "
            + ", ".join(f"'{escape(s)}'" for s in bad)
            + " (expected CF followed by 32 hex digits); nothing was changed"
        )
    return list(dict.fromkeys(sids))


def account_for(args: argparse.Namespace, settings: Settings) -> str:
    account = getattr(args, "account", None) or settings.twilio.account_sid
    if not account:
        raise UsageError("no account SID: pass --account AC... or set TWILIO_ACCOUNT_SID")
    if not is_account_sid(account):
        raise UsageError(f"malformed account SID '{escape(account)}' (expected AC + 32 hex digits)")
    return str(account)


def parse_when(text: str | None, now: datetime) -> datetime | None:
    """An ISO-8601 time (UTC unless it says otherwise) or a duration ago (`15m`, `1w`)."""
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
            f"cannot read time '{escape(text)}': use ISO-8601 or a duration like 15m or 1w"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@contextmanager
def opened(settings: Settings) -> Iterator[App]:
    """The app for one command, on a schema that is current; closed afterwards."""
    app = App.open(settings)
    try:
        require_current_schema(app.engine)
        yield app
    finally:
        app.close()
