"""MCP over Streamable HTTP at its edges: every status code, keep-alive, JSON and SSE
answers, progress, resumption after a cut, cancellation, sessions and their end, and the
limits shared with WebSocket sessions.

Real servers in the test's loop, over real sockets, on the run's backend; on Trio's clock
(autojump, and SQLite: see ``sqlite_settings``) where time matters.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing
from helpers import write
from http_client import (
    BOTH,
    EVENTS_FIRST,
    INITIALIZE,
    HttpMcp,
    RawConnection,
    StoppedMeanwhile,
    connect,
    notification,
    replies,
    request,
    tool_call,
)
from httpx_sse import aconnect_sse
from mcp_client import connect as connect_websocket
from processes import serve_process
from test_server import serving
from test_sinks import drained, stored_turns
from trio_websocket import ConnectionRejected, open_websocket_url

from horace.config import Settings
from horace.server import http, sse
from horace.server.admission import host_refusal, hosts_served, origin_allowed, subprotocol_for_token
from horace.server.http import KEEPALIVE_INTERVAL, MAX_GET_STREAMS, Accept
from horace.server.httpio import HEAD_TIMEOUT, BodyTooSlow, HttpConnection
from horace.server.httpsession import HttpSession
from horace.server.tools import TOOLS
from horace.server.wsintake import UNHURRIED_BYTES
from horace.testing import RunningHorace, run_horace


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningHorace]:
    async with run_horace(serving(settings)) as running:
        yield running


@pytest.fixture
async def client(server: RunningHorace) -> AsyncIterator[HttpMcp]:
    async with connect(server.http_url) as connected:
        yield connected


@pytest.fixture
def sqlite_settings(tmp_path: Any) -> Settings:
    """On SQLite whatever the run's backend: on Trio's mock clock, asyncpg's own timers
    (on the asyncio side of trio-asyncio) would fire as the clock jumps."""
    return Settings(storage_path=tmp_path / "sqlite-root")


def http_session(server: RunningHorace, client: HttpMcp) -> HttpSession:
    assert client.session_id is not None
    return server.server.front.http.sessions[client.session_id]


async def eventually(
    condition: Callable[[], bool], what: str, timeout: float = 10.0, every: float = 0.01
) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(every)


class HeldTool:
    """A tool (``horace_scan`` unless told) replaced by a call that runs until released
    (or cancelled)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, result: dict[str, Any] | None = None, tool: str = "horace_scan"
    ) -> None:
        self.result = result or {"scanned": 0}
        self.started = trio.Event()
        self.release = trio.Event()
        self.cancelled = False
        monkeypatch.setitem(TOOLS, tool, attrs.evolve(TOOLS[tool], handler=self._run))

    async def _run(self, ctx: Any, args: Any) -> dict[str, Any]:
        self.started.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled = True
            raise
        return self.result


def error_of(response: httpx.Response, request_id: Any = None) -> dict[str, Any]:
    """The JSON-RPC error every refusal carries (id null, but for a request refused unread
    whose id could be read)."""
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == request_id, body
    return body["error"]  # type: ignore[no-any-return]


# -- sessions ---------------------------------------------------------------------------------


