"""Twilio JSON to domain values: the only module that knows Twilio's field names.

Parsing is strict about shape (types, SID patterns, dates) and lenient about
content: unknown fields are ignored but kept in `raw`, and any string status or
region is accepted, so a new Twilio value is recorded instead of rejected.

A list page is checked only as an envelope; its items stay raw JSON objects
until someone asks (`parse_listed`), so one malformed conference fails only
itself, and a sweep that fingerprints raw items parses just the changed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import cached_property, lru_cache
from typing import Any

from monitor.domain import ACCOUNT_SID_RE, CALL_SID_RE, CONFERENCE_SID_RE, Conference

# Plain optional strings, copied as they come.
_TEXT_FIELDS = (
    "account_sid",
    "friendly_name",
    "status",
    "region",
    "reason_conference_ended",
    "call_sid_ending_conference",
    "api_version",
    "uri",
)
_DATE_FIELDS = ("date_created", "date_updated")
# fullmatch: `match` with `$` would accept a trailing newline.
_IS_CONFERENCE_SID = CONFERENCE_SID_RE.fullmatch
_IS_ACCOUNT_SID = ACCOUNT_SID_RE.fullmatch
_IS_CALL_SID = CALL_SID_RE.fullmatch
_TEXT_TYPES = frozenset({str, type(None)})
_KNOWN_ACCOUNTS: set[str] = set()
_MAX_KNOWN_ACCOUNTS = 1024
_SID_FIELDS = (("account_sid", _IS_ACCOUNT_SID), ("call_sid_ending_conference", _IS_CALL_SID))


class PayloadError(ValueError):
    """A Twilio response body that does not have the documented shape.

    `field` names the offending member (dotted for nested ones) when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Rejected:
    """A list item that did not parse: its position, its SID if it had a usable one, why."""

    index: int
    sid: str | None
    error: PayloadError


@dataclass(frozen=True)
class ConferencePage:
    """One page of the Conferences list; `next_page_uri` is None on the last page.

    `items` are the page's conference objects as received, in order and unparsed;
    `dropped` counts members of `conferences` that were not even JSON objects.
    `account_sid` is the account listed, which every item must belong to.
    """

    items: tuple[dict[str, Any], ...]
    next_page_uri: str | None
    page: int | None
    page_size: int | None
    account_sid: str | None = None
    dropped: int = 0

    @cached_property
    def parsed(self) -> tuple[tuple[Conference, ...], tuple[Rejected, ...]]:
        """Every item parsed: the conferences, and the items rejected (each alone)."""
        good: list[Conference] = []
        bad: list[Rejected] = []
        for index, item in enumerate(self.items):
            try:
                good.append(parse_listed(item, self.account_sid))
            except PayloadError as exc:
                bad.append(Rejected(index, listed_sid(item), exc))
        return tuple(good), tuple(bad)

    @property
    def conferences(self) -> tuple[Conference, ...]:
        """The items that parse; rejected ones are skipped (see `parsed`)."""
        return self.parsed[0]


def listed_sid(item: object) -> str | None:
    """The item's `sid` when it is a well-formed `CF...` string, else None."""
    if type(item) is not dict:
        return None
    sid = item.get("sid")
    return sid if type(sid) is str and _IS_CONFERENCE_SID(sid) else None


def parse_listed(item: object, account_sid: str | None) -> Conference:
    """A list item as a `Conference`; `PayloadError` if malformed or of another account."""
    conference = parse_conference(item)
    owner = conference.account_sid
    if account_sid is not None and owner is not None and owner.lower() != account_sid.lower():
        raise PayloadError(
            f"field 'account_sid' is {owner}, but the list was of {account_sid}"
            f" (conference {conference.sid})",
            field="account_sid",
        )
    return conference


def parse_conference(obj: object) -> Conference:
    """Build a `Conference` from a decoded JSON object, or raise `PayloadError`."""
    return _parse_fast(obj) or _parse_explained(obj)


def parse_conference_page(obj: object, account_sid: str | None = None) -> ConferencePage:
    """Check the list envelope; items are kept raw (see `ConferencePage.parsed`)."""
    if not isinstance(obj, dict):
        raise PayloadError(f"conference list must be a JSON object, got {_kind(obj)}")
    members = obj.get("conferences")
    if not isinstance(members, list):
        raise PayloadError(
            f"field 'conferences' must be an array, got {_kind(members)}", field="conferences"
        )
    items = tuple(item for item in members if type(item) is dict)
    return ConferencePage(
        items=items,
        next_page_uri=_text(obj, "next_page_uri", None),
        page=_integer(obj, "page"),
        page_size=_integer(obj, "page_size"),
        account_sid=account_sid,
        dropped=len(members) - len(items),
    )


