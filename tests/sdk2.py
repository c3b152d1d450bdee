"""The official MCP Python SDK 2.x in tests, beside 1.x (the test extra's ``mcp``): the
two majors cannot share a venv, so 2.x clients are scripts (``tests/sdk2_clients/``) run
by an interpreter of their own, and report what they saw as JSON.

:func:`python` makes that interpreter's venv once, under ``~/.cache/horace-tests/mcp2``
(``HORACE_TEST_MCP2_VENV`` puts it elsewhere), with ``pip install "mcp>=2,<3"``, and
reuses it; ``HORACE_TEST_MCP2_PYTHON`` names an interpreter that already has mcp 2.x
(nothing is installed then). The venv is made under a lock and marked ready last, so
concurrent test runs and an interrupted install never use half of one.
:func:`run_client` runs a client script with arguments and returns its JSON output.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SPEC = "mcp>=2,<3"
CLIENTS = Path(__file__).parent / "sdk2_clients"
DEFAULT_VENV = Path.home() / ".cache" / "horace-tests" / "mcp2"
INSTALL_TIMEOUT = 600


def python() -> Path:
    """An interpreter with mcp 2.x (see the module's doc)."""
    given = os.environ.get("HORACE_TEST_MCP2_PYTHON")
    if given:
        return Path(given)
    venv = Path(os.environ.get("HORACE_TEST_MCP2_VENV") or DEFAULT_VENV)
    interpreter = venv / "bin" / "python"
    ready = venv / "horace-tests-ready"  # written last; holds the mcp version installed
    if ready.exists():
        return interpreter
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be making it: wait, then reuse
        if not ready.exists():
            shutil.rmtree(venv, ignore_errors=True)  # what an interrupted install left
            _run([sys.executable, "-m", "venv", str(venv)], "make the mcp 2.x venv")
            _run([str(interpreter), "-m", "pip", "install", "--quiet", SPEC], f"pip install {SPEC!r}")
            version = _run(
                [str(interpreter), "-c", "import importlib.metadata as m; print(m.version('mcp'))"],
                "read the mcp version",
            ).strip()
            assert version.startswith("2."), f"{SPEC} installed mcp {version}"
            ready.write_text(version + "\n")
    return interpreter


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"could not {what} (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def run_client(script: str | Path, *args: str, timeout: float = 300) -> Any:
    """Run a 2.x client *script* (a name in ``tests/sdk2_clients/``, or a path) with
    *args*; return the JSON of its last line of output. A script that fails fails the
    test, with its stderr (where the server's log goes too) in the message."""
    path = Path(script) if os.sep in str(script) else CLIENTS / script
    # PYTHONPATH may lead to this venv's packages (mcp 1.x among them): the client's
    # interpreter sees only its own; the script finds tests/ itself.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python()), str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{path.name} failed (exit {done.returncode}):\n{done.stderr[-8000:]}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"{path.name} printed nothing:\n{done.stderr[-8000:]}"
    return json.loads(lines[-1])
