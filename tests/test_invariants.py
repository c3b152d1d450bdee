"""Each safety check of the versioning engine, shown by a test that fails without it.

- the torn-copy check: a working file rewritten in place (same inode) while it is being
  copied, where no read lease holds the writer off (NFS), is refused with FILE_LOCKED; no
  version and no object of the torn state;
- the collector against a writer of the same content: an object pruned from one file
  while another file commits it survives, whether the writer is caught between its keep
  and its commit (with and without a grace period) or the collector between its pruning
  and its collection (its re-check of references);
- restore of a version whose object is gone or damaged: refused, nothing changes.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import sha256, write
from soundness import assert_sound, objects_on_disk

import horace.catalog
import horace.storage
import horace.tasks
from horace.assemble import open_catalog
from horace.backends.records import FileChanges, Status
from horace.catalog import Catalog
from horace.config import Settings
from horace.fsck import fsck
from horace.model import ErrorCode, HoraceError
from horace.storage import Staged, Storage
from horace.testing import run_horace

MiB = 1 << 20


@pytest.mark.parametrize("how", ["same size", "grown"])
@pytest.mark.parametrize("operation", ["register", "update"])
async def test_a_rewrite_in_place_during_the_copy_is_refused(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, how: str, operation: str
) -> None:
    path = write(files / "user/big.bin", os.urandom(3 * MiB))
    file = (await catalog.register("user/big.bin")).file if operation == "update" else None
    before = write(path, os.urandom(3 * MiB)).read_bytes()
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))  # a rewrite now is sure to move the mtime
    real_check = horace.catalog.check_cancelled
    rewritten: list[bytes] = []

    def rewrite_once() -> None:  # between two chunks of the copy, in its worker thread
        if not rewritten:
            with open(path, "r+b") as f:  # the same inode, as an in-place writer does
                data = os.urandom(3 * MiB if how == "same size" else 4 * MiB)
                f.write(data)
            rewritten.append(data)
        real_check()

    monkeypatch.setattr(horace.catalog, "check_cancelled", rewrite_once)
    # No read lease, as on NFS: where one is held, the rewrite (in the copy's own thread here)
    # would wait out the kernel's lease-break-time (45 s) before the check is reached.
    monkeypatch.setattr(horace.storage, "_read_lease", lambda fd: False)
    with pytest.raises(HoraceError) as refused:
        if file is None:
            await catalog.register("user/big.bin")
        else:
            await catalog.update(file.id, FileChanges())
    monkeypatch.undo()
    assert rewritten, "the rewrite never happened during a copy"
    assert refused.value.code is ErrorCode.FILE_LOCKED
    torn = path.read_bytes()
    assert torn != before
    kept = objects_on_disk(catalog)
    assert sha256(torn) not in kept and sha256(before) not in kept
    if file is not None:
        assert (await catalog.get_info(file_id=file.id)).file.current_version == 1
    else:
        assert await catalog.backend.all_files() == []
    await assert_sound(catalog)


# -- the collector against a writer of the same content ------------------------------------


@pytest.fixture(params=[0.0, 600.0], ids=["no grace", "grace"])
async def pruning(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Catalog]:
    """One version kept per file: every update prunes, and collects what it pruned."""
    changed = attrs.evolve(settings, version_count=1, gc_grace=request.param)
    async with open_catalog(changed, create=True) as catalog:
        yield catalog


async def test_an_object_pruned_while_another_file_commits_it_survives_the_collector(
    pruning: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is caught between its keep (the object renamed into place) and its
    commit, and the other file's pruning, then the collector, run in that moment."""
    catalog = pruning
    shared = os.urandom(64 * 1024)
    write(files / "user/a.bin", shared)
    a = (await catalog.register("user/a.bin")).file
    b_path = write(files / "user/b.bin", b"b, first")
    b = (await catalog.register("user/b.bin")).file
    write(b_path, shared)  # b is about to take the same content that a is about to prune

    kept = threading.Event()
    go_on = threading.Event()
    real_keep = Storage.keep

    def keep_then_wait(self: Storage, staged: Staged, **kwargs: Any) -> None:
        real_keep(self, staged, **kwargs)
        if staged.checksum == sha256(shared):
            kept.set()
            assert go_on.wait(30), "the test never let the writer go on"

    monkeypatch.setattr(Storage, "keep", keep_then_wait)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(catalog.update, b.id, FileChanges())
        await trio.to_thread.run_sync(kept.wait, 30)
        write(files / "user/a.bin", b"a, second")  # a moves on: its version of `shared` is pruned
        pruned = await catalog.update(a.id, FileChanges())
        assert pruned.file.current_version == 2
        await catalog.purge()
        go_on.set()
    monkeypatch.undo()
    assert (await catalog.get_info(file_id=b.id)).file.checksum == sha256(shared)
    assert catalog.storage.object_path(sha256(shared)).read_bytes() == shared
    assert (await fsck(catalog, deep=True)).clean
    await assert_sound(catalog, deep=True) if catalog.policy.gc_grace_seconds == 0 else None


