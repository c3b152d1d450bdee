"""The worst admissible requests under each of the server's limits, against a real
``python -m horace serve`` process whose peak RSS (``VmHWM``) is read from /proc.

Shared by tests/test_limits.py (which asserts a bound) and scripts/bench_limits (which
prints the figures against the limits). Each scenario runs against a fresh server
process on the same populated storage, so each peak is that scenario's own.

The storage holds ``FILES`` files whose metadata is as large as the default
``HORACE_MAX_METADATA_BYTES`` allows: a page of 1000 search results is then the biggest
one the catalog can build.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from godot_standin import free_port
from http_client import connect as http_connect
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

import horace
from horace.config import Settings
from horace.server.front import websocket_message_cap
from horace.server.jsonrpc import MAX_VALUES

# The server runs the code this process imported (a benchmark may choose another tree).
SOURCE = Path(horace.__file__).resolve().parent.parent
CLIENT_MAX_MESSAGE = 1 << 30  # the client takes whatever the server sends
FILES = 1000
DEFAULTS = Settings()
# The custom field that brings each file's metadata up to the default limit (the rest of
# what is measured, owner/purpose/tags/keys, takes well under 200 bytes).
METADATA_PAD = DEFAULTS.max_metadata_bytes - 200


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM, VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"{field} not in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@attrs.frozen
class ServerProcess:
    """A running ``horace serve``: its process and port."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/mcp"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def peak_rss(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS")

    async def health(self) -> dict[str, Any]:
        def fetch() -> dict[str, Any]:
            try:
                with urllib.request.urlopen(self.health_url, timeout=10) as response:
                    return json.loads(response.read())  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:  # 503 still has the body
                return json.loads(exc.read())  # type: ignore[no-any-return]

        return await trio.to_thread.run_sync(fetch)


@contextlib.contextmanager
def horace_process(
    storage: Path, settings: Mapping[str, str] | None = None, database_url: str | None = None
) -> Iterator[ServerProcess]:
    """``python -m horace serve`` on *storage* (``SOURCE`` first on the path),
    with ``HORACE_*`` *settings*; stopped with SIGTERM (then SIGKILL) on the way out."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")])),
        "HORACE_STORAGE_PATH": str(storage),
        "HORACE_MCP_HOST": "127.0.0.1",
        "HORACE_MCP_PORT": str(port),
        **(settings or {}),
    }
    if database_url:
        env["HORACE_DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [sys.executable, "-m", "horace", "serve", "--log-level", "ERROR"], env=env, stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if process.poll() is not None:
                raise RuntimeError(f"horace serve exited with {process.returncode} before listening")
            if time.monotonic() > deadline:
                raise RuntimeError("horace serve did not listen within 60 s")
            time.sleep(0.05)
        yield ServerProcess(process, port)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- requests ----------------------------------------------------------------------------------


def request(request_id: Any, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def tool_call(request_id: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    return request(request_id, "tools/call", {"name": tool, "arguments": arguments})


def search(request_id: Any, limit: int = 1000) -> dict[str, Any]:
    return tool_call(request_id, "horace_search_files", path="user/*", limit=limit)


def densest_message(size: int, method: str = "ping") -> str:
    """A request of exactly *size* bytes that costs the server the most to parse:
    ``MAX_VALUES`` short strings (about 50 bytes each parsed), then spaces. (Before values
    were counted, 4 MiB of ``[]`` parsed into 85 MB of lists; now that is refused
    unparsed.) ASCII only: a character past it makes trio-websocket hold every character
    of the text in four bytes while it assembles the message (see the README's "Memory
    bound"). A tools/call has them as its arguments."""
    if method == "tools/call":
        head = (
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": '
            '{"name": "horace_search_files", "arguments": {"pad": ['
        )
        tail = "]}}}"
    else:
        head = f'{{"jsonrpc": "2.0", "id": 1, "method": "{method}", "params": {{"pad": ['
        tail = "]}}"
    unit = '"abcdefghijkl"'
    room = size - len(head) - len(tail)
    count = min(MAX_VALUES - 16, (room + 1) // (len(unit) + 1))  # (the head's commas and braces)
    body = ",".join([unit] * count)
    return head + body + " " * (room - len(body)) + tail


# -- populating a storage ------------------------------------------------------------------


def populate(storage: Path, database_url: str | None = None, files: int = FILES) -> None:
    """*files* small files under files/user/, each registered with metadata at the limit."""
    folder = storage / "files" / "user"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"f{i:05d}.txt").write_text(f"content {i}\n")

    async def register_all(server: ServerProcess) -> None:
        async with open_websocket_url(server.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
            for start in range(0, files, DEFAULTS.max_batch):
                batch = [
                    tool_call(
                        i,
                        "horace_register_file",
                        file_path=f"user/f{i:05d}.txt",
                        metadata={"owner": "bench", "tags": ["limits"], "pad": "m" * METADATA_PAD},
                    )
                    for i in range(start, min(files, start + DEFAULTS.max_batch))
                ]
                await ws.send_message(json.dumps(batch))
                for reply in json.loads(await ws.get_message()):
                    if "error" in reply or reply["result"]["isError"]:
                        raise RuntimeError(f"could not register: {str(reply)[:300]}")

    with horace_process(storage, {"HORACE_CONVERSATIONS": "off"}, database_url) as server:
        trio.run(register_all, server)


# -- scenarios ---------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """What the client saw: replies (batch members counted one by one) by kind."""

    replies: int = 0
    results: int = 0
    errors: dict[int, int] = attrs.field(factory=dict)  # JSON-RPC error code -> count
    reply_bytes: int = 0
    closed: str | None = None  # why the server closed the connection, if it did

    def summary(self) -> str:
        errors = ", ".join(f"{n} x {code}" for code, n in sorted(self.errors.items()))
        text = f"{self.results} results" + (f", errors {errors}" if errors else "")
        return text + (f"; closed: {self.closed}" if self.closed else "")


def tally(texts: list[str], closed: str | None = None) -> Outcome:
    errors: dict[int, int] = {}
    results = replies = 0
    for text in texts:
        parsed = json.loads(text)
        for item in parsed if isinstance(parsed, list) else [parsed]:
            replies += 1
            if "error" in item:
                errors[item["error"]["code"]] = errors.get(item["error"]["code"], 0) + 1
            else:
                results += 1
    return Outcome(replies, results, errors, sum(len(t) for t in texts), closed)


def tally_outcomes(outcomes: list[Outcome]) -> Outcome:
    errors: dict[int, int] = {}
    for outcome in outcomes:
        for code, count in outcome.errors.items():
            errors[code] = errors.get(code, 0) + count
    return Outcome(
        sum(o.replies for o in outcomes),
        sum(o.results for o in outcomes),
        errors,
        sum(o.reply_bytes for o in outcomes),
        next((o.closed for o in outcomes if o.closed), None),
    )


async def exchange(url: str, messages: list[str], replies_due: int, *, read_after: float = 0.0) -> Outcome:
    """Send *messages* on one connection; read nothing for *read_after* seconds (the
    replies pile up on the server as far as it lets them); then read *replies_due*
    replies (messages), or until the server closes the connection."""
    texts: list[str] = []
    closed = None
    async with open_websocket_url(url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
        for message in messages:
            await ws.send_message(message)
        await trio.sleep(read_after)
        try:
            with trio.fail_after(300):
                while len(texts) < replies_due:
                    texts.append(str(await ws.get_message()))
        except ConnectionClosed as exc:
            closed = f"{exc.reason.code} {exc.reason.reason or ''}".strip()
    return tally(texts, closed)


@attrs.frozen
class Scenario:
    name: str
    limit: str  # the limit it pushes against, as configured
    run: Callable[[ServerProcess], Awaitable[Outcome]]


def scenarios(settings: Settings = DEFAULTS) -> list[Scenario]:
    """The worst admissible request under each limit, for a server with *settings*."""
    batch, calls = settings.max_batch, settings.max_calls_per_connection
    message = settings.max_message_bytes

    async def batch_of_tool_lists(server: ServerProcess) -> Outcome:
        requests = [request(i, "tools/list") for i in range(batch)]
        return await exchange(server.url, [json.dumps(requests)], 1)

    async def batch_of_searches(server: ServerProcess) -> Outcome:
        return await exchange(server.url, [json.dumps([search(i) for i in range(batch)])], 1)

    async def densest_request(server: ServerProcess) -> Outcome:
        return await exchange(server.url, [densest_message(message)], 1)

    async def densest_arguments_at_once(server: ServerProcess) -> Outcome:
        # Each its own connection: the arguments reach a tool (refused), and the log sinks.
        text = densest_message(message, "tools/call")
        outcomes: list[Outcome] = []

        async def one() -> None:
            outcomes.append(await exchange(server.url, [text], 1))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        return tally_outcomes(outcomes)

    async def densest_arguments_over_http(server: ServerProcess) -> Outcome:
        # 10 sessions, 2 POSTs each at once: bodies read and parsed side by side.
        text = densest_message(message, "tools/call").encode()
        outcomes: list[Outcome] = []

        async def one_session() -> None:
            async with http_connect(
                f"http://127.0.0.1:{server.port}/mcp", timeout=httpx.Timeout(300.0)
            ) as client:
                answers: list[str] = []

                async def post() -> None:
                    answers.append((await client.post(text)).text)

                async with trio.open_nursery() as posts:
                    for _ in range(2):
                        posts.start_soon(post)
                outcomes.append(tally(answers))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one_session)
        return tally_outcomes(outcomes)

    async def oversize_message(server: ServerProcess) -> Outcome:
        # Just under the most a WebSocket reads: read whole and answered with an error, not parsed.
        return await exchange(server.url, [densest_message(websocket_message_cap(message) - 64)], 1)

    async def biggest_arguments(server: ServerProcess) -> Outcome:
        # A message at the limit that reaches a tool and is echoed back in its error,
        # over and over on one connection: what one call leaves behind must not add up.
        file_id = "x" * (message - 200)
        text = json.dumps(tool_call(1, "horace_get_file_info", file_id=file_id))
        outcomes = [await exchange(server.url, [text], 1) for _ in range(20)]
        return tally_outcomes(outcomes)

    async def big_arguments_at_once(server: ServerProcess) -> Outcome:
        # The same, sent all at once: the requests under way are capped in bytes.
        file_id = "x" * (message - 200)
        text = json.dumps(tool_call(1, "horace_get_file_info", file_id=file_id))
        return await exchange(server.url, [text] * 20, 20)

    async def concurrent_searches_unread(server: ServerProcess) -> Outcome:
        texts = [json.dumps(search(i)) for i in range(calls)]
        return await exchange(server.url, texts, calls, read_after=5.0)

    async def concurrent_big_replies_unread(server: ServerProcess) -> Outcome:
        # Pages that just fit in a reply: every call succeeds, and every reply is big.
        rows = settings.max_reply_bytes // (2 * (METADATA_PAD + 1000))
        texts = [json.dumps(search(i, limit=rows)) for i in range(calls)]
        return await exchange(server.url, texts, calls, read_after=5.0)

    return [
        Scenario("batch of tools/list at the cap", f"max_batch={batch}", batch_of_tool_lists),
        Scenario("batch of 1000-file searches at the cap", f"max_batch={batch}", batch_of_searches),
        Scenario("densest message at the size limit", f"max_message_bytes={message}", densest_request),
        Scenario(
            "the densest tool arguments at the size limit, 20 connections at once",
            f"max_message_bytes={message}",
            densest_arguments_at_once,
        ),
        Scenario(
            "the densest tool arguments over Streamable HTTP, 20 POSTs at once",
            f"max_message_bytes={message}",
            densest_arguments_over_http,
        ),
        Scenario("message just under the WebSocket's cap", f"max_message_bytes={message}", oversize_message),
        Scenario("20 calls echoing max-size arguments", f"max_message_bytes={message}", biggest_arguments),
        Scenario(
            "20 such calls at once",
            f"max_inflight_bytes={settings.max_inflight_bytes}",
            big_arguments_at_once,
        ),
        Scenario(
            f"{calls} concurrent 1000-file searches, unread for 5 s",
            f"max_calls_per_connection={calls}",
            concurrent_searches_unread,
        ),
        Scenario(
            f"{calls} concurrent searches, replies just under the limit, unread for 5 s",
            f"max_reply_bytes={settings.max_reply_bytes}",
            concurrent_big_replies_unread,
        ),
    ]


@attrs.frozen
class Measured:
    scenario: Scenario
    baseline_rss: int  # the server's peak RSS before the scenario (start-up included)
    peak_rss: int
    outcome: Outcome
    seconds: float


def measure(
    storage: Path,
    scenario: Scenario,
    settings: Mapping[str, str] | None = None,
    database_url: str | None = None,
) -> Measured:
    """Run *scenario* against a fresh server on *storage*; its peak RSS."""
    with horace_process(storage, settings, database_url) as server:
        baseline = server.peak_rss()
        started = time.monotonic()
        outcome = trio.run(scenario.run, server)
        seconds = time.monotonic() - started
        if server.process.poll() is not None:
            raise RuntimeError(f"the server died during {scenario.name!r}: {server.process.returncode}")
        return Measured(scenario, baseline, server.peak_rss(), outcome, seconds)


# -- connect storms ------------------------------------------------------------------------


@attrs.frozen
class Storm:
    """A connect storm: how many of the attempted connections became sessions (by the
    clients' count and by /health's), and how many of those the server still held."""

    attempted: int
    upgraded: int
    refused: int  # 503, or a reset before any answer
    held: int  # sessions still answering a ping after the hold
    server_sessions: int
    peak_fds: int


async def connect_storm(server: ServerProcess, count: int, hold: float) -> Storm:
    """*count* concurrent upgrades, each kept open and silent for *hold* seconds."""
    upgraded = refused = held = peak_fds = 0
    server_sessions = -1
    settled = trio.Event()  # every attempt has been answered one way or the other

    def answered() -> None:
        if upgraded + refused >= count:
            settled.set()

    async def one() -> None:
        nonlocal upgraded, refused, held
        try:
            async with open_websocket_url(server.url, connect_timeout=60) as ws:
                upgraded += 1
                answered()
                await trio.sleep(hold)
                try:
                    await ws.send_message(json.dumps(request(1, "ping")))
                    with trio.fail_after(30):
                        await ws.get_message()
                    held += 1
                except ConnectionClosed:
                    pass  # closed by the server meanwhile (e.g. idle): not held
        except (HandshakeError, OSError, trio.TooSlowError):
            refused += 1
            answered()

    async def count_sessions() -> None:
        nonlocal server_sessions
        with trio.move_on_after(120):
            await settled.wait()
        server_sessions = (await server.health())["connections"]["sessions"]

    async def sample_fds() -> None:
        nonlocal peak_fds
        while True:
            peak_fds = max(peak_fds, open_fds(server.pid))
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_fds)
        nursery.start_soon(count_sessions)
        async with trio.open_nursery() as clients:
            for _ in range(count):
                clients.start_soon(one)
        nursery.cancel_scope.cancel()
    return Storm(count, upgraded, refused, held, server_sessions, peak_fds)
