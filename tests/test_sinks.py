"""The log sinks (SPEC §6): Godot and conversations, supervised, bounded, spilled, replayed.

Runner-level tests drive a :class:`SinkRunner` directly (small backoff), against the Godot
stand-in of ``godot_standin.py`` or an in-memory transport; server-level tests run Horace
on the run's backend with ``godot_url`` pointing at the stand-in (or at a closed port) and
read the ``conversations`` table back through the backend's own driver.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from godot_standin import godot_standin
from helpers import BACKEND, tool_body, write
from mcp_client import McpClient, connect
from websockets.uri import parse_uri
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, TextMessage
from wsproto.events import Message as WsMessage
from wsproto.events import Request as WsRequest

import horace.sinks.godot
import horace.sinks.supervisor
from horace.assemble import open_catalog
from horace.backends.protocol import CatalogUnwritable, DatabaseFull
from horace.backends.records import Turn
from horace.catalog import Catalog
from horace.config import Settings
from horace.model import CallRecord
from horace.redact import REDACTED, redact
from horace.sinks.conversations import (
    ConversationRecorder,
    ConversationTransport,
    prune_conversations,
    request_content,
    talks_in,
    within,
)
from horace.sinks.godot import GodotLogHandler, GodotTransport
from horace.sinks.godot import _Socket as GodotSocket
from horace.sinks.supervisor import Deliver, DestinationDown, SinkRunner, SinkUnavailable, entry_size
from horace.testing import RunningHorace, run_horace
from horace.wire import to_json

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.1}
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def serving(settings: Settings, **changes: Any) -> Settings:
    """A server whose sinks run in its own process, where these tests can look into them
    (tests/test_sink_process.py runs them in a child process)."""
    fast = {"sink_backoff_base": 0.01, "sink_backoff_cap": 0.1, "sink_process": False}
    return attrs.evolve(settings, host="127.0.0.1", port=0, **{**fast, **changes})


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@asynccontextmanager
async def running(runner: SinkRunner) -> AsyncIterator[SinkRunner]:
    """The runner as a child task; cancelled (so flushed, then spilled) on the way out."""
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        try:
            yield runner
        finally:
            nursery.cancel_scope.cancel()


def entry(i: int, **extra: Any) -> dict[str, Any]:
    return {"level": "INFO", "message": f"m{i}", "trace_id": f"t{i}", "data": {"i": i, **extra}}


def sinks_of(horace: RunningHorace) -> dict[str, dict[str, Any]]:
    return horace.server.health_parts["sinks"]()


def conversation_runner(horace: RunningHorace) -> SinkRunner:
    observer = horace.server.observer
    observers = getattr(observer, "observers", (observer,))  # (Observers: the sinks' observers)
    recorder = next(o for o in observers if isinstance(o, ConversationRecorder))
    assert recorder.conversations is not None
    return recorder.conversations


async def call(client: McpClient, tool: str, correlation_id: str, **arguments: Any) -> dict[str, Any]:
    return await client.request(
        "tools/call",
        {
            "name": tool,
            "arguments": arguments,
            "_meta": {"correlation_id": correlation_id},
        },
    )


class MemoryTransport:
    """Stores batches in a list; can be down, and can raise once from ``deliver``."""

    name = spool_name = "memory"

    def __init__(self) -> None:
        self.stored: list[dict[str, Any]] = []
        self.up = True
        self.raise_on_batch: int | None = None
        self.batches = 0
        self.opened = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        if not self.up:
            raise SinkUnavailable("memory transport is down")
        self.opened += 1

        async def deliver(batch: list[dict[str, Any]]) -> int:
            self.batches += 1
            await trio.lowlevel.checkpoint()
            if self.batches == self.raise_on_batch:
                raise RuntimeError("deliver blew up")
            self.stored.extend(batch)
            return 0

        yield deliver


def test_sink_backoff_settings_from_the_environment() -> None:
    settings = Settings.from_env({"HORACE_SINK_BACKOFF_BASE": "0.5", "HORACE_SINK_BACKOFF_CAP": "2m"})
    assert (settings.sink_backoff_base, settings.sink_backoff_cap) == (0.5, 120.0)
    assert (Settings().sink_backoff_base, Settings().sink_backoff_cap) == (1.0, 30.0)  # SPEC §6


def test_the_godot_levels_of_the_spec_are_taken() -> None:
    """SPEC §6's entry levels, ERROR to TRACE, as the threshold: TRACE is DEBUG, the finest
    Horace logs; WARN is WARNING."""
    for given, level in [("TRACE", "DEBUG"), ("debug", "DEBUG"), ("INFO", "INFO"), ("WARN", "WARNING")]:
        assert Settings.from_env({"HORACE_GODOT_LEVEL": given}).godot_level == level


# -- the conversations table, read back through the backend's driver ---------------------------


async def stored_turns(database_url: str) -> list[dict[str, Any]]:
    """Every row of ``conversations``, by conversation then turn number."""
    columns = (
        "conversation_id, turn_number, role, content, model, input_tokens, output_tokens, timing_ms, "
        "metadata, created_at"
    )
    query = f"SELECT {columns} FROM conversations ORDER BY conversation_id, turn_number"
    if database_url.startswith("sqlite://"):

        def read() -> list[dict[str, Any]]:
            with closing(sqlite3.connect(database_url.removeprefix("sqlite://"))) as db:
                db.row_factory = sqlite3.Row
                return [dict(row) for row in db.execute(query)]

        rows = await trio.to_thread.run_sync(read)
    else:
        import asyncpg

        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(database_url)  # search_path from the URL's query
            try:
                return [dict(row) for row in await conn.fetch(query)]
            finally:
                await conn.close()

        rows = await trio.to_thread.run_sync(asyncio.run, fetch())
    for row in rows:
        row["conversation_id"] = str(row["conversation_id"])
        if isinstance(row["metadata"], str):
            row["metadata"] = json.loads(row["metadata"])
    return rows


def sinks_drained(horace: RunningHorace) -> bool:
    """Has every sink delivered what it was given (in a child process: taken in all it
    was handed, and delivered that)?"""
    parts = horace.server.health_parts
    if "sink_process" in parts:
        process = parts["sink_process"]()
        if process["queued"] or process["received"] != process["handed"]:
            return False
    return all(sink.get("queued", 1) == 0 for sink in sinks_of(horace).values())


async def drained(horace: RunningHorace, timeout: float = 20.0) -> None:
    await eventually(lambda: sinks_drained(horace), timeout, "the sinks to drain")


# -- redaction and the shape of Godot entries ---------------------------------------------------


def test_redact_replaces_secret_values_at_any_depth() -> None:
    value = {
        "password": "p",
        "Token": {"nested": "t"},
        "client_secret": ["s"],
        "API_KEY": 1,
        "Authorization": "Bearer x",
        "x-api-key": "h",
        "db passwd": "d",
        "safe": "kept",
        "count": 3,
        "nested": {"deeper": [{"api_key": "k", "note": "n"}, ("tuple", {"access_token": "a"})]},
    }
    assert redact(value) == {
        "password": REDACTED,
        "Token": REDACTED,
        "client_secret": REDACTED,
        "API_KEY": REDACTED,
        "Authorization": REDACTED,
        "x-api-key": REDACTED,
        "db passwd": REDACTED,
        "safe": "kept",
        "count": 3,
        "nested": {"deeper": [{"api_key": REDACTED, "note": "n"}, ["tuple", {"access_token": REDACTED}]]},
    }
    assert redact("password") == "password" and redact(None) is None  # values alone are not keys
    assert redact({"Cookie": "sid=1", "set-cookie": "a"}) == {"Cookie": REDACTED, "set-cookie": REDACTED}
    # key=value in free text (a path with a query string that an error quotes): the value.
    quoted = "no catalogued file at 'user/x?password=pw1&token=t1&page=2' (sslkey=/k db=main)"
    assert redact({"message": quoted}) == {
        "message": "no catalogued file at 'user/x?password=***&token=***&page=2' (sslkey=*** db=main)"
    }
    # A scheme and its credential are one value; a header's value runs to the end of its line.
    assert redact({"m": "q?authorization=Bearer tok777&x=1"}) == {"m": "q?authorization=***&x=1"}
    headers = "GET /\nCookie: SESSION=s3cr3t; b=2\nX-Api-Key:k1\nAuthorization: Basic dXNlcg==\nHost: h:80"
    assert redact({"m": headers}) == {
        "m": "GET /\nCookie: ***\nX-Api-Key: ***\nAuthorization: ***\nHost: h:80"
    }
    assert redact({"m": "at 09:30:00, note: fine"}) == {"m": "at 09:30:00, note: fine"}
    text = json.dumps({"arguments": {"metadata": {"token": "t", "tags": ["a"]}}})  # JSON text inside
    assert json.loads(redact({"content": text})["content"]) == {
        "arguments": {"metadata": {"token": REDACTED, "tags": ["a"]}}
    }
    assert redact({"content": "[not json"}) == {"content": "[not json"}
    assert redact({"content": '{"fine": 1}'}) == {"content": '{"fine": 1}'}  # untouched, byte for byte
    assert value["password"] == "p"  # the input is not modified
    # A count of tokens (a conversation turn's input_tokens, forwarded to Godot) is no secret.
    counts = {"input_tokens": None, "output_tokens": 7, "api_tokens": ["t"], "token": 5}
    assert redact(counts) == {
        "input_tokens": None,
        "output_tokens": 7,
        "api_tokens": REDACTED,
        "token": REDACTED,
    }


async def test_log_records_reach_godot_with_levels_trace_id_and_redacted_data() -> None:
    logger = logging.getLogger("horace.test_sinks")
    old_level = logger.level
    async with godot_standin() as godot:
        runner = SinkRunner(GodotTransport(godot.url), spool_dir=None, **FAST)
        handler = GodotLogHandler(runner, level=1)
        logger.addHandler(handler)
        logger.setLevel(1)
        try:
            async with running(runner):
                secret = {"nested": {"api_key": "x", "list": [{"password": "pw"}], "fine": "ok"}}
                logger.error("e %d", 1, extra={"correlation_id": "corr-1", "data": secret})
                logger.warning("w", extra={"correlation_id": "corr-2", "token": "tok"})
                logger.info("i")
                logger.debug("d")
                logger.log(5, "t")
                logger.critical("c")
                logging.getLogger("horace.sinks.anything").error("a sink's own complaint: not forwarded")
                calls = await godot.wait_for(6)
                await eventually(lambda: runner.delivered == 6)  # acknowledged: not sent again
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    assert [(c["level"], c["message"]) for c in calls] == [
        ("ERROR", "e 1"),
        ("WARN", "w"),
        ("INFO", "i"),
        ("DEBUG", "d"),
        ("TRACE", "t"),
        ("ERROR", "c"),
    ]
    assert all(c["component"] == "horace" for c in calls)
    assert [c["trace_id"] for c in calls[:3]] == ["corr-1", "corr-2", None]
    assert calls[0]["data"] == {
        "logger": "horace.test_sinks",
        "data": {"nested": {"api_key": REDACTED, "list": [{"password": REDACTED}], "fine": "ok"}},
    }
    assert calls[1]["data"] == {"logger": "horace.test_sinks", "token": REDACTED}
    assert runner.delivered == 6 and runner.dropped == 0


class Collecting:
    """A stand-in for a SinkRunner: what is emitted, kept."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.sizes: list[int | None] = []

    def emit(self, entry: dict[str, Any], size: int | None = None) -> None:
        self.entries.append(entry)
        self.sizes.append(size)


