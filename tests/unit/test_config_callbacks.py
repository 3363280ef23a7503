"""The [callbacks] section: defaults, sizes, and what it needs from [http] and [twilio]."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigError, load_settings

TWILIO = f'[twilio]\naccount_sid = "AC{"a" * 32}"\nauth_token = "tok"\n'


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_settings(path, env or {})


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_defaults_are_off(tmp_path: Path) -> None:
    settings = load(tmp_path, TWILIO)
    cb = settings.callbacks  # type: ignore[attr-defined]
    assert not cb.enabled and cb.path == "/twilio/conference-events"
    assert cb.public_url is None and not cb.watch_unknown and cb.max_body == 65536


def test_a_full_section(tmp_path: Path) -> None:
    text = TWILIO + (
        '[http]\nlisten = "127.0.0.1:0"\n[callbacks]\nenabled = true\npath = "/cb"\n'
        'public_url = "https://mon.example.com/cb"\nwatch_unknown = true\nmax_body = "16KiB"\n'
    )
    cb = load(tmp_path, text).callbacks  # type: ignore[attr-defined]
    assert (cb.enabled, cb.path, cb.public_url, cb.watch_unknown, cb.max_body) == (
        True,
        "/cb",
        "https://mon.example.com/cb",
        True,
        16384,
    )


def test_enabled_without_a_listener_names_the_key(tmp_path: Path) -> None:
    found = problems(tmp_path, TWILIO + "[callbacks]\nenabled = true\n")
    assert "callbacks.enabled: needs http.listen" in found
    assert "c.toml:5:" in found  # the line of `enabled`


def test_enabled_without_an_auth_token(tmp_path: Path) -> None:
    text = (
        f'[twilio]\naccount_sid = "AC{"a" * 32}"\napi_key = "SK{"b" * 32}"\napi_secret = "s"\n'
        '[http]\nlisten = "127.0.0.1:0"\n[callbacks]\nenabled = true\n'
    )
    assert "callbacks.enabled: needs twilio.auth_token" in problems(tmp_path, text)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('path = "cb"', "callbacks.path: must be a URL path"),
        ('path = "/metrics"', "callbacks.path: must not be"),
        ('path = "/api/v1/x"', "callbacks.path: must not be"),
        ('public_url = "ftp://x"', "callbacks.public_url: must be an http"),
        ('max_body = "10MiB"', "callbacks.max_body: must be between"),
        ('max_body = "lots"', "callbacks.max_body: invalid size"),
        ("watch_unknown = 1", "callbacks.watch_unknown: expected true or false"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    text = TWILIO + f'[http]\nlisten = "127.0.0.1:0"\n[callbacks]\nenabled = true\n{line}\n'
    assert message in problems(tmp_path, text)


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "CONFERENCE_MONITOR_CALLBACKS_ENABLED": "true",
        "CONFERENCE_MONITOR_HTTP_LISTEN": "127.0.0.1:0",
        "CONFERENCE_MONITOR_CALLBACKS_MAX_BODY": "8KiB",
    }
    cb = load(tmp_path, TWILIO, env).callbacks  # type: ignore[attr-defined]
    assert cb.enabled and cb.max_body == 8192
