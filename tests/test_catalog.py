"""The catalog's semantics, on the backend the run is for."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import catalog_execute, sha256, write
from soundness import assert_sound, temps_left

import horace.server.tools as tools
import horace.storage
from horace.assemble import open_catalog
from horace.backends.protocol import BackendUnavailable, DatabaseFull
from horace.backends.records import (
    INT64_MAX,
    FileChanges,
    FileRecord,
    Order,
    Retention,
    SearchQuery,
    SortKey,
    Status,
)
from horace.backends.words import QUERY_WORDS
from horace.catalog import MAX_LABEL_CHARS, Catalog, CatalogPolicy, Vanished
from horace.config import Settings
from horace.fsck import fsck, verify
from horace.model import ErrorCode, HoraceError, NewFile
from horace.paths import MAX_PATH_BYTES
from horace.server.tools import TOOLS, CallContext
from horace.storage import TMP_PREFIX, Storage, StorageUnusable, TempKind, TempName, temp_name


async def objects_of(catalog: Catalog, file_id: str) -> dict[int, bytes]:
    versions = await catalog.backend.versions(file_id)
    return {v.version: catalog.storage.object_path(v.checksum).read_bytes() for v in versions}


# -- registration ---------------------------------------------------------------------------


async def test_register_records_version_one_as_a_real_object(catalog: Catalog, files: Path) -> None:
    write(files / "gates/report.md", "# first")
    result = await catalog.register("gates/report.md", NewFile(tags=("a", "b"), purpose="test"))
    assert not result.duplicate and result.version_created
    file = result.file
    assert (file.file_path, file.current_version, file.owner) == ("gates/report.md", 1, "gates")
    assert file.checksum == sha256("# first") and file.size == 7
    assert file.mime_type == "text/markdown"
    assert file.tags == ("a", "b")
    assert await objects_of(catalog, file.id) == {1: b"# first"}


async def test_file_ids_are_uuid7_that_sort_in_registration_order(catalog: Catalog, files: Path) -> None:
    start = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    ids = []
    for i in range(3):  # one by one, a millisecond apart
        catalog.clock = lambda i=i: start + timedelta(milliseconds=i)
        write(files / f"user/one-{i}.txt", f"one {i}")
        ids.append((await catalog.register(f"user/one-{i}.txt")).file.id)
    catalog.clock = lambda: start + timedelta(milliseconds=3)
    for i in range(100):  # a scan's batch: one millisecond, told apart by the random bits
        write(files / f"shared/batch-{i:03d}.txt", f"batch {i}")
    await catalog.scan()
    batch = [e.file_id for e in await catalog.backend.working_index() if e.file_path.startswith("shared/")]
    assert len(set(batch)) == 100
    for file_id in ids + batch:
        parsed = uuid.UUID(file_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, file_id)
    millis = [uuid.UUID(file_id).int >> 80 for file_id in ids + batch]
    start_ms = int(start.timestamp() * 1000)
    assert millis == [start_ms, start_ms + 1, start_ms + 2] + [start_ms + 3] * 100
    assert ids == sorted(ids) and max(ids) < min(batch)


def incompressible(chars: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789") -> str:
    """Random text: PostgreSQL compresses a repetitive index key, and lets it through."""
    return "".join(random.choices(alphabet, k=chars))


async def test_labels_past_what_the_catalog_indexes_are_refused(catalog: Catalog, files: Path) -> None:
    """Owners, tags and collection names are indexed; PostgreSQL's B-tree holds at most
    2,704 bytes an entry. 200 characters is the limit on every backend."""
    write(files / "user/a.txt", "a")
    long = incompressible(MAX_LABEL_CHARS + 1)
    for new in (
        NewFile(owner=long),
        NewFile(tags=("ok", long)),
        NewFile(collection=long),
        NewFile(collection=" "),
    ):
        with pytest.raises(HoraceError) as refused:
            await catalog.register("user/a.txt", new)
        assert refused.value.code is ErrorCode.INVALID_ARGUMENT, new
        assert str(MAX_LABEL_CHARS) in refused.value.message
    assert await catalog.backend.working_index() == []
    widest = incompressible(MAX_LABEL_CHARS, "𝄞😀€ßж")  # 200 characters of up to four bytes
    file = (
        await catalog.register("user/a.txt", NewFile(owner=widest, tags=(widest,), collection=widest))
    ).file
    assert (file.owner, file.tags) == (widest, (widest,))
    assert [f.id for f in (await catalog.search(SearchQuery(owner=widest, tags=(widest,)))).results] == [
        file.id
    ]
    for changes in (FileChanges(owner=long), FileChanges(tags=(long,)), FileChanges(collection=long)):
        with pytest.raises(HoraceError) as refused:
            await catalog.update(file.id, changes)
        assert refused.value.code is ErrorCode.INVALID_ARGUMENT, changes
    assert await catalog.file(file.id) == file


async def test_a_path_past_the_catalogs_limit_is_refused_and_skipped(catalog: Catalog, files: Path) -> None:
    """Paths are indexed too: past MAX_PATH_BYTES (UTF-8) a file is refused by name and
    passed over by a scan, which says so, and takes the other files of its batch."""
    folders = "/".join(incompressible(200) for _ in range(9))  # 1,809 bytes
    at_limit = f"user/{folders}/" + incompressible(MAX_PATH_BYTES - len(folders) - 6)
    past = at_limit + "x"
    assert len(at_limit.encode()) == MAX_PATH_BYTES
    write(files / at_limit, "at the limit")
    write(files / past, "past it")
    write(files / "user/b.txt", "b")
    with pytest.raises(HoraceError) as refused:
        await catalog.register(past)
    assert (
        refused.value.code is ErrorCode.INVALID_PATH and f"limit of {MAX_PATH_BYTES}" in refused.value.message
    )
    report = await catalog.scan()
    assert report.registered == 2 and report.errors == ()
    assert len(report.skipped) == 1 and f"limit of {MAX_PATH_BYTES}" in report.skipped[0]
    assert {e.file_path for e in await catalog.backend.working_index()} == {at_limit, "user/b.txt"}


async def test_a_move_to_where_the_file_is_already_changes_nothing(
    catalog: Catalog, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two watchers of one store (a release without the watch lease beside this one) see the
    same rename: the second finds the file at its new path already."""
    write(files / "user/a.txt", "a")
    file = (await catalog.register("user/a.txt")).file
    with caplog.at_level("INFO", logger="horace"):
        again = await catalog.move(file.id, "user/a.txt")
    assert again == file
    assert not [r for r in caplog.records if r.getMessage().startswith("moved ")]


async def test_version_one_restorable_after_overwrite(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "original")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("overwritten by an external writer")  # no Horace call in between
    restored = await catalog.restore(file.id, 1)
    assert path.read_text() == "original"
    # The overwritten content was kept first, then version 1 came back as a new version.
    assert restored.preserved_version == 2
    assert restored.version.version == 3 and restored.version.restored_from_version == 1
    assert await objects_of(catalog, file.id) == {
        1: b"original",
        2: b"overwritten by an external writer",
        3: b"original",
    }


async def test_every_version_checksum_matches_its_content(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.bin", b"v1")
    file = (await catalog.register(str(path))).file  # absolute path inside files/
    for content in (b"v2", b"v3" * 1000, b"", b"v5"):
        path.write_bytes(content)
        assert (await catalog.update(file.id, FileChanges())).version_created
    for v in await catalog.backend.versions(file.id):
        data = catalog.storage.object_path(v.checksum).read_bytes()
        assert sha256(data) == v.checksum and len(data) == v.size


async def test_restore_on_an_unchanged_file(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "one")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("two")
    await catalog.update(file.id, FileChanges())
    restored = await catalog.restore(file.id, 1)
    assert restored.preserved_version is None  # nothing unsaved to keep
    assert restored.file.current_version == 3
    assert path.read_text() == "one"
    again = await catalog.restore(file.id, 3)  # restoring the current version still adds one
    assert again.version.version == 4 and again.version.restored_from_version == 3
    assert path.read_text() == "one"


@pytest.mark.parametrize("mode", [0o755, 0o600, 0o640])
async def test_restore_keeps_the_mode_of_the_file_it_replaces(
    catalog: Catalog, files: Path, mode: int
) -> None:
    """A script stays executable, a private file private: the content that goes in takes
    the permission bits of the working file it replaces (the umask does not apply)."""
    path = write(files / "user/run.sh", "#!/bin/sh\necho one\n")
    file = (await catalog.register("user/run.sh")).file
    path.write_text("#!/bin/sh\necho two\n")
    await catalog.register("user/run.sh")
    path.chmod(mode)
    old_umask = os.umask(0o077)
    try:
        await catalog.restore(file.id, 1)
    finally:
        os.umask(old_umask)
    assert path.read_text() == "#!/bin/sh\necho one\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o755, 0o600], ids=oct)
async def test_a_file_taken_out_comes_back_with_its_mode(catalog: Catalog, files: Path, mode: int) -> None:
    """A delete or an archive takes the working file out whole: an undelete, or the file
    made active again, writes it back with the permission bits it left with (a private
    file does not come back readable by all), as a failed status change puts it back."""
    path = write(files / "user/run.sh", "#!/bin/sh\necho one\n")
    file = (await catalog.register("user/run.sh")).file
    path.chmod(mode)
    old_umask = os.umask(0o022)
    try:
        await catalog.delete(file.id)
        await catalog.undelete(file.id)
        assert stat.S_IMODE(path.stat().st_mode) == mode
        path.chmod(mode & 0o700)  # the latest mode is the one kept
        await catalog.update(file.id, FileChanges(status=Status.ARCHIVED))
        await catalog.update(file.id, FileChanges(status=Status.ACTIVE))
        assert stat.S_IMODE(path.stat().st_mode) == mode & 0o700
    finally:
        os.umask(old_umask)
    assert path.read_text() == "#!/bin/sh\necho one\n"


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1777], ids=oct)
async def test_a_file_written_back_is_never_setuid_setgid_or_sticky(
    catalog: Catalog, files: Path, mode: int
) -> None:
    """Horace writes a file back as its own user (root, maybe), not as the one who wrote
    it: a setuid bit kept would run that user's bytes as root. Restore, undelete and
    fsck --repair keep the read, write and execute bits only."""
    path = write(files / "svc/tool", "#!/bin/sh\n")
    path.chmod(mode)
    file = (await catalog.register("svc/tool")).file
    path.write_text("#!/bin/sh\necho two\n")
    path.chmod(mode)
    await catalog.register("svc/tool")
    await catalog.restore(file.id, 1)
    assert stat.S_IMODE(path.stat().st_mode) == mode & 0o777
    path.chmod(mode)
    await catalog.delete(file.id)
    await catalog.undelete(file.id)
    assert stat.S_IMODE(path.stat().st_mode) == mode & 0o777
    path.chmod(mode)
    assert (await catalog.scan()).unchanged == 1  # (the mode seen)
    path.unlink()
    await fsck(catalog, repair=True)
    assert stat.S_IMODE(path.stat().st_mode) == mode & 0o777


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user's: made by root")
async def test_a_restore_keeps_the_owner_and_group_and_an_undelete_a_setgid_folder_s_group(
    catalog: Catalog, files: Path
) -> None:
    """The content a restore puts in place is written in .horace/tmp, as Horace's user, and
    renamed over the file: it keeps the replaced file's owner and group (a group member
    read a shared file; root's restore made it root's, that user's no more). A file
    brought back where none is takes a setgid folder's group, as one made in it would."""
    team = files / "shared/team"
    team.mkdir(parents=True)
    os.chown(team, 0, 4321)
    team.chmod(0o2770)
    path = write(team / "doc.txt", "one")
    os.chown(path, 1234, 4321)
    path.chmod(0o640)
    file = (await catalog.register("shared/team/doc.txt")).file
    path.write_text("two")
    await catalog.register("shared/team/doc.txt")
    await catalog.restore(file.id, 1)
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), path.read_text()) == (1234, 4321, 0o640, "one")
    await catalog.delete(file.id)
    await catalog.undelete(file.id)
    assert path.stat().st_gid == 4321 and path.read_text() == "one"
    path.unlink()  # a restore where no working copy is: the folder's group too
    await catalog.restore(file.id, 2)
    assert (path.stat().st_gid, path.read_text()) == (4321, "two")


async def test_a_file_removed_by_hand_comes_back_with_the_mode_it_was_last_seen_with(
    catalog: Catalog, files: Path
) -> None:
    """Read by a register or a scan, a working file's permission bits are kept with its
    stat identity: removed by hand (`rm -rf`, the watcher records it deleted), it is
    undeleted, or written back by `fsck --repair`, with them."""
    path = write(files / "user/key.pem", "secret")
    path.chmod(0o600)
    file = (await catalog.register("user/key.pem")).file
    path.unlink()
    await catalog.delete(file.id, vanished=True)
    await catalog.undelete(file.id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o640)  # no new content: the scan that reads it again keeps the new bits
    assert (await catalog.scan()).unchanged == 1
    path.unlink()
    await fsck(catalog, repair=True)
    assert path.read_text() == "secret" and stat.S_IMODE(path.stat().st_mode) == 0o640
    path.unlink()  # a restore where no working copy is: the mode it was last seen with
    await catalog.restore(file.id, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


async def test_a_file_dated_past_2262_is_catalogued_and_read_again_at_each_scan(
    catalog: Catalog, files: Path
) -> None:
    """Its mtime in nanoseconds fits no 64-bit column: it stopped every insert of its batch
    (a scan's, the watcher's). It is catalogued, the other files with it, and since its
    recorded time cannot be its own, each scan reads it again: a change is never missed."""
    far = 10_413_792_000 * 10**9  # 2300-01-01, past 2**63 ns
    future = write(files / "user/future.txt", "one")
    write(files / "user/plain.txt", "plain")
    os.utime(future, ns=(far, far))
    assert (await catalog.scan()).registered == 2
    future.write_text("two")  # the same size, and its time put back
    os.utime(future, ns=(far, far))
    assert (await catalog.scan()).versioned == 1
    file = await catalog.resolve("user/future.txt")
    assert file.current_version == 2 and (await catalog.content(file, None, 100)).data == b"two"
    await catalog.update(file.id, FileChanges(tags=("t",)))
    await catalog.restore(file.id, 1)
    assert future.read_text() == "one"


async def test_restore_refuses_missing_version_and_corrupt_object(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "one")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("two")
    await catalog.update(file.id, FileChanges())
    for number in (9, 2**31, 2**63 - 1):  # past any INTEGER column: still just not there
        with pytest.raises(HoraceError) as missing:
            await catalog.restore(file.id, number)
        assert missing.value.code is ErrorCode.VERSION_NOT_FOUND
    v1 = await catalog.backend.version(file.id, 1)
    assert v1 is not None
    obj = catalog.storage.object_path(v1.checksum)
    obj.chmod(0o644)
    obj.write_text("bit rot")
    with pytest.raises(HoraceError) as corrupt:
        await catalog.restore(file.id, 1)
    assert corrupt.value.code is ErrorCode.CHECKSUM_MISMATCH
    # Nothing changed: same working content, same versions.
    assert path.read_text() == "two"
    assert (await catalog.get_info(file_id=file.id)).file.current_version == 2


async def test_restoring_the_oldest_kept_version_over_unsaved_work_keeps_it(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unsaved work is kept as a version first: that commit must not prune the version
    being restored (nor collect its object, past the grace at once here) before it is read."""
    catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=3), gc_grace_seconds=0.0)
    let_go = Catalog.let_go

    async def purged_at_once(
        self: Catalog, checksums: Sequence[str], correlation_id: str | None = None
    ) -> None:
        await let_go(self, checksums, correlation_id)
        await self.collect(checksums)  # (as a purge running right then would)

    monkeypatch.setattr(Catalog, "let_go", purged_at_once)
    path = write(files / "user/doc.txt", "v1")
    file = (await catalog.register("user/doc.txt")).file
    for n in (2, 3):
        path.write_text(f"v{n}")
        await catalog.update(file.id, FileChanges())
    path.write_text("unsaved")
    restored = await catalog.restore(file.id, 1)
    assert restored.preserved_version == 4 and restored.version.version == 5
    assert path.read_text() == "v1"
    kept = {
        v.version: catalog.storage.object_path(v.checksum).read_bytes()
        for v in await catalog.backend.versions(file.id)
    }
    assert kept == {5: b"v1", 4: b"unsaved", 3: b"v3"}  # retention as usual once restored
    assert (await fsck(catalog)).clean


@pytest.mark.parametrize("keep", [1, 2])
async def test_a_restore_under_a_count_of_one_or_two_keeps_the_unsaved_work_it_preserved(
    catalog: Catalog, files: Path, keep: int
) -> None:
    """The restored version's commit would prune the version that holds the unsaved work
    it just preserved (its reply names it): it is spared until the file's next version."""
    catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=keep))
    path = write(files / "user/doc.txt", "v1")
    file = (await catalog.register("user/doc.txt")).file
    path.write_text("v2")
    await catalog.update(file.id, FileChanges())
    path.write_text("unsaved")
    restored = await catalog.restore(file.id, 2 - keep + 1)
    assert restored.preserved_version == 3 and restored.version.version == 4
    assert (await objects_of(catalog, file.id))[3] == b"unsaved"
    path.write_text("v5")
    await catalog.update(file.id, FileChanges())
    assert [v.version for v in await catalog.backend.versions(file.id)] == [5, 4][:keep]
    assert (await fsck(catalog)).clean


