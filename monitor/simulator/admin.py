"""The simulator's `/_sim/` control interface: create and script conferences, inject faults.

JSON in, JSON out, no auth (it listens on loopback). Bulk routes make and
script 100,000 conferences in a few requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monitor.simulator.replies import Reply, json_reply
from monitor.simulator.state import MAX_BULK, parse_steps

if TYPE_CHECKING:
    from monitor.simulator.server import SimulatorServer

_CONTROL_CONF_RE = re.compile(r"^/_sim/conferences/(?P<sid>[^/]+)(?P<rest>/[a-z]+)?$")
_CREATE_FIELDS = (
    "friendly_name",
    "region",
    "status",
    "sid",
    "account_sid",
    "hidden_for_s",
    "status_callback",
)
_BULK_FIELDS = ("count", *(f for f in _CREATE_FIELDS if f != "sid"))
_FAULT_FIELDS = (
    "count",
    "for_s",
    "retry_after",
    "delay_s",
    "sid",
    "size_bytes",
    "framing",
    "field",
    "endless",
)
_SCRIPT_FIELDS = ("scripts", "sids", "steps")


def handle_control(sim: SimulatorServer, method: str, path: str, body: bytes) -> Reply:
    """Bad input is a 400 `{"error": ...}`, an unknown conference or route a 404."""
    try:
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        status, payload = _control_route(sim, method, path, data)
    except KeyError as err:
        return json_reply(404, {"error": str(err.args[0] if err.args else err)})
    except (ValueError, TypeError, RecursionError) as err:
        return json_reply(400, {"error": str(err)})
    return json_reply(status, payload)


def _control_route(
    sim: SimulatorServer, method: str, path: str, data: dict[str, Any]
) -> tuple[int, Any]:
    state = sim.state
    route = (method, path)
    if route == ("POST", "/_sim/conferences"):
        return 201, state.create(**_creation(sim, data, _CREATE_FIELDS))
    if route == ("POST", "/_sim/conferences/bulk"):
        kwargs = _creation(sim, data, _BULK_FIELDS)
        return 201, {"sids": state.create_many(kwargs.pop("count", None), **kwargs)}
    if route == ("POST", "/_sim/scripts"):
        return 200, {"scheduled": state.script_many(_scripts(data))}
    if route == ("POST", "/_sim/faults"):
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ValueError("fault needs a kind")
        options = _fields({k: v for k, v in data.items() if k != "kind"}, _FAULT_FIELDS)
        return 201, {"id": sim.faults.add(kind, **options)}
    if route == ("DELETE", "/_sim/faults"):
        return 200, {"cleared": sim.faults.clear()}
    if route == ("GET", "/_sim/stats"):
        return 200, sim.stats.snapshot()
    if route == ("POST", "/_sim/served"):
        within = data.get("within_s")
        if not isinstance(within, int | float) or isinstance(within, bool) or within <= 0:
            raise ValueError("within_s must be a positive number of seconds")
        return 200, {"conferences": state.served_within(float(within))}
    if route == ("POST", "/_sim/reset"):
        sim.reset()
        return 200, {}
    if m := _CONTROL_CONF_RE.match(path):
        return _conference_route(sim, method, m["sid"], m["rest"] or "", data)
    raise KeyError(f"no control route {method} {path}")


def _creation(
    sim: SimulatorServer, data: dict[str, Any], allowed: tuple[str, ...]
) -> dict[str, Any]:
    kwargs = _fields(data, allowed)
    kwargs.setdefault("account_sid", sim.account_sid)
    callback = kwargs.get("status_callback")
    if callback is not None and not str(callback).startswith(("http://", "https://")):
        raise ValueError("status_callback must be an http(s) URL")
    return kwargs


def _scripts(data: dict[str, Any]) -> dict[str, Any]:
    """`{"scripts": {sid: [steps]}}`, or `{"sids": [...], "steps": [...]}` for one script."""
    _fields(data, _SCRIPT_FIELDS)
    if "scripts" in data:
        scripts = data["scripts"]
        if not isinstance(scripts, Mapping) or set(data) != {"scripts"}:
            raise ValueError('"scripts" must be an object of SID: [steps], given alone')
        return {str(sid): parse_steps(_list(steps, sid)) for sid, steps in scripts.items()}
    sids = _list(data.get("sids"), "sids")
    if len(sids) > MAX_BULK or not all(isinstance(sid, str) for sid in sids):
        raise ValueError(f'"sids" must be a list of at most {MAX_BULK} SIDs')
    steps = parse_steps(_list(data.get("steps"), "steps"))
    return dict.fromkeys(sids, steps)


def _list(value: object, what: object) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def _fields(data: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The given fields, refusing unknown ones so a typo is an error, not a silent default."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected some of {list(allowed)}")
    return {k: v for k, v in data.items() if v is not None}


def _conference_route(
    sim: SimulatorServer, method: str, sid: str, rest: str, data: dict[str, Any]
) -> tuple[int, Any]:
    state = sim.state
    if (method, rest) == ("GET", ""):
        return 200, state.peek(sid)
    if (method, rest) == ("POST", "/status"):
        if "status" not in data:
            raise ValueError("status is required")
        return 200, state.set_status(sid, data["status"], data.get("reason"), data.get("call_sid"))
    if (method, rest) == ("POST", "/script"):
        steps = parse_steps(data.get("steps") or [])
        return 200, {"sid": sid, "scheduled": state.script(sid, steps)}
    if (method, rest) == ("GET", "/transitions"):
        return 200, state.transitions(sid)
    raise KeyError(f"no control route {method} {rest or '/'} for {sid}")
