"""What a valid configuration is: the settings values, the keys and types, the rules.

Everything here is pure: `monitor.config` gathers values from the file, the
environment and credential files, and hands them to these types and checks.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from monitor.domain import ACCOUNT_SID_RE, API_KEY_SID_RE
from monitor.durations import format_duration, parse_duration
from monitor.sizes import parse_size
from monitor.twilio.hosts import default_edge

MASK = "********"

DEFAULT_CONNECT_TIMEOUT_S = 3.05
DEFAULT_READ_TIMEOUT_S = 5.0
DEFAULT_REQUEST_DEADLINE_S = 4.0  # a whole Twilio call: attempts, bodies, retries, waits
DEFAULT_CONCURRENCY = 16
DEFAULT_POLL_INTERVAL_S = 5.0
DEFAULT_POLL_JITTER_S = 0.5
DEFAULT_NOT_FOUND_GRACE_S = 10.0
DEFAULT_POLL_BATCH_SIZE = 500
DEFAULT_DISPATCH_INTERVAL_S = 1.0
DEFAULT_DISPATCH_LEASE_S = 60.0
DEFAULT_GIVE_UP_AFTER_S = 25 * 3600.0  # past a day, so a receiver down overnight misses nothing
DEFAULT_DISPATCH_BATCH_SIZE = 100
DEFAULT_WEBHOOK_TIMEOUT_S = 10.0
DEFAULT_NOTIFIER_CONCURRENCY = 4
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_COOLDOWN_S = 30.0
DEFAULT_BREAKER_WINDOW_S = 10.0
DEFAULT_MAX_RETRY_AFTER_S = 3600.0
MIN_INTERVAL_S = 0.1

_EDGE_RE = re.compile(r"[a-z0-9-]+")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Secret:
    """A secret string that shows as "********" in str, repr, logs and errors.

    Only `.reveal()` gives the value, so leaking it takes a deliberate call.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # copy and pickle go through here; the default would hit __setattr__.
        return (Secret, (self._value,))


class FrozenMapping(Mapping[str, str]):
    """A read-only string mapping that, unlike MappingProxyType, can be copied and pickled."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str | None = None
    auth_token: Secret | None = None
    api_key: str | None = None
    api_secret: Secret | None = None
    edge: str | None = None
    region: str | None = None
    base_url: str | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    request_deadline_s: float = DEFAULT_REQUEST_DEADLINE_S
    concurrency: int = DEFAULT_CONCURRENCY  # max simultaneous requests to Twilio (1..100)
    max_requests_per_second: float = 0.0  # 0 = unlimited

    def basic_auth(self) -> tuple[str, str] | None:
        """HTTP Basic credentials: an API key pair is preferred over the auth token."""
        if self.api_key and self.api_secret:
            return (self.api_key, self.api_secret.reveal())
        if self.account_sid and self.auth_token:
            return (self.account_sid, self.auth_token.reveal())
        return None


@dataclass(frozen=True, repr=False)
class DatabaseSettings:
    url: str

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and repr."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            return "<unparseable database url>"

    def __repr__(self) -> str:
        return f"DatabaseSettings(url={self.safe_url!r})"


@dataclass(frozen=True)
class PollingSettings:
    interval_s: float = DEFAULT_POLL_INTERVAL_S
    jitter_s: float = DEFAULT_POLL_JITTER_S
    not_found_grace_s: float = DEFAULT_NOT_FOUND_GRACE_S
    use_list: bool = True  # observe many active conferences with list calls, not one fetch each
    discover: bool = False  # auto-watch conferences found by listing
    batch_size: int = DEFAULT_POLL_BATCH_SIZE  # max watches claimed per poll tick


@dataclass(frozen=True)
class DispatchSettings:
    interval_s: float = DEFAULT_DISPATCH_INTERVAL_S
    lease_s: float = DEFAULT_DISPATCH_LEASE_S
    give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S
    batch_size: int = DEFAULT_DISPATCH_BATCH_SIZE
    # Waits between delivery attempts; the last repeats until give_up_after.
    retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    # Consecutive failed attempts that open a notifier's circuit (0: never), how long it
    # stays open before one probe, and the longest Retry-After pause honoured.
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    # ... and only once the failures have gone on this long (a burst is not an outage).
    breaker_window_s: float = DEFAULT_BREAKER_WINDOW_S


def split_host_port(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError if malformed."""
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:8080 (got {listen!r})")
    return host, int(port_text)


