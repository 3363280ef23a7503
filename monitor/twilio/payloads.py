"""Twilio JSON to domain values: the only module that knows Twilio's field names.

Parsing is strict about shape (types, SID patterns, dates) and lenient about
content: unknown fields are ignored but kept in `raw`, and any string status or
region is accepted, so a new Twilio value is recorded instead of rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from typing import Any

from monitor.domain import CONFERENCE_SID_RE, Conference

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


class PayloadError(ValueError):
    """A Twilio response body that does not have the documented shape.

    `field` names the offending member (dotted for nested ones) when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ConferencePage:
    """One page of the Conferences list; `next_page_uri` is None on the last page."""

    conferences: tuple[Conference, ...]
    next_page_uri: str | None
    page: int | None
    page_size: int | None
    items: tuple[dict[str, Any], ...] = ()  # the raw objects, in page order


def parse_conference(obj: object) -> Conference:
    """Build a `Conference` from a decoded JSON object, or raise `PayloadError`."""
    if not isinstance(obj, dict):
        raise PayloadError(f"conference must be a JSON object, got {_kind(obj)}")
    sid = obj.get("sid")
    if not isinstance(sid, str) or CONFERENCE_SID_RE.match(sid) is None:
        raise PayloadError(f"field 'sid' missing or malformed: {sid!r}", field="sid")
    values: dict[str, Any] = {name: _text(obj, name, sid) for name in _TEXT_FIELDS}
    for name in _DATE_FIELDS:
        values[name] = _date(obj, name, sid)
    values["subresource_uris"] = _uri_map(obj, sid)
    try:
        return Conference(sid=sid, raw=obj, **values)
    except ValueError as exc:  # SID patterns, checked by Conference itself
        name = _field_in(str(exc))
        raise PayloadError(f"field {name!r} invalid: {exc}", field=name) from None


def parse_conference_page(obj: object) -> ConferencePage:
    """Parse the list envelope; an item's error names its index (`conferences[3].sid`)."""
    if not isinstance(obj, dict):
        raise PayloadError(f"conference list must be a JSON object, got {_kind(obj)}")
    items = obj.get("conferences")
    if not isinstance(items, list):
        raise PayloadError(
            f"field 'conferences' must be an array, got {_kind(items)}", field="conferences"
        )
    conferences = []
    for index, item in enumerate(items):
        try:
            conferences.append(parse_conference(item))
        except PayloadError as exc:
            where = f"conferences[{index}]" + (f".{exc.field}" if exc.field else "")
            raise PayloadError(f"{where}: {exc}", field=where) from None
    return ConferencePage(
        items=tuple(items),
        conferences=tuple(conferences),
        next_page_uri=_text(obj, "next_page_uri", None),
        page=_integer(obj, "page"),
        page_size=_integer(obj, "page_size"),
    )


def listed_sid(item: object) -> str | None:
    """The sid of a listed item, if it has a well-formed one."""
    sid = item.get("sid") if isinstance(item, dict) else None
    return sid if isinstance(sid, str) and CONFERENCE_SID_RE.match(sid) else None


def parse_listed(item: object, account_sid: str) -> Conference:
    """A listed item as a `Conference`; it must belong to the account listed."""
    conference = parse_conference(item)
    if conference.account_sid is not None and conference.account_sid != account_sid:
        raise PayloadError(
            f"field 'account_sid' is {conference.account_sid}, listed for {account_sid}",
            field="account_sid",
        )
    return conference


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


def _field_in(message: str) -> str:
    """Which SID field a `Conference` validation message is about."""
    for name in ("call_sid_ending_conference", "account_sid"):
        if name in message:
            return name
    return "sid"


def _of(sid: str | None) -> str:
    return f" (conference {sid})" if sid else ""


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
