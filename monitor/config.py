"""Build the one frozen `Settings` from a TOML file, the environment and systemd credentials.

This is the only reader of environment settings: callers pass `environ`, so
tests supply their own. Every problem is collected before anything is
returned, each pointing at the file line or variable it came from, and no
message ever quotes a secret. The types and rules live in `config_schema`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.api.auth import MAX_TOKEN_FILE_BYTES, parse_token_lines
from monitor.config_notifiers import notifier_settings
from monitor.config_schema import (
    ASSEMBLED_KEYS,
    SECTIONS,
    ApiSettings,
    CallbacksSettings,
    ConfigError,
    DatabaseSettings,
    DispatchSettings,
    HttpSettings,
    LoggingSettings,
    NotifierSettings,
    Origin,
    PollingSettings,
    Problems,
    RawValue,
    RetentionSettings,
    Secret,
    SectionValues,
    Settings,
    TwilioSettings,
    check_api,
    check_callbacks,
    check_callbacks_need,
    check_database,
    check_dispatch,
    check_http,
    check_logging,
    check_polling,
    check_retention,
    check_twilio,
)

__all__ = [
    "ApiSettings",
    "CallbacksSettings",
    "ConfigError",
    "DatabaseSettings",
    "DispatchSettings",
    "HttpSettings",
    "LoggingSettings",
    "NotifierSettings",
    "PollingSettings",
    "RetentionSettings",
    "Secret",
    "Settings",
    "TwilioSettings",
    "default_database_url",
    "load_settings",
]

CONFIG_ENV = "CONFERENCE_MONITOR_CONFIG"
ENV_PREFIX = "CONFERENCE_MONITOR_"
# Not settings: the config path itself, and variables only the test suite reads.
_NOT_OVERRIDES = (CONFIG_ENV, "CONFERENCE_MONITOR_TEST_")
DB_FILENAME = "conference-monitor.db"
CREDENTIAL_NAMES = {
    "TWILIO_ACCOUNT_SID": "account_sid",
    "TWILIO_AUTH_TOKEN": "auth_token",
    "TWILIO_API_KEY": "api_key",
    "TWILIO_API_SECRET": "api_secret",
}
HOST_NAMES = {"TWILIO_EDGE": "edge", "TWILIO_REGION": "region"}
_Layers = dict[str, dict[str, RawValue]]
_Table = tuple[str | int, ...]


def default_database_url(environ: Mapping[str, str]) -> str:
    """SQLite in systemd's $STATE_DIRECTORY (its first entry), else the working folder."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    folder = Path(state) if state else Path.cwd()
    return f"sqlite:///{(folder / DB_FILENAME).absolute()}"


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    require_secrets: bool = True,
) -> Settings:
    """Read, overlay and validate everything; raise ConfigError listing every problem.

    Precedence, highest first: CONFERENCE_MONITOR_<SECTION>_<KEY>, TWILIO_*,
    $CREDENTIALS_DIRECTORY files, the TOML file, TWILIO_EDGE/TWILIO_REGION,
    built-in defaults. Without `require_secrets`, a secret that is absent here
    (no credentials directory in a shell) is not a problem: its setting is left empty.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    source = _config_path(path, env)
    text, doc = ("", {}) if source is None else _read_toml(source, from_env=path is None)
    ctx = _Context(env, Problems(), str(source) if source else None, LineIndex(text))
    raws, notifier_tables = _file_layer(doc, ctx)
    _overlay_credentials_directory(raws, ctx)
    _overlay_twilio_env(raws, env)
    _overlay_overrides(raws, ctx)
    settings = _build(raws, notifier_tables, ctx, source)
    if problems := ctx.problems.blocking(require_secrets):
        raise ConfigError(problems)
    return settings


class LineIndex:
    """Best-effort map from (table, key) to a 1-based file line: tomllib gives no positions.

    Tables are tuples such as ("polling",) or ("notifiers", 2) for the third
    [[notifiers]]. Text inside multi-line strings is skipped.
    """

    _PART = re.compile(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'")
    _ARRAY = re.compile(r"\s*\[\[([^\[\]]+)\]\]")
    _TABLE = re.compile(r"\s*\[([^\[\]]+)\]")
    _KEY = re.compile(rf"\s*((?:{_PART.pattern})(?:\s*\.\s*(?:{_PART.pattern}))*)\s*=")

    def __init__(self, text: str) -> None:
        self.tables: dict[_Table, int] = {}
        self.keys: dict[tuple[_Table, str], int] = {}
        self._arrays: dict[_Table, int] = {}
        current: _Table = ()
        closing: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if closing is not None:
                closing = None if closing in line else closing
                continue
            current = self._scan(line, number, current)
            closing = _opens_multiline(line)

    def line(self, table: _Table, key: str | None = None) -> int | None:
        """The key's line, else the line that opened `table`, else None."""
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if key is not None and table + (key,) in self.tables:
            return self.tables[table + (key,)]
        return self.tables.get(table)

    def _scan(self, line: str, number: int, current: _Table) -> _Table:
        if found := self._ARRAY.match(line):
            parts = self._parts(found[1])
            array = self._resolve(parts[:-1]) + (parts[-1],)
            index = self._arrays.get(array, 0)
            self._arrays[array] = index + 1
            self.tables.setdefault(array + (index,), number)
            return array + (index,)
        if found := self._TABLE.match(line):
            table = self._resolve(self._parts(found[1]))
            self.tables.setdefault(table, number)
            return table
        if found := self._KEY.match(line):
            parts = self._parts(found[1])
            for depth in range(1, len(parts)):
                self.tables.setdefault(current + tuple(parts[:depth]), number)
            self.keys.setdefault((current + tuple(parts[:-1]), parts[-1]), number)
        return current

    def _parts(self, dotted: str) -> list[str]:
        return [p.strip("\"'") for p in self._PART.findall(dotted)]

    def _resolve(self, parts: list[str]) -> _Table:
        """A path inside an array of tables refers to its latest element."""
        table: _Table = ()
        for part in parts:
            table += (part,)
            if table in self._arrays:
                table += (self._arrays[table] - 1,)
        return table


