"""The listener's bounds over real loopback sockets: threads, connections, slow clients."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from monitor.httpapi import HealthServer
from monitor.metrics import Metrics


@pytest.fixture
def server() -> Iterator[HealthServer]:
    s = HealthServer(
        "127.0.0.1:0",
        Metrics(process_metrics=False),
        lambda: (True, "ready"),
        shutdown_poll_s=0.01,
        workers=4,
        max_connections=300,
        header_timeout_s=1.0,
    )
    s.start()
    yield s
    s.stop()


def get(server: HealthServer, path: str = "/healthz") -> int:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def open_idle(server: HealthServer, count: int) -> list[socket.socket]:
    return [socket.create_connection(server.address, timeout=5) for _ in range(count)]


def test_800_idle_connections_cost_no_threads_and_probes_still_answer(server) -> None:
    before = threading.active_count()
    idle = open_idle(server, 800)
    try:
        time.sleep(0.2)
        assert threading.active_count() == before  # the selector holds them, not threads
        assert get(server) == 200  # room is made by dropping the oldest idle socket
        assert server._server is not None and server._server.open_connections <= 300
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_never_finishes_its_headers_is_dropped(server) -> None:
    slow = socket.create_connection(server.address, timeout=5)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
    started = time.monotonic()
    assert slow.recv(100) == b""  # closed by the server
    assert 0.9 <= time.monotonic() - started < 4.0
    slow.close()
    assert get(server) == 200


def test_trickled_headers_are_answered_once_complete(server) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        for piece in (b"GET /hea", b"lthz HTTP/1.0\r\n", b"X-A: 1\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"ok\n")


def test_oversized_headers_are_refused(server) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nX-Big: " + b"a" * 70_000)
        reply = sock.recv(200)
    assert reply.startswith(b"HTTP/1.0 431")


def test_concurrent_requests_share_the_fixed_pool(server) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = get(server, "/metrics")
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 40


def test_when_every_slot_is_busy_new_connections_get_503() -> None:
    release = threading.Event()
    server = HealthServer(
        "127.0.0.1:0",
        Metrics(process_metrics=False),
        lambda: (release.wait(5), "ready"),
        shutdown_poll_s=0.01,
        workers=1,
        max_connections=2,
        readiness_timeout_s=5,
    )
    server.start()
    try:
        held = []
        for _ in range(2):  # both slots busy: one in the worker, one queued behind it
            sock = socket.create_connection(server.address, timeout=5)
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            held.append(sock)
        time.sleep(0.2)
        with socket.create_connection(server.address, timeout=5) as extra:
            assert extra.recv(100).startswith(b"HTTP/1.0 503")
        release.set()
        for sock in held:
            assert sock.recv(100).startswith(b"HTTP/1.0 200")
            sock.close()
    finally:
        release.set()
        server.stop()