@pytest.mark.parametrize(
    ("arguments", "reply", "file_ids", "correlation_id"),
    [
        ({}, {"ok": True}, (), "c"),
        ({"file_path": "é" * 4096, "tags": ["t"] * 100}, {"x": "y" * 100_000}, (), "c" * 4096),
        ({"limit": 1000}, {"results": []}, tuple(str(uuid.uuid4()) for _ in range(1000)), "c"),
    ],
)
def test_a_turn_is_queued_with_no_fewer_bytes_than_it_holds(
    arguments: Any, reply: Any, file_ids: tuple[str, ...], correlation_id: str
) -> None:
    """The recorder tells the queue each turn's size (cheaper than entry_size's walk): it
    must not undercount, or the queue's bound in bytes would not hold."""
    conversations, godot = Collecting(), Collecting()
    recorder = ConversationRecorder(conversations, godot)  # type: ignore[arg-type]
    record = CallRecord("conv", correlation_id, "horace_search_files", arguments, 1)
    recorder.call_started(record)
    recorder.call_finished(attrs.evolve(record, response_turn=2, result=reply, file_ids=file_ids))
    assert len(conversations.entries) == len(godot.entries) == 2
    for entry, size in zip(conversations.entries, conversations.sizes, strict=True):
        assert size is not None and entry_size(entry) <= size <= entry_size(entry) * 1.2 + 2048, entry
    assert godot.sizes == [None, None]  # (measured by the queue: redaction may lengthen it)


@pytest.mark.parametrize("outcome", ["ok", "NOT_CATALOGED", "cancelled"])
def test_a_calls_line_from_the_observer_is_the_entry_its_log_record_gave(outcome: str) -> None:
    """GodotCallLog sends each call's line made from the call itself: the very entry
    GodotLogHandler makes of the call's log record (fields, redaction, trace id)."""
    from horace.server.observer import CallWatch
    from horace.sinks.godot import GodotCallLog

    by_handler, by_observer = Collecting(), Collecting()
    handler = GodotLogHandler(by_handler, level=logging.INFO)  # type: ignore[arg-type]
    logger = logging.getLogger("horace.server")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        record = CallRecord(
            "conv-1", "corr-1 https://u:secret-LEAK@example.org/?token=LEAK", "horace_get_file_info", {}, 1
        )
        watch = CallWatch(GodotCallLog(by_observer), record)  # type: ignore[arg-type]
        if outcome != "cancelled":
            structured = {"file_id": "f-1", "password": "LEAK"}
            error = None if outcome == "ok" else outcome
            watch.answered({"structuredContent": structured, "isError": error is not None}, error)
        watch.finish(0 if outcome == "cancelled" else 2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    (from_record,) = by_handler.entries  # (observes_calls off: the handler takes the record)
    (from_call,) = by_observer.entries
    assert from_call == from_record
    assert redact(from_call["data"]) == from_call["data"]  # (the observer's is not redacted)
    # The size it is queued with is at least what entry_size() would count.
    assert by_observer.sizes[0] is not None and by_observer.sizes[0] >= entry_size(from_call)
    assert from_call["data"]["outcome"] == outcome and from_call["level"] == "INFO"
    assert from_call["data"]["file_ids"] == ([] if outcome == "cancelled" else ["f-1"])
    handler.observes_calls = True  # now the observer's line is the only one
    logger.addHandler(handler)
    try:
        CallWatch(GodotCallLog(by_observer), record).finish(0)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    assert len(by_handler.entries) == 1 and len(by_observer.entries) == 2


async def test_what_a_call_logs_as_it_runs_carries_its_correlation_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A record made in a call's task, or in a worker thread it started (a warning of the
    storage, say), reaches Godot with the call's correlation id as its trace_id, and
    stderr's line with it; one made outside any call has none."""
    search = Catalog.search

    async def logging_search(self: Catalog, query: Any, *args: Any) -> Any:
        if query.owner == "the-caller":  # (the server's own searches say nothing)
            logging.getLogger("horace.catalog").warning("said in the call's task")
            say = logging.getLogger("horace.storage").warning
            await trio.to_thread.run_sync(say, "said in a worker thread")
        return await search(self, query, *args)

    monkeypatch.setattr(Catalog, "search", logging_search)
    said = {"said in the call's task", "said in a worker thread", "said outside any call"}
    async with godot_standin() as godot, run_horace(serving(settings, godot_url=godot.url)) as horace:
        async with connect(horace.url) as client:
            searched = await call(client, "horace_search_files", "corr-said", owner="the-caller")
            assert not searched["result"]["isError"]
        logging.getLogger("horace.catalog").warning("said outside any call")
        await godot.wait_until(lambda: said <= {c["message"] for c in godot.calls})
    traced = {c["message"]: c["trace_id"] for c in godot.calls if c["message"] in said}
    assert traced == {
        "said in the call's task": "corr-said",
        "said in a worker thread": "corr-said",
        "said outside any call": None,
    }


async def test_what_the_start_logs_reaches_godot_once_its_sink_is_up(settings: Settings) -> None:
    """The start's fsck (what it found, what it repaired) is logged before the sinks run:
    held, it reaches Godot once the sink is up, as the periodic check's findings do."""
    async with open_catalog(settings, create=True) as catalog:
        write(catalog.storage.files / "user/gone.txt", "removed by hand while no server ran")
        await catalog.register("user/gone.txt")
    (settings.storage_path / "files/user/gone.txt").unlink()
    async with godot_standin() as godot, run_horace(serving(settings, godot_url=godot.url)):
        await godot.wait_until(lambda: any("fsck at start" in c["message"] for c in godot.calls))
    said = next(c for c in godot.calls if "fsck at start" in c["message"])
    assert said["level"] == "WARN" and "working_missing" in said["message"], said
    assert "user/gone.txt" in json.dumps(said["data"]), said


