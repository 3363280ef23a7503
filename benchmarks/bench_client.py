"""The Twilio client's own costs: parse and fingerprint per item, list and fetch throughput.

The simulator runs as its own process (`conference-monitor simulate`), so the
CPU figures printed for listing and fetching are the client's alone:

    .venv/bin/python benchmarks/bench_client.py --sizes 10000 100000 --fetches 3000

Figures: per-item cost of `parse_conference` and `fingerprint` (best of
several runs), then for each size a full `Status=in-progress` listing in pages
of 1,000 (wall seconds, pages and items per second, client CPU per item, peak
client RSS) with items kept raw and again parsed, then sequential fetches per
second and client CPU per fetch. Loopback only; never part of the test run.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import time
import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monitor.domain import fingerprint
from monitor.simulator.control import SimulatorControl
from monitor.simulator.server import DEFAULT_AUTH_TOKEN
from monitor.simulator.state import DEFAULT_ACCOUNT_SID
from monitor.twilio import TwilioClient, parse_conference

ITEM = {
    "account_sid": DEFAULT_ACCOUNT_SID,
    "api_version": "2010-04-01",
    "date_created": "Fri, 18 Feb 2011 19:26:50 +0000",
    "date_updated": "Fri, 18 Feb 2011 19:27:33 +0000",
    "friendly_name": "incident-4711",
    "sid": "CF" + "d" * 32,
    "region": "us1",
    "status": "completed",
    "subresource_uris": {
        "participants": "/2010-04-01/Accounts/AC/Conferences/CF/Participants.json",
        "recordings": "/2010-04-01/Accounts/AC/Conferences/CF/Recordings.json",
    },
    "uri": "/2010-04-01/Accounts/AC/Conferences/CF.json",
    "reason_conference_ended": "last-participant-left",
    "call_sid_ending_conference": "CA" + "1" * 32,
}


def per_item_us(function: object, number: int = 50_000) -> float:
    best = min(timeit.repeat(function, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def simulator() -> Iterator[str]:
    port = free_port()
    exe = Path(sys.executable).with_name("conference-monitor")
    proc = subprocess.Popen(
        [str(exe), "simulate", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with SimulatorControl(url, timeout_s=1) as ctl:
                    ctl.stats()
                break
            except Exception:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait()


def client_for(url: str) -> TwilioClient:
    return TwilioClient(
        account_sid=DEFAULT_ACCOUNT_SID,
        username=DEFAULT_ACCOUNT_SID,
        password=DEFAULT_AUTH_TOKEN,
        base_url=url,
        request_deadline_s=30.0,
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def listing(client: TwilioClient, parse: bool) -> tuple[int, int, float, float]:
    """One full in-progress listing: pages, items, wall seconds, client CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    pages = items = 0
    for page in client.list_conference_pages(status="in-progress"):
        pages += 1
        items += len(page.conferences) if parse else len(page.items)
    return pages, items, time.perf_counter() - wall, time.process_time() - cpu


def bench_list(url: str, size: int) -> list[str]:
    with SimulatorControl(url, timeout_s=300) as ctl:
        ctl.reset()
        started = time.perf_counter()
        sids = ctl.create_conferences(size, status="in-progress")
        made = time.perf_counter() - started
    print(f"\n{size} in-progress conferences (bulk create {made:.2f}s)")
    with client_for(url) as client:
        listing(client, parse=False)  # warm the simulator's JSON cache
        for parse in (False, True):
            pages, items, wall, cpu = listing(client, parse)
            what = "parsed" if parse else "raw   "
            print(
                f"  list {what}  {pages} pages  {wall:6.2f}s  {pages / wall:6.1f} pages/s  "
                f"{items / wall:8.0f} items/s  client CPU {cpu / items * 1e6:5.1f} us/item  "
                f"peak RSS {peak_rss_mib():.0f} MiB"
            )
    return sids


def bench_fetch(url: str, sids: list[str], count: int) -> None:
    with client_for(url) as client:
        for sid in sids[:50]:
            client.fetch_conference(sid)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            client.fetch_conference(sids[i % len(sids)])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per_fetch_ms = cpu / count * 1e3
    print(f"\nfetch  {count} sequential  {count / wall:.0f}/s  client CPU {per_fetch_ms:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--fetches", type=int, default=3000)
    args = parser.parse_args()
    print(f"parse_conference  {per_item_us(lambda: parse_conference(ITEM)):.2f} us/item")
    print(f"fingerprint       {per_item_us(lambda: fingerprint(ITEM)):.2f} us/item")
    with simulator() as url:
        sids: list[str] = []
        for size in args.sizes:
            sids = bench_list(url, size)
        bench_fetch(url, sids[:1000], args.fetches)


if __name__ == "__main__":
    main()