async def test_pruning_keeps_exactly_the_newest_n(settings: Settings, files: Path) -> None:
    async with open_catalog(attrs.evolve(settings, version_count=3), create=True) as catalog:
        path = write(files / "user/a.txt", "c1")
        file = (await catalog.register("user/a.txt")).file
        for i in range(2, 9):
            path.write_text(f"c{i}")
            await catalog.update(file.id, FileChanges())
        versions = await catalog.backend.versions(file.id)
        assert [v.version for v in versions] == [8, 7, 6]
        assert await objects_of(catalog, file.id) == {8: b"c8", 7: b"c7", 6: b"c6"}
        pruned = {sha256(f"c{i}") for i in range(1, 6)}
        assert catalog.storage.released_marks().keys() == pruned  # for the purge to collect
        await catalog.purge()
        assert not [c for c in pruned if catalog.storage.has_object(c)]
        assert not catalog.storage.released_marks()


async def test_pruning_respects_min_age(settings: Settings, files: Path) -> None:
    async with open_catalog(
        attrs.evolve(settings, version_count=2, version_min_age=3600.0), create=True
    ) as catalog:
        path = write(files / "user/a.txt", "c1")
        file = (await catalog.register("user/a.txt")).file
        for i in range(2, 6):
            path.write_text(f"c{i}")
            await catalog.update(file.id, FileChanges())
        assert len(await catalog.backend.versions(file.id)) == 5  # all too young to prune


async def test_pruning_keeps_objects_still_used_elsewhere(settings: Settings, files: Path) -> None:
    async with open_catalog(attrs.evolve(settings, version_count=1), create=True) as catalog:
        write(files / "user/a.txt", "shared")
        path_b = write(files / "user/b.txt", "b1")
        await catalog.register("user/a.txt")
        b = (await catalog.register("user/b.txt")).file
        path_b.write_text("shared")  # b now has a's content as its version 2
        await catalog.update(b.id, FileChanges())
        path_b.write_text("b3")  # pruning b's v2 must not remove a's object
        await catalog.update(b.id, FileChanges())
        assert catalog.storage.has_object(sha256("shared"))
        assert (await fsck(catalog, deep=True)).clean


async def test_duplicate_registration(catalog: Catalog, files: Path) -> None:
    write(files / "user/a.txt", "same")
    write(files / "shared/b.txt", "same")
    first = await catalog.register("user/a.txt")
    second = await catalog.register("shared/b.txt")
    assert second.duplicate and not second.version_created
    assert second.file.id == first.file.id
    again = await catalog.register("user/a.txt")  # the same path again: its record, no version
    assert not again.duplicate and not again.version_created
    assert again.file.current_version == 1
    page = await catalog.search(SearchQuery())
    assert page.total_count == 1


async def test_register_catalogued_path_with_changed_content(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "one")
    first = (await catalog.register("user/a.txt")).file
    path.write_text("two")
    second = await catalog.register("user/a.txt")
    assert second.file.id == first.id and second.version_created
    assert second.file.current_version == 2


async def test_register_missing_file_and_folder(catalog: Catalog, files: Path) -> None:
    with pytest.raises(HoraceError) as missing:
        await catalog.register("user/nothing.txt")
    assert missing.value.code is ErrorCode.FILE_NOT_FOUND
    with pytest.raises(HoraceError) as folder:
        await catalog.register("user")
    assert folder.value.code is ErrorCode.INVALID_PATH


# -- update -------------------------------------------------------------------------------


def update_args(raw: dict[str, object]) -> Any:
    return TOOLS["horace_update_file"].structure(raw)


async def test_update_changes_only_allow_listed_fields(catalog: Catalog, files: Path) -> None:
    write(files / "user/a.txt", "x")
    file = (await catalog.register("user/a.txt", NewFile(owner="me"))).file
    for refused in ("checksum", "size", "file_path", "current_version", "id", "created_at", "mime_type"):
        with pytest.raises(HoraceError) as excinfo:
            update_args({"file_id": file.id, "metadata": {refused: "x", "purpose": "sneaky"}})
        assert excinfo.value.code is ErrorCode.INVALID_ARGUMENT
        assert refused in excinfo.value.message
    after_refusals = (await catalog.get_info(file_id=file.id)).file
    assert after_refusals == file  # the refused updates changed nothing, purpose included
    said = update_args(
        {"file_id": file.id, "metadata": {"owner": "you", "tags": ["t1", "t2"], "custom": {"k": 1}}}
    )
    updated = await catalog.update(
        file.id, FileChanges(owner=said.metadata.owner, tags=said.metadata.tags, custom=said.metadata.custom)
    )
    assert set(updated.changed_fields) == {"owner", "tags", "metadata"}
    assert not updated.version_created
    assert (updated.file.owner, updated.file.tags, updated.file.metadata) == ("you", ("t1", "t2"), {"k": 1})
    assert updated.file.checksum == file.checksum


async def test_update_versions_changed_content_unless_told_not_to(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "one")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("two")
    skipped = await catalog.update(file.id, FileChanges(purpose="p"), check_for_changes=False)
    assert not skipped.version_created and skipped.file.current_version == 1
    checked = await catalog.update(file.id, FileChanges())
    assert checked.version_created and checked.file.current_version == 2
    assert checked.file.checksum == sha256("two")


async def test_update_takes_in_the_working_copy_back_at_a_deleted_files_path(
    catalog: Catalog, files: Path
) -> None:
    """As a register or scan would: the file is active again, its new content a version,
    and the change applies to that record. Told not to check, it is not; told to stay
    deleted, the copy leaves files/ as a delete takes one, kept as a version."""
    path = write(files / "user/a.txt", "old")
    file = (await catalog.register("user/a.txt")).file
    await catalog.delete(file.id)
    write(path, "new, by the user")
    unchecked = await catalog.update(file.id, FileChanges(purpose="q"), check_for_changes=False)
    assert unchecked.file.status is Status.DELETED and unchecked.file.current_version == 1
    updated = await catalog.update(file.id, FileChanges(tags=("t",)))
    assert updated.version_created
    assert (updated.file.status, updated.file.current_version) == (Status.ACTIVE, 2)
    assert updated.file.checksum == sha256("new, by the user") and updated.file.tags == ("t",)
    assert {"status", "tags", "checksum", "current_version"} <= set(updated.changed_fields)
    assert path.read_text() == "new, by the user"
    await catalog.delete(file.id)
    write(path, "newer, by the user")
    kept_deleted = await catalog.update(file.id, FileChanges(status=Status.DELETED, purpose="p"))
    assert kept_deleted.file.status is Status.DELETED and kept_deleted.version_created
    assert kept_deleted.file.checksum == sha256("newer, by the user") and not path.exists()


def record_changes_fail(
    monkeypatch: pytest.MonkeyPatch,
    catalog: Catalog,
    error: Exception,
    before: Callable[[], None] = lambda: None,
) -> None:
    """Every change of a file's record made under its lock (``update_file``) fails with
    *error*, after *before* (what a writer does as it fails)."""
    exclusive = catalog.backend.exclusive

    @asynccontextmanager
    async def failing(key: int) -> AsyncIterator[Any]:
        async with exclusive(key) as units:

            class Failing:
                def __getattr__(self, name: str) -> Any:
                    return getattr(units, name)

                async def update_file(self, *args: Any) -> Any:
                    before()
                    raise error

            yield Failing()

    monkeypatch.setattr(catalog.backend, "exclusive", failing)


