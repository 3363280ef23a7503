"""List order and paging for the simulator, cheap at 100,000 conferences.

Each account keeps its conferences' order keys sorted, once for every status
and once per status, so a page is a bisect to its token and a walk of about a
page's length, not a filter and sort of every conference per request. Page
tokens are `PA`/`PB` + the SID a page starts after/before.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from monitor.simulator.records import Record, SimulatorError

OrderKey = tuple[float, str]
Slot = tuple[str, str | None]  # (account, status), or (account, None) for every status


@dataclass(frozen=True)
class DateRange:
    """A Twilio date filter on one field: `X=`, `X<=` and `X>=`, all inclusive, UTC days."""

    on: date | None = None
    before: date | None = None
    after: date | None = None

    def __bool__(self) -> bool:
        return bool(self.on or self.before or self.after)

    def contains(self, epoch: float) -> bool:
        day = datetime.fromtimestamp(epoch, UTC).date()
        return not (
            (self.on and day != self.on)
            or (self.before and day > self.before)
            or (self.after and day < self.after)
        )


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    friendly_name: str | None = None
    created: DateRange = DateRange()
    updated: DateRange = DateRange()
    page_size: int = 50
    page_token: str | None = None


@dataclass(frozen=True)
class PageSlice:
    """One page: each conference's JSON bytes, and the tokens around it."""

    conferences: list[bytes]
    next_token: str | None
    previous_token: str | None
    sids: tuple[str, ...] = ()


class ListIndex:
    """Sorted order keys per (account, status) and per (account, None) for every status."""

    def __init__(self) -> None:
        self._keys: dict[Slot, list[OrderKey]] = {}

    def clear(self) -> None:
        self._keys.clear()

    def add(self, rec: Record) -> None:
        for slot in _slots(rec):
            insort(self._keys.setdefault(slot, []), rec.order_key)

    def add_many(self, records: Iterable[Record]) -> None:
        """Append, then sort each touched list once (Timsort merges the two runs)."""
        touched: set[Slot] = set()
        for rec in records:
            for slot in _slots(rec):
                self._keys.setdefault(slot, []).append(rec.order_key)
                touched.add(slot)
        for name in touched:
            self._keys[name].sort()

    def move(self, rec: Record, old_status: str, new_status: str) -> None:
        if old_status == new_status:
            return
        old = self._keys.get((rec.account_sid, old_status), [])
        key = rec.order_key
        at = bisect_left(old, key)
        if at < len(old) and old[at] == key:
            del old[at]
        insort(self._keys.setdefault((rec.account_sid, new_status), []), key)

    def page(
        self,
        account_sid: str,
        query: ListQuery,
        records: Mapping[str, Record],
        visible: Callable[[Record], bool],
    ) -> PageSlice:
        """The page the query's token points at, walking only as far as it needs."""
        keys = self._keys.get((account_sid, query.status), [])

        def matches(key: OrderKey) -> bool:
            rec = records[key[1]]
            return visible(rec) and _filters_match(rec, query)

        token = query.page_token
        if token is None:
            window = _forward(keys, 0, query.page_size, matches, has_previous=False)
        else:
            anchor = records.get(token[2:])
            if token[:2] not in ("PA", "PB") or anchor is None or anchor.account_sid != account_sid:
                raise SimulatorError(400, 21481, f"Invalid PageToken: {token}")
            if token.startswith("PA"):
                start = bisect_right(keys, anchor.order_key)
                earlier = _any(keys, start - 1, -1, matches)
                window = _forward(keys, start, query.page_size, matches, earlier)
            else:
                stop = bisect_left(keys, anchor.order_key)
                window = _backward(keys, stop, query.page_size, matches)
        page, has_next, has_previous = window
        return PageSlice(
            [records[key[1]].as_bytes() for key in page],
            f"PA{page[-1][1]}" if page and has_next else None,
            f"PB{page[0][1]}" if page and has_previous else None,
            tuple(key[1] for key in page),
        )


_Window = tuple[list[OrderKey], bool, bool]  # the page's keys, has next, has previous


def _forward(
    keys: list[OrderKey],
    start: int,
    size: int,
    matches: Callable[[OrderKey], bool],
    has_previous: bool,
) -> _Window:
    found: list[OrderKey] = []
    position = start
    while position < len(keys) and len(found) <= size:
        if matches(keys[position]):
            found.append(keys[position])
        position += 1
    return found[:size], len(found) > size, has_previous


def _backward(
    keys: list[OrderKey], stop: int, size: int, matches: Callable[[OrderKey], bool]
) -> _Window:
    found: list[OrderKey] = []
    position = stop - 1
    while position >= 0 and len(found) <= size:
        if matches(keys[position]):
            found.append(keys[position])
        position -= 1
    return found[:size][::-1], _any(keys, stop, 1, matches), len(found) > size


def _any(keys: list[OrderKey], start: int, step: int, matches: Callable[[OrderKey], bool]) -> bool:
    """Whether any key from `start` onwards (in direction `step`) matches."""
    position = start
    while 0 <= position < len(keys):
        if matches(keys[position]):
            return True
        position += step
    return False


def _slots(rec: Record) -> tuple[Slot, Slot]:
    return (rec.account_sid, None), (rec.account_sid, rec.status)


def _filters_match(rec: Record, q: ListQuery) -> bool:
    return (
        (q.friendly_name is None or rec.friendly_name == q.friendly_name)
        and (not q.created or q.created.contains(rec.created_at))
        and (not q.updated or q.updated.contains(rec.updated_at))
    )