@dataclass(frozen=True)
class HttpSettings:
    listen: str | None = None  # "host:port"; None keeps the endpoint off

    @property
    def enabled(self) -> bool:
        return self.listen is not None

    @property
    def host(self) -> str:
        return split_host_port(self._listen())[0]

    @property
    def port(self) -> int:
        return split_host_port(self._listen())[1]

    def _listen(self) -> str:
        if self.listen is None:
            raise ValueError("http.listen is not set: the HTTP endpoint is off")
        return self.listen


DEFAULT_CALLBACK_PATH = "/twilio/conference-events"
DEFAULT_CALLBACK_MAX_BODY = 64 * 1024
# Paths the listener already serves: a callback path must not shadow them.
_RESERVED_PATHS = ("/healthz", "/readyz", "/metrics", "/api/", "/ui")


@dataclass(frozen=True)
class CallbacksSettings:
    """Twilio status callbacks on the [http] listener (signed with [twilio] auth_token)."""

    enabled: bool = False
    path: str = DEFAULT_CALLBACK_PATH
    public_url: str | None = None  # the URL Twilio calls, as signed; else rebuilt from Host
    watch_unknown: bool = False  # a signed callback for an unwatched conference watches it
    max_body: int = DEFAULT_CALLBACK_MAX_BODY


@dataclass(frozen=True)
class ApiSettings:
    """The history API and web view on the [http] listener, and who may read them."""

    enabled: bool = True
    allow_loopback: bool = False  # loopback clients need no token (a local proxy is loopback too)
    # sha256 hex digests of accepted bearer tokens: from `token_sha256`, `token_file`
    # and `token_credential`, assembled by monitor.config. Never the tokens themselves.
    token_hashes: frozenset[str] = field(default=frozenset(), repr=False)


DAY_S = 86400.0


@dataclass(frozen=True)
class RetentionSettings:
    """How long history is kept; an age of 0 keeps that kind of row forever."""

    enabled: bool = True
    observations_s: float = 7 * DAY_S  # snapshots that recorded no status change
    snapshots_s: float = 30 * DAY_S  # a finished conference's snapshots between first and last
    events_s: float = 400 * DAY_S  # events, then whatever is left of the conference
    deliveries_s: float = 30 * DAY_S  # finished deliveries and their attempts
    interval_s: float = 600.0
    batch_size: int = 200


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "plain"  # plain | json
    level: str = "INFO"


@dataclass(frozen=True)
class NotifierSettings:
    name: str
    type: str  # log | webhook | slack | msteams | pagerduty | email
    events: frozenset[str] | None = None  # None = the default notifiable set
    reasons: frozenset[str] | None = None  # end reasons; None = all
    friendly_names: tuple[str, ...] = ()  # fnmatch glob patterns; empty = all
    include_first_seen: bool = False
    url: str | None = None  # a URL that may be shown (webhook, pagerduty override)
    secret: Secret | None = None  # the webhook's whsec_ signing secret
    # Header values are often bearer tokens: kept out of repr.
    headers: Mapping[str, str] = field(default_factory=FrozenMapping, repr=False)
    timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    concurrency: int = DEFAULT_NOTIFIER_CONCURRENCY
    secret_url: Secret | None = None  # a URL that is itself the credential (Slack, Teams)
    sign: bool = True
    template: str | None = None  # webhook body template, as canonical JSON text
    routing_key: Secret | None = None  # PagerDuty
    severity: str = "error"
    trigger_on: str = "started"  # started: started triggers, ended resolves | ended
    source: str | None = None
    smtp_host: str | None = None  # email
    smtp_port: int | None = None
    tls: str = "starttls"  # starttls | implicit | none
    username: str | None = None
    password: Secret | None = None
    mail_from: str | None = None
    mail_to: tuple[str, ...] = ()
    ca_file: str | None = None


