"""The MCP server at its edges, through a real WebSocket, on the run's backend."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest
import trio
import websockets.exceptions
import websockets.sync.client
from helpers import BACKEND, pg_execute, sha256, tool_body, with_query, write
from mcp_client import McpClient, connect
from trio_websocket import ConnectionRejected, HandshakeError, open_websocket_url
from websockets.typing import Subprotocol

from horace.backends.protocol import BackendUnavailable
from horace.config import Settings
from horace.fsck import fsck
from horace.server.jsonrpc import SERVER_BUSY
from horace.server.mcp import PROTOCOL_VERSIONS
from horace.server.tools import TOOLS
from horace.storage import Storage
from horace.testing import RunningHorace, run_horace


def serving(settings: Settings, **changes: Any) -> Settings:
    return attrs.evolve(settings, host="127.0.0.1", port=0, **changes)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningHorace]:
    async with run_horace(serving(settings)) as running:
        yield running


async def test_a_start_that_waits_says_so_until_it_serves(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A start held up (here: the catalog's opening, as a lock held on its tables holds it)
    says it is still starting, again and again; once it serves it says no more."""
    import horace.server.serving as serving_module

    opened = serving_module.open_catalog

    @asynccontextmanager
    async def slow_open(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await trio.sleep(0.5)
        async with opened(*args, **kwargs) as catalog:
            yield catalog

    monkeypatch.setattr(serving_module, "START_NOTICE_SECONDS", (0.1, 0.15))
    monkeypatch.setattr(serving_module, "open_catalog", slow_open)

    def notices() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("still starting after")]

    with caplog.at_level(logging.WARNING, logger="horace.server"):
        async with run_horace(serving(settings)) as running:
            said = notices()
            assert len(said) >= 2 and "lock on the catalog's tables" in said[0], said
            assert settings.catalog_url.rpartition("/")[2] in said[0]
            await trio.sleep(0.4)
            assert notices() == said  # serving: nothing more is said
            assert (await http_get(running.health_url))[0] == 200


@pytest.fixture
async def client(server: RunningHorace) -> AsyncIterator[McpClient]:
    async with connect(server.url) as connected:
        yield connected


async def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    def fetch() -> tuple[int, Any]:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    return await trio.to_thread.run_sync(fetch)


INITIALIZE_PARAMS = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "t", "version": "0"},
}


async def wait_idle(running: RunningHorace) -> None:
    with trio.fail_after(30):
        while running.server.sessions:
            await trio.sleep(0.01)


# -- protocol ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [*PROTOCOL_VERSIONS, "1999-01-01"])
async def test_initialize_negotiates_the_version(client: McpClient, version: str) -> None:
    result = await client.initialize(version)
    expected = version if version in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
    assert result["protocolVersion"] == expected
    assert result["serverInfo"]["name"] == "horace"
    assert "tools" in result["capabilities"]


