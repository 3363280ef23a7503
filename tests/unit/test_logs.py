"""Log lines: escaped, zone-marked, and with syslog priorities on the journal's stream."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _log_to(path: Path, environ: dict[str, str], fmt: str = "plain") -> str:
    with path.open("w") as stream:
        journal = {"JOURNAL_STREAM": "{}:{}".format(*_dev_ino(stream))} if environ else {}
        logs.configure(fmt, "DEBUG", {**journal, **environ}, stream=stream)
        log = logging.getLogger("monitor.test")
        log.debug("debugging")
        log.info("conference %s", "evil\nFAKE 2026 ERROR\x1b[2J", extra={"sid": "CF\r1"})
        log.warning("careful")
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.error("failed", exc_info=True)
        log.critical("down")
        for handler in logging.getLogger().handlers:
            handler.flush()
    return path.read_text()


def _dev_ino(stream: object) -> tuple[int, int]:
    found = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    return found.st_dev, found.st_ino


def test_journal_stream_gets_priorities_and_no_timestamp(
    tmp_path: Path, restore_logging: None
) -> None:
    text = _log_to(tmp_path / "journal", {"INVOCATION_ID": "x"})
    lines = text.splitlines()
    assert [line[:3] for line in lines if not line.startswith("<3>    ")] == [
        "<7>",
        "<6>",
        "<4>",
        "<3>",
        "<2>",
    ]
    assert lines[0] == "<7>DEBUG monitor.test: debugging"
    assert lines[1] == (
        "<6>INFO monitor.test: conference evil\\nFAKE 2026 ERROR\\x1b[2J [sid=CF\\r1]"
    )
    traceback = [line for line in lines if line.startswith("<3>    ")]
    assert traceback and any("ValueError: bad" in line for line in traceback)
    assert any(line == "<3>    thing" for line in traceback)  # the message's 2nd line, indented


def test_json_on_the_journal_keeps_its_fields(tmp_path: Path, restore_logging: None) -> None:
    lines = _log_to(tmp_path / "journal", {"INVOCATION_ID": "x"}, fmt="json").splitlines()
    assert lines[1].startswith('<6>{"ts": ') and '"sid": "CF\\r1"' in lines[1]
    assert all(re.match(r"<[2-7]>\{", line) for line in lines)


def test_elsewhere_lines_carry_a_utc_timestamp_and_no_prefix(
    tmp_path: Path, restore_logging: None
) -> None:
    text = _log_to(tmp_path / "plain", {})
    first = text.splitlines()[0]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z DEBUG monitor.test: debugging", first
    )
    assert "\x1b" not in text and "\r" not in text
    # Every line that is not a record of its own is indented under one.
    assert all(re.match(r"\d{4}-|    ", line) for line in text.splitlines())


def test_a_journal_stream_of_another_file_is_not_ours(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    with other.open() as handle:
        device, inode = _dev_ino(handle)
    with (tmp_path / "mine").open("w") as stream:
        assert not logs.is_journal_stream(stream, {"JOURNAL_STREAM": f"{device}:{inode}"})
        assert not logs.is_journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert logs.is_journal_stream(stream, {"JOURNAL_STREAM": "{}:{}".format(*_dev_ino(stream))})


def test_priorities() -> None:
    assert [logs.priority(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [7, 7, 6, 6, 4, 3, 2, 2]