async def test_a_session_from_initialize_to_delete(server: RunningHorace) -> None:
    admission = server.server.front.admission
    async with connect(server.http_url, initialize=False) as client:
        answer = await client.post(INITIALIZE)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        session_id = answer.headers["mcp-session-id"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", session_id)  # visible ASCII, 192 random bits
        result = answer.json()["result"]
        assert result["protocolVersion"] == "2025-11-25" and result["serverInfo"]["name"] == "horace"
        client.session_id = session_id
        initialized = await client.post(notification("notifications/initialized"))
        assert initialized.status_code == 202 and initialized.content == b""
        assert "content-type" not in initialized.headers
        assert admission.sessions == 1 and len(server.server.sessions) == 1

        write(server.files / "user/a.txt", "hello")
        registered = await client.call("horace_register_file", file_path="user/a.txt")
        assert registered["current_version"] == 1
        # Any version Horace speaks may be named, whatever was negotiated.
        older = await client.post(request(5, "ping"), mcp_protocol_version="2025-03-26")
        assert older.status_code == 200 and older.json() == {"jsonrpc": "2.0", "id": 5, "result": {}}
        # A response POSTed (to a request Horace never sent) is accepted and dropped.
        response = await client.post({"jsonrpc": "2.0", "id": "s1", "result": {}})
        assert response.status_code == 202 and response.content == b""

        deleted = await client.delete()
        assert deleted.status_code == 204 and deleted.content == b""
        gone = await client.post(request(6, "ping"))
        assert gone.status_code == 404 and "no such session" in error_of(gone)["message"]
        assert (await client.delete()).status_code == 404
        await eventually(lambda: admission.sessions == 0 and not server.server.sessions, "the slot back")


async def test_every_refusal_has_its_status(server: RunningHorace, client: HttpMcp) -> None:
    url, http = server.http_url, client.http
    ping = json.dumps(request(1, "ping")).encode()

    async def post(body: bytes = ping, **changes: str | None) -> httpx.Response:
        headers = {**client.headers(), **{k.replace("_", "-"): v for k, v in changes.items()}}
        return await http.post(url, content=body, headers={k: v for k, v in headers.items() if v is not None})

    async def get(**changes: str | None) -> httpx.Response:
        headers = {**client.headers(accept="text/event-stream"), **changes}
        return await http.get(url, headers={k: v for k, v in headers.items() if v is not None})

    discover = json.dumps(request(1, "server/discover")).encode()  # the mcp 2.x probe

    def initialize_with(request_id: Any) -> bytes:
        return json.dumps({**INITIALIZE, "id": request_id}).encode()

    cases: list[tuple[httpx.Response, int, str]] = [
        (await post(mcp_session_id=None), 400, "Mcp-Session-Id header missing"),
        (await post(discover, mcp_session_id=None, mcp_protocol_version="2026-07-28"), 400, "unsupported"),
        (await post(discover, mcp_session_id=None), 400, "Mcp-Session-Id header missing"),
        (await post(mcp_session_id="nope"), 404, "no such session"),
        (await post(mcp_protocol_version="1999-01-01"), 400, "unsupported MCP-Protocol-Version"),
        (await post(accept="application/json"), 406, "must accept both"),
        (await post(accept="text/event-stream"), 406, "must accept both"),
        (await post(accept="application/json, text/event-stream;q=0"), 406, "must accept both"),
        (await post(accept="application/*, text/*;q=0, */*"), 406, "must accept both"),
        (await post(content_type="text/plain"), 415, "must be application/json"),
        (await post(content_type=None), 415, "must be application/json"),
        (
            await post(gzip.compress(ping), content_encoding="gzip"),
            415,
            "Content-Encoding 'gzip' is not taken",
        ),
        (
            await post(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"a": NaN}}'),
            400,
            "NaN is not",
        ),
        (await post(b"{not json"), 400, "parse error"),
        (await post(b"\xff\xfe{}"), 400, "parse error: not UTF-8"),
        (await post(b"[" * 100_000 + b"]" * 100_000), 400, "parse error: nested too deeply"),
        (await post(b'{"id": ' + b"9" * 5000 + b"}"), 400, "parse error: a number of more than 4300 digits"),
        (await post(b"42"), 400, "a request is a JSON object"),
        (await post(b'{"jsonrpc": "2.0", "id": true, "method": "ping"}'), 400, "id must be"),
        (await post(b'{"jsonrpc": "2.0", "id": null, "method": "ping"}'), 400, "(never null)"),
        (await post(b'{"jsonrpc": "2.0", "id": 3.5, "method": "ping"}'), 400, "(not the number 3.5)"),
        (await post(json.dumps(request("dense", "ping", {"pad": [[]] * 300_000})).encode()), 400, "too many"),
        # (an id that could not be echoed or stored is no id, whatever its type)
        (await post(b'{"jsonrpc": "2.0", "id": 123456789012345678901, "method": "ping"}'), 400, "64-bit"),
        (await post(b'{"jsonrpc": "2.0", "id": "a\\u0000b", "method": "ping"}'), 400, "the id holds a NUL"),
        (await post(initialize_with(None), mcp_session_id=None), 400, "initialize must be a request"),
        (
            await post(b"[" + initialize_with(1) + b"]", mcp_session_id=None),
            400,
            "sent alone, not in a batch",
        ),
        (await post(b"[]"), 400, "empty batch"),
        (await http.put(url, content=ping, headers=client.headers()), 405, "PUT is not served here"),
        (await get(accept="application/json"), 406, "must accept text/event-stream"),
        (await get(**{"mcp-session-id": None}), 400, "Mcp-Session-Id header missing"),
        # A WebSocket handshake whose Upgrade a proxy dropped: said so.
        (
            await get(**{"mcp-session-id": None, "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}),
            400,
            "a WebSocket handshake without 'Upgrade: websocket'",
        ),
        (await get(**{"mcp-session-id": "nope"}), 404, "no such session"),
        (await http.delete(url, headers={"mcp-session-id": "nope"}), 404, "no such session"),
        (await http.delete(url), 400, "Mcp-Session-Id header missing"),
    ]
    # A Last-Event-ID with nothing after it (unknown, or its answer delivered): an SSE
    # stream that ends at once (MCP: a GET gets a stream or 405).
    for last_event_id in ("7-3", "garbage"):
        resumed = await get(**{"last-event-id": last_event_id})
        assert resumed.status_code == 200, resumed.text
        assert resumed.headers["content-type"].startswith("text/event-stream") and resumed.text == ""
    for response, status, text in cases:
        where = (response.request.method, dict(response.request.headers), response.text)
        assert response.status_code == status, where
        # Refused unread, a request's error carries its id when the message gives it first
        # or last (as over WebSocket): the official SDKs take no error with an id of null.
        assert text in error_of(response, "dense" if text == "too many" else None)["message"], where
    assert cases[0][0].json()["error"]["code"] == -32600
    assert all(r.json()["error"]["code"] == -32700 for r, _, text in cases if text.startswith("parse error"))
    (put,) = [response for response, _, _ in cases if response.request.method == "PUT"]
    assert put.headers["allow"] == "GET, POST, DELETE, OPTIONS"
    health = await http.post(server.health_url, content=b"{}")
    assert (health.status_code, health.headers["allow"]) == (405, "GET, HEAD"), health.text
    # Curl's default, and no Accept at all, allow both.
    for accept in ("*/*", None):
        assert (await post(accept=accept)).status_code == 200
    assert (await client.request("ping"))["result"] == {}  # the session went through it all


async def test_an_oversize_body_is_413_and_the_session_goes_on(settings: Settings) -> None:
    async with (
        run_horace(serving(settings, max_message_bytes=10_000)) as running,
        connect(running.http_url) as client,
    ):
        padded = request(1, "ping", {"pad": "x" * 20_000})
        refused = await client.post(padded)  # read to its end: the connection goes on
        assert refused.status_code == 413 and "connection" not in refused.headers
        error = error_of(refused)
        assert error["code"] == -32600 and "exceeds the limit of 10000 bytes" in error["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no length given: read up to the limit
            for _ in range(30):
                yield b" " * 1000

        streamed = await client.http.post(running.http_url, content=chunked(), headers=client.headers())
        assert streamed.status_code == 413
        huge = await client.post(request(1, "ping", {"pad": "x" * 50_000}))  # past 4x: not even read
        assert huge.status_code == 413 and huge.headers["connection"] == "close"
        at_limit = request(2, "ping", {"pad": "x" * (10_000 - 70)})
        assert len(json.dumps(at_limit)) <= 10_000
        assert (await client.post(at_limit)).status_code == 200
        assert (await client.request("ping"))["result"] == {}


async def test_requests_follow_one_another_on_one_connection(server: RunningHorace) -> None:
    conn = await RawConnection.open(server.server.port)  # type: ignore[arg-type]
    headers = {"accept": BOTH, "content-type": "application/json"}
    try:
        await conn.send(conn.request_bytes("POST", json.dumps(INITIALIZE).encode(), headers))
        head, body = await conn.response()
        assert head.status_code == 200 and json.loads(body)["id"] == 0
        session = dict(head.headers)[b"mcp-session-id"].decode()
        headers["mcp-session-id"] = session
        for number in range(1, 4):
            conn.next_cycle()
            await conn.send(conn.request_bytes("POST", json.dumps(request(number, "ping")).encode(), headers))
            head, body = await conn.response()
            assert head.status_code == 200 and json.loads(body) == {
                "jsonrpc": "2.0",
                "id": number,
                "result": {},
            }
        conn.next_cycle()  # an SSE answer, then a plain request again
        answer = json.dumps(request(9, "ping")).encode()
        await conn.send(conn.request_bytes("POST", answer, {**headers, "accept": EVENTS_FIRST}))
        head, body = await conn.response()
        assert dict(head.headers)[b"content-type"] == b"text/event-stream"
        assert body.endswith(b'data: {"jsonrpc": "2.0", "id": 9, "result": {}}\n\n')
        conn.next_cycle()
        await conn.send(conn.request_bytes("DELETE", headers={"mcp-session-id": session}))
        head, _ = await conn.response()
        assert head.status_code == 204
        conn.next_cycle()
        await conn.send(conn.request_bytes("GET", headers={"accept": "text/event-stream"}))
        head, _ = await conn.response()  # (refused: no session) still on the same connection
        assert head.status_code == 400
    finally:
        await conn.aclose()


async def test_a_head_request_gets_the_head_of_its_answer(server: RunningHorace) -> None:
    """HEAD (a proxy's or a health checker's probe): the answer GET would get, without
    its body (RFC 9110 9.3.2), and the connection serves the next request."""
    conn = await RawConnection.open(server.server.port)  # type: ignore[arg-type]
    try:
        await conn.send(conn.request_bytes("HEAD"))
        head, body = await conn.response()
        fields = dict(head.headers)
        assert head.status_code == 405 and fields[b"allow"] == b"GET, POST, DELETE, OPTIONS"
        assert body == b"" and int(fields[b"content-length"]) > 0
        conn.next_cycle()
        headers = {"accept": BOTH, "content-type": "application/json"}
        await conn.send(conn.request_bytes("POST", json.dumps(INITIALIZE).encode(), headers))
        head, body = await conn.response()
        assert head.status_code == 200 and json.loads(body)["id"] == 0
    finally:
        await conn.aclose()


async def test_a_kept_alive_connection_closes_after_the_head_timeout(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    async with run_horace(serving(sqlite_settings)) as running:
        conn = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
        await conn.send(conn.request_bytes("GET", headers={"accept": "text/event-stream"}))
        head, _ = await conn.response()
        answered = trio.current_time()
        assert head.status_code == 400
        assert await conn.stream.receive_some() == b""  # closed by the server, nothing said
        assert HEAD_TIMEOUT <= trio.current_time() - answered < HEAD_TIMEOUT + 1
        await conn.aclose()


async def test_a_body_that_does_not_come_is_408(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        run_horace(serving(sqlite_settings)) as running,
        connect(running.http_url, timeout=None) as client,
    ):
        conn = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
        head_only = conn.request_bytes("POST", b"x" * 100, client.headers())[:-100]
        await conn.send(head_only + b'{"jsonrpc": ')
        sent = trio.current_time()
        head, body = await conn.response()
        assert head.status_code == 408 and b"did not come within 10 s" in body
        assert HEAD_TIMEOUT <= trio.current_time() - sent < HEAD_TIMEOUT + 1
        await conn.aclose()


async def test_a_body_that_breaks_http_framing_is_400(server: RunningHorace, client: HttpMcp) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    head = "".join(f"{name}: {value}\r\n" for name, value in client.headers().items())
    await stream.send_all(
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n{head}\r\n".encode()
        + b"zz\r\n{}\r\n0\r\n\r\n"  # a chunk size that is not hexadecimal
    )
    answer = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):  # (the connection closes after it)
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b'body is not valid HTTP: illegal chunk header"' in answer, answer  # (no bytes quoted)
    await stream.aclose()


async def test_a_body_framed_two_ways_is_refused_and_what_follows_never_read(
    server: RunningHorace, client: HttpMcp
) -> None:
    """Content-Length and Transfer-Encoding both: a proxy that framed it by the length
    would have passed on a second request inside the body (request smuggling)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    head = "".join(f"{name}: {value}\r\n" for name, value in client.headers().items())
    hidden = json.dumps(request(99, "ping")).encode()
    inner = (
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(hidden)}\r\n{head}\r\n".encode()
        + hidden
    )
    await stream.send_all(
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n"
        f"content-length: {5 + len(inner)}\r\n{head}\r\n".encode()
        + b"0\r\n\r\n"
        + inner
    )
    answer = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):  # (the connection closes after it)
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"both Content-Length and Transfer-Encoding" in answer and b"connection: close" in answer
    assert b'"id": 99' not in answer and answer.count(b"HTTP/1.1") == 1, answer
    await stream.aclose()


@pytest.mark.parametrize(
    ("length", "first"), [(100, b"HTTP/1.1 100 Continue\r\n"), (5 << 20, b"HTTP/1.1 413 ")]
)
async def test_a_client_waiting_to_send_its_body_is_told_first(
    server: RunningHorace, client: HttpMcp, length: int, first: bytes
) -> None:
    """``Expect: 100-continue``: a body within the limit is asked for (100 Continue); one
    declared past it is refused at once, before the client sends it."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    head = "".join(f"{name}: {value}\r\n" for name, value in client.headers().items())
    await stream.send_all(
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nexpect: 100-continue\r\n"
        f"content-length: {length}\r\n{head}\r\n".encode()
    )
    with trio.fail_after(5):  # (the body is not sent: only the first answer can come)
        answer = await stream.receive_some(65536)
    assert answer.startswith(first), answer[:200]
    await stream.aclose()


@pytest.mark.parametrize(
    ("head", "status", "said"),
    [
        (
            b"".join(b"x-pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(200)),
            431,
            b"head is over 65536 bytes",
        ),
        (b"bad header line\r\n", 400, b"the request is not valid HTTP"),
        (b"x-one: " + b"p" * 80_000 + b"\r\n", 431, b"head is over 65536 bytes"),  # whole in one read
    ],
)
async def test_a_head_h11_refuses_is_answered_as_every_refusal(
    server: RunningHorace, head: bytes, status: int, said: bytes
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    await stream.send_all(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n" + head + b"\r\n")
    answer = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["jsonrpc"] == "2.0" and body["id"] is None and said in body["error"]["message"].encode()
    await stream.aclose()


async def test_empty_lines_before_a_request_line_are_ignored(server: RunningHorace) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line
    (some clients send CRLF after a POST's body); on a new connection, and between two
    requests of one."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    get = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    answers = b""
    with trio.fail_after(10):
        for sent in (b"\r\n\r\n" + get, b"\n", b"\r\n" + get):
            await stream.send_all(sent)
            if sent.endswith(get):
                answers += await stream.receive_some(65536)
                while answers.count(b'"status"') < answers.count(b"HTTP/1.1 200 "):
                    answers += await stream.receive_some(65536)
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers
    await stream.aclose()


async def test_a_crlf_after_a_body_is_ignored(server: RunningHorace, client: HttpMcp) -> None:
    """The case RFC 9112 2.2 names: a client that sends CRLF after a POST's body, in the
    same segment as the body (and the next request, or not)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    head = "".join(f"{name}: {value}\r\n" for name, value in client.headers().items())

    def ping(request_id: int) -> bytes:
        body = json.dumps(request(request_id, "ping")).encode()
        return (
            f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )

    answers = b""
    with trio.fail_after(10):
        await stream.send_all(ping(1) + b"\r\n" + ping(2) + b"\r\n")
        while answers.count(b'"result"') < 2:
            answers += await stream.receive_some(65536)
        await stream.send_all(ping(3))
        while answers.count(b'"result"') < 3:
            answers += await stream.receive_some(65536)
    assert answers.count(b"HTTP/1.1 200 ") == 3 and b"400" not in answers, answers
    await stream.aclose()


async def test_only_empty_lines_are_refused_past_the_head_limit(server: RunningHorace) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)  # type: ignore[arg-type]
    answer = b""
    with trio.fail_after(10):
        await stream.send_all(b"\r\n" * 40_000)
        while data := await stream.receive_some(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 ") and b"only empty lines" in answer, answer[:300]


# -- answers: JSON or SSE ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "events"),
    [
        (BOTH, False),
        ("*/*", False),
        (EVENTS_FIRST, True),
        ("application/json;q=0.5, text/event-stream", True),
        ("text/event-stream;q=0.9, application/json", False),
        ("text/*, application/json;q=0.1", True),
    ],
)
async def test_an_answer_is_sse_when_the_client_prefers_it(
    client: HttpMcp, accept: str, events: bool
) -> None:
    async with aconnect_sse(
        client.http,
        "POST",
        client.url,
        content=json.dumps(request(3, "ping")),
        headers=client.headers(accept),
    ) as source:
        content_type = source.response.headers["content-type"]
        if not events:
            assert content_type == "application/json"
            assert json.loads(await source.response.aread())["result"] == {}
            return
        assert content_type == "text/event-stream"
        received = [event async for event in source.aiter_sse()]
    priming, answer = received
    assert (priming.data, priming.retry, priming.event) == ("", sse.RETRY_MS, "message")
    number = priming.id.split("-")[0]
    assert priming.id == f"{number}-0" and answer.id == f"{number}-1"
    assert json.loads(answer.data) == {"jsonrpc": "2.0", "id": 3, "result": {}}


async def test_initialize_is_answered_with_json_whatever_the_client_prefers(server: RunningHorace) -> None:
    async with connect(server.http_url, initialize=False) as client:
        answer = await client.post(INITIALIZE, accept=EVENTS_FIRST)
        assert answer.headers["content-type"] == "application/json" and "mcp-session-id" in answer.headers
        failed = await client.post(request(0, "initialize", ["not", "an", "object"]))
        assert failed.status_code == 200 and failed.json()["error"]["code"] == -32602
        assert "mcp-session-id" not in failed.headers  # a failed initialize leaves no session
        await eventually(lambda: len(server.server.front.http.sessions) == 1, "the failed one gone")


def test_accept_ranks_media_types() -> None:
    assert Accept("text/*;q=0.5, */*;q=0.1").prefers("text/event-stream", over="application/json")
    assert not Accept("text/event-stream;q=0, */*").allows("text/event-stream")
    assert Accept("Application/JSON ; q=0.8 , TEXT/EVENT-STREAM").prefers(
        "text/event-stream", over="application/json"
    )
    assert not Accept("application/json;q=oops").allows("application/json")
    assert Accept(None).allows("application/json") and Accept("").allows("text/event-stream")


async def test_progress_goes_before_the_reply_on_the_calls_stream(
    server: RunningHorace, client: HttpMcp
) -> None:
    count = 600
    for n in range(count):
        write(server.files / f"user/p/{n}.txt", f"p{n}")
    call = tool_call(1, "horace_scan", meta={"progressToken": "tok", "correlation_id": "scan-1"})
    response, events = await client.events(call, accept=BOTH)  # progress: SSE whatever the client prefers
    assert response.headers["content-type"] == "text/event-stream"
    assert events[0].data == "" and events[0].retry == sse.RETRY_MS
    ids = [event.id for event in events]
    number = ids[0].split("-")[0]
    assert ids == [f"{number}-{n}" for n in range(len(events))]
    messages = replies(events)
    progress = [m["params"] for m in messages[:-1]]
    assert progress and all(m["method"] == "notifications/progress" for m in messages[:-1])
    assert all(p["progressToken"] == "tok" for p in progress)
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert progress[-1]["progress"] == progress[-1]["total"] == count
    reply = messages[-1]
    assert reply["id"] == 1 and reply["result"]["structuredContent"]["registered"] == count
    assert reply["result"]["structuredContent"]["correlation_id"] == "scan-1"
    # Another answer of the session is another stream: ids unique across the session.
    _, again = await client.events(request(2, "ping"))
    assert again[0].id.split("-")[0] != number


async def test_a_failed_call_is_logged_to_a_client_that_asked(client: HttpMcp) -> None:
    assert (await client.request("logging/setLevel", {"level": "warning"}))["result"] == {}
    call = tool_call(1, "horace_get_file_info", file_id="missing")
    response, events = await client.events(call, accept=BOTH)  # logs asked for: SSE
    assert response.headers["content-type"] == "text/event-stream"
    log_message, reply = replies(events)
    assert log_message["method"] == "notifications/message" and log_message["params"]["level"] == "warning"
    assert log_message["params"]["data"]["error_code"] == "NOT_CATALOGED"
    assert reply["id"] == 1 and reply["result"]["isError"] is True


async def test_a_batch_is_answered_whole(settings: Settings) -> None:
    async with run_horace(serving(settings, max_batch=5)) as running, connect(running.http_url) as client:
        batch = [request("a", "ping"), notification("notifications/initialized"), request("b", "tools/list")]
        answer = await client.post(batch)
        assert answer.status_code == 200
        assert {item["id"] for item in answer.json()} == {"a", "b"}
        too_long = await client.post([request(i, "ping") for i in range(6)])
        error = too_long.json()["error"]
        assert error["code"] == -32600 and "batch of 6 requests exceeds the limit of 5" in error["message"]
        only_notifications = await client.post([notification("notifications/initialized")] * 2)
        assert only_notifications.status_code == 202


# -- resumption -------------------------------------------------------------------------------


async def cut_after_priming(client: HttpMcp, message: dict[str, Any]) -> str:
    """POST *message* for an SSE answer, read its priming event, then cut the connection."""
    async with aconnect_sse(
        client.http, "POST", client.url, content=json.dumps(message), headers=client.headers(EVENTS_FIRST)
    ) as source:
        async for event in source.aiter_sse():
            assert event.data == "" and event.retry == sse.RETRY_MS
            return event.id
    raise AssertionError("no priming event")


async def resume(client: HttpMcp, last_event_id: str) -> tuple[httpx.Response, list[Any]]:
    async with aconnect_sse(
        client.http,
        "GET",
        client.url,
        headers={**client.headers("text/event-stream"), "last-event-id": last_event_id},
    ) as source:
        if source.response.status_code != 200:
            await source.response.aread()
            return source.response, []
        return source.response, [event async for event in source.aiter_sse()]


async def test_a_cut_post_stream_is_not_a_cancel_and_resumes_with_get(
    server: RunningHorace, client: HttpMcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    session = http_session(server, client)
    priming = await cut_after_priming(client, tool_call(7, "horace_scan"))
    number = int(priming.split("-")[0])
    await eventually(lambda: session.streams[number].writer is None, "the server to see the cut")
    await tool.started.wait()
    assert not tool.cancelled and session.session.inflight == 1  # the call runs on
    tool.release.set()
    await eventually(lambda: session.streams[number].finished, "the call to finish")
    assert session.session.held()["reply_bytes"] > 0  # kept for the client, counted

    # An id past what the stream sent is none of its: nothing, and the answer stays.
    response, events = await resume(client, f"{number}-99")
    assert response.status_code == 200 and events == []
    assert number in session.streams and not session.streams[number].delivered
    response, events = await resume(client, priming)
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    assert [event.id for event in events] == [f"{number}-1"]
    assert replies(events)[0]["result"]["structuredContent"]["scanned"] == 0
    await eventually(lambda: number not in session.streams, "the delivered answer dropped")
    assert session.session.held()["reply_bytes"] == 0
    again, left = await resume(client, priming)  # delivered: nothing left, the stream ends
    assert again.status_code == 200 and left == []

    # A resume while the call still runs follows it to its reply.
    tool = HeldTool(monkeypatch)
    priming = await cut_after_priming(client, tool_call(8, "horace_scan"))
    number = int(priming.split("-")[0])
    await eventually(lambda: session.streams[number].writer is None, "the server to see the cut")
    resumed: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def follow() -> None:
            resumed.append(await resume(client, priming))

        nursery.start_soon(follow)
        await eventually(lambda: session.streams[number].writer is not None, "the GET to take the stream")
        assert not session.streams[number].finished
        tool.release.set()
    response, events = resumed[0]
    assert response.status_code == 200 and replies(events)[0]["id"] == 8
    await eventually(lambda: server.server.front.admission.serving == 0, "the connections back")


async def test_an_answer_nobody_comes_for_is_dropped_after_the_send_timeout(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    async with (
        run_horace(serving(sqlite_settings, send_timeout=30, idle_timeout=10_000)) as running,
        connect(running.http_url, timeout=None) as client,
    ):
        session = http_session(running, client)
        priming = await cut_after_priming(client, tool_call(1, "horace_scan"))
        number = int(priming.split("-")[0])
        await eventually(lambda: session.streams[number].writer is None, "the server to see the cut")
        tool.release.set()
        await eventually(lambda: session.streams[number].finished, "the call to finish")
        finished = trio.current_time()
        await eventually(lambda: number not in session.streams, "the answer dropped", timeout=100, every=0.5)
        assert 30 <= trio.current_time() - finished < 31
        assert session.session.held()["reply_bytes"] == 0
        response, left = await resume(client, priming)
        assert response.status_code == 200 and left == []  # dropped: nothing to replay


async def test_answers_kept_for_a_resume_are_bounded_in_bytes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (Not a tool with a large result: those wait for room that kept answers hold.)
    tool = HeldTool(monkeypatch, {"pad": "x" * 30_000}, tool="horace_get_file_info")
    async with (
        run_horace(serving(settings, max_pending_reply_bytes=200_000)) as running,
        connect(running.http_url) as client,
    ):
        session = http_session(running, client)
        call = "horace_get_file_info"
        primings = [await cut_after_priming(client, tool_call(i, call, file_id="x")) for i in range(5)]
        numbers = [int(priming.split("-")[0]) for priming in primings]
        await eventually(lambda: all(session.streams[n].writer is None for n in numbers), "the cuts seen")
        tool.release.set()
        # (A stream is finished, and the kept ones trimmed, just after its call stops counting.)
        await eventually(
            lambda: all(n not in session.streams or session.streams[n].finished for n in numbers),
            "the answers to finish",
        )
        kept = [n for n in numbers if n in session.streams]
        # Each reply holds its 30 KB twice (as text and as structured content): three fit.
        assert len(kept) == 3 and session.session.held()["reply_bytes"] <= 200_000
        for number in kept:  # whichever are kept can be resumed
            response, events = await resume(client, f"{number}-0")
            assert (
                response.status_code == 200
                and len(replies(events)[0]["result"]["content"][0]["text"]) > 30_000
            )


async def test_a_client_that_takes_nothing_loses_its_connection_not_its_answer(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"max_batch": 1000, "max_reply_bytes": 64 << 20, "send_timeout": 30, "idle_timeout": 10_000}
    async with (
        run_horace(serving(sqlite_settings, **limits)) as running,
        connect(running.http_url, timeout=None) as client,
    ):
        session = http_session(running, client)
        batch = json.dumps([request(i, "tools/list") for i in range(1000)]).encode()  # ~25 MB back
        conn = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
        await conn.send(conn.request_bytes("POST", batch, client.headers(EVENTS_FIRST)))
        sent = trio.current_time()  # and never read: the answer fills the socket's buffers
        await eventually(lambda: bool(session.streams), "the answer to start")
        (number,) = session.streams
        await eventually(lambda: session.streams[number].writer is None, "the connection dropped", 100, 0.5)
        # Not before the send timeout. No upper bound here: with real sockets the fake clock
        # also jumps while the server waits on its worker threads, by as much as the machine
        # is busy; the exact timing is tested on a fake connection.
        assert trio.current_time() - sent >= 30
        # The clock stops jumping: a 25 MB read on a busy machine is no client taking nothing.
        autojump_clock.autojump_threshold = math.inf
        response, events = await resume(client, f"{number}-0")
        assert response.status_code == 200 and len(replies(events)[0]) == 1000
        await conn.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- cancellation -----------------------------------------------------------------------------


async def post_while_held(
    client: HttpMcp, tool: HeldTool, message: Any, then: Awaitable[httpx.Response]
) -> tuple[httpx.Response, httpx.Response]:
    """POST *message*; once its tool runs, send *then*. Both answers."""
    answers: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            answers.append(await client.post(message))

        nursery.start_soon(call)
        await tool.started.wait()
        sent = await then
    return answers[0], sent


async def test_notifications_cancelled_stops_a_call_posted_for_json(
    server: RunningHorace, client: HttpMcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    cancel = notification("notifications/cancelled", {"requestId": 99, "reason": "changed my mind"})
    answer, cancelled = await post_while_held(client, tool, tool_call(99, "horace_scan"), client.post(cancel))
    assert cancelled.status_code == 202 and tool.cancelled
    assert answer.status_code == 202 and answer.content == b""  # no response to a cancelled call
    assert (await client.request("ping"))["result"] == {}
    held = http_session(server, client).session.held
    await eventually(lambda: set(held().values()) == {0}, "nothing held")


async def test_a_call_reusing_the_id_of_one_under_way_is_refused(
    server: RunningHorace, client: HttpMcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its reply and a cancel by that id would be the other call's too."""
    tool = HeldTool(monkeypatch)
    cancel = notification("notifications/cancelled", {"requestId": 5})

    async def again_then_cancel() -> httpx.Response:
        again = await client.post(tool_call(5, "horace_scan"))
        ping = (await client.post(request(5, "ping"))).json()
        assert ping["error"]["code"] == -32600, ping  # any request: its reply would be the call's
        await client.post(cancel)
        return again

    first, again = await post_while_held(client, tool, tool_call(5, "horace_scan"), again_then_cancel())
    body = again.json()
    assert body["id"] == 5 and body["error"]["code"] == -32600
    assert body["error"]["message"] == "id 5 is already in use by a request under way on this session"
    assert tool.cancelled and first.status_code == 202  # the first, cancelled by its id
    tool.release.set()
    assert (await client.request("tools/call", {"name": "horace_scan", "arguments": {}}))["result"]
    await drained(server)
    rows = [
        r
        for r in await stored_turns(server.settings.catalog_url)
        if r["conversation_id"] == http_session(server, client).session.conversation_id
    ]
    # Each call, the one turned away too, has its request turn; all but the cancelled one
    # a response turn (the one turned away's: its error).
    assert [(r["role"], r["metadata"]["error_code"]) for r in rows] == [
        ("user", None),
        ("user", None),
        ("assistant", "-32600"),
        ("user", None),
        ("assistant", None),
    ]


async def test_notifications_cancelled_ends_an_sse_answer_without_reply(
    server: RunningHorace, client: HttpMcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    answered: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            answered.append(await client.events(tool_call("c", "horace_scan")))

        nursery.start_soon(call)
        await tool.started.wait()
        assert (
            await client.post(notification("notifications/cancelled", {"requestId": "c"}))
        ).status_code == 202
    response, events = answered[0]
    assert tool.cancelled and response.status_code == 200
    assert [event.data for event in events] == [""]  # the priming event, then the end
    await eventually(lambda: not http_session(server, client).streams, "the answer dropped")
    assert (await resume(client, events[0].id))[1] == []  # nothing to replay


async def test_delete_cancels_the_calls_under_way(
    server: RunningHorace, client: HttpMcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    answer, deleted = await post_while_held(client, tool, tool_call(1, "horace_scan"), client.delete())
    assert deleted.status_code == 204
    # Told, as a request on an ended session is (404), not 202, which is for notifications:
    # a client's SDK would wait on the call until its own timeout.
    assert tool.cancelled and answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == -32600 and "the session ended (deleted by the client)" in error["message"]
    assert answer.json()["id"] == 1  # addressed to the call, so that a client can match it
    assert (await client.post(request(2, "ping"))).status_code == 404
    await eventually(lambda: server.server.front.admission.sessions == 0, "the slot back")


async def test_delete_answers_each_request_of_a_batch_cut_short(
    server: RunningHorace, client: HttpMcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    batch = [tool_call("a", "horace_scan"), notification("notifications/progress", {}), request(7, "ping")]
    answer, deleted = await post_while_held(client, tool, batch, client.delete())
    assert deleted.status_code == 204 and answer.status_code == 404
    assert [(item["id"], item["error"]["code"]) for item in answer.json()] == [("a", -32600), (7, -32600)]


async def test_http_calls_are_conversation_turns_as_websocket_ones(
    server: RunningHorace, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(server.files / "user/t.txt", "t")
    async with connect(server.http_url) as client:
        conversation_id = http_session(server, client).conversation_id
        assert http_session(server, client).session.transport == "http"
        done = await client.post(
            tool_call(1, "horace_register_file", meta={"correlation_id": "http-1"}, file_path="user/t.txt")
        )
        assert done.json()["result"]["structuredContent"]["correlation_id"] == "http-1"
        tool = HeldTool(monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.post, tool_call(2, "horace_scan", meta={"correlation_id": "http-2"}))
            await tool.started.wait()
            await client.post(notification("notifications/cancelled", {"requestId": 2}))
    await drained(server)
    rows = [
        r for r in await stored_turns(server.settings.catalog_url) if r["conversation_id"] == conversation_id
    ]
    assert [(r["turn_number"], r["role"], r["metadata"]["correlation_id"]) for r in rows] == [
        (1, "user", "http-1"),
        (2, "assistant", "http-1"),
        (3, "user", "http-2"),  # cancelled: no response turn
    ]


# -- the GET stream -----------------------------------------------------------------------------


async def test_a_long_call_asked_for_json_is_answered_as_an_event_stream_kept_alive(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON answer sends nothing until the call is done: a proxy in front that cuts a
    connection silent for a minute would cut a long call (nginx answers 504 while the call
    goes on). A reply not ready within KEEPALIVE_INTERVAL goes as SSE instead, with a
    keep-alive comment each time the call is quiet that long, then the reply."""

    async def long_scan(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(2.5 * KEEPALIVE_INTERVAL)
        return {"scanned": 7}

    monkeypatch.setitem(TOOLS, "horace_scan", attrs.evolve(TOOLS["horace_scan"], handler=long_scan))
    async with (
        run_horace(serving(sqlite_settings, idle_timeout=10_000, call_deadline=10_000)) as running,
        connect(running.http_url, timeout=None) as client,
    ):
        conn = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
        body = json.dumps(request(9, "tools/call", {"name": "horace_scan", "arguments": {}})).encode()
        asked = trio.current_time()
        headers = client.headers("application/json, text/event-stream")  # JSON first: preferred
        await conn.send(conn.request_bytes("POST", body, headers))
        head = await conn.next_event()
        assert head.status_code == 200 and dict(head.headers)[b"content-type"] == b"text/event-stream"
        assert KEEPALIVE_INTERVAL <= trio.current_time() - asked < KEEPALIVE_INTERVAL + 1
        received = b""
        while not isinstance(event := await conn.next_event(), h11.EndOfMessage):
            received += event.data
        events = received.split(b"\n\n")
        assert events[0].startswith(b"id: ") and b"retry: " in events[0]  # primed: a resume may follow
        assert events.count(sse.KEEPALIVE.rstrip(b"\n")) == 1  # (at 30 s; the reply came at 37.5)
        [reply] = [json.loads(e.partition(b"data: ")[2]) for e in events if b"data: {" in e]
        assert reply["id"] == 9 and reply["result"]["structuredContent"]["scanned"] == 7
        await conn.aclose()


async def test_get_streams_keep_alive_are_bounded_and_end_with_the_session(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        run_horace(serving(sqlite_settings, idle_timeout=10_000)) as running,
        connect(running.http_url, timeout=None) as client,
    ):
        conns = []
        for _ in range(MAX_GET_STREAMS):
            conn = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
            await conn.send(conn.request_bytes("GET", headers=client.headers("text/event-stream")))
            head = await conn.next_event()
            assert head.status_code == 200 and dict(head.headers)[b"content-type"] == b"text/event-stream"
            conns.append(conn)
        opened = trio.current_time()
        past = await client.http.get(client.url, headers=client.headers("text/event-stream"))
        assert past.status_code == 409 and f"{MAX_GET_STREAMS} GET streams" in error_of(past)["message"]
        for conn in conns:
            comment = await conn.next_event()
            assert isinstance(comment, h11.Data) and comment.data == sse.KEEPALIVE
        assert KEEPALIVE_INTERVAL <= trio.current_time() - opened < KEEPALIVE_INTERVAL + 1
        await conns.pop().aclose()  # one gone: room for another
        again = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
        await again.send(again.request_bytes("GET", headers=client.headers("text/event-stream")))
        assert (await again.next_event()).status_code == 200
        conns.append(again)
        assert (await client.delete()).status_code == 204
        for conn in conns:
            assert isinstance(await conn.next_event(), h11.EndOfMessage)
            await conn.aclose()


# -- limits, shared with WebSocket sessions ----------------------------------------------------


async def test_the_session_cap_is_shared_with_websocket(settings: Settings) -> None:
    async with (
        run_horace(serving(settings, max_connections=2)) as running,
        connect_websocket(running.url) as ws,
        connect(running.http_url) as first,
    ):
        assert (await ws.request("ping"))["result"] == {}
        async with connect(running.http_url, initialize=False) as late:
            refused = await late.post(INITIALIZE)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "too many sessions (limit 2)" in error_of(refused)["message"]
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(running.url):
                pass
        assert rejected.value.status_code == 503
        health = (await first.http.get(running.health_url)).json()
        assert health["sessions"] == 2 and health["http_sessions"] == 1
        assert health["connections"]["sessions"] == 2 and health["connections"]["refused"] == 2
        assert (await first.delete()).status_code == 204
        async with connect(running.http_url) as again:  # its slot came back
            assert (await again.request("ping"))["result"] == {}


async def test_a_slot_is_taken_back_from_the_session_quiet_longest(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that leave without DELETE hold their slots until idle_timeout: a new session
    (HTTP or WebSocket) that finds none free takes back the slot of the session quiet
    longest among those that ask nothing now; that one's next request is 404 (MCP has its
    client start a new session). A session with a GET stream open keeps its slot."""
    monkeypatch.setattr(http, "RECLAIM_AFTER", 0.2)
    async with (
        run_horace(serving(settings, max_connections=2)) as running,
        connect(running.http_url) as oldest,
        connect(running.http_url) as listening,
    ):
        async with listening.http.stream(
            "GET", listening.url, headers=listening.headers("text/event-stream")
        ) as stream:
            assert stream.status_code == 200
            await trio.sleep(0.3)
            async with connect(running.http_url) as newcomer:  # takes oldest's slot
                assert (await newcomer.request("ping"))["result"] == {}
                gone = await oldest.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
                assert gone.status_code == 404
                assert (await listening.request("ping"))["result"] == {}
                await trio.sleep(0.3)
                async with connect_websocket(running.url) as ws:  # takes newcomer's
                    assert (await ws.request("ping"))["result"] == {}
                    gone = await newcomer.post({"jsonrpc": "2.0", "id": 2, "method": "ping"})
                    assert gone.status_code == 404
                    # None left to take back (the WebSocket's is a connection's, the other
                    # has a stream open): refused as before.
                    async with connect(running.http_url, initialize=False) as late:
                        refused = await late.post(INITIALIZE)
                        assert refused.status_code == 503
        health = (await listening.http.get(running.health_url)).json()
        assert health["connections"]["refused"] == 1


async def test_a_small_body_sent_chunked_holds_up_no_other_message_while_answered(
    server: RunningHorace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body sent without its length may be large: it is read in the server's one
    large-request slot, and the slot let go of once the body is read small. Held for the
    whole call, every chunked request of every session waited for the one before it."""
    tool = HeldTool(monkeypatch)

    async def chunked(message: dict[str, Any]) -> AsyncIterator[bytes]:  # (no length: chunked)
        yield json.dumps(message).encode()

    async with (
        connect(server.http_url) as first,
        connect(server.http_url) as second,
        trio.open_nursery() as nursery,
    ):
        call = tool_call(1, "horace_scan")
        nursery.start_soon(
            partial(first.http.post, first.url, content=chunked(call), headers=first.headers())
        )
        with trio.fail_after(10):
            await tool.started.wait()
        with trio.fail_after(5):
            ping = chunked(request(2, "ping"))
            answer = await second.http.post(second.url, content=ping, headers=second.headers())
        assert answer.status_code == 200 and answer.json()["result"] == {}
        tool.release.set()


async def test_a_post_whose_session_ends_while_its_body_comes_is_404(server: RunningHorace) -> None:
    """The session ended (a DELETE) between a POST's head and its body: 404 with the
    request's id, as for any request of an ended session; not 503, which says the server
    is shutting down."""
    async with connect(server.http_url) as client:
        conn = await RawConnection.open(server.server.port)  # type: ignore[arg-type]
        body = json.dumps(request("late", "ping")).encode()
        head = conn.request_bytes("POST", body, {**client.headers()})
        await conn.send(head[: -len(body)])  # the head, and the body not yet
        await trio.sleep(0.2)
        assert (await client.delete()).status_code == 204
        await conn.send(body)
        with trio.fail_after(10):
            answer, text = await conn.response()
        await conn.aclose()
    assert answer.status_code == 404, text
    reply = json.loads(text)
    assert reply["id"] == "late" and "no such session" in reply["error"]["message"], reply


async def test_concurrent_calls_are_capped_per_session(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = HeldTool(monkeypatch)
    async with (
        run_horace(serving(settings, max_calls_per_connection=2)) as running,
        connect(running.http_url) as client,
        trio.open_nursery() as nursery,
    ):
        session = http_session(running, client)
        for i in range(2):
            nursery.start_soon(client.post, tool_call(i, "horace_scan"))
        await eventually(lambda: session.session.inflight == 2, "two calls under way")
        busy = (await client.post(request(9, "ping"))).json()
        assert busy["error"]["code"] == -32000
        assert "too many calls under way in this session" in busy["error"]["message"]
        # A tool call turned away is logged as any other: its request and its error.
        turned = (await client.post(tool_call(10, "horace_scan", {"correlation_id": "turned"}))).json()
        assert turned["error"]["code"] == -32000
        assert turned["error"]["data"] == {"correlation_id": "turned"}
        async with connect(running.http_url) as other:  # the cap is per session
            assert (await other.request("ping"))["result"] == {}
        tool.release.set()
        await eventually(lambda: session.session.inflight == 0, "the calls done")
        conversation_id = session.session.conversation_id
        await drained(running)
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation_id]
    turns = [
        (r["role"], r["metadata"]["tool"], r["metadata"]["error_code"])
        for r in rows
        if r["metadata"]["correlation_id"] == "turned"
    ]
    assert turns == [("user", "horace_scan", None), ("assistant", "horace_scan", "-32000")]
    assert sorted(r["turn_number"] for r in rows) == list(range(1, len(rows) + 1))


async def test_connections_kept_alive_after_serving_keep_the_pending_bound(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection serving a session's call is out of the pending count; kept alive
    after it, it is pending again without arriving (a proxy's pool of upstream
    connections does this). Past the bound, the longest waiting of those go, as a new
    connection would make them go: the count never stays above it."""
    tool = HeldTool(monkeypatch)
    async with (
        run_horace(serving(settings, max_pending_connections=3)) as running,
        connect(running.http_url) as client,
    ):
        admission = running.server.front.admission
        conns = []
        for i in range(6):
            conn = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
            body = json.dumps(tool_call(i, "horace_scan")).encode()
            await conn.send(conn.request_bytes("POST", body, client.headers(BOTH)))
            conns.append(conn)
        await eventually(lambda: admission.serving == 6, "six calls served at once")
        evicted = admission.evicted
        tool.release.set()
        for conn in conns:
            head, _ = await conn.response()
            assert head.status_code == 200
            conn.next_cycle()
        await eventually(lambda: admission.serving == 0, "every answer sent")
        await trio.sleep(0.1)  # (each goes back to waiting once its answer is out)
        assert admission.pending <= 3
        assert admission.evicted - evicted >= 3
        closed = 0
        for conn in conns:  # the ones evicted were closed, unanswered; the others wait on
            with trio.move_on_after(0.5):
                if isinstance(await conn.next_event(), h11.ConnectionClosed):
                    closed += 1
            await conn.aclose()
        assert closed >= 3


async def test_an_idle_session_ends_and_its_id_is_then_unknown(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        run_horace(serving(sqlite_settings, idle_timeout=300, call_deadline=10_000)) as running,
        connect(running.http_url, timeout=None) as client,
    ):
        admission = running.server.front.admission
        await trio.sleep(200)
        # Any request counts, a notification too (which the MCP session never sees).
        assert (await client.post(notification("notifications/initialized"))).status_code == 202
        await trio.sleep(250)  # 450 s in, 250 s after it
        assert admission.sessions == 1
        assert (await client.request("ping"))["result"] == {}
        tool = HeldTool(monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.post, tool_call(1, "horace_scan"))
            await tool.started.wait()
            await trio.sleep(1000)  # a call under way: not idle, however long
            assert admission.sessions == 1
            tool.release.set()
        # A client that listens (a GET stream open, getting keep-alives) is there too,
        # however long; its idle time runs from the stream's end.
        listening = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
        await listening.send(listening.request_bytes("GET", headers=client.headers("text/event-stream")))
        assert (await listening.next_event()).status_code == 200
        await trio.sleep(1000)
        assert admission.sessions == 1
        await listening.aclose()
        await eventually(lambda: http_session(running, client).listening == 0, "the stream to end")
        finished = trio.current_time()
        await eventually(lambda: admission.sessions == 0, "the session to end", timeout=400, every=0.5)
        assert 300 <= trio.current_time() - finished < 302
        gone = await client.post(request(2, "ping"))
        assert gone.status_code == 404


# -- access ---------------------------------------------------------------------------------------


async def test_token_and_origin(settings: Settings) -> None:
    origins = ("https://ok.example",)
    async with run_horace(serving(settings, auth_token="s3cret", allowed_origins=origins)) as running:
        async with connect(running.http_url, initialize=False) as client:
            for authorization in (None, "Bearer wrong", "s3cret"):
                headers = {} if authorization is None else {"authorization": authorization}
                refused = await client.post(INITIALIZE, **headers)
                assert (
                    refused.status_code == 401
                    and refused.headers["www-authenticate"] == 'Bearer realm="horace"'
                )
            token = {"authorization": "Bearer s3cret"}
            evil = await client.post(INITIALIZE, origin="https://evil.example", **token)
            assert evil.status_code == 403
            assert error_of(evil)["message"].startswith("origin 'https://evil.example' is not allowed")
            for origin in ("https://ok.example", "http://localhost:3000"):
                assert (await client.post(INITIALIZE, origin=origin, **token)).status_code == 200
            for scheme in ("bearer", "BEARER", "Bearer  "):  # the scheme in any case (RFC 9110)
                said = {"authorization": f"{scheme} s3cret"}
                assert (await client.post(INITIALIZE, **said)).status_code == 200, scheme
            for wrong in ("Basic s3cret", "Bearers3cret", "Bearer s3cret2", "Bearer"):
                assert (await client.post(INITIALIZE, authorization=wrong)).status_code == 401, wrong
        async with connect(running.http_url, headers=token) as client:
            assert (await client.request("ping"))["result"] == {}
            bare = {k: v for k, v in client.headers().items()}
            for method in ("GET", "DELETE"):
                response = await client.http.request(
                    method, client.url, headers={**bare, "authorization": ""}
                )
                assert response.status_code == 401, method


def test_allowed_hosts_and_origins_are_compared_as_browsers_and_proxies_send_them() -> None:
    """An allowed host written with a port (a proxy's) matches its name on any port; an
    allowed origin matches whatever the case of its name, with or without its scheme's
    default port or a trailing slash; nothing else matches more than it did."""
    served = hosts_served("127.0.0.1", ("h2.example:8443", "H3.Example"))
    for host in (b"h2.example:8443", b"h2.example", b"H2.EXAMPLE:443", b"h3.example:80", b"localhost:1"):
        assert host_refusal({b"host": host}, served) is None, host
    for host in (b"h2.example.evil", b"evil:8443", b"x:notaport", b"h2.example:8443:1", b"u@h2.example"):
        refusal = host_refusal({b"host": host}, served)
        assert refusal is not None and refusal.status == 403, host
    allowed = ("https://Ops.Example:443/", "http://dash.example:8080")
    for origin in ("https://ops.example", "HTTPS://OPS.EXAMPLE:443", "http://dash.example:8080/"):
        assert origin_allowed(origin, allowed), origin
    for origin in (
        "https://ops.example:8443",
        "http://ops.example",
        "http://dash.example",
        "null",
        "x://[",
        "https://ops.example/path",
        "https://u@ops.example",
    ):
        assert not origin_allowed(origin, allowed), origin


@pytest.mark.parametrize("allowed", [(), ("horace.example",)])
async def test_a_host_that_is_not_the_servers_name_is_refused_on_loopback(
    settings: Settings, allowed: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends that name as Host (and
    no Origin with a GET of its own site). On a loopback address only loopback names, and
    those listed, are answered, on every path; a WebSocket upgrade too. The refusal is
    logged with who sent it (the peer, and a proxy's X-Forwarded-For as given); its body
    is a JSON-RPC error on MCP's paths, `{"error": ...}` elsewhere."""
    async with run_horace(serving(settings, allowed_hosts=allowed)) as running:
        port = running.server.port
        health = f"http://127.0.0.1:{port}/health"
        async with httpx.AsyncClient() as http:
            for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "x:notaport"):
                with caplog.at_level(logging.WARNING, logger="horace"):
                    refused = await http.get(health, headers={"host": host, "x-forwarded-for": "203.0.113.9"})
                assert refused.status_code == 403, host
                assert "is not this server's name (HORACE_ALLOWED_HOSTS)" in refused.json()["error"]
                posted = await http.post(
                    running.http_url, json=INITIALIZE, headers={"host": host, "accept": BOTH}
                )
                assert posted.status_code == 403 and "mcp-session-id" not in posted.headers
                assert "is not this server's name" in error_of(posted)["message"]
            logged = [r for r in caplog.records if "is not this server's name" in r.getMessage()]
            assert logged and logged[0].forwarded_for == "203.0.113.9"  # type: ignore[attr-defined]
            assert logged[0].client.startswith("127.0.0.1:")  # type: ignore[attr-defined]
            named = ["localhost", f"localhost:{port}", "127.0.0.1", "127.0.0.2:1", "[::1]:8", "LOCALHOST"]
            for host in [*named, *(f"{name}:{port}" for name in allowed)]:
                assert (await http.get(health, headers={"host": host})).status_code == 200, host
        upgrade = (
            "GET /mcp HTTP/1.1\r\nhost: evil.example\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(upgrade.encode())
            answer = await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        async with connect_websocket(running.url) as ws:  # (its Host: 127.0.0.1:port)
            assert (await ws.request("ping"))["result"] == {}


async def test_a_server_listening_elsewhere_answers_any_host_unless_told(settings: Settings) -> None:
    anywhere = attrs.evolve(serving(settings), host="0.0.0.0")
    async with run_horace(anywhere) as running:
        health = f"http://127.0.0.1:{running.server.port}/health"
        async with httpx.AsyncClient() as http:
            assert (await http.get(health, headers={"host": "horace.example"})).status_code == 200
    async with run_horace(attrs.evolve(anywhere, allowed_hosts=("horace.example",))) as running:
        health = f"http://127.0.0.1:{running.server.port}/health"
        async with httpx.AsyncClient() as http:
            assert (await http.get(health, headers={"host": "horace.example"})).status_code == 200
            assert (await http.get(health, headers={"host": "evil.example"})).status_code == 403


async def test_a_page_of_an_allowed_origin_may_read_the_answers(settings: Settings) -> None:
    """CORS: the preflight (no token: browsers send none with it) lists what a page may
    send; every answer, a refusal too, lets the page read it and the session's id; a page
    of another origin gets nothing of that."""
    origins = ("https://ok.example",)
    async with (
        run_horace(serving(settings, auth_token="s3cret", allowed_origins=origins)) as running,
        connect(running.http_url, initialize=False) as client,
    ):
        http, url = client.http, client.url
        preflight = await http.request(
            "OPTIONS",
            url,
            headers={
                "origin": "https://ok.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, mcp-session-id, authorization",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://ok.example"
        assert preflight.headers["access-control-allow-methods"] == "GET, POST, DELETE"
        allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "mcp-session-id", "authorization", "mcp-protocol-version"} <= allowed
        evil = await http.request("OPTIONS", url, headers={"origin": "https://evil.example"})
        assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
        plain = await http.request("OPTIONS", url)  # not a browser's: the methods only
        assert plain.status_code == 204 and plain.headers["allow"] == "GET, POST, DELETE, OPTIONS"
        token = {"authorization": "Bearer s3cret"}
        opened = await client.post(INITIALIZE, origin="https://ok.example", **token)
        assert opened.status_code == 200
        assert opened.headers["access-control-allow-origin"] == "https://ok.example"
        assert "mcp-session-id" in opened.headers["access-control-expose-headers"]
        assert opened.headers["vary"] == "origin"
        refused = await client.post(INITIALIZE, origin="https://ok.example")
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://ok.example"
        away = await client.post(INITIALIZE, origin="https://evil.example", **token)
        assert away.status_code == 403 and "access-control-allow-origin" not in away.headers
        alone = await client.post(INITIALIZE, **token)  # no Origin: no CORS headers
        assert alone.status_code == 200 and "access-control-allow-origin" not in alone.headers


async def test_the_websocket_token_as_a_subprotocol(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    token = "s3cret/with+chars=="  # base64 and slashes: not a valid subprotocol as it is
    caplog.set_level(logging.DEBUG)
    async with run_horace(serving(settings, auth_token=token)) as running:
        offered = subprotocol_for_token(token)
        assert re.fullmatch(r"bearer\.[A-Za-z0-9_-]+", offered)
        async with open_websocket_url(running.url, subprotocols=["mcp", offered]) as ws:
            assert ws.subprotocol == "mcp"  # never the token's: answered headers are seen by proxies
            await ws.send_message(json.dumps(request(1, "ping")))
            assert json.loads(await ws.get_message())["result"] == {}
        for wrong in ("bearer." + subprotocol_for_token("nope")[7:], "bearer.!!", "bearer"):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(running.url, subprotocols=["mcp", wrong]):
                    pass
            assert rejected.value.status_code == 401
        async with connect(running.http_url, initialize=False) as client:  # not over HTTP: headers work there
            assert (await client.post(INITIALIZE, sec_websocket_protocol=offered)).status_code == 401
    logged = caplog.text
    assert token not in logged and offered not in logged and offered[7:] not in logged


# -- shutdown ---------------------------------------------------------------------------------------


async def test_shutdown_lets_http_calls_finish(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = HeldTool(monkeypatch)
    async with run_horace(serving(settings, shutdown_grace=30)) as running:
        async with connect(running.http_url) as client, trio.open_nursery() as nursery:
            kept_alive = await RawConnection.open(running.server.port)  # type: ignore[arg-type]
            answers: list[httpx.Response] = []

            async def call() -> None:
                answers.append(await client.post(tool_call(1, "horace_scan")))

            nursery.start_soon(call)
            await tool.started.wait()
            running.server.shutdown()
            await eventually(lambda: not http_session(running, client).accepting, "the session to drain")
            ping = json.dumps(request(2, "ping")).encode()
            await kept_alive.send(kept_alive.request_bytes("POST", ping, client.headers()))
            head, body = await kept_alive.response()
            assert head.status_code == 503 and b"shutting down" in body
            kept_alive.next_cycle()  # a notification is still taken (a cancel would be)
            initialized = json.dumps(notification("notifications/initialized")).encode()
            await kept_alive.send(kept_alive.request_bytes("POST", initialized, client.headers()))
            head, _ = await kept_alive.response()
            assert head.status_code == 202
            await kept_alive.aclose()
            tool.release.set()
        assert answers[0].status_code == 200 and "result" in answers[0].json()
        await eventually(lambda: not running.server.sessions, "the session to end")
        assert not tool.cancelled


async def test_a_body_that_came_while_the_server_was_stopped_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A body that came while the server was stopped past its deadline (woken by the
    deadline, before it looked at the socket) is read in one last look, not refused."""
    body = json.dumps(INITIALIZE).encode()
    head = b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n\r\n" % len(body)
    conn = HttpConnection(StoppedMeanwhile(head + body[:5], body[5:]), send_timeout=5)
    request = await conn.next_request()
    assert request is not None and request.method == b"POST"
    started = trio.current_time()
    with trio.fail_after(2 * HEAD_TIMEOUT):
        assert await conn.read_body(1 << 20) == body
    assert trio.current_time() - started == pytest.approx(HEAD_TIMEOUT)
    # A body that does not come in the last look either is too slow.
    late = HttpConnection(StoppedMeanwhile(head, None), send_timeout=5)
    await late.next_request()
    with pytest.raises(BodyTooSlow):
        await late.read_body(1 << 20)


def test_what_came_while_the_server_was_stopped_is_answered(tmp_path: Path) -> None:
    """A server stopped (SIGSTOP) past its deadlines for what a client sends, which came
    meanwhile: a request on a kept-alive connection, the body of a request whose head came
    before the stop, the rest of a WebSocket message past UNHURRIED_BYTES. Woken, it answers
    each instead of failing it (its first look at each socket comes after the deadline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    env["HORACE_STORAGE_PATH"] = str(tmp_path / "horace-data")
    with serve_process(env) as (server, port):
        client = HTTPConnection("127.0.0.1", port, timeout=10)
        client.request("GET", "/health")
        assert client.getresponse().read()  # the connection is kept alive
        initialize = json.dumps(INITIALIZE).encode()
        posting = socket.create_connection(("127.0.0.1", port), timeout=10)
        posting.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"accept: application/json, text/event-stream\r\n"
            b"content-length: %d\r\n\r\n" % len(initialize)
        )
        websocket = socket.create_connection(("127.0.0.1", port), timeout=10)
        websocket.sendall(
            b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert websocket.recv(4096).startswith(b"HTTP/1.1 101 ")
        ping = json.dumps(request(7, "ping")).encode().ljust(2 * UNHURRIED_BYTES)  # (JSON: spaces)
        frame = b"\x81\xff" + len(ping).to_bytes(8, "big") + bytes(4) + ping  # masked with zeros
        websocket.sendall(frame[: UNHURRIED_BYTES + 1024])  # its deadline runs from here
        time.sleep(0.5)  # (stopped while it waits in epoll_wait: woken, that says EINTR)
        server.send_signal(signal.SIGSTOP)
        try:
            client.request("GET", "/health")  # into the sockets of the stopped server
            posting.sendall(initialize)
            websocket.sendall(frame[UNHURRIED_BYTES + 1024 :])
            time.sleep(HEAD_TIMEOUT + 1)
        finally:
            server.send_signal(signal.SIGCONT)
        answer = client.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"
        client.close()
        head = posting.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        posting.close()
        reply = websocket.recv(65536)
        assert reply[:1] == b"\x81" and b'"id": 7, "result": {}' in reply, reply[:200]
        websocket.close()
