"""A small MCP client on trio-websocket for the edge tests: requests matched by id."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from helpers import tool_body
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url


class McpClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[Any, trio.MemorySendChannel[Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.unmatched: list[Any] = []
        self.closed = trio.Event()

    async def _reader(self) -> None:
        try:
            while True:
                message = json.loads(await self.ws.get_message())
                for item in message if isinstance(message, list) else [message]:
                    if "id" in item and item["id"] in self._waiting:
                        self._waiting.pop(item["id"]).send_nowait(item)
                    elif "method" in item:
                        self.notifications.append(item)
                    else:
                        self.unmatched.append(item)
        except ConnectionClosed:
            self.closed.set()

    async def send_raw(self, text: str) -> None:
        await self.ws.send_message(text)

    def expect(self, request_id: Any) -> trio.MemoryReceiveChannel[Any]:
        send, receive = trio.open_memory_channel[Any](1)
        self._waiting[request_id] = send
        return receive

    async def request(self, method: str, params: Any = None, *, request_id: Any = None) -> dict[str, Any]:
        request_id = next(self._ids) if request_id is None else request_id
        reply = self.expect(request_id)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send_message(json.dumps(message))
        return await reply.receive()  # type: ignore[no-any-return]

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """The tool's structuredContent, or its error's body; fails the test on a JSON-RPC
        error."""
        reply = await self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in reply, reply
        return tool_body(reply["result"])

    async def initialize(self, version: str = "2025-06-18") -> dict[str, Any]:
        reply = await self.request(
            "initialize",
            {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "tests", "version": "0"},
            },
        )
        await self.ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        return reply["result"]  # type: ignore[no-any-return]


@asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[McpClient]:
    async with open_websocket_url(url, **kwargs) as ws, trio.open_nursery() as nursery:
        client = McpClient(ws)
        nursery.start_soon(client._reader)
        yield client
        nursery.cancel_scope.cancel()
