"""History as MCP resources, and the rest of what the server declares: completion,
logging, capabilities. Over a real WebSocket; every transport shares this session layer."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import write
from mcp_client import McpClient, connect

from horace.config import Settings
from horace.server import resources
from horace.server.jsonrpc import MAX_ERROR_MESSAGE_CHARS, bounded
from horace.server.resources import Resources
from horace.testing import RunningHorace, run_horace


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[RunningHorace]:
    async with run_horace(
        attrs.evolve(settings, port=0, conversations=False, max_read_bytes=100_000)
    ) as running:
        yield running


async def register(client: McpClient, files: Path, rel: str, *contents: bytes | str) -> str:
    file_id = ""
    for content in contents:
        write(files / rel, content)
        file_id = (await client.call("horace_register_file", file_path=rel))["file_id"]
    return file_id


async def read(client: McpClient, uri: str) -> dict[str, Any]:
    return await client.request("resources/read", {"uri": uri})


async def test_capabilities_are_what_is_served(served: RunningHorace) -> None:
    async with connect(served.url) as client:
        capabilities = (await client.initialize("2025-11-25"))["capabilities"]
        assert set(capabilities) == {"tools", "resources", "completions", "logging"}
        for method in ("tools/list", "resources/list", "resources/templates/list", "ping"):
            assert "result" in await client.request(method, {}), method
        templates = (await client.request("resources/templates/list", {}))["result"]["resourceTemplates"]
        assert [t["uriTemplate"] for t in templates] == [
            "horace://files/{file_id}",
            "horace://files/{file_id}/versions/{version}",
        ]
        assert (await client.request("prompts/list", {}))["error"]["code"] == -32601  # not declared


async def test_versions_read_as_text_or_blob(served: RunningHorace) -> None:
    async with connect(served.url) as client:
        notes = await register(client, served.files, "user/notes.md", "# one\n", "# two\n")
        image = os.urandom(300)
        blob = await register(client, served.files, "user/pic.png", b"\x89PNG\r\n\x1a\n" + image)
        current = (await read(client, f"horace://files/{notes}"))["result"]["contents"]
        assert current == [{"uri": f"horace://files/{notes}", "mimeType": "text/markdown", "text": "# two\n"}]
        first = (await read(client, f"horace://files/{notes}/versions/1"))["result"]["contents"][0]
        assert first["text"] == "# one\n"
        binary = (await read(client, f"horace://files/{blob}"))["result"]["contents"][0]
        assert binary["mimeType"] == "image/png" and "text" not in binary
        assert base64.b64decode(binary["blob"]) == b"\x89PNG\r\n\x1a\n" + image
        # The working file changed since: a resource is a kept version, not the working file.
        write(served.files / "user/notes.md", "# unsaved\n")
        assert (await read(client, f"horace://files/{notes}"))["result"]["contents"][0]["text"] == "# two\n"


async def test_a_version_is_read_with_its_own_type(served: RunningHorace) -> None:
    """A file of no extension is typed by its first bytes: text once, a PNG now. Each
    version reads as what it holds (the file's type is its current version's)."""
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(300)
    async with connect(served.url) as client:
        notes = await register(client, served.files, "user/notes", "plain words\n", png)
        first = (await read(client, f"horace://files/{notes}/versions/1"))["result"]["contents"][0]
        assert first["mimeType"] == "text/plain" and first["text"] == "plain words\n", first
        second = (await read(client, f"horace://files/{notes}/versions/2"))["result"]["contents"][0]
        assert second["mimeType"] == "image/png" and base64.b64decode(second["blob"]) == png


async def test_what_cannot_be_read_is_a_clear_error(served: RunningHorace) -> None:
    async with connect(served.url) as client:
        big = await register(client, served.files, "user/big.txt", "x" * 200_000)
        notes = await register(client, served.files, "user/notes.md", "# one\n")
        refused = (await read(client, f"horace://files/{big}"))["error"]
        assert refused["code"] == -32602 and "HORACE_MAX_READ_BYTES" in refused["message"]
        for uri in (
            f"horace://files/{notes}/versions/9",
            f"horace://files/{notes}/versions/01",  # (version 1 is versions/1: one name each)
            f"horace://files/{notes}/versions/0",
            f"horace://files/{notes}/versions/9223372036854775808",  # past what a column holds
            f"horace://files/{notes}/versions/{'9' * 5000}",
            "horace://files/00000000-0000-0000-0000-000000000000",
            "horace://elsewhere/x",
            "file:///etc/passwd",
        ):
            error = (await read(client, uri))["error"]
            # (one too long to be Horace's is quoted as far as an error message quotes)
            assert error["code"] == -32002 and error["data"]["uri"] == bounded(uri), (uri, error)
            assert (error["data"]["uri"] == uri) is (len(uri) <= MAX_ERROR_MESSAGE_CHARS)
        assert (await client.request("resources/read", {}))["error"]["code"] == -32602


async def test_a_text_whose_json_passes_the_reply_limit_says_so(settings: Settings) -> None:
    """Control characters take six bytes each as JSON: a text within HORACE_MAX_READ_BYTES
    can make a reply past HORACE_MAX_REPLY_BYTES, and there is no smaller to ask for."""
    limits = attrs.evolve(settings, port=0, conversations=False, max_reply_bytes=65536, max_read_bytes=65536)
    async with run_horace(limits) as running, connect(running.url) as client:
        controls = await register(client, running.files, "user/controls.txt", "\x01" * 20_000)
        error = (await read(client, f"horace://files/{controls}"))["error"]
        assert error["code"] == -32003 and error["data"]["limit"] == 65536
        assert "escaped as JSON is larger than the file" in error["message"]
        assert "smaller limit" not in error["message"]


async def test_resources_list_pages_the_catalog(
    served: RunningHorace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "PAGE", 50)  # (1000 a page: three pages of 50 here)
    async with connect(served.url) as client:
        ids = {await register(client, served.files, f"shared/r{i:03}.txt", f"r{i}") for i in range(130)}
        seen: list[dict[str, Any]] = []
        cursor, pages = None, 0
        while True:
            listed = (await client.request("resources/list", {"cursor": cursor} if cursor else {}))["result"]
            seen += listed["resources"]
            pages += 1
            cursor = listed.get("nextCursor")
            if not cursor:
                break
        assert pages == 3
        assert {r["uri"].rsplit("/", 1)[1] for r in seen} == ids
        assert [r["name"] for r in seen] == sorted(r["name"] for r in seen)
        assert all(r["mimeType"] == "text/plain" and r["size"] >= 2 for r in seen)


async def test_completion_and_log_level(served: RunningHorace) -> None:
    async with connect(served.url) as client:
        file_id = await register(client, served.files, "gates/report-q3.md", "1", "2", "3")
        ref = {"type": "ref/resource", "uri": "horace://files/{file_id}/versions/{version}"}
        by_path = await client.request(
            "completion/complete", {"ref": ref, "argument": {"name": "file_id", "value": "q3"}}
        )
        assert by_path["result"]["completion"] == {"values": [file_id], "total": 1, "hasMore": False}
        # More matches than a completion holds (100): it says so, with no total.
        for i in range(150):
            write(served.files / f"shared/many/m{i:03}.txt", f"m{i}")
        await client.call("horace_scan")
        many = await client.request(
            "completion/complete", {"ref": ref, "argument": {"name": "file_id", "value": "many/m"}}
        )
        assert len(many["result"]["completion"]["values"]) == 100
        assert many["result"]["completion"]["hasMore"] is True and "total" not in many["result"]["completion"]
        anything = await client.request(  # ids that start with 0, then more than 100 paths that hold it
            "completion/complete", {"ref": ref, "argument": {"name": "file_id", "value": "0"}}
        )
        assert anything["result"]["completion"]["hasMore"] is True
        for typed in (file_id[:4], file_id[:11], file_id[:13].replace("-", "").upper()):
            by_id = await client.request(
                "completion/complete", {"ref": ref, "argument": {"name": "file_id", "value": typed}}
            )
            assert file_id in by_id["result"]["completion"]["values"], (typed, by_id)
        endless = await client.request(
            "completion/complete", {"ref": ref, "argument": {"name": "file_id", "value": "q" * 100_000}}
        )
        assert endless["result"]["completion"]["values"] == [], endless
        versions = await client.request(
            "completion/complete",
            {
                "ref": ref,
                "argument": {"name": "version", "value": ""},
                "context": {"arguments": {"file_id": file_id}},
            },
        )
        assert versions["result"]["completion"]["values"] == ["3", "2", "1"]
        prompt = {"type": "ref/prompt", "name": "nothing"}
        empty = await client.request(
            "completion/complete", {"ref": prompt, "argument": {"name": "a", "value": ""}}
        )
        assert empty["result"]["completion"]["values"] == []
        # No log messages until asked; then a failed call is one.
        await client.call("horace_get_file_info", file_path="nothing/here.md")
        assert not [n for n in client.notifications if n["method"] == "notifications/message"]
        assert (await client.request("logging/setLevel", {"level": "warning"}))["result"] == {}
        assert (await client.request("logging/setLevel", {"level": "loud"}))["error"]["code"] == -32602
        await client.call("horace_get_file_info", file_path="nothing/here.md")
        messages = [n["params"] for n in client.notifications if n["method"] == "notifications/message"]
        assert (
            messages
            and messages[0]["level"] == "warning"
            and messages[0]["data"]["error_code"] == "NOT_CATALOGED"
        )


async def test_a_bug_met_by_a_request_is_an_internal_error_with_its_id(
    served: RunningHorace, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Any, params: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Resources, "read", broken)
    async with connect(served.url) as client:
        with trio.fail_after(10):  # an answer without the id would never be matched
            reply = await client.request("resources/read", {"uri": "horace://files/x"}, request_id="r-1")
        assert reply["id"] == "r-1" and reply["error"]["code"] == -32603, reply
        assert (await client.request("ping"))["result"] == {}  # the session goes on
