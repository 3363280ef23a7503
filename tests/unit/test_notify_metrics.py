"""Notifier health and delivery timing as /metrics shows them."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor.metrics import Metrics
from monitor.notify.dispatcher import NotifierHealth
from monitor.notify.retry import DeliveryPolicy


def test_a_notifiers_state_thresholds_and_attempt_times_are_exported() -> None:
    metrics = Metrics(process_metrics=False)
    until = datetime(2026, 1, 1, tzinfo=UTC)
    policy = DeliveryPolicy(concurrency=3, breaker_threshold=7, breaker_cooldown_s=45.0)
    metrics.set_notifier_health(NotifierHealth("hook", "open", 7, policy, until, "circuit open"))
    metrics.count_delivery("hook", "pending", 0.2)
    text = metrics.render().decode()
    assert 'conference_monitor_notifier_state{notifier="hook",state="open"} 1.0' in text
    assert 'conference_monitor_notifier_state{notifier="hook",state="ok"} 0.0' in text
    assert 'conference_monitor_notifier_consecutive_failures{notifier="hook"} 7.0' in text
    assert 'paused_until_timestamp_seconds{notifier="hook"} 1.7672256e+09' in text
    assert 'conference_monitor_notifier_breaker_threshold{notifier="hook"} 7.0' in text
    assert 'conference_monitor_notifier_breaker_cooldown_seconds{notifier="hook"} 45.0' in text
    assert 'conference_monitor_notifier_breaker_window_seconds{notifier="hook"} 10.0' in text
    assert 'conference_monitor_notifier_concurrency{notifier="hook"} 3.0' in text
    assert 'conference_monitor_deliveries_total{notifier="hook",outcome="retry"} 1.0' in text
    assert 'conference_monitor_delivery_duration_seconds_count{notifier="hook"} 1.0' in text
    metrics.set_notifier_health(NotifierHealth("hook", "ok", 0, policy))
    text = metrics.render().decode()
    assert 'conference_monitor_notifier_state{notifier="hook",state="open"} 0.0' in text
    assert 'paused_until_timestamp_seconds{notifier="hook"} 0.0' in text
