"""End-to-end plumbing: the CLI as a subprocess, a webhook receiver on loopback, configs."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitor.simulator.server import DEFAULT_AUTH_TOKEN
from monitor.simulator.state import DEFAULT_ACCOUNT_SID

ACCOUNT = DEFAULT_ACCOUNT_SID
TOKEN = DEFAULT_AUTH_TOKEN
SECRET = "whsec_" + base64.b64encode(b"e2e-test-secret-0123456789abcdef").decode()


def cli(
    *args: str, config: Path | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m monitor ...` the way a user runs the console script."""
    argv = [sys.executable, "-m", "monitor", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=base_env(env), check=False
    )


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "CONFERENCE_MONITOR_"))
    }
    env.pop("NOTIFY_SOCKET", None)
    env.pop("COLUMNS", None)  # tables fit it; tests that want a width pass one
    env.update(extra or {})
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_config(
    folder: Path,
    *,
    sim_url: str,
    db_url: str,
    hook_url: str | None = None,
    interval: str = "300ms",
    extra: str = "",
    hook_extra: str = "",
) -> Path:
    hook = (
        f"""
[[notifiers]]
name = "hook"
type = "webhook"
url = "{hook_url}"
secret = "{SECRET}"
timeout = "2s"
{hook_extra}
"""
        if hook_url
        else ""
    )
    path = folder / "config.toml"
    path.write_text(
        f"""
[twilio]
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"
base_url = "{sim_url}"
read_timeout = "2s"

[database]
url = "{db_url}"

[polling]
interval = "{interval}"
jitter = "50ms"
not_found_grace = "2s"

[dispatch]
interval = "200ms"
{extra}

[[notifiers]]
name = "log"
type = "log"
{hook}
"""
    )
    return path


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def daemon(config: Path, log_path: Path, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """Start `run` with JSON logs appended to log_path; kill it if the test forgets."""
    log_file = log_path.open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config), "--log-format", "json"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        env=base_env(env),
    )
    try:
        yield Daemon(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log_file.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on loopback; `script` decides each answer (default 204)."""

    received: list[Received] = field(default_factory=list)
    script: Callable[[Received, int], tuple[int, dict[str, str]]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r.body) for r in self.received]


@contextmanager
def receiver(
    script: Callable[[Received, int], tuple[int, dict[str, str]]] | None = None,
) -> Iterator[Receiver]:
    state = Receiver(script=script)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got = Received(dict(self.headers.items()), body, time.time())
            with state.lock:
                state.received.append(got)
                index = len(state.received) - 1
            status, headers = state.script(got, index) if state.script else (204, {})
            if status == 0:  # "hang": never answer
                time.sleep(5)
                return
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


__all__ = ["signal"]
