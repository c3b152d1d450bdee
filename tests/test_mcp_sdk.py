"""End to end with a client nobody here wrote: the official MCP Python SDK 1.x, over
both transports (its WebSocket client, and its Streamable HTTP client); the 2.x client,
which cannot share a venv with 1.x, is in test_mcp_sdk2.py.

The SDK is asyncio/anyio, so each test runs it with ``asyncio.run`` against a Horace
served from a thread (:func:`horace.testing.run_horace_in_thread`) on the suite's backend.
The SDK validates every successful ``structuredContent`` against the tool's
``outputSchema``, so these tests also check that the schemas tell the truth.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import mcp.types as types
import pytest
from helpers import sha256, write
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

import horace
from horace.config import Settings
from horace.testing import RunningHorace, run_horace_in_thread

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # WebSocket is deprecated in mcp 2.0
    from mcp.client.websocket import websocket_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOOL_NAMES = {
    "horace_register_file",
    "horace_search_files",
    "horace_get_file_info",
    "horace_update_file",
    "horace_restore_version",
    "horace_delete_file",
    "horace_undelete_file",
    "horace_create_collection",
    "horace_list_collections",
    "horace_get_collection",
    "horace_add_to_collection",
    "horace_remove_from_collection",
    "horace_delete_collection",
    "horace_find_duplicates",
    "horace_verify",
    "horace_scan",
    "horace_diff_versions",
}
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def running(settings: Settings) -> Iterator[RunningHorace]:
    with run_horace_in_thread(attrs.evolve(settings, host="127.0.0.1", port=0)) as served:
        yield served


@pytest.fixture(params=["websocket", "http"])
def endpoint(running: RunningHorace, request: pytest.FixtureRequest) -> str:
    """The server's URL for the transport under test: ws://... or http://... (Streamable HTTP)."""
    return running.url if request.param == "websocket" else running.http_url


@asynccontextmanager
async def sdk_streams(url: str):  # type: ignore[no-untyped-def]
    """The SDK's (read, write) streams over the transport the URL names."""
    if url.startswith("ws://"):
        async with websocket_client(url) as (read, write_stream):
            yield read, write_stream
    else:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=300)) as http,
            streamable_http_client(url, http_client=http) as (read, write_stream, _),
        ):
            yield read, write_stream


@asynccontextmanager
async def sdk_session(url: str):  # type: ignore[no-untyped-def]
    async with sdk_streams(url) as (read, write_stream), ClientSession(read, write_stream) as session:
        yield session, await session.initialize()


