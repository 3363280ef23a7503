"""The packaging and the README's systemd install steps, run in order in a temporary prefix.

The sdist is built from this checkout and the wheel from the sdist, so a file
missing from either is caught. The README's step block is parsed, not copied:
a step edited there is a step run here. Paths move under a temporary root;
what needs systemd as PID 1 is done the way the unit would do it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SID = "CF0123456789abcdef0123456789abcdef"
SHIPPED = (
    "systemd/conference-monitor.service",
    "systemd/config.example.toml",
    "systemd/conference-monitor.env.example",
    "migrations/env.py",
    "migrations/script.py.mako",
)
# Steps that cannot run here, and why.
NOT_HERE = {
    "apt-get ": "the packages are installed already",
    "editor ": "interactive; the example config is used as shipped",
    "systemctl ": "no systemd as PID 1 here (enable --now is emulated below)",
}

pytestmark = pytest.mark.slow


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel built from that sdist)."""
    out = tmp_path_factory.mktemp("dist")
    build = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
    made = _run([sys.executable, "-c", build, str(out)], cwd=REPO)
    assert made.returncode == 0, made.stderr
    (sdist,) = out.glob("*.tar.gz")
    wheel = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(sdist),
        ]
    )
    assert wheel.returncode == 0, wheel.stderr
    (built,) = out.glob("*.whl")
    return sdist, built


def test_sdist_and_wheel_carry_the_unit_examples_and_migrations(dist: tuple[Path, Path]) -> None:
    sdist, wheel = dist
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    revisions = [
        f"migrations/versions/{p.name}" for p in (REPO / "migrations/versions").glob("*.py")
    ]
    for path in (*SHIPPED, *revisions, "LICENSE"):
        assert path in in_sdist, path
    for path in (*SHIPPED, *revisions):
        assert f"monitor/{path}" in in_wheel, path
    assert any(
        name.endswith(".dist-info/licenses/LICENSE") or name.endswith("/LICENSE")
        for name in in_wheel
    )


def readme_steps() -> list[str]:
    text = README.read_text()
    marker = "<!-- install-steps"
    assert marker in text, "the README's install block lost its marker"
    block = text.split(marker, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


class Machine:
    """A fresh machine under `root`: the README's absolute paths are moved below it."""

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root, self.wheel = root, wheel
        (root / "usr/local/bin").mkdir(parents=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TWILIO_", "CONFERENCE_MONITOR_", "VIRTUAL_ENV"))
        }
        self.env["PATH"] = f"{root}/usr/local/bin:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def translate(self, line: str) -> str:
        # The borrowed dependencies (below) must match the interpreter that makes the venv.
        base = Path(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
        line = line.replace("python3 -m venv", f"{base} -m venv")
        line = line.replace("pip install .", f"pip install -q --no-deps {self.wheel}")
        line = line.replace('systemd-ask-password -n "Twilio auth token:"', "printf test-token")
        if line.endswith(" systemd install"):
            line += f" --root {self.root}"
        # An absolute path of the README (not one already below the root) moves below it.
        return re.sub(r"(?<![\w/.-])(?=/(?:opt|usr/local/bin|etc)/)", str(self.root), line)

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        return _run(["bash", "-c", f"set -euo pipefail\n{line}"], env=self.env, cwd=self.root)

    def borrow_dependencies(self) -> None:
        """The venv gets this test environment's dependencies instead of downloading them:
        what is tested is our package and the steps, not pip's network."""
        (site,) = (self.root / "opt/conference-monitor/lib").glob("python3*/site-packages")
        (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    def start_service(self) -> None:
        """`systemctl enable --now` as far as this machine allows: the unit's own
        ExecStartPre= with its Environment= and a state directory."""
        unit = (self.root / "etc/systemd/system/conference-monitor.service").read_text()
        state = self.root / "var/lib/conference-monitor"
        state.mkdir(parents=True)
        config = self.root / "etc/conference-monitor/config.toml"
        config.write_text(config.read_text().replace("/var/lib/conference-monitor", str(state)))
        env = dict(
            self.env,
            STATE_DIRECTORY=str(state),
            CREDENTIALS_DIRECTORY=str(self.root / "etc/conference-monitor/credentials"),
        )
        for assignment in re.findall(r"^Environment=(\S+)$", unit, flags=re.M):
            name, _, value = assignment.partition("=")
            env[name] = self.translate(value)
        (pre,) = re.findall(r"^ExecStartPre=(.*)$", unit, flags=re.M)
        result = _run(["bash", "-c", self.translate(pre)], env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (state / "conference-monitor.db").exists()


def test_readme_install_steps_in_a_temporary_prefix(
    dist: tuple[Path, Path], tmp_path: Path
) -> None:
    machine = Machine(tmp_path / "root", dist[1])
    ran = []
    for step in readme_steps():
        skipped = next((why for prefix, why in NOT_HERE.items() if step.startswith(prefix)), None)
        if step.startswith("systemctl enable --now"):
            machine.start_service()
            ran.append(step)
            continue
        if skipped:
            continue
        if step.startswith("systemd-analyze") and shutil.which("systemd-analyze") is None:
            if os.environ.get("CI") == "true":
                pytest.fail("systemd-analyze is required in CI (apt-get install systemd)")
            continue
        result = machine.run(machine.translate(step))
        assert result.returncode == 0, f"{step}\n{result.stdout}\n{result.stderr}"
        assert "warning" not in result.stderr.lower() or "pip" in step, (step, result.stderr)
        if "pip install" in step:
            machine.borrow_dependencies()
        ran.append(step)
    assert len(ran) >= 8, ran
    _check_the_installation(machine)


def _check_the_installation(machine: Machine) -> None:
    root = machine.root
    script = root / "opt/conference-monitor/bin/conference-monitor"
    unit = (root / "etc/systemd/system/conference-monitor.service").read_text()
    assert f"ExecStart={script} run --config /etc/conference-monitor/config.toml" in unit
    assert f"ExecStartPre={script} db upgrade --config" in unit
    where = machine.run(
        f"{root}/opt/conference-monitor/bin/python -c 'import monitor; print(monitor.__file__)'"
    )
    assert where.stdout.startswith(str(root)), where.stdout  # the wheel's code, not the checkout's
    token = root / "etc/conference-monitor/credentials/TWILIO_AUTH_TOKEN"
    assert token.read_text() == "test-token" and token.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/conference-monitor/env").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/conference-monitor/credentials").stat().st_mode & 0o777 == 0o700
    listed = machine.run(
        machine.translate(
            "conference-monitor --config /etc/conference-monitor/config.toml watch list --json"
        )
    )
    assert SID in listed.stdout and "incident bridge" in listed.stdout
    again = machine.run(machine.translate("conference-monitor systemd install"))
    assert "kept" in again.stdout and "unchanged" in again.stdout, again.stdout
