"""The README's run command on a fresh machine: the built wheel, installed without extras
into a fresh venv, serves (``horace serve`` answers 200 on /health); and installed beside
pytest it never gets in the way of another project's tests.

Slow (two venvs from PyPI): run by the ``install`` tox environment (``-m install``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.install
SOURCE = Path(__file__).resolve().parents[1]


def run(*command: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, SOURCE)
    (built,) = out.glob("horace-*.whl")
    return built


def test_the_wheel_built_from_the_sdist_is_the_wheel_built_from_the_tree(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A release is built the way ``python -m build`` builds (the sdist, then the wheel
    from it): an sdist keeps no symlink, and the wheel must not need horace/backends to be
    one."""
    out = tmp_path_factory.mktemp("release")
    run(sys.executable, "-m", "build", "-q", "--outdir", out, SOURCE)
    (released,) = out.glob("horace-*.whl")

    def contents(built: Path) -> set[str]:
        with zipfile.ZipFile(built) as archive:
            return {name for name in archive.namelist() if ".dist-info/" not in name}

    from_sdist, from_tree = contents(released), contents(wheel)
    assert from_sdist == from_tree, sorted(from_sdist ^ from_tree)
    modules = {p.name for p in (SOURCE / "backends").glob("*.py")}
    assert {name.rsplit("/", 1)[1] for name in from_tree if name.startswith("horace/backends/")} >= modules
    assert not any("__pycache__" in name for name in from_tree)


def fresh_venv(where: Path, *packages: str | Path) -> Path:
    run(sys.executable, "-m", "venv", where)
    run(where / "bin/python", "-m", "pip", "install", "-q", *packages)
    return where / "bin"


def test_the_wheel_without_extras_serves(wheel: Path, tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    site = Path(
        run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    assert not (site / "backends").exists(), "a generic top-level package was installed"
    assert (site / "horace/backends/schema/sqlite").is_dir()
    assert run(bin_dir / "horace", "--version").startswith("horace ")
    assert "Exit codes" in run(bin_dir / "python", "-m", "horace", "--help")

    folder = tmp_path / "newcomer"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    server = subprocess.Popen(
        [bin_dir / "horace", "serve", "--port", "0"],
        cwd=folder,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line, f"horace serve exited: {server.wait()}"
            record = json.loads(line)
            assert record["level"] != "ERROR", record
            if record["message"].startswith("listening on"):
                port = int(record["message"].rsplit(":", 1)[1])
        assert port is not None, "no 'listening on' line"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.status == 200
            assert json.load(answer)["status"] == "ok"
        assert (folder / "horace-data/.horace/store.json").is_file()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_installed_beside_pytest_it_breaks_no_other_project(wheel: Path, tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", "pytest", wheel)
    project = tmp_path / "other-project"
    project.mkdir()
    (project / "test_unrelated.py").write_text("def test_arithmetic():\n    assert 1 + 1 == 2\n")
    out = run(bin_dir / "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert "1 passed" in out
    assert "horace" in run(bin_dir / "pytest", "--trace-config", "--co", "-q", cwd=project)
    # Even with Horace's own dependencies gone, the plugin loads: it imports them lazily.
    run(bin_dir / "python", "-m", "pip", "uninstall", "-q", "-y", "trio", "inotify-simple", "trio-websocket")
    assert "1 passed" in run(bin_dir / "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