async def test_tool_calls_reach_godot_end_to_end(settings: Settings) -> None:
    """Through a running server: each call's log entry carries its correlation id; the
    forwarded conversation turns too, with the secrets of the arguments redacted."""
    secrets = {"api_key": "sk-LEAK-1", "custom": {"db": {"password": "LEAK-2"}}, "authorization": "LEAK-3"}
    async with (
        godot_standin() as godot,
        run_horace(serving(settings, godot_url=godot.url, conversations_to_godot=True)) as horace,
    ):
        write(horace.files / "user/a.txt", "a")
        async with connect(horace.url) as client:
            registered = await call(
                client,
                "horace_register_file",
                "corr-reg",
                file_path="user/a.txt",
                metadata={"tags": ["t"], **secrets},
            )
            file_id = registered["result"]["structuredContent"]["file_id"]
            info = await call(client, "horace_get_file_info", "corr-info", file_id=file_id)
            assert not info["result"]["isError"]
            missing = await call(client, "horace_get_file_info", "corr-missing", file_id="nope")
            assert tool_body(missing["result"])["error_code"] == "NOT_CATALOGED"

        def logged(correlation_id: str) -> list[dict[str, Any]]:
            return [
                c
                for c in godot.calls
                if c["trace_id"] == correlation_id and c["message"].startswith("tools/call")
            ]

        await godot.wait_until(lambda: all(logged(c) for c in ("corr-reg", "corr-info", "corr-missing")))
        await godot.wait_until(lambda: sum(c["level"] == "DEBUG" for c in godot.calls) >= 6)
        assert sinks_of(horace)["godot"]["state"] == "connected"
        await drained(horace)  # (a batch still on the wire at shutdown is sent again: at least once)
    (info_entry,) = logged("corr-info")
    assert info_entry["component"] == "horace" and info_entry["level"] == "INFO"
    assert info_entry["message"].startswith("tools/call horace_get_file_info ok in ")
    assert info_entry["data"]["tool"] == "horace_get_file_info"
    assert info_entry["data"]["file_ids"] == [file_id]
    assert info_entry["data"]["outcome"] == "ok" and info_entry["data"]["logger"] == "horace.server"
    assert logged("corr-missing")[0]["data"]["outcome"] == "NOT_CATALOGED"
    turns = [c for c in godot.calls if c["message"].startswith("conversation turn")]
    assert {(t["trace_id"], t["data"]["role"]) for t in turns} == {
        (c, role) for c in ("corr-reg", "corr-info", "corr-missing") for role in ("user", "assistant")
    }
    assert all(c["level"] in {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"} for c in godot.calls)
    everything = json.dumps(godot.calls)
    assert "LEAK" not in everything, "a secret reached Godot"
    request = next(t for t in turns if t["trace_id"] == "corr-reg" and t["data"]["role"] == "user")
    arguments = json.loads(request["data"]["content"])["arguments"]
    assert arguments["metadata"]["api_key"] == REDACTED and arguments["metadata"]["tags"] == ["t"]


# -- Godot down: calls stay fast, entries arrive later -----------------------------------------


async def _calls(url: str, file_id: str, count: int, prefix: str) -> None:
    async with connect(url) as client:
        for i in range(30):  # as many again, traced "-warm"
            await call(client, "horace_get_file_info", f"{prefix}-warm-{i}", file_id=file_id)
        for i in range(count):
            reply = await call(client, "horace_get_file_info", f"{prefix}-{i}", file_id=file_id)
            assert reply["result"]["isError"] is False, reply


async def test_godot_down_costs_no_call_and_catches_up(settings: Settings) -> None:
    """Two servers in turn answer 230 calls each with Godot at a closed port (what that costs
    a call is measured by scripts/bench_sinks); then Godot comes back and gets every entry
    once, in order, the first server's spill included."""
    write(settings.storage_path / "files/user/f.txt", "f")
    async with godot_standin(listening=False) as godot:
        async with run_horace(serving(settings, conversations=False)) as off:
            async with connect(off.url) as client:
                file_id = (await client.call("horace_register_file", file_path="user/f.txt"))["file_id"]
            assert sinks_of(off) == {}
        for round_ in range(2):
            async with run_horace(serving(settings, conversations=False, godot_url=godot.url)) as down:
                await _calls(down.url, file_id, 200, f"down{round_}")
                status = sinks_of(down)["godot"]
                assert status["state"] == "retrying" and status["delivered"] == 0 and status["queued"] >= 230
                assert status["dropped"] == 0 and status["last_error"]
                if round_ == 0:
                    continue
                assert status["replayed"] >= 230  # the first down server's entries, spilled

                await godot.start()  # Godot is back: everything queued goes out, once, in order
                wanted = [
                    f"down{r}{part}-{i}"
                    for r in range(2)
                    for part, n in (("-warm", 30), ("", 200))
                    for i in range(n)
                ]
                await godot.wait_until(lambda: {c["trace_id"] for c in godot.calls} >= set(wanted))  # noqa: B023
                traced = [c["trace_id"] for c in godot.calls if c["message"].startswith("tools/call")]
                assert traced == wanted
                await eventually(lambda: sinks_of(down)["godot"]["queued"] == 0)
                assert sinks_of(down)["godot"]["state"] == "connected"
                assert sinks_of(down)["godot"]["delivered"] == len(godot.calls)
    assert not (settings.storage_path / ".horace" / "spool" / "godot.jsonl").exists()


# -- the runner: overflow, spill and replay, restarts, retries ---------------------------------


async def test_overflow_drops_the_oldest_and_counts_exactly(caplog: pytest.LogCaptureFixture) -> None:
    capacity, extra = 50, 17
    async with godot_standin() as godot:
        runner = SinkRunner(
            GodotTransport(godot.url), spool_dir=None, capacity=capacity, batch_size=8, **FAST
        )
        async with running(runner):
            for i in range(5):
                runner.emit(entry(i))
            await eventually(lambda: runner.delivered == 5)  # acknowledged, off the queue
            await godot.stop()
            for i in range(5, 5 + capacity + extra):
                runner.emit(entry(i))
            await eventually(lambda: runner.state == "retrying")
            assert runner.dropped == extra and runner.status()["queued"] == capacity
            said = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
            assert said == [
                f"sink godot: its queue is full (at most {capacity} entries and 33554432 bytes: "
                "HORACE_SINK_QUEUE, HORACE_SINK_QUEUE_BYTES): dropped 1, the oldest first"
            ]  # (the first drop said; the next ones wait DROPS_SAID_EVERY, and are counted)
            await godot.start()
            await godot.wait_for(5 + capacity)
            await eventually(lambda: runner.status()["queued"] == 0)
    newest = list(range(5 + extra, 5 + capacity + extra))
    assert [c["message"] for c in godot.calls] == [f"m{i}" for i in [0, 1, 2, 3, 4, *newest]]
    assert runner.dropped == extra and runner.delivered == 5 + capacity and runner.restarts == 0
    # The drops after the first warning, said as the sink stopped (no drop came to say them).
    said = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert [line.rpartition("dropped ")[2] for line in said] == [
        "1, the oldest first",
        f"{extra - 1}, the oldest first",
    ]


class GatedTransport(MemoryTransport):
    """Holds each batch until the test lets it go: an overflow can land mid-delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = trio.Event()
        self.release = trio.Event()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        async with super().open() as deliver:

            async def gated(batch: list[dict[str, Any]]) -> int:
                self.in_flight.set()
                await self.release.wait()
                return await deliver(batch)

            yield gated


async def test_an_overflow_while_a_batch_is_in_flight_is_counted_once() -> None:
    """Entries are acknowledged by sequence number: an overflow that drops entries of the
    batch in flight neither counts them twice nor takes newer, undelivered entries off
    the queue with them."""
    capacity, batch_size, extra = 20, 8, 13
    transport = GatedTransport()
    runner = SinkRunner(transport, spool_dir=None, capacity=capacity, batch_size=batch_size, **FAST)
    async with running(runner):
        for i in range(batch_size):
            runner.emit(entry(i))
        await transport.in_flight.wait()  # the first batch (0..7) is out, not acknowledged
        emitted = batch_size + capacity + extra
        for i in range(batch_size, emitted):
            runner.emit(entry(i))
        assert runner.dropped == emitted - capacity  # the oldest, the in-flight batch among them
        transport.release.set()
        await eventually(lambda: runner.status()["queued"] == 0, what="the queue to drain")
    assert runner.delivered + runner.dropped == emitted
    kept = [f"m{i}" for i in range(runner.dropped, emitted)]  # drop-oldest: all but the first
    received = [e["message"] for e in transport.stored]
    assert all(received.count(message) == 1 for message in kept), received
    assert set(received) - set(kept) <= {f"m{i}" for i in range(batch_size)}  # only the batch in flight


async def test_spill_at_shutdown_then_replay(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    async with godot_standin(listening=False) as godot:
        first = SinkRunner(GodotTransport(godot.url), spool_dir=spool, flush_seconds=1.0, **FAST)
        async with running(first):
            for i in range(30):
                first.emit(entry(i, password="hunter2"))
            await eventually(lambda: first.failures >= 2)
        assert first.state == "stopped" and first.spilled == 30 and first.status()["queued"] == 0
        lines = (spool / "godot.jsonl").read_text().splitlines()
        assert [json.loads(line)["message"] for line in lines] == [f"m{i}" for i in range(30)]

        await godot.start()
        second = SinkRunner(GodotTransport(godot.url), spool_dir=spool, **FAST)
        second.emit(entry(30))  # queued before the replay: goes out after the spooled ones
        async with running(second):
            assert second.replayed == 30 and not (spool / "godot.jsonl").exists()
            second.emit(entry(31))
            await godot.wait_for(32)
            await eventually(lambda: second.status()["queued"] == 0)
        assert [c["message"] for c in godot.calls] == [f"m{i}" for i in range(32)]
        assert second.spilled == 0 and second.delivered == 32
    # Neither the spool nor the replay file is left (the lock file stays, as .horace/locks does).
    assert [p.name for p in spool.iterdir()] == ["godot.lock"]


async def test_server_spills_at_shutdown_and_replays_after_restart(settings: Settings) -> None:
    async with godot_standin(listening=False) as godot:
        configured = serving(settings, godot_url=godot.url, sink_flush=1.0)
        async with run_horace(configured) as first, connect(first.url) as client:
            for i in range(5):
                reply = await call(client, "horace_search_files", f"spill-{i}", tags=["x"])
                assert reply["result"]["isError"] is False
        spool = settings.storage_path / ".horace" / "spool" / "godot.jsonl"
        spilled = [json.loads(line) for line in spool.read_text().splitlines()]
        wanted = {f"spill-{i}" for i in range(5)}
        assert {e["trace_id"] for e in spilled} >= wanted
        assert all(e["level"] in {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"} for e in spilled)

        await godot.start()
        async with run_horace(configured) as second:
            await godot.wait_until(lambda: {c["trace_id"] for c in godot.calls} >= wanted)
            assert sinks_of(second)["godot"]["replayed"] == len(spilled)
            # (The replay file goes once the delivery of what it held is acknowledged.)
            await eventually(lambda: not spool.with_suffix(".replaying").exists())
            assert not spool.exists()
        first_delivered = godot.calls[: len(spilled)]
        assert [(c["message"], c["trace_id"]) for c in first_delivered] == [
            (e["message"], e["trace_id"]) for e in spilled
        ]
    assert not spool.exists()  # the second server delivered everything at its shutdown


async def test_turns_spilled_for_a_database_of_their_own_wait_for_a_process_that_logs_there(
    settings: Settings,
) -> None:
    """The spool is the store's, shared by all its processes, which may not all log to one
    database: turns spilled by a server whose HORACE_CONVERSATIONS_URL was down are not
    stored in the catalog's database by the next process (a `horace mcp` logging there),
    but replayed by one with that URL."""
    down = "postgresql://nobody@127.0.0.1:1/nowhere"
    own = serving(settings, conversations_url=down, sink_flush=0.2)
    async with run_horace(own) as first, connect(first.url) as client:
        for i in range(3):
            await call(client, "horace_search_files", f"own-{i}")
    spool = settings.storage_path / ".horace" / "spool"
    (spilled,) = [p for p in spool.glob("conversations*.jsonl")]
    assert spilled.name != "conversations.jsonl" and len(spilled.read_text().splitlines()) == 6
    async with run_horace(serving(settings)) as second, connect(second.url) as client:
        await call(client, "horace_search_files", "catalogs")
        await eventually(lambda: sinks_of(second)["conversations"]["delivered"] == 2)
        assert sinks_of(second)["conversations"]["replayed"] == 0
    stored = {r["metadata"]["correlation_id"] for r in await stored_turns(settings.catalog_url)}
    assert stored == {"catalogs"}
    assert len(spilled.read_text().splitlines()) == 6
    async with run_horace(own) as third:
        assert sinks_of(third)["conversations"]["replayed"] == 6


async def test_turns_after_their_own_database_file_is_removed_go_into_a_new_one(
    settings: Settings, tmp_path: Path
) -> None:
    """A conversation database of its own, its SQLite file removed under the server (a
    cleanup, a rotation): the turns after are stored in the database made anew at its
    path, not in the removed file (gone for good, yet counted as delivered)."""
    turns_db = tmp_path / "turns.db"
    url = f"sqlite://{turns_db}"
    async with (
        run_horace(serving(settings, conversations_url=url)) as running,
        connect(running.url) as client,
    ):
        await call(client, "horace_search_files", "before")
        await eventually(lambda: sinks_of(running)["conversations"]["delivered"] == 2)
        for leftover in ("", "-wal", "-shm"):
            Path(f"{turns_db}{leftover}").unlink(missing_ok=True)
        for i in range(3):
            await call(client, "horace_search_files", f"after-{i}")
        await eventually(lambda: sinks_of(running)["conversations"]["delivered"] == 8, 20, "the turns after")
    stored = [r["metadata"]["correlation_id"] for r in await stored_turns(url)]
    assert sorted(stored) == sorted(f"after-{i}" for i in range(3) for _ in range(2)), stored


async def test_a_crashing_sink_task_is_restarted_without_loss_or_duplicates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = MemoryTransport()
    transport.raise_on_batch = 3
    runner = SinkRunner(transport, spool_dir=None, batch_size=10, **FAST)
    for i in range(100):
        runner.emit(entry(i))
    with caplog.at_level(logging.WARNING, logger="horace.sinks"):
        async with running(runner):
            await eventually(lambda: len(transport.stored) >= 100)
            runner.emit(entry(100))
            await eventually(lambda: len(transport.stored) == 101)
    assert [e["message"] for e in transport.stored] == [f"m{i}" for i in range(101)]
    assert runner.restarts == 1 and transport.opened == 2
    assert (
        runner.delivered == 101
        and runner.dropped == 0
        and runner.status()["last_error"] == ("RuntimeError: deliver blew up")
    )
    crashed = [r for r in caplog.records if r.name == "horace.sinks" and "RuntimeError" in r.getMessage()]
    assert len(crashed) == 1 and crashed[0].exc_info is not None  # with its traceback


async def test_entries_gathered_for_a_long_linger_are_no_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """HORACE_SINK_LINGER may be up to 60 s: entries waiting that long to be sent as a
    batch wait as configured, and the sink is ok meanwhile (it was not after 15 s, and
    the server said it degraded)."""
    transport = MemoryTransport()
    runner = SinkRunner(transport, spool_dir=None, batch_size=100, linger=40.0, **FAST)
    async with running(runner):
        runner.emit(entry(0))
        await trio.sleep(30)
        assert transport.stored == [] and runner.status()["ok"] is True, runner.status()
        await trio.sleep(20)
        assert [e["message"] for e in transport.stored] == ["m0"]


async def test_batches_are_pipelined_to_a_slow_godot() -> None:
    async with godot_standin(delay=0.01) as godot:
        runner = SinkRunner(GodotTransport(godot.url), spool_dir=None, batch_size=20, **FAST)
        async with running(runner):
            for i in range(60):
                runner.emit(entry(i))
            await eventually(lambda: runner.delivered == 60)
    assert godot.max_outstanding >= 10, godot.max_outstanding  # many calls on the wire at once
    assert [c["message"] for c in godot.calls] == [f"m{i}" for i in range(60)]


async def test_an_idle_godot_connection_answers_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that pings its clients (websockets' does every 20 s, and closes a client
    whose pong is late) keeps an idle sink connected: with no entry to send, the sink
    still reads, and answers."""
    monkeypatch.setattr(horace.sinks.supervisor, "IDLE_EVERY", 0.2)
    async with godot_standin() as godot:
        runner = SinkRunner(GodotTransport(godot.url), spool_dir=None, **FAST)
        async with running(runner):
            runner.emit(entry(0))
            await eventually(lambda: runner.delivered == 1)
            [socket] = godot.sockets
            for _ in range(3):  # idle, pinged now and then
                await trio.sleep(0.3)
                with trio.fail_after(2):
                    await socket.ping()
            runner.emit(entry(1))
            await eventually(lambda: runner.delivered == 2)
    assert godot.connections == 1 and godot.messages() == ["m0", "m1"]


class CountingStream(trio.abc.Stream):
    """A stream that counts the reads that brought data."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.reads = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.reads += bool(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class LateStream(CountingStream):
    """A stream whose data, once :attr:`late`, is handed over a while after it came, without
    a checkpoint: as data that arrives just as a read's deadline passes."""

    late = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if self.late:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.1)
        return data


async def test_a_ping_read_as_the_idle_read_ends_is_still_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle read's deadline bounds the wait for data only: a ping read as it passes
    is answered all the same (cut off, its pong was taken from the protocol and never sent,
    and Godot, waiting for it, closed the connection)."""
    from wsproto.events import Pong

    monkeypatch.setattr(horace.sinks.godot, "IDLE_READ", 0.05)
    client_end, godot_end = trio.testing.memory_stream_pair()
    godot, heard = scripted_godot(godot_end, lambda godot, event: b"")
    stream = LateStream(client_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(godot)
        socket = await GodotSocket.over(stream, parse_uri("ws://godot/"))
        stream.late = True
        await godot_end.send_all(b"\x89\x04idle")  # a ping frame, as a server sends it (unmasked)
        await socket.answer_pings()
        await eventually(lambda: any(isinstance(e, Pong) for e in heard))
        nursery.cancel_scope.cancel()


async def test_godot_answers_are_read_many_at_a_time(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Godot answers a batch one call at a time; with many answers to come the sink waits
    a little before each read, so that a read takes several instead of the process waking
    for each; the last few are read at once."""
    client_end, godot_end = trio.testing.memory_stream_pair()
    client = CountingStream(client_end)
    godot = WSConnection(ConnectionType.SERVER)
    logged = []

    async def answer_one_by_one() -> None:
        while True:
            godot.receive_data(await godot_end.receive_some())
            for event in godot.events():
                if isinstance(event, WsRequest):
                    await godot_end.send_all(godot.send(AcceptConnection()))
                elif isinstance(event, TextMessage) and "id" in (call := json.loads(event.data)):
                    await trio.sleep(0.0005)  # Godot's work on one call
                    logged.append(call["params"].get("arguments"))
                    reply = {"jsonrpc": "2.0", "id": call["id"], "result": {}}
                    await godot_end.send_all(godot.send(WsMessage(data=json.dumps(reply))))

    async def connect(url: str) -> GodotSocket:
        return await GodotSocket.over(client, parse_uri("ws://godot/"))

    monkeypatch.setattr(GodotSocket, "connect", connect)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_one_by_one)
        async with GodotTransport("ws://godot/").open() as deliver:
            before = client.reads
            await deliver([entry(i) for i in range(50)])
            reads = client.reads - before
        nursery.cancel_scope.cancel()
    assert [e["message"] for e in logged[1:]] == [f"m{i}" for i in range(50)]  # (after initialize)
    assert reads <= 50 // 2, reads  # one wakeup an answer would be 50 reads


