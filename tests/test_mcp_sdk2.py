"""End to end with the official MCP Python SDK 2.x over Streamable HTTP.

mcp 1.x (the test extra, for its WebSocket client) and 2.x cannot share a venv: the 2.x
client is a script run by an interpreter of its own (``tests/sdk2.py``), which checks
every tool with ``tests/tour.py``, as the other clients' tests do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import sdk2

import horace
from horace.config import Settings
from horace.testing import RunningHorace, run_horace_in_thread


@pytest.fixture(scope="session")
def mcp2_python() -> Path:
    return sdk2.python()


@pytest.fixture
def running(settings: Settings) -> Iterator[RunningHorace]:
    with run_horace_in_thread(attrs.evolve(settings, host="127.0.0.1", port=0)) as served:
        yield served


def test_sdk2_http_client_drives_every_tool(mcp2_python: Path, running: RunningHorace) -> None:
    checks = ["tool_list", "every_tool", "tool_errors"]
    config = {"url": running.http_url, "files": str(running.files), "checks": checks}
    seen = sdk2.run_client("http_tour.py", json.dumps(config))
    assert seen["sdk"].startswith("2."), seen
    assert seen["server"] == "horace" and seen["server_version"] == horace.__version__
    assert seen["protocol_version"] == "2025-11-25" and seen["checks"] == checks
    assert seen["templates"] == ["horace://files/{file_id}", "horace://files/{file_id}/versions/{version}"]
    # It came over a Streamable HTTP session, ended by the client (DELETE) as it left.
    deadline = time.monotonic() + 10
    while running.server.front.http.sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not running.server.front.http.sessions


def test_sdk2_http_client_gets_progress(mcp2_python: Path, running: RunningHorace) -> None:
    config = {"url": running.http_url, "files": str(running.files), "checks": ["scan_progress"]}
    assert sdk2.run_client("http_tour.py", json.dumps(config))["checks"] == ["scan_progress"]
