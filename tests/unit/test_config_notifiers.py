"""Notifier types in the config: what each accepts, where its secrets come from, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.config import ConfigError, Secret, load_settings
from monitor.domain import EventType
from monitor.notify.factory import delivery_policy, describe
from tests.unit.test_config import WHSEC, credentials, problems_of, write

SLACK_URL = "https://hooks.slack.com/services/T0/B0/slack-secret-token"


def one(tmp_path: Path, body: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return load_settings(write(tmp_path, "[[notifiers]]\n" + body), environ=environ or {})


def problems(tmp_path: Path, body: str, environ: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, "[[notifiers]]\n" + body)
    return [p.removeprefix(f"{path}:") for p in problems_of(path, environ)]


def test_every_type_loads_with_its_secrets_from_where_they_are_kept(tmp_path: Path) -> None:
    folder = credentials(tmp_path, slack=SLACK_URL + "\n", smtp="smtp-password\n")
    path = write(
        tmp_path,
        f"""
        [dispatch]
        breaker_threshold = 7
        breaker_cooldown = "45s"
        max_retry_after = "10m"

        [[notifiers]]
        name = "chat"
        type = "slack"
        url_credential = "slack"
        concurrency = 2

        [[notifiers]]
        name = "teams"
        type = "msteams"
        url_env = "TEAMS_URL"

        [[notifiers]]
        name = "pager"
        type = "pagerduty"
        routing_key_env = "PD_KEY"
        trigger_on = "ended"
        severity = "critical"

        [[notifiers]]
        name = "mail"
        type = "email"
        smtp_host = "smtp.example.com"
        username = "monitor"
        password_credential = "smtp"
        from = "monitor@example.com"
        to = ["oncall@example.com"]

        [[notifiers]]
        name = "shaped"
        type = "webhook"
        url = "https://h.example/in"
        secret = "{WHSEC}"
        template = {{ text = "${{title}}", sid = "$conference_sid" }}

        [[notifiers]]
        name = "plain"
        type = "webhook"
        url = "http://127.0.0.1:9000/in"
        sign = false
        """,
    )
    env = {
        "CREDENTIALS_DIRECTORY": str(folder),
        "TEAMS_URL": "https://example.webhook.office.com/workflows/teams-secret",
        "PD_KEY": "pd-routing-key-0123",
    }
    settings = load_settings(path, environ=env)
    chat, teams, pager, mail, shaped, plain = settings.notifiers
    assert chat.secret_url == Secret(SLACK_URL) and chat.url is None and chat.concurrency == 2
    assert teams.secret_url is not None and teams.secret_url.reveal().endswith("teams-secret")
    assert pager.routing_key == Secret("pd-routing-key-0123")
    assert pager.url == "https://events.pagerduty.com/v2/enqueue"
    assert pager.events is not None and EventType.STARTED not in pager.events
    assert EventType.ENDED in pager.events and pager.severity == "critical"
    assert (mail.smtp_port, mail.tls, mail.password) == (587, "starttls", Secret("smtp-password"))
    assert mail.mail_to == ("oncall@example.com",) and mail.mail_from == "monitor@example.com"
    assert json.loads(shaped.template or "") == {"text": "${title}", "sid": "$conference_sid"}
    assert plain.sign is False and plain.secret is None
    policy = delivery_policy(settings, "chat")
    assert (policy.concurrency, policy.breaker_threshold) == (2, 7)
    assert (policy.breaker_cooldown_s, policy.max_retry_after_s) == (45.0, 600.0)
    shown = repr(settings) + "".join(describe(n) for n in settings.notifiers)
    for secret in ("slack-secret-token", "teams-secret", "pd-routing-key", "smtp-password"):
        assert secret not in shown
    assert "UNSIGNED" in describe(plain) and "hooks.slack.com/…" in describe(chat)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('name = "c"\ntype = "slack"\n', "1: notifiers[0].url: missing: a url"),
        (
            'name = "c"\ntype = "slack"\nurl_env = "NOPE"\n',
            "4: notifiers[0].url_env: environment variable 'NOPE' is not set",
        ),
        (
            f'name = "c"\ntype = "slack"\nurl_env = "{SLACK_URL}"\n',
            "4: notifiers[0].url_env: names where the secret is kept",
        ),
        (
            'name = "c"\ntype = "msteams"\nurl = "ftp://x.example/"\n',
            "4: notifiers[0].url: must be an http:// or https:// URL",
        ),
        (
            'name = "p"\ntype = "pagerduty"\n',
            "1: notifiers[0].routing_key: missing: an Events API v2 routing key",
        ),
        (
            'name = "p"\ntype = "pagerduty"\nrouting_key = "k"\nseverity = "high"\n',
            "5: notifiers[0].severity: must be one of critical, error, warning, info",
        ),
        (
            'name = "p"\ntype = "pagerduty"\nrouting_key = "k"\ntrigger_on = "ended"\n'
            'events = ["conference.started"]\n',
            "6: notifiers[0].events: conference.started cannot be sent with trigger_on",
        ),
        (
            'name = "m"\ntype = "email"\nsmtp_host = "h"\nfrom = "a@b.c"\nto = ["d@e.f"]\n'
            'username = "u"\n',
            "7: notifiers[0].username: username and password go together",
        ),
        (
            'name = "m"\ntype = "email"\nsmtp_host = "h"\nfrom = "a@b.c"\nto = ["d@e.f"]\n'
            'username = "u"\npassword = "pw"\ntls = "none"\n',
            "8: notifiers[0].password: would be sent unencrypted",
        ),
        (
            'name = "m"\ntype = "email"\nsmtp_host = "h"\nfrom = "a@b.c"\nto = ["x\\ny@e.f"]\n',
            "6: notifiers[0].to: not a plain e-mail address",
        ),
        (
            'name = "w"\ntype = "webhook"\nurl = "https://h.example/"\nsign = false\n'
            f'secret = "{WHSEC}"\n',
            "6: notifiers[0].secret: sign = false: a signing secret would not be used",
        ),
        (
            'name = "w"\ntype = "webhook"\nurl = "https://h.example/"\nsign = false\n'
            'template = { a = "${password}" }\n',
            "6: notifiers[0].template: a: unknown placeholder password",
        ),
        (
            'name = "w"\ntype = "webhook"\nurl = "https://h.example/"\nsign = false\n'
            'template = { a = "$" }\n',
            "6: notifiers[0].template: a: a '$' that starts no ${name}",
        ),
        (
            'name = "l"\ntype = "log"\nconcurrency = 0\n',
            "4: notifiers[0].concurrency: must be between 1 and 64",
        ),
        (
            'name = "l"\ntype = "log"\nrouting_key = "k"\n',
            "4: notifiers[0].routing_key: only applies to pagerduty notifiers",
        ),
    ],
)
def test_each_new_notifier_problem(tmp_path: Path, body: str, expected: str) -> None:
    found = problems(tmp_path, body)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_a_webhook_without_a_secret_must_say_sign_false(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, 'name = "w"\ntype = "webhook"\nurl = "https://h.example/"\n')
    assert "unsigned webhooks cannot be trusted" in problem and "sign = false" in problem


def test_a_secret_webhook_url_from_the_environment_is_kept_secret(tmp_path: Path) -> None:
    env = {"HOOK_URL": "https://h.example/in?token=url-token-123"}
    body = 'name = "w"\ntype = "webhook"\nurl_env = "HOOK_URL"\nsign = false\n'
    (hook,) = one(tmp_path, body, env).notifiers
    assert hook.url is None and hook.secret_url == Secret(env["HOOK_URL"])
    assert "url-token-123" not in describe(hook) + repr(hook)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("breaker_threshold", "-1", "must be 0 (never open) or more"),
        ("breaker_cooldown", "0s", "must be more than 0"),
        ("max_retry_after", "0s", "must be more than 0"),
    ],
)
def test_dispatch_thresholds_are_checked(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings(environ={f"CONFERENCE_MONITOR_DISPATCH_{key.upper()}": value})
    assert f"dispatch.{key}: {expected}" in str(bad.value)
