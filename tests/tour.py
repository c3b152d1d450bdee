"""Every tool, driven through any MCP client: the checks the SDK tests share.

A test wraps its client (official SDK 1.x or 2.x, over any transport) in a small
:class:`Client` adapter and runs :func:`every_tool`, :func:`scan_progress` or
:func:`tool_errors` on a fresh store. This module imports neither Horace nor pytest nor
an SDK: the 2.x client runs it from a venv of its own (``tests/sdk2.py``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from helpers import sha256, write

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
INVALID_PARAMS = -32602
RESOURCE_NOT_FOUND = -32002

OnProgress = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class Called:
    """A tool's result, as JSON: ``content`` items as dicts with MCP's field names."""

    is_error: bool
    structured: dict[str, Any] | None
    content: list[dict[str, Any]]


class Refused(Exception):
    """A JSON-RPC error in answer to a request."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code, self.message, self.data = code, message, data


class Client(Protocol):
    """What the checks need of a client; it raises :class:`Refused` for a JSON-RPC error."""

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Called: ...

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        """The contents, as dicts with MCP's field names (uri, mimeType, text or blob)."""
        ...

    async def list_tools(self) -> list[dict[str, Any]]: ...

    async def ping(self) -> None: ...


async def ok(c: Client, tool: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Call *tool*; it must succeed; return its structured content (already checked
    against the tool's outputSchema by the SDKs)."""
    result = await c.call(tool, arguments, **kw)
    assert not result.is_error, (tool, result.structured)
    structured = result.structured
    assert isinstance(structured, dict)
    assert isinstance(structured["correlation_id"], str) and structured["correlation_id"]
    # The same JSON travels as text content.
    assert [item["type"] for item in result.content] == ["text"]
    assert json.loads(result.content[0]["text"]) == structured
    return structured


async def bad_arguments(c: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments the tool's inputSchema does not admit: with MCP 2025-11-25, which the SDKs
    negotiate, a tool error INVALID_ARGUMENT (a model reads it and can correct the call);
    its body."""
    result = await c.call(tool, arguments)
    if not result.is_error:
        raise AssertionError(f"{tool} took {arguments}")
    return error_body(result, "INVALID_ARGUMENT")


async def failed(c: Client, tool: str, arguments: dict[str, Any], code: str) -> dict[str, Any]:
    result = await c.call(tool, arguments)
    assert result.is_error, (tool, result.content)
    return error_body(result, code)


def error_body(result: Called, code: str) -> dict[str, Any]:
    """A tool error's body, checked: it comes as text content only (no structuredContent,
    which a client checks against the outputSchema of the tool's results)."""
    assert result.structured is None, result.structured
    assert [item["type"] for item in result.content] == ["text"]
    body: dict[str, Any] = json.loads(result.content[0]["text"])
    assert body["error_code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["correlation_id"], str) and body["correlation_id"]
    return body


async def tool_list(c: Client) -> None:
    tools = await c.list_tools()
    assert {tool["name"] for tool in tools} == TOOL_NAMES and len(tools) == len(TOOL_NAMES)
    for tool in tools:
        assert tool["description"]
        assert tool["inputSchema"]["type"] == "object"
        assert isinstance(tool["inputSchema"].get("properties"), dict)
        assert tool["outputSchema"]["type"] == "object"
        assert "correlation_id" in tool["outputSchema"]["required"]
        for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
            assert isinstance(tool["annotations"][hint], bool), (tool["name"], hint)
    by_name = {tool["name"]: tool for tool in tools}
    assert by_name["horace_search_files"]["annotations"]["readOnlyHint"] is True
    assert by_name["horace_delete_file"]["annotations"]["destructiveHint"] is True
    assert by_name["horace_register_file"]["inputSchema"]["required"] == ["file_path"]


async def every_tool(c: Client, files: Path) -> None:
    """All seventeen tools on a fresh store whose working files are under *files*, and
    every version of a file read back as a resource."""
    report_v1 = "# Q3 report\n\nrevenue up\n"
    report_v2 = "# Q3 report\n\nrevenue up, costs down\n"
    write(files / "gates/report.md", report_v1)
    write(files / "user/notes.txt", "some notes\n")
    write(files / "user/copy-of-report.md", report_v1)
    for n in range(5):
        write(files / f"playfair/chart-{n}.svg", f"<svg>{n}</svg>")

    # register: version 1, the checksum of what was written
    reg = await ok(
        c,
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
    again = await ok(c, "horace_register_file", {"file_path": str(files / "gates/report.md")})
    assert again["file_id"] == report_id
    assert again["duplicate"] is False and again["version_created"] is False
    # the same content elsewhere: the existing file, duplicate=true
    dup = await ok(c, "horace_register_file", {"file_path": "user/copy-of-report.md"})
    assert dup["file_id"] == report_id and dup["duplicate"] is True and dup["version_created"] is False

    notes = await ok(
        c,
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
            c,
            "horace_register_file",
            {
                "file_path": f"playfair/chart-{n}.svg",
                "metadata": {"tags": ["chart"]},
            },
        )
        chart_ids.append(chart["file_id"])

    # search: flat, nested, by tag, paged with a cursor
    flat = await ok(c, "horace_search_files", {"tags": ["report"]})
    assert flat["total_count"] == 1 and [f["id"] for f in flat["results"]] == [report_id]
    assert flat["limit"] == 50 and flat["offset"] == 0 and flat.get("next_cursor") is None
    nested = await ok(c, "horace_search_files", {"query": {"tags": ["report"], "owner": "gates"}})
    assert [f["id"] for f in nested["results"]] == [report_id]
    nothing = await ok(c, "horace_search_files", {"query": {"tags": ["report"]}, "owner": "playfair"})
    assert nothing["total_count"] == 0 and nothing["results"] == []
    assert (await ok(c, "horace_search_files", {"any_tags": ["notes", "q3"]}))["total_count"] == 2
    assert (await ok(c, "horace_search_files", {"path": "playfair/*.svg"}))["total_count"] == 5
    assert (await ok(c, "horace_search_files", {"checksum": sha256(report_v1)}))["total_count"] == 1
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        args: dict[str, Any] = {"tags": ["chart"], "limit": 2, "sort_by": "path", "order": "asc"}
        if cursor:
            args["cursor"] = cursor
        page = await ok(c, "horace_search_files", args)
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
        c,
        "horace_search_files",
        {"tags": ["chart"], "limit": 2, "offset": 4, "sort_by": "path", "order": "asc"},
    )
    assert [f["file_path"] for f in by_offset["results"]] == ["playfair/chart-4.svg"]

    # update: metadata and, after a change on disk, a new version
    write(files / "gates/report.md", report_v2)
    updated = await ok(
        c,
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
    unchanged = await ok(c, "horace_update_file", {"file_id": report_id, "metadata": {"owner": "gates"}})
    assert unchanged["version_created"] is False and unchanged["changed_fields"] == []
    assert unchanged["current_version"] == 2
    refused = await bad_arguments(
        c, "horace_update_file", {"file_id": report_id, "metadata": {"checksum": "x"}}
    )
    assert "checksum" in refused["message"]  # only the fields listed may change

    # get_file_info with versions, newest first
    info = await ok(c, "horace_get_file_info", {"file_id": report_id, "include_versions": True})
    assert info["file"]["current_version"] == 2 and info["file"]["purpose"] == "final report"
    assert [v["version"] for v in info["versions"]] == [2, 1]
    assert [v["checksum"] for v in info["versions"]] == [sha256(report_v2), sha256(report_v1)]
    assert [v["size"] for v in info["versions"]] == [len(report_v2.encode()), len(report_v1.encode())]
    assert all(v["restored_from_version"] is None for v in info["versions"])
    by_path = await ok(c, "horace_get_file_info", {"file_path": "gates/report.md"})
    assert by_path["file"]["id"] == report_id and by_path["versions"] is None

    # restore version 1: a new version 3, the content on disk back
    restored = await ok(c, "horace_restore_version", {"file_id": report_id, "version": 1})
    assert restored["file_id"] == report_id
    assert restored["restored_from_version"] == 1
    assert restored["new_version"] == 3 and restored["current_version"] == 3
    assert restored["preserved_version"] is None
    assert restored["file"]["checksum"] == sha256(report_v1)
    assert (files / "gates/report.md").read_text() == report_v1
    info = await ok(c, "horace_get_file_info", {"file_id": report_id, "include_versions": True})
    assert [v["version"] for v in info["versions"]] == [3, 2, 1]
    assert info["versions"][0]["restored_from_version"] == 1
    await failed(c, "horace_restore_version", {"file_id": report_id, "version": 99}, "VERSION_NOT_FOUND")

    # diff_versions: a unified diff of two text versions; v1 and v3 (restored) are the same
    diff = await ok(c, "horace_diff_versions", {"file_id": report_id, "from_version": 1, "to_version": 2})
    assert diff["kind"] == "text" and diff["identical"] is False and diff["truncated"] is False
    assert "-revenue up\n" in diff["diff"] and "+revenue up, costs down\n" in diff["diff"]
    assert (diff["from_checksum"], diff["to_checksum"]) == (sha256(report_v1), sha256(report_v2))
    same = await ok(c, "horace_diff_versions", {"file_path": "gates/report.md", "from_version": 1})
    assert same["to_version"] == 3 and same["identical"] is True and same["diff"] == ""

    # every version as a resource, read back from the object store (not the working file)
    write(files / "gates/report.md", "unsaved edit\n")
    for number, text in ((1, report_v1), (2, report_v2), (3, report_v1)):
        uri = f"horace://files/{report_id}/versions/{number}"
        assert await c.read_resource(uri) == [{"uri": uri, "mimeType": report["mime_type"], "text": text}]
    current = f"horace://files/{report_id}"
    assert await c.read_resource(current) == [
        {"uri": current, "mimeType": report["mime_type"], "text": report_v1}
    ]
    try:
        await c.read_resource(f"horace://files/{report_id}/versions/99")
    except Refused as missing:
        assert missing.code == RESOURCE_NOT_FOUND, missing
    else:
        raise AssertionError("a version that does not exist was read")
    write(files / "gates/report.md", report_v1)

    # delete and undelete
    deleted = await ok(c, "horace_delete_file", {"file_id": notes_id})
    assert deleted["file_id"] == notes_id and deleted["status"] == "deleted"
    assert deleted["file"]["deleted_at"] is not None
    assert not (files / "user/notes.txt").exists()
    assert (await ok(c, "horace_search_files", {"tags": ["notes"]}))["total_count"] == 0
    in_bin = await ok(c, "horace_search_files", {"tags": ["notes"], "status": "deleted"})
    assert in_bin["total_count"] == 1
    undeleted = await ok(c, "horace_undelete_file", {"file_id": notes_id})
    assert undeleted["status"] == "active" and undeleted["file"]["deleted_at"] is None
    assert (files / "user/notes.txt").read_text() == "some notes\n"
    again = await ok(c, "horace_undelete_file", {"file_id": notes_id})  # idempotent, as delete
    assert (
        again["status"] == "active"
        and again["file"]["current_version"] == undeleted["file"]["current_version"]
    )

    # collections
    created = await ok(
        c,
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
    await ok(c, "horace_create_collection", {"name": "charts", "file_ids": chart_ids[:2]})
    listed = await ok(c, "horace_list_collections", {})
    assert listed["total_count"] == 2
    assert {c["name"]: c["member_count"] for c in listed["collections"]} == {"q3": 2, "charts": 2}
    one_page = await ok(c, "horace_list_collections", {"limit": 1, "offset": 1})
    assert one_page["total_count"] == 2 and len(one_page["collections"]) == 1
    assert one_page["limit"] == 1 and one_page["offset"] == 1
    added = await ok(c, "horace_add_to_collection", {"name": "charts", "file_ids": chart_ids})
    assert added["collection"]["member_count"] == 5
    got = await ok(c, "horace_get_collection", {"name": "charts", "limit": 3})
    assert got["collection"]["member_count"] == 5 and len(got["files"]) == 3
    assert {f["id"] for f in got["files"]} <= set(chart_ids)
    assert (await ok(c, "horace_search_files", {"collection": "charts"}))["total_count"] == 5
    removed = await ok(c, "horace_remove_from_collection", {"name": "charts", "file_ids": chart_ids[3:]})
    assert removed["collection"]["member_count"] == 3
    gone = await ok(c, "horace_delete_collection", {"name": "charts"})
    assert gone == {"name": "charts", "deleted": True, "correlation_id": gone["correlation_id"]}
    await failed(c, "horace_get_collection", {"name": "charts"}, "COLLECTION_NOT_FOUND")
    assert (await ok(c, "horace_search_files", {"tags": ["chart"]}))["total_count"] == 5  # files stay
    await failed(c, "horace_add_to_collection", {"name": "q3", "file_ids": [UNKNOWN_ID]}, "NOT_CATALOGED")

    # find_duplicates: give notes the report's content
    assert (await ok(c, "horace_find_duplicates", {}))["group_count"] == 0
    write(files / "user/notes.txt", report_v1)
    await ok(c, "horace_update_file", {"file_id": notes_id})
    dups = await ok(c, "horace_find_duplicates", {"limit": 10})
    assert dups["group_count"] == 1 and len(dups["groups"]) == 1
    group = dups["groups"][0]
    assert group["checksum"] == sha256(report_v1) and group["size"] == len(report_v1.encode())
    assert {f["id"] for f in group["files"]} == {report_id, notes_id}

    # verify: fine, then a working file changed behind Horace's back
    clean = await ok(c, "horace_verify", {})
    assert clean["ok"] is True and clean["problems"] == []
    assert clean["files_checked"] == 7 and clean["objects_checked"] >= 7
    write(files / "playfair/chart-0.svg", "<svg>tampered</svg>")
    dirty = await ok(c, "horace_verify", {})
    assert dirty["ok"] is False
    assert [(p["kind"], p["file_id"], p["file_path"]) for p in dirty["problems"]] == [
        ("working_modified", chart_ids[0], "playfair/chart-0.svg")
    ]
    one = await ok(c, "horace_verify", {"file_id": chart_ids[1]})
    assert one["ok"] is True and one["files_checked"] == 1

    # scan: the tampered chart is versioned, new files registered
    write(files / "shared/new-a.txt", "new a")
    write(files / "shared/deeper/new-b.txt", "new b")
    scanned = await ok(c, "horace_scan", {})
    assert scanned["scanned"] == 10  # 7 catalogued + copy-of-report + 2 new
    assert scanned["registered"] == 3 and scanned["versioned"] == 1  # the copy is a file of its own
    assert scanned["duplicates"] == 0  # (user/copy-of-report.md, registered as a duplicate before)
    assert scanned["unchanged"] == 6 and scanned["errors"] == []
    assert (await ok(c, "horace_verify", {}))["ok"] is True
    under = await ok(c, "horace_scan", {"path": "shared"})
    assert under["scanned"] == 2 and under["unchanged"] == 2 and under["registered"] == 0
    await failed(c, "horace_scan", {"path": "../.."}, "INVALID_PATH")


async def scan_progress(c: Client, files: Path, count: int = 300) -> list[tuple[float, float | None]]:
    """Scans and a verify with a progress token: the progress notifications they sent."""
    for n in range(count):
        write(files / f"shared/batch/{n // 50}/file-{n:04}.txt", f"content {n}\n")
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    scanned = await ok(c, "horace_scan", {"path": "shared"}, on_progress=on_progress)
    assert scanned["scanned"] == count and scanned["registered"] == count
    assert scanned["versioned"] == 0 and scanned["errors"] == []
    # a second scan has nothing new, and also reports progress (hashing every file)
    again = await ok(c, "horace_scan", {}, on_progress=on_progress)
    assert again["unchanged"] == count and again["registered"] == 0
    verified = await ok(c, "horace_verify", {}, on_progress=on_progress)
    assert verified["ok"] is True and verified["files_checked"] == count

    assert progress, "no progress notification arrived"
    assert all(total == count or total == 2 * count for _, total in progress), progress
    assert all(0 < done <= (total or 0) for done, total in progress), progress
    assert (count, count) in progress  # the pump always sends the final state
    return progress


async def tool_errors(c: Client) -> None:
    err = await failed(c, "horace_get_file_info", {"file_id": UNKNOWN_ID}, "NOT_CATALOGED")
    assert UNKNOWN_ID in err["message"]
    await failed(c, "horace_register_file", {"file_path": "user/missing.txt"}, "FILE_NOT_FOUND")
    await failed(c, "horace_register_file", {"file_path": "../../etc/passwd"}, "INVALID_PATH")
    await failed(c, "horace_register_file", {"file_path": "/etc/passwd"}, "INVALID_PATH")
    await failed(c, "horace_register_file", {"file_path": ".horace/catalog.db"}, "INVALID_PATH")
    await failed(c, "horace_delete_collection", {"name": "nope"}, "COLLECTION_NOT_FOUND")
    # The caller's correlation id comes back in the error body.
    result = await c.call(
        "horace_get_file_info", {"file_id": UNKNOWN_ID}, meta={"correlation_id": "cid-from-meta"}
    )
    assert result.is_error
    assert error_body(result, "NOT_CATALOGED")["correlation_id"] == "cid-from-meta"
    # Malformed arguments are a tool error too (MCP 2025-11-25); an unknown tool is a
    # JSON-RPC error, which the SDKs raise.
    wrong = await bad_arguments(c, "horace_get_file_info", {"file_id": 42})
    assert "file_id" in wrong["message"]
    try:
        await c.call("horace_no_such_tool", {})
    except Refused as unknown:
        assert unknown.code == INVALID_PARAMS, unknown.message
    else:
        raise AssertionError("an unknown tool was called")
    await c.ping()  # the session is still fine
