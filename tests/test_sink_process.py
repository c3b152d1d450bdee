"""The log sinks in a child process (``HORACE_SINK_PROCESS``, the default): what reaches
the conversation log and Godot through it, its part of /health, and its life beside the
server's (killed, signalled, outlived)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import urllib.request
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import pytest
import trio
from godot_standin import godot_standin
from helpers import BACKEND, pg_execute, pg_fetchval, write
from limits_load import horace_process
from mcp_client import connect
from test_sinks import call, drained, eventually, serving, sinks_drained, sinks_of, stored_turns

from horace.config import Settings
from horace.model import CallRecord
from horace.server import sinkprocess
from horace.server.sinkprocess import SinkPlan, SinkProcess, record_message
from horace.tasks import run_watch
from horace.testing import RunningHorace, run_horace


def in_child(settings: Settings, **changes: Any) -> Settings:
    return serving(settings, sink_process=True, **changes)


def process_part(horace: RunningHorace) -> dict[str, Any]:
    return horace.server.health_parts["sink_process"]()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # (not a zombie)


def children_of(pid: int) -> list[int]:
    return [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]


def test_the_sink_process_says_why_it_is_not_ok(settings: Settings, tmp_path: Path) -> None:
    """``ok`` and ``why`` of /health's ``sink_process``: its own failure first, then the
    sinks of the child that are not ok, then a new child whose sinks have not all
    connected yet (one that dies at each start is running for a moment each time)."""
    process = SinkProcess(SinkPlan(serving(settings), None, tmp_path, "INFO"))
    process.state = "running"
    process.sink_status = {name: {"state": "connected", "ok": True} for name in process.sink_status}
    assert (process.status()["ok"], process.status()["why"]) == (True, None)
    process.recovering = True
    assert process.status()["ok"] is False
    assert process.status()["why"] == "a new child: not every sink has connected yet"
    process.sink_status["godot"] = {"state": "retrying", "ok": False}
    assert process.status()["why"] == "not ok in the child: godot (see sinks)"
    process.state, process.last_error = "retrying", "the sink process ended with exit code 1"
    assert process.status()["why"] == "the sink process ended with exit code 1"


def test_a_full_queue_says_what_it_dropped_at_most_every_ten_seconds(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls whose records overflow the queue (many large replies at once) lose their
    turns, the oldest first: counted, and said in a warning with how many, at most
    every DROPS_SAID_EVERY seconds."""
    clock = [1000.0]
    monkeypatch.setattr("horace.sinks.supervisor.time.monotonic", lambda: clock[0])
    process = SinkProcess(SinkPlan(serving(attrs.evolve(settings, sink_queue=2)), None, tmp_path, "INFO"))
    record = CallRecord("conv", "corr", "horace_search_files", {}, 1, response_turn=2, result={"r": 1})

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]

    for _ in range(5):
        process.call_finished(record)
    assert process.status()["dropped"] == 3
    assert said() == [
        "sink process: its queue is full (at most 2 entries and 33554432 bytes: "
        "HORACE_SINK_QUEUE, HORACE_SINK_QUEUE_BYTES): dropped 1, the oldest first"
    ]
    clock[0] += 10
    process.call_finished(record)
    assert process.status()["dropped"] == 4
    assert said()[1:] == [
        "sink process: its queue is full (at most 2 entries and 33554432 bytes: "
        "HORACE_SINK_QUEUE, HORACE_SINK_QUEUE_BYTES): dropped 3, the oldest first"
    ]


def test_a_record_crosses_the_pipe_whole() -> None:
    made = CallRecord("conv", "corr", "horace_get_file_info", {"file_id": "x", "n": [1, 2]}, 3)
    assert CallRecord(*record_message(made)) == made
    ended = attrs.evolve(made, response_turn=4, result={"isError": False}, error_code="E", timing_ms=1.5)
    assert CallRecord(*record_message(ended)) == ended
    sent = attrs.evolve(ended, file_ids=("a", "b"), result_json='{"isError": false}')
    assert CallRecord(*record_message(sent)) == attrs.evolve(sent, result=None)  # the reply once


