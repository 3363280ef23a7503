"""Commands that never talk to Twilio or a webhook load the config without its secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigError, load_settings

CONFIG = """
[twilio]
account_sid = "AC00000000000000000000000000000000"

[[notifiers]]
name = "hook"
type = "webhook"
url = "https://hooks.example.com/x"
secret_credential = "WEBHOOK_SECRET"

[[notifiers]]
name = "env-hook"
type = "webhook"
url = "https://hooks.example.com/y"
secret_env = "HOOK_SECRET"
"""


def test_missing_secrets_stop_only_commands_that_need_them(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert len(caught.value.problems) == 3
    settings = load_settings(path, {}, require_secrets=False)
    assert settings.twilio.account_sid == "AC00000000000000000000000000000000"
    assert settings.twilio.basic_auth() is None
    assert [(n.name, n.secret) for n in settings.notifiers] == [("hook", None), ("env-hook", None)]


def test_other_problems_still_stop_them(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + '\n[polling]\ninterval = "soon"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {}, require_secrets=False)
    assert [p for p in caught.value.problems if "polling.interval" in p]
    assert not [p for p in caught.value.problems if "WEBHOOK_SECRET" in p]


def test_a_secret_that_is_present_is_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    (tmp_path / "WEBHOOK_SECRET").write_text("not-a-whsec")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "HOOK_SECRET": "whsec_QUJDRA=="}
    with pytest.raises(ConfigError, match="must start with 'whsec_'"):
        load_settings(path, environ, require_secrets=False)
