"""The sd_notify client against real AF_UNIX datagram sockets, as systemd provides them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.sdnotify import SystemdNotifier

# A safety net so a broken sender fails the test instead of hanging it.
RECV_TIMEOUT_S = 5.0


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # AF_UNIX paths are limited to 108 bytes; a factory directory stays short.
    return tmp_path_factory.mktemp("sd")


@pytest.fixture
def path_socket(socket_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(socket_dir / "notify")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"conference-monitor-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


@pytest.fixture
def notifier_for() -> Iterator[Callable[..., SystemdNotifier]]:
    made: list[SystemdNotifier] = []

    def make(**environ: str) -> SystemdNotifier:
        notifier = SystemdNotifier.from_environ(environ)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()


def test_path_socket_receives_each_message_as_sent(path_socket, notifier_for) -> None:
    path, receiver = path_socket
    notifier = notifier_for(NOTIFY_SOCKET=path)
    assert notifier.enabled
    assert notifier.ready()
    assert receiver.recv(4096) == b"READY=1"
    assert notifier.status("polling 3 watches")
    assert receiver.recv(4096) == b"STATUS=polling 3 watches"
    assert notifier.watchdog()
    assert receiver.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"
    assert notifier.notify("STATUS=a", "ERRNO=5")
    assert receiver.recv(4096) == b"STATUS=a\nERRNO=5"


def test_abstract_socket_written_with_at_sign(abstract_socket, notifier_for) -> None:
    name, receiver = abstract_socket
    notifier = notifier_for(NOTIFY_SOCKET=name)
    assert notifier.ready()
    assert receiver.recv(4096) == b"READY=1"


def test_reloading_sends_monotonic_timestamp(path_socket, notifier_for) -> None:
    path, receiver = path_socket
    notifier = notifier_for(NOTIFY_SOCKET=path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_cannot_inject_other_keys(path_socket, notifier_for) -> None:
    path, receiver = path_socket
    notifier_for(NOTIFY_SOCKET=path).status("bad\nREADY=1")
    assert receiver.recv(4096) == b"STATUS=bad READY=1"


def test_without_notify_socket_everything_is_a_no_op(notifier_for) -> None:
    notifier = notifier_for(WATCHDOG_USEC="30000000")
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.reloading()
    assert notifier.watchdog_interval_s() is None
    notifier.close()


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234"])
def test_unsupported_socket_kinds_disable_notification(value: str, notifier_for) -> None:
    assert not notifier_for(NOTIFY_SOCKET=value).enabled


def test_send_failure_returns_false_and_never_raises(
    socket_dir: Path, path_socket, notifier_for
) -> None:
    missing = notifier_for(NOTIFY_SOCKET=str(socket_dir / "nobody-listens"))
    assert missing.enabled
    assert not missing.ready()

    path, receiver = path_socket
    notifier = notifier_for(NOTIFY_SOCKET=path)
    assert notifier.ready()
    receiver.close()  # systemd went away: the next send fails, quietly
    assert not notifier.watchdog()


def test_close_is_idempotent_and_a_later_send_reopens(path_socket, notifier_for) -> None:
    path, receiver = path_socket
    notifier = notifier_for(NOTIFY_SOCKET=path)
    notifier.ready()
    notifier.close()
    notifier.close()
    assert notifier.status("after close")
    assert receiver.recv(4096) == b"READY=1"
    assert receiver.recv(4096) == b"STATUS=after close"


@pytest.mark.parametrize(
    ("environ", "expected_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "not-a-number"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
    ids=["no-pid", "our-pid", "other-pid", "garbage", "zero", "unset"],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    environ: dict[str, str], expected_s: float | None, path_socket, notifier_for
) -> None:
    path, _ = path_socket
    assert notifier_for(NOTIFY_SOCKET=path, **environ).watchdog_interval_s() == expected_s
