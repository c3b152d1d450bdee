"""fsck beside a working server: in-flight state is never reported or repaired as damage.

A server takes a steady mix of writes (register, update, delete, undelete, restore) from
an MCP client while `horace fsck` and `horace fsck --repair` run again and again as
separate processes on the same store and catalog, as an operator would run them. Every
run must come back clean (exit 0), and afterwards no deleted file has had its working
copy written back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import sys
from pathlib import Path

import attrs
import pytest
import trio
from helpers import write
from mcp_client import connect
from soundness import assert_sound

from horace.assemble import open_catalog
from horace.config import Settings
from horace.fsck import Finding, FsckReport, fsck, log_findings
from horace.testing import run_horace

FILES = 12


async def _fsck(settings: Settings, *flags: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    env |= {"HORACE_STORAGE_PATH": str(settings.storage_path), "HORACE_DATABASE_URL": settings.catalog_url}
    done = await trio.run_process(
        [sys.executable, "-m", "horace", "fsck", "--json", *flags],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, json.loads(done.stdout or b"{}")


@pytest.mark.slow
async def test_fsck_beside_a_busy_server_finds_nothing(settings: Settings, files: Path) -> None:
    # The production grace period: an object written a moment ago is not an orphan yet.
    served = attrs.evolve(settings, port=0, gc_grace=600.0, conversations=False, version_count=3)
    rng = random.Random()
    for i in range(FILES):
        write(files / f"user/f{i}.txt", f"file {i} v0")
    runs: list[tuple[str, int, dict]] = []
    done: dict[str, int] = {"delete": 0, "undelete": 0, "restore": 0, "update": 0}
    async with run_horace(served) as running, connect(running.url) as client:
        ids = [
            (await client.call("horace_register_file", file_path=f"user/f{i}.txt"))["file_id"]
            for i in range(FILES)
        ]
        stop = trio.Event()

        async def churn(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                i = rng.randrange(FILES)
                info = await client.call("horace_get_file_info", file_id=ids[i])
                status = info["file"]["status"]
                if status == "deleted":
                    await client.call("horace_undelete_file", file_id=ids[i])
                    done["undelete"] += 1
                elif rng.random() < 0.25:
                    await client.call("horace_delete_file", file_id=ids[i])
                    done["delete"] += 1
                elif rng.random() < 0.3:
                    await client.request(
                        "tools/call",
                        {"name": "horace_restore_version", "arguments": {"file_id": ids[i], "version": 1}},
                    )
                    done["restore"] += 1
                else:
                    done["update"] += 1
                    path = files / info["file"]["file_path"]
                    # In place, never made anew: a delete by another worker may come
                    # between the look and the write (a write after it would be a new file).
                    with contextlib.suppress(FileNotFoundError), path.open("r+") as f:
                        f.truncate(0)
                        f.write(f"file {i} by {worker} #{n}")
                    await client.request(
                        "tools/call", {"name": "horace_update_file", "arguments": {"file_id": ids[i]}}
                    )

        async with trio.open_nursery() as nursery:
            for worker in range(4):
                nursery.start_soon(churn, worker)
            for round_ in range(8):
                flags = ("--repair",) if round_ % 2 else ()
                code, report = await _fsck(served, *flags)
                runs.append((" ".join(flags) or "check", code, report))
            stop.set()

    assert min(done.values()) >= 5, f"too little work ran beside fsck to prove anything: {done}"
    for flags, code, report in runs:
        assert code == 0, (flags, report.get("findings"))
        assert report["findings"] == [], (flags, report["findings"])
    async with open_catalog(attrs.evolve(served, gc_grace=0.0, deleted_retention=0.0)) as catalog:
        for file in await catalog.backend.all_files():
            exists = (files / file.file_path).exists()
            assert exists == (file.status.value == "active"), (file.file_path, file.status, exists)
        await catalog.collect_orphans()  # what concurrent scans left, past a retention of 0 now
        await assert_sound(catalog)
    print(f"beside fsck: {done}")


def test_findings_about_no_file_are_logged_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    """Thousands of temps a killed scan left make one warning with their count, not one
    each; a finding about a file keeps a line of its own."""
    gone = "left by a process that is gone; removed"
    temps = [Finding("temp_leftover", gone, True, subject=f".horace-tmp-stage.h.1.{i}") for i in range(2048)]
    damaged = Finding("object_corrupt", "checksum mismatch", False, file_id="f1", file_path="user/a.txt")
    with caplog.at_level(logging.WARNING, logger="horace"):
        log_findings(FsckReport((*temps, damaged), files=1, versions=1, objects=1), "at start")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "fsck at start: object_corrupt: checksum mismatch",
        f"fsck at start: temp_leftover x2048: {gone} (repaired) (e.g. .horace-tmp-stage.h.1.0)",
    ], lines


async def test_a_server_whose_fsck_at_start_found_versions_without_content_is_degraded(
    settings: Settings,
) -> None:
    """A store restored with a catalog newer than its objects (or copied short): the fsck
    at start finds versions whose content is nowhere. /health says so (its fsck part not
    ok, the start's counts in it) until a check finds none, not only the log: a monitor
    reads /health."""
    files = settings.storage_path / "files"
    async with open_catalog(settings, create=True) as catalog:
        write(files / "user/a.txt", "one")
        await catalog.register("user/a.txt")
        write(files / "user/a.txt", "two")
        await catalog.register("user/a.txt")
        first = catalog.storage.object_path(hashlib.sha256(b"one").hexdigest())
    first.unlink()  # (no working copy holds it: the fsck cannot find it again)
    served = attrs.evolve(settings, host="127.0.0.1", port=0)
    async with run_horace(served) as running:
        code, body = await running.server.health()
        assert code == 200 and body["status"] == "degraded" and "fsck" in body["degraded"], body
        assert body["fsck"]["details"]["last_result"] == {
            "findings": 1,
            "unrepaired": 1,
            "content_lost": 1,
            "at_start": True,
        }
    async with open_catalog(settings) as catalog:  # the operator's word: lost for good
        await fsck(catalog, repair=True, forget_missing=True)
    async with run_horace(served) as running:
        assert (await running.server.health())[1]["status"] == "ok"