def run(url: str, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with sdk_session(url) as (session, _):
            await asyncio.wait_for(body(session), 120)

    asyncio.run(main())


async def ok(
    session: ClientSession, tool: str, arguments: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """Call *tool*; it must succeed; return its structured content (already schema-checked by the SDK)."""
    result = await session.call_tool(tool, arguments or {}, **kw)
    assert not result.isError, (tool, result.structuredContent)
    structured = result.structuredContent
    assert isinstance(structured, dict)
    assert isinstance(structured["correlation_id"], str) and structured["correlation_id"]
    # The same JSON travels as text content.
    assert [c.type for c in result.content] == ["text"]
    assert json.loads(result.content[0].text) == structured  # type: ignore[union-attr]
    return structured


async def bad_arguments(session: ClientSession, tool: str, arguments: dict[str, Any]) -> Any:
    """Arguments the tool's inputSchema does not admit: JSON-RPC error -32602."""
    from mcp.shared.exceptions import McpError

    with pytest.raises(McpError) as refused:
        await session.call_tool(tool, arguments)
    assert refused.value.error.code == -32602, refused.value.error
    assert refused.value.error.data["error_code"] == "INVALID_ARGUMENT"
    return refused.value.error


async def failed(session: ClientSession, tool: str, arguments: dict[str, Any], code: str) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert result.isError, (tool, result.structuredContent)
    structured = result.structuredContent
    assert structured is not None
    assert structured["error_code"] == code, structured
    assert isinstance(structured["message"], str) and structured["message"]
    assert isinstance(structured["correlation_id"], str) and structured["correlation_id"]
    return structured


# -- handshake and the tool list ---------------------------------------------------------------


def test_initialize_and_list_tools(endpoint: str) -> None:
    async def main() -> None:
        async with sdk_session(endpoint) as (session, init):
            assert init.protocolVersion == types.LATEST_PROTOCOL_VERSION
            assert init.serverInfo.name == "horace"
            assert init.serverInfo.version == horace.__version__
            assert init.capabilities.tools is not None
            await session.send_ping()

            listed = await session.list_tools()
            assert {tool.name for tool in listed.tools} == TOOL_NAMES
            assert len(listed.tools) == 17
            for tool in listed.tools:
                assert tool.description
                assert tool.inputSchema["type"] == "object"
                assert isinstance(tool.inputSchema.get("properties"), dict)
                assert tool.outputSchema is not None and tool.outputSchema["type"] == "object"
                assert "correlation_id" in tool.outputSchema["required"]
                assert tool.annotations is not None
                for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
                    assert isinstance(getattr(tool.annotations, hint), bool), (tool.name, hint)
            by_name = {tool.name: tool for tool in listed.tools}
            assert by_name["horace_search_files"].annotations.readOnlyHint is True  # type: ignore[union-attr]
            assert by_name["horace_delete_file"].annotations.destructiveHint is True  # type: ignore[union-attr]
            assert by_name["horace_register_file"].inputSchema["required"] == ["file_path"]

    asyncio.run(main())


def test_older_protocol_version_is_echoed(endpoint: str) -> None:
    async def main() -> None:
        async with (
            sdk_streams(endpoint) as (read, write_stream),
            ClientSession(read, write_stream) as session,
        ):
            # The SDK always asks for its latest; ask for an older one by hand.
            result = await session.send_request(
                types.ClientRequest(
                    types.InitializeRequest(
                        params=types.InitializeRequestParams(
                            protocolVersion="2025-03-26",
                            capabilities=types.ClientCapabilities(),
                            clientInfo=types.Implementation(name="old", version="0"),
                        )
                    )
                ),
                types.InitializeResult,
            )
            assert result.protocolVersion == "2025-03-26"

    asyncio.run(main())


# -- every tool ---------------------------------------------------------------------------------


def test_every_tool(running: RunningHorace, endpoint: str) -> None:
    files = running.files
    report_v1 = "# Q3 report\n\nrevenue up\n"
    report_v2 = "# Q3 report\n\nrevenue up, costs down\n"
    write(files / "gates/report.md", report_v1)
    write(files / "user/notes.txt", "some notes\n")
    write(files / "user/copy-of-report.md", report_v1)
    for n in range(5):
        write(files / f"playfair/chart-{n}.svg", f"<svg>{n}</svg>")

    async def body(s: ClientSession) -> None:
        # register: version 1, the checksum of what was written
        reg = await ok(
            s,
            "horace_register_file",
            {
                "file_path": "gates/report.md",
                "metadata": {
                    "purpose": "quarterly report",
                    "tags": ["report", "q3"],
                    "project": "atlas",
                    "correlation_id": "cid-register",
                },
            },
        )
        assert reg["duplicate"] is False and reg["version_created"] is True
        assert reg["current_version"] == 1
        report = reg["file"]
        report_id = reg["file_id"]
        assert report["id"] == report_id
        assert report["file_path"] == "gates/report.md"
        assert report["checksum"] == sha256(report_v1)
        assert report["size"] == len(report_v1.encode())
        assert report["status"] == "active" and report["current_version"] == 1
        assert report["owner"] == "gates" and report["purpose"] == "quarterly report"
        assert sorted(report["tags"]) == ["q3", "report"]
        assert report["metadata"] == {"project": "atlas"}
        assert report["correlation_id"] == "cid-register" == reg["correlation_id"]
        assert report["mime_type"].startswith("text/")
        assert report["deleted_at"] is None

        # registering the same path again: the same record, no new version
        again = await ok(s, "horace_register_file", {"file_path": str(files / "gates/report.md")})
        assert again["file_id"] == report_id
        assert again["duplicate"] is False and again["version_created"] is False
        # the same content elsewhere: the existing file, duplicate=true
        dup = await ok(s, "horace_register_file", {"file_path": "user/copy-of-report.md"})
        assert dup["file_id"] == report_id and dup["duplicate"] is True and dup["version_created"] is False

        notes = await ok(
            s,
            "horace_register_file",
            {
                "file_path": "user/notes.txt",
                "metadata": {"owner": "alice", "tags": ["notes"]},
            },
        )
        notes_id = notes["file_id"]
        assert notes["file"]["owner"] == "alice" and notes["file"]["checksum"] == sha256("some notes\n")
        chart_ids = []
        for n in range(5):
            chart = await ok(
                s,
                "horace_register_file",
                {
                    "file_path": f"playfair/chart-{n}.svg",
                    "metadata": {"tags": ["chart"]},
                },
            )
            chart_ids.append(chart["file_id"])

        # search: flat, nested, by tag, paged with a cursor
        flat = await ok(s, "horace_search_files", {"tags": ["report"]})
        assert flat["total_count"] == 1 and [f["id"] for f in flat["results"]] == [report_id]
        assert flat["limit"] == 50 and flat["offset"] == 0 and flat.get("next_cursor") is None
        nested = await ok(s, "horace_search_files", {"query": {"tags": ["report"], "owner": "gates"}})
        assert [f["id"] for f in nested["results"]] == [report_id]
        nothing = await ok(s, "horace_search_files", {"query": {"tags": ["report"]}, "owner": "playfair"})
        assert nothing["total_count"] == 0 and nothing["results"] == []
        assert (await ok(s, "horace_search_files", {"any_tags": ["notes", "q3"]}))["total_count"] == 2
        assert (await ok(s, "horace_search_files", {"path": "playfair/*.svg"}))["total_count"] == 5
        assert (await ok(s, "horace_search_files", {"checksum": sha256(report_v1)}))["total_count"] == 1
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            args: dict[str, Any] = {"tags": ["chart"], "limit": 2, "sort_by": "path", "order": "asc"}
            if cursor:
                args["cursor"] = cursor
            page = await ok(s, "horace_search_files", args)
            pages += 1
            assert page["total_count"] == 5 and page["limit"] == 2
            assert len(page["results"]) <= 2
            seen += [f["file_path"] for f in page["results"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
            assert pages < 10
        assert seen == [f"playfair/chart-{n}.svg" for n in range(5)] and pages == 3
        by_offset = await ok(
            s,
            "horace_search_files",
            {"tags": ["chart"], "limit": 2, "offset": 4, "sort_by": "path", "order": "asc"},
        )
        assert [f["file_path"] for f in by_offset["results"]] == ["playfair/chart-4.svg"]

        # update: metadata and, after a change on disk, a new version
        write(files / "gates/report.md", report_v2)
        updated = await ok(
            s,
            "horace_update_file",
            {
                "file_id": report_id,
                "metadata": {"tags": ["report", "q3", "final"], "purpose": "final report"},
            },
        )
        assert updated["file_id"] == report_id
        assert updated["version_created"] is True and updated["current_version"] == 2
        assert {"tags", "purpose", "checksum", "current_version"} <= set(updated["changed_fields"])
        assert "owner" not in updated["changed_fields"]
        assert updated["file"]["checksum"] == sha256(report_v2)
        assert sorted(updated["file"]["tags"]) == ["final", "q3", "report"]
        unchanged = await ok(s, "horace_update_file", {"file_id": report_id, "metadata": {"owner": "gates"}})
        assert unchanged["version_created"] is False and unchanged["changed_fields"] == []
        assert unchanged["current_version"] == 2
        refused = await bad_arguments(
            s, "horace_update_file", {"file_id": report_id, "metadata": {"checksum": "x"}}
        )
        assert "checksum" in refused.message  # only the fields listed may change

        # get_file_info with versions, newest first
        info = await ok(s, "horace_get_file_info", {"file_id": report_id, "include_versions": True})
        assert info["file"]["current_version"] == 2 and info["file"]["purpose"] == "final report"
        assert [v["version"] for v in info["versions"]] == [2, 1]
        assert [v["checksum"] for v in info["versions"]] == [sha256(report_v2), sha256(report_v1)]
        assert [v["size"] for v in info["versions"]] == [len(report_v2.encode()), len(report_v1.encode())]
        assert all(v["restored_from_version"] is None for v in info["versions"])
        by_path = await ok(s, "horace_get_file_info", {"file_path": "gates/report.md"})
        assert by_path["file"]["id"] == report_id and by_path["versions"] is None

        # restore version 1: a new version 3, the content on disk back
        restored = await ok(s, "horace_restore_version", {"file_id": report_id, "version": 1})
        assert restored["file_id"] == report_id
        assert restored["restored_from_version"] == 1
        assert restored["new_version"] == 3 and restored["current_version"] == 3
        assert restored["preserved_version"] is None
        assert restored["file"]["checksum"] == sha256(report_v1)
        assert (files / "gates/report.md").read_text() == report_v1
        info = await ok(s, "horace_get_file_info", {"file_id": report_id, "include_versions": True})
        assert [v["version"] for v in info["versions"]] == [3, 2, 1]
        assert info["versions"][0]["restored_from_version"] == 1
        await failed(s, "horace_restore_version", {"file_id": report_id, "version": 99}, "VERSION_NOT_FOUND")

        # every version reads back as a resource; diff_versions tells them apart
        for version, content in ((1, report_v1), (2, report_v2), (3, report_v1)):
            uri = f"horace://files/{report_id}/versions/{version}"
            read = await s.read_resource(uri)  # type: ignore[arg-type]
            assert [(str(c.uri), c.text) for c in read.contents] == [(uri, content)]  # type: ignore[union-attr]
        current = await s.read_resource(f"horace://files/{report_id}")  # type: ignore[arg-type]
        assert current.contents[0].text == report_v1  # type: ignore[union-attr]
        diff = await ok(s, "horace_diff_versions", {"file_id": report_id, "from_version": 1, "to_version": 2})
        assert (
            diff["kind"] == "text"
            and diff["identical"] is False
            and "+revenue up, costs down" in diff["diff"]
        )
        same = await ok(s, "horace_diff_versions", {"file_id": report_id, "from_version": 1})
        assert same["to_version"] == 3 and same["identical"] is True

        # delete and undelete
        deleted = await ok(s, "horace_delete_file", {"file_id": notes_id})
        assert deleted["file_id"] == notes_id and deleted["status"] == "deleted"
        assert deleted["file"]["deleted_at"] is not None
        assert not (files / "user/notes.txt").exists()
        assert (await ok(s, "horace_search_files", {"tags": ["notes"]}))["total_count"] == 0
        in_bin = await ok(s, "horace_search_files", {"tags": ["notes"], "status": "deleted"})
        assert in_bin["total_count"] == 1
        undeleted = await ok(s, "horace_undelete_file", {"file_id": notes_id})
        assert undeleted["status"] == "active" and undeleted["file"]["deleted_at"] is None
        assert (files / "user/notes.txt").read_text() == "some notes\n"
        again = await ok(s, "horace_undelete_file", {"file_id": notes_id})  # idempotent, as delete
        assert (
            again["status"] == "active"
            and again["file"]["current_version"] == undeleted["file"]["current_version"]
        )

        # collections
        created = await ok(
            s,
            "horace_create_collection",
            {
                "name": "q3",
                "description": "Q3 material",
                "file_ids": [report_id, notes_id],
                "metadata": {"quarter": 3},
            },
        )
        coll = created["collection"]
        assert coll["name"] == "q3" and coll["description"] == "Q3 material"
        assert coll["member_count"] == 2 and coll["metadata"] == {"quarter": 3}
        await ok(s, "horace_create_collection", {"name": "charts", "file_ids": chart_ids[:2]})
        listed = await ok(s, "horace_list_collections", {})
        assert listed["total_count"] == 2
        assert {c["name"]: c["member_count"] for c in listed["collections"]} == {"q3": 2, "charts": 2}
        one_page = await ok(s, "horace_list_collections", {"limit": 1, "offset": 1})
        assert one_page["total_count"] == 2 and len(one_page["collections"]) == 1
        assert one_page["limit"] == 1 and one_page["offset"] == 1
        added = await ok(s, "horace_add_to_collection", {"name": "charts", "file_ids": chart_ids})
        assert added["collection"]["member_count"] == 5
        got = await ok(s, "horace_get_collection", {"name": "charts", "limit": 3})
        assert got["collection"]["member_count"] == 5 and len(got["files"]) == 3
        assert {f["id"] for f in got["files"]} <= set(chart_ids)
        assert (await ok(s, "horace_search_files", {"collection": "charts"}))["total_count"] == 5
        removed = await ok(s, "horace_remove_from_collection", {"name": "charts", "file_ids": chart_ids[3:]})
        assert removed["collection"]["member_count"] == 3
        gone = await ok(s, "horace_delete_collection", {"name": "charts"})
        assert gone == {"name": "charts", "deleted": True, "correlation_id": gone["correlation_id"]}
        await failed(s, "horace_get_collection", {"name": "charts"}, "COLLECTION_NOT_FOUND")
        assert (await ok(s, "horace_search_files", {"tags": ["chart"]}))["total_count"] == 5  # files stay
        await failed(s, "horace_add_to_collection", {"name": "q3", "file_ids": [UNKNOWN_ID]}, "NOT_CATALOGED")

        # find_duplicates: give notes the report's content
        assert (await ok(s, "horace_find_duplicates", {}))["group_count"] == 0
        write(files / "user/notes.txt", report_v1)
        await ok(s, "horace_update_file", {"file_id": notes_id})
        dups = await ok(s, "horace_find_duplicates", {"limit": 10})
        assert dups["group_count"] == 1 and len(dups["groups"]) == 1
        group = dups["groups"][0]
        assert group["checksum"] == sha256(report_v1) and group["size"] == len(report_v1.encode())
        assert {f["id"] for f in group["files"]} == {report_id, notes_id}

        # verify: fine, then a working file changed behind Horace's back
        clean = await ok(s, "horace_verify", {})
        assert clean["ok"] is True and clean["problems"] == []
        assert clean["files_checked"] == 7 and clean["objects_checked"] >= 7
        write(files / "playfair/chart-0.svg", "<svg>tampered</svg>")
        dirty = await ok(s, "horace_verify", {})
        assert dirty["ok"] is False
        assert [(p["kind"], p["file_id"], p["file_path"]) for p in dirty["problems"]] == [
            ("working_modified", chart_ids[0], "playfair/chart-0.svg")
        ]
        one = await ok(s, "horace_verify", {"file_id": chart_ids[1]})
        assert one["ok"] is True and one["files_checked"] == 1

        # scan: the tampered chart is versioned, new files registered
        write(files / "shared/new-a.txt", "new a")
        write(files / "shared/deeper/new-b.txt", "new b")
        scanned = await ok(s, "horace_scan", {})
        assert scanned["scanned"] == 10  # 7 catalogued + copy-of-report + 2 new
        assert scanned["registered"] == 2 and scanned["versioned"] == 1
        assert scanned["duplicates"] == 1  # user/copy-of-report.md
        assert scanned["unchanged"] == 6 and scanned["errors"] == []
        assert (await ok(s, "horace_verify", {}))["ok"] is True
        under = await ok(s, "horace_scan", {"path": "shared"})
        assert under["scanned"] == 2 and under["unchanged"] == 2 and under["registered"] == 0
        await failed(s, "horace_scan", {"path": "../.."}, "INVALID_PATH")

    run(endpoint, body)


def test_scan_sends_progress(running: RunningHorace, endpoint: str) -> None:
    count = 300
    for n in range(count):
        write(running.files / f"shared/batch/{n // 50}/file-{n:04}.txt", f"content {n}\n")
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async def body(s: ClientSession) -> None:
        scanned = await ok(s, "horace_scan", {"path": "shared"}, progress_callback=on_progress)
        assert scanned["scanned"] == count and scanned["registered"] == count
        assert scanned["versioned"] == 0 and scanned["errors"] == []
        # a second scan has nothing new, and also reports progress (hashing every file)
        again = await ok(s, "horace_scan", {}, progress_callback=on_progress)
        assert again["unchanged"] == count and again["registered"] == 0
        verified = await ok(s, "horace_verify", {}, progress_callback=on_progress)
        assert verified["ok"] is True and verified["files_checked"] == count

    run(endpoint, body)
    assert progress, "no progress notification arrived"
    assert all(total == count or total == 2 * count for _, total in progress), progress
    assert all(0 < done <= (total or 0) for done, total in progress), progress
    assert (count, count) in progress  # the pump always sends the final state


def test_tool_errors(endpoint: str) -> None:
    async def body(s: ClientSession) -> None:
        err = await failed(s, "horace_get_file_info", {"file_id": UNKNOWN_ID}, "NOT_CATALOGED")
        assert UNKNOWN_ID in err["message"]
        await failed(s, "horace_register_file", {"file_path": "user/missing.txt"}, "FILE_NOT_FOUND")
        await failed(s, "horace_register_file", {"file_path": "../../etc/passwd"}, "INVALID_PATH")
        await failed(s, "horace_register_file", {"file_path": "/etc/passwd"}, "INVALID_PATH")
        await failed(s, "horace_register_file", {"file_path": ".horace/catalog.db"}, "INVALID_PATH")
        await failed(s, "horace_delete_collection", {"name": "nope"}, "COLLECTION_NOT_FOUND")
        # The caller's correlation id comes back in the error body.
        result = await s.call_tool(
            "horace_get_file_info", {"file_id": UNKNOWN_ID}, meta={"correlation_id": "cid-from-meta"}
        )
        assert result.isError and result.structuredContent == {
            "error_code": "NOT_CATALOGED",
            "message": result.structuredContent["message"],  # type: ignore[index]
            "correlation_id": "cid-from-meta",
        }
        # Malformed arguments are a JSON-RPC error, which the SDK raises.
        from mcp.shared.exceptions import McpError

        with pytest.raises(McpError) as excinfo:
            await s.call_tool("horace_get_file_info", {"file_id": 42})
        assert excinfo.value.error.code == -32602
        assert "file_id" in excinfo.value.error.message
        with pytest.raises(McpError) as unknown:
            await s.call_tool("horace_no_such_tool", {})
        assert unknown.value.error.code == -32602
        await s.send_ping()  # the session is still fine

    run(endpoint, body)
