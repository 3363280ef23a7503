"""`notify test`, `check` and `deliveries notifiers` as a user runs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import standardwebhooks
from sqlalchemy import update

from monitor.db.engine import make_engine
from monitor.db.outbox import N, Outbox
from monitor.db.store import Store
from monitor.domain import EventType
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import SECRET, cli, json_lines, receiver, write_config
from tests.integration.test_dispatcher import make_event


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def config_with(tmp_path: Path, sim: SimulatorServer, good_url: str, bad_url: str) -> Path:
    extra = f"""
[[notifiers]]
name = "good"
type = "webhook"
url = "{good_url}"
secret = "{SECRET}"

[[notifiers]]
name = "chat"
type = "slack"
url = "{bad_url}/services/T0/B0/slack-token-in-the-path"
"""
    path = write_config(tmp_path, sim_url=sim.url, db_url=f"sqlite:///{tmp_path}/n.db")
    path.write_text(path.read_text() + extra)
    return path


def test_notify_test_sends_a_signed_sample_and_reports_each_notifier(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    with receiver() as good, receiver(lambda _g, _i: (500, {})) as bad:
        config = config_with(tmp_path, sim, good.url, bad.url.removesuffix("/hook"))
        result = cli("notify", "test", config=config)
        assert result.returncode == 1, result.stderr  # one of them failed
        lines = result.stdout.splitlines()
        assert lines[0].startswith("ok    log (log): delivered")
        assert lines[1].startswith("ok    good (webhook): delivered (HTTP 204)")
        assert lines[2].startswith("FAIL  chat (slack): POST http://127.0.0.1:")
        assert "HTTP 500" in lines[2] and "slack-token" not in result.stdout + result.stderr
        [sample] = good.received
        doc = standardwebhooks.Webhook(SECRET).verify(sample.body, sample.headers)
        assert doc["type"] == "conference.ended" and doc["data"]["test"] is True
        assert "test notification" in doc["data"]["friendly_name"]
        assert len(bad.received) == 1 and "[TEST]" in json.loads(bad.received[0].body)["text"]

        only = cli("notify", "test", "--notifier", "good", "--json", config=config)
        assert only.returncode == 0
        [row] = json_lines(only.stdout)
        assert (row["notifier"], row["ok"]) == ("good", True) and len(good.received) == 2

        unknown = cli("notify", "test", "--notifier", "nope", config=config)
        assert unknown.returncode == 2 and "no notifier named 'nope'" in unknown.stderr
    # Nothing went through the outbox: a test is not an event.
    assert cli("db", "upgrade", config=config).returncode == 0
    listed = cli("deliveries", "--json", config=config)
    assert listed.returncode == 0 and json_lines(listed.stdout) == []


def test_check_lists_notifiers_and_contacts_them_only_when_asked(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    with receiver() as good, receiver(lambda _g, _i: (404, {})) as bad:
        config = config_with(tmp_path, sim, good.url, bad.url.removesuffix("/hook"))
        assert cli("db", "upgrade", config=config).returncode == 0
        quiet = cli("check", config=config)
        assert quiet.returncode == 0, quiet.stdout + quiet.stderr
        assert f"ok    notifier  good (webhook) {good.url}, signed" in quiet.stdout
        assert "ok    notifier  chat (slack) http://127.0.0.1:" in quiet.stdout
        assert good.received == [] and bad.received == []  # not contacted

        loud = cli("check", "--notifiers", config=config)
        assert loud.returncode == 1
        assert "ok    notifier  good (webhook)" in loud.stdout and "test message delivered" in loud.stdout
        assert "FAIL  notifier  chat (slack) test message: POST" in loud.stdout
        assert len(good.received) == 1 and len(bad.received) == 1
        assert "slack-token" not in loud.stdout + loud.stderr


def test_deliveries_shows_each_notifiers_state_and_thresholds(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    config = write_config(
        tmp_path,
        sim_url=sim.url,
        db_url=f"sqlite:///{tmp_path}/d.db",
        hook_url="http://127.0.0.1:9/hook",
        extra='breaker_threshold = 3\nbreaker_cooldown = "1m"',
    )
    assert cli("db", "upgrade", config=config).returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path}/d.db")
    try:
        now = datetime.now(UTC)
        Outbox(engine).pause_notifier(
            "hook", now + timedelta(minutes=5), "HTTP 429 with Retry-After 300s", now
        )
        with engine.begin() as conn:
            conn.execute(update(N).where(N.c.name == "hook").values(consecutive_failures=2))
        Store(engine).write_events([make_event(EventType.ENDED, "CF" + "9" * 32, ("hook",))])
    finally:
        engine.dispose()
    [pending] = json_lines(cli("deliveries", "--json", config=config).stdout)
    assert pending["status"] == "pending"
    assert pending["last_error"].startswith("notifier paused until ")
    assert pending["last_error"].endswith(": HTTP 429 with Retry-After 300s")
    result = cli("deliveries", "notifiers", "--json", config=config)
    assert result.returncode == 0, result.stderr
    rows = {r["notifier"]: r for r in json_lines(result.stdout)}
    assert rows["log"]["state"] == "ok" and rows["log"]["until"] is None
    hook = rows["hook"]
    assert (hook["state"], hook["consecutive_failures"]) == ("paused", 2)
    assert (hook["breaker_threshold"], hook["breaker_cooldown_s"], hook["concurrency"]) == (3, 60.0, 4)
    assert hook["reason"] == "HTTP 429 with Retry-After 300s" and hook["until"]