@dataclass(frozen=True)
class Settings:
    twilio: TwilioSettings
    database: DatabaseSettings
    polling: PollingSettings
    dispatch: DispatchSettings
    http: HttpSettings
    logging: LoggingSettings
    notifiers: tuple[NotifierSettings, ...] = ()
    source: Path | None = None  # the file it came from
    api: ApiSettings = field(default_factory=ApiSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    callbacks: CallbacksSettings = field(default_factory=CallbacksSettings)


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds every reason, one line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


Kind = Literal[
    "str",
    "opt_str",
    "secret",
    "duration",
    "durations",
    "int",
    "float",
    "bool",
    "list",
    "table",
    "data",
    "size",
]


@dataclass(frozen=True)
class Key:
    """One accepted key: how its value is read, and the settings attribute it fills."""

    kind: Kind
    attr: str


def _keys(**spec: tuple[Kind, str]) -> dict[str, Key]:
    return {name: Key(kind, attr) for name, (kind, attr) in spec.items()}


SECTIONS: dict[str, dict[str, Key]] = {
    "twilio": _keys(
        account_sid=("opt_str", "account_sid"),
        auth_token=("secret", "auth_token"),
        api_key=("opt_str", "api_key"),
        api_secret=("secret", "api_secret"),
        edge=("opt_str", "edge"),
        region=("opt_str", "region"),
        base_url=("opt_str", "base_url"),
        connect_timeout=("duration", "connect_timeout_s"),
        read_timeout=("duration", "read_timeout_s"),
        request_deadline=("duration", "request_deadline_s"),
        concurrency=("int", "concurrency"),
        max_requests_per_second=("float", "max_requests_per_second"),
    ),
    "database": _keys(url=("str", "url")),
    "polling": _keys(
        interval=("duration", "interval_s"),
        jitter=("duration", "jitter_s"),
        not_found_grace=("duration", "not_found_grace_s"),
        use_list=("bool", "use_list"),
        discover=("bool", "discover"),
        batch_size=("int", "batch_size"),
    ),
    "dispatch": _keys(
        interval=("duration", "interval_s"),
        lease=("duration", "lease_s"),
        give_up_after=("duration", "give_up_after_s"),
        batch_size=("int", "batch_size"),
        retry_delays=("durations", "retry_delays_s"),
        breaker_threshold=("int", "breaker_threshold"),
        breaker_cooldown=("duration", "breaker_cooldown_s"),
        max_retry_after=("duration", "max_retry_after_s"),
        breaker_window=("duration", "breaker_window_s"),
    ),
    "http": _keys(listen=("opt_str", "listen")),
    "logging": _keys(format=("str", "format"), level=("str", "level")),
    "api": _keys(
        enabled=("bool", "enabled"),
        allow_loopback=("bool", "allow_loopback"),
        token_sha256=("list", "token_sha256"),
        token_file=("opt_str", "token_file"),
        token_credential=("opt_str", "token_credential"),
    ),
    "retention": _keys(
        enabled=("bool", "enabled"),
        observations=("duration", "observations_s"),
        snapshots=("duration", "snapshots_s"),
        events=("duration", "events_s"),
        deliveries=("duration", "deliveries_s"),
        interval=("duration", "interval_s"),
        batch_size=("int", "batch_size"),
    ),
    "callbacks": _keys(
        enabled=("bool", "enabled"),
        path=("str", "path"),
        public_url=("opt_str", "public_url"),
        watch_unknown=("bool", "watch_unknown"),
        max_body=("size", "max_body"),
    ),
}
# Keys read by monitor.config to build a setting, not copied into the dataclass.
ASSEMBLED_KEYS = {"api": ("token_sha256", "token_file", "token_credential")}

NOTIFIER_KEYS: dict[str, Key] = _keys(
    name=("str", "name"),
    type=("str", "type"),
    events=("list", "events"),
    reasons=("list", "reasons"),
    friendly_names=("list", "friendly_names"),
    include_first_seen=("bool", "include_first_seen"),
    concurrency=("int", "concurrency"),
    url=("str", "url"),
    url_env=("str", "url_env"),
    url_credential=("str", "url_credential"),
    secret=("secret", "secret"),
    secret_env=("str", "secret_env"),
    secret_credential=("str", "secret_credential"),
    headers=("table", "headers"),
    timeout=("duration", "timeout_s"),
    sign=("bool", "sign"),
    template=("data", "template"),
    routing_key=("secret", "routing_key"),
    routing_key_env=("str", "routing_key_env"),
    routing_key_credential=("str", "routing_key_credential"),
    severity=("str", "severity"),
    trigger_on=("str", "trigger_on"),
    source=("str", "source"),
    smtp_host=("str", "smtp_host"),
    smtp_port=("int", "smtp_port"),
    tls=("str", "tls"),
    username=("str", "username"),
    password=("secret", "password"),
    password_env=("str", "password_env"),
    password_credential=("str", "password_credential"),
    to=("list", "mail_to"),
    ca_file=("str", "ca_file"),
)
NOTIFIER_KEYS["from"] = Key("str", "mail_from")  # a Python keyword, a fine TOML key

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    names: tuple[tuple[type, str], ...] = ((bool, "boolean"), (int, "integer"), (float, "float"))
    names += ((str, "string"), (list, "array"), (dict, "table"))
    return next((name for kind, name in names if isinstance(value, kind)), "date/time")


def coerce(kind: Kind, value: Any, *, textual: bool) -> Any:
    """The typed value of a TOML value, or of text (env, credential files) when `textual`.

    Raises ValueError with a message that never quotes a secret or a string value.
    """
    if textual:
        return _from_text(kind, value)
    if kind in ("str", "opt_str", "secret"):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {toml_type(value)}")
        return _from_text(kind, value)
    if kind == "size":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"expected a size such as '64KiB', got {toml_type(value)}")
        return parse_size(value)
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a duration such as '5s', got {toml_type(value)}")
        return parse_duration(value)
    if kind in ("list", "table"):
        return _strings(kind, value)
    if kind == "data":
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {toml_type(value)}")
        return value
    if kind == "durations":
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty array of durations, got {toml_type(value)}")
        return tuple(coerce("duration", item, textual=False) for item in value)
    return _number_or_bool(kind, value)


