"""Output people and scripts can trust: escaped tables and logs, fitted widths, closed pipes.

A hostile Twilio (the simulator with its end-reason check lifted) sends a
friendly name and an end reason holding a newline, a carriage return and a
clear-screen escape; none of them may reach the terminal raw. The world is
built once; tables are read in-process through `main()` (the same code path
as the console script) and, where the process boundary matters (pipes, the
journal, one table run as a user runs it), as a subprocess.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.simulator import state as simulator_state
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import base_env, cli, json_lines, wait_for, write_config

EVIL = "bridge\nFAKE LINE\r\x1b[2Jgone"
EVIL_REASON = "last-participant-left\n2026-01-01 00:00:00 ERROR forged\x1b[2J"
ESCAPED_NAME = "bridge\\nFAKE LINE\\r\\x1b[2Jgone"
ESCAPED_REASON = "last-participant-left\\n2026-01-01 00:00:00 ERROR forged\\x1b[2J"
OTHERS = 3  # plain conferences beside the hostile one


def assert_no_raw_controls(text: str, what: str) -> None:
    """Every line break is a real line of output, and no control character survives."""
    for line in text.split("\n"):
        assert "\r" not in line and "\x1b" not in line, f"{what}: raw control in {line!r}"
        assert not line.startswith(("FAKE", "2026-01-01")), f"{what}: forged line {line!r}"


@dataclass
class World:
    sim: SimulatorServer
    config: Path
    folder: Path
    sid: str  # the hostile conference, ended

    def run(self, *argv: str, columns: int | None = 400) -> tuple[int, str, str]:
        """`main()` in this process, output captured; COLUMNS as given."""
        environ = {"COLUMNS": str(columns)} if columns else {}
        out, err = io.StringIO(), io.StringIO()
        with _restored_logging(), _redirected(out, err):
            code = main([*argv, "--config", str(self.config)], environ)
        return code, out.getvalue(), err.getvalue()


class _redirected:
    def __init__(self, out: io.StringIO, err: io.StringIO) -> None:
        self.out, self.err = out, err

    def __enter__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.out, self.err

    def __exit__(self, *_exc: object) -> None:
        sys.stdout, sys.stderr = self.saved


class _restored_logging:
    """`main()` configures the root logger; put back what pytest had."""

    def __enter__(self) -> None:
        root = logging.getLogger()
        self.saved = list(root.handlers), root.level, threading.excepthook

    def __exit__(self, *_exc: object) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handlers, level, hook = self.saved
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        threading.excepthook = hook
        logging.captureWarnings(False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("output")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulator_state, "check_status", lambda *_args: None)
        with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl:
            config = write_config(
                folder,
                sim_url=sim.url,
                db_url=f"sqlite:///{folder}/out.db",
                extra="[logging]\nformat = 'plain'\n",
            )
            made = World(sim, config, folder, "")
            assert made.run("db", "upgrade")[0] == 0
            made.sid = str(ctl.create_conference(friendly_name=EVIL, status="in-progress")["sid"])
            others = [ctl.create_conference(status="init")["sid"] for _ in range(OTHERS)]
            assert made.run("watch", "add", made.sid, "--label", EVIL)[0] == 0
            assert made.run("poll", made.sid, *others)[0] == 0
            ctl.set_status(made.sid, "completed", reason=EVIL_REASON)
            assert made.run("poll", made.sid)[0] == 0
            yield made


TABLES = {
    "poll": ("poll", "{sid}", "--wide"),
    "watch list": ("watch", "list", "--wide"),
    "history": ("history", "{sid}", "--wide"),
    "events": ("events", "--wide"),
    "deliveries": ("deliveries", "--wide"),
    "deliveries show": ("deliveries", "show", "1"),
}


@pytest.mark.parametrize("table", TABLES)
def test_hostile_names_are_escaped_in_every_table(world: World, table: str) -> None:
    argv = [a.format(sid=world.sid) for a in TABLES[table]]
    code, out, err = world.run(*argv)
    assert code == 0, err
    assert_no_raw_controls(out, table)
    assert_no_raw_controls(err, table)
    expected = {
        "poll": [ESCAPED_NAME, ESCAPED_REASON],
        "watch list": [ESCAPED_NAME],  # the label
        "history": [ESCAPED_NAME, ESCAPED_REASON],
        "events": [ESCAPED_NAME, ESCAPED_REASON],
        "deliveries": [world.sid],
        "deliveries show": [world.sid],
    }[table]
    for text in expected:
        assert text in out, (table, out)


def test_a_table_as_a_user_runs_it(world: World) -> None:
    result = cli("events", "--wide", config=world.config)
    assert result.returncode == 0, result.stderr
    assert_no_raw_controls(result.stdout, "events")
    assert result.stdout.count(ESCAPED_NAME) >= 2  # friendly name and label
    assert ESCAPED_REASON in result.stdout


def test_json_keeps_the_values_exactly(world: World) -> None:
    _, out, _ = world.run("events", "--json", "--type", "conference.ended")
    (ended,) = json_lines(out)
    assert ended["data"]["friendly_name"] == EVIL
    assert ended["data"]["reason_conference_ended"] == EVIL_REASON
    _, shown, _ = world.run("deliveries", "show", "1", "--json")
    assert isinstance(json.loads(shown)["body"], dict)


def test_hostile_names_are_escaped_in_the_plain_log_under_journald(world: World) -> None:
    """The daemon's log notifier line, in plain format, on the journal's stream."""
    log_path = world.folder / "journal.log"
    with log_path.open("w") as log_file:
        found = os.fstat(log_file.fileno())
        env = base_env({"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"})
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(world.config)],
            stdout=log_file,
            stderr=log_file,
            env=env,
        )
        try:
            wait_for(lambda: "conference.ended" in log_path.read_text(), 30, "the ended event")
            time.sleep(0.3)
        finally:
            process.terminate()
            process.wait(timeout=15)
    text = log_path.read_text()
    assert_no_raw_controls(text, "plain log")
    lines = text.splitlines()
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    ended = next(line for line in lines if "conference.ended" in line and world.sid in line)
    assert ended.startswith("<6>INFO monitor.events: ")  # no timestamp: journald has one
    assert f"reason={ESCAPED_REASON}" in ended
    # The log notifier quotes the name as JSON, which escapes it already.
    assert '"bridge\\nFAKE LINE\\r\\u001b[2Jgone"' in ended


def test_tables_fit_the_terminal_and_wide_shows_everything(world: World) -> None:
    _, out, err = world.run("watch", "list", columns=100)
    narrow = out.splitlines()
    assert all(len(line) <= 100 for line in narrow), narrow
    (row,) = [line for line in narrow if world.sid in line]
    assert "…" in row  # the label was cut
    assert "ACCOUNT" not in narrow[0] and "LAST POLLED" not in narrow[0]
    assert "hidden to fit 100 columns; --wide shows all" in err
    _, wide, _ = world.run("watch", "list", "--wide", columns=100)
    assert "ACCOUNT" in wide.splitlines()[0] and max(map(len, wide.splitlines())) > 100
    _, events, _ = world.run("events", columns=120)
    assert all(len(line) <= 120 for line in events.splitlines())
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", events.splitlines()[1])  # marked UTC
    assert row.split()[1] == "completed"
    # A completed watch is never polled again: no next poll shown, in either form.
    _, listed, _ = world.run("watch", "list", "--json")
    (mine,) = [r for r in json_lines(listed) if r["sid"] == world.sid]
    assert mine["next_poll_at"] is None


def test_no_python_reprs_in_tables(world: World) -> None:
    _, shown, _ = world.run("deliveries", "show", "1")
    fields, _, rest = shown.partition("\nbody (exactly as sent):\n")
    _, _, attempts = rest.partition("\nattempts:\n")  # the body between is JSON
    outputs = [world.run("poll", world.sid, "--wide")[1], fields, attempts]
    outputs.append(world.run("watch", "list", "--wide")[1])
    for text in outputs:
        assert "<EventType" not in text and "None" not in text, text
        assert not re.search(r"\d+\.\d{4,}", text), text  # long floats


def test_truncated_listings_say_so(world: World) -> None:
    total = len(json_lines(world.run("events", "--json")[1]))
    assert total > OTHERS
    code, _, err = world.run("events", "--limit", "2")
    assert code == 0
    assert f"showing 2 of {total} events; use --limit {total} to see all" in err
    assert "showing" not in world.run("events", "--limit", str(total))[2]
    _, out, err = world.run("events", "--limit", "2", "--json")
    assert len(json_lines(out)) == 2 and f"showing 2 of {total}" in err


def test_json_on_check_and_deliveries_retry(world: World) -> None:
    code, out, _ = world.run("check", "--json")
    assert code == 0
    checks = json_lines(out)
    assert [c["check"] for c in checks] == ["config", "notifier", "database", "twilio"]
    assert {c["status"] for c in checks} == {"ok"}
    code, out, _ = world.run("deliveries", "retry", "7", "--json")
    assert code == 1 and json_lines(out) == [{"id": 7, "result": "unchanged"}]


@pytest.fixture
def crowded(tmp_path: Path) -> Path:
    """3,000 watches: their listing is far more than a pipe holds."""
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/many.db"\n')
    sids = tmp_path / "sids.txt"
    sids.write_text("".join(f"CF{i:032x}\n" for i in range(3000)))
    assert cli("db", "upgrade", config=config).returncode == 0
    added = cli(
        "watch", "add", "--from-file", str(sids), "--account", "AC" + "1" * 32, config=config
    )
    assert added.returncode == 0, added.stderr
    return config


@pytest.mark.parametrize("command", ["watch list --json", "watch list"])
def test_a_closed_pipe_ends_quietly_with_status_0(crowded: Path, command: str) -> None:
    for reader in ("head -n 1", "true"):
        script = (
            f'"{sys.executable}" -m monitor {command} --config "{crowded}" | {reader}; '
            'echo "status=${PIPESTATUS[0]}" >&2'
        )
        result = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=base_env()
        )
        assert result.stderr.strip() == "status=0", (command, reader, result.stderr)
