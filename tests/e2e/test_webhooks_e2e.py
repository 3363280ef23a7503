"""Webhooks as a user meets them: `conference-monitor run` against the simulator, real
receivers on loopback, and the `deliveries` commands to look at what happened.

Every test runs `conference-monitor run` as a subprocess; the daemon tests drive real
conferences through the simulator and judge the result by what the receivers got and
what the CLI shows.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from monitor.db import queries
from monitor.db.engine import make_engine, upgrade
from monitor.db.outbox import Outbox
from monitor.db.store import Store
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import SimulatorServer
from tests.e2e.harness import (
    ACCOUNT,
    SECRET,
    TOKEN,
    Received,
    Receiver,
    cli,
    daemon,
    json_lines,
    receiver,
    wait_for,
)

pytestmark = pytest.mark.slow

WAIT_S = 30.0
NOTIFIED = ("conference.started", "conference.ended")


# --- Plumbing ---------------------------------------------------------------------------


def webhook_table(name: str, url: str, extra: str = "") -> str:
    return f"""
[[notifiers]]
name = "{name}"
type = "webhook"
url = "{url}"
secret = "{SECRET}"
timeout = "1s"
{extra}
"""


def write_config(folder: Path, sim_url: str, notifiers: str, dispatch: str = "") -> Path:
    """Quick polls, quick retries (200 ms, then 300 ms), webhooks cut off after 1 s."""
    path = folder / "config.toml"
    path.write_text(
        f"""
[twilio]
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"
base_url = "{sim_url}"
read_timeout = "2s"

[database]
url = "sqlite:///{folder}/monitor.db"

[polling]
interval = "300ms"
jitter = "50ms"

[dispatch]
interval = "200ms"
retry_delays = ["200ms", "300ms"]
{dispatch}
{notifiers}
"""
    )
    return path


@dataclass
class World:
    tmp: Path
    sim: SimulatorServer
    ctl: SimulatorControl
    config: Path | None = None
    sids: dict[str, str] = field(default_factory=dict)  # friendly name -> SID
    engine: Engine | None = None  # read-only peeks while waiting; assertions use the CLI

    def setup(self, notifiers: str, dispatch: str = "", **conferences: str) -> Path:
        """Write the config, create the database, create and watch conferences (name=status).

        Schema and watches go in through the library (`db upgrade` and `watch add` have
        their own tests); what is asserted on goes through the CLI.
        """
        self.config = write_config(self.tmp, self.sim.url, notifiers, dispatch)
        self.engine = make_engine(f"sqlite:///{self.tmp}/monitor.db")
        upgrade(self.engine)
        for name, status in conferences.items():
            self.sids[name] = self.ctl.create_conference(friendly_name=name, status=status)["sid"]
        Store(self.engine).add_watches(list(self.sids.values()), ACCOUNT, None, datetime.now(UTC))
        return self.config

    def peek(self, status: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows straight from the database: cheap enough to poll."""
        assert self.engine is not None
        return Outbox(self.engine).listing(status=status, limit=1000)

    def lifecycle(
        self, name: str, reason: str = "last-participant-left", start_s: float = 0.3
    ) -> None:
        """init -> in-progress -> completed, one poll interval apart at least."""
        self.ctl.script(
            self.sids[name],
            [
                {"after_s": start_s, "status": "in-progress"},
                {"after_s": start_s + 1.0, "status": "completed", "reason": reason},
            ],
        )

    def wait_baseline(self) -> None:
        """Scripts start once the daemon has seen every conference as it was created."""

        def seen() -> bool:
            assert self.engine is not None
            events = queries.events(self.engine, types=["conference.first_seen"])
            return {e["conference_sid"] for e in events} == set(self.sids.values())

        wait_for(seen, WAIT_S, "a first sight of every conference")

    def json(self, *args: str) -> list[dict[str, Any]]:
        result = cli(*args, "--json", config=self.config)
        assert result.returncode == 0, result.stderr
        return json_lines(result.stdout)

    def deliveries(self, *args: str) -> list[dict[str, Any]]:
        return self.json("deliveries", "--limit", "1000", *args)

    def notified_events(self) -> list[dict[str, Any]]:
        return [e for e in self.json("events", "--limit", "1000") if e["type"] in NOTIFIED]

    def settled(self) -> bool:
        """Every watch completed and nothing left to deliver."""
        assert self.engine is not None
        watches = Store(self.engine).list_watches()
        return all(w["status"] == "completed" for w in watches) and not self.peek("pending")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with SimulatorServer() as sim, SimulatorControl(sim.url) as ctl:
        world = World(tmp_path, sim, ctl)
        yield world
        if world.engine is not None:
            world.engine.dispose()


