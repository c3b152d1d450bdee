"""A small Streamable HTTP client for the edge tests: httpx for requests, httpx-sse for
event streams, h11 on a raw socket where the test needs the connection itself
(keep-alive, pipelining, a connection cut on purpose)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import trio
import trio.lowlevel
from helpers import tool_body
from httpx_sse import ServerSentEvent, aconnect_sse

BOTH = "application/json, text/event-stream"
EVENTS_FIRST = "text/event-stream, application/json"
VERSION = "2025-11-25"


def request(request_id: Any, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def tool_call(
    request_id: Any, tool: str, meta: dict[str, Any] | None = None, **arguments: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return request(request_id, "tools/call", params)


INITIALIZE = request(
    0,
    "initialize",
    {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "tests", "version": "0"}},
)


class HttpMcp:
    """One Streamable HTTP session, request by request."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.session_id: str | None = None
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def headers(self, accept: str = BOTH, **extra: str) -> dict[str, str]:
        headers = {"accept": accept, "content-type": "application/json", "mcp-protocol-version": VERSION}
        if self.session_id is not None:
            headers["mcp-session-id"] = self.session_id
        headers.update({name.replace("_", "-"): value for name, value in extra.items()})
        return headers

    async def post(self, message: Any, *, accept: str = BOTH, **headers: str) -> httpx.Response:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        return await self.http.post(self.url, content=body, headers=self.headers(accept, **headers))

    async def initialize(self) -> dict[str, Any]:
        response = await self.post(INITIALIZE)
        assert response.status_code == 200, response.text
        self.session_id = response.headers["mcp-session-id"]
        initialized = await self.post(notification("notifications/initialized"))
        assert initialized.status_code == 202 and initialized.content == b""
        return response.json()["result"]  # type: ignore[no-any-return]

    async def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """A request answered with JSON: the reply."""
        response = await self.post(request(self.next_id(), method, params))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()  # type: ignore[no-any-return]

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """The tool's structuredContent, or its error's body; fails the test on a JSON-RPC
        error."""
        reply = await self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in reply, reply
        return tool_body(reply["result"])

    async def events(
        self, message: Any, *, accept: str = EVENTS_FIRST
    ) -> tuple[httpx.Response, list[ServerSentEvent]]:
        """A POST answered with SSE: the response and every event, to the stream's end."""
        async with aconnect_sse(
            self.http, "POST", self.url, content=json.dumps(message).encode(), headers=self.headers(accept)
        ) as source:
            return source.response, [event async for event in source.aiter_sse()]

    async def delete(self) -> httpx.Response:
        return await self.http.delete(self.url, headers=self.headers())


@asynccontextmanager
async def connect(url: str, *, initialize: bool = True, **options: Any) -> AsyncIterator[HttpMcp]:
    options.setdefault("timeout", httpx.Timeout(30.0))
    async with httpx.AsyncClient(**options) as http:
        client = HttpMcp(http, url)
        if initialize:
            await client.initialize()
        yield client


def replies(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    """The JSON-RPC messages of *events* (the priming event, with no data, left out)."""
    return [json.loads(event.data) for event in events if event.data]


# -- one connection, by hand -------------------------------------------------------------------


class RawConnection:
    """HTTP/1.1 over one TCP connection, with h11 as the client: several requests on it
    (keep-alive, pipelined), or a connection cut mid-answer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    def request_bytes(self, method: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
        fields = [("host", "127.0.0.1"), *(headers or {}).items()]
        if method == "POST":
            fields.append(("content-length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target="/mcp", headers=fields)) or b""
        if body:
            data += self.h11.send(h11.Data(data=body)) or b""
        return data + (self.h11.send(h11.EndOfMessage()) or b"")

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next whole response (its head and body)."""
        head = await self.next_event()
        assert isinstance(head, h11.Response), head
        body = b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            body += event.data
        return head, body

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()

    async def aclose(self) -> None:
        await self.stream.aclose()


class StoppedMeanwhile(trio.abc.Stream):
    """A client's stream as a server stopped past its read deadline meets it (SIGSTOP, a
    paused VM): *before* comes at once; the next read wakes only when its deadline cancels
    it, and what the client sent meanwhile (*after*; None: nothing, ever) is there at the
    read after that. What the server sends is kept in ``sent``."""

    def __init__(self, before: bytes, after: bytes | None) -> None:
        self._ready = [before]
        self._after: bytes | None = after
        self.sent = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._ready:
            await trio.lowlevel.checkpoint()
            data = self._ready.pop(0)
            if max_bytes is not None and len(data) > max_bytes:
                data, rest = data[:max_bytes], data[max_bytes:]
                self._ready.insert(0, rest)
            return data
        if self._after is None:
            await trio.sleep_forever()
        try:
            await trio.sleep_forever()
        finally:
            self._ready.append(self._after)
            self._after = None
        raise AssertionError("unreachable")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
