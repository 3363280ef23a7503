"""Pure notifier filters: which events a notifier wants, decided when the event is written.

An event a filter drops gets no outbox row for that notifier at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any, Protocol

from monitor.domain import NOTIFIABLE_TYPES, EventType


class FilterSettings(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def events(self) -> frozenset[str] | None: ...
    @property
    def reasons(self) -> frozenset[str] | None: ...
    @property
    def friendly_names(self) -> tuple[str, ...]: ...
    @property
    def include_first_seen(self) -> bool: ...


def wants(notifier: FilterSettings, event_type: str, data: dict[str, Any]) -> bool:
    if event_type == EventType.IRREGULAR:
        return False  # history only, by contract
    if event_type == EventType.FIRST_SEEN:
        if not notifier.include_first_seen:
            return False
    elif event_type not in (notifier.events if notifier.events is not None else NOTIFIABLE_TYPES):
        return False
    reason = data.get("reason_conference_ended")
    if notifier.reasons is not None and reason is not None and reason not in notifier.reasons:
        return False
    if notifier.reasons is not None and event_type == EventType.ENDED and reason is None:
        return False
    if notifier.friendly_names:
        name = data.get("friendly_name") or ""
        return any(fnmatchcase(name, pattern) for pattern in notifier.friendly_names)
    return True


def recipients(
    notifiers: Iterable[FilterSettings], event_type: str, data: dict[str, Any]
) -> tuple[str, ...]:
    return tuple(n.name for n in notifiers if wants(n, event_type, data))