Decide = Callable[[Received, int], tuple[int, dict[str, str]]]


class Answers:
    """A receiver script that also remembers what it answered to which webhook-id."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.lock = threading.Lock()
        self.answered: list[tuple[str, int]] = []

    def __call__(self, got: Received, index: int) -> tuple[int, dict[str, str]]:
        status, headers = self.decide(got, index)
        with self.lock:
            self.answered.append((got.headers["webhook-id"], status))
        return status, headers

    def ok_ids(self) -> list[str]:
        with self.lock:
            return [wid for wid, status in self.answered if 200 <= status < 300]


@contextmanager
def scripted(decide: Decide) -> Iterator[tuple[Receiver, Answers]]:
    answers = Answers(decide)
    with receiver(answers) as hook:
        yield hook, answers


def body_id(got: Received) -> str:
    event_id: str = json.loads(got.body)["data"]["event_id"]
    return event_id


# --- Tests ------------------------------------------------------------------------------


def test_the_daemons_webhooks_verify_with_standardwebhooks_and_tampering_fails(
    world: World,
) -> None:
    with receiver() as hook:
        config = world.setup(webhook_table("hook", hook.url), standup="init")
        with daemon(config, world.tmp / "daemon.log") as run:
            world.wait_baseline()
            world.lifecycle("standup")
            wait_for(lambda: len(hook.received) >= 2, WAIT_S, "started and ended delivered")
            assert run.stop() == 0
    events = world.notified_events()
    assert sorted(e["type"] for e in events) == sorted(NOTIFIED)
    assert sorted(r.headers["webhook-id"] for r in hook.received) == sorted(e["id"] for e in events)

    genuine = Webhook(SECRET)
    impostor = Webhook("whsec_" + base64.b64encode(b"not the configured secret!!").decode())
    for got in hook.received:
        document = genuine.verify(got.body, got.headers)
        assert document == json.loads(got.body)
        assert document["data"]["event_id"] == got.headers["webhook-id"]
        assert document["data"]["conference_sid"] == world.sids["standup"]
        tampered = got.body.replace(b'"standup"', b'"standUP"')
        assert tampered != got.body
        with pytest.raises(WebhookVerificationError):
            genuine.verify(tampered, got.headers)
        with pytest.raises(WebhookVerificationError):
            impostor.verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):  # the signature is bound to the id
            genuine.verify(got.body, {**got.headers, "webhook-id": "evt_someone_else"})


def test_a_failing_receiver_gets_the_event_once_as_2xx_and_show_lists_every_attempt(
    world: World,
) -> None:
    def decide(_got: Received, index: int) -> tuple[int, dict[str, str]]:
        return [(500, {}), (429, {"Retry-After": "1"}), (0, {})][index] if index < 3 else (204, {})

    with scripted(decide) as (hook, answers):
        notifiers = webhook_table("hook", hook.url, 'events = ["conference.started"]')
        config = world.setup(notifiers, standup="init")
        with daemon(config, world.tmp / "daemon.log") as run:
            world.wait_baseline()
            world.ctl.script(world.sids["standup"], [{"after_s": 0.3, "status": "in-progress"}])
            wait_for(lambda: bool(answers.ok_ids()), WAIT_S, "a 2xx answer")
            wait_for(lambda: bool(world.peek("delivered")), WAIT_S, "the row marked delivered")
            assert run.stop() == 0
        (event,) = world.notified_events()
        assert [status for _, status in answers.answered] == [500, 429, 0, 204]
        assert {got.headers["webhook-id"] for got in hook.received} == {event["id"]}
        assert {body_id(got) for got in hook.received} == {event["id"]}
        assert len({got.body for got in hook.received}) == 1  # byte for byte the same

    (row,) = world.deliveries()
    assert (row["status"], row["attempts"], row["event_id"]) == ("delivered", 4, event["id"])
    (shown,) = world.json("deliveries", "show", str(row["id"]))
    log = shown["attempt_log"]
    assert [a["status_code"] for a in log] == [500, 429, None, 204]
    assert "500" in log[0]["error"] and "429" in log[1]["error"]
    assert "1s" in log[2]["error"]  # cut off at the notifier's timeout
    assert log[3]["error"] is None
    # Retry-After: 1 was honoured although the schedule said 300 ms.
    gap = datetime.fromisoformat(log[2]["attempted_at"]) - datetime.fromisoformat(
        log[1]["attempted_at"]
    )
    assert gap.total_seconds() >= 1.0
    assert shown["body"]["data"]["event_id"] == event["id"]  # an object, not a string

    text = cli("deliveries", "show", str(row["id"]), config=world.config)
    assert text.returncode == 0, text.stderr
    sent = json.dumps(shown["body"], separators=(",", ":"), ensure_ascii=False)  # as sent
    for expected in ("delivered", event["id"], "HTTP 500", "HTTP 429", "204", sent):
        assert expected in text.stdout


def test_sigkill_with_deliveries_pending_loses_nothing_after_restart(world: World) -> None:
    receiver_down = threading.Event()
    receiver_down.set()

    def decide(_got: Received, _index: int) -> tuple[int, dict[str, str]]:
        return (0, {}) if receiver_down.is_set() else (204, {})  # down: hang past the timeout

    with scripted(decide) as (hook, answers):
        names = {f"room-{i}": "init" for i in range(3)}
        config = world.setup(webhook_table("hook", hook.url, ""), 'lease = "1s"', **names)
        log_path = world.tmp / "daemon.log"
        with daemon(config, log_path) as first:
            world.wait_baseline()
            for i, name in enumerate(names):
                world.lifecycle(name, start_s=0.3 + 0.2 * i)
            wait_for(
                lambda: len(world.peek("pending")) == 2 * len(names),
                WAIT_S,
                "every transition in the outbox",
            )
            seen = len(hook.received)
            wait_for(lambda: len(hook.received) > seen, WAIT_S, "an attempt in flight")
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
        assert answers.ok_ids() == []
        assert len(world.deliveries("--status", "pending")) == 2 * len(names)

        receiver_down.clear()
        with daemon(config, log_path) as second:
            wait_for(world.settled, WAIT_S, "every watch completed and every delivery made")
            assert second.stop() == 0

        events = world.notified_events()
        assert len(events) == 2 * len(names)
        # None lost: each event got a 2xx; any duplicate carries the same webhook-id.
        assert set(answers.ok_ids()) == {e["id"] for e in events}
        for got in hook.received:
            assert got.headers["webhook-id"] == body_id(got)
        assert Counter(r["status"] for r in world.deliveries()) == {"delivered": len(events)}


def test_410_disables_and_a_dead_row_is_replayed_from_the_cli(world: World) -> None:
    flaky_down = threading.Event()
    flaky_down.set()

    def gone_decide(_got: Received, index: int) -> tuple[int, dict[str, str]]:
        return (410, {}) if index == 0 else (204, {})

    def flaky_decide(_got: Received, _index: int) -> tuple[int, dict[str, str]]:
        return (503, {}) if flaky_down.is_set() else (204, {})

    with scripted(gone_decide) as (gone, gone_answers), scripted(flaky_decide) as (flaky, _):
        notifiers = webhook_table("gone", gone.url) + webhook_table("flaky", flaky.url)
        # No circuit breaker here: every failure must reach its row's own end (dead).
        config = world.setup(notifiers, 'give_up_after = "1s"\nbreaker_threshold = 0', standup="init")
        log_path = world.tmp / "daemon.log"
        with daemon(config, log_path) as run:
            world.wait_baseline()
            world.lifecycle("standup")

            def dead_and_disabled() -> bool:
                rows = world.peek()
                flaky_rows = [r for r in rows if r["notifier"] == "flaky"]
                gone_rows = [r for r in rows if r["notifier"] == "gone"]
                return (
                    len(flaky_rows) == 2
                    and all(r["status"] == "dead" for r in flaky_rows)
                    and (sorted(r["status"] for r in gone_rows) == ["failed", "pending"])
                )

            wait_for(dead_and_disabled, WAIT_S, "flaky rows dead, gone disabled")

            # Said in the log, and in `deliveries`.
            disabled = [
                line for line in run.log_lines() if line.get("event") == "notifier.disabled"
            ]
            assert disabled and disabled[0]["notifier"] == "gone"
            assert "410" in disabled[0]["msg"]
            rows = {(r["notifier"], r["status"]): r for r in world.deliveries()}
            assert rows[("gone", "failed")]["last_status_code"] == 410
            assert "410" in rows[("gone", "failed")]["last_error"]
            assert rows[("gone", "pending")]["last_error"].startswith("notifier disabled")
            listing = cli("deliveries", "--notifier", "gone", config=config)
            assert "notifier disabled" in listing.stdout and "410" in listing.stdout
            assert len(gone.received) == 1  # nothing more was sent to it

            flaky_down.clear()
            dead = [r["id"] for r in world.deliveries("--status", "dead")]
            gone_failed = rows[("gone", "failed")]["id"]
            retried = cli("deliveries", "retry", *map(str, dead), str(gone_failed), config=config)
            assert retried.returncode == 0, retried.stderr
            assert retried.stdout.count("queued again") == 3
            wait_for(world.settled, WAIT_S, "the replays delivered")
            assert run.stop() == 0

        events = world.notified_events()
        assert Counter(r["status"] for r in world.deliveries()) == {"delivered": 2 * len(events)}
        assert set(gone_answers.ok_ids()) == {e["id"] for e in events}
        assert {got.headers["webhook-id"] for got in flaky.received} == {e["id"] for e in events}
        again = cli("deliveries", "retry", str(gone_failed), config=config)
        assert again.returncode == 1 and "not failed or dead" in again.stdout


def test_filters_leave_no_outbox_row_for_what_they_drop(world: World) -> None:
    with receiver() as hook:
        notifiers = (
            webhook_table("standups", hook.url, 'friendly_names = ["standup-*"]')
            + """
