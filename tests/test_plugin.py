"""The pytest plugin (horace.testing), as another project would use it.

Each test writes a test file into a fresh folder and runs pytest on it in a subprocess
(``pytester.runpytest_subprocess``): no conftest of ours, no trio_mode; the fixtures
must come from the ``pytest11`` entry point of the installed package.
"""

from __future__ import annotations

import importlib.metadata

import pytest

pytest_plugins = ["pytester"]

INITIALIZE = """{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "plugin-test", "version": "0"}}}"""

COMMON = f'''
import hashlib
import json
import urllib.request

INITIALIZE = json.loads("""{INITIALIZE}""")
INITIALIZED = {{"jsonrpc": "2.0", "method": "notifications/initialized"}}


def register(request_id, path):
    return {{"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {{"name": "horace_register_file", "arguments": {{"file_path": path}}}}}}


def check_registered(reply, request_id, content, path):
    assert reply["id"] == request_id, reply
    result = reply["result"]
    assert result["isError"] is False, result
    structured = result["structuredContent"]
    assert structured["current_version"] == 1 and structured["version_created"] is True
    assert structured["file"]["file_path"] == path
    assert structured["file"]["checksum"] == hashlib.sha256(content).hexdigest()
    assert structured["file"]["size"] == len(content)


def health(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.load(response)
'''


def test_plugin_is_registered_through_its_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert [(ep.name, ep.value) for ep in entry_points if ep.value == "horace.testing"] == [
        ("horace", "horace.testing")
    ]


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--fixtures")
    # Each on its own: pytest versions list fixtures in different orders.
    result.stdout.fnmatch_lines(["horace_server -- *horace/testing.py*"])
    result.stdout.fnmatch_lines(["horace_server_thread -- *horace/testing.py*"])
    assert result.ret == 0


def test_trio_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        COMMON
        + """
import pytest
import trio
from trio_websocket import open_websocket_url


@pytest.mark.trio
async def test_register(horace_server, tmp_path):
    assert horace_server.settings.storage_path.is_relative_to(tmp_path)
    assert horace_server.url.startswith("ws://127.0.0.1:") and horace_server.url.endswith("/mcp")
    content = b"hello from a trio test\\n"
    (horace_server.files / "user").mkdir(parents=True, exist_ok=True)
    (horace_server.files / "user" / "hello.txt").write_bytes(content)
    async with open_websocket_url(horace_server.url, subprotocols=["mcp"]) as ws:
        await ws.send_message(json.dumps(INITIALIZE))
        init = json.loads(await ws.get_message())
        assert init["result"]["protocolVersion"] == "2025-06-18"
        assert init["result"]["serverInfo"]["name"] == "horace"
        await ws.send_message(json.dumps(INITIALIZED))
        await ws.send_message(json.dumps(register(2, "user/hello.txt")))
        check_registered(json.loads(await ws.get_message()), 2, content, "user/hello.txt")
    status, body = await trio.to_thread.run_sync(health, horace_server.health_url)
    assert status == 200 and body["status"] == "ok"


@pytest.mark.trio
async def test_each_test_gets_its_own_server(horace_server):
    # Nothing registered by the test above is here.
    async with open_websocket_url(horace_server.url) as ws:
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "horace_search_files", "arguments": {"status": "all"}}}))
        reply = json.loads(await ws.get_message())
    assert reply["result"]["structuredContent"]["total_count"] == 0
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_thread_fixture_in_a_sync_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        COMMON
        + """
from websockets.sync.client import connect


FIRST = {}


def test_register(horace_server_thread):
    FIRST["running"] = horace_server_thread
    content = b"hello from a sync test\\n"
    (horace_server_thread.files / "shared").mkdir(parents=True, exist_ok=True)
    (horace_server_thread.files / "shared" / "hello.txt").write_bytes(content)
    with connect(horace_server_thread.url, subprotocols=["mcp"]) as ws:
        assert ws.subprotocol == "mcp"
        ws.send(json.dumps(INITIALIZE))
        assert json.loads(ws.recv(timeout=10))["result"]["serverInfo"]["name"] == "horace"
        ws.send(json.dumps(INITIALIZED))
        ws.send(json.dumps(register("r", "shared/hello.txt")))
        check_registered(json.loads(ws.recv(timeout=10)), "r", content, "shared/hello.txt")
    status, body = health(horace_server_thread.health_url)
    assert status == 200 and body["backend"]["ok"] is True


def test_server_is_gone_after_the_test(horace_server_thread):
    # The previous test's server was shut down; this one has its own storage root.
    first = FIRST["running"]
    assert first.settings.storage_path != horace_server_thread.settings.storage_path
    assert not (horace_server_thread.files / "shared" / "hello.txt").exists()
    assert first.server.stopped, "the first test's server was not shut down"
    if first.server.port != horace_server_thread.server.port:
        try:
            health(first.health_url)
        except OSError:
            pass
        else:
            raise AssertionError("the first test's server still answers")
    status, _ = health(horace_server_thread.health_url)
    assert status == 200
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_thread_fixture_in_an_asyncio_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        COMMON
        + """
import asyncio

from websockets.asyncio.client import connect


def test_register(horace_server_thread):
    content = b"hello from asyncio\\n"
    (horace_server_thread.files / "gates").mkdir(parents=True, exist_ok=True)
    (horace_server_thread.files / "gates" / "hello.md").write_bytes(content)

    async def main():
        async with connect(horace_server_thread.url, subprotocols=["mcp"]) as ws:
            await ws.send(json.dumps(INITIALIZE))
            assert json.loads(await ws.recv())["result"]["serverInfo"]["name"] == "horace"
            await ws.send(json.dumps(INITIALIZED))
            # Two calls at once on one connection; answers matched by id.
            await ws.send(json.dumps(register(10, "gates/hello.md")))
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 11, "method": "ping"}))
            replies = {}
            while len(replies) < 2:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                replies[reply["id"]] = reply
            check_registered(replies[10], 10, content, "gates/hello.md")
            assert replies[11]["result"] == {}
            health_status, _ = await asyncio.to_thread(health, horace_server_thread.health_url)
            assert health_status == 200

    asyncio.run(main())
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    """The fixtures come from the entry point: with -p no:horace they are gone."""
    pytester.makepyfile("def test_uses(horace_server_thread):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:horace")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'horace_server_thread' not found*"])
