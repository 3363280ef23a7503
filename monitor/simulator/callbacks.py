"""Twilio-style status callbacks: signed form POSTs from one background thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import queue
import threading
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlencode

from monitor.simulator.state import CallbackEvent

_log = logging.getLogger(__name__)

CALLBACK_TIMEOUT_S = 2.0


def twilio_signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """`X-Twilio-Signature`: base64 HMAC-SHA1 over the URL then sorted name+value pairs."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class CallbackSender:
    """Posts signed callbacks from one thread; failures are logged and dropped, as Twilio does."""

    def __init__(self, auth_token: str) -> None:
        self._auth_token = auth_token
        self._queue: queue.Queue[CallbackEvent | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        # Loopback receivers in tests: never route a callback through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def enqueue(self, events: list[CallbackEvent]) -> None:
        for event in events:
            self._queue.put(event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            self._post(event)

    def _post(self, event: CallbackEvent) -> None:
        form = event.form()
        request = urllib.request.Request(
            event.url,
            data=urlencode(form).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(event.url, form, self._auth_token),
            },
        )
        try:
            with self._opener.open(request, timeout=CALLBACK_TIMEOUT_S) as response:
                response.read()
        except (OSError, ValueError) as err:
            _log.warning(
                "event=simulator_callback_failed conference=%s callback=%s error=%s",
                event.conference_sid,
                event.event,
                err,
            )
