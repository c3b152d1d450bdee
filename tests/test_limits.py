"""The server's limits: what one client can make it hold, how many connections it takes
on, how long it keeps a silent one, and what /health shows to whom.

Three kinds of test:

- a session on a fake WebSocket, driven message by message, for what must be seen from
  inside (what ran, what waits), on Trio's clock where time matters (autojump);
- a real server in the test's loop, over real sockets, for the edges (admission, close
  codes, HTTP answers), on Trio's clock too where time matters;
- a real ``python -m horace serve`` process for peak memory (``VmHWM``): the worst
  admissible request under each limit (tests/limits_load.py), against
  ``PEAK_RSS_BOUND``.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import BACKEND, fresh_database
from helpers import tool_body, write
from http_client import StoppedMeanwhile
from limits_load import Measured, measure, populate, scenarios
from mcp_client import connect
from test_server import http_get, serving, wait_idle
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, open_websocket_url

from horace.assemble import open_catalog
from horace.backends.records import FileChanges
from horace.catalog import Catalog
from horace.config import ConfigError, Settings
from horace.model import ErrorCode, HoraceError, SearchPage
from horace.redact import MASK, redact_url
from horace.server import wsintake
from horace.server.front import HEAD_TIMEOUT
from horace.server.jsonrpc import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_VALUES,
    REPLY_TOO_LARGE,
    SERVER_BUSY,
    RpcError,
    json_size_at_least,
    parse,
    unusable,
)
from horace.server.lifecycle import HoraceServer, listen
from horace.server.mcp import LARGE_REQUEST_BYTES, MAX_PROGRESS_TOKEN_CHARS, McpSession
from horace.server.replyroom import ReplyRoom
from horace.server.resources import Resources
from horace.server.tools import MAX_CORRELATION_ID, TOOLS
from horace.server.websocket import WebSocketSession
from horace.server.wsintake import UNHURRIED_BYTES
from horace.sinks.supervisor import SinkRunner
from horace.testing import RunningHorace, run_horace

# Peak RSS of `horace serve` under any of the worst admissible requests, at the default
# limits, with a catalog of 1000 files whose metadata is at its limit. Measured (by
# scripts/bench_limits) at 63-211 MiB on SQLite and 61-167 MiB on PostgreSQL, from about
# 60 MiB at start; the worst is 256 concurrent searches whose replies just fit, to a
# client that does not read. Before these limits, 5,000 tools/list in one batch took
# 745 MB and 20,000 raised MemoryError.
PEAK_RSS_BOUND = 300 * 2**20


# -- a session on a fake WebSocket ---------------------------------------------------------


class FakeWebSocket:
    """Messages in through a channel; replies out into ``sent``, taken only while the
    client is ``reading`` (otherwise send_message blocks, as on a full socket)."""

    def __init__(self) -> None:
        self.incoming_send, self.incoming = trio.open_memory_channel[str](100)
        self.sent: list[Any] = []
        self.reading = trio.Event()
        self.reading.set()
        self.closed_with: tuple[int, str | None] | None = None
        self.pongs: list[float] = []  # when the server sent an unsolicited pong

    async def get_message(self) -> str:
        try:
            return await self.incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(CloseReason(1006, None)) from None

    async def send_message(self, text: str) -> None:
        await self.reading.wait()
        self.sent.append(json.loads(text))

    async def pong(self, payload: bytes | None = None) -> None:
        await self.reading.wait()
        self.pongs.append(trio.current_time())

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = (code, reason)
        self.incoming.close()
        await trio.lowlevel.checkpoint()


class FakePeer:
    """The connection under the fake WebSocket: when the client last sent anything."""

    def __init__(self, ws: FakeWebSocket) -> None:
        self.ws = ws
        self.last_received = trio.current_time()
        self.dropped = False

    async def aclose(self) -> None:
        self.dropped = True
        self.ws.incoming.close()
        await trio.lowlevel.checkpoint()

    def take_slot(self) -> None:
        return None  # (its messages are all small)


@attrs.define
class FakeSession:
    session: WebSocketSession
    ws: FakeWebSocket
    peer: FakePeer
    ended: trio.Event

    async def send(self, message: Any) -> None:
        self.peer.last_received = trio.current_time()
        await self.ws.incoming_send.send(json.dumps(message))


async def start_session(
    nursery: trio.Nursery,
    settings: Settings,
    catalog: Catalog | None = None,
    server_room: ReplyRoom | None = None,
) -> FakeSession:
    ws = FakeWebSocket()
    peer = FakePeer(ws)
    mcp = McpSession(catalog, settings, transport="websocket", server_room=server_room)  # type: ignore[arg-type]
    session = WebSocketSession(ws, peer, mcp)  # type: ignore[arg-type]
    ended = trio.Event()

    async def run() -> None:
        try:
            await session.run()
        finally:
            ended.set()

    nursery.start_soon(run)
    return FakeSession(session, ws, peer, ended)


def request(request_id: Any, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def call(request_id: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    return request(request_id, "tools/call", {"name": tool, "arguments": arguments})


def by_id(replies: list[Any]) -> dict[Any, Any]:
    items = [item for reply in replies for item in (reply if isinstance(reply, list) else [reply])]
    return {item["id"]: item for item in items}


async def test_idle_session_closes_with_1001(autojump_clock: trio.testing.MockClock) -> None:
    """Closed after its idle time, though the server's heartbeat (an unsolicited pong
    every 15 s, which keeps a proxy in front from cutting the connection) went on."""
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        fake = await start_session(nursery, Settings(idle_timeout=300))
        await fake.ended.wait()
    assert fake.ws.closed_with == (1001, "idle for 300 s")
    assert 300 <= trio.current_time() - started < 301
    beats = [round(at - started) for at in fake.ws.pongs]
    assert [at for at in beats if at < 300] == list(range(15, 300, 15)), beats  # (one at 300: either way)


async def test_frames_messages_and_calls_keep_a_session_open(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = trio.Event()

    async def long_scan(ctx: Any, args: Any) -> dict[str, Any]:
        await release.wait()
        return {"scanned": 0}

    monkeypatch.setitem(TOOLS, "horace_scan", attrs.evolve(TOOLS["horace_scan"], handler=long_scan))
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        fake = await start_session(nursery, Settings(idle_timeout=300, call_deadline=10_000))
        await trio.sleep(200)
        fake.peer.last_received = trio.current_time()  # a ping frame, say: any bytes count
        await trio.sleep(250)
        assert not fake.ended.is_set()  # 450 s in, 250 s after the frame
        await fake.send(call(1, "horace_scan"))  # at 450 s; runs until released
        await trio.sleep(1000)
        assert not fake.ended.is_set()  # a call under way: not idle, however long
        release.set()
        call_ended = trio.current_time()  # the call finishes as soon as it runs again
        await fake.ended.wait()
    assert fake.ws.closed_with == (1001, "idle for 300 s")
    assert [reply["id"] for reply in fake.ws.sent] == [1]
    assert 300 <= trio.current_time() - call_ended < 302
    assert trio.current_time() - started > 1700


async def test_a_client_that_does_not_read_loses_the_connection(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled = []

    async def endless(ctx: Any, args: Any) -> dict[str, Any]:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(trio.current_time())
        raise AssertionError("unreachable")

    monkeypatch.setitem(TOOLS, "horace_scan", attrs.evolve(TOOLS["horace_scan"], handler=endless))
    async with trio.open_nursery() as nursery:
        fake = await start_session(nursery, Settings(send_timeout=30, idle_timeout=10_000))
        fake.ws.reading = trio.Event()  # the client stops reading
        await fake.send(call(1, "horace_scan"))  # under way until the connection goes
        await fake.send(request(2, "ping"))  # its reply cannot be sent
        sent_at = trio.current_time()
        await fake.ended.wait()
    assert fake.peer.dropped and fake.ws.sent == []
    assert 30 <= trio.current_time() - sent_at < 31
    assert cancelled and cancelled[0] - sent_at < 31  # the call went with the connection


async def test_large_result_calls_wait_for_room_instead_of_piling_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[int] = []

    async def search(ctx: Any, args: Any) -> SearchPage:
        ran.append(args.limit)
        return SearchPage(0, (), args.limit, 0, None)

    monkeypatch.setitem(
        TOOLS, "horace_search_files", attrs.evolve(TOOLS["horace_search_files"], handler=search)
    )
    # Room for one large reply in the making or unsent: the second waits for the first.
    settings = Settings(max_reply_bytes=10_000, max_pending_reply_bytes=10_000)
    async with trio.open_nursery() as nursery:
        fake = await start_session(nursery, settings)
        fake.ws.reading = trio.Event()
        for i in range(1, 4):
            await fake.send(call(i, "horace_search_files", limit=i))
        await fake.send(request(4, "ping"))  # small results never wait
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [1]  # its reply waits for the client; the other searches wait for room
        assert fake.session.session.reply_room.used <= settings.max_pending_reply_bytes
        fake.ws.reading.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(ran) == [1, 2, 3]
        replies = by_id(fake.ws.sent)
        assert set(replies) == {1, 2, 3, 4} and all("result" in r for r in replies.values())
        nursery.cancel_scope.cancel()


def fake_reads(monkeypatch: pytest.MonkeyPatch, size: int) -> list[str]:
    """resources/read answers *size* characters of text; the URIs read, in order."""
    ran: list[str] = []

    async def read(self: Resources, params: Any) -> dict[str, Any]:
        ran.append(params["uri"])
        return {"contents": [{"uri": params["uri"], "text": "x" * size}]}

    monkeypatch.setattr(Resources, "read", read)
    return ran


async def test_resource_reads_wait_for_room_instead_of_piling_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # A resource's content is a reply as large as a page: 256 reads of a 4 MB file left
    # unread took a server past a gigabyte when reads did not wait for room.
    ran = fake_reads(monkeypatch, 4_000)
    settings = Settings(max_reply_bytes=10_000, max_pending_reply_bytes=10_000)
    async with trio.open_nursery() as nursery:
        fake = await start_session(nursery, settings)
        fake.ws.reading = trio.Event()  # the client reads nothing
        for i in range(1, 4):
            await fake.send(request(i, "resources/read", {"uri": f"horace://files/{i}"}))
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["horace://files/1"]  # the others wait for its reply to be taken
        assert fake.session.session.reply_room.used <= settings.max_pending_reply_bytes
        fake.ws.reading.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(ran) == 3 and set(by_id(fake.ws.sent)) == {1, 2, 3}
        nursery.cancel_scope.cancel()


async def test_sessions_together_stay_within_the_servers_room(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = fake_reads(monkeypatch, 9_000)
    # Each session has room for two large replies; the server, for two in all.
    settings = Settings(max_reply_bytes=10_000, max_pending_reply_bytes=20_000)
    server_room = ReplyRoom(20_000)
    async with trio.open_nursery() as nursery:
        sessions = [await start_session(nursery, settings, server_room=server_room) for _ in range(3)]
        for n, fake in enumerate(sessions):
            fake.ws.reading = trio.Event()  # no client reads
            await fake.send(request(1, "resources/read", {"uri": f"horace://files/{n}"}))
            await trio.testing.wait_all_tasks_blocked()
        # The third session waits, though its own room is free.
        assert ran == ["horace://files/0", "horace://files/1"]
        assert server_room.used <= 20_000
        sessions[0].ws.reading.set()  # the first client reads its reply: room for the third
        await trio.testing.wait_all_tasks_blocked()
        assert len(ran) == 3
        for fake in sessions:
            fake.ws.reading.set()
        await trio.testing.wait_all_tasks_blocked()
        assert server_room.used == 0 and all(len(fake.ws.sent) == 1 for fake in sessions)
        nursery.cancel_scope.cancel()


async def test_batches_keep_their_replies_within_the_servers_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch keeps its members' replies until its own reply goes out: those count in the
    server's room, and a member's reply past it is an error (never a wait: the room could
    be held by the very batch waiting)."""
    fake_reads(monkeypatch, 9_000)
    settings = Settings(max_reply_bytes=100_000, max_pending_reply_bytes=100_000)
    server_room = ReplyRoom(20_000)
    async with trio.open_nursery() as nursery:
        fake = await start_session(nursery, settings, server_room=server_room)
        await fake.ws.incoming_send.send(
            json.dumps([request(i, "resources/read", {"uri": f"horace://files/{i}"}) for i in range(3)])
        )
        await trio.testing.wait_all_tasks_blocked()
        (batch,) = fake.ws.sent
        errors = [reply["error"] for reply in batch if "error" in reply]
        assert len(batch) == 3 and len(errors) == 1  # two fit: 2 x ~9 KB of a 20 KB room
        assert errors[0]["code"] == REPLY_TOO_LARGE and "room for batches' replies" in errors[0]["message"]
        assert server_room.batched == 0 and server_room.used == 0
        nursery.cancel_scope.cancel()


