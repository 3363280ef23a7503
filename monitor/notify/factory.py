"""From validated notifier settings to notifier objects and their delivery policies.

The only place that reveals notifier secrets, and only to the objects that use them.
"""

from __future__ import annotations

import json
from typing import Any

from monitor.config_schema import NotifierSettings, Settings
from monitor.notify.base import Notifier
from monitor.notify.log import LogNotifier
from monitor.notify.msteams import msteams_notifier
from monitor.notify.pagerduty import pagerduty_notifier
from monitor.notify.retry import DeliveryPolicy
from monitor.notify.slack import slack_notifier
from monitor.notify.smtp import EmailNotifier
from monitor.notify.webhook import WebhookNotifier


def make_notifier(spec: NotifierSettings) -> Notifier:
    maker = _MAKERS.get(spec.type)
    return maker(spec) if maker is not None else LogNotifier(spec.name)


def delivery_policy(settings: Settings, name: str) -> DeliveryPolicy:
    d = settings.dispatch
    spec = next((n for n in settings.notifiers if n.name == name), None)
    return DeliveryPolicy(
        concurrency=spec.concurrency if spec is not None else DeliveryPolicy().concurrency,
        breaker_threshold=d.breaker_threshold,
        breaker_cooldown_s=d.breaker_cooldown_s,
        max_retry_after_s=d.max_retry_after_s,
        breaker_window_s=d.breaker_window_s,
    )


def _url(spec: NotifierSettings) -> tuple[str, bool]:
    """The URL to post to, and whether it is itself a secret (never shown)."""
    if spec.secret_url is not None:
        return spec.secret_url.reveal(), True
    assert spec.url, f"config validation guarantees {spec.name}'s url"
    return spec.url, False


def _webhook(spec: NotifierSettings) -> Notifier:
    url, secret_url = _url(spec)
    template: Any = json.loads(spec.template) if spec.template is not None else None
    return WebhookNotifier(
        spec.name,
        url,
        spec.secret.reveal() if spec.secret is not None and spec.sign else None,
        headers=dict(spec.headers),
        timeout_s=spec.timeout_s,
        template=template,
        url_is_secret=secret_url,
        pool_size=spec.concurrency,
    )


def _slack(spec: NotifierSettings) -> Notifier:
    url, _ = _url(spec)
    return slack_notifier(spec.name, url, timeout_s=spec.timeout_s, pool_size=spec.concurrency)


def _msteams(spec: NotifierSettings) -> Notifier:
    url, _ = _url(spec)
    return msteams_notifier(spec.name, url, timeout_s=spec.timeout_s, pool_size=spec.concurrency)


def _pagerduty(spec: NotifierSettings) -> Notifier:
    assert spec.routing_key is not None and spec.url, "config validation guarantees both"
    return pagerduty_notifier(
        spec.name,
        spec.url,
        spec.routing_key.reveal(),
        trigger_on=spec.trigger_on,
        severity=spec.severity,
        source=spec.source,
        timeout_s=spec.timeout_s,
        pool_size=spec.concurrency,
    )


def _email(spec: NotifierSettings) -> Notifier:
    assert spec.smtp_host and spec.smtp_port and spec.mail_from, "validated"
    return EmailNotifier(
        spec.name,
        spec.smtp_host,
        spec.smtp_port,
        mail_from=spec.mail_from,
        mail_to=spec.mail_to,
        tls=spec.tls,
        username=spec.username,
        password=spec.password.reveal() if spec.password is not None else None,
        timeout_s=spec.timeout_s,
        ca_file=spec.ca_file,
    )


_MAKERS = {
    "webhook": _webhook,
    "slack": _slack,
    "msteams": _msteams,
    "pagerduty": _pagerduty,
    "email": _email,
}


def describe(spec: NotifierSettings) -> str:
    """One line for `check`: where the notifier sends and how, secrets left out."""
    notifier = make_notifier(spec)  # builds it: a bad setting raises ValueError here
    try:
        where = getattr(notifier, "safe_url", None)
    finally:
        notifier.close()
    if spec.type == "log":
        return "one log line per event"
    if spec.type == "webhook":
        signed = "signed" if spec.sign else "UNSIGNED (sign = false)"
        shape = ", body from template" if spec.template else ""
        return f"{where}, {signed}{shape}, {spec.concurrency} at a time"
    if spec.type == "pagerduty":
        mode = (
            "started triggers, ended resolves" if spec.trigger_on == "started" else "ended triggers"
        )
        return f"{where}, {mode}, severity {spec.severity}, routing key set"
    if spec.type == "email":
        login = f"login {spec.username}" if spec.username else "no login"
        return f"{where} ({spec.tls}), {login}, to {len(spec.mail_to)} recipient(s)"
    return f"{where}, {spec.concurrency} at a time"