async def test_an_update_that_fails_after_versioning_says_what_it_kept(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versioning the changed working copy is one commit, changing the record another:
    when the database fails between them, the error keeps its code and says that the new
    content was kept as a version (it did not change nothing)."""
    write(files / "user/u.txt", "one")
    file_id = (await catalog.register("user/u.txt")).file.id
    record_changes_fail(monkeypatch, catalog, DatabaseFull("the disk of the catalog is full"))
    with pytest.raises(DatabaseFull):  # nothing to version: nothing kept, the error as it came
        await catalog.update(file_id, FileChanges(owner="ops"))
    write(files / "user/u.txt", "two")
    with pytest.raises(HoraceError) as half:
        await catalog.update(file_id, FileChanges(owner="ops"))
    assert half.value.code is ErrorCode.STORAGE_FULL
    assert "kept first, as version 2" in half.value.message and "not applied" in half.value.message
    monkeypatch.undo()
    after = (await catalog.get_info(file_id=file_id, include_versions=True)).file
    assert (after.current_version, after.owner) == (2, "user")


async def test_update_unknown_file(catalog: Catalog) -> None:
    with pytest.raises(HoraceError) as excinfo:
        await catalog.update("00000000-0000-0000-0000-000000000000", FileChanges(owner="x"))
    assert excinfo.value.code is ErrorCode.NOT_CATALOGED


# -- lifecycle ------------------------------------------------------------------------------


async def test_delete_and_undelete(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "keep me")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("unsaved edit")
    deleted = await catalog.delete(file.id)
    assert deleted.file.status is Status.DELETED and deleted.file.deleted_at is not None
    assert not path.exists()
    assert deleted.version_created  # the unsaved edit was kept before the file went
    assert (await catalog.search(SearchQuery())).total_count == 0
    assert (await catalog.search(SearchQuery(status=Status.DELETED))).total_count == 1
    back = await catalog.undelete(file.id)
    assert back.file.status is Status.ACTIVE and back.file.deleted_at is None
    assert path.read_text() == "unsaved edit"
    # Both directions are idempotent: undeleting an active file changes nothing, and so
    # does deleting a deleted one.
    path.write_text("an edit the undelete of an active file leaves alone")
    again = await catalog.undelete(file.id)
    assert again.changed_fields == () and again.file.status is Status.ACTIVE
    assert not again.version_created and again.file.current_version == back.file.current_version
    await catalog.delete(file.id)
    twice = await catalog.delete(file.id)
    assert twice.changed_fields == () and twice.file.status is Status.DELETED


async def test_a_file_open_for_writing_is_not_moved_out_from_under_its_writer(
    catalog: Catalog, files: Path
) -> None:
    """Delete, archive and restore move the working copy out of files/: what a writer
    that holds it open writes afterwards would be lost. Refused (FILE_LOCKED) while it
    is open for writing; done once it is closed. An update that checks for changes is
    refused too (its version could hold half the writer's work); one that does not
    check changes the record only."""
    path = write(files / "user/log.txt", "line 1\n")
    file = (await catalog.register("user/log.txt")).file
    with path.open("a") as writer:
        writer.write("line 2\n")
        writer.flush()
        with pytest.raises(HoraceError) as refused:
            await catalog.update(file.id, FileChanges(purpose="the log"))
        assert refused.value.code is ErrorCode.FILE_LOCKED
        assert "check_for_changes false" in refused.value.message, refused.value.message
        assert (await catalog.file(file.id)).purpose is None
        done = await catalog.update(file.id, FileChanges(purpose="the log"), check_for_changes=False)
        assert (done.file.purpose, done.file.current_version, done.version_created) == ("the log", 1, False)
        for change in (
            catalog.delete(file.id),
            catalog.update(file.id, FileChanges(status=Status.ARCHIVED)),
            catalog.restore(file.id, 1),
        ):
            with pytest.raises(HoraceError) as refused:
                await change
            assert refused.value.code is ErrorCode.FILE_LOCKED and "open for writing" in refused.value.message
        with pytest.raises(HoraceError) as refused:  # the storage's own check says the same
            catalog.storage.take_working("user/log.txt", file.id)
        assert refused.value.message.startswith("'user/log.txt' is open for writing"), refused.value.message
        writer.write("line 3\n")
    assert path.read_text() == "line 1\nline 2\nline 3\n"
    restored = await catalog.restore(file.id, 1)
    assert path.read_text() == "line 1\n" and restored.preserved_version == 2
    assert (await catalog.delete(file.id)).file.status is Status.DELETED


@pytest.mark.parametrize("how", ["register", "undelete", "update of a deleted file"])
async def test_no_call_versions_a_file_while_another_process_writes_it(
    catalog: Catalog, files: Path, how: str
) -> None:
    """Every call that takes a working file in (registering it again, undeleting a file
    whose copy is back, updating a deleted file whose copy is back) is FILE_LOCKED while a
    writer has it open: what it holds then may be half the writer's work. Once closed,
    the whole of it is versioned."""
    path = write(files / "user/a.txt", "first")
    file = (await catalog.register("user/a.txt")).file
    if how != "register":
        await catalog.delete(file.id)
    calls = {
        "register": lambda: catalog.register("user/a.txt"),
        "undelete": lambda: catalog.undelete(file.id),
        "update of a deleted file": lambda: catalog.update(file.id, FileChanges(purpose="x")),
    }
    with path.open("wb") as writer:
        writer.write(b"HALF")
        writer.flush()
        with pytest.raises(HoraceError) as refused:
            await calls[how]()
        assert refused.value.code is ErrorCode.FILE_LOCKED and "open for writing" in refused.value.message
        writer.write(b" and the rest")
    await calls[how]()
    now = await catalog.file(file.id)
    assert now.status is Status.ACTIVE and now.current_version == 2
    assert now.checksum == hashlib.sha256(b"HALF and the rest").hexdigest()


async def test_a_writer_that_opens_a_file_while_it_is_copied_waits_for_the_copy(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look for a writer and the copy are not one instant: a writer opening the file
    (and truncating it) in between would have its empty file, or half its work, versioned.
    The lease held through the copy makes its open wait until the copy is made."""
    path = write(files / "user/a.txt", "first")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("second, whole")
    storage = catalog.storage
    copy = storage._copy_to_temp
    writer_done = threading.Event()

    def rewrite() -> None:
        with path.open("wb") as rewriting:  # (O_TRUNC: the file is empty from here)
            rewriting.write(b"third")
        writer_done.set()

    def copy_with_a_writer_coming(*args: Any) -> Any:
        threading.Thread(target=rewrite, daemon=True).start()
        assert not writer_done.wait(0.3), "the writer's open did not wait for the copy"
        return copy(*args)

    monkeypatch.setattr(storage, "_copy_to_temp", copy_with_a_writer_coming)
    done = await catalog.register("user/a.txt")
    assert done.file.checksum == hashlib.sha256(b"second, whole").hexdigest()
    assert await trio.to_thread.run_sync(writer_done.wait, 10)
    assert path.read_bytes() == b"third" and (await catalog.file(file.id)).current_version == 2


@pytest.mark.parametrize("status", [Status.DELETED, Status.ARCHIVED])
async def test_a_working_copy_moved_out_is_held_until_its_status_is_recorded(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, status: Status
) -> None:
    """A delete (or archive) versions the working copy it moved out, then records the
    status: a crash between the two leaves the file active, and its copy must still be
    held in .horace/tmp for the fsck at start to put back (it was let go first, and the
    file was left active with no working copy anywhere). Once recorded, it is let go."""
    path = write(files / "user/a.txt", "keep me")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("unsaved edit")
    at_the_commit: list[tuple[list[bytes], bool]] = []

    def held() -> list[bytes]:
        return [
            p.read_bytes()
            for p, name in catalog.storage.walk_temps()
            if name and name.held_file_id() == file.id
        ]

    record_changes_fail(
        monkeypatch, catalog, BackendUnavailable("cut"), lambda: at_the_commit.append((held(), path.exists()))
    )
    with pytest.raises(HoraceError):
        await catalog.update(file.id, FileChanges(status=status))
    assert at_the_commit == [([b"unsaved edit"], False)]
    assert path.read_text() == "unsaved edit" and held() == []  # put back, as the catalog says
    monkeypatch.undo()
    assert (await catalog.update(file.id, FileChanges(status=status))).file.status is status
    assert not path.exists() and held() == []
    assert (await fsck(catalog)).findings == ()


@pytest.mark.parametrize("status", [Status.DELETED, Status.ARCHIVED])
async def test_a_working_copy_back_under_a_deleted_file_leaves_with_a_status_change(
    catalog: Catalog, files: Path, status: Status
) -> None:
    """A deleted file whose working copy a writer made again, then told to be deleted or
    archived: the copy leaves files/ kept as a version, as a delete takes one (it stayed
    there uncatalogued, and the next scan made the file active again)."""
    path = write(files / "user/f.md", "one")
    file = (await catalog.register("user/f.md")).file
    await catalog.delete(file.id)
    write(path, "a service writes again")
    done = await catalog.update(file.id, FileChanges(status=status))
    assert done.file.status is status and done.version_created and not path.exists()
    assert (await catalog.content(done.file, None, 100)).data == b"a service writes again"
    assert (await catalog.scan()).registered == 0 and (await catalog.file(file.id)).status is status
    assert (await fsck(catalog)).findings == ()


async def test_a_status_change_that_fails_leaves_files_as_the_catalog_says(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The working copy leaves files/ and is versioned before the status changes: should
    the change fail (a statement timeout, a connection cut), the file is still active, so
    its working copy is written back (the unsaved edit, now its current version). An
    undelete writes the copy first: failing, it takes the copy back, unless a writer
    changed it meanwhile (then it stays, for the next scan)."""
    path = write(files / "user/a.txt", "keep me")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("unsaved edit")
    meanwhile: list[str] = []  # what a writer puts in the working copy as the change fails

    def writer() -> None:
        if meanwhile:
            path.write_text(meanwhile[0])

    cancelled = BackendUnavailable("the statement was cancelled")
    record_changes_fail(monkeypatch, catalog, cancelled, writer)
    # The delete versions the unsaved edit first (and says so); the archive then has none.
    with pytest.raises(HoraceError) as kept:
        await catalog.delete(file.id)
    assert (
        kept.value.code is ErrorCode.BACKEND_UNAVAILABLE and "kept first, as version 2" in kept.value.message
    )
    assert path.read_text() == "unsaved edit"
    path.chmod(0o600)
    with pytest.raises(BackendUnavailable):
        await catalog.update(file.id, FileChanges(status=Status.ARCHIVED))
    assert path.read_text() == "unsaved edit"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # put back as it was
    monkeypatch.undo()
    info = await catalog.get_info(file_id=file.id, include_versions=True)
    assert info.file.status is Status.ACTIVE and info.file.current_version == 2
    assert (await fsck(catalog)).findings == ()
    assert (await catalog.delete(file.id)).file.status is Status.DELETED and not path.exists()

    record_changes_fail(monkeypatch, catalog, cancelled, writer)
    for change in (catalog.undelete(file.id), catalog.update(file.id, FileChanges(status=Status.ACTIVE))):
        with pytest.raises(BackendUnavailable):
            await change
        assert not path.exists()  # still deleted, as the catalog says
    meanwhile.append("written as the undelete failed")
    with pytest.raises(BackendUnavailable):
        await catalog.undelete(file.id)
    assert path.read_text() == "written as the undelete failed"  # a writer's: kept
    monkeypatch.undo()
    assert (await catalog.file(file.id)).status is Status.DELETED
    assert (await fsck(catalog)).findings == ()
    back = await catalog.undelete(file.id)  # it takes in what is there
    assert back.file.status is Status.ACTIVE and back.version_created
    assert path.read_text() == "written as the undelete failed"


async def test_a_status_change_that_fails_on_a_full_disk_still_puts_the_working_copy_back(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store and its catalog on one disk, full once the content is versioned: the
    status change fails, and the working copy comes back all the same (a rename, where a
    copy written from the version would need room the disk no longer has)."""
    path = write(files / "user/a.txt", "keep me")
    file = (await catalog.register("user/a.txt")).file
    path.write_text("unsaved edit")

    def no_room_left() -> None:
        def no_space(*args: Any) -> Any:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(horace.storage, "_copy_and_hash", no_space)

    record_changes_fail(monkeypatch, catalog, DatabaseFull("database or disk is full"), no_room_left)
    for change in (catalog.delete(file.id), catalog.update(file.id, FileChanges(status=Status.ARCHIVED))):
        with pytest.raises((HoraceError, DatabaseFull)):
            await change
        assert path.read_text() == "unsaved edit"
    monkeypatch.undo()
    info = await catalog.get_info(file_id=file.id)
    assert info.file.status is Status.ACTIVE and info.file.current_version == 2
    assert (await fsck(catalog)).findings == ()


async def test_a_folder_renamed_as_a_file_of_the_same_content_goes_keeps_each_history(
    catalog: Catalog, files: Path
) -> None:
    """s.txt and sub/t.txt end with the same bytes; while nobody watched, s.txt was deleted
    and sub/ renamed: sub_real/t.txt is t.txt moved (its history), s.txt the one gone."""
    for s_path, t_path, renamed in [
        ("user/s.txt", "user/sub/t.txt", "user/sub_real/t.txt"),
        ("shared/a.txt", "user/p/A/a.txt", "user/p/B/a.txt"),  # the same name: what is above
    ]:
        write(files / s_path, "AAA " + s_path)
        write(files / t_path, "BBB " + t_path)
        s_file = (await catalog.register(s_path)).file
        t_file = (await catalog.register(t_path)).file
        for rel in (s_path, t_path):
            write(files / rel, "SAME " + renamed)
        await catalog.scan()
        (files / s_path).unlink()
        old_folder = (files / t_path).parent
        old_folder.rename(files / renamed.rpartition("/")[0])
        report = await catalog.reconcile()
        assert (report.moved, report.deleted) == (1, 1)
        moved = (await catalog.get_info(file_path=renamed, include_versions=True)).file
        assert moved.id == t_file.id, (s_path, t_path)
        first = await catalog.backend.version(t_file.id, 1)
        assert first is not None and first.checksum == sha256("BBB " + t_path)
        gone = await catalog.backend.file_by_id(s_file.id)
        assert gone is not None and (gone.status, gone.file_path) == (Status.DELETED, s_path)


def test_of_vanished_files_with_the_same_bytes_the_kin_of_the_new_path_is_claimed() -> None:
    """Where inodes cannot tell (none recorded: a file catalogued by an older release, or
    moved since it was read), the paths do: of vanished files of one content, the one with
    the most path parts in common with the new path, at its end, then at its start."""
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def record(file_id: str, path: str) -> FileRecord:
        return FileRecord(
            id=file_id, file_path=path, owner=None, purpose=None, tags=(), size=4, mime_type="text/plain",
            checksum=sha256("same"), status=Status.ACTIVE, current_version=1, correlation_id=None,
            created_at=at, updated_at=at, deleted_at=None, metadata={},
        )  # fmt: skip

    for first, kin, new in [
        ("user/s.txt", "user/sub/t.txt", "user/sub_real/t.txt"),
        ("shared/a.txt", "user/p/A/a.txt", "user/p/B/a.txt"),  # the same name: what is above
    ]:
        vanished = Vanished([record("first", first), record("kin", kin)])
        claimed = vanished.claim(sha256("same"), new)
        assert claimed is not None and claimed.file_path == kin
        assert [f.file_path for f in vanished.holding(sha256("same"))] == [first]
        assert vanished.claim(sha256("same"), new, among=set()) is None


async def test_renames_not_recorded_leave_their_files_vanished_as_they_were(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog failing midway through recording a batch of renames: those recorded
    are moved, the others wait again among the vanished files, since when they went, for
    the next look (not forgotten: they would be neither followed nor deleted)."""
    for name in ("a", "b", "c"):
        write(files / f"user/old/{name}.txt", f"content {name}")
    await catalog.scan()
    records = [await catalog.resolve(f"user/old/{name}.txt") for name in ("a", "b", "c")]
    (files / "user/old").rename(files / "user/new")
    vanished = Vanished(records, since=7.0)

    async def fails_after_the_first(claims: Any, correlation_id: Any, moved: Any, failed: Any) -> None:
        moved.append((claims[0][1], claims[0][0]))
        raise BackendUnavailable("gone midway")

    def seen(rel: str) -> tuple[str, os.stat_result]:
        return rel, os.lstat(files / rel)

    monkeypatch.setattr(catalog, "_move_claimed", fails_after_the_first)
    with pytest.raises(BackendUnavailable):
        await catalog.follow_renames(vanished, [seen(f"user/new/{n}.txt") for n in ("a", "b", "c")], None)
    assert len(vanished) == 2 and vanished.holding(records[0].checksum) == []
    for record in records[1:]:
        assert vanished.holding(record.checksum) == [record] and vanished.since(record.id) == 7.0
    monkeypatch.undo()
    followed = await catalog.follow_renames(vanished, [seen("user/new/b.txt"), seen("user/new/c.txt")], None)
    assert sorted(rel for rel, _ in followed.moved) == ["user/new/b.txt", "user/new/c.txt"] and not vanished


async def test_a_removed_folder_comes_back_without_what_was_deleted_there_before(
    catalog: Catalog, files: Path
) -> None:
    """`rm -rf` undone: every file deleted under the folder since a moment comes back,
    not those deleted there on purpose before it, nor a sibling folder's whose name the
    folder's (a glob's wildcards in it) would match as a pattern. One that cannot come
    back is an error of its own."""
    for rel in ("w*/a.txt", "w*/sub/b.txt", "w*/old.txt", "w*/c.txt", "wx/d.txt"):
        write(files / rel, f"content of {rel}")
    await catalog.scan()
    byname = {f.file_path: f for f in (await catalog.search(SearchQuery())).results}
    await catalog.delete(byname["w*/old.txt"].id)  # on purpose, before the accident
    await trio.sleep(0.01)
    accident = datetime.now(UTC)
    for rel in ("w*/a.txt", "w*/sub/b.txt", "w*/c.txt", "wx/d.txt"):
        await catalog.delete(byname[rel].id)
    write(files / "w*/c.txt/new.txt", "a folder made where c.txt was")

    done = await catalog.undelete_folder("w*", deleted_after=accident)
    assert [f.file_path for f in done.undeleted] == ["w*/a.txt", "w*/sub/b.txt"]
    assert [e.split(":")[0] for e in done.errors] == ["'w*/c.txt'"]
    for rel in ("w*/a.txt", "w*/sub/b.txt"):
        assert (files / rel).read_text() == f"content of {rel}"
        assert (await catalog.file(byname[rel].id)).status is Status.ACTIVE
    for rel in ("w*/old.txt", "w*/c.txt", "wx/d.txt"):
        assert (await catalog.file(byname[rel].id)).status is Status.DELETED
    assert not (files / "w*/old.txt").exists() and not (files / "wx/d.txt").exists()
    # Without a moment: every file deleted there (the one whose path is a folder still not).
    again = await catalog.undelete_folder("w*/")
    assert [f.file_path for f in again.undeleted] == ["w*/old.txt"] and len(again.errors) == 1
    # A file's path, or a folder where nothing was ever deleted (a typo): refused.
    with pytest.raises(HoraceError, match="is a file, not a folder") as refused:
        await catalog.undelete_folder("w*/a.txt")
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(HoraceError, match="no file was deleted under 'w'") as refused:
        await catalog.undelete_folder("w")
    assert refused.value.code is ErrorCode.NOT_CATALOGED


async def test_undelete_refuses_an_archived_file(catalog: Catalog, files: Path) -> None:
    write(files / "user/a.txt", "archived")
    file = (await catalog.register("user/a.txt")).file
    await catalog.update(file.id, FileChanges(status=Status.ARCHIVED))
    with pytest.raises(HoraceError) as refused:
        await catalog.undelete(file.id)
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT and "archived" in refused.value.message


async def test_archive_and_back(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "archive me")
    file = (await catalog.register("user/a.txt")).file
    archived = await catalog.update(file.id, FileChanges(status=Status.ARCHIVED))
    assert archived.file.status is Status.ARCHIVED and not path.exists()
    active = await catalog.update(file.id, FileChanges(status=Status.ACTIVE))
    assert active.file.status is Status.ACTIVE and path.read_text() == "archive me"


async def test_a_file_renamed_again_while_a_scan_follows_its_rename_fails_nothing(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a -> b, then b -> c as the scan follows a -> b: the scan goes on (nothing of it
    fails), and says a -> b, and b missing."""
    write(files / "user/a.txt", "moving on")
    file = (await catalog.register("user/a.txt")).file
    write(files / "user/other.txt", "new, beside it")
    os.rename(files / "user/a.txt", files / "user/b.txt")
    hash_working = Storage.hash_working

    def renamed_again(self: Storage, rel: str, *rest: Any) -> Any:
        digest = hash_working(self, rel, *rest)
        if rel == "user/b.txt":  # (read as the rename's other half, then gone)
            os.rename(files / "user/b.txt", files / "user/c.txt")
        return digest

    monkeypatch.setattr(Storage, "hash_working", renamed_again)
    report = await catalog.scan()
    monkeypatch.undo()
    assert (report.moved, report.missing, report.errors, report.registered) == (
        ("user/a.txt -> user/b.txt",),
        ("user/b.txt",),  # (gone on already)
        (),
        1,
    )
    # Its identity at b was never read (it went first): c is not known for it by a scan
    # (a copy would look the same), and the file stays missing, restorable, its history whole.
    again = await catalog.scan()
    assert (again.moved, again.missing, again.errors) == ((), ("user/b.txt",), ())
    assert (await catalog.resolve("user/b.txt")).id == file.id


async def test_a_register_whose_contents_other_file_comes_and_goes_is_tried_again(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The content catalogued by another file between the look-up and the insert (so the
    insert takes nothing), and that file deleted before the loser looks for the winner:
    no winner to answer with; the insert is tried again, and the file registered."""
    write(files / "user/a.txt", "shared content")
    write(files / "user/b.txt", "shared content")
    keep, release = Storage.keep, Storage.release
    raced: list[str] = []

    def meanwhile(nursery: trio.Nursery, work: Callable[[], Any]) -> None:
        """*work* done by another task (another writer), this thread waiting for it."""
        done = threading.Event()

        async def task() -> None:
            try:
                raced.append(await work())
            finally:
                done.set()

        trio.from_thread.run_sync(nursery.start_soon, task)
        assert done.wait(10)

    def keep_as_a_is_registered(self: Storage, staged: Any) -> Any:
        if not raced:
            raced.append("registering a")
            meanwhile(nursery, lambda: catalog.register("user/a.txt"))
        return keep(self, staged)

    def release_as_a_is_deleted(self: Storage, staged: Any) -> Any:
        if len(raced) == 2:
            raced.append("deleting a")
            meanwhile(nursery, lambda: catalog.delete(raced[1].file.id))
        return release(self, staged)

    monkeypatch.setattr(Storage, "keep", keep_as_a_is_registered)
    monkeypatch.setattr(Storage, "release", release_as_a_is_deleted)
    async with trio.open_nursery() as nursery:
        done = await catalog.register("user/b.txt")
    assert len(raced) == 4  # (the race happened)
    assert (done.file.file_path, done.version_created, done.duplicate) == ("user/b.txt", True, False)
    assert (await catalog.resolve("user/a.txt")).status is Status.DELETED


async def test_objects_another_process_collects_during_a_walk_are_passed_over(
    catalog: Catalog, files: Path
) -> None:
    """Another instance's collector removes objects (and their emptied folders) while this
    one walks them for its own collector or fsck: they are simply not there, no error."""
    for n in range(6):
        write(files / f"user/{n}.txt", f"content {n}")
        await catalog.register(f"user/{n}.txt")
    walk = catalog.storage.walk_objects()
    first, _ = next(walk)
    objects = catalog.storage.objects
    for path in objects.glob("??/*"):
        if path.name != first:
            path.unlink()
    for folder in objects.glob("??"):
        if not any(folder.iterdir()):
            folder.rmdir()
    assert list(walk) == []
    assert [name for name, _ in catalog.storage.walk_objects()] == [first]


async def test_a_purge_never_collects_content_a_writer_is_about_to_record(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted file's content is purged while another file with that content is being
    registered (its object kept, its row not yet in): the object stays (the writer's keep
    made it fresh), and is let go of once past the grace period if nothing refers to it."""
    catalog.policy = attrs.evolve(catalog.policy, deleted_retention=timedelta(0), gc_grace_seconds=600.0)
    write(files / "user/old.txt", "the same content")
    old = (await catalog.register("user/old.txt")).file
    await catalog.delete(old.id)
    write(files / "user/new.txt", "before")
    new = (await catalog.register("user/new.txt")).file
    write(files / "user/new.txt", "the same content")  # a new version, about to be recorded
    keep = Storage.keep
    purged: list[Any] = []

    def keep_then_purge(self: Storage, staged: Any) -> Any:
        kept = keep(self, staged)
        if not purged:
            done = threading.Event()

            async def purge() -> None:
                try:
                    purged.append(await catalog.purge())
                finally:
                    done.set()

            trio.from_thread.run_sync(nursery.start_soon, purge)
            assert done.wait(10)
            # Not taken from under the writer (only its staged copy would be left of it,
            # until its commit: a crash, and the version's content is gone).
            purged.append(catalog.storage.object_path(staged.checksum).exists())
        return kept

    monkeypatch.setattr(Storage, "keep", keep_then_purge)
    async with trio.open_nursery() as nursery:
        new = (await catalog.register("user/new.txt")).file
    monkeypatch.undo()
    assert purged[0].files_purged == 1, purged  # (the race happened: the old file's rows went first)
    assert purged[1] is True, "the purge collected the content a writer had just kept"
    assert new.current_version == 2
    assert (await catalog.content(new, None, 100)).data == b"the same content"
    assert (await fsck(catalog, deep=True)).clean


async def test_purge_removes_rows_then_objects(settings: Settings, files: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    async with open_catalog(settings, create=True) as catalog:
        catalog.clock = lambda: now[0]
        catalog.policy = CatalogPolicy(deleted_retention=timedelta(days=30))
        write(files / "user/a.txt", "old")
        write(files / "user/b.txt", "recent")
        a = (await catalog.register("user/a.txt")).file
        b = (await catalog.register("user/b.txt")).file
        await catalog.delete(a.id)
        now[0] += timedelta(days=20)
        await catalog.delete(b.id)
        now[0] += timedelta(days=11)  # a deleted 31 days ago, b 11 days ago
        report = await catalog.purge()
        # a's content was written within the grace period (a writer may have just kept it
        # for a version it is about to record): let go of, collected by a later purge.
        assert (report.files_purged, report.objects_deleted) == (1, 0)
        assert await catalog.backend.file_by_id(a.id) is None
        assert a.checksum in catalog.storage.released_marks()
        catalog.policy = attrs.evolve(catalog.policy, gc_grace_seconds=0.0)  # (past it)
        assert (await catalog.purge()).objects_deleted == 1
        assert not catalog.storage.has_object(a.checksum)
        assert a.checksum not in catalog.storage.released_marks()
        assert await catalog.backend.file_by_id(b.id) is not None
        assert catalog.storage.has_object(b.checksum)


@contextlib.asynccontextmanager
async def purging(settings: Settings) -> AsyncIterator[tuple[Catalog, list[datetime]]]:
    """A catalog on a clock of the test's (``now[0]``), deleted files kept 30 days, no grace."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    async with open_catalog(settings, create=True) as catalog:
        catalog.clock = lambda: now[0]
        catalog.policy = CatalogPolicy(deleted_retention=timedelta(days=30), gc_grace_seconds=0.0)
        yield catalog, now


async def test_the_purge_keeps_the_history_of_a_deleted_file_whose_path_holds_a_file_again(
    settings: Settings, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deleted file due for the purge whose path holds a file again (put back with no
    scan or watcher since; recorded deleted by mistake) is catalogued with it, as a scan
    would, its history kept; the one that is gone is purged."""
    async with purging(settings) as (catalog, now):
        for text in ("v1", "v2"):
            write(files / "user/back.txt", text)
            back = (await catalog.register("user/back.txt")).file
        write(files / "user/gone.txt", "gone")
        gone = (await catalog.register("user/gone.txt")).file
        for file in (back, gone):
            await catalog.delete(file.id)
        write(files / "user/back.txt", "put back")
        now[0] += timedelta(days=31)
        report = await catalog.purge()
        assert report.files_purged == 1
        assert await catalog.backend.file_by_id(gone.id) is None
        kept = await catalog.file(back.id)
        assert (kept.status, kept.current_version) == (Status.ACTIVE, 3)
        assert sorted(v.version for v in await catalog.backend.versions(back.id)) == [1, 2, 3]
        assert (await catalog.content(kept, 1, 1024)).data == b"v1"
        assert any(
            "user/back.txt" in r.getMessage() and "history kept" in r.getMessage() for r in caplog.records
        )
        await assert_sound(catalog)


async def test_the_purge_catalogs_a_copy_registered_as_a_duplicate(settings: Settings, files: Path) -> None:
    """A copy registered as a duplicate is not catalogued; once the file whose content it
    is has been deleted and purged, the copy would be that content's only place, and any
    write to it would lose it. Without a scan or a watcher, the purge takes it in."""
    async with purging(settings) as (catalog, now):
        catalog.bound_at = time.time() - 60 * 86400  # (bound long ago: old objects are its own)
        write(files / "user/p.txt", "shared content")
        copy = write(files / "user/r.txt", "shared content")
        write(files / "user/other.txt", "same size here")  # untracked too, not a copy: left alone
        p = (await catalog.register("user/p.txt")).file
        assert (await catalog.register("user/r.txt")).duplicate
        await catalog.delete(p.id)
        catalog.storage.mark_released([p.checksum])  # (as pruning, within the grace, would)
        now[0] += timedelta(days=31)
        report = await catalog.purge()
        assert (report.files_purged, report.objects_deleted) == (1, 0)
        taken = await catalog.backend.file_by_path("user/r.txt")
        assert taken is not None and taken.checksum == p.checksum
        assert catalog.storage.object_path(p.checksum).read_bytes() == copy.read_bytes()
        assert await catalog.backend.file_by_path("user/other.txt") is None
        assert not catalog.storage.released_marks()  # referred to again: not the collector's
        assert (await fsck(catalog)).clean


@pytest.mark.parametrize("versioned_by", ["update", "scan"])
async def test_a_lower_version_count_pruning_many_versions_at_once_is_said(
    catalog: Catalog, files: Path, caplog: pytest.LogCaptureFixture, versioned_by: str
) -> None:
    """A command run with a lower HORACE_VERSION_COUNT than the store's history was kept
    with prunes many versions at once: that is said, naming the file and the count, by a
    version of one file and by a scan's, which versions its changed files together."""
    catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=10))
    path = write(files / "user/h.txt", "v1")
    file = (await catalog.register("user/h.txt")).file
    for n in range(2, 10):
        write(path, f"v{n}")
        await catalog.update(file.id, FileChanges())
    assert not [r for r in caplog.records if "pruned at once" in r.getMessage()]
    catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=3))
    write(path, "v10")
    with caplog.at_level(logging.WARNING, logger="horace.catalog"):
        if versioned_by == "scan":
            assert (await catalog.scan()).versioned == 1
        else:
            await catalog.update(file.id, FileChanges())
    said = [r.getMessage() for r in caplog.records if "pruned at once" in r.getMessage()]
    assert said == [
        "user/h.txt: 7 older versions' content pruned at once: HORACE_VERSION_COUNT is 3 here; "
        "was this store run with a higher count? (give every instance and command the same)"
    ], said
    assert [v.version for v in await catalog.backend.versions(file.id)] == [10, 9, 8]


async def test_the_purge_catalogs_a_copy_of_a_pruned_version(settings: Settings, files: Path) -> None:
    """A copy registered as a duplicate of a file that moves on past its retention: the
    pruned version's content is the copy's, and is not collected before the copy is
    catalogued (any write to it would lose it otherwise)."""
    async with purging(settings) as (catalog, _):
        catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=2))
        original = write(files / "user/p.txt", "precious")
        copy = write(files / "user/r.txt", "precious")
        p = (await catalog.register("user/p.txt")).file
        assert (await catalog.register("user/r.txt")).duplicate
        for i in range(3):
            write(original, f"p moves on {i}")
            await catalog.update(p.id, FileChanges())
        assert sha256("precious") not in {v.checksum for v in await catalog.backend.versions(p.id)}
        await catalog.purge()
        taken = await catalog.backend.file_by_path("user/r.txt")
        assert taken is not None and taken.checksum == sha256("precious")
        write(copy, "the copy moves on")
        await catalog.update(taken.id, FileChanges())
        assert catalog.storage.object_path(sha256("precious")).read_bytes() == b"precious"
        assert {v.checksum for v in await catalog.backend.versions(taken.id)} >= {sha256("precious")}
        pruned = {sha256("p moves on 0")}  # (no copy of it: collected)
        assert not [c for c in pruned if catalog.storage.has_object(c)]
        assert (await fsck(catalog)).clean