async def test_a_cancel_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    started = trio.Event()

    async def endless(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setitem(TOOLS, "horace_scan", attrs.evolve(TOOLS["horace_scan"], handler=endless))
    async with trio.open_nursery() as nursery:
        fake = await start_session(nursery, Settings())
        await fake.send(call("c", "horace_scan"))
        await started.wait()
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c"}}
        await fake.ws.incoming_send.send(json.dumps(cancel))
        await trio.testing.wait_all_tasks_blocked()
        assert fake.ws.sent == []  # cancelled by the client: no reply
        assert set(fake.session.session.held().values()) == {0}
        nursery.cancel_scope.cancel()


async def test_a_failed_call_frees_what_it_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No reference cycle through the call's frame: what a failed call held goes when
    the call does, not at the cyclic GC's next run (a 4 MiB argument echoed in the error,
    twenty times over, took 160 MB more before)."""
    raised: list[weakref.ref[HoraceError]] = []

    def not_cataloged() -> HoraceError:
        error = HoraceError(ErrorCode.NOT_CATALOGED, "nothing here")
        raised.append(weakref.ref(error))
        return error

    async def failing(ctx: Any, args: Any) -> dict[str, Any]:
        raise not_cataloged()  # (no local name for it: that would be a cycle of its own)

    monkeypatch.setitem(
        TOOLS, "horace_get_file_info", attrs.evolve(TOOLS["horace_get_file_info"], handler=failing)
    )
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            fake = await start_session(nursery, Settings())
            await fake.send(call(1, "horace_get_file_info", file_id="x"))
            await trio.testing.wait_all_tasks_blocked()
            assert tool_body(fake.ws.sent[0]["result"])["error_code"] == "NOT_CATALOGED"
            assert raised and raised[0]() is None
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


@pytest.mark.slow
def test_the_params_walk_holds_one_iterator_per_level() -> None:
    """A 4 MiB request can hold a million values in one list; the walk that checks them
    held a tuple for each (~64 MB), now an iterator per level."""
    params = {"pad": [[] for _ in range(1_000_000)]}
    tracemalloc.start()
    try:
        assert unusable(params) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
    assert unusable({"deep": [[[["x"]]]] * 3}) is None
    nested: Any = "x"
    for _ in range(70):
        nested = [nested]
    assert "nests deeper than 64" in str(unusable({"deep": nested}))
    # Where it is, as a message can show it: keys escaped and cut, the whole bounded.
    odd = unusable({"arguments": {"k" + "y" * 100: [0, {"z\x00": 1}]}})
    assert odd is not None and odd.within("arguments") and "has a key that holds a NUL" in odd.reason
    assert odd.where == "arguments.k" + "y" * 39 + "…[1].z\\x00"
    long_keys: Any = "\x00"
    for n in range(60):
        long_keys = {f"{n}" + "k" * 60_000: long_keys}
    odd = unusable({"arguments": long_keys})
    assert odd is not None and odd.within("arguments") and len(str(odd)) < 300


def test_a_message_of_more_values_than_the_limit_is_refused_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Brackets and commas inside strings are not values: this one is a single string.
    inside = json.dumps(["[{," * MAX_VALUES])
    assert parse(inside) == ["[{," * MAX_VALUES]
    # A batch at the cap of registers, each with an embedding of 1,536 numbers, is taken.
    batch = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {
                "name": "horace_register_file",
                "arguments": {"metadata": {"embedding": [0.5] * 1536}},
            },
        }
        for i in range(100)
    ]
    assert parse(json.dumps(batch)) == batch
    over = "[" + ",".join(["[]"] * (MAX_VALUES // 2 + 1)) + "]"

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed")

    monkeypatch.setattr(json, "loads", no_parse)
    with pytest.raises(RpcError) as refused:
        parse(over)
    assert refused.value.code == -32600
    assert f"too many JSON values ({MAX_VALUES + 2} commas, objects and arrays" in refused.value.message
    # A string never closed, full of escaped quotes: counted in one pass (a pattern that
    # looked for its end from each quote took 5 s for 40 KB of it, hours for 4 MiB).
    unclosed = "[" + "," * MAX_VALUES + '"' + '\\"' * 1_000_000
    with pytest.raises(RpcError, match=f"too many JSON values \\({MAX_VALUES + 1} commas"):
        parse(unclosed)


# -- the protocol limits over a real WebSocket ---------------------------------------------


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[RunningHorace]:
    limits = {"max_batch": 5, "max_reply_bytes": 40_000, "max_inflight_bytes": 20_000}
    async with run_horace(serving(settings, **limits)) as running:
        yield running


async def test_a_batch_past_the_cap_is_one_error_and_runs_nothing(limited: RunningHorace) -> None:
    write(limited.files / "user/a.txt", "a")
    async with connect(limited.url) as client:
        at_cap = [request(f"p{i}", "ping") for i in range(5)]
        reply = client.expect(None)
        register = call("r", "horace_register_file", file_path="user/a.txt")
        await client.send_raw(json.dumps([*at_cap, register]))
        error = (await reply.receive())["error"]
        assert error["code"] == -32600 and "batch of 6 requests exceeds the limit of 5" in error["message"]
        assert (await client.call("horace_search_files"))["total_count"] == 0  # nothing ran
        replies = [client.expect(f"p{i}") for i in range(5)]
        await client.send_raw(json.dumps(at_cap))
        assert [(await r.receive())["result"] for r in replies] == [{}] * 5


async def test_dense_non_ascii_and_binary_messages_over_websocket(limited: RunningHorace) -> None:
    async with connect(limited.url) as client:
        refused = client.expect("dense")  # (its id read from its start, the message unparsed)
        await client.send_raw(json.dumps(request("dense", "ping", {"pad": [[]] * MAX_VALUES})))
        error = (await refused.receive())["error"]
        assert error["code"] == -32600 and "too many JSON values" in error["message"]
        assert "batch" not in error["message"]  # (one request)
        # Past ASCII, a message is held as UTF-8 until its turn, and answered as any other.
        write(limited.files / "user/é😀.txt", "x")
        registered = await client.call(
            "horace_register_file", file_path="user/é😀.txt", metadata={"description": "日本 😀"}
        )
        info = await client.call("horace_get_file_info", file_id=registered["file_id"])
        assert (
            info["file"]["file_path"] == "user/é😀.txt"
            and info["file"]["metadata"]["description"] == "日本 😀"
        )
        binary = client.expect(None)
        await client.ws.send_message(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
        assert (await binary.receive())["error"]["message"] == "binary frames are not JSON-RPC"


async def test_a_reply_past_the_cap_is_an_error(limited: RunningHorace) -> None:
    for i in range(80):
        write(limited.files / f"user/r/{i}.txt", f"r{i}")
    async with connect(limited.url) as client:
        assert len(json.dumps((await client.request("tools/list"))["result"])) < 40_000
        await client.call("horace_scan")
        reply = await client.request(
            "tools/call",
            {
                "name": "horace_search_files",
                "arguments": {"path": "user/r/*", "limit": 80},
                "_meta": {"correlation_id": "big-1"},
            },
        )
        error = reply["error"]
        assert error["code"] == REPLY_TOO_LARGE and "over the limit of 40000" in error["message"]
        assert error["data"]["correlation_id"] == "big-1" and error["data"]["reply_bytes"] > 40_000
        small = await client.call("horace_search_files", path="user/r/*", limit=5)
        assert len(small["results"]) == 5  # asking for less works


async def test_a_batch_reply_keeps_what_fits(limited: RunningHorace) -> None:
    async with connect(limited.url) as client:
        one_list = len(json.dumps((await client.request("tools/list"))["result"]))
        assert 20_000 < one_list < 40_000  # one fits in the reply, two do not
        replies = [client.expect(i) for i in ("a", "b", "c")]
        await client.send_raw(
            json.dumps([request("a", "tools/list"), request("b", "tools/list"), request("c", "ping")])
        )
        answers = {r["id"]: r for r in [await reply.receive() for reply in replies]}
        lists = [answers[i] for i in ("a", "b") if "result" in answers[i]]
        too_large = [answers[i] for i in ("a", "b") if "error" in answers[i]]
        assert len(lists) == 1 and len(too_large) == 1 and answers["c"]["result"] == {}
        assert too_large[0]["error"]["code"] == REPLY_TOO_LARGE
        assert "did not fit in the batch's reply" in too_large[0]["error"]["message"]


async def test_requests_under_way_are_capped_in_bytes(limited: RunningHorace) -> None:
    write(limited.files / "user/locked.txt", "l")
    catalog = limited.server.catalog
    async with connect(limited.url) as client:
        async with catalog.writing("user/locked.txt"):  # so a register of it waits
            first = client.expect("held")  # (string ids: the client numbers its own requests)
            padded = {"owner": "o", "purpose": "p" * 15_000}
            await client.send_raw(
                json.dumps(call("held", "horace_register_file", file_path="user/locked.txt", metadata=padded))
            )
            session = next(iter(limited.server.sessions))
            with trio.fail_after(10):
                while session.session.held()["request_bytes"] < 15_000:
                    await trio.sleep(0.01)
            second = client.expect("big")
            await client.send_raw(json.dumps(request("big", "ping", {"pad": "x" * 6_000})))
            error = (await second.receive())["error"]
            assert error["code"] == SERVER_BUSY and "bytes of requests are under way" in error["message"]
            assert (await client.request("ping"))["result"] == {}  # a small one still fits
        assert "result" in await first.receive()  # the lock is free: the first one ran
        assert (await client.request("ping", {"pad": "x" * 6_000}))["result"] == {}


async def test_a_long_progress_token_is_refused(limited: RunningHorace) -> None:
    async with connect(limited.url) as client:
        params = {"name": "horace_scan", "arguments": {}, "_meta": {"progressToken": "t" * 1025}}
        error = (await client.request("tools/call", params))["error"]
        assert error["code"] == -32602 and f"longer than {MAX_PROGRESS_TOKEN_CHARS}" in error["message"]
        params["_meta"] = {"progressToken": "t" * MAX_PROGRESS_TOKEN_CHARS}
        assert "result" in await client.request("tools/call", params)
        for token in ({"a": 1}, [1], True, 1.5):  # MCP: a string or an integer
            params["_meta"] = {"progressToken": token}
            error = (await client.request("tools/call", params))["error"]
            assert error["code"] == -32602 and "a string or an integer" in error["message"], token
        params["_meta"] = {"progressToken": 7}
        assert "result" in await client.request("tools/call", params)


async def test_an_error_quotes_at_most_a_bounded_part_of_what_it_refuses(settings: Settings) -> None:
    """A name of a million quotes is two million characters as JSON: echoed whole, the error
    would be larger than the request."""
    quotes = '"' * 1_000_000
    async with run_horace(serving(settings)) as running, connect(running.url) as client:
        for params in (
            {"name": "horace_get_collection", "arguments": {"name": quotes}},  # a tool error
            {"name": "horace_" + quotes, "arguments": {}},  # -32602: no such tool
            {"uri": "horace://" + quotes},  # resources/read: no such resource (data.uri too)
        ):
            method = "resources/read" if "uri" in params else "tools/call"
            with trio.fail_after(60):  # (an 8 MB error is past the client's message limit)
                reply = await client.request(method, params)
            # (a quote is two characters as JSON, four as JSON in the text of JSON)
            assert len(json.dumps(reply)) < 5 * MAX_ERROR_MESSAGE_CHARS, str(params)[:20]
            assert "characters more)" in json.dumps(reply)
        found = await client.request(
            "tools/call", {"name": "horace_get_collection", "arguments": {"name": quotes}}
        )
        assert json.loads(found["result"]["content"][0]["text"])["error_code"] == "COLLECTION_NOT_FOUND"


async def test_a_long_correlation_id_is_refused_and_never_stored(limited: RunningHorace) -> None:
    """Stored with files and versions and echoed in every reply of its call: one too long
    would make the reads of that file, and searches that list it, too large for anyone."""
    write(limited.files / "user/a.txt", "a")
    longest, too_long = "c" * MAX_CORRELATION_ID, "c" * (MAX_CORRELATION_ID + 1)
    async with connect(limited.url) as client:
        for key in ("correlation_id", "correlationId"):
            params = {"name": "horace_register_file", "arguments": {"file_path": "user/a.txt"}}
            error = (await client.request("tools/call", {**params, "_meta": {key: too_long}}))["error"]
            assert (
                error["code"] == -32602
                and f"_meta.{key} longer than {MAX_CORRELATION_ID}" in error["message"]
            )
            assert too_long not in json.dumps(error)
        for arguments in (
            {"file_path": "user/a.txt", "metadata": {"correlation_id": too_long}},
            {"correlation_id": too_long},
        ):
            name = "horace_register_file" if "file_path" in arguments else "horace_search_files"
            result = (await client.request("tools/call", {"name": name, "arguments": arguments}))["result"]
            body = tool_body(result)
            assert result["isError"] and body["error_code"] == "INVALID_ARGUMENT", body
            assert "correlation_id" in body["message"] and too_long not in json.dumps(result)
        assert (await client.call("horace_search_files"))["total_count"] == 0  # nothing was stored
        params = {"name": "horace_register_file", "arguments": {"file_path": "user/a.txt"}}
        registered = tool_body(
            (await client.request("tools/call", {**params, "_meta": {"correlation_id": longest}}))["result"]
        )
        info = await client.call("horace_get_file_info", file_id=registered["file_id"], include_versions=True)
        assert info["file"]["correlation_id"] == longest, info


# -- idle and slow clients over real sockets, on Trio's clock --------------------------------


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """On SQLite whatever the run's backend: on Trio's mock clock, asyncpg's own timers
    (on the asyncio side of trio-asyncio) would fire as the clock jumps. What these tests
    exercise, the front and the session, is the same on any backend."""
    return Settings(storage_path=tmp_path / "sqlite-root")


async def test_an_idle_websocket_is_closed_and_pings_keep_it(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    closed: dict[str, tuple[float, CloseReason]] = {}

    async def note_close(name: str, ws: Any) -> None:
        with pytest.raises(ConnectionClosed) as ended:
            await ws.get_message()
        closed[name] = (trio.current_time(), ended.value.reason)

    async with run_horace(serving(sqlite_settings, idle_timeout=300)) as running:
        async with open_websocket_url(running.url) as pinging, open_websocket_url(running.url) as silent:
            opened = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(note_close, "silent", silent)
                for _ in range(5):  # 1,000 s of pings, 200 s apart
                    await trio.sleep(200)
                    await pinging.ping()
            when, reason = closed["silent"]
            assert (reason.code, reason.reason) == (1001, "idle for 300 s")
            assert 300 <= when - opened < 302
            await pinging.send_message(json.dumps(request(1, "ping")))  # a message counts too
            assert json.loads(await pinging.get_message())["result"] == {}
            answered = trio.current_time()
            await note_close("pinging", pinging)
            assert 300 <= closed["pinging"][0] - answered < 302
        await wait_idle(running)


async def test_a_client_that_stops_reading_is_dropped(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        run_horace(serving(sqlite_settings, send_timeout=30)) as running,
        open_websocket_url(running.url, max_message_size=1 << 30) as ws,
    ):
        batch = json.dumps([request(i, "tools/list") for i in range(100)])  # ~2.4 MB back
        for _ in range(20):  # more than the socket buffers on both sides hold
            await ws.send_message(batch)
        stopped_reading = trio.current_time()  # never started, in fact
        with trio.fail_after(120):
            while running.server.sessions:
                await trio.sleep(0.5)
        # Not before the send timeout. No upper bound but fail_after's: with real sockets the
        # fake clock also jumps while the server waits on its worker threads, by as much as
        # the machine is busy (46 s once in CI); the exact timing is tested on a fake
        # WebSocket above.
        assert trio.current_time() - stopped_reading >= 30
        with pytest.raises(ConnectionClosed):
            while True:  # what the socket buffered, then the end
                await ws.get_message()


async def open_raw_websocket(running: RunningHorace) -> trio.SocketStream:
    """A TCP connection upgraded to a WebSocket by hand, for frames no client library sends
    (a message cut short, then nothing)."""
    port = running.server.port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await stream.receive_some()
    assert answer.startswith(b"HTTP/1.1 101 ")
    return stream


def text_frame_head(length: int, *, final: bool = True) -> bytes:
    """A client's text frame head for a payload of *length* bytes, masked with a zero key
    (the payload goes as it is)."""
    first = 0x81 if final else 0x01
    if length < 126:
        return bytes([first, 0x80 | length]) + bytes(4)
    if length < 1 << 16:  # (the shortest form, as RFC 6455 asks)
        return bytes([first, 0x80 | 126]) + length.to_bytes(2, "big") + bytes(4)
    return bytes([first, 0x80 | 127]) + length.to_bytes(8, "big") + bytes(4)


async def stalled_message(running: RunningHorace, length: int, sent: int) -> trio.SocketStream:
    """A raw WebSocket that sends the first *sent* bytes of a text message of *length*
    (spaces), then nothing more."""
    stream = await open_raw_websocket(running)
    await stream.send_all(text_frame_head(length) + b" " * sent)
    return stream


async def closed_after(stream: trio.SocketStream) -> float:
    """Seconds until the server ends the connection (what it sends meanwhile, thrown away)."""
    started = trio.current_time()
    with trio.fail_after(60):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # reset: the server closed with our bytes unread
    return trio.current_time() - started


async def test_a_websocket_message_finished_while_the_server_was_stopped_is_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The rest of a message past UNHURRIED_BYTES that came while the server was stopped
    past the message's deadline (woken by the deadline, before it looked at the socket)
    is taken in one last look; nothing more coming, the connection is dropped."""
    upgrade = b"GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    payload = json.dumps(request(7, "ping")).encode().ljust(2 * UNHURRIED_BYTES)
    frame = text_frame_head(len(payload)) + payload
    cut = len(upgrade) + UNHURRIED_BYTES + 1024
    whole = upgrade + frame
    intake = wsintake.MessageIntake(StoppedMeanwhile(whole[:cut], whole[cut:]), None)
    taken = bytearray()
    with trio.fail_after(2 * wsintake.MESSAGE_TIMEOUT):
        while len(taken) < len(whole):
            taken += await intake.receive_some(65536)
    assert taken == whole
    assert trio.current_time() == pytest.approx(wsintake.MESSAGE_TIMEOUT)
    stalled = wsintake.MessageIntake(StoppedMeanwhile(whole[:cut], None), None)
    with pytest.raises(wsintake.MessageTooSlow):
        while True:
            await stalled.receive_some(65536)


