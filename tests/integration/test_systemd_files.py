"""`conference-monitor systemd ...`: the unit fitted to an installation, files put in place."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.cli.systemd_files import SHIPPED_SCRIPT, install, shipped, unit_quote, unit_text


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main()` configures the root logger; give pytest its own back."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level, threading.excepthook
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    threading.excepthook = saved[2]
    logging.captureWarnings(False)


@pytest.mark.parametrize(
    ("path", "word"),
    [
        (
            "/opt/conference-monitor/bin/conference-monitor",
            "/opt/conference-monitor/bin/conference-monitor",
        ),
        ("/opt/my dir/cm", '"/opt/my dir/cm"'),
        ('/opt/a"b/100%/$x', '"/opt/a\\"b/100%%/$$x"'),
    ],
)
def test_unit_quote(path: str, word: str) -> None:
    assert unit_quote(path) == word


def test_a_quoted_path_with_a_space_verifies(tmp_path: Path) -> None:
    """systemd itself reads the quoting back: verify finds the executable."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is required in CI")
        pytest.skip("systemd-analyze is not installed")
    script = tmp_path / "my dir" / "conference-monitor"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    unit = tmp_path / "conference-monitor.service"
    unit.write_text(unit_text(unit_quote(str(script))))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr
    missing = tmp_path / "conference-monitor.service"
    missing.write_text(unit_text(unit_quote(str(tmp_path / "no where" / "cm"))))
    failed = subprocess.run([analyze, "verify", str(missing)], capture_output=True, text=True)
    assert "no where/cm" in failed.stdout + failed.stderr  # the check above can fail


def test_install_keeps_local_files_unless_forced(tmp_path: Path) -> None:
    first = install(tmp_path, "/opt/x/bin/conference-monitor", force=False)
    assert [line.split()[0] for line in first] == ["wrote", "wrote", "wrote", "folder"]
    unit = tmp_path / "etc/systemd/system/conference-monitor.service"
    config = tmp_path / "etc/conference-monitor/config.toml"
    env = tmp_path / "etc/conference-monitor/env"
    assert "ExecStart=/opt/x/bin/conference-monitor run" in unit.read_text()
    assert SHIPPED_SCRIPT not in unit.read_text()
    assert [stat.S_IMODE(p.stat().st_mode) for p in (unit, config, env)] == [0o644, 0o644, 0o600]
    assert stat.S_IMODE((tmp_path / "etc/conference-monitor/credentials").stat().st_mode) == 0o700
    config.write_text("# mine\n")
    again = install(tmp_path, "/opt/y/bin/conference-monitor", force=False)
    assert [line.split()[0] for line in again] == ["replaced", "kept", "unchanged", "folder"]
    assert config.read_text() == "# mine\n" and "/opt/y/bin" in unit.read_text()
    forced = install(tmp_path, "/opt/y/bin/conference-monitor", force=True)
    assert [line.split()[0] for line in forced] == ["unchanged", "replaced", "unchanged", "folder"]
    assert config.read_text() == shipped("config")


def test_print_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["systemd", "unit", "--exec", "/srv/cm/bin/conference-monitor"], {}) == 0
    out = capsys.readouterr().out
    assert "ExecStartPre=/srv/cm/bin/conference-monitor db upgrade" in out
    assert main(["systemd", "config"], {}) == 0
    assert capsys.readouterr().out == shipped("config")
    assert main(["systemd", "env"], {}) == 0
    assert capsys.readouterr().out == shipped("env")
    assert main(["systemd", "unit", "--exec", "/home/me/.local/bin/conference-monitor"], {}) == 0
    assert "ProtectHome=yes hides" in capsys.readouterr().err


def test_install_reports_a_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["systemd", "install", "--root", str(tmp_path / "nope")], {}) == 2
    assert "is not a folder" in capsys.readouterr().err
