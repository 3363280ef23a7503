"""`watch add` at scale: SIDs from a file or stdin, every bad line named, relabelling."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import base_env, cli, json_lines

ACCOUNT = "AC" + "1" * 32


def sid(i: int) -> str:
    return f"CF{i:032x}"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/w.db"\n[twilio]\nbase_url = "http://127.0.0.1:9"\n'
    )
    assert cli("db", "upgrade", config=path).returncode == 0
    return path


def watched(config: Path) -> dict[str, str | None]:
    rows = json_lines(cli("watch", "list", "--json", config=config).stdout)
    return {r["sid"]: r["label"] for r in rows}


def test_sids_from_a_file_with_comments_and_blank_lines(config: Path, tmp_path: Path) -> None:
    listing = tmp_path / "sids.txt"
    listing.write_text(f"# bridges\n{sid(1)}\n\n  {sid(2)}  # the second\n{sid(1)}\n")
    result = cli(
        "watch",
        "add",
        sid(3),
        "--from-file",
        str(listing),
        "--account",
        ACCOUNT,
        "--json",
        config=config,
    )
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [
        {"sid": sid(3), "result": "watching"},
        {"sid": sid(1), "result": "watching"},
        {"sid": sid(2), "result": "watching"},
    ]
    assert set(watched(config)) == {sid(1), sid(2), sid(3)}


def test_sids_from_stdin(config: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "monitor",
        "watch",
        "add",
        "--from-file",
        "-",
        "--account",
        ACCOUNT,
        "--config",
        str(config),
    ]
    result = subprocess.run(
        argv,
        input=f"{sid(7)}\n{sid(8)}\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"watching {sid(7)}", f"watching {sid(8)}"]


def test_every_malformed_line_is_reported_and_nothing_written(config: Path, tmp_path: Path) -> None:
    listing = tmp_path / "sids.txt"
    listing.write_text(f"{sid(1)}\nCF123\n# fine\n{sid(2)}\nnot-a-sid\x1b[2J\n")
    result = cli(
        "watch", "add", "CFbad", "--from-file", str(listing), "--account", ACCOUNT, config=config
    )
    assert result.returncode == 2
    assert "3 malformed conference SID(s)" in result.stderr
    assert "argument: 'CFbad'" in result.stderr
    assert f"{listing}:2: 'CF123'" in result.stderr
    assert f"{listing}:5: 'not-a-sid\\x1b[2J'" in result.stderr
    assert "nothing was changed" in result.stderr and "\x1b" not in result.stderr
    assert watched(config) == {}


def test_unreadable_inputs_are_usage_errors(config: Path, tmp_path: Path) -> None:
    missing = cli("watch", "add", "--from-file", str(tmp_path / "nope.txt"), config=config)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    bad = cli("watch", "add", "--from-file", str(binary), config=config)
    assert bad.returncode == 2 and "not UTF-8" in bad.stderr
    nothing = cli("watch", "add", "--account", ACCOUNT, config=config)
    assert nothing.returncode == 2 and "no SIDs given" in nothing.stderr


def test_label_relabels_an_existing_watch(config: Path) -> None:
    assert (
        cli(
            "watch", "add", sid(1), sid(2), "--label", "old", "--account", ACCOUNT, config=config
        ).returncode
        == 0
    )
    again = cli(
        "watch", "add", sid(1), sid(3), "--label", "new", "--account", ACCOUNT, config=config
    )
    assert again.stdout.splitlines() == [f"relabelled {sid(1)}", f"watching {sid(3)}"]
    kept = cli("watch", "add", sid(2), "--account", ACCOUNT, config=config)
    assert kept.stdout.splitlines() == [f"already watched {sid(2)}"]
    assert watched(config) == {sid(1): "new", sid(2): "old", sid(3): "new"}
    cleared = cli("watch", "add", sid(2), "--label", "", "--account", ACCOUNT, config=config)
    assert cleared.stdout.splitlines() == [f"relabelled {sid(2)}"]
    assert watched(config)[sid(2)] is None


def test_many_sids_in_chunks_with_progress_on_a_terminal(config: Path, tmp_path: Path) -> None:
    """More SIDs than one SQL statement may carry; progress only where a person watches."""
    count = 12_345
    listing = tmp_path / "many.txt"
    listing.write_text("".join(f"{sid(i)}\n" for i in range(count)))
    leader, follower = pty.openpty()
    argv = [
        sys.executable,
        "-m",
        "monitor",
        "watch",
        "add",
        "--from-file",
        str(listing),
        "--account",
        ACCOUNT,
        "--json",
        "--config",
        str(config),
    ]
    with open(os.devnull, "w") as devnull:
        process = subprocess.run(
            argv, stdout=devnull, stderr=follower, env=base_env(), timeout=120, check=False
        )
    os.close(follower)
    progress = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        progress += chunk
    os.close(leader)
    assert process.returncode == 0
    assert f"written 1000/{count} SIDs".encode() in progress
    assert f"written {count}/{count} SIDs".encode() in progress
    assert len(watched(config)) == count
    quiet = cli("watch", "add", "--from-file", str(listing), "--account", ACCOUNT, config=config)
    assert quiet.returncode == 0 and quiet.stderr == ""  # not a terminal: no progress