def scripted_godot(
    godot_end: trio.testing.MemoryReceiveStream | Any, answer: Any, upgrade: bytes | None = None
) -> tuple[Any, list[Any]]:
    """A Godot made with wsproto (another library than the sink's) on *godot_end*: it
    accepts the upgrade (or sends the raw *upgrade* answer instead), answers initialize,
    and answers each call (and any other event but a message) through ``answer(godot,
    call or event) -> bytes``: what to send back. Returns its task and what it heard."""
    godot = WSConnection(ConnectionType.SERVER)
    heard: list[Any] = []

    async def run() -> None:
        while data := await godot_end.receive_some():
            godot.receive_data(data)
            for event in godot.events():
                heard.append(event)
                if isinstance(event, WsRequest):
                    await godot_end.send_all(upgrade or godot.send(AcceptConnection()))
                elif isinstance(event, TextMessage) and "id" in (call := json.loads(event.data)):
                    if call["method"] == "initialize":
                        reply = {"jsonrpc": "2.0", "id": call["id"], "result": {}}
                        await godot_end.send_all(godot.send(WsMessage(data=json.dumps(reply))))
                    else:
                        await godot_end.send_all(answer(godot, call))
                elif not isinstance(event, TextMessage):  # (a pong, a close)
                    await godot_end.send_all(answer(godot, event))

    return run, heard


def answered(call: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": call["id"], "result": {"isError": False}})


async def deliver_to(godot: Any, godot_end: Any, client_end: Any, batch: list[dict[str, Any]]) -> None:
    async def connect(url: str) -> GodotSocket:
        return await GodotSocket.over(client_end, parse_uri(url))

    unavailable = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GodotSocket, "connect", connect)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(godot)
            try:
                async with GodotTransport("ws://godot/", reply_timeout=5).open() as deliver:
                    await deliver(batch)
            except SinkUnavailable as exc:  # (raised alone, not in the nursery's group)
                unavailable = exc
            finally:
                nursery.cancel_scope.cancel()
    if unavailable is not None:
        raise unavailable


async def test_godot_pings_and_fragmented_answers_are_taken_in_stride() -> None:
    """Godot pings for each call and answers it only once its pong is in, in three
    fragments: the sink answers each ping at once (nothing else would come) and reads
    each answer whole."""
    from wsproto.events import Ping, Pong

    client_end, godot_end = trio.testing.memory_stream_pair()
    waiting: dict[str, str] = {}  # the answers held back, by their ping's payload

    def ping_then_fragments(godot: WSConnection, heard: Any) -> bytes:
        if isinstance(heard, dict):  # a call
            waiting[str(heard["id"])] = answered(heard)
            return godot.send(Ping(payload=str(heard["id"]).encode()))
        if not isinstance(heard, Pong):
            return b""
        text = waiting.pop(bytes(heard.payload).decode())
        third = len(text) // 3
        return b"".join(
            godot.send(WsMessage(data=part, message_finished=last))
            for part, last in (
                (text[:third], False),
                (text[third : 2 * third], False),
                (text[2 * third :], True),
            )
        )

    godot, heard = scripted_godot(godot_end, ping_then_fragments)
    await deliver_to(godot, godot_end, client_end, [entry(i) for i in range(5)])
    pongs = [bytes(e.payload).decode() for e in heard if isinstance(e, Pong)]
    calls = [json.loads(e.data) for e in heard if isinstance(e, TextMessage)]
    assert [c["params"]["arguments"]["message"] for c in calls[2:]] == [f"m{i}" for i in range(5)]
    assert pongs == [str(c["id"]) for c in calls[2:]]  # (after initialize and initialized)


