"""End to end with the official MCP Python SDK 2.x, over Streamable HTTP.

mcp 1.x (the test extra, for its WebSocket client) and 2.x cannot be installed in one
venv, so the 2.x client runs as a subprocess (tests/sdk2_client.py) with the Python of
a venv of its own: ``HORACE_TEST_MCP2_PYTHON`` when set, else one made here once with
``pip install "mcp>=2,<3"`` and kept under ``HORACE_TEST_CACHE`` (default
``~/.cache/horace-tests``) for later runs. Making it needs PyPI (CI has it); without it
the test fails, saying so: it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from horace.config import Settings
from horace.testing import RunningHorace, run_horace_in_thread

MCP2 = "mcp>=2,<3"
CLIENT = Path(__file__).with_name("sdk2_client.py")


def _mcp_major(python: Path) -> str | None:
    probe = "import importlib.metadata as m; print(m.version('mcp'))"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return found.stdout.strip().split(".")[0] if found.returncode == 0 else None


@pytest.fixture(scope="session")
def mcp2_python() -> Path:
    given = os.environ.get("HORACE_TEST_MCP2_PYTHON")
    if given:
        assert _mcp_major(Path(given)) == "2", f"HORACE_TEST_MCP2_PYTHON={given} has no mcp 2.x"
        return Path(given)
    cache = Path(os.environ.get("HORACE_TEST_CACHE") or Path.home() / ".cache" / "horace-tests")
    venv = cache / "mcp2-venv"
    python = venv / "bin" / "python"
    if python.exists() and _mcp_major(python) == "2":
        return python
    # Made aside and renamed into place: a run cut short leaves no half-made venv behind.
    making = cache / f"mcp2-venv.{uuid.uuid4().hex[:8]}"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(making)], check=True, capture_output=True)
        installed = subprocess.run(
            [str(making / "bin" / "python"), "-m", "pip", "install", "--quiet", MCP2],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert installed.returncode == 0, f"pip install {MCP2!r} failed (PyPI needed):\n{installed.stderr}"
        shutil.rmtree(venv, ignore_errors=True)
        making.rename(venv)
    finally:
        shutil.rmtree(making, ignore_errors=True)
    assert _mcp_major(python) == "2"
    return python


@pytest.fixture
def running(settings: Settings) -> Iterator[RunningHorace]:
    with run_horace_in_thread(attrs.evolve(settings, host="127.0.0.1", port=0)) as served:
        yield served


def test_every_tool_with_the_sdk_2_client(mcp2_python: Path, running: RunningHorace) -> None:
    done = subprocess.run(
        [str(mcp2_python), str(CLIENT), running.http_url, str(running.files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"the mcp 2.x client failed:\n{done.stdout}\n{done.stderr}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["server"] == "horace" and summary["protocol_version"] == "2025-11-25"
    assert len(summary["tools"]) == 17 and all(name.startswith("horace_") for name in summary["tools"])
    assert summary["templates"] == ["horace://files/{file_id}", "horace://files/{file_id}/versions/{version}"]
    assert summary["versions"] == {"1": "# report\n\nfirst\n", "2": "# report\n\nfirst\nsecond\n"}
    assert summary["progress_notifications"] >= 1
    # It came over a Streamable HTTP session, ended by the client (DELETE) as it left.
    deadline = time.monotonic() + 10
    while running.server.front.http.sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not running.server.front.http.sessions