def format_rfc2822(dt: datetime) -> str:
    """Twilio's date format, always in UTC: `Fri, 18 Feb 2011 19:26:50 +0000`."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"cannot format a naive datetime as RFC 2822: {dt!r}")
    return format_datetime(dt.astimezone(UTC))


def parse_rfc2822(text: str) -> datetime:
    """Parse an RFC 2822 date into an aware UTC datetime; ValueError if naive or bad."""
    return _parse_date_cached(text)


@lru_cache(maxsize=8192)
def _parse_date_cached(text: str) -> datetime:
    # Polling re-reads the same few dates over and over; parsing is the costly part.
    try:
        parsed = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"not an RFC 2822 date: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 2822 date without a time zone: {text!r}")
    return parsed.astimezone(UTC)


# -- the fast path: every check, no messages ----------------------------------


def _parse_fast(obj: object) -> Conference | None:
    """The conference when `obj` is valid, else None (then `_parse_explained` says why).

    The same checks as the explaining path and `Conference.__post_init__`, made
    with exact type tests in one expression, bound regex methods and a memo of
    account SIDs (a handful, seen over and over): a sweep parses every changed
    conference, so this is hot.
    """
    if type(obj) is not dict:
        return None
    get = obj.get
    sid, account, ending = get("sid"), get("account_sid"), get("call_sid_ending_conference")
    name, status, region = get("friendly_name"), get("status"), get("region")
    reason, api, uri = get("reason_conference_ended"), get("api_version"), get("uri")
    created, updated, uris = get("date_created"), get("date_updated"), get("subresource_uris")
    if not (
        type(sid) is str
        and _IS_CONFERENCE_SID(sid)
        and (account is None or account in _KNOWN_ACCOUNTS or _new_account(account))
        and (ending is None or (type(ending) is str and _IS_CALL_SID(ending)))
        and type(name) in _TEXT_TYPES
        and type(status) in _TEXT_TYPES
        and type(region) in _TEXT_TYPES
        and type(reason) in _TEXT_TYPES
        and type(api) in _TEXT_TYPES
        and type(uri) in _TEXT_TYPES
        and type(created) in _TEXT_TYPES
        and type(updated) in _TEXT_TYPES
        and (uris is None or _is_uri_map(uris))
    ):
        return None
    try:
        created = None if created is None else _parse_date_cached(created)
        updated = None if updated is None else _parse_date_cached(updated)
    except ValueError:
        return None
    return Conference.from_validated(
        sid, account, name, status, region, reason, ending, created, updated, api, uri, uris, obj
    )  # fmt: skip


def _new_account(value: object) -> bool:
    """Validate an account SID not seen before, remembering a bounded number of good ones."""
    if type(value) is not str or not _IS_ACCOUNT_SID(value):
        return False
    if len(_KNOWN_ACCOUNTS) >= _MAX_KNOWN_ACCOUNTS:
        _KNOWN_ACCOUNTS.clear()
    _KNOWN_ACCOUNTS.add(value)
    return True


def _is_uri_map(value: object) -> bool:
    if type(value) is not dict:
        return False
    for key, uri in value.items():  # noqa: SIM110 (a loop is faster than all() here)
        if type(key) is not str or type(uri) is not str:
            return False
    return True


def _parse_explained(obj: object) -> Conference:
    """The slow path: the conference, or the `PayloadError` naming the first problem.

    Reached for invalid objects (and for valid ones of dict or str subclasses).
    """
    if not isinstance(obj, dict):
        raise PayloadError(f"conference must be a JSON object, got {_kind(obj)}")
    sid = obj.get("sid")
    if not isinstance(sid, str) or _IS_CONFERENCE_SID(sid) is None:
        raise PayloadError(f"field 'sid' missing or malformed: {sid!r}", field="sid")
    values: dict[str, Any] = {name: _text(obj, name, sid) for name in _TEXT_FIELDS}
    for name in _DATE_FIELDS:
        values[name] = _date(obj, name, sid)
    values["subresource_uris"] = _uri_map(obj, sid)
    for name, matches in _SID_FIELDS:
        value = values[name]
        if value is not None and matches(value) is None:
            raise PayloadError(f"field {name!r} invalid: {value!r} (conference {sid})", field=name)
    return Conference(sid=sid, raw=obj, **values)


def _text(obj: Mapping[str, Any], name: str, sid: str | None) -> str | None:
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise PayloadError(
        f"field {name!r} must be a string or null, got {_kind(value)}{_of(sid)}", field=name
    )


def _date(obj: Mapping[str, Any], name: str, sid: str) -> datetime | None:
    value = _text(obj, name, sid)
    if value is None:
        return None
    try:
        return _parse_date_cached(value)
    except ValueError as exc:
        raise PayloadError(f"field {name!r}: {exc}{_of(sid)}", field=name) from None


def _uri_map(obj: Mapping[str, Any], sid: str) -> dict[str, str] | None:
    value = obj.get("subresource_uris")
    if value is None:
        return None
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value
    raise PayloadError(
        f"field 'subresource_uris' must be an object of strings or null{_of(sid)}",
        field="subresource_uris",
    )


def _integer(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise PayloadError(f"field {name!r} must be an integer or null, got {_kind(value)}", field=name)


def _of(sid: str | None) -> str:
    return f" (conference {sid})" if sid else ""


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
