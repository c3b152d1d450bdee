"""Horace driven by the official MCP Python SDK 2.x over Streamable HTTP.

Run by test_mcp_sdk2.py with the Python of a venv that has ``mcp>=2,<3`` (1.x and 2.x
cannot share a venv), against a Horace the test serves:

    python sdk2_client.py URL FILES_DIR

Every tool is called, a version is read as a resource; every outcome is checked here.
On success it prints a JSON summary (which the test checks too) and exits 0; any
failure exits non-zero with its traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from mcp import Client  # mcp 2.x


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def ok(client: Any, tool: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, **options)
    assert not result.is_error, (tool, result.structured_content)
    structured = result.structured_content
    assert isinstance(structured, dict) and structured["correlation_id"], (tool, structured)
    assert json.loads(result.content[0].text) == structured
    return structured


async def failed(client: Any, tool: str, arguments: dict[str, Any], code: str) -> None:
    result = await client.call_tool(tool, arguments)
    assert result.is_error and result.structured_content["error_code"] == code, (tool, result)


async def main(url: str, files: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    v1, v2 = "# report\n\nfirst\n", "# report\n\nfirst\nsecond\n"
    write(files / "gates/report.md", v1)
    write(files / "user/notes.txt", "notes\n")
    # mode "auto" (the default): server/discover first, then initialize when it is refused
    async with Client(url) as client:
        summary["protocol_version"] = client.protocol_version
        summary["server"] = client.server_info.name
        summary["tools"] = sorted(tool.name for tool in (await client.list_tools()).tools)
        await client.send_ping()

        report = await ok(
            client,
            "horace_register_file",
            {"file_path": "gates/report.md", "metadata": {"tags": ["report"], "correlation_id": "sdk2"}},
        )
        assert report["current_version"] == 1 and report["correlation_id"] == "sdk2"
        report_id = report["file_id"]
        notes_id = (await ok(client, "horace_register_file", {"file_path": "user/notes.txt"}))["file_id"]
        found = await ok(client, "horace_search_files", {"tags": ["report"]})
        assert [f["id"] for f in found["results"]] == [report_id]
        write(files / "gates/report.md", v2)
        updated = await ok(
            client, "horace_update_file", {"file_id": report_id, "metadata": {"purpose": "q3"}}
        )
        assert updated["version_created"] is True and updated["current_version"] == 2
        info = await ok(client, "horace_get_file_info", {"file_id": report_id, "include_versions": True})
        assert [v["version"] for v in info["versions"]] == [2, 1]
        restored = await ok(client, "horace_restore_version", {"file_id": report_id, "version": 1})
        assert restored["new_version"] == 3 and (files / "gates/report.md").read_text() == v1
        diff = await ok(
            client, "horace_diff_versions", {"file_id": report_id, "from_version": 1, "to_version": 2}
        )
        assert diff["kind"] == "text" and "+second" in diff["diff"]
        await failed(
            client, "horace_restore_version", {"file_id": report_id, "version": 99}, "VERSION_NOT_FOUND"
        )

        templates = (await client.list_resource_templates()).resource_templates
        summary["templates"] = [t.uri_template for t in templates]
        versions = {}
        for version in (1, 2):
            read = await client.read_resource(f"horace://files/{report_id}/versions/{version}")
            versions[version] = read.contents[0].text
        summary["versions"] = versions
        assert versions == {1: v1, 2: v2}

        assert (await ok(client, "horace_delete_file", {"file_id": notes_id}))["status"] == "deleted"
        assert (await ok(client, "horace_undelete_file", {"file_id": notes_id}))["status"] == "active"
        created = await ok(client, "horace_create_collection", {"name": "q3", "file_ids": [report_id]})
        assert created["collection"]["member_count"] == 1
        assert (await ok(client, "horace_list_collections", {}))["total_count"] == 1
        added = await ok(client, "horace_add_to_collection", {"name": "q3", "file_ids": [notes_id]})
        assert added["collection"]["member_count"] == 2
        assert len((await ok(client, "horace_get_collection", {"name": "q3"}))["files"]) == 2
        removed = await ok(client, "horace_remove_from_collection", {"name": "q3", "file_ids": [notes_id]})
        assert removed["collection"]["member_count"] == 1
        assert (await ok(client, "horace_delete_collection", {"name": "q3"}))["deleted"] is True
        assert (await ok(client, "horace_find_duplicates", {}))["group_count"] == 0
        assert (await ok(client, "horace_verify", {}))["ok"] is True

        for n in range(200):
            write(files / f"shared/batch/{n}.txt", f"content {n}\n")
        progress: list[tuple[float, float | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total))

        scanned = await ok(client, "horace_scan", {"path": "shared"}, progress_callback=on_progress)
        assert scanned["registered"] == 200 and progress and progress[-1] == (200, 200), progress
        summary["progress_notifications"] = len(progress)
    return summary


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], Path(sys.argv[2])))))