async def test_calls_and_log_records_reach_both_sinks_through_the_child(settings: Settings) -> None:
    async with (
        godot_standin() as godot,
        run_horace(in_child(settings, godot_url=godot.url, conversations_to_godot=True)) as horace,
    ):
        write(horace.files / "user/a.txt", "a")
        async with connect(horace.url) as client:
            before = datetime.now().astimezone()
            registered = await call(
                client,
                "horace_register_file",
                "p-reg",
                file_path="user/a.txt",
                metadata={"api_key": "sk-LEAK"},
            )
            file_id = registered["result"]["structuredContent"]["file_id"]
            await call(client, "horace_get_file_info", "p-info", file_id=file_id)
            after = datetime.now().astimezone()
            conversation_id = next(iter(horace.server.sessions)).conversation_id
        await drained(horace)
        await godot.wait_until(lambda: any(c["message"] == "session closed" for c in godot.calls))
        status = sinks_of(horace)
        assert set(status) == {"godot", "conversations"}
        assert status["conversations"]["state"] == "connected" and status["conversations"]["delivered"] == 4
        part = process_part(horace)
        assert part["state"] == "running" and part["starts"] == 1 and part["dropped"] == 0
        child = part["pid"]
        assert child in children_of(os.getpid()) and alive(child)
        code, body = await horace.server.health()
        assert code == 200 and body["sink_process"]["pid"] == child
    assert not alive(child)  # ended with the server
    lines = {c["trace_id"]: c for c in godot.calls if c["message"].startswith("tools/call")}
    assert lines["p-info"]["data"]["file_ids"] == [file_id] and lines["p-info"]["data"]["outcome"] == "ok"
    turns = [c for c in godot.calls if c["level"] == "DEBUG" and c["trace_id"] == "p-reg"]
    assert len(turns) == 2 and "sk-LEAK" not in json.dumps(turns)  # redacted in the child too
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation_id]
    assert [(r["turn_number"], r["role"]) for r in rows] == [
        (1, "user"),
        (2, "assistant"),
        (3, "user"),
        (4, "assistant"),
    ]
    assert [r["metadata"]["correlation_id"] for r in rows] == ["p-reg"] * 2 + ["p-info"] * 2
    stamps = [r["created_at"] for r in rows]
    stamps = [datetime.fromisoformat(s) if isinstance(s, str) else s for s in stamps]
    # Each turn carries the time of its call's start or end, not of its arrival in the child.
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= stamps[3] <= after


