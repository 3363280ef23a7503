"""Every command of the command line, in the order `--help` lists them.

To add a command: write its handler and `Command(...)` (name, handler, help,
examples, arguments) next to related ones, and list it here. A word that only
holds other commands (`watch`, `db`) needs an entry in GROUPS.
"""

from __future__ import annotations

import argparse

from monitor.cli import admin, conferences, deliveries, notify, systemd_files, watch
from monitor.cli.base import Command
from monitor.cli.parser import build_parser

COMMANDS: tuple[Command, ...] = (
    *admin.COMMANDS[:1],  # run
    *watch.COMMANDS,
    *conferences.COMMANDS,
    *deliveries.COMMANDS,
    *notify.COMMANDS,
    *admin.COMMANDS[1:],  # db upgrade, check, simulate, demo, completion
    *systemd_files.COMMANDS,
)

# Words that hold other commands: (help, examples). Run alone, they print their help.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "watch": (
        "manage the watched conference SIDs",
        (
            "conference-monitor watch add CF0123456789abcdef0123456789abcdef",
            "conference-monitor watch list",
        ),
    ),
    "db": ("the database schema", ("conference-monitor db upgrade",)),
    "notify": ("try the notifiers", ("conference-monitor notify test",)),
    "systemd": (
        "the systemd unit and example files shipped with this package",
        ("sudo conference-monitor systemd install", "conference-monitor systemd unit"),
    ),
}


def parser() -> argparse.ArgumentParser:
    return build_parser(COMMANDS, GROUPS)
