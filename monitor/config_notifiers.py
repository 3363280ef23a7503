"""Every `[[notifiers]]` table: which keys each type takes, where secrets come from, the checks.

Secrets (a webhook's signing secret, a Slack or Teams URL, a PagerDuty routing key,
an SMTP password) come from exactly one of `KEY`, `KEY_env` or `KEY_credential`
(a file in systemd's $CREDENTIALS_DIRECTORY), and no message ever quotes one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from monitor.config_schema import (
    DEFAULT_NOTIFIER_CONCURRENCY,
    DEFAULT_WEBHOOK_TIMEOUT_S,
    NOTIFIER_KEYS,
    FrozenMapping,
    NotifierSettings,
    Origin,
    Problems,
    RawValue,
    Secret,
    SectionValues,
    url_problem,
)
from monitor.domain import END_REASONS, EVENT_TYPES, NOTIFIABLE_TYPES, EventType
from monitor.notify import template as templates

TYPES = ("log", "webhook", "slack", "msteams", "pagerduty", "email")
COMMON_KEYS = frozenset(
    {"name", "type", "events", "reasons", "friendly_names", "include_first_seen", "concurrency"}
)
_URL = ("url", "url_env", "url_credential")
_SECRET = ("secret", "secret_env", "secret_credential")
_ROUTING = ("routing_key", "routing_key_env", "routing_key_credential")
_PASSWORD = ("password", "password_env", "password_credential")
TYPE_KEYS: dict[str, frozenset[str]] = {
    "log": frozenset(),
    "webhook": frozenset({*_URL, *_SECRET, "headers", "timeout", "sign", "template"}),
    "slack": frozenset({*_URL, "timeout"}),
    "msteams": frozenset({*_URL, "timeout"}),
    "pagerduty": frozenset({"url", *_ROUTING, "severity", "trigger_on", "source", "timeout"}),
    "email": frozenset(
        {"smtp_host", "smtp_port", "tls", "username", *_PASSWORD, "from", "to", "timeout"}
        | {"ca_file"}
    ),
}
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")
TLS_MODES = ("starttls", "implicit", "none")
SMTP_PORTS = {"starttls": 587, "implicit": 465, "none": 25}
MAX_CONCURRENCY = 64
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Set by the signer; a configured value would break verification.
_SIGNING_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,127}$")
_ADDRESS_RE = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")


class Context(Protocol):
    """What the loader hands over: the environment, the problem list, file positions."""

    environ: Mapping[str, str]
    problems: Problems

    def origin(self, table: tuple[str | int, ...], key: str | None = None) -> Origin: ...


def notifier_settings(tables: list[dict[str, Any]], ctx: Context) -> tuple[NotifierSettings, ...]:
    built: list[NotifierSettings] = []
    first_index: dict[str, int] = {}
    for i, table in enumerate(tables):
        s = _load(i, table, ctx)
        _check_common(s)
        extra = _check_type(s, ctx)
        name = s.get("name")
        if isinstance(name, str) and name in first_index:
            s.problem("name", f"duplicate name {name!r} (also notifiers[{first_index[name]}])")
        elif isinstance(name, str):
            first_index[name] = i
        if not s.failed:
            built.append(_settings(s, extra))
    return tuple(built)


def _load(i: int, table: dict[str, Any], ctx: Context) -> SectionValues:
    from monitor.config import _suggest  # the shared "did you mean"

    s = SectionValues(f"notifiers[{i}]", ctx.problems, ctx.origin(("notifiers", i)))
    raws: dict[str, RawValue] = {}
    for key, value in table.items():
        origin = ctx.origin(("notifiers", i), key)
        if key in NOTIFIER_KEYS:
            raws[key] = RawValue(value, origin)
        else:
            s.origins[key] = origin
            s.problem(key, f"unknown key{_suggest(key, NOTIFIER_KEYS)}")
    return s.load(NOTIFIER_KEYS, raws)


def _check_common(s: SectionValues) -> None:
    """Name, type, filters, concurrency, and keys that belong to another type."""
    if "name" not in s.origins:
        s.problem("name", "missing: every notifier needs a unique name")
    elif s.get("name") == "":
        s.problem("name", "must not be empty")
    kind = s.get("type")
    if "type" not in s.origins:
        s.problem("type", f"missing: one of {', '.join(TYPES)}")
    elif kind is not None and kind not in TYPES:
        s.problem("type", f"must be one of {', '.join(TYPES)} (got {kind!r})")
    _check_filters(s)
    count = s.get("concurrency", DEFAULT_NOTIFIER_CONCURRENCY)
    if not 1 <= count <= MAX_CONCURRENCY:
        s.problem("concurrency", f"must be between 1 and {MAX_CONCURRENCY} (got {count})")
    if kind in TYPE_KEYS:
        for key in sorted(set(s.origins) - COMMON_KEYS - TYPE_KEYS[kind]):
            if key in NOTIFIER_KEYS:
                owners = [t for t, keys in TYPE_KEYS.items() if key in keys]
                s.problem(key, f"only applies to {', '.join(owners)} notifiers")
    if s.get("timeout") == 0:
        s.problem("timeout", "must be more than 0")


def _check_filters(s: SectionValues) -> None:
    for key, valid, what in (
        ("events", EVENT_TYPES, "event type"),
        ("reasons", END_REASONS, "end reason"),
    ):
        chosen = s.get(key)
        if chosen is None:
            continue
        unknown = [repr(v) for v in chosen if v not in valid]
        if unknown:
            s.problem(key, f"unknown {what} {', '.join(unknown)}; valid: {', '.join(valid)}")
        elif not chosen:
            s.problem(key, "is empty, so nothing would match; leave it out to match the default")
    if "" in s.get("friendly_names", ()):
        s.problem("friendly_names", "patterns must not be empty")


def _check_type(s: SectionValues, ctx: Context) -> dict[str, Any]:
    """The type's own checks; the secrets it resolved and values it derived."""
    kind = s.get("type")
    if kind == "webhook":
        return _webhook(s, ctx)
    if kind in ("slack", "msteams"):
        return {"secret_url": _url(s, ctx, required=True, secret=True)}
    if kind == "pagerduty":
        return _pagerduty(s, ctx)
    if kind == "email":
        return _email(s, ctx)
    return {}


