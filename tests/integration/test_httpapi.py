"""The health/metrics endpoint over real HTTP on loopback."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from monitor.httpapi import HealthServer, parse_listen
from monitor.metrics import Metrics

# Lets stop() return promptly; the default suits a daemon, not a test suite.
FAST_STOP = {"shutdown_poll_s": 0.01}


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def request(server: HealthServer, path: str, method: str = "GET") -> Response:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., HealthServer]]:
    started: list[HealthServer] = []

    def start(
        readiness: Callable[[], tuple[bool, str]] = lambda: (True, "ready"),
        metrics: Metrics | None = None,
        **kwargs: float,
    ) -> HealthServer:
        server = HealthServer("127.0.0.1:0", metrics or Metrics(), readiness, **FAST_STOP, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def samples(server: HealthServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics scrape, keyed by name and labels."""
    body = request(server, "/metrics").body.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_healthz_answers_ok(serve) -> None:
    resp = request(serve(), "/healthz")
    assert (resp.status, resp.body) == (200, b"ok\n")
    assert resp.headers["Content-Type"].startswith("text/plain")


def test_query_string_is_ignored_and_head_has_no_body(serve) -> None:
    server = serve()
    assert request(server, "/healthz?probe=1").status == 200
    # Raw bytes: http.client would not read a body after HEAD even if one came.
    with socket.create_connection(server.address, timeout=10) as raw:
        raw.sendall(b"HEAD /healthz HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: raw.recv(4096), b""))
    assert reply.startswith(b"HTTP/1.0 200 ")
    assert b"\r\nContent-Length: 3\r\n" in reply
    assert reply.endswith(b"\r\n\r\n")


def test_readyz_follows_the_readiness_callback(serve) -> None:
    state = {"ready": True, "detail": "database ok, scheduler running"}
    server = serve(lambda: (state["ready"], state["detail"]))
    resp = request(server, "/readyz")
    assert (resp.status, resp.body) == (200, b"database ok, scheduler running\n")

    state.update(ready=False, detail="schema behind: run `conference-monitor db upgrade`")
    resp = request(server, "/readyz")
    assert resp.status == 503
    assert resp.body == b"schema behind: run `conference-monitor db upgrade`\n"


def test_readyz_is_not_ready_when_the_callback_raises(serve) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("database is locked")

    resp = request(serve(broken), "/readyz")
    assert resp.status == 503
    assert b"database is locked" in resp.body


def test_a_hung_readiness_check_times_out_and_runs_only_once(serve) -> None:
    release = threading.Event()
    calls = []

    def hung() -> tuple[bool, str]:
        calls.append(1)
        release.wait()
        return True, "late"

    server = serve(hung, readiness_timeout_s=0.05)
    try:
        for _ in range(3):
            resp = request(server, "/readyz")
            assert (resp.status, resp.body) == (503, b"readiness check timed out\n")
        assert len(calls) == 1  # retried probes wait on the same stuck check
    finally:
        release.set()


def test_metrics_are_prometheus_text_and_move_with_the_daemon(serve) -> None:
    metrics = Metrics()
    server = serve(metrics=metrics)
    resp = request(server, "/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    before = samples(server)
    assert before[("conference_monitor_polls_total", frozenset({("outcome", "ok")}))] == 0
    assert before[("conference_monitor_config_last_reload_success", frozenset())] == 1

    metrics.observe_poll("ok", 0.02)
    metrics.observe_poll("rate_limited", 3.0)
    metrics.count_twilio_error(20429)
    metrics.count_transition("conference.started")
    metrics.count_delivery("ops-webhook", "retry")
    metrics.config_reloaded(ok=False)
    metrics.snapshots_written(2)
    metrics.set_outbox(7, 42.5)

    after = samples(server)
    assert after[("conference_monitor_polls_total", frozenset({("outcome", "ok")}))] == 1
    assert after[("conference_monitor_polls_total", frozenset({("outcome", "rate_limited")}))] == 1
    duration = "conference_monitor_poll_duration_seconds"
    assert after[(f"{duration}_count", frozenset())] == 2
    assert after[(f"{duration}_bucket", frozenset({("le", "0.025")}))] == 1
    assert after[("conference_monitor_twilio_errors_total", frozenset({("code", "20429")}))] == 1
    transitions = frozenset({("type", "conference.started")})
    assert after[("conference_monitor_transitions_total", transitions)] == 1
    delivery = frozenset({("notifier", "ops-webhook"), ("outcome", "retry")})
    assert after[("conference_monitor_deliveries_total", delivery)] == 1
    assert (
        after[("conference_monitor_config_reloads_total", frozenset({("result", "failure")}))] == 1
    )
    assert after[("conference_monitor_config_last_reload_success", frozenset())] == 0
    assert after[("conference_monitor_snapshots_written_total", frozenset())] == 2
    assert after[("conference_monitor_outbox_backlog", frozenset())] == 7
    assert after[("conference_monitor_outbox_oldest_pending_age_seconds", frozenset())] == 42.5
    assert after[("conference_monitor_last_poll_timestamp_seconds", frozenset())] > 0


def test_refresher_runs_before_each_scrape_and_its_failure_keeps_the_rest(serve) -> None:
    metrics = Metrics()
    counts = iter([{"active": 3, "paused": 1}, {"active": 2}])
    metrics.set_refresher(lambda: metrics.set_watches(next(counts)))
    server = serve(metrics=metrics)

    first = samples(server)
    assert first[("conference_monitor_watches", frozenset({("status", "active")}))] == 3
    assert first[("conference_monitor_watches", frozenset({("status", "paused")}))] == 1
    second = samples(server)
    assert second[("conference_monitor_watches", frozenset({("status", "active")}))] == 2
    assert second[("conference_monitor_watches", frozenset({("status", "paused")}))] == 0

    metrics.observe_poll("error", 0.1)
    third = samples(server)  # the refresher now raises StopIteration: still a scrape
    assert third[("conference_monitor_watches", frozenset({("status", "active")}))] == 2
    assert third[("conference_monitor_polls_total", frozenset({("outcome", "error")}))] == 1


def test_unknown_label_values_are_logged_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(process_metrics=False)
    metrics.observe_poll("okay", 0.1)
    metrics.count_delivery("ops-webhook", "sent")
    body = metrics.render().decode()
    assert "okay" not in body and "sent" not in body
    assert "conference_monitor_poll_duration_seconds_count 1.0" in body  # the poll still counts
    unknown = [r.getMessage() for r in caplog.records if "metrics.unknown_label" in r.getMessage()]
    assert len(unknown) == 2


def test_outbox_pending_counts_as_retry() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.count_delivery("ops-webhook", "pending")
    assert b'deliveries_total{notifier="ops-webhook",outcome="retry"} 1.0' in metrics.render()


def test_two_metrics_objects_do_not_share_series() -> None:
    one, two = Metrics(process_metrics=False), Metrics(process_metrics=False)
    one.observe_poll("ok", 0.1)
    assert b'conference_monitor_polls_total{outcome="ok"} 0.0' in two.render()


@pytest.mark.parametrize(("path", "method"), [("/", "GET"), ("/metricz", "GET"), ("/x", "HEAD")])
def test_unknown_paths_are_404(serve, path: str, method: str) -> None:
    assert request(serve(), path, method=method).status == 404


def test_writes_are_refused(serve) -> None:
    resp = request(serve(), "/metrics", method="POST")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"


def test_a_taken_port_fails_start_and_stop_is_idempotent(serve) -> None:
    first = serve()
    host, port = first.address
    second = HealthServer(f"{host}:{port}", Metrics(), lambda: (True, ""))
    with pytest.raises(OSError):
        second.start()
    second.stop()
    first.stop()
    first.stop()
    with pytest.raises(RuntimeError):
        _ = first.address


def test_ipv6_loopback(serve) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = HealthServer("[::1]:0", Metrics(), lambda: (True, "ready"), **FAST_STOP)
    server.start()
    try:
        assert server.address[0] == "::1"
        assert request(server, "/healthz").status == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9465", ("127.0.0.1", 9465)), ("[::1]:0", ("::1", 0)), (":80", ("", 80))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:http", "1.2.3.4:70000", "::1:80"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


def test_registered_route_gets_the_body_and_the_cap_is_enforced(serve) -> None:
    from monitor.httpapi import Request, Route
    from monitor.httpapi import Response as Reply

    seen: list[Request] = []

    def echo(req: Request) -> Reply:
        seen.append(req)
        return Reply(201, req.body[::-1], "application/octet-stream", (("X-Seen", "1"),))

    server = HealthServer("127.0.0.1:0", Metrics(), lambda: (True, "ready"), **FAST_STOP)
    server.add_route(Route("/hook", echo, methods=("POST",), max_body_bytes=8))
    server.start()
    try:
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", "/hook?a=1", body=b"abc", headers={"Content-Type": "x/y"})
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.headers["X-Seen"]) == (201, b"cba", "1")
        assert seen[0].query == {"a": ["1"]} and seen[0].headers["content-type"] == "x/y"
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", "/hook", body=b"x" * 9)
        assert conn.getresponse().status == 413
        conn.close()
        assert request(server, "/hook").status == 405
        assert len(seen) == 1
        with pytest.raises(RuntimeError):
            server.add_route(Route("/late", echo))
    finally:
        server.stop()
