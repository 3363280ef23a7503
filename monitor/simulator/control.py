"""A small client for the simulator's `/_sim/` control interface (tests, demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import requests

DEFAULT_TIMEOUT_S = 10.0


class SimulatorControlError(RuntimeError):
    """The control interface refused a request; carries its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"simulator control: HTTP {status}: {message}")
        self.status = status


class SimulatorControl:
    """`with SimulatorControl(sim.url) as ctl: ctl.create_conference(...)`."""

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # loopback: never through an environment proxy

    def create_conference(self, **fields: Any) -> dict[str, Any]:
        """Fields: friendly_name, region, status, sid, account_sid, hidden_for_s,
        status_callback; returns the conference JSON."""
        result: dict[str, Any] = self._call("POST", "/_sim/conferences", fields)
        return result

    def create_conferences(self, count: int, **fields: Any) -> list[str]:
        """`count` conferences in one request (fields as `create_conference`, but no sid;
        `{n}` in friendly_name becomes 0, 1, 2, ...); returns their SIDs in order."""
        result = self._call("POST", "/_sim/conferences/bulk", {"count": count, **fields})
        return [str(sid) for sid in result["sids"]]

    def script_many(self, scripts: Mapping[str, Iterable[Mapping[str, Any]]]) -> int:
        """A script per SID, in one request; returns the number of steps scheduled."""
        body = {"scripts": {sid: [dict(step) for step in steps] for sid, steps in scripts.items()}}
        return int(self._call("POST", "/_sim/scripts", body)["scheduled"])

    def script_all(self, sids: Iterable[str], steps: Iterable[Mapping[str, Any]]) -> int:
        """The same script for every SID (e.g. end them all in 5 s), in one request."""
        body = {"sids": list(sids), "steps": [dict(step) for step in steps]}
        return int(self._call("POST", "/_sim/scripts", body)["scheduled"])

    def conference(self, sid: str) -> dict[str, Any]:
        """The conference as the API would show it, even while hidden."""
        result: dict[str, Any] = self._call("GET", f"/_sim/conferences/{sid}")
        return result

    def set_status(
        self, sid: str, status: str, reason: str | None = None, call_sid: str | None = None
    ) -> dict[str, Any]:
        body = {"status": status, "reason": reason, "call_sid": call_sid}
        result: dict[str, Any] = self._call("POST", f"/_sim/conferences/{sid}/status", body)
        return result

    def script(self, sid: str, steps: Iterable[Mapping[str, Any]]) -> int:
        """Schedule `{after_s, status, reason?, call_sid?}` steps, replacing pending ones."""
        body = {"steps": [dict(step) for step in steps]}
        return int(self._call("POST", f"/_sim/conferences/{sid}/script", body)["scheduled"])

    def transitions(self, sid: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/_sim/conferences/{sid}/transitions")
        return result

    def add_fault(self, kind: str, **options: Any) -> str:
        """Options: count, for_s, sid, retry_after (429), delay_s (delay, drip),
        size_bytes and framing (huge), field (mismatch), endless (loop)."""
        return str(self._call("POST", "/_sim/faults", {"kind": kind, **options})["id"])

    def clear_faults(self) -> int:
        return int(self._call("DELETE", "/_sim/faults")["cleared"])

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_sim/stats")
        return result

    def served_within(self, seconds: float) -> int:
        """How many conferences the API answered (fetched or listed) in the last `seconds`."""
        return int(self._call("POST", "/_sim/served", {"within_s": seconds})["conferences"])

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self._session.request(
            method, self.base_url + path, json=body, timeout=self._timeout_s
        )
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise SimulatorControlError(response.status_code, message)
        return response.json()