def _opens_multiline(line: str) -> str | None:
    if line.lstrip().startswith("#"):
        return None
    return next((d for d in ('"""', "'''") if line.count(d) % 2 == 1), None)


@dataclass
class _Context:
    environ: Mapping[str, str]
    problems: Problems
    file: str | None
    lines: LineIndex

    def origin(self, table: _Table, key: str | None = None) -> Origin:
        if self.file is None:
            return Origin()
        return Origin(file=self.file, line=self.lines.line(table, key))


def _config_path(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    named = path if path is not None else env.get(CONFIG_ENV)
    return Path(named) if named else None


def _read_toml(source: Path, *, from_env: bool) -> tuple[str, dict[str, Any]]:
    named_by = f" (named by {CONFIG_ENV})" if from_env else ""
    try:
        text = source.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([f"{source}: configuration file not found{named_by}"]) from None
    except OSError as e:
        raise ConfigError([f"{source}: cannot read configuration file: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: configuration file is not UTF-8 text"]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_toml_error(source, str(e))]) from None


def _toml_error(source: Path, message: str) -> str:
    """`file:line:column: invalid TOML: ...`; tomllib puts the position only in its message."""
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
    if found is None:
        return f"{source}: invalid TOML: {message}"
    what = message[: found.start()] + message[found.end() :]
    return f"{source}:{found[1]}:{found[2]}: invalid TOML: {what}"