async def test_initialize_once_with_what_mcp_requires(client: McpClient) -> None:
    """protocolVersion, capabilities and clientInfo are required; a session is initialized
    once (its protocol version does not change under it)."""
    for params in (
        {},
        {"capabilities": {}, "clientInfo": {"name": "c", "version": "1"}},
        {"protocolVersion": 20250618, "capabilities": {}, "clientInfo": {"name": "c"}},
        {"protocolVersion": "2025-06-18", "clientInfo": {"name": "c"}},
        {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": "c"},
    ):
        error = (await client.request("initialize", params))["error"]
        assert error["code"] == -32602 and "initialize needs params.protocolVersion" in error["message"]
    assert (await client.initialize("2025-06-18"))["protocolVersion"] == "2025-06-18"
    again = (await client.request("initialize", {**INITIALIZE_PARAMS, "protocolVersion": "2025-03-26"}))[
        "error"
    ]
    assert again["code"] == -32600 and "initialized already (protocol 2025-06-18)" in again["message"]


async def test_tools_list_declares_every_tool_with_schemas(client: McpClient) -> None:
    tools = (await client.request("tools/list"))["result"]["tools"]
    assert {t["name"] for t in tools} == set(TOOLS) and len(tools) == 17
    for tool in tools:
        assert tool["inputSchema"]["type"] == "object"
        assert tool["outputSchema"]["type"] == "object"
        assert set(tool["annotations"]) >= {"readOnlyHint", "destructiveHint", "idempotentHint"}
        declared = set(tool["inputSchema"]["properties"])
        argument_class = TOOLS[tool["name"]].arguments
        if argument_class is not None:  # the schema and the structuring class agree
            assert declared == {a.name for a in attrs.fields(argument_class)}


async def test_calls_before_initialize_are_served(server: RunningHorace, client: McpClient) -> None:
    write(server.files / "user/a.txt", "hello")
    registered = await client.call("horace_register_file", file_path="user/a.txt")
    assert registered["file"]["checksum"] == sha256("hello")
    assert (await client.request("ping"))["result"] == {}


async def test_malformed_messages_get_standard_errors(client: McpClient) -> None:
    sentinel = client.expect(None)
    await client.send_raw("{not json")
    assert (await sentinel.receive())["error"]["code"] == -32700
    # Said in JSON's words, not Python's (sys.set_int_max_str_digits, recursion depth)
    for raw, reason in [
        ("[" * 100_000 + "]" * 100_000, "parse error: nested too deeply"),
        ('{"jsonrpc": "2.0", "id": ' + "9" * 5000 + ', "method": "ping"}', "more than 4300 digits"),
    ]:
        sentinel = client.expect(None)
        await client.send_raw(raw)
        error = (await sentinel.receive())["error"]
        assert error["code"] == -32700 and reason in error["message"], error
        assert "sys." not in error["message"] and "recursion" not in error["message"]
    for raw, code in [
        ("[]", -32600),
        ("42", -32600),
        ('{"jsonrpc": "1.0", "id": 7, "method": "ping"}', -32600),
        ('{"jsonrpc": "2.0", "id": 7, "method": 12}', -32600),
        ('{"result": null}', -32600),  # not a response: no "jsonrpc", no id
        ('{"jsonrpc": "2.0", "error": {"code": 1, "message": "m"}}', -32600),
        ('{"jsonrpc": "2.0", "id": null, "method": "ping"}', -32600),  # MCP: an id is never null
        ('{"jsonrpc": "2.0", "id": 7, "method": "nope"}', -32601),
        ('{"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"cursor": 5}}', -32602),
        ('{"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"cursor": "x"}}', -32602),
        ('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "horace_nope"}}', -32602),
        ('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {}}', -32602),
        ('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": "x"}', -32602),
    ]:
        request_id = 7 if '"id": 7' in raw else None
        reply = client.expect(request_id)
        await client.send_raw(raw)
        answer = await reply.receive()
        assert answer["error"]["code"] == code, raw
    # A well-formed response (to a request Horace never sent) is dropped unanswered.
    unanswered = client.expect(5)
    await client.send_raw('{"jsonrpc": "2.0", "id": 5, "result": {}}')
    assert (await client.request("ping"))["result"] == {}
    with trio.move_on_after(0.3) as waited:
        await unanswered.receive()
    assert waited.cancelled_caught


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("horace_restore_version", {"file_id": "x", "version": "3"}, "version"),
        ("horace_restore_version", {"file_id": "x", "version": True}, "version"),
        ("horace_restore_version", {"file_id": "x"}, "version"),
        ("horace_register_file", {"file_path": 5}, "file_path"),
        ("horace_search_files", {"limit": "ten"}, "limit"),
        ("horace_search_files", {"tags": ["a"], "bogus": 1}, "bogus"),
        ("horace_search_files", {"tags": "report"}, "tags"),  # an array, as the schema says
        ("horace_update_file", {"file_id": "x", "metadata": {"tags": "abc"}}, "tags"),
        ("horace_remove_from_collection", {"name": "c", "file_ids": "x"}, "file_ids"),
        ("horace_search_files", {"any_tags": [f"t{n}" for n in range(101)]}, "any_tags"),
        ("horace_search_files", {"query": {"tags": ["t"] * 101}}, "tags"),
        ("horace_search_files", {"path": "*" * 4097}, "path"),
        ("horace_search_files", {"file_type": "%" * 4097}, "file_type"),
        ("horace_update_file", {"file_id": "x", "metadata": {"checksum": "0" * 64}}, "checksum"),
        ("horace_get_file_info", [1, 2], "object"),
        ("horace_search_files", {"created_after": "2024-01-01T00:00:00+25:00"}, "under 24 hours"),
        ("horace_search_files", {"created_after": "0001-01-01T00:00:00+05:00"}, "years 1 to 9999"),
        ("horace_search_files", {"created_before": "9999-12-31T23:00:00-05:00"}, "years 1 to 9999"),
        ("horace_search_files", {"created_before": "2024-02-30"}, "created_before"),
    ],
)
async def test_wrong_arguments_are_invalid_params(
    client: McpClient, tool: str, arguments: Any, field: str
) -> None:
    """Before MCP 2025-11-25: JSON-RPC -32602."""
    await client.initialize("2025-06-18")
    reply = await client.request("tools/call", {"name": tool, "arguments": arguments})
    if "error" in reply:
        assert reply["error"]["code"] == -32602
        assert field in reply["error"]["message"]
        assert "timedelta" not in reply["error"]["message"]  # (said in words, not Python's)
        assert reply["error"]["data"]["error_code"] == "INVALID_ARGUMENT"
    else:  # semantic refusals that are only known past structuring are tool errors
        body = tool_body(reply["result"])
        assert reply["result"]["isError"] and body["error_code"] == "INVALID_ARGUMENT"
        assert field in body["message"]


@pytest.mark.parametrize(("version", "as_result"), [("2025-11-25", True), ("2025-06-18", False)])
async def test_wrong_arguments_are_a_tool_error_from_2025_11_25_on(
    server: RunningHorace, version: str, as_result: bool
) -> None:
    """MCP 2025-11-25 (SEP-1303) makes arguments that fail the inputSchema a tool error, which
    a model can read and correct; a client of an earlier version keeps JSON-RPC -32602. An
    unknown tool is -32602 in both."""
    async with connect(server.url) as client:
        await client.initialize(version)
        arguments = {"file_id": "x", "version": "one"}
        reply = await client.request("tools/call", {"name": "horace_restore_version", "arguments": arguments})
        if as_result:
            body = tool_body(reply["result"])
            assert reply["result"]["isError"] and body["error_code"] == "INVALID_ARGUMENT", reply
            assert "version" in body["message"] and body["correlation_id"]
        else:
            error = reply["error"]
            assert error["code"] == -32602 and error["data"]["error_code"] == "INVALID_ARGUMENT"
        unknown = await client.request("tools/call", {"name": "horace_nope", "arguments": {}})
        assert unknown["error"]["code"] == -32602


async def test_the_largest_search_filters_admitted_are_answered(client: McpClient) -> None:
    """At each bound of the search filters the database is still within its own limits
    (SQLite: 500 terms in a compound SELECT, a LIKE or GLOB pattern of 50,000 bytes)."""
    widest = {
        "tags": [f"t{n}" for n in range(100)],
        "any_tags": [f"a{n}" for n in range(100)],
        "path": "*" * 4096,
        "file_type": "%" * 4096,
    }
    for name, value in widest.items():
        found = await client.call("horace_search_files", **{name: value})
        assert found.get("error_code") is None and found["total_count"] == 0, (name, found)
    found = await client.call("horace_search_files", **widest)
    assert found.get("error_code") is None and found["total_count"] == 0, found


