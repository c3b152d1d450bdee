"""MCP over stdin and stdout: ``python -m horace mcp`` as a desktop client runs it.

Raw tests speak to the process line by line: the handshake, a call, progress, malformed
and over-long lines (and the memory an endless line costs), the ways a session ends
(stdin closed, stdout closed, SIGTERM), a cancelled call leaving nothing half-written,
and a server and a stdio session writing the same files. Then the official SDK's stdio
clients, 1.x in this process and 2.x from a venv of its own (``tests/sdk2.py``), drive
every tool (``tests/tour.py``) and read versions as resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import attrs
import pytest
import sdk2
import tour
import trio
from helpers import godot_that_never_answers, sha256, tool_body, write
from mcp_client import connect
from soundness import assert_sound, check_file_versions
from test_sinks import stored_turns

import horace
from horace.assemble import StartCheck, open_catalog
from horace.backends.records import SearchQuery
from horace.config import Settings
from horace.fsck import fsck
from horace.testing import run_horace

EXIT_WITHIN = 15.0  # seconds a session may take to end once asked (the sinks flush)


def mcp_env(storage: Path, database_url: str, **settings: str) -> dict[str, str]:
    """The whole environment of a `horace mcp` process, as a client configures it (the
    test's PYTHONPATH kept: it says which Horace runs)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    return {**clean, "HORACE_STORAGE_PATH": str(storage), "HORACE_DATABASE_URL": database_url, **settings}


MCP_COMMAND = [sys.executable, "-m", "horace", "mcp"]


@attrs.define
class StdioProcess:
    """``horace mcp`` as a child process: requests matched to replies by id; every line
    of stdout kept in order (each must be one JSON-RPC message), stderr kept whole."""

    process: trio.Process
    received: list[Any] = attrs.field(factory=list)  # every message, in order
    not_json: list[bytes] = attrs.field(factory=list)
    stderr: bytearray = attrs.field(factory=bytearray)
    stdout_done: trio.Event = attrs.field(factory=trio.Event)
    _waiting: dict[Any, trio.MemorySendChannel[Any]] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _arrived: trio.Event = attrs.field(factory=trio.Event)

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        partial = b""
        try:
            while chunk := await self.process.stdout.receive_some(65536):
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    self._dispatch(line)
        except trio.ClosedResourceError:
            pass  # closed by the test (the client closing its end): nothing more to read
        if partial:
            self.not_json.append(partial)  # a last line without its newline
        self.stdout_done.set()

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self.not_json.append(line)
            return
        self.received.append(message)
        self._arrived.set()
        self._arrived = trio.Event()
        if isinstance(message, dict) and message.get("id") in self._waiting:
            self._waiting.pop(message["id"]).send_nowait(message)

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(65536):
            self.stderr += chunk

    def log_records(self) -> list[dict[str, Any]]:
        """stderr, which must be JSON log lines only."""
        return [json.loads(line) for line in self.stderr.decode().splitlines()]

    async def send_line(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data + b"\n")

    async def request(self, method: str, params: Any = None) -> dict[str, Any]:
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[Any](1)
        self._waiting[request_id] = send
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send_line(json.dumps(message).encode())
        with trio.fail_after(120):
            return await receive.receive()  # type: ignore[no-any-return]

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """The tool's structuredContent; fails the test on an error."""
        reply = await self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in reply and not reply["result"]["isError"], reply
        return reply["result"]["structuredContent"]  # type: ignore[no-any-return]

    async def initialize(self) -> dict[str, Any]:
        reply = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "tests", "version": "0"},
            },
        )
        await self.send_line(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        return reply["result"]  # type: ignore[no-any-return]

    async def received_until(self, enough: Callable[[list[Any]], bool]) -> list[Any]:
        """The messages received, once *enough* says they are."""
        with trio.fail_after(30):
            while not enough(self.received):
                await self._arrived.wait()
        return self.received

    async def null_id_errors(self, count: int) -> list[dict[str, Any]]:
        """Wait for *count* errors with a null id (replies to lines that had no id to give)."""

        def errors(received: list[Any]) -> list[dict[str, Any]]:
            return [m for m in received if isinstance(m, dict) and "id" in m and m["id"] is None]

        return errors(await self.received_until(lambda received: len(errors(received)) >= count))

    async def close_stdin(self) -> int:
        """End the session as a client does; the exit status."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        return await self.exited()

    async def exited(self) -> int:
        with trio.fail_after(EXIT_WITHIN):
            return await self.process.wait()


@asynccontextmanager
async def horace_mcp(env: dict[str, str]) -> AsyncIterator[StdioProcess]:
    process = await trio.lowlevel.open_process(
        MCP_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    client = StdioProcess(process)
    async with trio.open_nursery() as readers:
        readers.start_soon(client.read_stdout)
        readers.start_soon(client.read_stderr)
        try:
            yield client
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert client.not_json == [], client.not_json[:3]  # nothing but JSON-RPC on stdout, ever


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "store"  # not made: `horace mcp` makes it, as on a client's first run


@pytest.fixture
def env(storage: Path, database_url: str) -> dict[str, str]:
    return mcp_env(storage, database_url)


# -- one session, line by line ------------------------------------------------------------------


async def test_a_first_run_creates_the_store_and_serves(
    storage: Path, env: dict[str, str], database_url: str
) -> None:
    async with horace_mcp(env) as client:
        init = await client.initialize()
        assert init["protocolVersion"] == "2025-06-18"
        assert init["serverInfo"]["name"] == "horace" and init["serverInfo"]["version"] == horace.__version__
        assert (storage / ".horace").is_dir()
        listed = await client.request("tools/list")
        assert {tool["name"] for tool in listed["result"]["tools"]} == tour.TOOL_NAMES
        write(storage / "files/user/notes.txt", "line one\nline two\n")
        registered = await client.call("horace_register_file", file_path="user/notes.txt")
        assert registered["current_version"] == 1 and registered["file"]["checksum"] == sha256(
            "line one\nline two\n"
        )
        diff = await client.call("horace_diff_versions", file_id=registered["file_id"], from_version=1)
        assert diff["identical"] is True
        assert (await client.request("ping"))["result"] == {}
        assert await client.close_stdin() == 0
    # One line a message, and no reply to the notification.
    assert [m.get("id") for m in client.received] == [1, 2, 3, 4, 5]
    records = client.log_records()
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    closed = [r for r in records if r["message"].startswith("stdio session closed")]
    assert [r["message"] for r in closed] == ["stdio session closed: stdin closed"]
    # The conversation sink ran: the register call's two turns are stored.
    turns = [
        t for t in await stored_turns(database_url) if t["conversation_id"] == closed[0]["conversation_id"]
    ]
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2, turns


async def test_a_cancel_read_right_behind_its_request_stops_it(env: dict[str, str]) -> None:
    """A call and its cancel in one write, read from one buffer with no wait between:
    the call stops and answers nothing, every time (its task and the cancel's, started
    side by side, ran in either order, and a cancel run first found nothing to stop)."""
    rounds = 16
    async with horace_mcp(env) as client:
        await client.initialize()
        for n in range(rounds):
            call = {"jsonrpc": "2.0", "id": f"call-{n}", "method": "tools/call"}
            call["params"] = {"name": "horace_verify", "arguments": {}}
            cancel = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": f"call-{n}"},
            }
            await client.send_line(f"{json.dumps(call)}\n{json.dumps(cancel)}".encode())
            assert (await client.request("ping"))["result"] == {}
        await trio.sleep(0.5)  # (a call not cancelled answers meanwhile)
        assert (await client.request("ping"))["result"] == {}
    answered = [m["id"] for m in client.received if str(m.get("id")).startswith("call-")]
    assert answered == [], f"{len(answered)} of {rounds} cancelled calls answered"


async def test_scan_sends_progress_before_its_reply(storage: Path, env: dict[str, str]) -> None:
    count = 300
    for n in range(count):
        write(storage / f"files/shared/batch/{n // 50}/file-{n:04}.txt", f"content {n}\n")
    async with horace_mcp(env) as client:
        await client.initialize()
        reply = await client.request(
            "tools/call", {"name": "horace_scan", "arguments": {}, "_meta": {"progressToken": "scan-1"}}
        )
        assert reply["result"]["structuredContent"]["registered"] == count, reply
        assert await client.close_stdin() == 0
    progress = [m for m in client.received if m.get("method") == "notifications/progress"]
    assert progress, "no progress notification"
    assert all(p["params"]["progressToken"] == "scan-1" for p in progress)
    done = [p["params"]["progress"] for p in progress]
    assert done == sorted(done) and done[-1] == count and progress[-1]["params"]["total"] == count
    assert client.received.index(reply) > client.received.index(progress[-1])


async def test_malformed_and_over_long_lines(env: dict[str, str]) -> None:
    limit = 64 * 1024
    async with horace_mcp({**env, "HORACE_MAX_MESSAGE_BYTES": str(limit)}) as client:
        await client.initialize()
        await client.send_line(b"this is not JSON")
        await client.send_line(b'{"jsonrpc": "2.0", "id": 9, "method": "ping", "x": "\xff\xfe"}')  # not UTF-8
        await client.send_line(b"")
        await client.send_line(b"   ")  # blank lines carry nothing, and get nothing
        parse_errors = await client.null_id_errors(2)
        assert [e["error"]["code"] for e in parse_errors] == [-32700, -32700], parse_errors

        # A line of exactly the limit is read; one byte more is answered once, and skipped.
        # Its error answers the request's id where the line's start or end gives it (first,
        # as the Python SDK writes it; last, as the TypeScript SDK does): a client's call
        # fails at once instead of waiting for an answer that never comes.
        ping = b'{"jsonrpc": "2.0", "id": "at-limit", "method": "ping"}'
        await client.send_line(ping + b" " * (limit - len(ping)))
        await client.send_line(b'{"jsonrpc": "2.0", "id": "over", "method": "ping"}' + b" " * limit)
        await client.send_line(b'{"pad": "' + b"x" * (10 * limit) + b'"}')  # many reads long
        pad = b"y" * (3 * limit)
        await client.send_line(
            b'{"method": "ping", "params": {"pad": "' + pad + b'"}, "jsonrpc": "2.0", "id": 7}'
        )
        batch = [{"jsonrpc": "2.0", "id": n, "method": "ping"} for n in ("b1", "b2")]
        await client.send_line(json.dumps(batch).encode())
        after = await client.request("ping")  # the line after an over-long one is read whole
        assert after["result"] == {}
        errors = await client.null_id_errors(3)
        too_long = [e for e in errors if e["error"]["code"] == -32600]
        assert len(too_long) == 1 and "exceeds the limit" in too_long[0]["error"]["message"]
        received = await client.received_until(
            lambda got: {"over", 7} <= {m.get("id") for m in got if isinstance(m, dict)}
        )
        by_id = {m.get("id"): m for m in received if isinstance(m, dict)}
        assert by_id["at-limit"]["result"] == {}
        for request_id in ("over", 7):
            refused = by_id[request_id]["error"]
            assert refused["code"] == -32600 and "exceeds the limit" in refused["message"], refused
        received = await client.received_until(lambda got: any(isinstance(m, list) for m in got))
        batches = [m for m in received if isinstance(m, list)]
        assert [sorted(r["id"] for r in b) for b in batches] == [["b1", "b2"]]
        assert await client.close_stdin() == 0


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


async def test_an_endless_line_is_never_held(env: dict[str, str]) -> None:
    """200 MiB without a newline, against a 1 MiB limit: the process drops it as it
    reads (its peak memory grows by far less than the line), answers once, and goes on."""
    async with horace_mcp({**env, "HORACE_MAX_MESSAGE_BYTES": str(1 << 20)}) as client:
        await client.initialize()
        before = peak_rss_kib(client.process.pid)
        block = b"x" * (1 << 20)
        for _ in range(200):
            assert client.process.stdin is not None
            await client.process.stdin.send_all(block)
        await client.send_line(b"")  # the newline that ends it
        assert (await client.request("ping"))["result"] == {}
        grown = peak_rss_kib(client.process.pid) - before
        assert grown < 64 * 1024, f"peak memory grew by {grown} KiB for a 200 MiB line"
        errors = await client.null_id_errors(1)
        assert len(errors) == 1 and errors[0]["error"]["code"] == -32600
        assert await client.close_stdin() == 0


async def test_stdout_closed_by_the_client_ends_the_session(env: dict[str, str]) -> None:
    async with horace_mcp(env) as client:
        await client.initialize()
        assert client.process.stdout is not None
        await client.process.stdout.aclose()
        await client.stdout_done.wait()
        # Its reply cannot go out; the session may have ended already (the closed pipe is
        # seen as it closes), and with it the process's stdin.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_line(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
        assert await client.exited() == 0
    assert any(r["message"].startswith("stdio session closed: stdout closed") for r in client.log_records())


async def test_stdout_closed_ends_the_session_at_once_with_nothing_to_write(env: dict[str, str]) -> None:
    """No reply due: the closed pipe is seen as it closes (the calls running then are
    cancelled at once), not at the next write, which may come late or never."""
    async with horace_mcp(env) as client:
        await client.initialize()
        assert client.process.stdout is not None
        await client.process.stdout.aclose()
        with trio.fail_after(10):
            assert await client.exited() == 0  # (stdin still open)
    assert "stdio session closed: stdout closed" in [r["message"] for r in client.log_records()]


def test_replies_a_full_disk_cannot_take_end_the_session_with_exit_74(env: dict[str, str]) -> None:
    """stdout that cannot take a reply (a full disk: /dev/full), unlike one the client
    closed, loses the replies: the session ends, said as a warning and exit 74 (OUTPUT)."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "horace", "mcp"],
            input=(json.dumps(initialize) + "\n").encode(),
            stdout=full,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode == 74, stderr
    assert "a reply could not be written to stdout (No space left on device)" in stderr
    assert "horace: error: OUTPUT: replies could not be written to stdout" in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_sigterm_or_a_hang_up_ends_the_session(env: dict[str, str], signum: signal.Signals) -> None:
    async with horace_mcp(env) as client:
        await client.initialize()
        client.process.send_signal(signum)
        assert await client.exited() == 0
    assert f"stdio session closed: signal {signum.name}" in [r["message"] for r in client.log_records()]


async def test_stdin_closed_then_one_sigterm_is_a_clean_stop(env: dict[str, str]) -> None:
    """As the official SDKs' clients stop a server: stdin closed, then SIGTERM 2 s later
    (here, while the sinks flush for up to 3 s: a Godot that never answers). One signal
    is no second one: the stop goes on, and ends clean (0)."""
    with godot_that_never_answers() as godot:
        async with horace_mcp({**env, **godot}) as client:
            await client.initialize()
            assert client.process.stdin is not None
            await client.process.stdin.aclose()
            await trio.sleep(1.0)
            client.process.send_signal(signal.SIGTERM)
            assert await client.exited() == 0
        stderr = client.stderr.decode()
        assert "signal SIGTERM: shutting down" in stderr and "second signal" not in stderr, stderr
        assert "INTERRUPTED" not in stderr, stderr


async def test_a_second_signal_while_the_sinks_flush_is_a_ctrl_c(env: dict[str, str]) -> None:
    """The first signal ends the session, then the sinks flush (here for up to 3 s: a
    Godot that takes connections and never answers). A second signal then ends the
    process as a Ctrl-C does (130), not by its default (143 for SIGTERM), as `serve`."""
    with godot_that_never_answers() as godot:
        async with horace_mcp({**env, **godot}) as client:
            await client.initialize()
            client.process.send_signal(signal.SIGINT)
            await trio.sleep(1.0)  # (the session has ended; the sinks are flushing)
            client.process.send_signal(signal.SIGTERM)
            assert await client.exited() == 130
        stderr = client.stderr.decode()
        assert "stdio session closed: signal SIGINT" in stderr and "second signal: stopping now" in stderr
        assert stderr.endswith(
            "horace: error: INTERRUPTED: interrupted: what was done is kept, nothing is half-done; "
            "run it again to go on\n"
        ), stderr


@pytest.mark.parametrize("replaced", ["catalog-file", "store-folder"])
async def test_a_store_replaced_under_a_session_ends_it(
    storage: Path, env: dict[str, str], database_url: str, replaced: str
) -> None:
    """A desktop client keeps its process for its whole session: a backup restored under
    it (the catalog file, or the whole store folder, put in place anew) stops it within
    seconds, as it stops a server, instead of going on telling its client of versions
    written into what is no longer the store's catalog."""
    if replaced == "catalog-file" and not database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL catalog is no file in the store")  # (the folder case runs)
    write(storage / "files/user/a.txt", "one")
    async with horace_mcp(env) as client:
        await client.initialize()
        await client.call("horace_register_file", file_path="user/a.txt")
        if replaced == "catalog-file":
            catalog = Path(database_url.removeprefix("sqlite://"))
            with sqlite3.connect(catalog) as live, sqlite3.connect(storage / "backup.db") as backup:
                live.backup(backup)
            os.replace(storage / "backup.db", catalog)  # (a new inode, as rsync and mv give)
        else:
            copy = storage.with_name("store.copy")
            shutil.copytree(storage, copy, symlinks=True)
            storage.rename(storage.with_name("store.before"))
            copy.rename(storage)
        assert await client.exited() == 5  # STORE_REFUSED
    said = client.stderr.decode().splitlines()[-1]
    assert said.startswith("horace: error: STORE_REFUSED: ") and "nothing more is written" in said, said


def damage_every_table(catalog: Path) -> None:
    """Write over the first page of each table and index of the SQLite file *catalog*
    (checkpointed first, so that every page is read from the file), in place: the same
    inode, as a copy into the open file writes it."""
    with contextlib.closing(sqlite3.connect(catalog)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [r for (r,) in conn.execute("SELECT rootpage FROM sqlite_master WHERE rootpage > 1")]
    with catalog.open("r+b") as file:
        for root in roots:
            file.seek((root - 1) * page_size)
            file.write(b"\xa5" * page_size)


async def test_a_catalog_found_damaged_under_a_session_ends_it(
    storage: Path, env: dict[str, str], database_url: str
) -> None:
    """A backup copied into the open catalog file (not renamed into place: the same file)
    damages it under the process, which would go on acknowledging versions that the file
    cannot keep: the call that meets the damage says so, and the session ends within
    seconds (STORE_REFUSED), as for a catalog replaced."""
    if not database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL catalog is no file in the store")
    write(storage / "files/user/a.txt", "one")
    async with horace_mcp(env) as client:
        await client.initialize()
        await client.call("horace_register_file", file_path="user/a.txt")
        damage_every_table(Path(database_url.removeprefix("sqlite://")))
        reply = await client.request("tools/call", {"name": "horace_search_files", "arguments": {}})
        met = tool_body(reply["result"])
        assert met["error_code"] == "STORAGE_ERROR" and "is damaged" in met["message"], (met, client.stderr)
        assert await client.exited() == 5  # STORE_REFUSED
    said = client.stderr.decode().splitlines()[-1]
    assert said.startswith("horace: error: STORE_REFUSED: ") and "is damaged" in said, said
    assert "Found while this process ran" in said and "nothing more is written" in said, said


def test_messages_piped_in_before_stdin_ends_are_answered(storage: Path, env: dict[str, str]) -> None:
    """`printf '...' | horace mcp`: stdin ends right after the messages, the last without
    its newline, and each request is still answered (a tool call included) before the
    process exits 0."""
    write(storage / "files/user/piped.txt", "piped in")
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "horace_register_file", "arguments": {"file_path": "user/piped.txt"}},
        },
    ]
    last = {"jsonrpc": "2.0", "id": 4, "method": "ping"}  # (no newline after it)
    done = subprocess.run(
        MCP_COMMAND,
        input="".join(json.dumps(m) + "\n" for m in messages) + "{garbage\n" + json.dumps(last),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    replies = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(replies) == {1, 2, 3, 4, None}, done.stdout
    assert replies[None]["error"]["code"] == -32700
    assert len(replies[2]["result"]["tools"]) == len(tour.TOOL_NAMES)
    registered = tool_body(replies[3]["result"])
    assert registered["file"]["checksum"] == sha256("piped in"), registered


async def test_stdin_closed_mid_restore_leaves_nothing_half_written(
    storage: Path, env: dict[str, str], settings: Settings
) -> None:
    """The client goes away while a restore runs, with no grace for running calls: the
    call is cancelled, the process exits 0, and the file is whole: the unsaved content, or
    version 1 with the unsaved content kept as a version first."""
    settings = attrs.evolve(settings, storage_path=storage)
    env = {**env, "HORACE_SHUTDOWN_GRACE": "0"}
    path = write(storage / "files/user/big.bin", os.urandom(32 << 20))
    async with open_catalog(settings, create=True) as catalog:
        file = (await catalog.register("user/big.bin")).file
    outcomes = []
    for delay in (0.0, 0.01, 0.05, 0.2, 0.5):
        unsaved = os.urandom(32 << 20)
        path.write_bytes(unsaved)
        async with horace_mcp(env) as client:
            await client.initialize()
            await client.send_line(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "tools/call",
                        "params": {
                            "name": "horace_restore_version",
                            "arguments": {"file_id": file.id, "version": 1},
                        },
                    }
                ).encode()
            )
            await trio.sleep(delay)
            assert await client.close_stdin() == 0
        calls = [r for r in client.log_records() if r.get("tool") == "horace_restore_version"]
        outcomes += [r["outcome"] for r in calls]
        async with open_catalog(settings, check=StartCheck.NONE) as catalog:
            report = await fsck(catalog, deep=True)
            assert report.clean, report.findings
            now_there = sha256(path.read_bytes())
            assert now_there in {sha256(unsaved), file.checksum}  # one or the other, never torn
            if now_there == file.checksum:  # restored: the unsaved content was kept first
                versions = await catalog.backend.versions(file.id)
                assert sha256(unsaved) in {v.checksum for v in versions}
    print(f"restore outcomes: {outcomes}")
    assert "cancelled" in outcomes, f"no restore was cancelled by the end of stdin: {outcomes}"