def _suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """A "did you mean" for a typo; `prefix` is shared by all, so it would only add noise."""
    close = difflib.get_close_matches(word.removeprefix(prefix), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _file_layer(doc: dict[str, Any], ctx: _Context) -> tuple[_Layers, list[Any]]:
    raws: _Layers = {name: {} for name in SECTIONS}
    notifiers: list[Any] = []
    for name, table in doc.items():
        origin = ctx.origin((), name)
        if name == "notifiers":
            if isinstance(table, list) and all(isinstance(t, dict) for t in table):
                notifiers = table
            else:
                ctx.problems.add(origin, name, "must be an array of tables ([[notifiers]])")
        elif name not in SECTIONS:
            hint = _suggest(name, [*SECTIONS, "notifiers"])
            ctx.problems.add(origin, name, f"unknown section{hint}")
        elif not isinstance(table, dict):
            ctx.problems.add(origin, name, f"must be a table ([{name}])")
        else:
            raws[name] = _file_table(name, table, ctx)
    return raws, notifiers


def _file_table(name: str, table: dict[str, Any], ctx: _Context) -> dict[str, RawValue]:
    known = SECTIONS[name]
    found: dict[str, RawValue] = {}
    for key, value in table.items():
        origin = ctx.origin((name,), key)
        if key in known:
            found[key] = RawValue(value, origin)
        else:
            ctx.problems.add(origin, f"{name}.{key}", f"unknown key{_suggest(key, known)}")
    return found


def _overlay_credentials_directory(raws: _Layers, ctx: _Context) -> None:
    """systemd LoadCredential= files named like the TWILIO_* variables."""
    folder = ctx.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return
    for name, key in CREDENTIAL_NAMES.items():
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            ctx.problems.add(
                Origin(file=str(path)), f"twilio.{key}", "cannot read credential file", secret=True
            )
            continue
        if text:
            raws["twilio"][key] = RawValue(text, Origin(file=str(path)), textual=True)


def _overlay_twilio_env(raws: _Layers, environ: Mapping[str, str]) -> None:
    """TWILIO_* as the Twilio SDK and CLI read them; an empty variable counts as unset.

    Credentials win over the file; TWILIO_EDGE/TWILIO_REGION only fill a key the
    file leaves out, as the SDK lets its explicit arguments win over them.
    """
    for name, key in CREDENTIAL_NAMES.items():
        if environ.get(name):
            raws["twilio"][key] = RawValue(environ[name], Origin(env=name), textual=True)
    for name, key in HOST_NAMES.items():
        if environ.get(name) and key not in raws["twilio"]:
            raws["twilio"][key] = RawValue(environ[name], Origin(env=name), textual=True)


def _overlay_overrides(raws: _Layers, ctx: _Context) -> None:
    for var, text in ctx.environ.items():
        if not var.startswith(ENV_PREFIX) or var.startswith(_NOT_OVERRIDES):
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if section == "notifiers":
            ctx.problems.add(Origin(env=var), None, "notifiers can only be set in the file")
        elif section in SECTIONS and key in SECTIONS[section]:
            raws[section][key] = RawValue(text, Origin(env=var), textual=True)
        else:
            valid = [f"{s}_{k}".upper() for s, keys in SECTIONS.items() for k in keys]
            hint = _suggest(var, valid, prefix=ENV_PREFIX)
            ctx.problems.add(Origin(env=var), None, f"unknown setting{hint}")


_SECTION_CHECKS = {
    "twilio": check_twilio,
    "database": check_database,
    "polling": check_polling,
    "dispatch": check_dispatch,
    "http": check_http,
    "logging": check_logging,
    "api": check_api,
    "retention": check_retention,
    "callbacks": check_callbacks,
}


def _build(raws: _Layers, notifiers: list[Any], ctx: _Context, source: Path | None) -> Settings:
    attrs: dict[str, dict[str, Any]] = {}
    sections: dict[str, SectionValues] = {}
    for name, keys in SECTIONS.items():
        values = SectionValues(name, ctx.problems, ctx.origin((name,))).load(keys, raws[name])
        sections[name] = values
        _SECTION_CHECKS[name](values)
        attrs[name] = values.attrs(keys)
        for key in ASSEMBLED_KEYS.get(name, ()):
            attrs[name].pop(keys[key].attr, None)
    check_callbacks_need(sections["callbacks"], sections["http"], sections["twilio"])
    attrs["api"]["token_hashes"] = _token_hashes(sections["api"], ctx.environ)
    attrs["database"].setdefault("url", default_database_url(ctx.environ))
    return Settings(
        twilio=TwilioSettings(**attrs["twilio"]),
        database=DatabaseSettings(
            **{"url": default_database_url(ctx.environ), **attrs["database"]}
        ),
        polling=PollingSettings(**attrs["polling"]),
        dispatch=DispatchSettings(**attrs["dispatch"]),
        http=HttpSettings(**attrs["http"]),
        logging=LoggingSettings(**attrs["logging"]),
        notifiers=notifier_settings(notifiers, ctx),
        source=source,
        api=ApiSettings(**attrs["api"]),
        retention=RetentionSettings(**attrs["retention"]),
        callbacks=CallbacksSettings(**attrs["callbacks"]),
    )


def _token_hashes(s: SectionValues, environ: Mapping[str, str]) -> frozenset[str]:
    """API token digests from token_sha256, token_file and token_credential together."""
    digests = {d.lower().removeprefix("sha256:") for d in s.get("token_sha256") or ()}
    if s.get("token_file"):
        digests |= _read_tokens(s, "token_file", Path(s.get("token_file")))
    if (name := s.get("token_credential")) and "/" not in name:
        folder = environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            s.problem("token_credential", "needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
        else:
            digests |= _read_tokens(s, "token_credential", Path(folder) / name)
    return frozenset(digests)


def _read_tokens(s: SectionValues, key: str, path: Path) -> set[str]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        s.problem(key, f"token file {str(path)!r} does not exist")
        return set()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        s.problem(key, f"cannot read token file {str(path)!r}: {why}")
        return set()
    if len(data) > MAX_TOKEN_FILE_BYTES:
        s.problem(key, f"token file {str(path)!r} is larger than 1 MiB")
        return set()
    digests, problems = parse_token_lines(text)
    for line, what in problems:
        s.problem(key, f"{path}:{line}: {what}")
    if not digests and not problems:
        s.problem(key, f"token file {str(path)!r} holds no token")
    return digests
