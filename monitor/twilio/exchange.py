"""One HTTP attempt to Twilio under the call's deadline: send, then read a capped body.

Everything that can go wrong on the wire becomes a `TwilioError` here; what
the answer means (parse it, or map its status to an error) is the client's.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass

import urllib3.exceptions
from urllib3 import BaseHTTPResponse

from monitor.twilio.decode import too_large
from monitor.twilio.errors import DeadlineExceeded, TransientError, error_for_transport
from monitor.twilio.transport import (
    WATCHDOG,
    BodyTooLarge,
    Deadline,
    DeadlinePassed,
    Pool,
    read_body,
)

ERROR_BODY_CAP_BYTES = 64 * 1024  # an error body only has to yield a code and a message
MIN_TIMEOUT_S = 0.05
# What the wire can raise: sending, reading the status line and headers, reading the body.
_WIRE_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)

ResponseHook = Callable[[str, int | None, float], None]
"""`on_response(operation, http_status_or_None, seconds)`, called once per HTTP attempt."""


@dataclass(frozen=True)
class Answer:
    """A complete response: its status, its body (capped) and its `Retry-After`, if any."""

    status: int
    body: bytes
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Request:
    op: str  # fetch, end, list, verify: the label `on_response` gets
    method: str
    url: str
    sid: str | None
    cap: int
    params: dict[str, str] | None = None
    data: dict[str, str] | None = None


class Exchanger:
    """Makes attempts on one pool with fixed timeouts, each bounded by a deadline."""

    def __init__(
        self,
        pool: Pool,
        timeouts: tuple[float, float],
        deadline_s: float,
        on_response: ResponseHook | None,
    ) -> None:
        self._pool = pool
        self._timeouts = timeouts
        self.deadline_s = deadline_s
        self._on_response = on_response

    def attempt(self, request: Request, deadline_at: float) -> Answer:
        """One attempt that ends by `deadline_at` (a `time.monotonic()` value)."""
        remaining = deadline_at - time.monotonic()
        if remaining < MIN_TIMEOUT_S:
            raise self.late(request)
        connect, read = self._timeouts
        timeout = (min(connect, remaining), min(read, remaining))
        began = time.perf_counter()
        with WATCHDOG.deadline(deadline_at) as deadline:
            try:
                response = self._pool.request(
                    request.method,
                    request.url,
                    params=request.params,
                    data=request.data,
                    timeout=timeout,
                )
            except _WIRE_ERRORS as exc:
                self._observe(request.op, None, began)
                if deadline.passed():
                    raise self.late(request) from exc
                raise error_for_transport(exc, request.url, request.sid) from exc
            try:
                body = self._body(request, response, deadline)
            finally:
                deadline.release()  # before the connection can go back to the pool
                response.close()  # a no-op for a connection read to the end and pooled
                response.release_conn()
                self._observe(request.op, response.status, began)
        return Answer(response.status, body, response.headers.get("Retry-After"))

    def late(self, request: Request) -> DeadlineExceeded:
        limit = f"{self.deadline_s:g}s"
        reason = f"no complete answer from Twilio within the {limit} request deadline"
        return DeadlineExceeded(reason, url=request.url, sid=request.sid)

    def _body(self, request: Request, response: BaseHTTPResponse, deadline: Deadline) -> bytes:
        """The capped body; an error body over its cap is dropped, a 2xx one refused."""
        ok = 200 <= response.status < 300
        cap = request.cap if ok else ERROR_BODY_CAP_BYTES
        try:
            return read_body(response, cap=cap, deadline=deadline, read_timeout_s=self._timeouts[1])
        except DeadlinePassed:
            raise self.late(request) from None
        except BodyTooLarge as exc:
            if not ok:
                return b""
            raise too_large(request.url, request.sid, cap, exc.declared) from None
        except _WIRE_ERRORS as exc:
            if deadline.passed():
                raise self.late(request) from exc
            reason = f"response from Twilio cut short ({type(exc).__name__})"
            raise TransientError(reason, url=request.url, sid=request.sid) from exc

    def _observe(self, op: str, status: int | None, began: float) -> None:
        if self._on_response is not None:
            self._on_response(op, status, time.perf_counter() - began)