def test_only_the_protocol_reaches_stdout_and_reads_stdin() -> None:
    """After claim_stdio(), a stray print (Horace's or a library's) lands on stderr, and
    a stray read of stdin finds nothing: stdin and stdout are the protocol's alone."""
    code = (
        "import os, sys\n"
        "from horace.server.stdio import claim_stdio\n"
        "fds = claim_stdio()\n"
        "print('stray print', flush=True)\n"
        "print('stray read: %r' % sys.stdin.read(), file=sys.stderr, flush=True)\n"
        "os.write(fds.stdout, os.read(fds.stdin, 100).upper())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input="for the protocol\n", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "FOR THE PROTOCOL\n"
    assert done.stderr.splitlines() == ["stray print", "stray read: ''"]


# -- a server and a stdio session on one store ----------------------------------------------------


async def test_a_server_and_a_stdio_session_write_the_same_files(
    settings: Settings, database_url: str
) -> None:
    """`horace serve` and `horace mcp` (another process) version one file and register
    the same new paths at once: the per-file locks (fcntl on one host, advisory locks in
    PostgreSQL) make them take turns, and nothing is lost or doubled."""
    settings = attrs.evolve(settings, version_count=1000, host="127.0.0.1", port=0)
    rounds = 40
    rng = random.Random(7)
    written: set[str] = set()

    def save(path: Path, content: bytes) -> None:
        """As editors save: a whole new file renamed over the old one."""
        temp = path.with_name(f".{path.name}.{rng.randrange(1 << 30)}")
        temp.write_bytes(content)
        os.replace(temp, path)
        written.add(sha256(content))

    shared = write(settings.storage_path / "files/shared/both.bin", b"initial")
    written.add(sha256(b"initial"))
    reported: dict[str, list[tuple[int, str]]] = {"server": [], "stdio": []}
    async with (
        run_horace(settings) as running,
        connect(running.url) as ws,
        horace_mcp(mcp_env(settings.storage_path, database_url, HORACE_VERSION_COUNT="1000")) as stdio,
    ):
        await ws.initialize()
        await stdio.initialize()
        file_id = (await ws.call("horace_register_file", file_path="shared/both.bin"))["file_id"]
        callers = {"server": ws.call, "stdio": stdio.call}

        async def writer(side: str) -> None:
            call = callers[side]
            for i in range(rounds):
                save(shared, f"{side} {i}\n".encode() + rng.randbytes(rng.randint(0, 64 * 1024)))
                updated = await call(
                    "horace_update_file", file_id=file_id, metadata={"tags": [f"{side}-{i}"]}
                )
                if updated["version_created"]:
                    reported[side].append((updated["current_version"], updated["file"]["checksum"]))
                # Both register the same new path at the same moment: one record, one version.
                if i % 4 == 0:
                    new = settings.storage_path / f"files/shared/new-{i}.txt"
                    if not new.exists():
                        write(new, f"new {i}\n")
                    registered = await call("horace_register_file", file_path=f"shared/new-{i}.txt")
                    assert registered["file"]["current_version"] == 1, registered

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, "server")
            nursery.start_soon(writer, "stdio")
        assert await stdio.close_stdin() == 0

        catalog = running.server.catalog
        file = await catalog.backend.file_by_id(file_id)
        assert file is not None
        versions = sorted(await catalog.backend.versions(file_id), key=lambda v: v.version)
        check_file_versions(catalog, file, versions, dense=True)
        by_number = {v.version: v.checksum for v in versions}
        everything = [r for side in reported.values() for r in side]
        assert len({n for n, _ in everything}) == len(everything), "two processes made one version"
        for number, checksum in everything:
            assert by_number.get(number) == checksum, f"reported version {number} lost"
        assert sorted(by_number) == [1, *sorted(n for n, _ in everything)], "a version nobody reported"
        assert set(by_number.values()) <= written, "a version of content nobody wrote"
        ordered = [by_number[n] for n in sorted(by_number)]
        assert all(a != b for a, b in pairwise(ordered)), "two consecutive versions of one content"
        print(f"versions by side: { {side: len(r) for side, r in reported.items()} }")
        assert reported["server"] and reported["stdio"], "both should have versioned the shared file"
        registered = await catalog.search(SearchQuery(path="shared/new-*.txt", limit=1000))
        assert sorted(f.file_path for f in registered.results) == sorted(
            f"shared/new-{i}.txt" for i in range(0, rounds, 4)
        )
        assert all(f.current_version == 1 for f in registered.results)
        await assert_sound(catalog)