async def test_a_websocket_message_not_whole_in_time_drops_the_connection(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wsintake, "MESSAGE_TIMEOUT", 1.0)
    async with run_horace(serving(sqlite_settings)) as running:
        stalled = await stalled_message(running, 2 * UNHURRIED_BYTES, UNHURRIED_BYTES + 1)
        assert 1.0 <= await closed_after(stalled) < 5
        # Under UNHURRIED_BYTES a message may take its time; pings are no message at all.
        slow = await open_raw_websocket(running)
        text = json.dumps(request(1, "ping")).encode()
        await slow.send_all(text_frame_head(len(text)) + text[:10])
        async with open_websocket_url(running.url) as pinging:
            for _ in range(1 + 2 * UNHURRIED_BYTES // 125):
                await pinging.ping(b"p" * 125)
            await trio.sleep(2)
            await slow.send_all(text[10:])
            assert b'"id": 1, "result": {}' in await slow.receive_some()
            await pinging.send_message(json.dumps(request(2, "ping")))
            assert json.loads(await pinging.get_message())["result"] == {}
        await slow.aclose()
        await wait_idle(running)


async def test_large_websocket_messages_come_in_one_at_a_time(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wsintake, "MESSAGE_TIMEOUT", 1.0)
    async with run_horace(serving(sqlite_settings)) as running:
        stalled = await stalled_message(running, 3 * LARGE_REQUEST_BYTES, LARGE_REQUEST_BYTES + 1)
        await stalled.send_all(b" " * 1024)  # read once the slot is taken: it holds it
        large = json.dumps(request(1, "ping", {"pad": "x" * 2 * LARGE_REQUEST_BYTES}))
        async with open_websocket_url(running.url, max_message_size=1 << 30) as ws:
            sent = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.send_message, large)
                assert 1.0 <= await closed_after(stalled) < 5
                reply = json.loads(await ws.get_message())
            # The large message waited for the slot until the stalled one lost it.
            assert reply["id"] == 1 and trio.current_time() - sent >= 1.0
        assert running.server.large_requests.borrowed_tokens == 0
        async with open_websocket_url(running.url, max_message_size=1 << 30) as ws:
            # Binary frames are refused, a large one after reading it in the slot: each frees
            # its slot, and the text messages after them get theirs.
            for message in (b"binary", large.encode(), large, large):
                await ws.send_message(message)
            with trio.fail_after(30):
                replies = [json.loads(await ws.get_message()) for _ in range(4)]
            assert sorted(str(reply.get("id")) for reply in replies) == ["1", "1", "None", "None"]
        assert running.server.large_requests.borrowed_tokens == 0
        await wait_idle(running)