@pytest.mark.parametrize(
    ("misbehaviour", "said"),
    [
        ("refused", "the WebSocket upgrade was refused 403"),
        ("not-http", "the WebSocket upgrade failed"),
        ("binary", "a binary message (only text is spoken here)"),
        ("closed", "closed by Godot (1001 going away)"),
        ("too-long", "Godot broke the WebSocket protocol"),
        ("not-utf8", "Godot broke the WebSocket protocol: a text message"),
    ],
)
async def test_a_godot_that_breaks_the_websocket_is_unavailable_with_the_reason(
    misbehaviour: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each is a SinkUnavailable that says what went wrong (the runner retries later):
    none hangs the sink, none is taken for an answer."""
    from wsproto.events import CloseConnection

    monkeypatch.setattr(horace.sinks.godot, "MAX_MESSAGE_BYTES", 1000)
    client_end, godot_end = trio.testing.memory_stream_pair()
    upgrade = {
        "refused": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        "not-http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    }.get(misbehaviour)

    def misbehave(godot: WSConnection, call: Any) -> bytes:
        if not isinstance(call, dict):  # (the sink's close, after it gave up)
            return b""
        if misbehaviour == "binary":
            return godot.send(WsMessage(data=answered(call).encode()))
        if misbehaviour == "closed":
            return godot.send(CloseConnection(code=1001, reason="going away"))
        if misbehaviour == "too-long":
            return godot.send(WsMessage(data=answered(call) + " " * 1000))
        # A text frame of bytes that are not UTF-8 (wsproto will not make one): FIN+text,
        # its length, the bytes.
        return b"\x81\x03\xff\xfe\xfd"

    godot, _ = scripted_godot(godot_end, misbehave, upgrade)
    with pytest.raises(SinkUnavailable) as raised, trio.fail_after(10):
        await deliver_to(godot, godot_end, client_end, [entry(0)])
    assert said in str(raised.value), raised.value


async def test_the_error_of_a_godot_url_with_a_password_does_not_show_it() -> None:
    """/health shows a sink's last error, which names its URL: without its password (the
    log lines had it masked; /health, open to all without a token, did not)."""
    async with godot_standin(listening=False) as godot:
        url = godot.url.replace("ws://", "ws://horace:S3cretPW@")
        runner = SinkRunner(GodotTransport(url), spool_dir=None, **FAST)
        async with running(runner):
            await eventually(lambda: runner.failures >= 1, 10, "a failure")
    said = runner.status()["last_error"]
    assert "godot at ws://horace:" in said and "S3cretPW" not in said, said


async def test_a_godot_url_with_a_user_and_a_fragment_is_served_without_them() -> None:
    async with godot_standin() as godot:
        url = godot.url.replace("ws://", "ws://someone@") + "/#log"
        runner = SinkRunner(GodotTransport(url), spool_dir=None, **FAST)
        async with running(runner):
            runner.emit(entry(0))
            await eventually(lambda: runner.delivered == 1, 10, "the entry delivered")
    assert [c["message"] for c in godot.calls] == ["m0"] and runner.failures == 0


async def test_godot_slower_than_the_reply_timeout_per_batch_still_gets_each_entry_once() -> None:
    """A batch takes longer than ``reply_timeout`` in all, but every reply comes quickly."""
    async with godot_standin(delay=0.02) as godot:
        runner = SinkRunner(
            GodotTransport(godot.url, reply_timeout=0.3), spool_dir=None, batch_size=50, **FAST
        )
        async with running(runner):
            for i in range(100):
                runner.emit(entry(i))
            await eventually(lambda: runner.delivered == 100, 15, "100 entries delivered")
    assert [c["message"] for c in godot.calls] == [f"m{i}" for i in range(100)]
    assert runner.failures == 0


async def test_a_silent_godot_is_given_up_after_the_reply_timeout_and_retried() -> None:
    async with godot_standin(delay=30) as godot:  # takes the calls, answers none in time
        runner = SinkRunner(GodotTransport(godot.url, reply_timeout=0.2), spool_dir=None, **FAST)
        async with running(runner):
            runner.emit(entry(0))
            await eventually(lambda: runner.failures >= 1, 5, "a failure for the silence")
            assert "TooSlowError" in (runner.status()["last_error"] or "")
            assert runner.delivered == 0 and runner.status()["queued"] == 1
            godot.delay = 0
            await eventually(lambda: runner.delivered == 1, 10, "the entry delivered after all")
    assert godot.calls[-1]["message"] == "m0"


async def test_a_silent_godot_is_down_not_refusing_the_entry_it_was_given() -> None:
    """Silence is Godot hung, not the entry's fault: never a strike against a lone entry
    (three such, and an entry was dropped as "refused 3 times" by a Godot that refused
    nothing)."""
    async with godot_standin(delay=30) as godot:
        transport = GodotTransport(godot.url, reply_timeout=0.2)
        with pytest.raises(DestinationDown, match="TooSlowError"), trio.fail_after(5):
            async with transport.open():
                pass


async def test_flapping_godot_gets_every_entry() -> None:
    async with godot_standin(flap_every=7) as godot:
        runner = SinkRunner(GodotTransport(godot.url), spool_dir=None, **FAST)
        async with running(runner):
            for i in range(40):
                runner.emit(entry(i))
            await eventually(lambda: runner.delivered >= 40, 20, "40 entries delivered")
            assert runner.status()["queued"] == 0
    messages = [c["message"] for c in godot.calls]
    assert set(messages) == {f"m{i}" for i in range(40)}  # at least once ...
    assert list(dict.fromkeys(messages)) == [f"m{i}" for i in range(40)]  # ... first seen in order
    assert godot.connections > 5 and runner.restarts == 0  # closed connections are retried, not crashes


async def test_an_entry_from_a_worker_thread_is_queued_by_the_trio_thread() -> None:
    """A log record made on a worker thread: a Trio event may not be set there (the
    delivery task would never wake again); the Trio thread queues the entry instead."""
    transport = MemoryTransport()
    runner = SinkRunner(transport, spool_dir=None, **FAST)
    async with running(runner):
        await trio.to_thread.run_sync(runner.emit, entry(0))
        await eventually(lambda: runner.delivered == 1)
        runner.emit(entry(1))
        await eventually(lambda: runner.delivered == 2)
    assert [e["message"] for e in transport.stored] == ["m0", "m1"]
    assert runner.dropped == 0


async def test_godot_error_replies_are_counted_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A refusal is Godot's answer (a wrong tool name, say): not sent again, counted as
    refused, said once a batch; a sink whose every entry is refused is not ok."""
    async with godot_standin(erroring=True) as godot:
        transport = GodotTransport(godot.url)
        runner = SinkRunner(transport, spool_dir=None, batch_size=5, **FAST)
        with caplog.at_level(logging.WARNING, logger="horace.sinks"):
            async with running(runner):
                for i in range(10):
                    runner.emit(entry(i))
                await eventually(lambda: runner.delivered == 10)
                refusing = runner.status()
                godot.erroring = False
                runner.emit(entry(10))
                await eventually(lambda: runner.delivered == 11)
                accepting = runner.status()
    assert (refusing["state"], refusing["ok"], refusing["refused"]) == ("refusing", False, 10)
    assert (accepting["state"], accepting["ok"], accepting["refused"]) == ("connected", True, 10)
    # What Godot said, in /health too (not only in the log), and when.
    assert refusing["last_error"].startswith("refused 5 of 5 entries: logger_log said {"), refusing
    assert refusing["last_error_at"] is not None
    said_at = datetime.fromisoformat(refusing["last_error_at"])
    assert abs((datetime.now(UTC) - said_at).total_seconds()) < 60
    assert godot.errors == 10 and [c["message"] for c in godot.calls] == ["m10"]
    assert runner.failures == 0 and runner.restarts == 0 and godot.connections == 1
    said = [r.getMessage() for r in caplog.records if "godot refused" in r.getMessage()]
    assert len(said) == 2 and all(s.startswith("godot refused 5 of 5 log entries") for s in said), said


async def test_an_entry_that_is_no_log_entry_is_refused_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    """A JSON object that is no log entry (a spool line edited by hand, of another
    release: fields missing, of the wrong types, or more) is refused here, counted and
    said, not sent to Godot as ``logger_log`` arguments of the wrong types; the others go."""
    wrong = [
        {"message": 5, "level": [], "data": "x", "trace_id": 7},
        {},
        entry(1) | {"level": "LOUD"},
        entry(2) | {"extra": 1},
        entry(3) | {"trace_id": 3},
    ]
    async with godot_standin() as godot:
        runner = SinkRunner(GodotTransport(godot.url), spool_dir=None, **FAST)
        with caplog.at_level(logging.ERROR, logger="horace.sinks"):
            async with running(runner):
                for sent in [entry(0), *wrong, entry(4)]:
                    runner.emit(sent)
                await eventually(lambda: runner.delivered == 7)
    assert [c["message"] for c in godot.calls] == ["m0", "m4"]
    assert (runner.refused, runner.failures, runner.restarts, runner.dropped) == (5, 0, 0, 0)
    said = [r.getMessage() for r in caplog.records if "no log entry are refused" in r.getMessage()]
    assert sum(int(s.split()[1]) for s in said) == 5, said


async def test_health_shows_the_sinks(settings: Settings) -> None:
    async with godot_standin() as godot, run_horace(serving(settings, godot_url=godot.url)) as horace:
        async with connect(horace.url) as client:
            await call(client, "horace_search_files", "h-1")
        await godot.wait_until(lambda: any(c["trace_id"] == "h-1" for c in godot.calls))
        await drained(horace)
        await eventually(lambda: sinks_of(horace)["godot"]["queued"] == 0)
        status = sinks_of(horace)
        assert set(status) == {"godot", "conversations"}
        for part in status.values():
            assert part["state"] == "connected" and part["queued"] == 0 and part["dropped"] == 0
        assert status["conversations"]["delivered"] == 2
        code, body = await horace.server.health()
        assert code == 200 and body["sinks"] == sinks_of(horace) | {
            "godot": body["sinks"]["godot"]
        }  # the same parts (godot's counters may move)
        assert body["status"] == "ok" and "degraded" not in body


async def test_a_sink_in_the_server_that_cannot_deliver_degrades_health(settings: Settings) -> None:
    """Sinks run in the server (HORACE_SINK_PROCESS=off): Godot gone is said as the
    sink process says it, the server degraded."""
    async with (
        godot_standin(listening=False) as godot,
        run_horace(serving(settings, godot_url=godot.url)) as horace,
    ):
        await eventually(lambda: sinks_of(horace)["godot"]["state"] == "retrying", what="a retry")
        code, body = await horace.server.health()
        assert (code, body["status"], body["degraded"]) == (200, "degraded", ["sinks"]), body
        assert body["sinks"]["godot"]["ok"] is False and body["sinks"]["conversations"]["ok"] is True


# -- conversations -----------------------------------------------------------------------------