def _url(s: SectionValues, ctx: Context, *, required: bool, secret: bool) -> Secret | None:
    """The URL from `url`, `url_env` or `url_credential`; checked, never quoted."""
    given = _one_of(s, _URL, required=required, what="a url")
    if given is None:
        return None
    value = s.values[given] if given == "url" else _secret_text(s, given, ctx.environ)
    if value is not None and (why := url_problem(value, bare=False)):
        s.problem(given, why if given == "url" else f"the URL it names {why}")
        return None
    return None if value is None else Secret(value)


def _webhook(s: SectionValues, ctx: Context) -> dict[str, Any]:
    url = _url(s, ctx, required=True, secret=False)
    from_env = "url" not in s.origins
    for name, value in s.get("headers", {}).items():
        if not _HEADER_NAME_RE.fullmatch(name):
            s.problem("headers", f"{name!r} is not a valid header name")
        elif name.lower() in _SIGNING_HEADERS:
            s.problem("headers", f"{name!r} is set by the signature and cannot be overridden")
        elif "\r" in value or "\n" in value:
            s.problem("headers", f"the value of {name!r} contains a line break")
    template = s.get("template")
    if template is not None:
        for why in templates.problems(template):
            s.problem("template", why.removeprefix("template").lstrip(".: ") or why)
    signing = s.get("sign", True)
    secret = _signing_secret(s, ctx) if signing else None
    if not signing and (given := [k for k in _SECRET if k in s.origins]):
        s.problem(given[0], "sign = false: a signing secret would not be used; remove one")
    return {
        "url": None if url is None or from_env else url.reveal(),
        "secret_url": url if from_env else None,
        "secret": secret,
        "template": None if template is None else json.dumps(template, sort_keys=True),
    }


