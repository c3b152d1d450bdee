"""Scan, watch and register agree on what may be catalogued, and a bad name is never fatal.

Never catalogued, by any of them: anything under a ``.horace`` folder, names in Horace's
temp form, names that are not UTF-8 (skipped and reported by the walk), a file with more
than one hard link (another link may be outside files/), and a path that is not a
regular file when it is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import write
from soundness import assert_sound

from horace.backends.records import FileChanges, Status
from horace.catalog import Catalog
from horace.fsck import verify
from horace.model import ErrorCode, HoraceError
from horace.server.jsonrpc import bounded
from horace.storage import Storage


async def _refused(catalog: Catalog, path: str) -> HoraceError:
    with pytest.raises(HoraceError) as refused:
        await catalog.register(path)
    return refused.value


async def test_one_bad_name_never_stops_a_scan(catalog: Catalog, files: Path) -> None:
    write(files / "user/a.txt", "a")
    write(files / "user/z.txt", "z")
    bad = os.fsencode(files / "user") + b"/caf\xe9.txt"  # Latin-1, not UTF-8
    Path(os.fsdecode(bad)).write_bytes(b"latin-1 name")
    write(files / "user/.horace/hidden.txt", "inside a .horace folder")
    write(files / "user/.horace-tmp-notes.md", "reserved form")
    report = await catalog.scan()
    assert report.registered == 2 and report.errors == (), report
    assert len(report.skipped) == 3, report.skipped
    assert any("caf\\xe9.txt" in s and "UTF-8" in s for s in report.skipped)
    assert any(".horace':" in s for s in report.skipped)
    assert any(".horace-tmp-notes.md" in s for s in report.skipped)
    assert {f.file_path for f in await catalog.backend.all_files()} == {"user/a.txt", "user/z.txt"}
    for path in ("user/.horace/hidden.txt", "user/.horace-tmp-notes.md", os.fsdecode(b"user/caf\xe9.txt")):
        assert (await _refused(catalog, path)).code is ErrorCode.INVALID_PATH
    await assert_sound(catalog)


async def test_a_path_past_path_max_is_skipped_by_the_scan_and_refused_by_name(
    catalog: Catalog, files: Path
) -> None:
    """A file deeper than PATH_MAX can be listed folder by folder, but never reached by
    its path again (info, restore, delete by path): it is skipped, and said to be. (Its
    path passes the catalog's limit on the way, which is said first.)"""
    write(files / "user/short.txt", "reachable")
    fd = os.open(files / "user", os.O_RDONLY)
    rel = "user"
    try:
        while len(os.fsencode(files.resolve() / rel)) < 4200:
            os.mkdir("d" * 200, dir_fd=fd)
            deeper = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, rel = deeper, f"{rel}/{'d' * 200}"
        deep = os.open("deep.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(deep, b"too deep")
        os.close(deep)
    finally:
        os.close(fd)
    report = await catalog.scan()
    assert report.registered == 1 and report.errors == (), report
    assert len(report.skipped) == 1 and "past the catalog's limit" in report.skipped[0], report.skipped
    assert {f.file_path for f in await catalog.backend.all_files()} == {"user/short.txt"}
    refused = await _refused(catalog, f"{rel}/deep.txt")
    assert refused.code is ErrorCode.INVALID_PATH and "past the catalog's limit" in refused.message
    # As a tool's error says it (cut to MAX_ERROR_MESSAGE_CHARS): the reason is kept.
    assert bounded(refused.message).endswith("past the catalog's limit of 2000"), bounded(refused.message)


async def test_hard_links_are_refused(catalog: Catalog, files: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside/secret.txt", "not Horace's to read")
    os.link(outside, files / "user/linked.txt")
    write(files / "user/plain.txt", "plain")
    refused = await _refused(catalog, "user/linked.txt")
    assert refused.code is ErrorCode.INVALID_PATH and "hard links" in refused.message
    report = await catalog.scan()
    assert report.registered == 1 and len(report.errors) == 1 and "hard links" in report.errors[0]
    assert "not Horace's" not in "".join(
        p.read_text(errors="replace") for p in catalog.storage.objects.rglob("*") if p.is_file()
    )
    await assert_sound(catalog)


async def test_a_catalogued_file_that_gained_a_hard_link_is_neither_deleted_nor_archived(
    catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    """Deleting or archiving versions the working copy as it leaves files/: refused for a
    file with a second link, as restoring and updating it are (not taken half-way)."""
    path = write(files / "user/doc.txt", "mine")
    registered = await catalog.register("user/doc.txt")
    write(path, "mine, changed")
    (tmp_path / "backup").mkdir()
    os.link(path, tmp_path / "backup/doc.txt")
    for change in (
        catalog.delete(registered.file.id),
        catalog.update(registered.file.id, FileChanges(status=Status.ARCHIVED)),
    ):
        with pytest.raises(HoraceError) as refused:
            await change
        assert refused.value.code is ErrorCode.INVALID_PATH and "hard links" in refused.value.message
    file = await catalog.file(registered.file.id)
    assert file.status is Status.ACTIVE and file.current_version == 1
    assert path.read_text() == "mine, changed" and os.stat(path).st_nlink == 2
    (tmp_path / "backup/doc.txt").unlink()
    deleted = await catalog.delete(registered.file.id)
    assert deleted.file.status is Status.DELETED and deleted.version_created and not path.exists()
    await assert_sound(catalog)


async def test_verify_says_a_catalogued_file_that_gained_a_hard_link_is_refused_not_missing(
    catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    path = write(files / "user/doc.txt", "mine")
    await catalog.register("user/doc.txt")
    (tmp_path / "backup").mkdir()
    os.link(path, tmp_path / "backup/doc.txt")
    (problem,) = (await verify(catalog)).problems
    assert problem.kind == "working_refused" and "hard links" in problem.detail, problem
    path.unlink()
    (problem,) = (await verify(catalog)).problems
    assert problem.kind == "working_missing", problem


async def test_a_file_that_turns_into_a_folder_mid_call_is_refused(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(files / "user/shifty", "a file, for now")
    real = Storage.stage

    def swap_then_stage(self: Storage, rel: str, *args: Any, **kwargs: Any) -> Any:
        path.unlink()
        path.mkdir()
        (path / "inside.txt").write_text("now a folder")
        return real(self, rel, *args, **kwargs)

    monkeypatch.setattr(Storage, "stage", swap_then_stage)
    refused = await _refused(catalog, "user/shifty")
    assert refused.code is ErrorCode.INVALID_PATH and "folder" in refused.message
    monkeypatch.undo()
    assert await catalog.backend.all_files() == []
    await assert_sound(catalog)