async def test_a_long_history_and_a_large_duplicate_group_are_listed_a_part_at_a_time(
    settings: Settings,
) -> None:
    """Versions and a group's files are listed a part at a time, with how many there are:
    a reply that lists them all would grow past any limit (14,000 versions, 12,000 copies
    of one content) and could not be had at all."""
    files = settings.storage_path / "files"
    async with run_horace(serving(settings, version_count=100)) as running, connect(running.url) as client:
        for n in range(12):
            write(files / "user/hot.txt", f"draft {n}")
            done = await client.call("horace_register_file", file_path="user/hot.txt")
        for n in range(30):
            write(files / f"user/copies/c{n}.txt", "the same bytes")
        assert (await client.call("horace_scan"))["registered"] == 30
        page = await client.call(
            "horace_get_file_info",
            file_id=done["file_id"],
            include_versions=True,
            versions_limit=5,
            versions_offset=2,
        )
        assert page["version_count"] == 12
        assert [v["version"] for v in page["versions"]] == [10, 9, 8, 7, 6]
        whole = await client.call("horace_get_file_info", file_id=done["file_id"], include_versions=True)
        assert (whole["version_count"], len(whole["versions"])) == (12, 12)
        plain = await client.call("horace_get_file_info", file_id=done["file_id"])
        assert (plain["versions"], plain["version_count"]) == (None, None)
        found = await client.call("horace_find_duplicates", files_per_group=4)
        [group] = found["groups"]
        assert (group["file_count"], len(group["files"])) == (30, 4)
        assert len((await client.call("horace_find_duplicates"))["groups"][0]["files"]) == 10
        past = await client.call("horace_find_duplicates", offset=1)
        assert (past["group_count"], past["groups"]) == (0, [])


async def test_tool_errors_are_results_with_code_and_correlation(client: McpClient) -> None:
    reply = await client.request(
        "tools/call",
        {
            "name": "horace_get_file_info",
            "arguments": {"file_id": "nope"},
            "_meta": {"correlation_id": "corr-42"},
        },
    )
    result = reply["result"]
    assert result["isError"] is True
    assert "structuredContent" not in result  # the outputSchema describes results, not errors
    assert json.loads(result["content"][0]["text"]) == {
        "error_code": "NOT_CATALOGED",
        "message": "no catalogued file with id 'nope'",
        "correlation_id": "corr-42",
    }
    path = await client.call("horace_register_file", file_path="../../etc/passwd")
    assert path["error_code"] == "INVALID_PATH"


async def test_a_tool_call_refused_as_a_request_still_carries_a_correlation_id(client: McpClient) -> None:
    """Every tool call's reply carries one (its own when it gives one), also when the
    request is refused before a tool is chosen; another method's error needs none."""
    cases: list[tuple[dict[str, object], str | None]] = [
        ({"arguments": {}, "_meta": {"correlation_id": "corr-7"}}, "corr-7"),
        ({"arguments": {"metadata": {"correlation_id": "corr-8"}}}, "corr-8"),
        ({"name": 5}, None),
        ({"name": "horace_nothing", "_meta": {"correlation_id": "x" * 201}}, None),
    ]
    for params, given in cases:
        reply = await client.request("tools/call", params)
        assert reply["error"]["code"] == -32602, reply
        correlation_id = reply["error"]["data"]["correlation_id"]
        assert correlation_id == given if given else len(correlation_id) == 36, reply
    assert "data" not in (await client.request("no/such/method", {}))["error"]


async def test_correlation_id_from_metadata_reaches_rows(server: RunningHorace, client: McpClient) -> None:
    write(server.files / "user/c.txt", "c")
    result = await client.call(
        "horace_register_file", file_path="user/c.txt", metadata={"correlation_id": "trace-1", "tags": ["t"]}
    )
    assert result["correlation_id"] == "trace-1"
    assert result["file"]["correlation_id"] == "trace-1"
    found = await client.call("horace_search_files", correlation_id="trace-1")
    assert [f["id"] for f in found["results"]] == [result["file_id"]]
    versions = await server.server.catalog.backend.versions(result["file_id"])
    assert versions[0].correlation_id == "trace-1"


async def test_batch_with_a_notification(client: McpClient) -> None:
    first, second = client.expect("a"), client.expect("b")
    await client.send_raw(
        json.dumps(
            [
                {"jsonrpc": "2.0", "id": "a", "method": "ping"},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {
                    "jsonrpc": "2.0",
                    "id": "b",
                    "method": "tools/call",
                    "params": {"name": "horace_search_files", "arguments": {"query": {"tags": ["x"]}}},
                },
                {"jsonrpc": "2.0", "id": "c", "method": "nope"},
            ]
        )
    )
    assert (await first.receive())["result"] == {}
    assert (await second.receive())["result"]["structuredContent"]["total_count"] == 0
    assert (await client.request("ping"))["result"] == {}
    assert client.unmatched == [
        {"jsonrpc": "2.0", "id": "c", "error": {"code": -32601, "message": "method not found: nope"}}
    ]


async def test_an_unknown_method_is_named_in_words_every_json_parser_takes(client: McpClient) -> None:
    """A lone surrogate quoted back as itself would make the reply JSON that strict parsers
    refuse; a notification's method sent with an id is told for what it is."""
    reply = await client.request("\ud800x")
    assert reply["error"] == {"code": -32601, "message": "method not found: \\ud800x"}, reply
    reply = await client.request("notifications/cancelled", {"requestId": 1})
    assert reply["error"]["message"] == "notifications/cancelled is a notification: send it without an id"