async def test_the_purge_keeps_the_content_of_a_copy_it_cannot_catalog(
    settings: Settings, files: Path
) -> None:
    """A copy with two names (hard links) cannot be catalogued: its content stays, as an
    object the collector keeps a retention long, then looks at again; however old the
    object was (written long ago, or released by pruning)."""
    async with purging(settings) as (catalog, now):
        catalog.bound_at = time.time() - 60 * 86400  # (bound long ago: old objects are its own)
        write(files / "user/p.txt", "shared content")
        copy = write(files / "user/r.txt", "shared content")
        os.link(copy, files / "user/r-too.txt")
        p = (await catalog.register("user/p.txt")).file
        await catalog.delete(p.id)
        obj = catalog.storage.object_path(p.checksum)
        now[0] += timedelta(days=31)
        for _ in range(2):  # the deleted file's purge, then the collector's look a retention on
            long_ago = time.time() - 40 * 86400
            os.utime(obj, (long_ago, long_ago))
            catalog.storage.mark_released([p.checksum])
            report = await catalog.purge()
            assert report.objects_deleted == 0 and obj.read_bytes() == copy.read_bytes()
        assert p.checksum in (await fsck(catalog)).orphans  # listed meanwhile, where it is
        assert await catalog.backend.file_by_path("user/r.txt") is None


async def test_an_object_no_version_refers_to_is_kept_a_retention_long(catalog: Catalog, files: Path) -> None:
    """An object without a row that the catalog did not let go of itself may be all that
    is left of a version (a catalog restored from a backup older than the store): the
    periodic purge and fsck --repair keep it, and fsck lists it, until the deleted files'
    retention has passed since it was written; only then is it collected."""
    catalog.bound_at = time.time() - 86400  # (bound a day ago: an object an hour old is its own)
    write(files / "user/a.txt", "v1")
    await catalog.register("user/a.txt")
    stray = catalog.storage.object_path(sha256("v2, made after the backup"))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("v2, made after the backup")
    hour_ago = time.time() - 3600
    os.utime(stray, (hour_ago, hour_ago))
    catalog.policy = attrs.evolve(catalog.policy, deleted_retention=timedelta(days=30))
    report = await fsck(catalog)
    assert report.findings == () and report.orphans == (stray.name,)
    assert (await catalog.purge()).objects_deleted == 0
    assert (await fsck(catalog, repair=True)).orphans == (stray.name,)
    assert stray.read_text() == "v2, made after the backup"
    catalog.policy = attrs.evolve(catalog.policy, deleted_retention=timedelta(minutes=30))
    assert (await catalog.purge()).objects_deleted == 1 and not stray.exists()