def _signing_secret(s: SectionValues, ctx: Context) -> Secret | None:
    given = _one_of(s, _SECRET, required=False, what="a signing secret")
    if given is None and not s.failed:
        s.problem(
            "secret",
            "missing: unsigned webhooks cannot be trusted; set secret, secret_env or "
            "secret_credential to a whsec_ signing secret (or `sign = false` if the "
            "receiver cannot check signatures)",
        )
    if given is None:
        return None
    value = _secret_text(s, given, ctx.environ)
    if value is not None and (why := _whsec_problem(value)):
        s.problem(given, why)
        return None
    return None if value is None else Secret(value)


def _pagerduty(s: SectionValues, ctx: Context) -> dict[str, Any]:
    url = s.get("url")
    if url is not None and (why := url_problem(url, bare=False)):
        s.problem("url", why)
    key = None
    given = _one_of(s, _ROUTING, required=True, what="an Events API v2 routing key")
    if given is not None:
        value = _secret_text(s, given, ctx.environ)
        if value is not None and (not value or any(c.isspace() for c in value)):
            s.problem(given, "the routing key must be one word (the integration key)")
        elif value is not None:
            key = Secret(value)
    _choice(s, "severity", SEVERITIES)
    _choice(s, "trigger_on", ("started", "ended"))
    events = s.get("events")
    if s.get("trigger_on") == "ended" and events is not None and EventType.STARTED in events:
        s.problem("events", "conference.started cannot be sent with trigger_on = 'ended'")
    if s.get("source") == "":
        s.problem("source", "must not be empty")
    return {"routing_key": key, "url": url or PAGERDUTY_URL}