async def test_a_large_websocket_message_keeps_the_slot_until_answered(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the slot let go once the message is whole, a reading queued for it would take
    it before the answer: every queued message would be read whole first."""
    answering, answer = trio.Event(), trio.Event()
    message_of = McpSession._message

    async def held_up(self: McpSession, message: Any, size: int, admitted: bool, send: Any) -> Any:
        if 1 < size / LARGE_REQUEST_BYTES < 4:  # the first message, not the one queued
            answering.set()
            await answer.wait()
        return await message_of(self, message, size, admitted, send)

    monkeypatch.setattr(McpSession, "_message", held_up)
    monkeypatch.setattr(wsintake, "MESSAGE_TIMEOUT", 60.0)
    big = 48 * LARGE_REQUEST_BYTES  # far more than the sockets' buffers take in
    async with run_horace(serving(sqlite_settings, max_message_bytes=64 * LARGE_REQUEST_BYTES)) as running:
        first = await open_raw_websocket(running)
        text = json.dumps(request(1, "ping", {"pad": "x" * 2 * LARGE_REQUEST_BYTES})).encode()
        cut = LARGE_REQUEST_BYTES + LARGE_REQUEST_BYTES // 2
        await first.send_all(text_frame_head(len(text)) + text[:cut])  # it reads in the slot
        second_sent = trio.Event()
        async with open_websocket_url(running.url, max_message_size=1 << 30) as second:

            async def send_second() -> None:
                await second.send_message(json.dumps(request(2, "ping", {"pad": "y" * big})))
                second_sent.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_second)
                await trio.sleep(1)  # its reading waits for the slot
                await first.send_all(text[cut:])
                with trio.fail_after(10):
                    await answering.wait()
                await trio.sleep(2)
                assert not second_sent.is_set()  # not read on while the first is answered
                answer.set()
                assert b'"id": 1, "result": {}' in await first.receive_some()
                assert json.loads(await second.get_message())["id"] == 2
        await first.aclose()
        assert running.server.large_requests.borrowed_tokens == 0
        await wait_idle(running)


# -- admission -------------------------------------------------------------------------------


async def test_a_storm_of_upgrades_never_passes_the_limit(settings: Settings) -> None:
    async with run_horace(serving(settings, max_connections=5)) as running:
        admission = running.server.front.admission
        outcomes: list[str] = []
        all_answered = trio.Event()

        async def one() -> None:
            try:
                async with open_websocket_url(running.url):
                    outcomes.append("session")
                    if len(outcomes) == 60:
                        all_answered.set()
                    await all_answered.wait()  # held until every attempt is answered
            except ConnectionRejected as exc:
                outcomes.append(str(exc.status_code))
                if len(outcomes) == 60:
                    all_answered.set()

        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(one)
            await all_answered.wait()
            assert admission.sessions == 5
        assert outcomes.count("session") == 5 and outcomes.count("503") == 55
        with trio.fail_after(10):  # the slots come back as the connections close
            while admission.sessions or admission.pending:
                await trio.sleep(0.01)
        assert admission.refused == 55
        async with connect(running.url) as client:  # every slot came back
            assert (await client.request("ping"))["result"] == {}


async def test_every_path_gives_its_slot_back(settings: Settings) -> None:
    async with run_horace(
        serving(settings, auth_token="s3cret", allowed_origins=("https://ok.example",), max_connections=1)
    ) as running:
        base = running.health_url.removesuffix("/health")
        token = [("Authorization", "Bearer s3cret")]
        assert (await http_get(running.health_url))[0] == 200
        assert (await http_get(base + "/nothing"))[0] == 404
        assert (await http_get(base + "/mcp"))[0] == 401  # Streamable HTTP, without the token
        for headers, status in (([], 401), ([*token, ("Origin", "https://evil.example")], 403)):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(running.url, extra_headers=headers):
                    pass
            assert rejected.value.status_code == status
        async with connect(running.url, extra_headers=token) as client:
            with pytest.raises(ConnectionRejected) as rejected:  # the one slot is taken
                async with open_websocket_url(running.url, extra_headers=token):
                    pass
            assert rejected.value.status_code == 503
            assert (await client.request("ping"))["result"] == {}
        for raw in (b"NOT HTTP\r\n\r\n", b"GET /mcp HTTP/1.1\r\nHost: x\r\n"):  # bad; cut short
            stream = await trio.open_tcp_stream("127.0.0.1", running.server.port)
            await stream.send_all(raw)
            await stream.aclose()
        admission = running.server.front.admission
        with trio.fail_after(10):
            while admission.pending or admission.sessions:
                await trio.sleep(0.01)
        async with connect(running.url, extra_headers=token) as client:
            assert (await client.request("ping"))["result"] == {}


async def test_a_new_connection_takes_the_place_of_the_longest_silent_one(settings: Settings) -> None:
    """Connections that send nothing cannot keep new clients out: past the pending cap, a new
    one takes the place of the one that has waited longest for a request head. Connections
    past their heads (a body on its way) are not evicted: a new one is turned away then."""
    async with run_horace(serving(settings, max_pending_connections=3)) as running:
        admission = running.server.front.admission
        silent = [await trio.open_tcp_stream("127.0.0.1", running.server.port) for _ in range(3)]
        with trio.fail_after(10):
            while admission.pending < 3:
                await trio.sleep(0.01)
        assert (await http_get(running.health_url))[0] == 200
        assert (admission.evicted, admission.turned_away) == (1, 0)
        with trio.fail_after(10):
            assert await silent[0].receive_some() == b""  # the longest waiting: closed, unanswered
        for stream in silent:
            await stream.aclose()
        with trio.fail_after(10):
            while admission.pending:
                await trio.sleep(0.01)

        head = (
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{"
        )
        busy = [await trio.open_tcp_stream("127.0.0.1", running.server.port) for _ in range(3)]
        for stream in busy:
            await stream.send_all(head)
        with trio.fail_after(10):
            while admission.pending < 3 or admission._awaiting:
                await trio.sleep(0.01)
        late = await trio.open_tcp_stream("127.0.0.1", running.server.port)
        answer = b""
        with trio.fail_after(10):
            while chunk := await late.receive_some():
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer
        assert b"too many connections being opened (limit 3)" in answer
        assert (admission.evicted, admission.turned_away) == (1, 1)
        for stream in [*busy, late]:
            await stream.aclose()
        with trio.fail_after(10):
            while admission.pending:
                await trio.sleep(0.01)
        assert (await http_get(running.health_url))[0] == 200


async def test_a_connection_whose_request_waits_unread_keeps_its_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A busy server may take more than a second to read a request that came: a connection
    with bytes waiting is no silent one, and no newer connection takes its place; one
    that sent nothing does, once it has waited a second."""
    from horace.server.admission import Admission

    admission = Admission(max_pending=1, max_sessions=10)
    sent = [True]
    async with admission.connection() as first:
        assert first is not None
        with admission.awaiting_request(first, trio.current_time() + 60, lambda: sent[0]) as waiting:
            await trio.sleep(5)
            async with admission.connection() as second:  # waits its second, then 503
                assert second is None and not waiting.cancel_called
            sent[0] = False
            async with admission.connection() as third:
                assert third is not None and waiting.cancel_called and first.state == "evicted"
                await trio.sleep(1)  # (the first's wait ends, cancelled)
        assert waiting.cancelled_caught
    assert (admission.turned_away, admission.evicted) == (1, 1)


async def test_a_burst_of_clients_past_the_pending_cap_is_served_whole(settings: Settings) -> None:
    """More clients at once than there are pending places, each sending its request as it
    connects (services started together): every one is answered. A new connection waits
    for a place rather than take that of one whose request has come but is not read yet;
    only one that has sent nothing for a second gives its place up."""
    async with run_horace(serving(settings, max_pending_connections=3)) as running:
        admission = running.server.front.admission
        answers: dict[int, bytes] = {}

        async def ask(i: int) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", running.server.port)
            # (Its request a moment after connecting: the places are taken meanwhile by
            # connections that have sent nothing yet, but not for long.)
            await trio.sleep(0.2)
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            with trio.fail_after(20):
                while chunk := await stream.receive_some():
                    answer += chunk
            answers[i] = answer
            await stream.aclose()

        async with trio.open_nursery() as clients:
            for i in range(6):  # (twice the places: as many wait for a place as there are)
                clients.start_soon(ask, i)
        unanswered = sorted(i for i, answer in answers.items() if not answer.startswith(b"HTTP/1.1 200 "))
        assert len(answers) == 6 and not unanswered, (unanswered, admission.counts())
        assert (admission.evicted, admission.turned_away) == (0, 0)


@pytest.mark.parametrize("sent", [b"", b"GET /mcp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"])
async def test_a_silent_connection_is_closed_after_the_head_timeout(
    sqlite_settings: Settings, autojump_clock: trio.testing.MockClock, sent: bytes
) -> None:
    async with run_horace(serving(sqlite_settings)) as running:
        stream = await trio.open_tcp_stream("127.0.0.1", running.server.port)
        await stream.send_all(sent)
        opened = trio.current_time()
        assert await stream.receive_some() == b""  # closed by the server, nothing said
        assert HEAD_TIMEOUT <= trio.current_time() - opened < HEAD_TIMEOUT + 1
        assert running.server.front.admission.pending == 0
        await stream.aclose()


# -- /health and secrets ------------------------------------------------------------------


async def _refuse_a_write(backend: Any) -> None:
    """A write the database refuses for a full disk, as each backend meets one."""
    if BACKEND == "postgres":
        import asyncpg

        async def full() -> None:
            raise asyncpg.exceptions.DiskFullError(
                'could not extend file "base/1/2": No space left on device'
            )

        await backend._hop(full)
    else:
        import sqlite3

        def full(conn: object) -> None:
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise exc

        await backend._write(full)


async def test_health_is_degraded_while_the_database_refuses_writes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that answers its ping and refuses writes (its disk full) degrades the
    server, said with what it refused, until a while passes without a refusal."""
    import horace.server.lifecycle
    from horace.backends.protocol import DatabaseFull

    monkeypatch.setattr(horace.server.lifecycle, "REFUSALS_SHOWN", 1.0)
    async with run_horace(serving(settings)) as running:
        assert (await http_get(running.health_url))[1]["status"] == "ok"
        with pytest.raises(DatabaseFull):
            await _refuse_a_write(running.server.catalog.backend)
        status, body = await http_get(running.health_url)
        assert status == 200 and body["status"] == "degraded" and body["degraded"] == ["backend"], body
        writes = body["backend"]["writes"]
        assert body["backend"]["ok"] is True and writes["ok"] is False and "full" in writes["error"], body
        await trio.sleep(1.1)
        status, body = await http_get(running.health_url)
        assert status == 200 and body["status"] == "ok" and "writes" not in body["backend"], body


async def test_a_write_committed_after_a_refusal_makes_health_ok_again(settings: Settings) -> None:
    """The database took a write since it refused one (room was made): /health says ok at
    once, not a minute later."""
    from horace.backends.protocol import DatabaseFull

    async with run_horace(serving(settings)) as running:
        catalog = running.server.catalog
        with pytest.raises(DatabaseFull):
            await _refuse_a_write(catalog.backend)
        assert (await http_get(running.health_url))[1]["status"] == "degraded"
        write(settings.storage_path / "files/user/after.txt", "room again")
        await catalog.register("user/after.txt")
        status, body = await http_get(running.health_url)
        assert status == 200 and body["status"] == "ok" and "writes" not in body["backend"], body
        with pytest.raises(DatabaseFull):
            await _refuse_a_write(catalog.backend)
        write(settings.storage_path / "files/user/after.txt", "a new version")
        await catalog.register("user/after.txt")
        assert (await http_get(running.health_url))[1]["status"] == "ok"


async def test_health_behind_the_token(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from horace.backends.protocol import BackendUnavailable

    async with run_horace(serving(settings, auth_token="s3cret")) as running:
        token = {"Authorization": "Bearer s3cret"}
        for path in ("/health", "/healthz"):
            url = running.health_url.replace("/health", path)
            assert await http_get(url) == (200, {"status": "ok"})
            assert await http_get(url, {"Authorization": "Bearer wrong"}) == (200, {"status": "ok"})
            status, body = await http_get(url, token)
            assert status == 200 and body["backend"]["ok"] is True and "connections" in body

        async def down() -> None:
            raise BackendUnavailable("connection refused by db.internal:5432")

        monkeypatch.setattr(running.server.catalog.backend, "ping", down)
        assert await http_get(running.health_url) == (503, {"status": "unavailable"})
        status, body = await http_get(running.health_url, token)
        assert status == 503 and "db.internal" in body["backend"]["error"]


SECRET_URL = (
    "postgresql://horace:pw-in-userinfo@db.internal:5432/horace"
    "?password=pw-in-query&sslpassword=pw-of-key&sslkey=/secrets/client.key&application_name=horace"
)
SECRETS = ("pw-in-userinfo", "pw-in-query", "pw-of-key", "/secrets/client.key")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SECRET_URL, "db.internal:5432/horace"),
        ("postgresql://db/h?PassWord=pw-in-query", "PassWord=***"),
        ("postgresql://u@db/h?sslkey=/secrets/client.key&sslmode=require", "sslmode=require"),
    ],
)
def test_redact_url_masks_passwords_and_keys(url: str, shown: str) -> None:
    redacted = redact_url(url)
    assert not any(secret in redacted for secret in SECRETS) and MASK in redacted
    assert shown in redacted


async def test_health_and_the_listening_line_mask_the_database_url(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = serving(settings, auth_token="s3cret")
    async with open_catalog(settings, create=True) as catalog, trio.open_nursery() as nursery:
        catalog.backend.url = SECRET_URL  # type: ignore[misc]
        server = HoraceServer(settings, catalog)
        with caplog.at_level("INFO", logger="horace.server"):
            await nursery.start(server.run, await listen(settings))
        health = f"http://127.0.0.1:{server.port}/health"
        status, body = await http_get(health, {"Authorization": "Bearer s3cret"})
        assert status == 200
        shown = body["backend"]["url"]
        assert "db.internal:5432/horace" in shown and not any(s in shown for s in SECRETS)
        listening = [r for r in caplog.records if r.getMessage().startswith("listening on")]
        assert listening and listening[0].backend == shown  # type: ignore[attr-defined]
        assert listening[0].version == body["version"]  # type: ignore[attr-defined]
        server.shutdown()


# -- what is stored, what is queued ---------------------------------------------------------


async def test_metadata_past_its_cap_is_refused(catalog: Catalog, files: Path) -> None:
    catalog.policy = attrs.evolve(catalog.policy, max_metadata_bytes=2_000)
    write(files / "user/m.txt", "m")
    write(files / "user/n.txt", "n")
    from horace.model import NewFile

    with pytest.raises(HoraceError) as refused:
        await catalog.register("user/m.txt", NewFile(custom={"pad": "x" * 2_000}))
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT and "over the limit of 2000" in str(refused.value)
    file = (await catalog.register("user/m.txt", NewFile(custom={"a": "x" * 1_000}))).file
    with pytest.raises(HoraceError):  # each update fits; merged, they would not
        await catalog.update(file.id, FileChanges(custom={"b": "x" * 1_000}), check_for_changes=False)
    await catalog.update(file.id, FileChanges(custom={"a": "y" * 1_500}), check_for_changes=False)
    assert (await catalog.get_info(file_id=file.id)).file.metadata == {"a": "y" * 1_500}
    await catalog.update(file.id, FileChanges(tags=("kept",)), check_for_changes=False)
    # Counted in UTF-8, as the wire carries it: 600 CJK characters are 1,800 bytes (as
    # \uXXXX escapes, 3,600)
    wide = (await catalog.register("user/n.txt", NewFile(custom={"w": "漢" * 600}))).file
    assert wide.metadata == {"w": "漢" * 600}
    with pytest.raises(HoraceError):
        await catalog.update(wide.id, FileChanges(custom={"w": "漢" * 700}), check_for_changes=False)
    with pytest.raises(HoraceError):
        await catalog.create_collection("c", "d" * 2_000)
    assert (await catalog.create_collection("c", "d" * 1_000)).name == "c"


async def test_a_sink_queue_is_bounded_in_bytes(tmp_path: Path) -> None:
    class Never:
        name = spool_name = "never"

        def open(self) -> Any:
            raise AssertionError("not started")

    runner = SinkRunner(Never(), spool_dir=None, capacity=1_000, capacity_bytes=10_000)
    for i in range(50):
        runner.emit({"i": i, "content": "x" * 1_000})
    status = runner.status()
    assert status["queued_bytes"] <= 10_000 and status["queued"] < 10
    assert runner.dropped == 50 - status["queued"]
    assert [entry["i"] for _, entry, _ in runner._queue][-1] == 49  # the newest kept
    runner.emit({"huge": "x" * 50_000})  # alone past the bound: kept, everything else goes
    assert runner.status()["queued"] == 1


def test_sizes_take_the_units_the_configuration_table_writes() -> None:
    read = Settings.from_env(
        {
            "HORACE_MAX_MESSAGE_BYTES": "4 MiB",
            "HORACE_MAX_REPLY_BYTES": "8m",
            "HORACE_MAX_READ_BYTES": "4194304",
            "HORACE_MAX_METADATA_BYTES": "16KiB",
            "HORACE_SINK_QUEUE_BYTES": "1 GB",
            "HORACE_TURN_MAX_BYTES": "100b",
        }
    )
    assert (read.max_message_bytes, read.max_reply_bytes, read.max_read_bytes) == (4 << 20, 8 << 20, 4 << 20)
    assert (read.max_metadata_bytes, read.sink_queue_bytes, read.turn_max_bytes) == (16 << 10, 1 << 30, 100)


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("HORACE_AUTH_TOKEN", "t\udcffk", "is not valid UTF-8"),  # (a byte the locale could not decode)
        ("HORACE_AUTH_TOKEN", "tok\x01en", "control character"),
        ("GODOT_URL", "ws://a..b:9060", "no host name"),
        ("GODOT_URL", f"ws://{'l' * 70}.example:9060", "no host name"),
        ("GODOT_URL", "ws://g\udcffdot:9060", "no host name"),
    ],
)
def test_a_value_no_request_or_connection_could_use_is_refused_at_start(
    variable: str, value: str, said: str
) -> None:
    """Taken, a token no header can carry refused every request (each a traceback), and a
    Godot host no lookup can take failed every retry as a crash."""
    with pytest.raises(ConfigError, match=said):
        Settings.from_env({variable: value})


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"HORACE_IDLE_TIMEOUT": "0"})
    assert Settings.from_env({"HORACE_SEND_TIMEOUT": "2m"}).send_timeout == 120


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("HORACE_VERSION_COUNT", "99999999999999999999999", "at most 2147483647"),
        ("HORACE_VERSION_MIN_AGE", "99999999999999999d", "at most 36500d"),
        ("HORACE_DELETED_RETENTION", "36501d", "at most 36500d"),
        ("HORACE_FSCK_INTERVAL", "0", "at least 1s"),
        ("HORACE_PURGE_INTERVAL", "0.5", "at least 1s"),
        ("HORACE_CALL_DEADLINE", "0", "more than 0"),
        ("HORACE_SINK_BACKOFF_BASE", "0", "more than 0"),
        ("HORACE_SINK_BACKOFF_CAP", "0", "more than 0"),
        ("HORACE_SINK_LINGER", "36500d", "at most 60s"),
        ("HORACE_LOCK_WAIT", "\uff11\uff10", "expected a number"),
        ("HORACE_MAX_BATCH", "\uff11\uff10", "not an integer"),
        ("HORACE_MAX_REPLY_BYTES", "1", "at least 65536"),
        ("HORACE_MAX_MESSAGE_BYTES", "1000", "at least 65536"),
        ("HORACE_MAX_PENDING_REPLY_BYTES", "65535", "at least 65536"),
        ("HORACE_MAX_MESSAGE_BYTES", "0", "at least 65536 \\(64 KiB\\)"),
        ("HORACE_MAX_MESSAGE_BYTES", "-1", "not a size: give bytes"),
        ("HORACE_MAX_READ_BYTES", "4 MB/s", "not a size"),
        ("HORACE_MAX_READ_BYTES", "3GiB", "at most 2147483647 bytes"),
        ("HORACE_TURN_MAX_BYTES", "0", "at least 1 and"),
        ("HORACE_AUTH_TOKEN", " ", "set but empty"),
        ("HORACE_AUTH_TOKEN", "", "set but empty"),
    ],
)
def test_values_past_what_a_setting_can_use_are_refused_at_start(
    variable: str, value: str, said: str
) -> None:
    """Refused as it is read, not met later as an overflow in a write or a busy loop."""
    with pytest.raises(ConfigError, match=f"{variable}=.*{said}"):
        Settings.from_env({variable: value})


async def test_the_largest_values_a_setting_takes_still_work(settings: Settings) -> None:
    """Versions kept, their age and a deleted file's retention at their largest: a write,
    a purge and a restore work (once an overflow of SQLite's INTEGER or of time_t)."""
    largest = Settings.from_env(
        {
            "HORACE_VERSION_COUNT": str(2**31 - 1),
            "HORACE_VERSION_MIN_AGE": "36500d",
            "HORACE_DELETED_RETENTION": "36500d",
            "HORACE_FSCK_INTERVAL": "1",
        }
    )
    assert largest.version_count == 2**31 - 1 and largest.fsck_interval == 1.0
    limits = {k: getattr(largest, k) for k in ("version_count", "version_min_age", "deleted_retention")}
    async with open_catalog(attrs.evolve(settings, **limits), create=True) as catalog:
        path = write(catalog.storage.files / "user/a.txt", "one")
        file = (await catalog.register("user/a.txt")).file
        write(path, "two")
        assert (await catalog.update(file.id, FileChanges())).version_created
        await catalog.restore(file.id, 1)
        await catalog.delete(file.id)
        await catalog.purge()
        assert (await catalog.file(file.id)).current_version == 3


# -- peak memory of a real server process ---------------------------------------------------


@pytest.fixture(scope="module")
def worst_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A storage with 1000 files whose metadata is at its limit, on the run's backend."""
    folder = tmp_path_factory.mktemp("limits")
    with fresh_database(folder) as database_url:
        populate(folder / "root", database_url)
        yield folder / "root", database_url


@pytest.mark.memory
@pytest.mark.xdist_group("memory")  # one at a time: each runs a server of its own at its peak
@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s.name.replace(" ", "-"))
def test_peak_rss_under_the_worst_admissible_request(worst_storage: tuple[Path, str], scenario: Any) -> None:
    storage, database_url = worst_storage
    measured: Measured = measure(storage, scenario, database_url=database_url)
    print(
        f"{BACKEND}: {scenario.name}: peak {measured.peak_rss >> 20} MiB "
        f"(start {measured.baseline_rss >> 20} MiB); {measured.outcome.summary()}"
    )
    assert measured.outcome.replies > 0 and measured.outcome.closed is None
    assert measured.peak_rss < PEAK_RSS_BOUND


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        ({}, True),
        ([], True),
        (["a"], True),
        ({"a": "b", "c": ["d", "e"]}, True),
        ([[[]], {"k": {"k": {}}}], True),
        ({"a": [None, True, 1.5, 10**6]}, False),  # "null", "true", "1.5": more than 1
        (["é", "\n", '"'], False),  # escapes
    ],
)
def test_json_size_at_least_is_a_lower_bound(value: Any, exact: bool) -> None:
    text = json.dumps(value)
    assert json_size_at_least(value) <= len(text)
    assert (json_size_at_least(value) == len(text)) is exact