async def test_turn_numbers_are_unique_and_increasing_under_concurrency_and_batches(
    settings: Settings,
) -> None:
    async with run_horace(serving(settings)) as horace:
        for i in range(10):
            write(horace.files / f"user/t/{i}.txt", f"t{i}")
        expected: dict[str, dict[str, Any]] = {}  # correlation id -> tool, error_code, file_ids

        def expect(correlation_id: str, tool: str, reply: dict[str, Any]) -> None:
            if "error" in reply:
                error_code, file_ids = str(reply["error"]["code"]), []
            else:
                body = tool_body(reply["result"])
                error_code = body.get("error_code")
                file_ids = (
                    [body["file_id"]]
                    if "file_id" in body
                    else [body["file"]["id"]]
                    if "file" in body
                    else [r["id"] for r in body.get("results", [])]
                )
            expected[correlation_id] = {"tool": tool, "error_code": error_code, "file_ids": file_ids}

        async with connect(horace.url) as client:
            await client.initialize("2025-06-18")  # arguments refused are JSON-RPC errors then
            conversation_id = next(iter(horace.server.sessions)).conversation_id
            ids: dict[int, str] = {}

            async def register(i: int) -> None:
                reply = await call(client, "horace_register_file", f"reg-{i}", file_path=f"user/t/{i}.txt")
                ids[i] = reply["result"]["structuredContent"]["file_id"]
                expect(f"reg-{i}", "horace_register_file", reply)

            async def mixed(i: int) -> None:
                mix: list[tuple[str, dict[str, Any]]] = [
                    ("horace_get_file_info", {"file_id": ids[i % 10]}),
                    ("horace_get_file_info", {"file_id": f"missing-{i}"}),
                    ("horace_search_files", {"path": "user/t/*"}),
                    ("horace_get_file_info", {"file_id": 5}),  # invalid params: a JSON-RPC error
                ]
                tool, arguments = mix[i % 4]
                expect(f"mix-{i}", tool, await call(client, tool, f"mix-{i}", **arguments))

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(register, i)
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(mixed, i)

            async def batch(b: int) -> None:
                items: list[dict[str, Any]] = [
                    {"jsonrpc": "2.0", "method": "notifications/initialized"},
                    {"jsonrpc": "2.0", "id": f"b{b}-ping", "method": "ping"},
                    {
                        "jsonrpc": "2.0",
                        "id": f"b{b}-nope",
                        "method": "tools/call",
                        "params": {"name": "horace_nope", "_meta": {"correlation_id": f"batch-{b}-nope"}},
                    },
                    {
                        "jsonrpc": "2.0",
                        "id": f"b{b}-noname",
                        "method": "tools/call",
                        "params": {"_meta": {"correlation_id": f"batch-{b}-noname"}},
                    },
                ]  # calls of a tool there is not, or of none: two turns each all the same
                for k in range(8):
                    items.append(
                        {
                            "jsonrpc": "2.0",
                            "id": f"b{b}-{k}",
                            "method": "tools/call",
                            "params": {
                                "name": "horace_get_file_info",
                                "arguments": {"file_id": ids[k]},
                                "_meta": {"correlation_id": f"batch-{b}-{k}"},
                            },
                        }
                    )
                replies = {k: client.expect(f"b{b}-{k}") for k in range(8)}
                client.expect(f"b{b}-ping")
                nope, noname = client.expect(f"b{b}-nope"), client.expect(f"b{b}-noname")
                await client.send_raw(json.dumps(items))
                for k, reply in replies.items():
                    expect(f"batch-{b}-{k}", "horace_get_file_info", await reply.receive())
                expect(f"batch-{b}-nope", "horace_nope", await nope.receive())
                expect(f"batch-{b}-noname", "", await noname.receive())

            async with trio.open_nursery() as nursery:
                for b in range(4):
                    nursery.start_soon(batch, b)
        await drained(horace)
        assert conversation_runner(horace).refused == 0
    calls = len(expected)
    assert calls == 10 + 40 + 32 + 8
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation_id]
    assert [r["turn_number"] for r in rows] == list(range(1, 2 * calls + 1))
    by_call: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_call.setdefault(row["metadata"]["correlation_id"], []).append(row)
    assert set(by_call) == set(expected)
    for correlation_id, (request, response) in by_call.items():
        want = expected[correlation_id]
        assert request["role"] == "user" and response["role"] == "assistant"
        assert request["turn_number"] < response["turn_number"]
        assert request["metadata"] == {
            "correlation_id": correlation_id,
            "tool": want["tool"],
            "file_ids": [],
            "error_code": None,
        }
        assert response["metadata"] == {"correlation_id": correlation_id, **want}
        assert json.loads(request["content"])["tool"] == want["tool"]
        assert request["model"] is None and response["model"] == "horace"
        assert response["timing_ms"] is not None and response["timing_ms"] >= 0
        assert response["input_tokens"] is None and response["output_tokens"] is None
    assert {w["error_code"] for w in expected.values()} == {None, "NOT_CATALOGED", "-32602"}


@pytest.mark.parametrize("text", ["x" * 5000, "é" * 3000, '"\\' * 2000, "\x01" * 4000, "😀" * 1500])
def test_a_long_turn_is_cut_to_the_limit_and_says_so(text: str) -> None:
    cut = within(text, 1000)
    assert len(cut.encode()) <= 1000
    said = json.loads(cut)
    assert said["cut"] == {"bytes": len(text.encode()), "limit": 1000}
    assert said["head"] and text.startswith(said["head"])
    assert within(text, len(text.encode())) == text  # at the limit: whole


async def test_a_long_reply_is_stored_cut(settings: Settings) -> None:
    """HORACE_TURN_MAX_BYTES: the conversation log keeps no more of a turn (a search of
    many files replies with megabytes, call after call)."""
    async with run_horace(serving(settings, turn_max_bytes=4096)) as horace:
        for i in range(200):
            write(horace.files / f"user/n/{i}.txt", f"n{i}")
        async with connect(horace.url) as client:
            await call(client, "horace_scan", "scan")
            found = await call(client, "horace_search_files", "big", limit=200)
            assert found["result"]["structuredContent"]["total_count"] == 200
            await call(client, "horace_search_files", "small", limit=1)
            # A request past the limit: its turn is made, cut, by the session itself.
            await call(client, "horace_search_files", "long", owner="o" * 5000)
        await drained(horace)
    stored = await stored_turns(settings.catalog_url)
    turns = {(r["metadata"]["correlation_id"], r["role"]): r for r in stored}
    big = turns["big", "assistant"]["content"]
    assert len(big.encode()) <= 4096
    assert json.loads(big)["cut"]["bytes"] > 4096 * 10
    small = json.loads(turns["small", "assistant"]["content"])  # whole: the reply itself
    assert small["structuredContent"]["total_count"] == 200
    assert json.loads(turns["big", "user"]["content"])["arguments"] == {"limit": 200}
    long = json.loads(turns["long", "user"]["content"])
    assert long["cut"]["limit"] == 4096 and long["cut"]["bytes"] > 5000
    assert long["head"].startswith('{"tool": "horace_search_files", "arguments": {"owner": "ooo')
    assert len(turns["long", "user"]["content"].encode()) <= 4096


async def test_secrets_in_a_calls_arguments_and_reply_are_redacted_in_its_turns(settings: Settings) -> None:
    """The conversation log is a log: a secret a client puts in a file's metadata is kept
    in the catalog (it is the file's data), and not in the turns (as not in Godot's)."""
    secrets = {"api_key": "s3cret-a", "deep": [{"DB-Password": "s3cret-b"}], "note": "kept"}
    async with run_horace(serving(settings)) as horace:
        write(horace.files / "user/s.txt", "s")
        write(horace.files / "user/escaped.txt", "e")
        async with connect(horace.url) as client:
            await call(client, "horace_register_file", "plain", file_path="user/s.txt", metadata=secrets)
            # JSON text in a string, a key in it spelled with an escape: redacted inside too.
            blob = '{"p\\u0061ssword": "s3cret-c"}'
            await call(
                client,
                "horace_register_file",
                "escaped",
                file_path="user/escaped.txt",
                metadata={"blob": blob},
            )
            found = await call(client, "horace_get_file_info", "info", file_path="user/s.txt")
            assert found["result"]["structuredContent"]["file"]["metadata"] == secrets  # the catalog's
        await drained(horace)
    stored = await stored_turns(settings.catalog_url)
    turns = {(r["metadata"]["correlation_id"], r["role"]): r["content"] for r in stored}
    for key in ("plain", "user"), ("plain", "assistant"), ("info", "assistant"), ("escaped", "user"):
        assert "s3cret" not in turns[key] and REDACTED in turns[key], key
    request_turn = json.loads(turns["plain", "user"])["arguments"]["metadata"]
    assert request_turn == {"api_key": REDACTED, "deep": [{"DB-Password": REDACTED}], "note": "kept"}
    assert turns["info", "user"] == json.dumps(
        {"tool": "horace_get_file_info", "arguments": {"file_path": "user/s.txt"}}
    )  # (nothing secret: as made)