def _email(s: SectionValues, ctx: Context) -> dict[str, Any]:
    if not s.get("smtp_host"):
        s.problem("smtp_host", "missing: the SMTP server to send through")
    _choice(s, "tls", TLS_MODES)
    port = s.get("smtp_port")
    if port is not None and not 1 <= port <= 65535:
        s.problem("smtp_port", f"must be a TCP port, 1 to 65535 (got {port})")
    password = None
    given = _one_of(s, _PASSWORD, required=False, what="a password")
    if s.given("username") != (given is not None):
        s.problem("username" if s.given("username") else given or "password", _PAIRED)
    elif given is not None:
        if s.get("tls") == "none":
            s.problem(given, "would be sent unencrypted: use tls = 'starttls' or 'implicit'")
        value = _secret_text(s, given, ctx.environ)
        password = None if value is None else Secret(value)
    for key, addresses in (("from", [s.get("from")]), ("to", s.get("to") or [])):
        bad = [a for a in addresses if a is not None and not _ADDRESS_RE.match(a)]
        if bad:
            s.problem(key, f"not a plain e-mail address: {', '.join(map(repr, bad))}")
    if "from" not in s.origins:
        s.problem("from", "missing: the sender address")
    if not s.get("to"):
        s.problem("to", "missing: at least one recipient address")
    ca_file = s.get("ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        s.problem("ca_file", f"file {ca_file!r} does not exist")
    return {"password": password}


_PAIRED = "username and password go together: give both or neither"


def _choice(s: SectionValues, key: str, valid: tuple[str, ...]) -> None:
    value = s.get(key)
    if value is not None and value not in valid:
        s.problem(key, f"must be one of {', '.join(valid)} (got {value!r})")


def _one_of(s: SectionValues, keys: tuple[str, ...], *, required: bool, what: str) -> str | None:
    """The one key of `keys` given (checked typed); None if none or several."""
    given = [k for k in keys if k in s.origins]
    if len(given) > 1:
        s.problem(given[1], f"give only one of {', '.join(keys)} (found {', '.join(given)})")
        return None
    if not given:
        if required:
            s.problem(keys[0], f"missing: {what} ({', '.join(keys)})")
        return None
    return given[0] if given[0] in s.values else None  # mistyped: already reported


def _whsec_problem(value: str) -> str | None:
    """Standard Webhooks secrets are `whsec_` + base64 of the HMAC key."""
    if not value.startswith("whsec_"):
        return "the signing secret must start with 'whsec_' (Standard Webhooks)"
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return "the signing secret is not valid base64 after 'whsec_'"
    return None if key else "the signing secret is empty after 'whsec_'"


def _secret_text(s: SectionValues, key: str, environ: Mapping[str, str]) -> str | None:
    """The value behind `key`: inline, from an environment variable or a credential file."""
    source = s.values[key]
    if isinstance(source, Secret) or source is None:
        if source is None:
            s.problem(key, "must not be empty")
        return None if source is None else source.reveal()
    if not (key.endswith("_env") or key.endswith("_credential")):
        return str(source)
    if _looks_like_a_secret(source):
        s.problem(
            key,
            "names where the secret is kept; the value given looks like a secret itself "
            "(not shown): put an inline value in the key without _env or _credential",
        )
        return None
    if key.endswith("_env"):
        if not environ.get(source):
            s.problem(key, f"environment variable {source!r} is not set", secret=True)
        return environ.get(source) or None
    return _read_credential(s, key, source, environ)


def _looks_like_a_secret(name: str) -> bool:
    """A variable or credential name never starts with whsec_ nor holds odd characters;
    refusing to echo such a value keeps a secret pasted into the wrong key out of logs."""
    return name.startswith("whsec_") or not _NAME_RE.match(name or "_")


def _read_credential(
    s: SectionValues, key: str, name: str, environ: Mapping[str, str]
) -> str | None:
    folder = environ.get("CREDENTIALS_DIRECTORY")
    if not name or "/" in name or name in (".", ".."):
        s.problem(key, "must be a plain file name in $CREDENTIALS_DIRECTORY")
    elif not folder:
        s.problem(
            key,
            f"credential {name!r} needs $CREDENTIALS_DIRECTORY, "
            "which is not set (systemd LoadCredential=)",
            secret=True,
        )
    elif not (path := Path(folder) / name).is_file():
        s.problem(key, f"credential file {str(path)!r} does not exist", secret=True)
    else:
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            s.problem(key, f"cannot read credential file {str(path)!r}", secret=True)
    return None


def _settings(s: SectionValues, extra: dict[str, Any]) -> NotifierSettings:
    def given(key: str, default: Any) -> Any:
        return s.get(key) if s.given(key) else default

    kind = s.get("type")
    events = frozenset(s.get("events")) if s.given("events") else None
    if kind == "pagerduty" and given("trigger_on", "started") == "ended" and events is None:
        events = frozenset(NOTIFIABLE_TYPES - {EventType.STARTED})
    tls = given("tls", "starttls")
    values: dict[str, Any] = dict(
        name=s.get("name"),
        type=kind,
        events=events,
        reasons=frozenset(s.get("reasons")) if s.given("reasons") else None,
        friendly_names=given("friendly_names", ()),
        include_first_seen=given("include_first_seen", False),
        url=s.get("url"),
        headers=given("headers", FrozenMapping()),
        timeout_s=given("timeout", DEFAULT_WEBHOOK_TIMEOUT_S),
        concurrency=given("concurrency", DEFAULT_NOTIFIER_CONCURRENCY),
        sign=given("sign", True),
        severity=given("severity", "error"),
        trigger_on=given("trigger_on", "started"),
        source=s.get("source"),
        smtp_host=s.get("smtp_host"),
        smtp_port=given("smtp_port", SMTP_PORTS.get(tls)) if kind == "email" else None,
        tls=tls,
        username=s.get("username"),
        mail_from=s.get("from"),
        mail_to=tuple(given("to", ())),
        ca_file=s.get("ca_file"),
    )
    values.update(extra)
    return NotifierSettings(**values)