async def test_oversize_message_is_answered_and_a_far_larger_one_closes_the_websocket(
    settings: Settings,
) -> None:
    """A message a little over the limit gets a JSON-RPC error on a connection that goes
    on; one past the cap that is read at all closes the WebSocket with 1009 (message too
    big) instead of being held whole to be refused."""
    limit = 64 * 1024
    async with run_horace(serving(settings, max_message_bytes=limit)) as running:
        async with connect(running.url) as client:
            reply = client.expect(1)  # (its id read from its start, the message unparsed)
            pad = "x" * (limit + limit // 32)
            await client.send_raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": pad}))
            error = (await reply.receive())["error"]
            assert error["code"] == -32600
            assert f"exceeds the limit of {limit} (HORACE_MAX_MESSAGE_BYTES)" in error["message"]
            assert (await client.request("ping"))["result"] == {}  # the connection is still good
        async with connect(running.url) as client:
            await client.send_raw(
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "x" * 2 * limit})
            )
            with trio.fail_after(10):
                await client.closed.wait()
            assert client.ws.closed is not None and client.ws.closed.code == 1009


async def test_200_concurrent_calls_on_one_connection(server: RunningHorace, client: McpClient) -> None:
    for i in range(200):
        write(server.files / f"user/c/{i}.txt", f"content {i}")
    results: dict[int, dict[str, Any]] = {}

    async def one(i: int) -> None:
        results[i] = await client.call("horace_register_file", file_path=f"user/c/{i}.txt")

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert len({r["file_id"] for r in results.values()}) == 200
    assert all(results[i]["file"]["checksum"] == sha256(f"content {i}") for i in range(200))
    assert client.unmatched == []
    page = await client.call("horace_search_files", path="user/c/*", limit=1000)
    assert page["total_count"] == 200


async def test_too_many_calls_on_one_connection(settings: Settings) -> None:
    async with (
        run_horace(serving(settings, max_calls_per_connection=2)) as running,
        connect(running.url) as client,
    ):
        for i in range(300):
            write(running.files / f"user/s/{i}.txt", f"s{i}")
        replies = [client.expect(i) for i in range(6)]
        for i in range(6):
            await client.send_raw(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "tools/call",
                        "params": {"name": "horace_scan", "arguments": {}},
                    }
                )
            )
        answers = [await r.receive() for r in replies]
        busy = [a for a in answers if "error" in a]
        assert busy and all(a["error"]["code"] == -32000 for a in busy)
        assert all("result" in a for a in answers if a not in busy)


# -- cancellation, deadlines, progress, shutdown ------------------------------------------------


async def test_client_gone_mid_restore_leaves_nothing_half_written(server: RunningHorace) -> None:
    """The client goes away at three moments of a restore: in the copy of the unsaved
    content, in the copy of version 1, and inside the commit of the restored version (held
    there until the server has seen the client go). Each time: the whole restore or nothing,
    and never a working file holding version 1 without the version that says so (once the
    unsaved content is a version, the restore goes on to its end)."""
    path = write(server.files / "user/big.bin", os.urandom(8 << 20))
    catalog = server.server.catalog
    file = (await catalog.register("user/big.bin")).file
    for moment in ("copying the unsaved content", "copying version 1", "in the commit"):
        unsaved = os.urandom(8 << 20)  # content restore must keep before writing v1 back
        path.write_bytes(unsaved)
        reached, gone = trio.Event(), trio.Event()
        async with hooked(catalog, moment, reached, gone):
            async with open_websocket_url(server.url) as ws:
                await ws.send_message(json.dumps(call_message(1, "horace_restore_version", file.id)))
                with trio.fail_after(30):
                    await reached.wait()
            # The client has closed: once its session has seen that, the hook lets go.
            with trio.fail_after(30):
                while not all(session.gone for session in server.server.sessions):
                    await trio.sleep(0.001)
            gone.set()
            await wait_idle(server)
        report = await fsck(catalog, deep=True)
        assert report.clean, report.findings
        newest = (await catalog.backend.versions(file.id))[0]
        now_there = sha256(path.read_bytes())
        if moment != "copying the unsaved content":  # past the first commit: it went through
            assert now_there == file.checksum and newest.restored_from_version == 1, moment
            assert sha256(unsaved) in {v.checksum for v in await catalog.backend.versions(file.id)}
        else:  # cut before the working file was touched: nothing of the restore shows
            assert now_there == sha256(unsaved), moment
            assert newest.restored_from_version is None, moment


def call_message(request_id: int, tool: str, file_id: str) -> dict[str, Any]:
    arguments = {"file_id": file_id, "version": 1}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


@asynccontextmanager
async def hooked(catalog: Any, moment: str, reached: trio.Event, gone: trio.Event) -> AsyncIterator[None]:
    """Hold the restore at *moment* until the client is gone (*reached* says it got there)."""
    token = trio.lowlevel.current_trio_token()
    real_stage, real_prepare = Storage.stage, Storage._prepare
    real_exclusive = catalog.backend.exclusive

    def hold_in_thread() -> None:
        trio.from_thread.run_sync(reached.set, trio_token=token)
        trio.from_thread.run(gone.wait, trio_token=token)

    def stage(self: Storage, *args: Any, **kwargs: Any) -> Any:
        if moment == "copying the unsaved content":
            hold_in_thread()
        return real_stage(self, *args, **kwargs)

    def prepare(self: Storage, *args: Any) -> Any:
        if moment == "copying version 1":
            hold_in_thread()
        return real_prepare(self, *args)

    @asynccontextmanager
    async def exclusive(key: int) -> AsyncIterator[Any]:
        async with real_exclusive(key) as units:
            yield HeldCommit(units, moment == "in the commit", reached, gone)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Storage, "stage", stage)
        patch.setattr(Storage, "_prepare", prepare)
        patch.setattr(catalog.backend, "exclusive", exclusive)
        yield


