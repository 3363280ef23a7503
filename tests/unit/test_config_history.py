"""[api] and [retention]: tokens from config, files and credentials; ages and their limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.api.auth import token_digest
from monitor.config import ApiSettings, RetentionSettings, load_settings
from tests.unit.test_config import credentials, problems_of, write

DIGEST = token_digest("a-token-of-enough-length")


def test_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.api == ApiSettings(enabled=True, allow_loopback=False)
    assert settings.api.token_hashes == frozenset()
    assert settings.retention == RetentionSettings()
    assert settings.retention.events_s == 400 * 86400


def test_digests_from_the_file_a_token_file_and_a_credential(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# comment\n\nsha256:{'B' * 64}\nraw-token-abcdefghij\n")
    folder = credentials(tmp_path, api_tokens=f"SHA256:{'c' * 64}\n")
    path = write(
        tmp_path,
        f"""
        [api]
        allow_loopback = true
        token_sha256 = ["{DIGEST}", "sha256:{"a" * 64}"]
        token_file = "{tokens}"
        token_credential = "api_tokens"
        """,
    )
    api = load_settings(path, {"CREDENTIALS_DIRECTORY": str(folder)}).api
    assert api.allow_loopback
    assert api.token_hashes == {
        DIGEST,
        "a" * 64,
        "b" * 64,
        "c" * 64,
        token_digest("raw-token-abcdefghij"),
    }
    assert DIGEST not in repr(api)


def test_digests_from_the_environment_are_comma_separated() -> None:
    env = {"CONFERENCE_MONITOR_API_TOKEN_SHA256": f"{DIGEST}, {'d' * 64}"}
    assert load_settings(None, env).api.token_hashes == {DIGEST, "d" * 64}


def test_a_bad_digest_names_the_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\ntoken_sha256 = ["a-raw-token-by-mistake"]\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: api.token_sha256: entry 1 is not a sha256")
    assert "a-raw-token-by-mistake" not in problem


def test_token_file_problems_name_the_file_and_line_never_the_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("short-secret\nsha256:xyz\nfine-token-abcdefghij\n")
    path = write(tmp_path, f'[api]\ntoken_file = "{tokens}"\n')
    problems = problems_of(path)
    assert len(problems) == 2
    assert f"{tokens}:1: a token must be at least 16 characters" in problems[0]
    assert f"{tokens}:2: sha256: must be followed by 64 hex digits" in problems[1]
    assert all("short-secret" not in p and "xyz" not in p for p in problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('token_file = "/nonexistent/tokens"', "does not exist"),
        ('token_credential = "x"', "needs $CREDENTIALS_DIRECTORY"),
        ('token_credential = "../x"', "plain file name"),
        ("enabled = 1", "expected true or false"),
        ("tokens = []", "unknown key"),
    ],
)
def test_api_problems(tmp_path: Path, text: str, problem: str) -> None:
    (found,) = problems_of(write(tmp_path, f"[api]\n{text}\n"))
    assert problem in found and ":2: api." in found


def test_an_empty_token_file_is_a_problem(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# nobody yet\n")
    (found,) = problems_of(write(tmp_path, f'[api]\ntoken_file = "{tokens}"\n'))
    assert "holds no token" in found


def test_retention_ages(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [retention]
        observations = "2d"
        snapshots = 0
        events = "90d"
        deliveries = "1h"
        interval = "5m"
        batch_size = 50
        """,
    )
    r = load_settings(path, {}).retention
    assert (r.observations_s, r.snapshots_s, r.events_s, r.deliveries_s) == (
        172800.0,
        0.0,
        7776000.0,
        3600.0,
    )
    assert (r.interval_s, r.batch_size) == (300.0, 50)
    env = {
        "CONFERENCE_MONITOR_RETENTION_EVENTS": "30d",
        "CONFERENCE_MONITOR_RETENTION_ENABLED": "no",
    }
    r = load_settings(path, env).retention
    assert r.events_s == 30 * 86400 and not r.enabled


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('events = "30s"', "retention.events: must be 0 (keep forever) or at least 1h (got 30s)"),
        ('snapshots = "-1d"', "retention.snapshots: invalid duration"),
        ("batch_size = 0", "retention.batch_size: must be between 1 and 10000 (got 0)"),
        ('interval = "10ms"', "retention.interval: must be at least 1s"),
        ('deliveries = "forever"', "retention.deliveries: invalid duration"),
    ],
)
def test_retention_problems(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, f"[retention]\n{line}\n")
    (found,) = problems_of(path)
    assert found.startswith(f"{path}:2: {problem}")
