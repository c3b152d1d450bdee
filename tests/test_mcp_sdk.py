"""End to end with a client nobody here wrote: the official MCP Python SDK 1.x, over
both its WebSocket client and its Streamable HTTP client (2.x, which cannot share a venv
with 1.x, is in test_mcp_sdk2.py).

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
import httpx
import mcp.types as types
import pytest
import tour
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
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


@pytest.fixture(params=["websocket", "http"])
def endpoint(running: RunningHorace, request: pytest.FixtureRequest) -> str:
    """The server's URL for the transport under test: ws://... or http://... (Streamable HTTP)."""
    return running.url if request.param == "websocket" else running.http_url


@asynccontextmanager
async def sdk_streams(url: str):  # type: ignore[no-untyped-def]
    """The SDK's (read, write) streams over the transport the URL names."""
    if url.startswith("ws://"):
        async with websocket_client(url) as (read, write_stream):
            yield read, write_stream
    else:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=300)) as http,
            streamable_http_client(url, http_client=http) as (read, write_stream, _),
        ):
            yield read, write_stream


@asynccontextmanager
async def sdk_session(url: str):  # type: ignore[no-untyped-def]
    async with sdk_streams(url) as (read, write_stream), ClientSession(read, write_stream) as session:
        yield session, await session.initialize()


def run(url: str, body: Callable[[Sdk1Client], Awaitable[object]]) -> None:
    async def main() -> None:
        async with sdk_session(url) as (session, _):
            await asyncio.wait_for(body(Sdk1Client(session)), 120)

    asyncio.run(main())


# -- handshake and the tool list ---------------------------------------------------------------


def test_initialize_and_list_tools(endpoint: str) -> None:
    async def main() -> None:
        async with sdk_session(endpoint) as (session, init):
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


def test_older_protocol_version_is_echoed(endpoint: str) -> None:
    async def main() -> None:
        async with (
            sdk_streams(endpoint) as (read, write_stream),
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


def test_every_tool(running: RunningHorace, endpoint: str) -> None:
    run(endpoint, lambda client: tour.every_tool(client, running.files))


def test_scan_sends_progress(running: RunningHorace, endpoint: str) -> None:
    run(endpoint, lambda client: tour.scan_progress(client, running.files))


def test_tool_errors(endpoint: str) -> None:
    run(endpoint, tour.tool_errors)
