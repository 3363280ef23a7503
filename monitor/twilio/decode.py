"""Twilio response bodies to values, and the log line for every body we refuse.

Decoding is `orjson` (strict: bad JSON, bad UTF-8 and nesting past 1024 levels
are all errors); anything malformed becomes a logged `BadPayload`, a body for
another conference or account a `ResourceMismatch`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orjson

from monitor.domain import Conference
from monitor.twilio.errors import BadPayload, PagingError, ResourceMismatch, ResponseTooLarge
from monitor.twilio.payloads import (
    ConferencePage,
    PayloadError,
    listed_sid,
    parse_conference,
    parse_conference_page,
)

log = logging.getLogger("monitor.twilio")

# A path on our own host, printable ASCII: it goes into URLs, errors and logs.
_NEXT_PAGE_URI_RE = re.compile(r"/[\x21-\x7e]{0,4095}")

T = TypeVar("T")
Parser = Callable[[Any], T]


class Mismatch(PayloadError):
    """The body is a valid resource, but not the one asked for."""


def parse_body(parse: Parser[T], body: bytes, url: str, sid: str | None) -> T:
    """Decode and parse a 2xx body; anything malformed becomes a logged `BadPayload`."""
    try:
        return parse(orjson.loads(body))
    except Mismatch as exc:
        warn("twilio.resource_mismatch", url, sid, str(exc))
        raise ResourceMismatch(str(exc), url=url, sid=sid) from None
    except PayloadError as exc:
        reason = f"response is not a valid conference resource: {exc}"
    except ValueError as exc:  # orjson.JSONDecodeError: bad JSON, bad UTF-8, nested too deep
        reason = f"response body is not JSON ({exc}): {body[:60]!r}"
    except RecursionError:
        reason = "response body is nested too deeply"
    warn("twilio.bad_payload", url, sid, reason)
    raise BadPayload(reason, url=url, sid=sid)


def parse_fetched(obj: Any, *, sid: str, account_sid: str) -> Conference:
    got = listed_sid(obj)
    if got is not None and got.lower() != sid.lower():
        raise Mismatch(f"asked for conference {sid}, Twilio answered with {got}")
    conference = parse_conference(obj)
    owner = conference.account_sid
    if owner is not None and owner.lower() != account_sid.lower():
        raise Mismatch(f"conference {sid} belongs to account {owner}, asked for {account_sid}")
    return conference


def parse_page(obj: Any, *, account_sid: str) -> ConferencePage:
    page = parse_conference_page(obj, account_sid)
    nxt = page.next_page_uri
    if nxt == "":
        return dataclasses.replace(page, next_page_uri=None)
    if nxt is not None and not _NEXT_PAGE_URI_RE.fullmatch(nxt):
        # An absolute URL could point our credentials at another host.
        raise PayloadError(
            f"next_page_uri must be a path, got {nxt[:100]!r}", field="next_page_uri"
        )
    return page


def flatten(pages: Iterator[ConferencePage]) -> Iterator[Conference]:
    for page in pages:
        conferences, rejected = page.parsed
        for item in rejected:
            log.warning(
                "twilio.item_rejected sid=%s account=%s page=%s item=%d: %s",
                item.sid or "-",
                page.account_sid,
                page.page,
                item.index,
                item.error,
                extra={"event": "twilio.item_rejected", "sid": item.sid},
            )
        if page.dropped:
            log.warning(
                "twilio.item_rejected sid=- account=%s page=%s: %d list members not objects",
                page.account_sid,
                page.page,
                page.dropped,
                extra={"event": "twilio.item_rejected", "sid": None},
            )
        yield from conferences


def too_large(url: str, sid: str | None, cap: int, declared: bool) -> ResponseTooLarge:
    how = "its Content-Length is" if declared else "it grew"
    reason = f"response refused: {how} over the {cap}-byte cap"
    warn("twilio.response_too_large", url, sid, reason)
    return ResponseTooLarge(reason, url=url, sid=sid, cap_bytes=cap)


def paging_error(reason: str, url: str) -> PagingError:
    warn("twilio.paging_error", url, None, reason)
    return PagingError(reason, url=url)


def warn(event: str, url: str, sid: str | None, reason: str) -> None:
    log.warning(
        "%s sid=%s url=%s: %s",
        event,
        sid or "-",
        url,
        reason,
        extra={"event": event, "sid": sid, "url": url},
    )
