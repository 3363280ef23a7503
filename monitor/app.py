"""The composition root: turns one `Settings` into the objects that do the work."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from monitor.config import NotifierSettings, Settings
from monitor.db.engine import make_engine
from monitor.db.outbox import Outbox
from monitor.db.store import Store
from monitor.events import NewEvent
from monitor.metrics import Metrics
from monitor.notify.base import Notifier
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.factory import delivery_policy, make_notifier
from monitor.notify.filters import recipients
from monitor.outcomes import PollPolicy, Recipients
from monitor.ratelimit import RateLimiter
from monitor.service import Poller
from monitor.twilio.client import TwilioClient

log = logging.getLogger("monitor")

# When the file names no notifier, every event still reaches the log.
DEFAULT_NOTIFIERS = (NotifierSettings(name="log", type="log"),)


class MissingCredentials(RuntimeError):
    """No Twilio credentials were configured; says where they can come from."""


def effective_notifiers(settings: Settings) -> tuple[NotifierSettings, ...]:
    return settings.notifiers or DEFAULT_NOTIFIERS


def recipients_for(settings: Settings) -> Recipients:
    notifiers = effective_notifiers(settings)

    def choose(event_type: str, data: dict[str, Any]) -> tuple[str, ...]:
        return recipients(notifiers, event_type, data)

    return choose


def build_notifier(spec: NotifierSettings) -> Notifier:
    """The notifier a validated `[[notifiers]]` table describes (secrets revealed here only)."""
    return make_notifier(spec)


def build_notifiers(settings: Settings) -> dict[str, Notifier]:
    return {spec.name: build_notifier(spec) for spec in effective_notifiers(settings)}


def retry_budget_s(interval_s: float) -> float:
    """Retries of one poll must end before the next poll of the same SID is due."""
    return max(0.3, min(interval_s * 0.8, 10.0))


def build_client(
    settings: Settings, on_response: Callable[..., None] | None = None
) -> TwilioClient:
    tw = settings.twilio
    auth = tw.basic_auth()
    if auth is None or not tw.account_sid:
        raise MissingCredentials(
            "no Twilio credentials: set TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN "
            "(or TWILIO_API_KEY + TWILIO_API_SECRET), in the environment, in "
            "$CREDENTIALS_DIRECTORY, or in the [twilio] section of the config file"
        )
    kwargs: dict[str, Any] = {}
    if on_response is not None:
        kwargs["on_response"] = on_response
    return TwilioClient(
        account_sid=tw.account_sid,
        username=auth[0],
        password=auth[1],
        base_url=TwilioClient.host_for(tw.edge, tw.region, tw.base_url),
        connect_timeout_s=tw.connect_timeout_s,
        read_timeout_s=tw.read_timeout_s,
        pool_size=tw.concurrency,
        retry_budget_s=retry_budget_s(settings.polling.interval_s),
        request_deadline_s=tw.request_deadline_s,
        **kwargs,
    )


@dataclass
class App:
    """Everything a command needs, built from settings; `close()` releases it all."""

    settings: Settings
    engine: Engine
    store: Store
    outbox: Outbox
    metrics: Metrics = field(default_factory=Metrics)
    client: TwilioClient | None = None
    poller: Poller | None = None
    dispatcher: Dispatcher | None = None

    @classmethod
    def open(cls, settings: Settings) -> App:
        engine = make_engine(settings.database.url, pool_size=settings.twilio.concurrency + 4)
        return cls(settings, engine, Store(engine), Outbox(engine))

    def with_poller(self, on_events: Callable[[list[NewEvent]], None] | None = None) -> Poller:
        if self.poller is None:
            self.client = build_client(self.settings)
            polling, tw = self.settings.polling, self.settings.twilio
            self.poller = Poller(
                self.store,
                self.client,
                PollPolicy(polling.interval_s, polling.not_found_grace_s),
                recipients_for(self.settings),
                concurrency=tw.concurrency,
                jitter_s=polling.jitter_s,
                batch_size=polling.batch_size,
                use_list=polling.use_list,
                discover=polling.discover,
                request_deadline_s=tw.request_deadline_s,
                limiter=RateLimiter(tw.max_requests_per_second),
                on_poll=self.metrics.observe_poll,
                metrics=self.metrics,
                on_events=on_events,
            )
        return self.poller

    def with_dispatcher(self, notifiers: Mapping[str, Notifier] | None = None) -> Dispatcher:
        if self.dispatcher is None:
            d = self.settings.dispatch
            self.dispatcher = Dispatcher(
                self.outbox,
                notifiers if notifiers is not None else build_notifiers(self.settings),
                lease_s=d.lease_s,
                batch_size=d.batch_size,
                give_up_after_s=d.give_up_after_s,
                retry_delays_s=d.retry_delays_s,
                on_outcome=self.metrics.count_delivery,
                # Read at every tick, so a reload's new thresholds apply at once.
                policy_for=lambda name: delivery_policy(self.settings, name),
                on_health=self.metrics.set_notifier_health,
            )
        return self.dispatcher

    def close(self) -> None:
        if self.poller is not None:
            self.poller.close()
        if self.client is not None:
            self.client.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.engine.dispose()
