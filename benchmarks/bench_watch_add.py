"""`watch add` of many SIDs, as an operator runs it, and the command line's start-up cost.

Times the CLI as a subprocess (`watch add --from-file`, a relabel of all of them,
`watch list --json`) on a fresh SQLite file, or on PostgreSQL with --pg-url, and
`conference-monitor --version` for the fixed cost of starting the command.

    .venv/bin/python benchmarks/bench_watch_add.py --sids 40000
    .venv/bin/python benchmarks/bench_watch_add.py --sids 40000 \
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Local only; bounded in time; never part of the test run. (--pg-url needs an
empty database: the tables are created in it.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCOUNT = "AC" + "0" * 32


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env, timeout=600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sids", type=int, default=40_000)
    parser.add_argument("--pg-url", help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-watch-add-"))
    url = args.pg_url or f"sqlite:///{folder}/bench.db"
    env = {**os.environ, "CONFERENCE_MONITOR_DATABASE_URL": url}
    cli = [sys.executable, "-m", "monitor"]
    sids = folder / "sids.txt"
    sids.write_text("".join(f"CF{i:032x}\n" for i in range(args.sids)))
    timed([*cli, "db", "upgrade"], env)
    startup = min(timed([*cli, "--version"], env) for _ in range(3))
    add = [*cli, "watch", "add", "--from-file", str(sids), "--account", ACCOUNT]
    first = timed(add, env)
    relabel = timed([*add, "--label", "bench"], env)
    listing = timed([*cli, "watch", "list", "--json"], env)
    print(f"database             {url.split('://')[0]}")
    print(f"command start-up     {startup:.2f}s (conference-monitor --version, best of 3)")
    print(f"watch add            {args.sids} new SIDs in {first:.2f}s")
    print(f"watch add --label    {args.sids} relabelled in {relabel:.2f}s")
    print(f"watch list --json    {args.sids} rows in {listing:.2f}s")


if __name__ == "__main__":
    main()