[[notifiers]]
name = "ended-only"
type = "log"
events = ["conference.ended"]

[[notifiers]]
name = "walkouts"
type = "log"
events = ["conference.ended"]
reasons = ["participant-with-end-conference-on-exit-left"]

[[notifiers]]
name = "everything"
type = "log"
include_first_seen = true
"""
        )
        config = world.setup(notifiers, "", **{"standup-daily": "init", "retro": "init"})
        with daemon(config, world.tmp / "daemon.log") as run:
            world.wait_baseline()
            world.lifecycle("standup-daily", "participant-with-end-conference-on-exit-left")
            world.lifecycle("retro", "last-participant-left")
            wait_for(world.settled, WAIT_S, "both conferences over, everything delivered")
            assert run.stop() == 0

    standup, retro = world.sids["standup-daily"], world.sids["retro"]
    expected = {
        "standups": {("conference.started", standup), ("conference.ended", standup)},
        "ended-only": {("conference.ended", standup), ("conference.ended", retro)},
        "walkouts": {("conference.ended", standup)},
        "everything": {
            (kind, sid) for kind in ("conference.first_seen", *NOTIFIED) for sid in (standup, retro)
        },
    }
    everything = world.deliveries()
    assert len(everything) == sum(len(rows) for rows in expected.values())
    for name, rows in expected.items():
        listed = [r for r in everything if r["notifier"] == name]
        assert {(r["event_type"], r["conference_sid"]) for r in listed} == rows, name
        assert len(listed) == len(rows), name
        assert {r["status"] for r in listed} == {"delivered"}, name
    walkouts = world.deliveries("--notifier", "walkouts")
    assert [(r["event_type"], r["conference_sid"]) for r in walkouts] == [
        ("conference.ended", standup)
    ]
    assert sorted(json.loads(got.body)["type"] for got in hook.received) == sorted(NOTIFIED)


def test_bad_webhook_notifiers_stop_run_with_exit_2_naming_each_key(tmp_path: Path) -> None:
    secret_line = f'secret = "{SECRET}"'
    path = write_config(
        tmp_path,
        "http://127.0.0.1:9",
        f"""
[[notifiers]]
name = "no-url"
type = "webhook"
{secret_line}

[[notifiers]]
name = "ftp"
type = "webhook"
url = "ftp://127.0.0.1/hook"
{secret_line}

[[notifiers]]
name = "bad-secret"
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "whsec_this is not base64!"

[[notifiers]]
name = "typo"
type = "log"
events = ["conference.ended", "conference.exploded"]
""",
    )
    result = cli("run", config=path, timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    for key in ("notifiers[0].url", "notifiers[1].url", "notifiers[2].secret"):
        assert key in result.stderr, (key, result.stderr)
    assert "notifiers[3].events" in result.stderr and "conference.exploded" in result.stderr
    assert "this is not base64" not in result.stderr  # a secret is never repeated
    assert not (tmp_path / "monitor.db").exists()  # nothing was started
