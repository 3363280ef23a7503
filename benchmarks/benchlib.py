"""What several benchmarks share: process CPU, free ports, percentiles, the CLI, a
daemon's metrics, a webhook receiver, a py-spy profile."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def profile(out: str | None, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy on `pid` for `seconds` into `out` (.txt: collapsed stacks, else an SVG
    flame graph); only samples holding the GIL, so CPU and not waits. None if no `out`."""
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fmt = "raw" if out.endswith(".txt") else "flamegraph"
    command = [spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-o", out]
    command += ["--nonblocking", "--gil", "-f", fmt]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (`/proc/PID/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cli(config: Path, *argv: str) -> None:
    """Run `conference-monitor ARGV --config CONFIG` as a user would; fail loudly."""
    subprocess.run(
        [sys.executable, "-m", "monitor", *argv, "--config", str(config)],
        check=True,
        capture_output=True,
    )


def metrics(port: int) -> dict[str, float]:
    """A daemon's `/metrics` samples by full name, labels included."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        body = r.read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("conference_monitor_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Receipts:
    """A loopback webhook receiver noting when each conference's end arrived."""

    def __init__(self) -> None:
        self.ended_at: dict[str, float] = {}
        receipts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body["type"] == "conference.ended":
                    receipts.ended_at.setdefault(body["data"]["conference_sid"], time.time())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