async def test_a_pruned_versions_object_too_fresh_to_collect_goes_past_the_grace(
    catalog: Catalog, files: Path
) -> None:
    """Objects the catalog let go of itself (pruning) but that were within the grace period
    then are marked released: the sweep collects them once past the grace, not a retention
    later as it would a stray, and fsck does not list them as strays."""
    catalog.bound_at = time.time() - 86400  # (bound a day ago: an object 11 minutes old is its own)
    catalog.policy = attrs.evolve(
        catalog.policy,
        retention=Retention(keep=1),
        gc_grace_seconds=600.0,
        deleted_retention=timedelta(days=30),
    )
    path = write(files / "user/p.txt", "v1")
    file = (await catalog.register("user/p.txt")).file
    path.write_text("v2")
    await catalog.update(file.id, FileChanges())
    pruned = catalog.storage.object_path(sha256("v1"))
    assert pruned.exists()  # too fresh to collect when its version was pruned
    assert catalog.storage.released_marks().keys() == {sha256("v1")}
    assert (await fsck(catalog)).orphans == ()  # the collector's, not a stray to keep
    assert (await catalog.purge()).objects_deleted == 0 and pruned.exists()  # (still fresh)
    eleven_minutes_ago = time.time() - 660
    os.utime(pruned, (eleven_minutes_ago, eleven_minutes_ago))
    assert (await catalog.purge()).objects_deleted == 1 and not pruned.exists()
    assert not catalog.storage.released_marks()


# -- search ---------------------------------------------------------------------------------


@pytest.fixture
async def corpus(catalog: Catalog, files: Path) -> Catalog:
    """Six files that differ in every searchable field."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    specs = [
        ("gates/doc1.md", "# one", "gates", ("report", "q1"), "quarterly report", "c-1"),
        ("gates/doc2.md", "# two two", "gates", ("report",), "draft", "c-2"),
        (
            "playfair/chart.png",
            b"\x89PNG\r\n\x1a\n" + b"0" * 200,
            "playfair",
            ("chart", "q1"),
            "sales chart",
            "c-3",
        ),
        ("fiedler/log.txt", "log " * 100, "fiedler", ("log",), "conversation log", "c-4"),
        ("user/notes/a.TXT", "notes", "alice", (), None, "c-5"),
        ("shared/data.bin", bytes(range(256)) * 8, "bob", ("q2",), "raw data", "c-6"),
    ]
    for i, (rel, content, owner, tags, purpose, cid) in enumerate(specs):
        catalog.clock = lambda i=i: start + timedelta(days=i)
        write(files / rel, content)
        await catalog.register(rel, NewFile(owner=owner, tags=tags, purpose=purpose), correlation_id=cid)
    await catalog.create_collection("reports", "the reports")
    ids = [f.id for f in (await catalog.search(SearchQuery(path="gates/*"))).results]
    await catalog.add_to_collection("reports", ids)
    return catalog


async def paths(catalog: Catalog, **filters: object) -> set[str]:
    """The paths a search with these filters (as an MCP client gives them) finds."""
    tool = TOOLS["horace_search_files"]
    page = await tool.handler(CallContext(catalog, "test"), tool.structure(filters))
    assert page.total_count == len(page.results)
    return {f.file_path for f in page.results}


ALL = {
    "gates/doc1.md",
    "gates/doc2.md",
    "playfair/chart.png",
    "fiedler/log.txt",
    "user/notes/a.TXT",
    "shared/data.bin",
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ALL),
        ({"tags": ["report"]}, {"gates/doc1.md", "gates/doc2.md"}),
        ({"tags": ["report", "q1"]}, {"gates/doc1.md"}),
        ({"any_tags": ["chart", "log"]}, {"playfair/chart.png", "fiedler/log.txt"}),
        # doc1 has both: counted once (paths() checks the total against the page)
        ({"any_tags": ["report", "q1"]}, {"gates/doc1.md", "gates/doc2.md", "playfair/chart.png"}),
        ({"any_tags": ["q1", "chart", "q1"]}, {"gates/doc1.md", "playfair/chart.png"}),
        ({"any_tags": ["report", "q1"], "owner": "gates"}, {"gates/doc1.md", "gates/doc2.md"}),
        ({"tags": [" report ", "q1 "]}, {"gates/doc1.md"}),  # as stored: tags are kept stripped
        ({"any_tags": [" chart"]}, {"playfair/chart.png"}),
        ({"owner": "alice"}, {"user/notes/a.TXT"}),
        ({"purpose": "REPORT"}, {"gates/doc1.md"}),
        ({"path": "gates/*"}, {"gates/doc1.md", "gates/doc2.md"}),
        ({"path": "*/doc?.md"}, {"gates/doc1.md", "gates/doc2.md"}),
        ({"path": "user/*/*.TXT"}, {"user/notes/a.TXT"}),
        ({"collection": "reports"}, {"gates/doc1.md", "gates/doc2.md"}),
        ({"file_type": "image/png"}, {"playfair/chart.png"}),
        ({"file_type": "text/*"}, {"gates/doc1.md", "gates/doc2.md", "fiedler/log.txt", "user/notes/a.TXT"}),
        ({"file_type": "txt"}, {"fiedler/log.txt", "user/notes/a.TXT"}),
        ({"file_type": ".md"}, {"gates/doc1.md", "gates/doc2.md"}),
        # A MIME type's case means nothing, on every backend (SQLite's LIKE took it so alone).
        ({"file_type": "Text/*"}, {"gates/doc1.md", "gates/doc2.md", "fiedler/log.txt", "user/notes/a.TXT"}),
        ({"file_type": "IMAGE/PNG"}, {"playfair/chart.png"}),
        ({"min_size": 300}, {"fiedler/log.txt", "shared/data.bin"}),
        ({"max_size": 6}, {"gates/doc1.md", "user/notes/a.TXT"}),
        (
            {"created_after": "2026-03-04T00:00:00+00:00"},
            {"user/notes/a.TXT", "shared/data.bin", "fiedler/log.txt"},
        ),
        ({"created_before": "2026-03-02T00:00:00+00:00"}, {"gates/doc1.md"}),
        ({"checksum": sha256("notes")}, {"user/notes/a.TXT"}),
        ({"correlation_id": "c-4"}, {"fiedler/log.txt"}),
        ({"query": {"owner": "gates", "tags": ["q1"]}}, {"gates/doc1.md"}),
        ({"owner": "nobody"}, set()),
    ],
)
async def test_each_search_filter_filters(
    corpus: Catalog, filters: dict[str, object], expected: set[str]
) -> None:
    assert await paths(corpus, **filters) == expected


async def test_search_status_and_sorting(corpus: Catalog) -> None:
    doc1 = (await corpus.search(SearchQuery(path="gates/doc1.md"))).results[0]
    await corpus.delete(doc1.id)
    assert "gates/doc1.md" not in await paths(corpus)
    assert await paths(corpus, status="deleted") == {"gates/doc1.md"}
    assert len(await paths(corpus, status="all")) == 6
    by_size = await corpus.search(SearchQuery(sort_by=SortKey.SIZE, order=Order.ASC))
    sizes = [f.size for f in by_size.results]
    assert sizes == sorted(sizes)
    by_path = await corpus.search(SearchQuery(sort_by=SortKey.PATH, order=Order.DESC))
    names = [f.file_path for f in by_path.results]
    assert names == sorted(names, reverse=True)


@pytest.mark.parametrize("sort_by", list(SortKey))
async def test_search_pagination_with_cursor_and_offset(corpus: Catalog, sort_by: SortKey) -> None:
    seen: list[str] = []
    query = SearchQuery(limit=2, sort_by=sort_by, status=None)
    cursor = None
    pages = 0
    while True:
        page = await corpus.search(query, cursor)
        assert page.total_count == 6 and len(page.results) == 2  # no empty page at the end
        pages += 1
        seen += [f.id for f in page.results]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6 and pages == 3
    by_offset = []
    for offset in range(0, 6, 2):
        by_offset += [f.id for f in (await corpus.search(attrs.evolve(query, offset=offset))).results]
    assert by_offset == seen
    with pytest.raises(HoraceError) as foreign:
        await corpus.search(
            SearchQuery(limit=2, owner="gates"), cursor=_first_cursor(await corpus.search(query))
        )
    assert foreign.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(HoraceError, match="not both") as both:
        await corpus.search(attrs.evolve(query, offset=2), cursor=_first_cursor(await corpus.search(query)))
    assert both.value.code is ErrorCode.INVALID_ARGUMENT


TAMPERED_VALUES = [
    *(None, True, 12.5, 2**70, -1, [], {}),
    *("", "x", "2026-13-45T99:00:00", "2026-12-05T10:00:00", "a\x00b", "\ud800"),
    # Moments with a zone that no catalog holds: past year 1 or 9999 in UTC.
    *("0001-01-01T00:00:00+02:00", "9999-12-31T23:59:59-05:00"),
]


@pytest.mark.parametrize("sort_by", list(SortKey))
async def test_a_tampered_cursor_is_refused_never_used(corpus: Catalog, sort_by: SortKey) -> None:
    """A cursor is the client's to keep: whatever it holds that the search could not have
    put there is INVALID_ARGUMENT, on every backend (not INTERNAL, not a wrong page)."""
    query = SearchQuery(limit=2, sort_by=sort_by, status=None)
    issued = _first_cursor(await corpus.search(query))
    payload = json.loads(base64.urlsafe_b64decode(issued + "=" * (-len(issued) % 4)))
    changed = [{**payload, "v": value} for value in TAMPERED_VALUES]
    changed += [{**payload, "id": value} for value in (None, 7, "not-an-id", "\ud800", payload["id"] + "x")]
    for tampered in changed:
        cursor = base64.urlsafe_b64encode(json.dumps(tampered).encode()).decode().rstrip("=")
        try:
            page = await corpus.search(query, cursor)
        except HoraceError as exc:
            assert exc.code is ErrorCode.INVALID_ARGUMENT, (tampered, exc)
        else:  # a value of the right kind is a position, as good as any the search gave
            assert isinstance(tampered["v"], type(payload["v"])), (tampered, page)
            assert tampered["id"] == payload["id"]
    corpus.store_id, mine = str(uuid.uuid4()), corpus.store_id  # another store's catalog
    try:
        with pytest.raises(HoraceError, match="different search") as foreign:
            await corpus.search(query, issued)
    finally:
        corpus.store_id = mine
    assert foreign.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "filters",
    [{}, {"any_tags": ("report", "chart")}, {"tags": ("report",)}, {"purpose": "report"}, {"status": None}],
)
async def test_an_offset_past_every_row_is_an_empty_page(corpus: Catalog, filters: dict[str, Any]) -> None:
    """The largest offset a search takes (2**63 - 1): an empty page with the total, on
    every backend and search plan (its offset and limit added went past a BIGINT)."""
    query = SearchQuery(**filters, offset=INT64_MAX, limit=1000)
    page = await corpus.search(query)
    assert page.results == ()
    assert page.total_count == (await corpus.search(attrs.evolve(query, offset=0))).total_count > 0


def _first_cursor(page: object) -> str:
    cursor = getattr(page, "next_cursor", None)
    assert cursor is not None
    return cursor


async def test_search_limit_is_at_most_1000() -> None:
    tool = TOOLS["horace_search_files"]
    assert tool.structure({"limit": 1000}).limit == 1000
    with pytest.raises(HoraceError) as refused:
        tool.structure({"limit": 5000})  # refused, as the CLI refuses it: never cut quietly
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT and "limit" in refused.value.message
    assert tool.describe()["inputSchema"]["properties"]["limit"]["maximum"] == 1000


async def test_a_search_for_more_words_than_any_real_one_is_refused(corpus: Catalog) -> None:
    """Each word is one more term to match: a query of thousands (each admitted by the
    message size) would hold the database for seconds to minutes."""
    many = " ".join(f"w{i}" for i in range(QUERY_WORDS))
    assert (await corpus.search(SearchQuery(purpose=many))).total_count == 0
    with pytest.raises(HoraceError) as refused:
        await corpus.search(SearchQuery(purpose=f"{many} one-more"))
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert (
        refused.value.message == f"purpose: at most {QUERY_WORDS} words to search for, not {QUERY_WORDS + 2}"
    )
    assert (await corpus.search(SearchQuery(purpose=f"report {' '.join(['report'] * 500)}"))).total_count == 1
    tool = TOOLS["horace_search_files"]
    assert tool.describe()["inputSchema"]["properties"]["purpose"]["maxLength"] == 4096


# -- collections and duplicates -----------------------------------------------------------------


async def test_a_collection_call_names_at_most_10000_files_and_20_missing_ones(catalog: Catalog) -> None:
    for name in ("horace_create_collection", "horace_add_to_collection", "horace_remove_from_collection"):
        tool = TOOLS[name]
        assert tool.describe()["inputSchema"]["properties"]["file_ids"]["maxItems"] == 10_000
        with pytest.raises(HoraceError) as refused:
            tool.structure({"name": "c", "file_ids": [str(i) for i in range(10_001)]})
        assert refused.value.code is ErrorCode.INVALID_ARGUMENT and "file_ids" in refused.value.message
    unknown = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(10_000)]
    with pytest.raises(HoraceError) as missing:
        await catalog.create_collection("c", file_ids=unknown)
    assert missing.value.code is ErrorCode.NOT_CATALOGED
    assert missing.value.message == f"not catalogued: {', '.join(unknown[:20])} and 9980 more"


async def test_collections_many_to_many(catalog: Catalog, files: Path) -> None:
    write(files / "user/a.txt", "a")
    write(files / "user/b.txt", "b")
    a = (await catalog.register("user/a.txt")).file
    b = (await catalog.register("user/b.txt")).file
    await catalog.create_collection("one", "first", [a.id, b.id], {"k": "v"})
    await catalog.create_collection("two", None, [a.id])
    total, listed = await catalog.list_collections()
    assert total == 2 and {(c.name, c.member_count) for c in listed} == {("one", 2), ("two", 1)}
    collection, members = await catalog.get_collection("one")
    assert collection.description == "first" and collection.metadata == {"k": "v"}
    assert {f.id for f in members} == {a.id, b.id}
    assert (await catalog.remove_from_collection("one", [a.id])).member_count == 1
    assert (await catalog.remove_from_collection("one", [a.id])).member_count == 1  # not a member
    with pytest.raises(HoraceError) as mistyped:
        await catalog.remove_from_collection("one", [b.id, a.id[:-1] + "x"])
    assert mistyped.value.code is ErrorCode.NOT_CATALOGED and a.id[:-1] + "x" in mistyped.value.message
    assert (await catalog.get_collection("one"))[0].member_count == 1  # refused whole: b stays
    assert (await catalog.add_to_collection("two", [b.id, b.id])).member_count == 2
    await catalog.delete_collection("one")
    assert (await catalog.get_info(file_id=a.id)).file.status is Status.ACTIVE  # files stay
    for call in (
        catalog.get_collection("one"),
        catalog.delete_collection("one"),
        catalog.add_to_collection("one", [a.id]),
    ):
        with pytest.raises(HoraceError) as excinfo:
            await call
        assert excinfo.value.code is ErrorCode.COLLECTION_NOT_FOUND
    with pytest.raises(HoraceError) as unknown:
        await catalog.add_to_collection("two", ["00000000-0000-0000-0000-000000000000"])
    assert unknown.value.code is ErrorCode.NOT_CATALOGED


async def test_register_into_collection(catalog: Catalog, files: Path) -> None:
    write(files / "user/a.txt", "a")
    file = (await catalog.register("user/a.txt", NewFile(collection="inbox"))).file
    _, members = await catalog.get_collection("inbox")
    assert [f.id for f in members] == [file.id]


async def test_find_duplicates(catalog: Catalog, files: Path) -> None:
    path_a = write(files / "user/a.txt", "a")
    write(files / "user/b.txt", "b")
    a = (await catalog.register("user/a.txt")).file
    b = (await catalog.register("user/b.txt")).file
    assert await catalog.find_duplicates() == []
    path_a.write_text("b")  # a's content becomes b's
    await catalog.update(a.id, FileChanges())
    groups = await catalog.find_duplicates()
    assert len(groups) == 1 and {f.id for f in groups[0].files} == {a.id, b.id}
    assert groups[0].checksum == sha256("b") and groups[0].file_count == 2


async def test_duplicate_groups_come_in_pages_of_groups_and_of_files(catalog: Catalog, files: Path) -> None:
    """Largest content first; each group counts all its files and lists the first ones
    registered, so neither many groups nor one huge group has to come at once."""
    contents = ("a" * 30, "b" * 20, "c" * 10)
    for n in range(3):  # (register gives a copy's content its first file; a scan catalogs copies)
        for content in contents:
            write(files / f"user/{content[0]}{n}.txt", content)
        await catalog.scan()
    ids = {c: [(await catalog.resolve(f"user/{c[0]}{n}.txt")).id for n in range(3)] for c in contents}
    pages = [await catalog.find_duplicates(limit=1, offset=n, files_per_group=2) for n in range(4)]
    assert [[(g.checksum, g.size, g.file_count) for g in page] for page in pages] == [
        [(sha256(content), len(content), 3)] for content in ids
    ] + [[]]
    assert [[f.id for f in page[0].files] for page in pages[:3]] == [found[:2] for found in ids.values()]
    whole = await catalog.find_duplicates(limit=2, offset=1)
    assert [[f.id for f in g.files] for g in whole] == [ids["b" * 20], ids["c" * 10]]


async def test_one_repair_restores_a_file_without_versions_or_working_copy(
    catalog: Catalog, files: Path
) -> None:
    path = write(files / "user/w.txt", "kept as an object only")
    file = (await catalog.register("user/w.txt")).file
    await catalog.backend.delete_version(file.id, 1)
    path.unlink()
    report = await fsck(catalog, repair=True)
    assert {(f.kind, f.repaired) for f in report.findings} == {
        ("no_versions", True),
        ("working_missing", True),
    }
    assert path.read_text() == "kept as an object only"
    assert (await fsck(catalog, deep=True)).clean


async def test_a_working_copy_another_process_still_holds_is_not_written_back(
    catalog: Catalog, files: Path
) -> None:
    """A delete SIGKILLed while it versions the working file (moved into .horace/tmp) may
    still be ending, its lock gone, when a repair runs: the current version is not written
    over the path, and once the process has ended, the held content (newer) goes back."""
    path = write(files / "user/w.txt", "version 1")
    file = (await catalog.register("user/w.txt")).file
    path.write_text("unsaved, newer")
    ending = await trio.lowlevel.open_process(["sleep", "60"])  # the process still seen running
    try:
        own = TempName.parse(temp_name(TempKind.HELD, "x"))
        assert own is not None
        held = catalog.storage.tmp / (
            f"{TMP_PREFIX}{TempKind.HELD.value}.{own.host}.{ending.pid}.0a1b2c.{file.id.replace('-', '')}"
        )
        os.rename(path, held)
        report = await fsck(catalog, repair=True)
        (missing,) = [f for f in report.findings if f.kind == "working_missing"]
        assert not missing.repaired and f"held in .horace/tmp by process {ending.pid}" in missing.detail
        assert not path.exists() and held.read_text() == "unsaved, newer"
    finally:
        ending.kill()
        await ending.wait()
    await fsck(catalog, repair=True)  # its process gone: the held content goes back
    assert path.read_text() == "unsaved, newer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.txt"]  # no .recovered-N beside
    assert (await fsck(catalog, deep=True)).clean


def _rot(catalog: Catalog, checksum: str) -> None:
    """One byte of a loose object changed, its size kept (bit rot)."""
    obj = catalog.storage.object_path(checksum)
    data = bytearray(obj.read_bytes())
    data[0] ^= 0x01
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))


async def test_a_repair_never_writes_a_working_copy_back_from_a_rotten_object(
    catalog: Catalog, files: Path
) -> None:
    """Without --deep, fsck looks at an object's size; the write-back of a missing working
    copy reads it whole anyway, and bytes that are not the version's are never written
    into files/ (a scan would then version them)."""
    path = write(files / "user/ledger.txt", "balance: 1000")
    file = (await catalog.register("user/ledger.txt")).file
    path.unlink()
    _rot(catalog, file.checksum)
    report = await fsck(catalog, repair=True)
    (missing,) = [f for f in report.findings if f.kind == "working_missing"]
    assert not missing.repaired and "not written back" in missing.detail and "damaged" in missing.detail
    assert not path.exists() and not [p for p in path.parent.iterdir()]
    assert temps_left(catalog) == []


async def test_a_held_working_copy_is_kept_when_its_versions_object_has_rotted(
    catalog: Catalog, files: Path
) -> None:
    """A delete killed after its commit leaves the working copy held in .horace/tmp; its
    content is a version, so it is removed, but only once that version's object reads
    whole as its checksum: rotted at its size, the held copy is the last good one, and it
    goes back into files/."""
    path = write(files / "user/w.txt", "version 1")
    file = (await catalog.register("user/w.txt")).file
    await catalog.delete(file.id)
    assert not path.exists()
    ended = await trio.lowlevel.open_process(["true"])
    await ended.wait()
    own = TempName.parse(temp_name(TempKind.HELD, "x"))
    assert own is not None
    held = catalog.storage.tmp / (
        f"{TMP_PREFIX}{TempKind.HELD.value}.{own.host}.{ended.pid}.0a1b2c.{file.id.replace('-', '')}"
    )
    held.write_text("version 1")  # (as the killed delete left it)
    _rot(catalog, file.checksum)
    await fsck(catalog, repair=True)
    assert path.read_text() == "version 1" and not held.exists()


async def test_a_file_id_and_a_path_of_two_files_are_refused(catalog: Catalog, files: Path) -> None:
    """A call given both must not act on one of them when the caller meant the other."""
    write(files / "user/a.txt", "a")
    write(files / "user/b.txt", "b")
    a = (await catalog.register("user/a.txt")).file
    await catalog.register("user/b.txt")
    assert (await catalog.locate(a.id, "user/a.txt")).id == a.id
    with pytest.raises(HoraceError) as refused:
        await catalog.locate(a.id, "user/b.txt")
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.message == f"file_id {a.id!r} is 'user/a.txt', not 'user/b.txt': give one of them"
    with pytest.raises(HoraceError):
        await catalog.get_info(file_id=a.id, file_path="user/b.txt")


# -- verify and scan ------------------------------------------------------------------------


async def test_scans_and_verifies_of_many_files_walk_one_at_a_time(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each holds what it found (a few KiB a file): side by side, the scans a server's
    clients ask for would add that up. They take turns; a scan of one file does not wait."""
    for i in range(20):
        write(files / f"user/f{i}.txt", f"file {i}")
    walking = [0]
    most = [0]
    real_walk = catalog.storage.walk_stats

    def slow_walk(*args: Any, **kwargs: Any) -> Any:
        walking[0] += 1
        most[0] = max(most[0], walking[0])
        try:
            time.sleep(0.2)
            return real_walk(*args, **kwargs)
        finally:
            walking[0] -= 1

    monkeypatch.setattr(catalog.storage, "walk_stats", slow_walk)
    reports = []

    async def scan(under: str | None) -> None:
        reports.append(await catalog.scan(under))

    async with trio.open_nursery() as nursery:
        for under in (None, None, "user", "."):
            nursery.start_soon(scan, under)
        nursery.start_soon(verify, catalog)
        await trio.sleep(0.05)
        assert catalog.walking.locked()
        write(files / "single.txt", "one file")
        with trio.fail_after(0.15):  # (each walk takes 0.2 s)
            assert (await catalog.scan("single.txt")).registered == 1
    assert most[0] == 1
    assert sorted(r.registered for r in reports) == [0, 0, 0, 20]


