"""Hostile answers: a successful reply bent the way a broken or malicious API would.

`drip` sends it a byte at a time, `huge` pads it to `size_bytes` (streamed,
never built in memory), `loop` points `next_page_uri` back to the first page
(or, `endless`, to a new URI every time), `malformed_item` breaks one list
item (`date_created: 12`), `mismatch` answers for another conference or account.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from monitor.simulator.faults import Fault
from monitor.simulator.records import new_sid
from monitor.simulator.replies import Reply

PAD_CHUNK = b"x" * (64 * 1024)
PAD_FIELD = b'{"x_padding":"'
LOOP_PARAM = "LoopPass"


def bend(fault: Fault, reply: Reply, params: Mapping[str, str]) -> Reply:
    """The reply as `fault` bends it; error replies pass unchanged."""
    if not 200 <= reply.status < 300:
        return reply
    if fault.kind == "drip":
        reply.drip_s = fault.delay_s
        return reply
    if fault.kind == "huge":
        return _huge(reply, fault.size_bytes, fault.framing)
    obj = orjson.loads(reply.body)
    if fault.kind == "mismatch":
        _mismatch(obj, fault.field)
    elif fault.kind == "malformed_item":
        _malformed(obj, fault.sid)
    elif fault.kind == "loop":
        _loop(obj, fault.endless, params)
    reply.body = orjson.dumps(obj)
    return reply


def _huge(reply: Reply, size: int, framing: str) -> Reply:
    """`{"x_padding":"xxx...", <the real members>}`: valid JSON of `size` bytes."""
    body = reply.body
    tail = b'",' + body[1:] if len(body) > 2 else b'"}'
    pad = max(size - len(PAD_FIELD) - len(tail), 0)

    def chunks() -> Iterator[bytes]:
        yield PAD_FIELD
        left = pad
        while left > 0:
            piece = PAD_CHUNK if left >= len(PAD_CHUNK) else PAD_CHUNK[:left]
            left -= len(piece)
            yield piece
        yield tail

    reply.stream, reply.length, reply.framing = chunks, len(PAD_FIELD) + pad + len(tail), framing
    reply.body = b""
    return reply


def _mismatch(obj: Any, field: str) -> None:
    if isinstance(obj, dict):
        obj[field] = new_sid("CF" if field == "sid" else "AC")


def _malformed(obj: Any, sid: str | None) -> None:
    items = obj.get("conferences") if isinstance(obj, dict) else None
    for item in items or []:
        if sid is None or item.get("sid") == sid:
            item["date_created"] = 12
            return


def _loop(obj: Any, endless: bool, params: Mapping[str, str]) -> None:
    first = obj.get("first_page_uri") if isinstance(obj, dict) else None
    if not isinstance(first, str):
        return
    if endless:
        passes = params.get(LOOP_PARAM, "0")
        count = int(passes) + 1 if passes.isdigit() and len(passes) < 9 else 1
        obj["next_page_uri"] = f"{first}&{LOOP_PARAM}={count}"
    else:
        obj["next_page_uri"] = first