class HeldCommit:
    """The units of a held file lock, whose commit of a restored version waits for *gone*."""

    def __init__(self, units: Any, hold: bool, reached: trio.Event, gone: trio.Event) -> None:
        self._units, self._hold, self._reached, self._gone = units, hold, reached, gone

    def __getattr__(self, name: str) -> Any:
        return getattr(self._units, name)

    async def add_version(self, file_id: str, new: Any, *args: Any) -> Any:
        if self._hold and new.restored_from_version is not None:
            self._reached.set()
            await self._gone.wait()  # a cancellation here would undo the commit, but for the shield
        return await self._units.add_version(file_id, new, *args)


async def test_deadline_is_a_clear_error(settings: Settings) -> None:
    async with run_horace(serving(settings, call_deadline=0.001)) as running, connect(running.url) as client:
        for i in range(500):
            write(running.files / f"user/d/{i}.txt", f"d{i}")
        reply = await client.request("tools/call", {"name": "horace_scan", "arguments": {}})
        assert reply["error"]["code"] == -32001 and "deadline" in reply["error"]["message"]
        assert reply["error"]["data"]["correlation_id"]
        assert (await fsck(running.server.catalog, deep=True)).clean


async def test_notifications_cancelled_stops_a_call(server: RunningHorace, client: McpClient) -> None:
    files = 6000  # several register groups, so a cancellation lands before the end
    for i in range(files):
        write(server.files / f"user/n/{i}.txt", f"n{i}")
    reply = client.expect(99)
    scan = {"name": "horace_scan", "arguments": {}, "_meta": {"progressToken": "p"}}
    await client.send_raw(json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": scan}))
    with trio.fail_after(30):  # under way: its first progress came
        while not client.notifications:
            await trio.sleep(0.001)
    cancel = {"requestId": 99, "reason": "changed my mind"}
    await client.send_raw(
        json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel})
    )
    cancelled_at = trio.current_time()
    (session,) = server.server.sessions
    with trio.fail_after(30):  # the call stops...
        while session.session.held()["calls"]:
            await trio.sleep(0.001)
    assert trio.current_time() - cancelled_at < 5.0  # ...promptly: within a batch of the scan
    registered = len(await server.server.catalog.backend.all_files())
    assert registered < files, "the scan ran to its end"
    with trio.move_on_after(0.5) as waited:  # nothing follows, however long one waits
        await reply.receive()
    assert waited.cancelled_caught, "a cancelled request gets no response"
    assert (await client.request("ping"))["result"] == {}
    assert (await fsck(server.server.catalog, deep=True)).clean


async def test_a_call_that_finishes_as_it_is_cancelled_gets_no_response(
    server: RunningHorace, client: McpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel comes while the call's work runs shielded (a commit) and the work then
    finishes: MCP asks for no response to a cancelled request all the same."""
    started, finish = trio.Event(), trio.Event()
    tool = TOOLS["horace_get_file_info"]
    answer = tool.handler

    async def committing(context: Any, args: Any) -> Any:
        with trio.CancelScope(shield=True):
            started.set()
            await finish.wait()
            return await answer(context, args)

    monkeypatch.setitem(TOOLS, tool.name, attrs.evolve(tool, handler=committing))
    write(server.files / "user/c.txt", "c")
    file_id = (await client.call("horace_register_file", file_path="user/c.txt"))["file"]["id"]
    reply = client.expect(7)
    call = {"name": tool.name, "arguments": {"file_id": file_id}}
    await client.send_raw(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call}))
    with trio.fail_after(10):
        await started.wait()
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
    await client.send_raw(json.dumps(cancel))
    assert (await client.request("ping"))["result"] == {}  # (the cancel has been read)
    finish.set()
    with trio.move_on_after(0.5) as waited:
        await reply.receive()
    assert waited.cancelled_caught, "a cancelled request gets no response"
    assert (await client.request("ping"))["result"] == {}


async def test_scan_sends_progress_notifications(server: RunningHorace, client: McpClient) -> None:
    for i in range(600):
        write(server.files / f"user/p/{i}.txt", f"p{i}")
    reply = await client.request(
        "tools/call",
        {
            "name": "horace_scan",
            "arguments": {},
            "_meta": {"progressToken": "tok"},
        },
    )
    assert reply["result"]["structuredContent"]["registered"] == 600
    progress = [n["params"] for n in client.notifications if n["method"] == "notifications/progress"]
    assert progress and all(p["progressToken"] == "tok" for p in progress)
    assert progress[-1]["progress"] == progress[-1]["total"] == 600
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)


async def test_graceful_shutdown_lets_running_calls_finish(settings: Settings) -> None:
    async with run_horace(serving(settings)) as running:
        for i in range(1000):
            write(running.files / f"user/g/{i}.txt", f"g{i}")
        async with connect(running.url) as client:
            reply = client.expect(1)
            await client.send_raw(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "tools/call",
                        "params": {"name": "horace_scan", "arguments": {}},
                    }
                )
            )
            await trio.sleep(0.05)
            running.server.shutdown()
            answer = await reply.receive()
            assert answer["result"]["structuredContent"]["registered"] == 1000
            with trio.fail_after(5):
                await client.closed.wait()
        with pytest.raises(HandshakeError):  # no longer accepting
            async with open_websocket_url(running.url):
                pass


async def test_a_call_still_running_after_the_grace_is_cancelled_and_its_client_told(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shutdown's grace runs out with a call still running: the call is cancelled and
    its WebSocket is closed with 1001 (going away), not dropped without a Close frame, so
    the client knows to reconnect rather than guess at a broken network."""
    started = trio.Event()
    tool = TOOLS["horace_get_file_info"]

    async def stuck(context: Any, args: Any) -> Any:
        started.set()
        await trio.sleep_forever()

    monkeypatch.setitem(TOOLS, tool.name, attrs.evolve(tool, handler=stuck))
    async with run_horace(serving(settings, shutdown_grace=0.2)) as running, connect(running.url) as client:
        reply = client.expect(1)
        call = {"name": tool.name, "arguments": {"file_path": "user/x.txt"}}
        await client.send_raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}))
        with trio.fail_after(10):
            await started.wait()
        running.server.shutdown()
        with trio.fail_after(10):
            await client.closed.wait()
        assert client.ws.closed is not None and client.ws.closed.code == 1001, client.ws.closed
        with trio.move_on_after(0.2) as waited:
            await reply.receive()
        assert waited.cancelled_caught, "a cancelled call answers nothing"


