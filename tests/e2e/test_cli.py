"""The command line as a user runs it: exit codes, validation, listings, filters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import cli, json_lines, write_config

GOOD = "CF" + "a" * 32


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, sim: SimulatorServer) -> Path:
    path = write_config(tmp_path, sim_url=sim.url, db_url=f"sqlite:///{tmp_path}/cli.db")
    assert cli("db", "upgrade", config=path).returncode == 0
    return path


def test_db_upgrade_is_idempotent_and_says_so(config: Path) -> None:
    again = cli("db", "upgrade", config=config)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_commands_refuse_a_database_that_is_behind(tmp_path: Path, sim: SimulatorServer) -> None:
    path = write_config(tmp_path, sim_url=sim.url, db_url=f"sqlite:///{tmp_path}/empty.db")
    for args in (("watch", "list"), ("run",)):
        result = cli(*args, config=path)
        assert result.returncode == 1, args
        assert "conference-monitor db upgrade" in result.stderr


def test_malformed_sid_exits_2_and_writes_nothing(config: Path) -> None:
    result = cli("watch", "add", GOOD, "CF123", "not-a-sid", config=config)
    assert result.returncode == 2
    assert "'CF123'" in result.stderr and "'not-a-sid'" in result.stderr
    assert json_lines(cli("watch", "list", "--json", config=config).stdout) == []


def test_watch_add_list_remove(config: Path) -> None:
    assert cli("watch", "add", GOOD, "--label", "bridge", config=config).returncode == 0
    again = cli("watch", "add", GOOD, config=config)
    assert again.returncode == 0 and "already watched" in again.stdout
    (row,) = json_lines(cli("watch", "list", "--json", config=config).stdout)
    assert row["sid"] == GOOD and row["label"] == "bridge" and row["status"] == "active"
    plain = cli("watch", "list", config=config).stdout
    assert GOOD in plain and "SID" in plain
    assert cli("watch", "remove", GOOD, config=config).returncode == 0
    missing = cli("watch", "remove", GOOD, config=config)
    assert missing.returncode == 1 and "not watched" in missing.stdout


def test_bad_config_exits_2_naming_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[polling]\ninterval = "soon"\n\n[[notifiers]]\nname = "x"\ntype = "pager"\n')
    result = cli("watch", "list", config=bad)
    assert result.returncode == 2
    assert "polling.interval" in result.stderr and ":2:" in result.stderr
    assert "type" in result.stderr and ":6:" in result.stderr


def test_poll_history_and_events_filters(config: Path, sim: SimulatorServer) -> None:
    with SimulatorControl(sim.url) as ctl:
        live = ctl.create_conference(friendly_name="live", status="init")["sid"]
        gone = ctl.create_conference(friendly_name="gone", status="in-progress")["sid"]
        # Twilio's dates have whole seconds, and a status reached in the second the
        # watch was made counts as reached after it (notified): be clearly before.
        time.sleep(1.1)
        first = cli("poll", live, gone, "--json", config=config)
        assert first.returncode == 0, first.stderr
        assert {r["sid"]: r["status"] for r in json_lines(first.stdout)} == {
            live: "init",
            gone: "in-progress",
        }
        ctl.set_status(live, "in-progress")
        ctl.set_status(gone, "completed", reason="last-participant-left")
        assert cli("poll", live, gone, config=config).returncode == 0

    history = json_lines(cli("history", gone, "--json", config=config).stdout)
    assert [h["kind"] for h in history] == [
        "snapshot",
        "conference.first_seen",
        "snapshot",
        "conference.ended",
    ]
    ended = json_lines(cli("events", "--json", "--type", "conference.ended", config=config).stdout)
    assert [e["data"]["conference_sid"] for e in ended] == [gone]
    assert ended[0]["data"]["reason_conference_ended"] == "last-participant-left"
    by_sid = json_lines(cli("events", "--json", "--sid", live, config=config).stdout)
    assert [e["type"] for e in by_sid] == ["conference.started", "conference.first_seen"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json_lines(cli("events", "--json", "--since", future, config=config).stdout) == []
    assert len(json_lines(cli("events", "--json", "--since", "1h", config=config).stdout)) == 4
    assert len(json_lines(cli("events", "--json", "--limit", "1", config=config).stdout)) == 1
    old = json_lines(cli("events", "--json", "--until", "1h", config=config).stdout)
    assert old == []
    assert cli("events", "--type", "conference.exploded", config=config).returncode == 2
    assert cli("history", "CFnope", config=config).returncode == 2


def test_poll_of_a_missing_conference_fails_with_the_sid(config: Path) -> None:
    result = cli("poll", GOOD, config=config)
    assert result.returncode == 1
    assert GOOD in result.stdout


def test_check_reports_each_part(config: Path, tmp_path: Path, sim: SimulatorServer) -> None:
    ok = cli("check", config=config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    parts = [line.split()[1] for line in ok.stdout.splitlines()]
    assert parts == ["config", "notifier", "database", "twilio"]  # one line per notifier
    bad = cli(
        "check", config=config, env={"CONFERENCE_MONITOR_TWILIO_AUTH_TOKEN": "wrong-secret-xyz"}
    )
    assert bad.returncode == 1
    assert "FAIL  twilio" in bad.stdout
    assert "wrong-secret-xyz" not in bad.stdout + bad.stderr


def test_unreachable_database_is_a_runtime_failure_naming_it(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    path = write_config(
        tmp_path, sim_url=sim.url, db_url="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    result = cli("watch", "list", config=path)
    assert result.returncode == 1
    assert "127.0.0.1" in result.stderr or "connection" in result.stderr.lower()


def test_deliveries_listing_is_empty_json(config: Path) -> None:
    result = cli("deliveries", "--json", config=config)
    assert result.returncode == 0 and result.stdout == ""
    assert cli("deliveries", "show", "99", config=config).returncode == 1