async def test_verify_reports_mismatches(catalog: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "a")
    file = (await catalog.register("user/a.txt")).file
    assert (await verify(catalog)).problems == ()
    path.write_text("changed outside")
    obj = catalog.storage.object_path(file.checksum)
    obj.chmod(0o644)
    obj.write_text("rot")
    kinds = {p.kind for p in (await verify(catalog, file.id)).problems}
    assert kinds == {"working_modified", "checksum_mismatch"}
    obj.unlink()
    path.unlink()
    kinds = {p.kind for p in (await verify(catalog)).problems}
    assert kinds == {"working_missing", "missing_object"}


async def test_verify_reports_a_deleted_file_whose_path_holds_a_file_again(
    catalog: Catalog, files: Path
) -> None:
    write(files / "user/a.txt", "a")
    file = (await catalog.register("user/a.txt")).file
    await catalog.delete(file.id)
    assert (await verify(catalog)).problems == ()
    write(files / "user/a.txt", "put back, not scanned")
    [problem] = (await verify(catalog)).problems
    assert (problem.kind, problem.file_id) == ("deleted_present", file.id)
    await catalog.scan()
    assert (await verify(catalog)).problems == ()


async def test_repair_does_not_claim_an_object_mended_when_the_row_is_what_is_wrong(
    catalog: Catalog, files: Path, settings: Settings
) -> None:
    """A version whose recorded size is not its content's (a hand-edited row): the object,
    put back from the working copy, still does not match the row. Not said repaired, every
    run, but left and said so."""
    write(files / "user/b.txt", "five!")
    file = (await catalog.register("user/b.txt")).file
    for table, key in (("horace_versions", "file_id"), ("horace_files", "id")):
        edit = f"UPDATE {table} SET size = 6 WHERE {key} = '{file.id}'"
        await trio.to_thread.run_sync(catalog_execute, settings.database_url, edit)
    for _ in range(2):
        report = await fsck(catalog, repair=True)
        assert [(f.kind, f.repaired) for f in report.findings] == [("missing_object", False)], report
        assert "the catalog's row is wrong" in report.findings[0].detail, report.findings
        assert report.exit_code == 4
    assert (files / "user/b.txt").read_text() == "five!"


async def test_repair_finds_a_lost_object_in_another_files_working_copy(
    catalog: Catalog, files: Path
) -> None:
    """A version's object lost: fsck --repair looks for its content in the file's working
    copy, then in those of the files whose current content it is. One that none holds is
    kept (this may be an old copy of the store) and the finding says how to drop it;
    --forget-missing drops it."""
    a_path, z_path, n_path = files / "user/a_x.txt", files / "user/z_y.txt", files / "user/n.txt"
    write(a_path, "SSS")
    a = (await catalog.register("user/a_x.txt")).file
    write(a_path, "TTT")
    await catalog.update(a.id, FileChanges())
    write(z_path, "UUU")
    z = (await catalog.register("user/z_y.txt")).file
    write(z_path, "SSS")  # z_y's current content is a_x's first
    await catalog.update(z.id, FileChanges())
    write(n_path, "gone for good")
    n = (await catalog.register("user/n.txt")).file
    write(n_path, "newer")
    await catalog.update(n.id, FileChanges())
    catalog.storage.object_path(sha256("SSS")).unlink()
    catalog.storage.object_path(sha256("gone for good")).unlink()
    report = await fsck(catalog, repair=True)
    said = {(f.file_path, f.detail) for f in report.findings}
    assert (
        "user/a_x.txt",
        f"version 1: object {sha256('SSS')} is missing or damaged "
        "(recovered from the working copy of 'user/z_y.txt')",
    ) in said, said
    kept = [f for f in report.findings if f.file_path == "user/n.txt"]
    assert [(f.kind, f.repaired) for f in kept] == [("missing_object", False)], kept
    assert "the version is kept" in kept[0].detail and "--forget-missing" in kept[0].detail, kept
    a_versions = (await catalog.get_info(file_id=a.id, include_versions=True)).versions
    assert [v.version for v in a_versions or ()] == [2, 1]
    assert (await catalog.content(a, 1, 1024)).data == b"SSS"
    n_versions = (await catalog.get_info(file_id=n.id, include_versions=True)).versions
    assert [v.version for v in n_versions or ()] == [2, 1]
    assert report.exit_code == 4
    report = await fsck(catalog, repair=True, forget_missing=True)
    assert {(f.file_path, f.detail) for f in report.findings} == {
        (
            "user/n.txt",
            f"version 1: object {sha256('gone for good')} is missing or damaged "
            "(its content is nowhere in the store: the version was dropped)",
        )
    }, report.findings
    n_versions = (await catalog.get_info(file_id=n.id, include_versions=True)).versions
    assert [v.version for v in n_versions or ()] == [2]
    assert (await fsck(catalog, deep=True)).clean


@pytest.mark.parametrize("object_lost", [False, True])
async def test_repair_records_again_the_content_of_a_file_whose_version_rows_are_gone(
    catalog: Catalog, files: Path, object_lost: bool
) -> None:
    """Version rows removed by hand: verify and fsck say so, and fsck --repair records the
    file's content as a version again (from its object, or its working copy when the object
    is lost too), so that the object is no orphan for the collector once the file changes."""
    path = write(files / "user/c.txt", "content Z")
    file = (await catalog.register("user/c.txt")).file
    write(path, "content Z, then more")
    file = (await catalog.update(file.id, FileChanges())).file
    for v in (1, 2):
        await catalog.backend.delete_version(file.id, v)
    if object_lost:
        catalog.storage.object_path(file.checksum).unlink()
    assert [p.kind for p in (await verify(catalog)).problems] == ["no_versions"]
    assert [(f.kind, f.repaired) for f in (await fsck(catalog)).findings] == [("no_versions", False)]
    report = await fsck(catalog, repair=True)
    assert [(f.kind, f.repaired) for f in report.findings] == [("no_versions", True)], report.findings
    assert "recorded again as version 2" in report.findings[0].detail  # the number it had
    info = await catalog.get_info(file_id=file.id, include_versions=True)
    assert [(v.version, v.checksum) for v in info.versions or ()] == [(2, sha256("content Z, then more"))]
    assert info.file.current_version == 2
    assert (await catalog.content(info.file, 2, 1024)).data == b"content Z, then more"
    write(path, "content Z2")
    assert (await catalog.update(file.id, FileChanges())).file.current_version == 3
    assert (await catalog.content(info.file, 2, 1024)).data == b"content Z, then more"
    assert (await fsck(catalog, deep=True)).clean and (await verify(catalog)).problems == ()