def _strings(kind: Kind, value: Any) -> Any:
    """An array of strings as a tuple, a table of strings as a read-only mapping."""
    wanted = "an array of strings" if kind == "list" else "a table of strings"
    if not isinstance(value, list if kind == "list" else dict):
        raise ValueError(f"expected {wanted}, got {toml_type(value)}")
    items = value if isinstance(value, list) else value.values()
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"expected {wanted}, but not every value is a string")
    return tuple(value) if isinstance(value, list) else FrozenMapping(value)


def _number_or_bool(kind: Kind, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {toml_type(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        wanted = "an integer" if kind == "int" else "a number"
        raise ValueError(f"expected {wanted}, got {toml_type(value)}")
    if kind == "int" and not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value) if kind == "float" else value


def _from_text(kind: Kind, text: str) -> Any:
    """Parse a setting given as text; an empty optional string means "not set"."""
    if kind == "str":
        return text
    if kind in ("opt_str", "secret"):
        return None if text == "" else (Secret(text) if kind == "secret" else text)
    if kind == "duration":
        return parse_duration(text)
    if kind == "size":
        return parse_size(text)
    if kind == "durations":
        return tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if kind == "list":  # from the environment: comma-separated
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind == "bool":
        if text.strip().lower() in _TRUE | _FALSE:
            return text.strip().lower() in _TRUE
        raise ValueError(f"expected true/false/1/0/yes/no, got {text!r}")
    if kind in ("int", "float"):
        try:
            number = int(text.strip()) if kind == "int" else float(text.strip())
        except ValueError:
            raise ValueError(
                f"expected {'an integer' if kind == 'int' else 'a number'}, got {text!r}"
            ) from None
        return _number_or_bool(kind, number)
    raise ValueError("cannot be set from the environment")


@dataclass(frozen=True)
class Origin:
    """Where a value came from, as the prefix of a problem message."""

    file: str | None = None
    line: int | None = None
    env: str | None = None

    def prefix(self) -> str:
        if self.env:
            return f"{self.env}: "
        if self.file and self.line:
            return f"{self.file}:{self.line}: "
        return f"{self.file}: " if self.file else ""


@dataclass(frozen=True)
class RawValue:
    """A value before typing: TOML-typed from the file, or text from env and credentials."""

    value: Any
    origin: Origin
    textual: bool = False


class Problems:
    """Every problem found, each formatted `<where>: <section>.<key>: <what is wrong>`.

    `secret_only` problems are a secret that is absent or unreadable here; commands
    that never use secrets (`watch`, `events`, `db upgrade`, ...) run despite them.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.secret_only: list[str] = []

    def add(self, origin: Origin, label: str | None, what: str, *, secret: bool = False) -> None:
        message = origin.prefix() + (f"{label}: {what}" if label else what)
        self.messages.append(message)
        if secret:
            self.secret_only.append(message)

    def blocking(self, require_secrets: bool) -> list[str]:
        if require_secrets:
            return self.messages
        return [m for m in self.messages if m not in self.secret_only]

    def __bool__(self) -> bool:
        return bool(self.messages)


class SectionValues:
    """One table's typed values and where each came from, for the checks below."""

    def __init__(self, name: str, problems: Problems, home: Origin) -> None:
        self.name, self.problems, self.home = name, problems, home
        self.values: dict[str, Any] = {}
        self.origins: dict[str, Origin] = {}
        self.failed = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def problem(self, key: str, what: str, *, secret: bool = False) -> None:
        """Record a problem; a missing `secret` leaves the section usable without it."""
        self.failed = self.failed or not secret
        self.problems.add(
            self.origins.get(key, self.home), f"{self.name}.{key}", what, secret=secret
        )

    def load(self, keys: Mapping[str, Key], raws: Mapping[str, RawValue]) -> SectionValues:
        for key, raw in raws.items():
            self.origins[key] = raw.origin
            try:
                self.values[key] = coerce(keys[key].kind, raw.value, textual=raw.textual)
            except ValueError as e:
                self.problem(key, str(e))
        return self

    def attrs(self, keys: Mapping[str, Key]) -> dict[str, Any]:
        return {keys[k].attr: v for k, v in self.values.items() if k in keys}

    def given(self, key: str) -> bool:
        """Present in the input, even if mistyped; an empty optional string counts as absent."""
        return key in self.origins and (key not in self.values or self.values[key] is not None)


def check_twilio(s: SectionValues) -> None:
    _check_credentials(s)
    for key in ("edge", "region"):
        value = s.get(key)
        if value is not None and not _EDGE_RE.fullmatch(value):
            s.problem(key, f"must be lower-case letters, digits and '-' (got {value!r})")
    region = s.get("region")
    if region and _EDGE_RE.fullmatch(region) and not s.get("edge") and not s.get("base_url"):
        try:
            default_edge(region)
        except ValueError as e:
            s.problem("region", f"{e}; set twilio.edge (or TWILIO_EDGE) too")
    if s.get("base_url") is not None and (why := url_problem(s.get("base_url"), bare=True)):
        s.problem("base_url", why)
    for key in ("connect_timeout", "read_timeout", "request_deadline"):
        if s.get(key) == 0:
            s.problem(key, "must be more than 0")
    if not 1 <= (count := s.get("concurrency", 1)) <= 100:
        s.problem("concurrency", f"must be between 1 and 100 (got {count})")
    if s.get("max_requests_per_second", 0.0) < 0:
        s.problem("max_requests_per_second", "must be 0 (unlimited) or more")


def _check_credentials(s: SectionValues) -> None:
    sid, key = s.get("account_sid"), s.get("api_key")
    if sid is not None and not ACCOUNT_SID_RE.match(sid):
        s.problem("account_sid", "must be 'AC' followed by 32 hex digits")
    if key is not None and not API_KEY_SID_RE.match(key):
        s.problem("api_key", "must be 'SK' followed by 32 hex digits")
    if s.given("api_key") != s.given("api_secret"):
        given, missing = (
            ("api_key", "api_secret") if s.given("api_key") else ("api_secret", "api_key")
        )
        s.problem(given, f"needs twilio.{missing} too: an API key is a pair")
    secrets = [k for k in ("auth_token", "api_key", "api_secret") if s.given(k)]
    if secrets and not s.given("account_sid"):
        s.problem(secrets[0], "needs twilio.account_sid (or TWILIO_ACCOUNT_SID)")
    elif s.given("account_sid") and not secrets:
        s.problem(
            "account_sid", "needs twilio.auth_token, or twilio.api_key with api_secret", secret=True
        )


def url_problem(url: str, *, bare: bool) -> str | None:
    """Why `url` is unusable, without quoting it (URLs can carry tokens)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    extra = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
    if bare and extra:
        return "must be just http(s)://host[:port], without path, query or credentials"
    return None


def check_database(s: SectionValues) -> None:
    url = s.get("url")
    if url is None:
        return
    try:
        make_url(url)
    except (ArgumentError, ValueError):
        # Never quote it: a database URL usually holds a password.
        s.problem("url", "is not a valid SQLAlchemy URL (dialect+driver://user:pass@host/db)")


def _check_interval(s: SectionValues, default: float) -> float:
    interval: float = s.get("interval", default)
    if interval < MIN_INTERVAL_S:
        s.problem("interval", f"must be at least 100ms (got {format_duration(interval)})")
    return interval


def _check_at_least(s: SectionValues, key: str, low: float, what: str) -> None:
    if s.get(key, low) < low:
        s.problem(key, what)


def check_polling(s: SectionValues) -> None:
    defaults = PollingSettings()
    interval = _check_interval(s, defaults.interval_s)
    jitter = s.get("jitter", defaults.jitter_s)
    if jitter >= interval:
        key = "jitter" if s.given("jitter") else "interval"
        got = f"{format_duration(jitter)} >= {format_duration(interval)}"
        s.problem(key, f"jitter must be less than interval ({got})")
    _check_at_least(s, "batch_size", 1, "must be at least 1")


def check_dispatch(s: SectionValues) -> None:
    _check_interval(s, DispatchSettings().interval_s)
    for key in ("lease", "give_up_after", "breaker_cooldown", "max_retry_after"):
        if s.get(key) == 0:
            s.problem(key, "must be more than 0")
    _check_at_least(s, "batch_size", 1, "must be at least 1")
    _check_at_least(s, "breaker_threshold", 0, "must be 0 (never open) or more")


def check_http(s: SectionValues) -> None:
    listen = s.get("listen")
    if listen is not None:
        try:
            split_host_port(listen)
        except ValueError as e:
            s.problem("listen", str(e))


def check_logging(s: SectionValues) -> None:
    if "format" in s.values:
        s.values["format"] = s.values["format"].lower()
        if s.values["format"] not in ("plain", "json"):
            s.problem("format", f"must be 'plain' or 'json' (got {s.get('format')!r})")
    if "level" in s.values:
        s.values["level"] = level = s.values["level"].upper()
        if level not in _LEVELS:
            s.problem("level", f"must be one of {', '.join(_LEVELS)} (got {level!r})")


SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
MIN_RETENTION_S = 3600.0


def check_api(s: SectionValues) -> None:
    for i, digest in enumerate(s.get("token_sha256", ())):
        if not SHA256_HEX_RE.match(digest.lower().removeprefix("sha256:")):
            s.problem(
                "token_sha256",
                f"entry {i + 1} is not a sha256 hex digest (64 hex digits; "
                'make one with: printf %s "$TOKEN" | sha256sum)',
            )
    credential = s.get("token_credential")
    if credential is not None and ("/" in credential or credential in (".", "..")):
        s.problem("token_credential", "must be a plain file name in $CREDENTIALS_DIRECTORY")


def check_retention(s: SectionValues) -> None:
    for key in ("observations", "snapshots", "events", "deliveries"):
        age = s.get(key)
        if age is not None and 0 < age < MIN_RETENTION_S:
            s.problem(key, f"must be 0 (keep forever) or at least 1h (got {format_duration(age)})")
    if s.get("interval", 60.0) < 1.0:
        s.problem("interval", "must be at least 1s")
    if not 1 <= (size := s.get("batch_size", 1)) <= 10_000:
        s.problem("batch_size", f"must be between 1 and 10000 (got {size})")


MAX_CALLBACK_BODY = 1024 * 1024


def check_callbacks(s: SectionValues) -> None:
    path = s.get("path", DEFAULT_CALLBACK_PATH)
    if not path.startswith("/") or any(c in path for c in "?# \t\r\n"):
        s.problem("path", "must be a URL path starting with '/', without query or spaces")
    elif path == "/" or path.startswith(_RESERVED_PATHS):
        s.problem("path", "must not be '/' or a path the listener already serves")
    public = s.get("public_url")
    if public is not None and (why := url_problem(public, bare=False)):
        s.problem("public_url", why)
    if not 1024 <= (size := s.get("max_body", DEFAULT_CALLBACK_MAX_BODY)) <= MAX_CALLBACK_BODY:
        s.problem("max_body", f"must be between 1KiB and 1MiB (got {size} bytes)")


def check_callbacks_need(
    callbacks: SectionValues, http: SectionValues, twilio: SectionValues
) -> None:
    """Callbacks arrive on the [http] listener and are verified with the auth token."""
    if not callbacks.get("enabled", False):
        return
    if http.get("listen") is None:
        callbacks.problem("enabled", "needs http.listen: callbacks arrive on the HTTP listener")
    if not twilio.given("auth_token"):
        callbacks.problem(
            "enabled",
            "needs twilio.auth_token (or TWILIO_AUTH_TOKEN): Twilio signs callbacks with it",
            secret=True,
        )