# -- HTTP front, auth, limits -----------------------------------------------------------------


async def test_health_and_plain_http(server: RunningHorace) -> None:
    for path in ("/health", "/healthz"):
        status, body = await http_get(server.health_url.replace("/health", path))
        assert status == 200 and body["status"] == "ok" and body["backend"]["ok"] is True
    base = server.health_url.removesuffix("/health")
    assert (await http_get(base + "/nothing"))[0] == 404
    assert (await http_get(base + "/mcp"))[0] == 400  # Streamable HTTP: no session


async def test_health_is_503_when_the_backend_is_down(
    server: RunningHorace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from horace.backends.protocol import BackendUnavailable

    async def down() -> None:
        raise BackendUnavailable("connection refused")

    monkeypatch.setattr(server.server.catalog.backend, "ping", down)
    status, body = await http_get(server.health_url)
    assert status == 503 and body["backend"] == {
        **body["backend"],
        "ok": False,
        "error": "connection refused",
    }

    async def silent() -> None:  # (a pool whose every connection is busy, too)
        await trio.sleep_forever()

    monkeypatch.setattr(server.server.catalog.backend, "ping", silent)
    status, body = await http_get(server.health_url)
    assert status == 503 and "no answer within 2 s" in body["backend"]["error"], body


async def test_bearer_token(settings: Settings) -> None:
    async with run_horace(serving(settings, auth_token="s3cret")) as running:
        for headers in ([], [("Authorization", "Bearer wrong")], [("Authorization", "s3cret")]):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(running.url, extra_headers=headers):
                    pass
            assert rejected.value.status_code == 401
        async with connect(running.url, extra_headers=[("Authorization", "Bearer s3cret")]) as client:
            assert (await client.request("ping"))["result"] == {}


async def test_origin_check(settings: Settings) -> None:
    async with run_horace(serving(settings, allowed_origins=("https://ok.example",))) as running:
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(running.url, extra_headers=[("Origin", "https://evil.example")]):
                pass
        assert rejected.value.status_code == 403
        said = json.loads(rejected.value.body or b"")  # a JSON-RPC error, as over Streamable HTTP
        assert said["id"] is None and "'https://evil.example' is not allowed" in said["error"]["message"]
        for origin in ("https://ok.example", "http://localhost:3000"):
            async with connect(running.url, extra_headers=[("Origin", origin)]) as client:
                assert (await client.request("ping"))["result"] == {}


async def test_a_client_gone_during_the_handshake_is_no_error(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade request and then a reset: common, and a flood of them must not fill the
    log with tracebacks (one ERROR each, before)."""
    async with run_horace(serving(settings)) as running:
        host, port = running.url.removeprefix("ws://").split("/")[0].split(":")
        for _ in range(5):
            client = trio.socket.socket()
            await client.connect((host, int(port)))
            await client.send(
                b"GET /mcp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset, not a close
        await trio.sleep(0.5)
        async with connect(running.url) as fine:
            assert (await fine.request("ping"))["result"] == {}
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failed, [r.getMessage() for r in failed]


async def test_a_first_message_sent_with_the_upgrade_is_answered(settings: Settings) -> None:
    """A client that does not wait for the 101 (RFC 6455 asks it to) and sends its first
    frame in the upgrade's packet: the message is taken after the handshake, not lost."""
    async with run_horace(serving(settings)) as running:
        host, port = running.url.removeprefix("ws://").split("/")[0].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        payload = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + masked
        await stream.send_all(
            b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame
        )
        received = b""
        with trio.fail_after(10):
            while b'"id": 1' not in received:
                data = await stream.receive_some(65536)
                assert data, received
                received += data
        assert received.startswith(b"HTTP/1.1 101 ") and b'"result": {}' in received, received
        await stream.aclose()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes([0x81, 0x02]) + b"{}", 1002),  # a client's frame unmasked
        (bytes([0x83, 0x80]) + b"mask", 1002),  # a reserved opcode
        (bytes([0x81, 0x82]) + b"\0\0\0\0" + b"\xc3\x28", 1007),  # text that is no UTF-8
        # A head announcing a message past the cap: closed at once, not when that much came.
        (bytes([0x81, 0xFF]) + (2**62).to_bytes(8, "big") + b"mask" + b"abcd", 1009),
    ],
)
async def test_a_frame_wsproto_cannot_take_fails_the_connection_with_a_close_frame(
    settings: Settings, frame: bytes, code: int
) -> None:
    """RFC 6455 7.1.7: a connection failed for a protocol error says why in a Close frame
    before its TCP connection closes (trio-websocket closes it without one)."""
    async with run_horace(serving(settings)) as running:
        host, port = running.url.removeprefix("ws://").split("/")[0].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        received = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(65536)
            assert received.startswith(b"HTTP/1.1 101 ")
            received = received.partition(b"\r\n\r\n")[2]
            await stream.send_all(frame)
            while data := await stream.receive_some(65536):
                received += data
        assert received[0] == 0x88 and received[1] < 126, received  # one Close frame, then the end
        assert int.from_bytes(received[2:4], "big") == code and len(received) == 2 + received[1]
        await stream.aclose()