async def test_the_collector_rechecks_references_before_deleting(
    pruning: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector is caught between pruning (the content had no row left) and its
    collection; meanwhile another file commits that content. Only the collector's second
    look at the references can save the object when there is no grace period."""
    catalog = pruning
    shared = os.urandom(64 * 1024)
    write(files / "user/a.bin", shared)
    a = (await catalog.register("user/a.bin")).file
    b_path = write(files / "user/b.bin", b"b, first")
    b = (await catalog.register("user/b.bin")).file

    pruned = trio.Event()
    go_on = trio.Event()
    real_collect = Catalog.collect

    async def collect_later(self: Catalog, checksums: Any, grace_seconds: float | None = None) -> list[str]:
        if sha256(shared) in checksums:
            pruned.set()
            await go_on.wait()
        return await real_collect(self, checksums, grace_seconds)

    monkeypatch.setattr(Catalog, "collect", collect_later)
    write(files / "user/a.bin", b"a, second")
    await catalog.update(a.id, FileChanges())  # `shared` pruned: released, for the purge
    if catalog.policy.gc_grace_seconds:  # fresh content: the purge leaves it to a later one
        await catalog.purge()
        assert catalog.storage.object_path(sha256(shared)).read_bytes() == shared
        catalog.policy = attrs.evolve(catalog.policy, gc_grace_seconds=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(catalog.purge)
        await pruned.wait()
        write(b_path, shared)
        assert (await catalog.update(b.id, FileChanges())).version_created  # commits `shared`
        go_on.set()
    monkeypatch.undo()
    assert catalog.storage.object_path(sha256(shared)).read_bytes() == shared
    assert (await fsck(catalog, deep=True)).clean


# -- restore of content that is not there ---------------------------------------------------


@pytest.mark.parametrize("damage", ["gone", "corrupt"])
async def test_restore_of_a_version_whose_object_is_lost_changes_nothing(
    catalog: Catalog, files: Path, damage: str
) -> None:
    path = write(files / "user/a.txt", "version one")
    file = (await catalog.register("user/a.txt")).file
    write(path, "version two")
    await catalog.update(file.id, FileChanges())
    write(path, "unsaved three")
    lost = catalog.storage.object_path(sha256("version one"))
    lost.chmod(0o644)
    if damage == "gone":
        lost.unlink()
    else:
        lost.write_text("version 0ne")
    with pytest.raises(HoraceError) as refused:
        await catalog.restore(file.id, 1)
    assert refused.value.code is ErrorCode.CHECKSUM_MISMATCH
    assert path.read_text() == "unsaved three"
    info = await catalog.get_info(file_id=file.id, include_versions=True)
    assert info.file.current_version == 2 and len(info.versions or ()) == 2


@pytest.mark.parametrize("before", ["saved", "unsaved", "none"])
@pytest.mark.parametrize("failure", ["backend", "full"])
async def test_a_restore_whose_record_fails_takes_its_write_back(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, before: str, failure: str
) -> None:
    """The restored content is in place and then its version cannot be recorded (the
    catalog's disk full, its connection cut): the error tells the truth, for the working
    file holds again what the catalog says is current (none, when there was none)."""
    path = write(files / "user/a.txt", "version one")
    file = (await catalog.register("user/a.txt")).file
    write(path, "version two")
    file = (await catalog.update(file.id, FileChanges())).file
    if before == "unsaved":
        write(path, "unsaved three")
    elif before == "none":
        path.unlink()
    real_commit = Catalog._commit_version
    error = (
        HoraceError(ErrorCode.STORAGE_FULL, "the catalog's disk is full")
        if failure == "full"
        else HoraceError(ErrorCode.BACKEND_UNAVAILABLE, "its connection was lost")
    )

    async def commit_fails_for_a_restore(
        self: Catalog, db: Any, f: Any, new: Any, *args: Any, **kw: Any
    ) -> Any:
        if new.restored_from_version is not None:
            assert path.read_text() == "version one"  # (the write came first)
            raise error
        return await real_commit(self, db, f, new, *args, **kw)

    monkeypatch.setattr(Catalog, "_commit_version", commit_fails_for_a_restore)
    with pytest.raises(HoraceError) as failed:
        await catalog.restore(file.id, 1)
    assert failed.value is error
    monkeypatch.undo()
    now = await catalog.file(file.id)
    if before == "none":
        assert not path.exists() and now.current_version == 2
    else:
        expected = "unsaved three" if before == "unsaved" else "version two"
        assert path.read_text() == expected and now.checksum == sha256(expected)
        assert (await fsck(catalog, deep=True)).clean
        await assert_sound(catalog)
    versions = (await catalog.get_info(file_id=file.id, include_versions=True)).versions or ()
    assert not [v for v in versions if v.restored_from_version]


async def test_a_restore_whose_record_fails_leaves_a_writers_edit_alone(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer edits the restored file in place (same size, its mtime set back) before
    the record fails: the file is the writer's, and is not taken back."""
    path = write(files / "user/a.txt", "version one")
    file = (await catalog.register("user/a.txt")).file
    write(path, "version two")
    await catalog.update(file.id, FileChanges())
    real_commit = Catalog._commit_version

    async def edited_then_fails(self: Catalog, db: Any, f: Any, new: Any, *args: Any, **kw: Any) -> Any:
        if new.restored_from_version is None:
            return await real_commit(self, db, f, new, *args, **kw)
        before = path.stat()
        with path.open("r+") as edit:
            edit.write("VERSION")  # same size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        raise HoraceError(ErrorCode.STORAGE_FULL, "the catalog's disk is full")

    monkeypatch.setattr(Catalog, "_commit_version", edited_then_fails)
    with pytest.raises(HoraceError):
        await catalog.restore(file.id, 1)
    monkeypatch.undo()
    assert path.read_text() == "VERSION one"
    assert any("written to after the restore wrote it" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("how", "damage"),
    [
        ("delete", "missing"),
        ("delete", "same size"),
        ("restore", "missing"),
        ("restore", "same size"),
        ("rescan", "missing"),
        ("rescan", "truncated"),
    ],
)
async def test_a_working_copy_whose_object_is_lost_is_never_the_last_copy_to_go(
    catalog: Catalog, files: Path, how: str, damage: str
) -> None:
    """The current version's object lost (by hand, a disk fault): a delete moves the working
    copy out, a restore overwrites it; either would take the last copy of that content. The
    working copy's content takes the object's place first."""
    path = write(files / "user/doc.txt", "first")
    file = (await catalog.register("user/doc.txt")).file
    write(path, "only copy")
    file = (await catalog.update(file.id, FileChanges())).file
    lost = catalog.storage.object_path(file.checksum)
    if damage == "missing":
        lost.unlink()
    else:  # a disk fault: one byte changed (found only by reading it), or the end cut off
        lost.chmod(0o644)
        lost.write_bytes(b"only cOpy" if damage == "same size" else b"only")
    if how == "delete":
        await catalog.delete(file.id)
        assert not path.exists()
        await catalog.undelete(file.id)
        assert path.read_text() == "only copy"
    elif how == "restore":
        await catalog.restore(file.id, 1)
        assert path.read_text() == "first"
        assert (await catalog.content(file, 2, 1024)).data == b"only copy"
    else:  # a scan that reads the file again puts the object back, before any change comes
        report = await catalog.scan(rehash=True)
        assert report.unchanged == 1 and report.errors == (), report
        write(path, "changed since")
        await catalog.scan()
        assert (await catalog.content(file, 2, 1024)).data == b"only copy"
    assert catalog.storage.object_path(sha256("only copy")).read_bytes() == b"only copy"
    assert (await fsck(catalog, deep=True)).clean


async def test_the_collector_never_moves_aside_an_object_a_row_refers_to(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of orphans can be older than the rows (an fsck's, listed before a writer
    committed): an object moved aside is missing to every reader until put back, so one a
    row refers to is never moved, only the ones no row refers to."""
    write(files / "user/a.txt", "kept: a version refers to it")
    await catalog.register("user/a.txt")
    orphan = sha256("no row")
    catalog.storage.object_path(orphan).parent.mkdir(parents=True, exist_ok=True)
    catalog.storage.object_path(orphan).write_text("no row")
    moved: list[str] = []
    quarantine = catalog.storage.quarantine

    def noted(checksum: str, grace: float) -> Any:
        moved.append(checksum)
        return quarantine(checksum, grace)

    monkeypatch.setattr(catalog.storage, "quarantine", noted)
    kept = sha256("kept: a version refers to it")
    assert await catalog.collect([kept, orphan], grace_seconds=0.0) == [orphan]
    assert moved == [orphan] and not catalog.storage.object_path(orphan).exists()
    assert catalog.storage.object_path(kept).read_text() == "kept: a version refers to it"


# -- what a crash leaves in .horace/tmp -----------------------------------------------------


def _dead_pid() -> int:
    pid = 4_000_000  # above any pid_max in use: no such process
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


@pytest.mark.parametrize("kind", ["stage", "part", "meta", "clock"])
async def test_a_dead_process_scratch_file_is_removed_never_put_among_the_files(
    catalog: Catalog, files: Path, kind: str
) -> None:
    """Horace's own scratch (an ingest copy, a working file being written, the store's
    identity being written, the file read for the filesystem's clock) is garbage once its
    writer is gone: never taken for a user's working file and moved into files/."""
    scratch = write(catalog.storage.tmp / storage_temp_name(kind, _dead_pid(), ""), "scratch")
    report = await fsck(catalog)
    assert [(f.kind, f.repaired) for f in report.findings] == [("temp_leftover", True)], report.findings
    assert not scratch.exists()
    assert [p for p in files.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("damage", ["missing", "damaged"])
async def test_a_dead_process_staged_copy_mends_the_object_of_its_version(
    catalog: Catalog, files: Path, damage: str
) -> None:
    """A staged copy a dead process left, of content a version refers to, is the last good
    copy when that version's object is gone or rotted at its size: it becomes the object
    again, not removed as scratch (the object is read whole, not judged by its size)."""
    content = "versioned content"
    write(files / "user/a.txt", content)
    checksum = (await catalog.register("user/a.txt")).file.checksum
    storage = catalog.storage
    staged = write(storage.tmp / storage_temp_name("stage", _dead_pid(), ""), content)
    held = storage.object_path(checksum)
    if damage == "missing":
        held.unlink()
    else:
        held.chmod(0o644)
        held.write_text(content.upper())  # its size as it was
    report = await fsck(catalog)  # the plain check, as at every start
    assert [(f.kind, f.repaired) for f in report.findings] == [("object_recovered", True)], report.findings
    assert f"object was {damage}" in report.findings[0].detail
    assert storage.hash_object(checksum) == (checksum, len(content)) and not staged.exists()
    assert not (await fsck(catalog, deep=True)).findings


@pytest.mark.parametrize("name", ["a.txt", "L" * 251 + ".txt"])  # (the longest a name may be)
@pytest.mark.parametrize("path_taken", [False, True])
async def test_a_working_file_caught_outside_files_by_a_crash_goes_back(
    catalog: Catalog, files: Path, path_taken: bool, name: str
) -> None:
    """A crash between moving a working file out of files/ (delete, archive, a restore's
    swap) and versioning it leaves it in .horace/tmp: fsck puts it back, never deletes it;
    beside a file written at its path since, under a name that fits."""
    path = write(files / "user" / name, "versioned")
    file = (await catalog.register(f"user/{name}")).file
    held_name = storage_temp_name("held", _dead_pid(), file.id.replace("-", ""))
    held = write(catalog.storage.tmp / held_name, "never versioned")
    if path_taken:
        write(path, "written since")
    else:
        path.unlink()
    report = await fsck(catalog)  # the plain check, as at every start
    assert not held.exists()
    recovered = [f for f in report.findings if f.kind == "working_recovered"]
    assert recovered and recovered[0].repaired, report.findings
    where = files / (recovered[0].file_path or "")
    assert where.read_text() == "never versioned"
    assert (where == path) is not path_taken
    if path_taken:
        assert path.read_text() == "written since"
        assert where.name.endswith(".recovered-1") and len(where.name.encode()) <= 255


async def test_a_held_working_file_whose_folder_became_a_file_is_kept_and_said(
    catalog: Catalog, files: Path
) -> None:
    """Put back it cannot be (a file where its folder was): kept in .horace/tmp, said so,
    and every other leftover is still dealt with."""
    write(files / "rc/short.bin", "versioned")
    file = (await catalog.register("rc/short.bin")).file
    held = write(catalog.storage.tmp / storage_temp_name("held", _dead_pid(), file.id.replace("-", "")), "e")
    (files / "rc/short.bin").unlink()
    (files / "rc").rmdir()
    write(files / "rc", "a file now")
    report = await fsck(catalog)
    found = [f for f in report.findings if f.kind == "working_recovered"]
    assert len(found) == 1 and not found[0].repaired, report.findings
    assert "could not be put back at rc/short.bin" in found[0].detail, found[0].detail
    assert "None" not in found[0].detail and "the file's content at the crash" in found[0].detail
    assert held.read_text() == "e"


async def test_a_leftover_that_cannot_be_dealt_with_is_said_and_stops_nothing(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of one leftover's own (not the store's: not read-only, not full) is a
    finding: the start-up check, and so every command and the server, still go on."""
    write(files / "user/a.txt", "versioned")
    file = (await catalog.register("user/a.txt")).file
    held = write(catalog.storage.tmp / storage_temp_name("held", _dead_pid(), file.id.replace("-", "")), "e")

    def refuse(*args: object) -> None:
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    monkeypatch.setattr(catalog.storage, "put_back", refuse)
    report = await fsck(catalog, automatic=True)
    assert [(f.kind, f.repaired, f.subject) for f in report.findings] == [("temp_leftover", False, str(held))]
    assert "File name too long" in report.findings[0].detail and held.read_text() == "e"


async def test_a_working_file_held_by_a_delete_that_never_committed_goes_back(
    catalog: Catalog, files: Path
) -> None:
    """Killed after moving the working file out and before its commit, a delete leaves the
    file active with its content (a version) held: the held file goes back to its path,
    not away because a version has it."""
    path = write(files / "user/a.txt", "versioned")
    file = (await catalog.register("user/a.txt")).file
    held = catalog.storage.tmp / storage_temp_name("held", _dead_pid(), file.id.replace("-", ""))
    os.rename(path, held)
    report = await fsck(catalog)  # the plain check, as at every start
    assert path.read_text() == "versioned" and not held.exists()
    assert [f.kind for f in report.findings] == ["working_recovered"], report.findings
    assert (await catalog.backend.file_by_id(file.id)).status is Status.ACTIVE
    assert not (await fsck(catalog)).findings


async def test_a_temp_another_process_dealt_with_meanwhile_is_passed_over(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every server sharing a store looks at what dead processes left, and so does every
    CLI command: one that finds a temp gone when it gets to it leaves it to the other."""
    path = write(files / "user/a.txt", "versioned")
    file = (await catalog.register("user/a.txt")).file
    held = catalog.storage.tmp / storage_temp_name("held", _dead_pid(), file.id.replace("-", ""))
    os.rename(path, held)
    put_back = catalog.storage.put_back

    def put_back_by_another_first(taken: Path, rel: str) -> Any:
        os.rename(taken, path)
        return put_back(taken, rel)

    monkeypatch.setattr(catalog.storage, "put_back", put_back_by_another_first)
    assert not (await fsck(catalog)).findings
    assert path.read_text() == "versioned" and not held.exists()


async def test_a_working_file_another_host_holds_is_left_alone_however_old_its_mtime(
    catalog: Catalog, files: Path
) -> None:
    """Another host's temps are taken for dead only once unchanged for an hour: a working
    file it moved out a moment ago (a delete versioning it) keeps its own mtime, a year
    old perhaps; the move is what counts."""
    path = write(files / "user/a.txt", "versioned")
    file = (await catalog.register("user/a.txt")).file
    os.utime(path, (time.time() - 365 * 86400,) * 2)
    held = catalog.storage.tmp / storage_temp_name("held", 4242, file.id.replace("-", ""), "another-host")
    os.rename(path, held)  # another host's delete, under way
    findings = (await fsck(catalog)).findings
    assert not any(f.repaired for f in findings), findings
    assert held.exists() and not path.exists()


async def test_a_running_server_puts_back_what_another_process_left_when_it_died(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several servers share a store: one killed in the middle of a delete leaves the
    working file in .horace/tmp, and the others go on for months. They put it back
    themselves, not only at their next start."""
    monkeypatch.setattr(horace.tasks, "LEFTOVERS_EVERY", 0.1)
    async with run_horace(attrs.evolve(settings, host="127.0.0.1", port=0, conversations=False)) as running:
        catalog = running.server.catalog
        path = write(running.files / "user/a.txt", "versioned")
        file = (await catalog.register("user/a.txt")).file
        write(path, "unsaved, then held by a delete that died")
        held = catalog.storage.tmp / storage_temp_name("held", _dead_pid(), file.id.replace("-", ""))
        os.rename(path, held)
        with trio.fail_after(10):
            while not path.exists():
                await trio.sleep(0.05)
        assert path.read_text() == "unsaved, then held by a delete that died" and not held.exists()
        leftovers = (await running.server.health())[1]["leftovers"]
        counts = {"findings": 1, "unrepaired": 0, "content_lost": 0}
        assert leftovers["details"]["last_result"] == counts, leftovers
        assert (await catalog.backend.file_by_id(file.id)).status is Status.ACTIVE


@pytest.mark.parametrize("kind", ["folder", "symlink to a FIFO", "FIFO"])
async def test_what_is_not_a_regular_file_in_tmp_goes_back_unread(
    catalog: Catalog, files: Path, kind: str
) -> None:
    """Horace's temps are regular files: a folder, symlink or FIFO left in .horace/tmp (a
    user's, displaced) is put back into files/ whole, never read (a FIFO would block) and
    never removed; the store still opens."""
    file = (await catalog.register(str(write(files / "user/z", "v1").relative_to(files)))).file
    held = catalog.storage.tmp / storage_temp_name("held", _dead_pid(), file.id.replace("-", ""))
    fifo = catalog.storage.root / "fifo"
    if kind == "folder":
        write(held / "precious.txt", "the user's")
    elif kind == "FIFO":
        os.mkfifo(held)
    else:
        os.mkfifo(fifo)
        held.symlink_to(fifo)
    with trio.fail_after(30):
        report = await fsck(catalog)
    recovered = [f for f in report.findings if f.kind == "working_recovered"]
    assert recovered and recovered[0].repaired, report.findings
    back = files / (recovered[0].file_path or "")
    assert back.parent == files / "user" and back != files / "user/z"  # user/z is taken
    if kind == "folder":
        assert (back / "precious.txt").read_text() == "the user's"
    else:
        assert back.is_fifo() if kind == "FIFO" else os.readlink(back) == str(fifo)
    assert not held.exists() and not held.is_symlink()
    assert (files / "user/z").read_text() == "v1"


@pytest.mark.parametrize("kind", ["folder", "symlink", "FIFO"])
async def test_restore_over_something_not_a_regular_file_changes_nothing(
    catalog: Catalog, files: Path, kind: str
) -> None:
    path = write(files / "user/z", "v1")
    file = (await catalog.register("user/z")).file
    path.unlink()
    if kind == "folder":
        write(path / "precious.txt", "the user's")
    elif kind == "symlink":
        path.symlink_to(files / "elsewhere")
    else:
        os.mkfifo(path)
    with pytest.raises(HoraceError) as refused:
        await catalog.restore(file.id, 1)
    assert refused.value.code is ErrorCode.INVALID_PATH, refused.value
    if kind == "folder":
        assert (path / "precious.txt").read_text() == "the user's"
    else:
        assert path.is_symlink() if kind == "symlink" else path.is_fifo()
    assert sorted(p.name for p in (files / "user").iterdir()) == ["z"]
    info = await catalog.get_info(file_id=file.id, include_versions=True)
    assert info.file.current_version == 1 and len(info.versions or ()) == 1
    assert list(catalog.storage.tmp.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "socket"])
async def test_a_fifo_or_socket_where_a_file_was_is_invalid_path_for_every_tool(
    catalog: Catalog, files: Path, kind: str
) -> None:
    import socket

    path = write(files / "user/z", "v1")
    file = (await catalog.register("user/z")).file
    path.unlink()
    listener = None
    if kind == "fifo":
        os.mkfifo(path)
    else:
        listener = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(path.parent)  # (bound by its name alone: a socket's path is at most 107 bytes)
        try:
            listener.bind(path.name)
        finally:
            os.chdir(cwd)
    try:
        with pytest.raises(HoraceError) as refused:
            await catalog.register("user/z")
        assert refused.value.code is ErrorCode.INVALID_PATH, refused.value
        assert not (await catalog.update(file.id, FileChanges())).version_created
        # What holds the path is not the file: it is gone, and what is there stays.
        assert (await catalog.delete(file.id)).file.status is Status.DELETED
        assert path.is_fifo() if kind == "fifo" else path.is_socket()
        assert (await catalog.file(file.id)).current_version == 1
    finally:
        if listener is not None:
            listener.close()


def storage_temp_name(kind: str, pid: int, extra: str, host: str | None = None) -> str:
    from horace.storage import _HOST, TMP_PREFIX

    return f"{TMP_PREFIX}{kind}.{host or _HOST}.{pid}.000000000000.{extra}"