# -- the official SDK's stdio clients --------------------------------------------------------------


def test_sdk1_stdio_client_drives_every_tool(storage: Path, env: dict[str, str]) -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.types import LATEST_PROTOCOL_VERSION
    from sdk1 import Sdk1Client

    server = StdioServerParameters(command=MCP_COMMAND[0], args=MCP_COMMAND[1:], env=env)

    async def main() -> None:
        async with stdio_client(server) as (read, write_stream), ClientSession(read, write_stream) as session:
            init = await session.initialize()
            assert init.serverInfo.name == "horace" and init.protocolVersion == LATEST_PROTOCOL_VERSION
            client = Sdk1Client(session)
            await asyncio.wait_for(tour.tool_list(client), 60)
            await asyncio.wait_for(tour.every_tool(client, storage / "files"), 240)
            await asyncio.wait_for(tour.tool_errors(client), 60)

    asyncio.run(main())


@pytest.fixture(scope="session")
def mcp2_python() -> Path:
    return sdk2.python()


def test_sdk2_stdio_client_drives_every_tool(mcp2_python: Path, storage: Path, env: dict[str, str]) -> None:
    checks = ["tool_list", "every_tool", "tool_errors"]
    config = {"command": MCP_COMMAND, "env": env, "files": str(storage / "files"), "checks": checks}
    seen = sdk2.run_client("stdio_tour.py", json.dumps(config))
    assert seen["sdk"].startswith("2."), seen
    assert seen["server"] == "horace" and seen["server_version"] == horace.__version__
    assert seen["protocol_version"] == "2025-11-25" and seen["checks"] == checks
