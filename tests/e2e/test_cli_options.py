"""Global options in any position, help for everything, shell completion.

Every command is taken from the registry, so a command added later is
covered without editing this file.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.cli.base import Command
from monitor.cli.commands import COMMANDS, GROUPS, parser
from tests.e2e.harness import cli

GOOD = "CF" + "a" * 32
MISSING = "/nonexistent/conference-monitor-test.toml"


def subparser(root: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser:
    current = root
    for word in words:
        (action,) = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        current = action.choices[word]
    return current


def sample_arguments(p: argparse.ArgumentParser) -> list[str]:
    """A valid value for each required positional argument."""
    values = []
    for action in p._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.nargs in ("*", "?"):
            continue
        if action.choices:
            values.append(str(next(iter(action.choices))))
        else:
            values.append({"SID": GOOD, "ID": "1"}.get(str(action.metavar), "x"))
    return values


def positions(command: Command, options: list[str]) -> Iterator[list[str]]:
    """The options before the command, between its words, and after its arguments."""
    words = list(command.words)
    rest = sample_arguments(subparser(parser(), command.words))
    for cut in range(len(words) + 1):
        yield [*words[:cut], *options, *words[cut:], *rest]
    yield [*words, *rest, *options]


ALL = [pytest.param(c, id=c.name) for c in COMMANDS]
WITH_SETTINGS = [pytest.param(c, id=c.name) for c in COMMANDS if c.settings != "none"]


@pytest.mark.parametrize("command", ALL)
def test_global_options_parse_in_every_position(command: Command) -> None:
    options = ["--config", "x.toml", "--log-level", "DEBUG", "--log-format", "json"]
    for argv in positions(command, options):
        args = parser().parse_args(argv)
        assert args.command is command, argv
        assert (args.config, args.log_level, args.log_format) == ("x.toml", "DEBUG", "json"), argv


@pytest.mark.parametrize("command", WITH_SETTINGS)
def test_config_given_in_any_position_is_the_one_read(
    command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command reads the file named, wherever it is: a missing one stops it (exit 2)."""
    for argv in positions(command, ["--config", MISSING]):
        assert main(argv, environ={}) == 2, argv
        assert f"{MISSING}: configuration file not found" in capsys.readouterr().err, argv


def test_config_before_the_command_reaches_check_and_db_upgrade(tmp_path: Path) -> None:
    """The README's own systemd step, as a user types it."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[polling]\ninterval = "soon"\n')
    checked = cli("--config", str(bad), "check")
    assert checked.returncode == 2 and "polling.interval" in checked.stderr
    assert "built-in defaults" not in checked.stdout
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/named.db"\n')
    upgraded = cli("--config", str(config), "--log-level", "WARNING", "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "named.db").exists() and "named.db" in upgraded.stdout


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    root = parser()
    yield "", root
    for words in {c.words[:i] for c in COMMANDS for i in range(1, len(c.words) + 1)}:
        yield " ".join(words), subparser(root, words)


def test_every_command_and_option_has_help_and_examples() -> None:
    for name, p in _parsers():
        assert re.search(r"^examples:\n  (sudo )?\S*conference-monitor", p.epilog or ""), name
        assert p.description, name
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(c.help for c in action._choices_actions), name
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_defaults_are_shown() -> None:
    events = subparser(parser(), ("events",)).format_help()
    assert re.search(r"--limit N\s+show at most N events, newest first \(default: 100\)", events)
    simulate = subparser(parser(), ("simulate",)).format_help()
    assert "(default: 8765)" in simulate and "(default: 127.0.0.1)" in simulate


def test_a_command_word_alone_prints_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    for group in GROUPS:
        assert main([group], environ={}) == 2
        out = capsys.readouterr().out
        assert out.startswith(f"usage: conference-monitor {group} "), out
        assert "examples:" in out


def test_registry_refuses_a_command_without_examples() -> None:
    with pytest.raises(ValueError, match="needs help text and at least one example"):
        Command("nothing", lambda *_: 0, "does nothing", ())


def test_bash_completion_completes_commands_and_choices() -> None:
    result = cli("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    (function,) = re.findall(r"^complete .*-F (\S+) conference-monitor$", script, flags=re.M)
    probe = (
        f"{script}\n"
        "COMP_WORDS=(conference-monitor wat); COMP_CWORD=1; "
        f'{function}; echo "1:${{COMPREPLY[*]}}"\n'
        "COMP_WORDS=(conference-monitor watch a); COMP_CWORD=2; "
        f'{function}; echo "2:${{COMPREPLY[*]}}"\n'
        "COMP_WORDS=(conference-monitor events --type conference.e); COMP_CWORD=3; "
        f'{function}; echo "3:${{COMPREPLY[*]}}"\n'
    )
    ran = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["1:watch", "2:add", "3:conference.ended"]


def test_zsh_and_tcsh_completion_name_every_command() -> None:
    zsh = cli("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef conference-monitor")
    tcsh = cli("completion", "tcsh")
    assert tcsh.returncode == 0 and "complete conference-monitor" in tcsh.stdout
    for command in COMMANDS:
        assert command.words[-1] in zsh.stdout and command.words[-1] in tcsh.stdout
