"""End to end with a client nobody here wrote: the official MCP Python SDK.

The SDK is asyncio/anyio, so each test runs it with ``asyncio.run`` against a Horace
served from a thread (:func:`horace.testing.run_horace_in_thread`) on the suite's backend.
The SDK validates every successful ``structuredContent`` against the tool's
``outputSchema``, so these tests also check that the schemas tell the truth. The checks
of the tools are ``tests/tour.py``'s, shared with the other clients and transports.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import attrs
import mcp.types as types
import pytest
import tour
from mcp import ClientSession
from sdk1 import Sdk1Client

import horace
from horace.config import Settings
from horace.testing import RunningHorace, run_horace_in_thread

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # WebSocket is deprecated in mcp 2.0
    from mcp.client.websocket import websocket_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def running(settings: Settings) -> Iterator[RunningHorace]:
    with run_horace_in_thread(attrs.evolve(settings, host="127.0.0.1", port=0)) as served:
        yield served


@asynccontextmanager
async def sdk_session(url: str):  # type: ignore[no-untyped-def]
    async with websocket_client(url) as (read, write_stream), ClientSession(read, write_stream) as session:
        yield session, await session.initialize()


def run(url: str, body: Callable[[Sdk1Client], Awaitable[object]]) -> None:
    async def main() -> None:
        async with sdk_session(url) as (session, _):
            await asyncio.wait_for(body(Sdk1Client(session)), 120)

    asyncio.run(main())


# -- handshake and the tool list ---------------------------------------------------------------


def test_initialize_and_list_tools(running: RunningHorace) -> None:
    async def main() -> None:
        async with sdk_session(running.url) as (session, init):
            assert init.protocolVersion == types.LATEST_PROTOCOL_VERSION
            assert init.serverInfo.name == "horace"
            assert init.serverInfo.version == horace.__version__
            assert init.capabilities.tools is not None
            await session.send_ping()

            listed = await session.list_tools()
            assert {tool.name for tool in listed.tools} == tour.TOOL_NAMES
            assert len(listed.tools) == 17
            for tool in listed.tools:
                assert tool.description
                assert tool.inputSchema["type"] == "object"
                assert isinstance(tool.inputSchema.get("properties"), dict)
                assert tool.outputSchema is not None and tool.outputSchema["type"] == "object"
                assert "correlation_id" in tool.outputSchema["required"]
                assert tool.annotations is not None
                for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
                    assert isinstance(getattr(tool.annotations, hint), bool), (tool.name, hint)
            by_name = {tool.name: tool for tool in listed.tools}
            assert by_name["horace_search_files"].annotations.readOnlyHint is True  # type: ignore[union-attr]
            assert by_name["horace_delete_file"].annotations.destructiveHint is True  # type: ignore[union-attr]
            assert by_name["horace_register_file"].inputSchema["required"] == ["file_path"]
            await tour.tool_list(Sdk1Client(session))  # the same, as the other clients' tests see it

    asyncio.run(main())


def test_older_protocol_version_is_echoed(running: RunningHorace) -> None:
    async def main() -> None:
        async with (
            websocket_client(running.url) as (read, write_stream),
            ClientSession(read, write_stream) as session,
        ):
            # The SDK always asks for its latest; ask for an older one by hand.
            result = await session.send_request(
                types.ClientRequest(
                    types.InitializeRequest(
                        params=types.InitializeRequestParams(
                            protocolVersion="2025-03-26",
                            capabilities=types.ClientCapabilities(),
                            clientInfo=types.Implementation(name="old", version="0"),
                        )
                    )
                ),
                types.InitializeResult,
            )
            assert result.protocolVersion == "2025-03-26"

    asyncio.run(main())


# -- every tool ---------------------------------------------------------------------------------


def test_every_tool(running: RunningHorace) -> None:
    run(running.url, lambda client: tour.every_tool(client, running.files))


def test_scan_sends_progress(running: RunningHorace) -> None:
    run(running.url, lambda client: tour.scan_progress(client, running.files))


def test_tool_errors(running: RunningHorace) -> None:
    run(running.url, tour.tool_errors)
