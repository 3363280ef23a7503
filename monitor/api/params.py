"""Query parameters and paging cursors, checked strictly: a bad one is a 400 naming it.

Pure: values in, typed values or `BadRequest` out. Unknown parameters are
refused too, so a typo (`?stauts=`) is an error rather than an unfiltered list.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from monitor.domain import is_account_sid, is_conference_sid
from monitor.durations import parse_duration

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_CURSOR_CHARS = 512
_SHOWN_CHARS = 60


class BadRequest(ValueError):
    """A parameter the API cannot use; the message names it and is safe to show."""


def shown(value: str) -> str:
    """A client's value, quoted and shortened, for an error message."""
    return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")


class Query:
    """The parameters of one request, checked against what the endpoint accepts."""

    def __init__(
        self,
        raw: Mapping[str, list[str]],
        accepted: Collection[str],
        repeatable: Collection[str] = (),
        *,
        blank_is_absent: bool = False,
    ) -> None:
        """`blank_is_absent` suits HTML forms, which send empty fields; the API refuses them."""
        unknown = sorted(set(raw) - set(accepted))
        if unknown:
            known = ", ".join(sorted(accepted)) or "none"
            raise BadRequest(f"unknown parameter {shown(unknown[0])} (accepted: {known})")
        for name, values in raw.items():
            if len(values) > 1 and name not in repeatable:
                raise BadRequest(f"parameter {name!r} is given more than once")
        self._raw = raw
        self._blank_is_absent = blank_is_absent

    def text(self, name: str, max_chars: int = 200) -> str | None:
        values = self._raw.get(name)
        if not values:
            return None
        if values[0] == "":
            if self._blank_is_absent:
                return None
            raise BadRequest(f"{name} is empty: give a value or leave it out")
        if len(values[0]) > max_chars:
            raise BadRequest(f"{name} is longer than {max_chars} characters")
        return values[0]

    def many(self, name: str, choices: Sequence[str]) -> list[str]:
        given = self._raw.get(name, [])
        if "" in given and not self._blank_is_absent:
            raise BadRequest(f"{name} is empty: give a value or leave it out")
        values = [v for value in given for v in value.split(",") if v]
        bad = [v for v in values if v not in choices]
        if bad:
            raise BadRequest(f"{name} {shown(bad[0])} is not one of {', '.join(choices)}")
        return list(dict.fromkeys(values))

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        value = self.text(name)
        if value is not None and value not in choices:
            raise BadRequest(f"{name} {shown(value)} is not one of {', '.join(choices)}")
        return value

    def sid(self, name: str = "sid") -> str | None:
        value = self.text(name)
        if value is not None and not is_conference_sid(value):
            raise BadRequest(f"{name} {shown(value)} is not a conference SID (CF + 32 hex digits)")
        return value

    def account(self, name: str = "account") -> str | None:
        value = self.text(name)
        if value is not None and not is_account_sid(value):
            raise BadRequest(f"{name} {shown(value)} is not an account SID (AC + 32 hex digits)")
        return value

    def time(self, name: str, now: datetime) -> datetime | None:
        value = self.text(name)
        return None if value is None else parse_time(name, value, now)

    def limit(self, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
        value = self.text("limit")
        if value is None:
            return default
        if not value.isdigit() or not 1 <= int(value) <= maximum:
            raise BadRequest(f"limit must be a whole number from 1 to {maximum}")
        return int(value)


def parse_time(name: str, value: str, now: datetime) -> datetime:
    """ISO-8601 (UTC when no offset is given) or a duration ago such as `15m` or `7d`."""
    try:
        return now - timedelta(seconds=parse_duration(value))
    except (ValueError, OverflowError):
        pass
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"{name} {shown(value)} is not an ISO-8601 time or a duration such as 15m or 7d"
        ) from None


def check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be earlier than until")


# -- cursors ---------------------------------------------------------------------------


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_cursor(kind: str, key: Sequence[Any]) -> str:
    """An opaque token for "the rows after this one" in listing `kind`."""
    parts = [kind, *(iso(k) if isinstance(k, datetime) else k for k in key)]
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def read_cursor(kind: str, token: str | None, shape: Sequence[type]) -> tuple[Any, ...] | None:
    """The key a cursor holds, typed per `shape` (datetime, str, int); BadRequest if forged."""
    if token is None:
        return None
    bad = BadRequest("cursor is not valid for this listing (use next_cursor as given)")
    if len(token) > MAX_CURSOR_CHARS:
        raise bad
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(parts, list) or len(parts) != len(shape) + 1 or parts[0] != kind:
        raise bad
    key: list[Any] = []
    for value, wanted in zip(parts[1:], shape, strict=True):
        key.append(_typed(value, wanted, bad))
    return tuple(key)


def _typed(value: Any, wanted: type, bad: BadRequest) -> Any:
    if wanted is datetime and isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
            if when.tzinfo is None:
                raise bad
            return when.astimezone(UTC)
        except (ValueError, OverflowError):
            raise bad from None
    if wanted is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if wanted is str and isinstance(value, str) and len(value) <= 64:
        return value
    raise bad