async def test_a_long_requests_turn_is_made_off_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding and redacting megabytes of arguments takes seconds: not on the loop that
    serves every session."""
    from horace.server import mcp

    made_in_trio: list[bool] = []

    def watched(*args: Any) -> str:
        made_in_trio.append(trio.lowlevel.in_trio_run())
        return request_content(*args)

    monkeypatch.setattr(mcp, "request_content", watched)
    async with run_horace(serving(settings, turn_max_bytes=4096)) as horace:
        async with connect(horace.url) as client:
            await call(client, "horace_search_files", "short", owner="o")
            await call(client, "horace_search_files", "long", owner="o" * 5000, purpose="token")
        await drained(horace)
    assert made_in_trio == [False]  # (the short one's turn is the sink's to make)
    requests = {
        r["metadata"]["correlation_id"]: r
        for r in await stored_turns(settings.catalog_url)
        if r["role"] == "user"
    }
    assert json.loads(requests["long"]["content"])["cut"]["bytes"] > 5000


async def test_turns_older_than_the_retention_are_pruned(catalog: Catalog) -> None:
    """HORACE_CONVERSATION_RETENTION: the log's oldest turns go, a batch at a time; the
    newer stay (both backends)."""
    now = datetime.now(UTC)
    conversation = str(uuid.uuid4())
    turns = [
        Turn(conversation, n, "user", f"turn {n}", None, None, None, None, {}, now - timedelta(days=40 - n))
        for n in range(1, 31)  # 40 days old down to 11
    ]
    assert await catalog.backend.insert_turns(turns) == []
    assert await catalog.backend.prune_turns(now - timedelta(days=20), 5) == 5
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prune_conversations, talks_in(catalog.backend), 20 * 86400.0, 3600.0)
        with trio.fail_after(10):
            while len(await stored_turns(catalog.backend.url)) > 10:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    kept = await stored_turns(catalog.backend.url)
    assert [t["turn_number"] for t in kept] == list(range(21, 31))  # 19 days old and newer


def test_the_retention_setting() -> None:
    assert Settings.from_env({"HORACE_CONVERSATION_RETENTION": "90d"}).conversation_retention == 90 * 86400
    assert Settings.from_env({"HORACE_CONVERSATION_RETENTION": "off"}).conversation_retention is None
    assert Settings.from_env({}).conversation_retention is None


async def test_a_cancelled_call_has_a_request_turn_and_no_response_turn(settings: Settings) -> None:
    async with run_horace(serving(settings)) as horace:
        for i in range(1500):
            write(horace.files / f"user/n/{i}.txt", f"n{i}")
        async with connect(horace.url) as client:
            conversation_id = next(iter(horace.server.sessions)).conversation_id
            await call(client, "horace_search_files", "before")
            reply = client.expect(99)
            await client.send_raw(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 99,
                        "method": "tools/call",
                        "params": {
                            "name": "horace_scan",
                            "arguments": {},
                            "_meta": {"correlation_id": "cancelled"},
                        },
                    }
                )
            )
            await trio.sleep(0.05)
            await client.send_raw(
                json.dumps(
                    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
                )
            )
            with trio.move_on_after(1.0) as waited:
                got = await reply.receive()
            assert waited.cancelled_caught, f"a cancelled call gets no response: {got}"
            await call(client, "horace_search_files", "after")
        await drained(horace)
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation_id]
    assert [(r["turn_number"], r["role"], r["metadata"]["correlation_id"]) for r in rows] == [
        (1, "user", "before"),
        (2, "assistant", "before"),
        (3, "user", "cancelled"),
        (4, "user", "after"),
        (5, "assistant", "after"),
    ]
    assert rows[2]["metadata"]["tool"] == "horace_scan"


def _turn(conversation_id: str, number: int, content: str, role: str = "user") -> dict[str, Any]:
    return to_json(
        Turn(
            conversation_id=conversation_id,
            turn_number=number,
            role=role,
            content=content,
            model=None,
            input_tokens=None,
            output_tokens=None,
            timing_ms=None,
            metadata={
                "correlation_id": f"c-{number}",
                "tool": "horace_scan",
                "file_ids": [],
                "error_code": None,
            },
            created_at=datetime.now(UTC),
        )
    )


def _of_sinks(record: logging.LogRecord) -> bool:
    return record.name == "horace.sinks" or record.name.startswith("horace.sinks.")


async def test_an_entry_that_is_no_turn_is_refused_at_once_and_the_others_stored(
    catalog: Catalog, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSON object that is no turn (a spool line edited by hand, of another release) is
    refused, said, and not tried again: it neither fails its batch (which took the sink for
    a database down, and held the good turns behind it) nor costs them."""
    conversation = str(uuid.uuid4())
    runner = SinkRunner(ConversationTransport(talks_in(catalog.backend)), spool_dir=None, **FAST)
    with caplog.at_level(logging.ERROR, logger="horace.sinks"):
        async with running(runner):
            for entry in ({}, _turn(conversation, 1, "one"), {"x": 1}, _turn(conversation, 2, "two")):
                runner.emit(entry)
            await eventually(lambda: runner.delivered == 4, what="the batch delivered")
    assert (runner.refused, runner.failures, runner.restarts, runner.dropped) == (2, 0, 0, 0)
    said = [r.getMessage() for r in caplog.records if "is no turn" in r.getMessage()]
    assert len(said) == 2 and "conversation_id: missing required field" in said[0], said
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation]
    assert [(r["turn_number"], r["content"]) for r in rows] == [(1, "one"), (2, "two")]


async def test_a_unique_violation_is_reported_and_a_retry_is_stored_once(
    catalog: Catalog, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    transport = ConversationTransport(talks_in(catalog.backend))
    conversation = str(uuid.uuid4())
    first, clash = _turn(conversation, 1, "original"), _turn(conversation, 1, "something else")
    with caplog.at_level(logging.WARNING, logger="horace.sinks"):
        async with transport.open() as deliver:
            refused = await deliver([first, _turn(conversation, 2, "two", "assistant")])
            refused += await deliver([first])  # the same turn again: a retried delivery
            refused += await deliver([_turn(conversation, 3, "three"), _turn(conversation, 3, "three")])
            assert refused == 0
            # (The sinks' own: another test's session applying schema steps may make this
            # one's catalog wait, and say so.)
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING and _of_sinks(r)]
            refused += await deliver([clash])
            refused += await deliver([_turn(conversation, 4, "four"), _turn(conversation, 4, "not four")])
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and _of_sinks(r)]
        assert refused == 2 and len(errors) == 2
        assert all(
            r.name == "horace.sinks" and "UNIQUE(conversation_id, turn_number)" in r.getMessage()
            for r in errors
        )
        assert conversation in errors[0].getMessage()
        assert errors[0].correlation_id == "c-1"  # type: ignore[attr-defined]

        # The same through a runner: counted and logged, the sink keeps going.
        runner = SinkRunner(transport, spool_dir=None, **FAST)
        async with running(runner):
            for number, content in ((5, "five"), (2, "clash"), (5, "five")):
                runner.emit(_turn(conversation, number, content))
            await eventually(lambda: runner.delivered == 3)
        assert runner.refused == 1 and runner.restarts == 0 and runner.failures == 0
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation]
    assert [(r["turn_number"], r["content"]) for r in rows] == [
        (1, "original"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
        (5, "five"),
    ]


@pytest.mark.parametrize("outage", [DatabaseFull, CatalogUnwritable])
async def test_turns_a_full_or_read_only_database_refuses_are_kept_until_it_takes_them(
    catalog: Catalog, settings: Settings, monkeypatch: pytest.MonkeyPatch, outage: type[Exception]
) -> None:
    """A database that answers but cannot write (its disk full, made read-only) refuses
    every batch, a lone turn too: that is no fault of the turn's, and none is dropped."""
    transport = ConversationTransport(talks_in(catalog.backend))
    conversation = str(uuid.uuid4())
    real_insert = catalog.backend.insert_turns
    refusals = 0

    async def refusing(turns: list[Turn]) -> list[Turn]:
        nonlocal refusals
        if refusals < 12:
            refusals += 1
            raise outage("the database cannot write now")
        return await real_insert(turns)

    monkeypatch.setattr(catalog.backend, "insert_turns", refusing)
    runner = SinkRunner(transport, spool_dir=None, **FAST)
    async with running(runner):
        for number in range(1, 6):
            runner.emit(_turn(conversation, number, f"turn {number}"))
        await eventually(lambda: runner.delivered == 5, 10, "every turn stored")
    assert refusals == 12 and runner.failures == 0 and runner.dropped == 0
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation]
    assert [r["turn_number"] for r in rows] == [1, 2, 3, 4, 5]


async def test_a_spill_the_disk_cannot_take_is_counted_and_leaves_the_spool_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    before = json.dumps(entry(0)) + "\n"
    transport = MemoryTransport()
    transport.up = False
    runner = SinkRunner(transport, spool_dir=spool, flush_seconds=0.1, **FAST)
    real_write = os.write

    def disk_fills(fd: int, data: Any) -> int:
        if len(data) > 100:
            real_write(fd, bytes(data[:100]))  # part of it goes in, then the disk is full
        raise OSError(28, "No space left on device")

    with caplog.at_level(logging.ERROR, logger="horace.sinks"):
        async with running(runner):
            (spool / "memory.jsonl").write_text(before)  # another server's spill, meanwhile
            for i in range(1, 21):
                runner.emit(entry(i))
            await eventually(lambda: runner.failures >= 1)
            monkeypatch.setattr(os, "write", disk_fills)
    monkeypatch.undo()
    assert (spool / "memory.jsonl").read_text() == before
    assert runner.spilled == 0 and runner.dropped == 20
    assert any("20 entries lost at shutdown" in r.getMessage() for r in caplog.records)