async def test_a_message_past_the_cap_gets_its_close_frame_whatever_else_is_sent(settings: Settings) -> None:
    """The Close frame (1009) of a message refused as it comes is sent by the task that
    reads, maybe as another sends (the handshake's answer, just after it): it waits its
    turn. Sent past trio-websocket's own turns, it failed ("another task is currently
    sending", logged as a connection failed), and the client saw no Close frame (with the
    ``websockets`` library's client, in 1 to 13 of 30 connections)."""
    limit = 64 * 1024
    message = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "x" * (limit + limit // 16)})

    def codes(url: str) -> list[int | None]:
        seen = []
        for _ in range(30):
            with websockets.sync.client.connect(url, subprotocols=[Subprotocol("mcp")], max_size=None) as ws:
                try:
                    ws.send(message)
                    ws.recv(timeout=10)
                except websockets.exceptions.ConnectionClosed as closed:
                    seen.append(closed.rcvd.code if closed.rcvd is not None else None)
        return seen

    async with run_horace(serving(settings, max_message_bytes=limit)) as running:
        seen = await trio.to_thread.run_sync(codes, running.url)
    assert seen == [1009] * 30, {code: seen.count(code) for code in set(seen)}


@pytest.mark.parametrize(
    ("method", "version", "key", "status", "why"),
    [
        ("GET", "8", "dGhlIHNhbXBsZSBub25jZQ==", b"426 Upgrade Required", b"this server speaks version 13"),
        ("GET", "13", "abc", b"400 Bad Request", b"16 bytes in base64"),
        ("GET", "13", "dGhlIHNhbXBsZQ==", b"400 Bad Request", b"16 bytes in base64"),  # (10 bytes)
        ("PUT", "13", "dGhlIHNhbXBsZSBub25jZQ==", b"400 Bad Request", b"a GET, not a PUT"),
    ],
)
async def test_an_upgrade_rfc_6455_refuses_is_refused_saying_why(
    server: RunningHorace, method: str, version: str, key: str, status: bytes, why: bytes
) -> None:
    answer = await answer_to(
        server,
        f"{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 " + status) and why in answer, answer
    assert (b"sec-websocket-version: 13" in answer) is (version != "13")


async def answer_to(server: RunningHorace, request: bytes) -> bytes:
    """All that *server* sends back to *request* on a connection of its own, to its close."""
    host, port = server.url.removeprefix("ws://").split("/")[0].split(":")
    answer = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                answer += data
    return answer


@pytest.mark.parametrize(
    "request_head",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 with prior knowledge
        b"GET /mcp HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
)
async def test_another_http_version_is_refused_saying_so(server: RunningHorace, request_head: bytes) -> None:
    answer = await answer_to(server, request_head)
    assert answer.startswith(b"HTTP/1.1 505 ") and b"is not spoken here: HTTP/1.1" in answer, answer


async def test_a_request_target_in_the_absolute_form_is_served(server: RunningHorace) -> None:
    """RFC 9112 3.2.2: a server takes a target in the absolute form (as proxies send it)."""
    answer = await answer_to(
        server, b"GET http://127.0.0.1/health?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"status": "ok"' in answer, answer


async def test_connection_limit(settings: Settings) -> None:
    async with run_horace(serving(settings, max_connections=2)) as running:
        async with connect(running.url) as one, connect(running.url) as two:
            assert (await one.request("ping"))["result"] == (await two.request("ping"))["result"] == {}
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(running.url):
                    pass
            assert rejected.value.status_code == 503
            assert json.loads(rejected.value.body or b"")["error"]["code"] == SERVER_BUSY
        await wait_idle(running)
        async with connect(running.url) as three:  # room again once the others left
            assert (await three.request("ping"))["result"] == {}


async def test_subprotocol_mcp_accepted_when_offered(server: RunningHorace) -> None:
    async with open_websocket_url(server.url, subprotocols=["mcp"]) as ws:
        assert ws.subprotocol == "mcp"
    async with open_websocket_url(server.url.removesuffix("/mcp") + "/") as ws:
        assert ws.subprotocol is None


@pytest.mark.skipif(BACKEND != "postgres", reason="stops a PostgreSQL server of its own")
async def test_health_while_postgresql_is_stopped(tmp_path: Path) -> None:
    """A PostgreSQL cluster of this test's own, stopped under a running Horace."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "pg-throwaway"
    started = await trio.run_process([str(script), "start"], capture_stdout=True)
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.decode().split("\n")
        if "=" in line
    )
    dsn = env["HORACE_TEST_PG_DSN"].strip("'\"")
    cluster = env["HORACE_PG_THROWAWAY"].strip("'\"")
    try:
        settings = Settings(storage_path=tmp_path / "root", database_url=dsn, host="127.0.0.1", port=0)
        async with run_horace(settings) as running:
            assert (await http_get(running.health_url))[0] == 200
            await trio.run_process([str(script), "stop", cluster])
            status, body = await http_get(running.health_url)
            assert status == 503 and body["status"] == "unavailable" and body["backend"]["ok"] is False
            async with connect(running.url) as client:
                result = await client.call("horace_search_files")
                assert result["error_code"] == "BACKEND_UNAVAILABLE"
    finally:
        subprocess.run([str(script), "stop", cluster], check=False, capture_output=True)


@pytest.mark.skipif(BACKEND != "postgres", reason="a PostgreSQL role refused its tables")
async def test_health_is_503_when_the_role_is_refused_its_tables(tmp_path: Path) -> None:
    """Every call then answers BACKEND_UNAVAILABLE: /health must not say ok (its ping
    reads the tables), and says why."""
    dsn = os.environ["HORACE_TEST_PG_DSN"]
    role, schema = f"r_{os.urandom(6).hex()}", f"t_{os.urandom(8).hex()}"

    async def admin(*statements: str) -> None:
        await trio.to_thread.run_sync(pg_execute, *statements)

    await admin(f"CREATE ROLE {role} LOGIN", f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    parts = urlsplit(with_query(dsn, search_path=schema))
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    try:
        settings = Settings(storage_path=tmp_path / "root", database_url=as_role, host="127.0.0.1", port=0)
        async with run_horace(settings) as running:
            assert (await http_get(running.health_url))[0] == 200
            await admin(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}")
            status, body = await http_get(running.health_url)
            assert status == 503 and body["status"] == "unavailable", body
            assert "refuses Horace's role: permission denied" in body["backend"]["error"]
            async with connect(running.url) as client:
                result = await client.call("horace_search_files")
                assert result["error_code"] == "BACKEND_UNAVAILABLE"
    finally:
        await admin(f"DROP SCHEMA {schema} CASCADE", f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_a_call_meeting_the_store_taken_from_under_the_server_is_a_storage_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's check (every second) stops the server; a call that meets the store's own
    folder gone before that says so, not INTERNAL."""
    monkeypatch.setattr("horace.tasks.STORE_CHECK_EVERY", 3600.0)  # (the call first, here)
    async with run_horace(serving(settings)) as running, connect(running.url) as client:
        write(running.files / "user/a.txt", "a")
        assert (await client.call("horace_register_file", file_path="user/a.txt"))["file"]
        # The purge at start looks at the store too, and rightly stops the server if it
        # meets the store gone: let it finish first (it runs again in an hour).
        with trio.fail_after(30):
            while not (await running.server.health())[1]["purge"]["runs"]:
                await trio.sleep(0.01)
        shutil.rmtree(running.files.parent / ".horace")  # (a SQLite catalog's file too: still open)
        write(running.files / "user/b.txt", "b")
        reply = await client.request(
            "tools/call", {"name": "horace_register_file", "arguments": {"file_path": "user/b.txt"}}
        )
        body = tool_body(reply["result"])
        assert body["error_code"] == "STORAGE_ERROR" and "is gone" in body["message"], body


async def test_serving_beyond_this_host_without_a_token_is_warned_of(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if "with no HORACE_AUTH_TOKEN set" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="horace.server"):
        async with run_horace(serving(settings)):  # (127.0.0.1)
            pass
        assert warned() == []
        async with run_horace(attrs.evolve(serving(settings), host="0.0.0.0", auth_token="s3cret")):
            pass
        assert warned() == []
        async with run_horace(attrs.evolve(serving(settings), host="0.0.0.0")):
            pass
        assert warned() == [
            "serving on 0.0.0.0 with no HORACE_AUTH_TOKEN set, so whoever reaches the port may read, "
            "change and delete every file; set a token, or serve on 127.0.0.1"
        ]


async def test_a_change_whose_database_connection_was_lost_under_it_says_it_is_in_doubt(
    server: RunningHorace, client: McpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost under a statement (a COMMIT sent, its answer never read): a tool
    that writes cannot say whether its change was kept, and says so; one that reads, or a
    connection never made, has nothing in doubt."""
    catalog = server.server.catalog

    def losing(in_doubt: bool) -> Any:
        async def lost(*args: Any, **kwargs: Any) -> Any:
            raise BackendUnavailable("PostgreSQL at db:5432/h is unavailable: lost", in_doubt=in_doubt)

        return lost

    write(server.files / "user/a.txt", "a")
    for in_doubt in (True, False):
        monkeypatch.setattr(catalog, "register", losing(in_doubt))
        monkeypatch.setattr(catalog, "search", losing(in_doubt))
        registered = await client.call("horace_register_file", file_path="user/a.txt")
        assert registered["error_code"] == "BACKEND_UNAVAILABLE"
        assert ("may or may not have been recorded" in registered["message"]) is in_doubt, registered
        found = await client.call("horace_search_files")
        assert found["error_code"] == "BACKEND_UNAVAILABLE"
        assert "recorded" not in found["message"], found


def test_a_calls_tool_name_is_recorded_as_sent_and_cut() -> None:
    """What a tools/call names is what its turns and log line record: a name that is no
    string as the JSON sent (``12``, ``null``), none as ""; one far longer than any tool's
    cut (a hostile call's log line is not kilobytes long)."""
    from horace.server.mcp import RECORDED_NAME_CHARS, _name_recorded

    assert _name_recorded({"name": "horace_scan"}) == "horace_scan"
    assert _name_recorded({}) == ""
    assert (_name_recorded({"name": 12}), _name_recorded({"name": None})) == ("12", "null")
    assert _name_recorded({"name": "x" * 5000}) == "x" * RECORDED_NAME_CHARS + "…"
    # A name no tool has is the client's text: its secrets are not sent on (Godot's call
    # line, the turns' metadata take the name as it is recorded).
    assert "TOOLsecret1" not in _name_recorded({"name": "x?token=TOOLsecret1"})
    assert "S3cret" not in _name_recorded({"name": "postgresql://u:S3cret@db/x"})


def test_a_librarys_warning_is_one_log_record(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning (asyncpg's of a password file others may read, say) is a log record of
    one line, not Python's two raw lines on stderr (the file and the source line)."""
    import warnings

    from horace.logs import warnings_to_the_log

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    warnings_to_the_log()
    with caplog.at_level(logging.WARNING, logger="py.warnings"), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("password file has group or world access", UserWarning, stacklevel=1)
    said = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert said == ["UserWarning: password file has group or world access"]
