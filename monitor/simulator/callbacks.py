"""Twilio-style status callbacks: signed form POSTs from a few background threads."""

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
SENDERS = 32


def twilio_signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """`X-Twilio-Signature`: base64 HMAC-SHA1 over the URL then sorted name+value pairs."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class CallbackSender:
    """Posts signed callbacks from a few threads, as Twilio does; failures are logged and
    dropped. One conference's callbacks always go through the same thread, in order."""

    def __init__(self, auth_token: str, senders: int = SENDERS) -> None:
        self._auth_token = auth_token
        self._queues: list[queue.Queue[CallbackEvent | None]] = [
            queue.Queue() for _ in range(senders)
        ]
        self._threads: list[threading.Thread] = []
        # Loopback receivers in tests: never route a callback through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def enqueue(self, events: list[CallbackEvent]) -> None:
        for event in events:
            self._queues[hash(event.conference_sid) % len(self._queues)].put(event)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name="sim-callbacks", daemon=True)
            for q in self._queues
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _run(self, q: queue.Queue[CallbackEvent | None]) -> None:
        while (event := q.get()) is not None:
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