async def test_a_spill_into_a_store_moved_away_makes_nothing_where_it_was(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store moved while the server ran: its spool's folder is gone with it. What the
    sink holds at shutdown is said lost, and nothing is made at the old path (a folder
    there would look like a store, and take what belongs to the moved one)."""
    store = tmp_path / "store"
    spool = store / ".horace" / "spool"
    spool.mkdir(parents=True)
    transport = MemoryTransport()
    transport.up = False
    runner = SinkRunner(transport, spool_dir=spool, flush_seconds=0.1, **FAST)
    with caplog.at_level(logging.ERROR, logger="horace.sinks"):
        async with running(runner):
            for i in range(5):
                runner.emit(entry(i))
            await eventually(lambda: runner.failures >= 1)
            store.rename(tmp_path / "moved")
    assert not store.exists()
    assert runner.spilled == 0 and runner.dropped == 5
    assert any("5 entries lost at shutdown" in r.getMessage() for r in caplog.records)


# -- PostgreSQL stopped and started under load ---------------------------------------------------


class Spy:
    """Stands between the session and the recorder: every turn the server emits."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.turns: list[tuple[str, int, str]] = []

    def call_started(self, record: CallRecord) -> None:
        self.turns.append((record.conversation_id, record.request_turn, "user"))
        self.inner.call_started(record)

    def call_finished(self, record: CallRecord) -> None:
        if record.response_turn:
            self.turns.append((record.conversation_id, record.response_turn, "assistant"))
        self.inner.call_finished(record)


async def _pg_ctl(cluster: Path, *arguments: str) -> None:
    pg_ctl = Path((cluster / ".horace-pg-throwaway").read_text().strip()) / "pg_ctl"
    argv = [str(pg_ctl), "-D", str(cluster / "data"), *arguments]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    await trio.run_process(argv, cwd=cluster, capture_stdout=True, capture_stderr=True)


@pytest.mark.skipif(BACKEND != "postgres", reason="stops and starts a PostgreSQL server of its own")
async def test_turns_survive_postgresql_stopped_and_started_under_load(tmp_path: Path) -> None:
    script = SCRIPTS / "pg-throwaway"
    started = await trio.run_process([str(script), "start"], capture_stdout=True)
    exports = [line.removeprefix("export ") for line in started.stdout.decode().splitlines() if "=" in line]
    env = dict(line.split("=", 1) for line in exports)
    dsn = env["HORACE_TEST_PG_DSN"].strip("'\"")
    cluster = Path(env["HORACE_PG_THROWAWAY"].strip("'\""))
    port = str(urlsplit(dsn).port)
    try:
        settings = serving(Settings(storage_path=tmp_path / "root", database_url=dsn), sink_backoff_cap=0.2)
        async with run_horace(settings) as horace:
            runner = conversation_runner(horace)
            spy = Spy(horace.server.observer)
            horace.server.observer = spy  # the sessions opened from now on report to the spy
            outcomes: dict[str, int] = {}
            stop_load = trio.Event()

            async def load(worker: int) -> None:
                async with connect(horace.url) as client:
                    n = 0
                    while not stop_load.is_set():
                        reply = await call(client, "horace_search_files", f"w{worker}-{n}", tags=["x"])
                        body = tool_body(reply["result"])
                        outcome = body.get("error_code", "ok")
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                        n += 1
                        await trio.sleep(0.002)

            async with trio.open_nursery() as nursery:
                for worker in range(4):
                    nursery.start_soon(load, worker)
                await trio.sleep(0.5)
                await _pg_ctl(cluster, "-m", "fast", "-w", "stop")
                await eventually(lambda: outcomes.get("BACKEND_UNAVAILABLE", 0) >= 20, 15, "failing calls")
                await trio.sleep(0.5)
                await eventually(lambda: runner.state == "retrying", 10, "the sink retrying")
                queued_while_down = runner.status()["queued"]
                await _pg_ctl(cluster, "-l", str(cluster / "server.log"), "-o", f"-p {port}", "-w", "start")
                await eventually(lambda: outcomes.get("ok", 0) >= 200, 15, "calls succeeding again")
                await trio.sleep(0.3)
                stop_load.set()
            await eventually(lambda: runner.status()["queued"] == 0, 30, "the conversation sink to drain")
            assert runner.dropped == 0 and runner.refused == 0
            assert queued_while_down > 0
        assert outcomes.get("ok", 0) >= 200 and outcomes.get("BACKEND_UNAVAILABLE", 0) >= 20, outcomes
        # INTERNAL: asyncpg's "cannot switch to state 12; another operation is in progress" on a
        # connection the server terminated is not (yet) mapped to BACKEND_UNAVAILABLE by the
        # backend; those calls still have both their turns, which is what is checked here.
        assert set(outcomes) <= {"ok", "BACKEND_UNAVAILABLE", "INTERNAL"}, outcomes
        rows = await stored_turns(dsn)
        stored = [(r["conversation_id"], r["turn_number"], r["role"]) for r in rows]
        assert len(stored) == len(set(stored))
        assert sorted(stored) == sorted(spy.turns), (len(stored), len(spy.turns))
        for conversation in {c for c, _, _ in stored}:
            numbers = sorted(n for c, n, _ in stored if c == conversation)
            assert numbers == list(range(1, len(numbers) + 1))
    finally:
        subprocess.run([str(script), "stop", str(cluster)], check=False, capture_output=True)


class PickyTransport(MemoryTransport):
    """Refuses (on a working connection) every batch holding a poisoned entry."""

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        async def deliver(batch: list[dict[str, Any]]) -> int:
            await trio.lowlevel.checkpoint()
            if any(item.get("poison") for item in batch):
                raise SinkUnavailable("entry refused")
            self.stored.extend(batch)
            return 0

        yield deliver


async def test_an_entry_refused_again_and_again_is_dropped_not_blocking(tmp_path: Path) -> None:
    transport = PickyTransport()
    runner = SinkRunner(transport, spool_dir=tmp_path, batch_size=8, backoff_base=0.001, backoff_cap=0.01)
    for i in range(5):
        runner.emit(entry(i))
    runner.emit({**entry(5), "poison": True})
    for i in range(6, 10):
        runner.emit(entry(i))
    async with running(runner):
        await eventually(lambda: len(transport.stored) == 9, what="the good entries")
    assert [e["message"] for e in transport.stored] == [f"m{i}" for i in range(10) if i != 5]
    assert runner.dropped == 1


async def test_replayed_entries_a_full_disk_keeps_out_of_the_spool_are_replayed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken from the spool at start, not delivered (the destination still down), and the
    spill at shutdown refused by a full disk: they are still on disk for the next start."""
    spooled = "".join(json.dumps(entry(i)) + "\n" for i in range(5))
    (tmp_path / "memory.jsonl").write_text(spooled)
    transport = MemoryTransport()
    transport.up = False
    runner = SinkRunner(transport, spool_dir=tmp_path, flush_seconds=0.1, **FAST)

    def disk_full(path: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    async with running(runner):
        assert runner.replayed == 5
        runner.emit(entry(5))
        await eventually(lambda: runner.failures >= 1)
        monkeypatch.setattr(horace.sinks.supervisor, "_append", disk_full)
    monkeypatch.undo()
    assert runner.dropped == 6  # counted as lost from memory, yet the 5 are still on disk
    transport.up = True
    again = SinkRunner(transport, spool_dir=tmp_path, **FAST)
    async with running(again):
        await eventually(lambda: len(transport.stored) == 5, what="the replayed entries")
    assert [e["message"] for e in transport.stored] == [f"m{i}" for i in range(5)]
    assert [p.name for p in tmp_path.iterdir()] == ["memory.lock"]


async def test_a_replay_interrupted_by_a_crash_is_picked_up(tmp_path: Path) -> None:
    transport = MemoryTransport()
    # What a process killed mid-replay leaves, beside a fresh spill of a later run.
    (tmp_path / "memory.replaying").write_text("".join(json.dumps(entry(i)) + "\n" for i in range(3)))
    (tmp_path / "memory.jsonl").write_text("".join(json.dumps(entry(i)) + "\n" for i in range(3, 5)))
    runner = SinkRunner(transport, spool_dir=tmp_path, backoff_base=0.001)
    async with running(runner):
        await eventually(lambda: len(transport.stored) == 5, what="both spools")
    assert [e["message"] for e in transport.stored] == [f"m{i}" for i in range(5)]
    assert runner.replayed == 5
    assert [p.name for p in tmp_path.iterdir()] == ["memory.lock"]


def _too_deep_to_redact() -> bytes:
    """A JSON object nested past what the redaction takes here, or the parser (how deep
    that is differs from one Python to the next)."""
    for depth in range(200, 20_000, 100):
        line = b'{"a": ' * depth + b"{}" + b"}" * depth
        try:
            redact(json.loads(line))
        except RecursionError:
            return line
    raise AssertionError("no depth is too deep to redact")


async def test_a_damaged_spool_costs_its_bad_lines_only(tmp_path: Path) -> None:
    """Lines that are no JSON object (a byte that is not UTF-8, nesting too deep for the
    parser, an array, a torn line), or no JSON at all (NaN), or an object nested too deep
    for the redaction are skipped and counted as dropped; the good lines around them are
    replayed and the sink runs. A symlink in the spool's place is removed unread, its
    target left alone."""
    good = [json.dumps(entry(i, **({"PassWord": "hunter2"} if i == 3 else {}))).encode() for i in range(4)]
    hostile = [b'{"note": "caf\xe9"}', b"[" * 100_000 + b"]" * 100_000, b"[1, 2, 3]", b'{"torn": "a']
    deep = _too_deep_to_redact()
    not_json = json.dumps(entry(5, x=float("nan"))).encode()
    (tmp_path / "memory.replaying").write_bytes(good[0] + b"\n" + hostile[3])  # torn: no newline
    spooled = [good[1], *hostile[:3], deep, not_json, good[2], b"", good[3]]
    (tmp_path / "memory.jsonl").write_bytes(b"\n".join(spooled) + b"\n")
    transport = MemoryTransport()
    runner = SinkRunner(transport, spool_dir=tmp_path, backoff_base=0.001)
    async with running(runner):
        await eventually(lambda: len(transport.stored) == 4, what="the good lines")
        assert runner.status()["state"] == "connected"
    assert [e["message"] for e in transport.stored] == [f"m{i}" for i in range(4)]
    assert (runner.replayed, runner.dropped, runner.restarts) == (4, 6, 0)
    assert transport.stored[3]["data"] == {"i": 3, "PassWord": REDACTED}  # a line planted in the spool

    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps(entry(9)) + "\n")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "memory.jsonl").symlink_to(outside)
    again = MemoryTransport()
    runner = SinkRunner(again, spool_dir=spool, backoff_base=0.001, flush_seconds=0.0)
    async with running(runner):
        runner.emit(entry(10))
        await eventually(lambda: len(again.stored) == 1, what="the new entry")
    assert [e["message"] for e in again.stored] == ["m10"] and runner.replayed == 0
    assert not (spool / "memory.jsonl").is_symlink() and outside.read_text() == json.dumps(entry(9)) + "\n"


async def test_a_spool_another_process_holds_is_waited_for(tmp_path: Path) -> None:
    """A server and `horace mcp` sessions share one spool: a runner takes the spool in,
    and spills into it, only under its lock, which another process may hold."""
    import fcntl

    transport = MemoryTransport()
    spool = tmp_path / "memory.jsonl"
    spool.write_text("".join(json.dumps(entry(i)) + "\n" for i in range(3)))
    other = os.open(tmp_path / "memory.lock", os.O_RDWR | os.O_CREAT)  # another open file: another holder
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        runner = SinkRunner(transport, spool_dir=tmp_path, **FAST)
        stopping = trio.CancelScope()

        async def run_runner() -> None:
            with stopping:
                await runner.run()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_runner)
            await trio.sleep(0.3)
            assert runner.replayed == 0 and spool.exists() and transport.stored == []
            fcntl.flock(other, fcntl.LOCK_UN)
            await eventually(lambda: len(transport.stored) == 3, what="the spool, once unlocked")
            assert runner.replayed == 3 and not spool.exists()

            transport.up = False  # what is emitted now stays queued, and is spilled at the end
            transport.raise_on_batch = transport.batches + 1
            runner.emit(entry(3))
            await eventually(lambda: runner.failures >= 1, what="a failed delivery")
            fcntl.flock(other, fcntl.LOCK_EX)
            stopping.cancel()
            await trio.sleep(0.3)
            assert runner.state != "stopped" and not spool.exists()  # waiting for the lock
            fcntl.flock(other, fcntl.LOCK_UN)
            await eventually(lambda: runner.state == "stopped", what="the spill, once unlocked")
    finally:
        os.close(other)
    assert runner.state == "stopped" and runner.spilled == 1
    assert [json.loads(line)["message"] for line in spool.read_text().splitlines()] == ["m3"]
