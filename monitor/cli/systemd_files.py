"""`systemd unit|config|env|install`: the shipped unit and examples, fitted to this install.

The files travel inside the package (`monitor.systemd`), so a pip or pipx
install has them. The unit's `ExecStartPre=`/`ExecStart=` are rewritten to the
console script of the installation that prints them, so they always match.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from monitor.cli.base import EXIT_OK, Command, UsageError
from monitor.output import escape

UNIT_NAME = "conference-monitor.service"
SHIPPED_SCRIPT = "/opt/conference-monitor/bin/conference-monitor"
FILES = {
    "unit": UNIT_NAME,
    "config": "config.example.toml",
    "env": "conference-monitor.env.example",
}
# Where `install` puts each file under --root, its mode, and whether it may be replaced
# without --force (the unit is ours: local changes belong in a drop-in).
TARGETS = (
    ("unit", "etc/systemd/system/" + UNIT_NAME, 0o644, True),
    ("config", "etc/conference-monitor/config.toml", 0o644, False),
    ("env", "etc/conference-monitor/env", 0o600, False),
)
CREDENTIALS_DIR = "etc/conference-monitor/credentials"
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+@:-]+")
HIDDEN_BY_PROTECT_HOME = ("/home/", "/root/", "/run/user/")


def shipped(kind: str) -> str:
    return (resources.files("monitor.systemd") / FILES[kind]).read_text(encoding="utf-8")


def this_script() -> str:
    """The console script of this installation (venv, pipx), else `python -m monitor`,
    as the start of an Exec line."""
    beside = Path(sys.executable).parent / "conference-monitor"
    if beside.is_file() and os.access(beside, os.X_OK):
        return unit_quote(str(beside))
    found = shutil.which("conference-monitor")
    if found:
        return unit_quote(str(Path(found).absolute()))
    return f"{unit_quote(sys.executable)} -m monitor"


def script_for(args: argparse.Namespace) -> str:
    script = unit_quote(args.exec) if args.exec else this_script()
    if script.lstrip('"').startswith(HIDDEN_BY_PROTECT_HOME):
        print(
            f"warning: {escape(script)} is under a home directory, which the unit's "
            "ProtectHome=yes hides from the service; install into /opt/conference-monitor "
            "instead (see README)",
            file=sys.stderr,
        )
    return script


def unit_quote(path: str) -> str:
    """A path as one word of an Exec*= line (systemd.service(5) quoting and specifiers)."""
    if _PLAIN_PATH.fullmatch(path):
        return path
    quoted = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{quoted}"'


def unit_text(script: str) -> str:
    """The shipped unit with its Exec lines starting `script` instead of the default path."""
    text = shipped("unit")
    if SHIPPED_SCRIPT not in text:
        raise RuntimeError(f"the shipped unit does not mention {SHIPPED_SCRIPT}")
    return text.replace(SHIPPED_SCRIPT, script)


def cmd_print(args: argparse.Namespace, _settings: None, _env: Mapping[str, str]) -> int:
    if args.kind == "unit":
        print(unit_text(script_for(args)), end="")
    else:
        print(shipped(args.kind), end="")
    return EXIT_OK


def write_file(path: Path, text: str, mode: int) -> None:
    """Written whole or not at all, with its mode from the start (the env file is 0600)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def install(root: Path, script: str, force: bool) -> list[str]:
    """Put the unit and examples under `root`; returns one line per file saying what happened."""
    report = []
    for kind, relative, mode, replaceable in TARGETS:
        path = root / relative
        text = unit_text(script) if kind == "unit" else shipped(kind)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            report.append(f"unchanged {path}")
        elif path.exists() and not (replaceable or force):
            report.append(f"kept      {path} (it exists; --force replaces it)")
        else:
            verb = "replaced " if path.exists() else "wrote    "
            write_file(path, text, mode)
            report.append(f"{verb} {path}")
    credentials = root / CREDENTIALS_DIR
    credentials.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(credentials, 0o700)
    report.append(f"folder    {credentials} (mode 0700: one file per secret)")
    return report


NEXT_STEPS = """
next steps:
  1. set [twilio] account_sid in {etc}/config.toml
  2. put the auth token in {etc}/credentials/TWILIO_AUTH_TOKEN (mode 0600)
  3. systemctl daemon-reload && systemctl enable --now conference-monitor
"""


def cmd_install(args: argparse.Namespace, _settings: None, _env: Mapping[str, str]) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root {escape(args.root)} is not a folder")
    script = script_for(args)
    try:
        report = install(root, script, args.force)
    except OSError as exc:
        raise UsageError(
            f"cannot write under {escape(str(root))}: {exc.strerror} (run it as root?)"
        ) from None
    for line in report:
        print(escape(line))
    etc = escape(str(root / "etc/conference-monitor"))
    print(NEXT_STEPS.format(etc=etc), end="")
    return EXIT_OK


def _exec_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exec",
        metavar="PATH",
        help="the conference-monitor executable the unit runs (default: this installation's)",
    )


def _print_arguments(kind: str) -> Callable[[argparse.ArgumentParser], None]:
    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(kind=kind)
        if kind == "unit":
            _exec_argument(parser)

    return arguments


def _install_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="install below DIR instead of / (for packaging and tests)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing config.toml and env (the unit is always updated)",
    )
    _exec_argument(parser)


COMMANDS = (
    Command(
        "systemd unit",
        cmd_print,
        "print the systemd unit, its ExecStart= pointing at this installation",
        ("conference-monitor systemd unit > /etc/systemd/system/conference-monitor.service",),
        _print_arguments("unit"),
        settings="none",
    ),
    Command(
        "systemd config",
        cmd_print,
        "print the example configuration file",
        ("conference-monitor systemd config > config.toml",),
        _print_arguments("config"),
        settings="none",
    ),
    Command(
        "systemd env",
        cmd_print,
        "print the example environment file (read by the unit's EnvironmentFile=)",
        ("conference-monitor systemd env",),
        _print_arguments("env"),
        settings="none",
    ),
    Command(
        "systemd install",
        cmd_install,
        "install the unit, /etc/conference-monitor/{config.toml,env} and the credentials folder",
        (
            "sudo /opt/conference-monitor/bin/conference-monitor systemd install",
            "conference-monitor systemd install --root pkgroot --exec /usr/bin/conference-monitor",
        ),
        _install_arguments,
        description="Install the unit into /etc/systemd/system (always brought up to date), "
        "the example config.toml and env into /etc/conference-monitor (kept if they exist, "
        "unless --force), and the credentials folder (mode 0700). Nothing is started.",
        settings="none",
    ),
)