async def test_repair_goes_on_past_a_file_it_cannot_reach(
    catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    """A file whose folder became a symlink is reported unreachable (and never followed);
    a file whose path became a folder is not said to be repaired; the others are."""
    write(files / "user/sub/f.txt", "in sub")
    write(files / "user/x", "x")
    write(files / "user/zzz.txt", "z")
    for rel in ("user/sub/f.txt", "user/x", "user/zzz.txt"):
        await catalog.register(rel)
    (files / "user/sub").rename(files / "user/sub_moved")
    outside = write(tmp_path / "outside/f.txt", "OUTSIDE").parent
    (files / "user/sub").symlink_to(outside)
    (files / "user/x").unlink()
    (files / "user/x").mkdir()
    (files / "user/zzz.txt").unlink()
    found = {f.file_path: f for f in (await fsck(catalog)).findings}
    assert {path: f.kind for path, f in found.items()} == {
        "user/sub/f.txt": "unreachable",
        "user/x": "working_missing",
        "user/zzz.txt": "working_missing",
    }
    # Said before a repair as the repair would say it: the folder must go first.
    assert "something that is not a file is at its path" in found["user/x"].detail
    assert "removed on purpose" in found["user/zzz.txt"].detail
    report = await fsck(catalog, repair=True)
    by_path = {f.file_path: f for f in report.findings}
    assert by_path["user/sub/f.txt"].kind == "unreachable" and not by_path["user/sub/f.txt"].repaired
    assert by_path["user/x"].kind == "working_missing" and not by_path["user/x"].repaired
    assert "something that is not a file is at its path" in by_path["user/x"].detail
    assert by_path["user/zzz.txt"].repaired and (files / "user/zzz.txt").read_text() == "z"
    assert (outside / "f.txt").read_text() == "OUTSIDE"


async def test_a_delete_through_a_folder_now_a_symlink_records_it_and_touches_nothing(
    catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    """The file is gone from files/ (its folder is a link now): deleted, its history kept,
    and what the link leads to, a file of the same name included, left as it is."""
    write(files / "user/sub/f.txt", "in sub")
    file = (await catalog.register("user/sub/f.txt")).file
    (files / "user/sub").rename(files / "user/sub_moved")
    outside = write(tmp_path / "outside/f.txt", "OUTSIDE").parent
    (files / "user/sub").symlink_to(outside, target_is_directory=True)
    deleted = (await catalog.delete(file.id)).file
    assert deleted.status is Status.DELETED and deleted.current_version == 1
    assert (outside / "f.txt").read_text() == "OUTSIDE"
    assert (files / "user/sub_moved/f.txt").read_text() == "in sub"
    assert (await catalog.content(deleted, 1, 1024)).data == b"in sub"


async def test_repair_drops_no_version_whose_content_a_file_it_cannot_read_may_hold(
    catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    """g.txt's first version is lost; sub/w.txt holds it, but sub/ is now a symlink: the
    version is kept (and said why), and recovered once sub/ is back."""
    g = write(files / "user/g.txt", "content W1")
    file = (await catalog.register("user/g.txt")).file
    write(g, "content W2")
    await catalog.update(file.id, FileChanges())
    write(files / "sub/w.txt", "content W1")  # a copy, catalogued once g.txt moved on
    await catalog.register("sub/w.txt")
    catalog.storage.object_path(sha256("content W1")).unlink()
    (files / "sub").rename(tmp_path / "subreal")
    (files / "sub").symlink_to(tmp_path / "subreal")
    report = await fsck(catalog, repair=True)
    lost = next(f for f in report.findings if f.file_path == "user/g.txt")
    assert not lost.repaired and "the working copy of 'sub/w.txt' may hold it" in lost.detail, lost
    assert [
        v.version for v in (await catalog.get_info(file_id=file.id, include_versions=True)).versions or ()
    ] == [2, 1]
    (files / "sub").unlink()
    (tmp_path / "subreal").rename(files / "sub")
    again = await fsck(catalog, repair=True)
    assert all(f.repaired for f in again.findings), again.findings
    assert (await catalog.content(file, 1, 1024)).data == b"content W1"


async def test_scan_registers_and_versions(catalog: Catalog, files: Path) -> None:
    for i in range(30):
        write(files / f"user/many/{i}.txt", f"file {i}")
    write(files / "user/dup.txt", "file 1")
    (files / "user/link.txt").symlink_to(files / "user/many/0.txt")
    seen: list[tuple[int, int]] = []
    report = await catalog.scan(progress=lambda done, total: seen.append((done, total)))
    assert (report.scanned, report.registered, report.duplicates) == (31, 31, 0)  # the copy too
    assert seen[-1] == (31, 31)
    write(files / "user/many/3.txt", "changed")
    write(files / "user/many/new.txt", "new")
    again = await catalog.scan("user/many")
    assert (again.registered, again.versioned, again.unchanged, again.duplicates) == (1, 1, 29, 0)
    assert (await fsck(catalog, deep=True)).clean
    with pytest.raises(HoraceError) as excinfo:
        await catalog.scan("user/absent")
    assert excinfo.value.code is ErrorCode.FILE_NOT_FOUND


async def test_a_file_path_given_from_the_stores_root_or_naming_a_folder_says_what_is_meant(
    catalog: Catalog, files: Path
) -> None:
    write(files / "gates/report.md", "report")
    with pytest.raises(HoraceError) as from_the_root:
        await catalog.register("files/gates/report.md")
    assert from_the_root.value.code is ErrorCode.FILE_NOT_FOUND
    assert from_the_root.value.message == (
        "no file at 'files/gates/report.md' (paths are under files/: 'gates/report.md'?)"
    )
    with pytest.raises(HoraceError) as absent:
        await catalog.register("gates/absent.md")
    assert absent.value.message == "no file at 'gates/absent.md'"
    with pytest.raises(HoraceError) as folder:
        await catalog.register("gates")
    assert folder.value.code is ErrorCode.INVALID_PATH
    assert (
        "'gates' is a folder, not a file: a scan of it (horace_scan, `horace scan`)" in folder.value.message
    )
    assert (await catalog.scan("gates")).registered == 1
    # Catalogued now: a call that names it from the store's root is told what is meant too.
    for looked_up in (
        catalog.resolve("files/gates/report.md"),
        catalog.get_info(file_path="files/gates/report.md"),
    ):
        with pytest.raises(HoraceError) as not_here:
            await looked_up
        assert not_here.value.code is ErrorCode.NOT_CATALOGED
        assert not_here.value.message == (
            "'files/gates/report.md' is not catalogued (paths are under files/: 'gates/report.md'?)"
        )
    with pytest.raises(HoraceError) as scanned:
        await catalog.scan("files/gates")
    assert "(paths are under files/: 'gates'?)" in scanned.value.message


async def test_a_scan_of_one_file_takes_that_file(catalog: Catalog, files: Path) -> None:
    write(files / "user/one.txt", "one")
    write(files / "user/other.txt", "other")
    counts = lambda r: (r.scanned, r.registered, r.versioned, r.unchanged, r.duplicates, r.errors)  # noqa: E731
    assert counts(await catalog.scan("user/one.txt")) == (1, 1, 0, 0, 0, ())
    with pytest.raises(HoraceError):  # nothing else was taken
        await catalog.resolve("user/other.txt")
    assert counts(await catalog.scan(str(files / "user/one.txt"))) == (1, 0, 0, 1, 0, ())
    write(files / "user/one.txt", "one, changed")
    assert counts(await catalog.scan("user/one.txt")) == (1, 0, 1, 0, 0, ())
    write(files / "user/copy.txt", "one, changed")  # a copy: a file of its own, as a folder's scan takes it
    assert counts(await catalog.scan("user/copy.txt")) == (1, 1, 0, 0, 0, ())
    assert (await catalog.resolve("user/copy.txt")).id != (await catalog.resolve("user/one.txt")).id
    os.link(files / "user/other.txt", files / "user/other-link.txt")  # two names: not catalogable
    report = await catalog.scan("user/other.txt")
    assert (report.scanned, report.registered, len(report.errors)) == (1, 0, 1), report
    for absent in ("user/absent.txt", "user/one.txt/", "user/.horace-tmp-x"):
        with pytest.raises(HoraceError) as excinfo:
            await catalog.scan(absent)
        assert excinfo.value.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.INVALID_PATH), excinfo.value
    os.mkfifo(files / "user/fifo")  # there, but no file to take: said so, not "no such file"
    with pytest.raises(HoraceError) as excinfo:
        await catalog.scan("user/fifo")
    assert excinfo.value.code is ErrorCode.INVALID_PATH
    assert "'user/fifo' is not a regular file or a folder" in excinfo.value.message


async def test_a_new_file_whose_content_left_its_file_is_left_for_the_rename(
    catalog: Catalog, files: Path
) -> None:
    """Copies are catalogued only while the file whose content they hold is at its path:
    a new file holding the content of one gone from its path may be that file renamed
    (the watcher pairs the two halves; a scan follows it by inode), and is left out."""
    write(files / "user/a.txt", "moving")
    write(files / "user/kept.txt", "staying")
    a = (await catalog.register("user/a.txt")).file
    await catalog.register("user/kept.txt")
    os.rename(files / "user/a.txt", files / "user/b.txt")
    write(files / "user/kept-copy.txt", "staying")
    taken = await catalog.register_new(["user/b.txt", "user/kept-copy.txt"], copies=True)
    assert [f.file_path for f in taken.registered] == ["user/kept-copy.txt"]
    assert taken.skipped == (("user/b.txt", a.checksum),)
    assert (await catalog.scan()).moved == ("user/a.txt -> user/b.txt",)
    assert (await catalog.resolve("user/b.txt")).id == a.id


async def test_a_scan_catalogs_every_copy_as_a_file_of_its_own(catalog: Catalog, files: Path) -> None:
    """A new file whose content another file holds at its path is a copy: a scan catalogs
    it as a file of its own (its path can be brought back once removed, a git branch
    pointing where another does, say), its content stored once. So is a copy of what its
    original leaves in the same scan, and a copy made of a file's new content."""
    write(files / "user/a.bin", "X")
    write(files / "user/b.bin", "P")
    await catalog.scan()
    write(files / "user/copy-of-a.bin", "X")
    write(files / "user/a.bin", "Y")
    write(files / "user/b-to-be.bin", "Q")
    write(files / "user/b.bin", "Q")
    write(files / "user/c1.bin", "same")
    write(files / "user/c2.bin", "same")
    report = await catalog.scan()
    assert (report.registered, report.versioned, report.duplicates) == (4, 2, 0), report
    copy = await catalog.resolve("user/copy-of-a.bin")
    assert (await catalog.content(copy, 1, 16)).data == b"X"
    a = await catalog.resolve("user/a.bin")
    assert (a.current_version, (await catalog.content(a, 2, 16)).data) == (2, b"Y")
    b_to_be, c2 = await catalog.resolve("user/b-to-be.bin"), await catalog.resolve("user/c2.bin")
    assert (b_to_be.checksum, c2.checksum) == ((await catalog.resolve("user/b.bin")).checksum, sha256("same"))
    again = await catalog.scan()
    assert (again.registered, again.versioned, again.duplicates, again.unchanged) == (0, 0, 0, 6), again
    (files / "user/c2.bin").unlink()  # the copy removed: it comes back by its path
    await catalog.delete(c2.id)
    await catalog.undelete(c2.id)
    assert (files / "user/c2.bin").read_text() == "same"
    assert (await fsck(catalog, deep=True)).clean


async def test_files_another_instance_catalogued_mid_scan_count_as_unchanged(
    catalog: Catalog, settings: Settings, files: Path
) -> None:
    """Two instances scan one tree: the files the other one inserted first are reported
    as unchanged (catalogued, same content), not as duplicate content."""
    for i in range(20):
        write(files / f"shared/both/{i}.txt", f"both {i}")
    async with open_catalog(settings, check=False) as other:
        first = catalog.register_new

        async def other_goes_first(*args: Any, **kwargs: Any) -> Any:
            assert (await other.scan()).registered == 20  # between our walk and our insert
            return await first(*args, **kwargs)

        catalog.register_new = other_goes_first  # type: ignore[method-assign]
        report = await catalog.scan()
    assert (report.registered, report.unchanged, report.duplicates) == (0, 20, 0), report
    assert (await fsck(catalog, deep=True)).clean


async def test_scan_skips_editor_and_writer_temp_files(catalog: Catalog, files: Path) -> None:
    for name in ("draft.tmp", "notes.txt~", ".#notes.txt", ".notes.txt.swp", ".horace-tmp-x-1-abc"):
        write(files / "user" / name, f"temp {name}")
    write(files / "user/notes.txt", "the real one")
    write(files / "user/anim.swf", "a Flash file, no vim swap file (those start with a dot)")
    report = await catalog.scan()
    assert (report.scanned, report.registered) == (2, 2)
    assert await paths(catalog) == {"user/notes.txt", "user/anim.swf"}
    # Asked for explicitly, a temp-looking file is still catalogued.
    assert not (await catalog.register("user/draft.tmp")).duplicate


async def test_a_scan_stopped_by_a_full_catalog_disk_says_what_it_kept(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan commits as it goes: stopped by an outage after a commit, its error keeps its
    code and says what was kept; stopped before any, the error is as it came."""
    path = write(files / "user/a.txt", "v1")
    file = (await catalog.register("user/a.txt")).file
    write(path, "v2, changed")
    write(files / "user/new.txt", "new")

    async def full(*args: object, **kwargs: object) -> None:
        raise DatabaseFull("the disk of the catalog is full")

    monkeypatch.setattr(catalog.backend, "insert_files", full)
    with pytest.raises(HoraceError) as stopped:
        await catalog.scan()
    assert stopped.value.code is ErrorCode.STORAGE_FULL
    assert "registered 0 and versioned 1 files, which are kept" in stopped.value.message
    assert (await catalog.file(file.id)).current_version == 2
    with pytest.raises(DatabaseFull):  # nothing committed this time: the error as it came
        await catalog.scan()


async def test_a_scan_names_the_catalogued_files_gone_from_its_folder_and_keeps_them(
    catalog: Catalog, files: Path
) -> None:
    """A file removed outside Horace is reported by the scans that look where it was (and
    only by them); it stays active and restorable, and once it is deleted or back it is
    no longer missing."""
    for rel in ("user/a/gone.txt", "user/a/kept.txt", "user/a/back.txt", "user/ab/gone.txt", "gates/x.md"):
        write(files / rel, rel)
    await catalog.scan()
    for rel in ("user/a/gone.txt", "user/a/back.txt", "user/ab/gone.txt"):
        (files / rel).unlink()
    write(files / "user/a/.#kept.txt", "an editor's lock file: walked past, not missing")
    report = await catalog.scan()
    assert report.missing == ("user/a/back.txt", "user/a/gone.txt", "user/ab/gone.txt")
    assert (await catalog.scan("user/a")).missing == ("user/a/back.txt", "user/a/gone.txt")
    assert (await catalog.scan("gates")).missing == ()
    gone = await catalog.resolve("user/a/gone.txt")
    assert gone.status is Status.ACTIVE
    await catalog.restore(gone.id, 1)
    assert (files / "user/a/gone.txt").read_text() == "user/a/gone.txt"
    await catalog.delete((await catalog.resolve("user/ab/gone.txt")).id)
    write(files / "user/a/back.txt", "user/a/back.txt")
    assert (await catalog.scan()).missing == ()


async def test_a_scan_follows_a_rename_and_the_file_keeps_its_history(catalog: Catalog, files: Path) -> None:
    """A catalogued file found at a new path under its inode, its old path gone, is that
    file, renamed: it keeps its id and versions; one renamed and changed, or whose old path
    is still there (a copy), or that left the scanned folder, is not; nor is a copy of a
    file that was then removed (another inode: a copy, and a deletion)."""
    write(files / "user/notes.txt", "first")
    write(files / "user/copied.txt", "copied")
    write(files / "user/edited.txt", "edited")
    write(files / "user/away.txt", "away")
    write(files / "user/report.md", "report")
    await catalog.scan()
    write(files / "user/report-backup.md", "report")  # a copy: a file of its own
    assert (await catalog.scan()).registered == 1
    (files / "user/report.md").unlink()
    write(files / "user/notes.txt", "second")
    await catalog.scan()
    notes = await catalog.resolve("user/notes.txt")
    os.makedirs(files / "archive")
    os.rename(files / "user/notes.txt", files / "archive/notes-2026.txt")
    write(files / "user/copy-of-copied.txt", "copied")
    os.rename(files / "user/edited.txt", files / "user/edited-now.txt")
    write(files / "user/edited-now.txt", "edited, and renamed")
    os.rename(files / "user/away.txt", files / "elsewhere.txt")
    in_user = await catalog.scan("user")
    assert in_user.moved == ()
    assert in_user.missing == ("user/away.txt", "user/edited.txt", "user/notes.txt", "user/report.md")
    report = await catalog.scan()
    assert report.moved == ("user/notes.txt -> archive/notes-2026.txt", "user/away.txt -> elsewhere.txt")
    assert report.missing == ("user/edited.txt", "user/report.md")
    assert (await catalog.resolve("user/report.md")).status is Status.ACTIVE  # (restorable)
    moved = await catalog.get_info(file_path="archive/notes-2026.txt", include_versions=True)
    assert moved.file.id == notes.id and [v.version for v in moved.versions or ()] == [2, 1]
    assert (await catalog.content(moved.file, 1, 100)).data == b"first"
    with pytest.raises(HoraceError) as excinfo:
        await catalog.resolve("user/notes.txt")
    assert excinfo.value.code is ErrorCode.NOT_CATALOGED
    assert (await catalog.resolve("user/copied.txt")).status is Status.ACTIVE
    assert (await catalog.scan()).moved == ()
    for gone in ("user/edited.txt", "user/report.md"):  # (their content is elsewhere)
        await catalog.delete((await catalog.resolve(gone)).id)
    found = await fsck(catalog, deep=True)
    assert found.clean, found


async def test_a_scan_takes_no_file_made_anew_in_a_removed_files_inode_for_it(
    catalog: Catalog, files: Path
) -> None:
    """`rm a; touch b` between two scans, b in a's inode (filesystems reuse a number at
    once) and of a's content: b has an mtime of its own, where a rename keeps the file's.
    b is not a, renamed: a is missing, its history its own (and b, of a missing file's
    content, waits as any such file does). (The reuse is made here by a rename and a new
    mtime: a tmpfs does not reuse inode numbers.)"""
    write(files / "user/a.log", "")
    await catalog.scan()
    a = await catalog.resolve("user/a.log")
    made_at = (files / "user/a.log").stat().st_mtime_ns + 5_000_000_000
    os.rename(files / "user/a.log", files / "user/b.log")
    os.utime(files / "user/b.log", ns=(made_at, made_at))
    report = await catalog.scan()
    assert report.moved == () and report.missing == ("user/a.log",)
    assert (await catalog.resolve("user/a.log")).id == a.id


async def test_files_removed_between_the_walk_and_their_read_are_no_scan_errors(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their owner removed them: a new one is simply not taken, a catalogued one is
    missing, and only a file that could not be read is an error."""
    write(files / "user/old.txt", "catalogued")
    write(files / "user/kept-old.txt", "catalogued, stays")
    await catalog.scan()
    write(files / "user/old.txt", "catalogued, then changed")  # read again by the scan
    for name in ("new.txt", "kept-new.txt"):
        write(files / "user" / name, f"new {name}")
    walk = Storage.walk_stats

    def walk_then_remove(self: Storage, *args: Any) -> Any:
        found = walk(self, *args)
        (files / "user/old.txt").unlink()
        (files / "user/new.txt").unlink()
        return found

    monkeypatch.setattr(Storage, "walk_stats", walk_then_remove)
    report = await catalog.scan()
    assert report.errors == ()
    assert (report.registered, report.unchanged, report.missing) == (1, 1, ("user/old.txt",))
    assert await paths(catalog) == {"user/old.txt", "user/kept-old.txt", "user/kept-new.txt"}
    assert (await catalog.resolve("user/old.txt")).status is Status.ACTIVE


@pytest.mark.parametrize("size", [100, 300_000])  # read into memory (packed), and copied
@pytest.mark.parametrize("meanwhile", ["rewritten, its mtime set back", "chmodded"])
async def test_a_file_rewritten_in_place_while_it_is_read_is_not_a_version(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, size: int, meanwhile: str
) -> None:
    """A write of the same size whose writer sets the old mtime back (`touch -r`, `rsync
    --inplace -t`), landing while the file is read, leaves a copy that may be torn: it
    is no version, and the file is read again later. Only ctime tells; a chmod moves it
    too, with the bytes whole: then the copy stands."""
    path = files / "user/data.bin"
    first, second = os.urandom(size), os.urandom(size)
    write(path, first)
    file = (await catalog.register("user/data.bin")).file
    write(path, second[:10] + first[10:])  # a change for the scan to read
    await trio.sleep(0.1)  # older than a tick of its times when it is read: only ctime tells
    before = os.stat(path)
    copy_to_temp, read_small = horace.storage.Storage._copy_to_temp, horace.storage._read_small

    def then_meanwhile() -> None:
        if meanwhile == "chmodded":
            path.chmod(0o600)
            return
        with path.open("r+b") as writer:
            writer.write(second)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    def copied_then(self: Storage, *args: Any) -> Any:
        staged = copy_to_temp(self, *args)
        then_meanwhile()
        return staged

    def read_then(*args: Any) -> bytes:
        content = read_small(*args)
        then_meanwhile()
        return content

    monkeypatch.setattr(horace.storage.Storage, "_copy_to_temp", copied_then)
    monkeypatch.setattr(horace.storage, "_read_small", read_then)
    report = await catalog.scan("user")
    monkeypatch.undo()
    versions = (await catalog.get_info(file_id=file.id, include_versions=True)).versions or ()
    if meanwhile == "chmodded":
        assert (report.versioned, report.errors) == (1, ()), report
        assert (await catalog.content(file, 2, size)).data == second[:10] + first[10:]
        return
    assert report.versioned == 0 and "changed while it was being read" in report.errors[0], report
    assert [v.version for v in versions] == [1]
    again = await catalog.scan("user")  # read again: the content it holds now
    assert again.versioned == 1, again
    assert (await catalog.content(file, 2, size)).data == second


async def test_a_files_folder_that_is_a_symlink_is_refused_and_nothing_is_recorded_through_it(
    catalog: Catalog, settings: Settings, files: Path
) -> None:
    """files/ moved to another disk and a symlink left in its place: at open, the store is
    refused saying so; under an open catalog, each call is a storage error, and nothing
    is recorded (no file taken for gone, none deleted with its edit unversioned)."""
    write(files / "user/a.txt", "catalogued")
    file = (await catalog.register("user/a.txt")).file
    elsewhere = files.parent.parent / "elsewhere"
    files.rename(elsewhere)
    files.symlink_to(elsewhere)
    write(files / "user/a.txt", "an edit not versioned yet")
    write(files / "user/b.txt", "new")
    for call in (
        lambda: catalog.register("user/b.txt"),
        lambda: catalog.delete(file.id),
        lambda: catalog.scan(),
        lambda: catalog.restore(file.id, 1),
    ):
        with pytest.raises(HoraceError) as excinfo:
            await call()
        assert excinfo.value.code is ErrorCode.STORAGE_ERROR
        assert "is a symbolic link" in excinfo.value.message
    after = await catalog.resolve("user/a.txt")
    assert (after.status, after.current_version) == (Status.ACTIVE, 1)
    assert await catalog.backend.file_by_path("user/b.txt") is None
    assert (elsewhere / "user/a.txt").read_text() == "an edit not versioned yet"
    with pytest.raises(StorageUnusable, match="is a symbolic link"):
        async with open_catalog(settings, check=False):
            pass


async def test_a_delete_by_a_process_whose_clock_is_behind_waits_out_the_retention(
    catalog: Catalog, files: Path
) -> None:
    """A delete is never dated before the file's last change: a process whose clock is
    40 days behind would date it so long ago that the next purge took the file at once,
    a retention of 30 days or not."""
    write(files / "user/old.txt", "kept for 30 days once deleted")
    file = (await catalog.register("user/old.txt")).file
    catalog.policy = CatalogPolicy(deleted_retention=timedelta(days=30))
    catalog.clock = lambda: datetime.now(UTC) - timedelta(days=40)
    deleted = (await catalog.delete(file.id)).file
    assert deleted.deleted_at is not None and deleted.deleted_at >= file.updated_at
    catalog.clock = lambda: datetime.now(UTC)
    assert (await catalog.purge()).files_purged == 0
    assert (
        await catalog.content(await catalog.file(file.id), 1, 1000)
    ).data == b"kept for 30 days once deleted"


async def test_verify_and_scan_replies_stay_readable_however_many_problems(
    catalog: Catalog, files: Path
) -> None:
    """A verify lists at most `limit` problems (problem_count has them all); a scan's
    errors and skipped names are cut at 1000 with a line saying how many more."""
    for i in range(3):
        write(files / f"user/v/{i}.txt", f"v{i}")
        await catalog.register(f"user/v/{i}.txt")
        write(files / f"user/v/{i}.txt", f"changed {i}")
    tool = TOOLS["horace_verify"]
    found = await tool.handler(CallContext(catalog, "test"), tool.structure({"limit": 1}))
    assert (found.ok, found.problem_count, len(found.problems)) == (False, 3, 1), found
    everything = await tool.handler(CallContext(catalog, "test"), tool.structure({}))
    assert everything.problem_count == len(everything.problems) == 3
    lines = tuple(f"user/x/{n}: unreadable" for n in range(1005))
    assert tools._at_most(lines) == (*lines[:1000], "... and 5 more (the server's log has each)")
    assert tools._at_most(lines[:1000]) == lines[:1000]


@pytest.mark.parametrize("content", ["same", "changed"])
async def test_registering_a_deleted_file_the_purge_takes_meanwhile_catalogs_it_anew(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    """The purge takes no file lock: a register of a deleted file's path that it purges
    between the look-up and the new version (or the revival) registers the file anew,
    instead of failing with an internal error."""
    old = (await catalog.register(str(write(files / "user/p.txt", "same").relative_to(files)))).file
    await catalog.delete(old.id)
    write(files / "user/p.txt", content)  # back in files/: a register revives it
    first = catalog._version_working_copy

    async def purged_first(*args: Any, **kwargs: Any) -> Any:
        await catalog.backend.purge_deleted(datetime.now(UTC) + timedelta(days=1))
        return await first(*args, **kwargs)

    monkeypatch.setattr(catalog, "_version_working_copy", purged_first)
    again = await catalog.register("user/p.txt")
    assert again.file.id != old.id and again.version_created and again.file.status is Status.ACTIVE
    assert again.file.checksum == sha256(content)
    assert await catalog.backend.file_by_id(old.id) is None


async def test_a_file_path_ending_in_a_slash_names_no_file(catalog: Catalog, files: Path) -> None:
    """`a.txt/` is a folder's path (as the shell reads it): refused where a file is meant,
    taken where a folder is (a scan)."""
    write(files / "user/a.txt", "a")
    for attempt in (catalog.register("user/a.txt/"), catalog.get_info(file_path="user/a.txt/")):
        with pytest.raises(HoraceError) as refused:
            await attempt
        assert refused.value.code is ErrorCode.INVALID_PATH and "ends in /" in refused.value.message
    assert (await catalog.scan("user/")).registered == 1


async def test_a_vanished_file_back_at_its_path_is_not_deleted(catalog: Catalog, files: Path) -> None:
    """The watcher and the reconcile delete a file they found gone (``vanished=True``). A
    writer may put a file back at its path between that look and the delete's lock: the
    delete then does nothing, and the writer's file stays in files/ (it was taken out of
    files/ and the file marked deleted)."""
    write(files / "user/w.txt", "first")
    file = (await catalog.register("user/w.txt")).file
    (files / "user/w.txt").unlink()  # the look: gone
    write(files / "user/w.txt", "written again")  # back before the delete's lock
    done = await catalog.delete(file.id, vanished=True)
    assert done.changed_fields == () and not done.version_created
    assert (files / "user/w.txt").read_text() == "written again"
    assert (await catalog.file(file.id)).status is Status.ACTIVE
    (files / "user/w.txt").unlink()  # gone for good: deleted as before
    done = await catalog.delete(file.id, vanished=True)
    assert "status" in done.changed_fields and (await catalog.file(file.id)).status is Status.DELETED


async def test_a_delete_that_fails_puts_the_content_back_beside_a_new_file_and_says_so(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delete moves the working copy out, then versions it. Should versioning fail (the
    catalog read-only, say) while a writer makes a new file at the path, the content goes
    back beside it, under a name that says so, and the log says where."""
    write(files / "user/d.txt", "first")
    file = (await catalog.register("user/d.txt")).file
    write(files / "user/d.txt", "second, not versioned yet")

    async def refused(*args: Any, **kwargs: Any) -> Any:
        write(files / "user/d.txt", "a writer's new file")
        raise BackendUnavailable("the catalog takes no writes now")

    monkeypatch.setattr(catalog, "_version_staged", refused)
    with pytest.raises(BackendUnavailable), caplog.at_level("WARNING", logger="horace.catalog"):
        await catalog.delete(file.id)
    assert (files / "user/d.txt").read_text() == "a writer's new file"
    assert (files / "user/d.txt.recovered-1").read_text() == "second, not versioned yet"
    said = [r.getMessage() for r in caplog.records if r.name == "horace.catalog"]
    assert any("put back beside it as 'user/d.txt.recovered-1'" in line for line in said), said
