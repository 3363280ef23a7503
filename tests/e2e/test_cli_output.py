"""Output people and scripts can trust: escaped tables and logs, fitted widths, closed pipes.

A hostile Twilio (the simulator with its end-reason check lifted) sends a
friendly name and an end reason holding a newline, a carriage return and a
clear-screen escape; none of them may reach the terminal raw.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.simulator import state as simulator_state
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import base_env, cli, json_lines, wait_for, write_config

EVIL = "bridge\nFAKE LINE\r\x1b[2Jgone"
EVIL_REASON = "last-participant-left\n2026-01-01 00:00:00 ERROR forged\x1b[2J"
RAW = ("\n", "\r", "\x1b")
SID_RE = re.compile(r"CF[0-9a-f]{32}")


def assert_no_raw_controls(text: str, what: str) -> None:
    """Every line break is a real line of output, and no control character survives."""
    for line in text.split("\n"):
        assert "\r" not in line and "\x1b" not in line, f"{what}: raw control in {line!r}"
        assert "FAKE LINE" not in line or "\\n" in line, f"{what}: forged line {line!r}"
        assert not line.startswith(("FAKE", "2026-01-01")), f"{what}: forged line {line!r}"


@pytest.fixture
def hostile_sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatorServer]:
    monkeypatch.setattr(simulator_state, "_check_status", lambda *_args: None)
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, hostile_sim: SimulatorServer) -> Path:
    path = write_config(
        tmp_path,
        sim_url=hostile_sim.url,
        db_url=f"sqlite:///{tmp_path}/out.db",
        extra="[logging]\nformat = 'plain'\n",
    )
    assert cli("db", "upgrade", config=path).returncode == 0
    return path


def _ended_conference(sim: SimulatorServer, config: Path) -> str:
    with SimulatorControl(sim.url) as ctl:
        sid = str(ctl.create_conference(friendly_name=EVIL, status="in-progress")["sid"])
        added = cli("watch", "add", sid, "--label", EVIL, config=config)
        assert added.returncode == 0, added.stderr
        assert cli("poll", sid, config=config).returncode == 0
        ctl.set_status(sid, "completed", reason=EVIL_REASON)
    return sid


def _ended_and_polled(sim: SimulatorServer, config: Path) -> str:
    sid = _ended_conference(sim, config)
    assert cli("poll", sid, config=config).returncode == 0
    return sid


def test_hostile_names_are_escaped_in_every_table(
    config: Path, hostile_sim: SimulatorServer
) -> None:
    sid = _ended_conference(hostile_sim, config)
    env = {"COLUMNS": "400"}
    outputs = {
        "poll": cli("poll", sid, "--wide", config=config, env=env),
        "watch list": cli("watch", "list", "--wide", config=config, env=env),
        "history": cli("history", sid, "--wide", config=config, env=env),
        "events": cli("events", "--wide", config=config, env=env),
        "deliveries": cli("deliveries", "--wide", config=config, env=env),
        "deliveries show": cli("deliveries", "show", "1", config=config, env=env),
    }
    for what, result in outputs.items():
        assert result.returncode == 0, (what, result.stderr)
        assert_no_raw_controls(result.stdout, what)
        assert_no_raw_controls(result.stderr, what)
    escaped_name = "bridge\\nFAKE LINE\\r\\x1b[2Jgone"
    escaped_reason = "last-participant-left\\n2026-01-01 00:00:00 ERROR forged\\x1b[2J"
    assert escaped_name in outputs["poll"].stdout and escaped_reason in outputs["poll"].stdout
    assert escaped_name in outputs["watch list"].stdout  # the label
    assert escaped_name in outputs["history"].stdout and escaped_reason in outputs["history"].stdout
    events = outputs["events"].stdout
    assert events.count(escaped_name) >= 2  # friendly name and label
    assert escaped_reason in events
    # The body is JSON, which escapes by itself; the values survive it exactly.
    shown = cli("deliveries", "show", "1", "--json", config=config)
    assert isinstance(json.loads(shown.stdout)["body"], dict)
    ended = json_lines(cli("events", "--json", "--type", "conference.ended", config=config).stdout)
    assert ended[0]["data"]["friendly_name"] == EVIL
    assert ended[0]["data"]["reason_conference_ended"] == EVIL_REASON


def test_hostile_names_are_escaped_in_the_plain_log_under_journald(
    config: Path, hostile_sim: SimulatorServer, tmp_path: Path
) -> None:
    """The daemon's log notifier line, in plain format on the journal's stream."""
    sid = _ended_conference(hostile_sim, config)
    log_path = tmp_path / "journal.log"
    with log_path.open("w") as log_file:
        found = os.fstat(log_file.fileno())
        env = base_env({"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"})
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
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
    ended = next(line for line in lines if "conference.ended" in line and sid in line)
    assert ended.startswith("<6>INFO monitor.events: ")  # no timestamp: journald has one
    assert "reason=last-participant-left\\n2026-01-01 00:00:00 ERROR forged\\x1b[2J" in ended
    # The log notifier quotes the name as JSON, which escapes it already.
    assert '"bridge\\nFAKE LINE\\r\\u001b[2Jgone"' in ended


def _watch_many(config: Path, tmp_path: Path, count: int) -> None:
    sids = tmp_path / "sids.txt"
    sids.write_text("".join(f"CF{i:032x}\n" for i in range(count)))
    assert cli("watch", "add", "--from-file", str(sids), config=config).returncode == 0


def _pipeline(config: Path, command: str, reader: str) -> subprocess.CompletedProcess[str]:
    script = (
        f'"{sys.executable}" -m monitor {command} --config "{config}" | {reader}; '
        'echo "status=${PIPESTATUS[0]}" >&2'
    )
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=base_env()
    )


@pytest.mark.parametrize("reader", ["head -n 1", "true"])
def test_a_closed_pipe_ends_quietly_with_status_0(
    config: Path, tmp_path: Path, reader: str
) -> None:
    _watch_many(config, tmp_path, 3000)  # ~400 KB of JSON: far more than a pipe holds
    for command in ("watch list --json", "watch list"):
        result = _pipeline(config, command, reader)
        assert "status=0" in result.stderr, (command, result.stderr)
        assert result.stderr.strip() == "status=0", (command, result.stderr)


def test_tables_fit_the_terminal_and_wide_shows_everything(
    config: Path, hostile_sim: SimulatorServer
) -> None:
    sid = _ended_and_polled(hostile_sim, config)
    listing = cli("watch", "list", config=config, env={"COLUMNS": "100"})
    narrow = listing.stdout.splitlines()
    assert all(len(line) <= 100 for line in narrow), narrow
    assert "…" in narrow[1]  # the label was cut
    assert "ACCOUNT" not in narrow[0]
    assert "LAST POLLED" not in narrow[0]  # the least needed column gave way
    assert "hidden to fit 100 columns; --wide shows all" in listing.stderr
    wide = cli("watch", "list", "--wide", config=config, env={"COLUMNS": "100"}).stdout
    assert "ACCOUNT" in wide.splitlines()[0] and max(map(len, wide.splitlines())) > 100
    events = cli("events", config=config, env={"COLUMNS": "120"}).stdout.splitlines()
    assert all(len(line) <= 120 for line in events), events
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", events[1])  # marked UTC
    (row,) = [line for line in narrow[1:] if sid in line]
    assert row.split()[1] == "completed"
    # A completed watch is never polled again: no next poll shown, in either form.
    (listed,) = json_lines(cli("watch", "list", "--json", config=config).stdout)
    assert listed["next_poll_at"] is None


def test_no_python_reprs_in_tables(config: Path, hostile_sim: SimulatorServer) -> None:
    sid = _ended_and_polled(hostile_sim, config)
    shown = cli("deliveries", "show", "1", config=config).stdout
    fields, _, rest = shown.partition("\nbody:\n")
    _, _, attempts = rest.partition("\nattempts:\n")  # the body between is JSON
    outputs = [
        cli("poll", sid, "--wide", config=config, env={"COLUMNS": "400"}).stdout,
        fields,
        attempts,
        cli("watch", "list", "--wide", config=config).stdout,
    ]
    for text in outputs:
        assert "<EventType" not in text and "None" not in text
        assert not re.search(r"\d+\.\d{4,}", text), text  # long floats


def test_truncated_listings_say_so(config: Path, hostile_sim: SimulatorServer) -> None:
    with SimulatorControl(hostile_sim.url) as ctl:
        sids = [ctl.create_conference(status="in-progress")["sid"] for _ in range(3)]
    assert cli("poll", *sids, config=config).returncode == 0
    total = len(json_lines(cli("events", "--json", config=config).stdout))
    assert total >= 3
    result = cli("events", "--limit", "2", config=config)
    assert result.returncode == 0
    assert f"showing 2 of {total} events; use --limit {total} to see all" in result.stderr
    assert "showing" not in cli("events", "--limit", str(total), config=config).stderr
    as_json = cli("events", "--limit", "2", "--json", config=config)
    assert len(json_lines(as_json.stdout)) == 2 and f"showing 2 of {total}" in as_json.stderr


def test_json_on_check_and_deliveries_retry(config: Path) -> None:
    checks = json_lines(cli("check", "--json", config=config).stdout)
    assert [c["check"] for c in checks] == ["config", "database", "twilio"]
    assert {c["status"] for c in checks} == {"ok"}
    retried = cli("deliveries", "retry", "7", "--json", config=config)
    assert retried.returncode == 1
    assert json_lines(retried.stdout) == [{"id": 7, "result": "unchanged"}]