async def test_the_child_runs_the_servers_horace_not_one_in_the_working_directory(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``horace serve`` started in a folder that holds a ``horace`` package (another
    checkout, say): the child imports the server's Horace, as the server did."""
    shadow = tmp_path / "elsewhere" / "horace"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the horace of the working directory')\n")
    monkeypatch.chdir(shadow.parent)
    async with run_horace(in_child(settings)) as horace, connect(horace.url) as client:
        await call(client, "horace_search_files", "cwd-0")
        await drained(horace)
        assert process_part(horace)["starts"] == 1 and process_part(horace)["last_error"] is None
        assert process_part(horace)["ok"] and process_part(horace)["why"] is None


async def test_a_stopping_server_hands_over_every_call_it_still_queues(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer waits long (30 s) before it hands anything over: every record is still
    in the server's queue when it stops, and reaches the database through the shutdown."""
    monkeypatch.setattr(sinkprocess, "GATHER", 30.0)
    async with run_horace(in_child(settings)) as horace, connect(horace.url) as client:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(partial(call, client, "horace_search_files", f"q-{i}"))
        conversation_id = next(iter(horace.server.sessions)).conversation_id
        assert process_part(horace)["queued"] == 40 and process_part(horace)["handed"] == 0
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation_id]
    assert [r["turn_number"] for r in rows] == list(range(1, 41))


async def test_a_server_serves_once_its_sink_process_is_spawned(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child is spawned (from a worker thread) before the server serves: a fork made
    while a working file was open for writing in the server's process would hold that
    file open in the child for a moment, and a register of it would be ``FILE_LOCKED``.
    A child that cannot be spawned holds up no start: the server serves, degraded."""
    async with run_horace(in_child(settings)) as horace:
        part = process_part(horace)
        assert (part["state"], part["starts"], part["ok"]) == ("running", 1, True), part
        assert alive(part["pid"])

    async def unspawnable(*args: Any, **kwargs: Any) -> Any:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(sinkprocess.trio.lowlevel, "open_process", unspawnable)
    async with run_horace(in_child(settings, sink_backoff_base=60.0)) as horace:
        part = process_part(horace)
        assert (part["state"], part["starts"], part["ok"]) == ("retrying", 0, False), part
        assert "Resource temporarily unavailable" in part["why"], part


async def test_a_killed_sink_process_is_started_again_and_the_calls_go_on(settings: Settings) -> None:
    async with run_horace(in_child(settings)) as horace, connect(horace.url) as client:
        await call(client, "horace_search_files", "k-0")
        conversation_id = next(iter(horace.server.sessions)).conversation_id
        await drained(horace)
        first = process_part(horace)["pid"]
        os.kill(first, signal.SIGKILL)
        for i in range(1, 6):  # while it is dead: queued, then handed to the next
            await call(client, "horace_search_files", f"k-{i}")
        await eventually(lambda: process_part(horace)["starts"] == 2, 30, "a second sink process")
        await drained(horace)
        assert process_part(horace)["lost"] == 0  # (it held nothing when it was killed)
        assert process_part(horace)["last_error"] in {
            "the sink process ended with exit code -9",
            "the sink process failed: _ChildGone: its stdin is closed (Broken pipe)",
        }
        assert process_part(horace)["pid"] != first and alive(process_part(horace)["pid"])
    rows = [r for r in await stored_turns(settings.catalog_url) if r["conversation_id"] == conversation_id]
    assert [r["turn_number"] for r in rows] == list(range(1, 13))  # before the kill and after


async def test_a_hung_sink_process_is_said_not_ok(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that takes nothing handed to it (stopped: SIGSTOP, a disk that blocks it)
    says nothing more either: its last report said all was well. Entries handed to it
    and not taken for STALLED_SECONDS make it not ok, and the server degraded, until it
    takes them."""
    monkeypatch.setattr("horace.server.sinkprocess.STALLED_SECONDS", 1.0)
    async with run_horace(in_child(settings)) as running, connect(running.url) as client:
        await call(client, "horace_search_files", "before")
        await drained(running)
        child = process_part(running)["pid"]
        os.kill(child, signal.SIGSTOP)
        try:
            for i in range(3):
                await call(client, "horace_search_files", f"hung-{i}")
            await eventually(lambda: process_part(running)["ok"] is False, 10, "the hung child said")
            part = process_part(running)
            assert "has taken none of the" in part["why"] and "(hung?)" in part["why"], part
            assert (await running.server.health())[1]["status"] == "degraded"
        finally:
            os.kill(child, signal.SIGCONT)
        await eventually(lambda: process_part(running)["ok"] is True, 10, "ok once it takes them")
        assert process_part(running)["pid"] == child


async def test_what_a_killed_sink_process_never_took_is_counted_as_lost(settings: Settings) -> None:
    """Handed to a child that never took it (stopped, then killed): in the pipe that died
    with it, counted in `lost` (it was counted nowhere)."""
    async with run_horace(in_child(settings)) as running, connect(running.url) as client:
        await call(client, "horace_search_files", "before")
        await drained(running)
        child = process_part(running)["pid"]
        os.kill(child, signal.SIGSTOP)
        for i in range(3):
            await call(client, "horace_search_files", f"never-taken-{i}")
        await eventually(lambda: process_part(running)["handed"] == 8, 10, "the turns handed")
        os.kill(child, signal.SIGKILL)
        await eventually(lambda: process_part(running)["starts"] == 2, 30, "a second sink process")
        part = process_part(running)
        assert part["lost"] == 6, part


async def test_what_a_killed_sink_process_held_is_counted_as_lost(settings: Settings) -> None:
    """A child killed outright cannot spill: the entries its sinks held (as it last said)
    are counted in `lost`, not forgotten with it."""
    async with godot_standin(listening=False) as godot:
        configured = in_child(settings, godot_url=godot.url, conversations=False)
        async with run_horace(configured) as horace, connect(horace.url) as client:
            for i in range(5):
                await call(client, "horace_search_files", f"held-{i}")
            await eventually(lambda: sinks_of(horace)["godot"].get("queued", 0) >= 5, 30, "entries held")
            held = sinks_of(horace)["godot"]["queued"]
            os.kill(process_part(horace)["pid"], signal.SIGKILL)
            await eventually(lambda: process_part(horace)["starts"] == 2, 30, "a second sink process")
            assert process_part(horace)["lost"] >= held >= 5


async def test_the_sink_process_waits_for_the_server_not_for_signals(settings: Settings) -> None:
    """A service manager may signal every process of the service (a terminal's Ctrl-C
    reaches only the server's group): the child goes on until the server closes its stdin,
    delivering what it is given."""
    async with run_horace(in_child(settings)) as horace, connect(horace.url) as client:
        await call(client, "horace_search_files", "s-0")
        await drained(horace)
        child = process_part(horace)["pid"]
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)
        await call(client, "horace_search_files", "s-1")
        await drained(horace)
        assert alive(child) and process_part(horace)["starts"] == 1
        assert sinks_of(horace)["conversations"]["delivered"] == 4


@pytest.mark.parametrize("sink_process", [False, True], ids=["here", "child"])
async def test_a_server_killed_outright_loses_no_turn_it_handed_over(
    settings: Settings, tmp_path: Path, sink_process: bool
) -> None:
    """SIGKILL to ``horace serve``: the child sees its stdin end, stores every turn it was
    handed, and ends (no orphan). With the sinks in the server, what they held is lost."""
    storage = settings.storage_path
    env = {"HORACE_SINK_PROCESS": "on" if sink_process else "off", "HORACE_SINK_LINGER": "60s"}
    with horace_process(storage, env, settings.database_url) as server:
        url = f"ws://127.0.0.1:{server.port}/mcp"
        async with connect(url) as client:
            for i in range(10):
                await call(client, "horace_search_files", f"x-{i}")

        def health() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as answer:
                return dict(json.load(answer))

        def handed_over() -> bool:
            part = health().get("sink_process")
            return bool(part) and part["queued"] == 0 and part["received"] == part["handed"] == 20

        if sink_process:
            with trio.fail_after(20):
                while not await trio.to_thread.run_sync(handed_over):
                    await trio.sleep(0.05)
        children = children_of(server.pid)
        assert len(children) == (1 if sink_process else 0)
        server.process.kill()
        server.process.wait()
        with trio.fail_after(20):
            while any(alive(child) for child in children):
                await trio.sleep(0.05)
    stored = [
        r
        for r in await stored_turns(settings.catalog_url)
        if r["metadata"]["correlation_id"].startswith("x-")
    ]
    # The sinks' linger (60 s) held every turn back from the database when the server died.
    assert len(stored) == (20 if sink_process else 0)


async def test_a_spill_of_the_child_is_replayed_by_the_next(settings: Settings) -> None:
    async with godot_standin(listening=False) as godot:
        configured = in_child(settings, godot_url=godot.url, conversations=False, sink_flush=0.5)
        async with run_horace(configured) as first, connect(first.url) as client:
            for i in range(5):
                await call(client, "horace_search_files", f"spill-{i}")
            await eventually(lambda: process_part(first)["received"] == process_part(first)["handed"] > 0)
        spool = settings.storage_path / ".horace" / "spool" / "godot.jsonl"
        spilled = [json.loads(line)["trace_id"] for line in spool.read_text().splitlines()]
        assert {f"spill-{i}" for i in range(5)} <= set(spilled)
        await godot.start()
        async with run_horace(configured) as second:
            await eventually(lambda: sinks_of(second).get("godot", {}).get("replayed") == len(spilled))
            await eventually(lambda: sinks_drained(second))
        assert [c["trace_id"] for c in godot.calls[: len(spilled)]] == spilled
    assert not spool.exists()


async def test_a_conversation_database_that_is_down_costs_no_call_and_not_godots_log(
    settings: Settings,
) -> None:
    """The conversation database cannot be opened (down at the start): the calls are
    answered, Godot gets every call's line, the turns wait in their queue while the sink
    retries, and /health says why. The sink process is not started again for it."""
    down = "postgresql://nobody@127.0.0.1:1/nowhere"
    async with godot_standin() as godot:
        configured = in_child(settings, conversations_url=down, godot_url=godot.url)
        async with run_horace(configured) as horace:
            async with connect(horace.url) as client:
                for i in range(3):
                    reply = await call(client, "horace_search_files", f"d-{i}")
                    assert reply["result"]["isError"] is False
            wanted = {f"d-{i}" for i in range(3)}
            await godot.wait_until(lambda: wanted <= {c.get("trace_id") for c in godot.calls})
            await eventually(
                lambda: sinks_of(horace)["conversations"].get("state") == "retrying", 30, "a retry"
            )
            conversations = sinks_of(horace)["conversations"]
            assert (conversations["queued"], conversations["dropped"]) == (6, 0), conversations
            assert "127.0.0.1:1" in conversations["last_error"], conversations
            assert sinks_of(horace)["godot"]["state"] == "connected"
            code, body = await horace.server.health()
            assert (code, body["status"], body["sink_process"]["starts"]) == (200, "degraded", 1), body
            assert body["sink_process"]["why"] == "not ok in the child: conversations (see sinks)", body


async def test_a_log_record_made_on_a_worker_thread_reaches_godot(settings: Settings) -> None:
    async with godot_standin() as godot, run_horace(in_child(settings, godot_url=godot.url)) as horace:
        said = logging.getLogger("horace.test")
        await trio.to_thread.run_sync(said.warning, "from a worker thread")
        said.warning("from the event loop")
        await godot.wait_until(
            lambda: {"from a worker thread", "from the event loop"} <= {c["message"] for c in godot.calls}
        )
        assert process_part(horace)["dropped"] == 0


async def test_horace_watch_sends_its_log_to_godot(settings: Settings) -> None:
    """`horace watch` (watch mode, no server) sends Horace's log to Godot as a server
    does: what it said as the store opened (a warning: files/ held files already), and
    what it says as it watches. It has no calls, so no conversation log."""
    write(settings.storage_path / "files/user/w.txt", "w")
    async with godot_standin() as godot, trio.open_nursery() as nursery:
        nursery.start_soon(run_watch, attrs.evolve(in_child(settings), godot_url=godot.url))
        await godot.wait_until(
            lambda: any(c["message"].startswith("a new store is made") for c in godot.calls)
        )
        logging.getLogger("horace.test").warning("from the watch")
        await godot.wait_until(lambda: "from the watch" in {c["message"] for c in godot.calls})
        nursery.cancel_scope.cancel()
    assert not await stored_turns(settings.catalog_url)


async def test_horace_watch_without_godot_starts_no_sink_process(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With no Godot, `horace watch` has no sink to run (the conversation log, on by
    default, has no calls to keep): it starts no sink process."""
    async with trio.open_nursery() as nursery:
        with caplog.at_level(logging.INFO, logger="horace"):
            nursery.start_soon(run_watch, in_child(settings))
            await eventually(lambda: "until a stop signal" in caplog.text, 30, "watching")
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children_of(os.getpid())]
        assert not [c for c in commands if sinkprocess.CHILD_CODE.encode() in c], commands
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(BACKEND != "postgres", reason="a database (schema) put in place of another: PostgreSQL's")
async def test_the_sink_process_never_makes_the_catalogs_tables(
    settings: Settings, other_database_url: str
) -> None:
    """The catalog's database replaced under the server by an empty one: the conversation
    log, which goes to the catalog's database, waits for it (its turns queued) and never
    makes Horace's tables there, which would make the empty database look a catalog."""
    old = dict(parse_qsl(urlsplit(settings.catalog_url).query))["search_path"]
    new = dict(parse_qsl(urlsplit(other_database_url).query))["search_path"]
    async with run_horace(in_child(settings)) as horace, connect(horace.url) as client:
        await call(client, "horace_search_files", "before")
        await eventually(
            lambda: sinks_of(horace).get("conversations", {}).get("delivered") == 2, 30, "delivery"
        )
        swap = [f"ALTER SCHEMA {old} RENAME TO {old}_moved", f"ALTER SCHEMA {new} RENAME TO {old}"]
        await trio.to_thread.run_sync(pg_execute, *swap)
        try:
            await call(client, "horace_search_files", "during")  # (answered BACKEND_UNAVAILABLE)
            await eventually(lambda: sinks_of(horace)["conversations"]["state"] == "retrying", 30, "a retry")
            with trio.move_on_after(2):  # (past many of the sink's backoffs and reopenings)
                while sinks_of(horace)["conversations"]["state"] != "connected":
                    await trio.sleep(0.05)
            made = await trio.to_thread.run_sync(
                pg_fetchval, f"SELECT count(*) FROM pg_tables WHERE schemaname = '{old}'"
            )
            assert made == 0, "Horace's tables made in the database put in the catalog's place"
            assert sinks_of(horace)["conversations"]["queued"] == 2
        finally:
            back = [f"ALTER SCHEMA {old} RENAME TO {new}", f"ALTER SCHEMA {old}_moved RENAME TO {old}"]
            await trio.to_thread.run_sync(pg_execute, *back)
        await eventually(
            lambda: sinks_of(horace).get("conversations", {}).get("delivered") == 4, 60, "the turns kept"
        )
