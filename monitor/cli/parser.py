"""Builds the argparse tree from the `Command` list.

Global options (`--config`, `--log-format`, `--log-level`) are accepted before
or after any command word. Each subparser declares them with
`default=SUPPRESS`: a subparser's namespace is copied over its parent's, so a
real default there would erase a value given before the command.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from monitor import __version__
from monitor.cli.base import Command

PROG = "conference-monitor"
DESCRIPTION = "Watch Twilio conferences; record and notify when they start and end."
TOP_EXAMPLES = (
    "conference-monitor demo",
    "conference-monitor --config /etc/conference-monitor/config.toml watch list",
    "conference-monitor events --since 1h --type conference.ended",
)
EPILOG_TAIL = (
    "Exit status: 0 success, 1 runtime failure (database, Twilio), 2 bad usage or "
    "bad configuration."
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, [], "")
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def epilog(examples: Sequence[str], tail: str = "") -> str:
    lines = ["examples:", *(f"  {e}" for e in examples)]
    return "\n".join(lines) + (f"\n\n{tail}" if tail else "")


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file (default: $CONFERENCE_MONITOR_CONFIG, else built-in "
        "defaults)",
        **default,
    )
    group.add_argument(
        "--log-format",
        choices=("plain", "json"),
        help="log line format (default: logging.format from the configuration, plain)",
        **default,
    )
    group.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="least severe level logged (default: logging.level from the configuration, INFO)",
        **default,
    )


def build_parser(
    commands: Sequence[Command], groups: Mapping[str, tuple[str, tuple[str, ...]]]
) -> argparse.ArgumentParser:
    """The whole command line. `groups` gives each command word that only holds
    others (`watch`, `db`) its help and examples; it prints its help when run alone."""
    root = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=epilog(TOP_EXAMPLES, EPILOG_TAIL),
        formatter_class=HelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_global_options(root, top=True)
    root.set_defaults(command=None, help_parser=root)
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): root}
    actions: dict[tuple[str, ...], Any] = {}
    by_words = {c.words: c for c in commands}
    for command in commands:
        for depth in range(1, len(command.words) + 1):
            words = command.words[:depth]
            if words not in parsers:
                spec = by_words.get(words)
                help_, examples = (spec.help, spec.examples) if spec else groups[" ".join(words)]
                parsers[words] = _subparser(parsers, actions, words, help_, examples, spec)
        command.arguments(parsers[command.words])
        parsers[command.words].set_defaults(command=command)
    return root


def _subparser(
    parsers: dict[tuple[str, ...], argparse.ArgumentParser],
    actions: dict[tuple[str, ...], Any],
    words: tuple[str, ...],
    help_: str,
    examples: tuple[str, ...],
    spec: Command | None,
) -> argparse.ArgumentParser:
    parent = words[:-1]
    if parent not in actions:
        title = "commands" if not parent else "actions"
        actions[parent] = parsers[parent].add_subparsers(title=title, metavar="COMMAND")
    parser: argparse.ArgumentParser = actions[parent].add_parser(
        words[-1],
        help=help_,
        description=(spec.description if spec and spec.description else help_),
        epilog=epilog(examples),
        formatter_class=HelpFormatter,
    )
    add_global_options(parser, top=False)
    parser.set_defaults(command=None, help_parser=parser)
    return parser
