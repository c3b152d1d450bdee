"""Embedded test fixtures: a real Horace (SQLite, temporary storage) inside your tests.

Installed as a pytest plugin (entry point ``pytest11``), so the fixtures are there as
soon as horace is installed:

- ``horace_server`` (pytest-trio): the server runs in the test's nursery.
- ``horace_server_thread`` (any test, sync or asyncio): the server runs in a thread with
  its own Trio loop, stopped gracefully after the test.

Both give a :class:`RunningHorace`: ``url`` to connect an MCP WebSocket client to,
``http_url`` for a Streamable HTTP client, ``files`` to write working files into,
``settings``.

pytest loads this module in every venv where Horace is installed, for every test run, so
it imports nothing of the server until a fixture is used: a broken or partial install
never stops another project's tests from being collected.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from horace.config import Settings
    from horace.server.lifecycle import HoraceServer


class RunningHorace:
    """A Horace serving in a test: ``url`` (ws://127.0.0.1:<port>/mcp), ``http_url``
    (http://127.0.0.1:<port>/mcp, Streamable HTTP), ``health_url``, ``settings``,
    ``server``, and ``files`` to write working files into."""

    def __init__(self, url: str, health_url: str, settings: Settings, server: HoraceServer) -> None:
        self.url, self.health_url, self.settings, self.server = url, health_url, settings, server

    @property
    def http_url(self) -> str:
        return "http://" + self.url.removeprefix("ws://")

    @property
    def files(self) -> Path:
        return self.settings.storage_path / "files"


def throwaway_settings(storage: Path, **overrides: Any) -> Settings:
    """Settings for a throwaway server: loopback, a free port, SQLite under *storage*."""
    from horace.config import Settings

    return Settings(**{"storage_path": storage, "host": "127.0.0.1", "port": 0, **overrides})


def _running(settings: Settings, server: HoraceServer) -> RunningHorace:
    base = f"{settings.host}:{server.port}"
    return RunningHorace(f"ws://{base}/mcp", f"http://{base}/health", settings, server)


@asynccontextmanager
async def run_horace(settings: Settings) -> AsyncIterator[RunningHorace]:
    """Serve in a nursery of the caller's Trio loop; shut down gracefully on exit.

    On Trio's mock clock the sinks run in the server: a child process runs in real time,
    and the clock, jumping while the server waits for it, would not wait."""
    import attrs
    import trio
    import trio.testing

    from horace.server.serving import serve

    if settings.sink_process and isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        settings = attrs.evolve(settings, sink_process=False)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, settings, handle_signals=False))
        try:
            yield _running(settings, server)
        finally:
            server.shutdown()


@contextmanager
def run_horace_in_thread(settings: Settings, start_timeout: float = 30.0) -> Iterator[RunningHorace]:
    """Serve from a thread with its own Trio loop, for code that is not Trio."""
    import trio

    from horace.server.serving import serve

    started: list[tuple[HoraceServer, trio.lowlevel.TrioToken]] = []
    failure: list[BaseException] = []
    ready = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, settings, handle_signals=False))
            started.append((server, trio.lowlevel.current_trio_token()))
            ready.set()

    def target() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below, not swallowed
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="horace-server", daemon=True)
    thread.start()
    if not ready.wait(start_timeout) or not started:
        raise RuntimeError("Horace did not start") from (failure[0] if failure else None)
    server, token = started[0]
    try:
        yield _running(settings, server)
    finally:
        trio.from_thread.run_sync(server.shutdown, trio_token=token)
        thread.join(settings.shutdown_grace + 10)
        if failure:
            raise RuntimeError("Horace stopped with an error") from failure[0]


@pytest.fixture
async def horace_server(tmp_path: Path) -> AsyncIterator[RunningHorace]:
    """A running Horace in this (pytest-trio) test's loop."""
    async with run_horace(throwaway_settings(tmp_path / "horace")) as running:
        yield running


@pytest.fixture
def horace_server_thread(tmp_path: Path) -> Iterator[RunningHorace]:
    """A running Horace in a background thread, for asyncio or synchronous tests."""
    with run_horace_in_thread(throwaway_settings(tmp_path / "horace")) as running:
        yield running
