"""Change detection by stat identity (git's index): a scan reads again only the files whose
size, mtime, ctime, inode or device moved since their content was read, or whose identity
was recorded too close to a write to prove anything (the racy-git rule). Each test here
fails if a change were missed, or if the shortcut were never taken.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import sha256, write
from soundness import assert_sound, temps_left

from horace.assemble import StartCheck, open_catalog
from horace.backends.records import FileChanges, IndexEntry, WorkingStat
from horace.catalog import Catalog, unchanged_since
from horace.config import Settings
from horace.locks import FileLocks
from horace.storage import CHUNK, HEAD_BYTES, Storage, _copy_and_hash

TICK = 0.05  # longer than the kernel's timestamp tick: a file written before it is "old"


@pytest.fixture
async def exact(settings: Settings) -> AsyncIterator[Catalog]:
    """No racy margin beyond the filesystem's own tick: an identity recorded a tick after
    the file's last change is trusted, so the tests below exercise the comparison itself."""
    async with open_catalog(attrs.evolve(settings, version_count=1000), create=True) as catalog:
        catalog.policy = attrs.evolve(catalog.policy, racy_margin_seconds=0.0)
        yield catalog


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every working file a scan reads (hashes or stages), in order."""
    seen: list[str] = []
    for name in ("hash_many", "stage_many"):
        real = getattr(Storage, name)

        def counted(self: Storage, rels: list[str], *args: Any, _real: Any = real) -> Any:
            seen.extend(rels)
            return _real(self, rels, *args)

        monkeypatch.setattr(Storage, name, counted)
    return seen


def _rewrite_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


async def _entry(catalog: Catalog, rel: str) -> IndexEntry:
    (found,) = [e for e in await catalog.backend.working_index() if e.file_path == rel]
    return found


def _same_file(working: WorkingStat | None, path: Path) -> bool:
    st = os.lstat(path)
    return working is not None and (
        working.size,
        working.mtime_ns,
        working.ctime_ns,
        working.inode,
        working.device,
    ) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


async def _contents(catalog: Catalog, rel: str) -> list[str]:
    file = await catalog.backend.file_by_path(rel)
    assert file is not None
    return [v.checksum for v in reversed(await catalog.backend.versions(file.id))]


async def test_a_rescan_reads_only_what_changed(exact: Catalog, files: Path, reads: list[str]) -> None:
    for i in range(40):
        write(files / f"user/f{i:02d}.txt", f"content {i}")
    await trio.sleep(TICK)
    first = await exact.scan()
    assert first.registered == 40 and len(reads) == 40
    reads.clear()
    again = await exact.scan()
    assert (again.unchanged, again.versioned, reads) == (40, 0, [])
    write(files / "user/f07.txt", "content 7, changed")
    os.utime(files / "user/f11.txt")  # touched only: read, found unchanged, identity refreshed
    third = await exact.scan()
    assert (third.versioned, third.unchanged) == (1, 39)
    assert sorted(set(reads)) == ["user/f07.txt", "user/f11.txt"]
    assert await _contents(exact, "user/f07.txt") == [sha256("content 7"), sha256("content 7, changed")]
    assert _same_file((await _entry(exact, "user/f11.txt")).working, files / "user/f11.txt")
    await trio.sleep(TICK)
    reads.clear()
    await exact.scan(rehash=True)  # reads everything, whatever the identities say
    assert sorted(reads) == sorted(f"user/f{i:02d}.txt" for i in range(40))
    await assert_sound(exact)


async def test_a_same_size_rewrite_given_back_its_old_mtime_is_versioned(exact: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "AAAA")
    await trio.sleep(TICK)
    await exact.scan()
    before = os.lstat(path)
    _rewrite_in_place(path, b"BBBB")  # the same inode, the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r`, rsync -t, tar do
    assert (os.lstat(path).st_size, os.lstat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    report = await exact.scan()
    assert report.versioned == 1
    assert await _contents(exact, "user/a.txt") == [sha256("AAAA"), sha256("BBBB")]


async def test_a_file_replaced_by_another_inode_of_the_same_size_and_mtime_is_versioned(
    exact: Catalog, files: Path, tmp_path: Path
) -> None:
    path = write(files / "user/a.txt", "AAAA")
    await trio.sleep(TICK)
    await exact.scan()
    before = os.lstat(path)
    other = write(tmp_path / "elsewhere.txt", "BBBB")
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)  # same filesystem: /tmp holds both
    assert os.lstat(path).st_ino != before.st_ino
    report = await exact.scan()
    assert report.versioned == 1
    assert await _contents(exact, "user/a.txt") == [sha256("AAAA"), sha256("BBBB")]


async def test_an_identity_recorded_within_the_racy_margin_is_not_trusted(
    catalog: Catalog, files: Path
) -> None:
    """A write in the timestamp tick of the recording leaves every stat field as it was;
    here that is planted: the identity of the rewritten file, recorded as if read just
    after (racy), then as if read long after the write (trusted, and so a lie)."""
    path = write(files / "user/a.txt", "AAAA")
    await catalog.scan()
    entry = await _entry(catalog, "user/a.txt")
    write(path, "BBBB")
    st = os.lstat(path)
    changed = max(st.st_mtime_ns, st.st_ctime_ns)

    def recorded_at(moment: int) -> IndexEntry:
        seen = WorkingStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, moment)
        return attrs.evolve(entry, working=seen)

    margin = catalog.policy.racy_margin_ns
    # Recorded long after the write: trusted, so the scan does not look (proof the shortcut
    # is taken: the planted identity hides BBBB).
    assert await catalog.backend.refresh_working([recorded_at(changed + margin + 5 * 10**9)]) == 1
    assert (await catalog.scan()).versioned == 0
    # Recorded within the margin of the write: not trusted, the file is read again.
    assert await catalog.backend.refresh_working([recorded_at(changed + margin // 2)]) == 1
    assert (await catalog.scan()).versioned == 1
    assert await _contents(catalog, "user/a.txt") == [sha256("AAAA"), sha256("BBBB")]


async def test_a_change_right_after_each_scan_is_seen(catalog: Catalog, files: Path) -> None:
    """Same size, same inode, as fast as possible: inside the filesystem clock's tick of
    the scan that read the file before, often enough. The racy rule catches every one."""
    path = write(files / "user/a.txt", "v000")
    await catalog.scan()
    for i in range(1, 30):
        _rewrite_in_place(path, f"v{i:03d}".encode())
        report = await catalog.scan()
        assert report.versioned == 1, (i, report)
        assert (await catalog.backend.file_by_path("user/a.txt")).checksum == sha256(f"v{i:03d}")  # type: ignore[union-attr]


async def test_the_identity_goes_with_the_content_it_describes(exact: Catalog, files: Path) -> None:
    path = write(files / "user/a.txt", "one")
    file = (await exact.register("user/a.txt")).file
    assert _same_file((await _entry(exact, "user/a.txt")).working, path)
    write(path, "two, longer")
    await exact.update(file.id, FileChanges())
    assert _same_file((await _entry(exact, "user/a.txt")).working, path)
    # Written by Horace, not read: recorded (a rename right after is told by it), but as
    # racy, so that a scan reads the file again once.
    await exact.restore(file.id, 1)
    written = (await _entry(exact, "user/a.txt")).working
    assert _same_file(written, path) and not unchanged_since(written, os.lstat(path), 0)
    await trio.sleep(TICK)
    assert (await exact.scan()).unchanged == 1
    read = (await _entry(exact, "user/a.txt")).working
    assert _same_file(read, path) and unchanged_since(read, os.lstat(path), 0)
    await exact.delete(file.id)  # the working file left files/
    assert (await _entry(exact, "user/a.txt")).working is None
    await exact.undelete(file.id)
    written = (await _entry(exact, "user/a.txt")).working
    assert _same_file(written, path) and not unchanged_since(written, os.lstat(path), 0)


async def test_a_scan_never_records_content_a_restore_replaced_meanwhile(
    exact: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan stages a changed file without its lock; a restore runs before the scan
    takes the lock to commit. The scan must not make the content it staged current over
    the restore's."""
    path = write(files / "user/a.txt", "AAAA")
    file = (await exact.register("user/a.txt")).file
    await trio.sleep(TICK)
    write(path, "BBBB, unsaved")
    real_hold_free = FileLocks.hold_free
    restored: list[int] = []

    @asynccontextmanager
    async def restore_then_hold(self: FileLocks, rel_paths: Sequence[str]) -> AsyncIterator[list[str]]:
        if not restored:
            restored.append((await exact.restore(file.id, 1)).version.version)
        async with real_hold_free(self, rel_paths) as held:
            yield held

    monkeypatch.setattr(FileLocks, "hold_free", restore_then_hold)
    await exact.scan()
    monkeypatch.undo()
    assert restored == [3], "the restore never ran inside the scan"
    # v1, the unsaved edit the restore kept, the restore; nothing after it.
    assert await _contents(exact, "user/a.txt") == [sha256("AAAA"), sha256("BBBB, unsaved"), sha256("AAAA")]
    assert path.read_text() == "AAAA"
    assert (await exact.backend.file_by_path("user/a.txt")).checksum == sha256("AAAA")  # type: ignore[union-attr]
    await assert_sound(exact)


async def test_a_cancelled_scan_leaves_no_staged_copy(exact: Catalog, files: Path) -> None:
    cancelled = 0
    for round in range(8):
        for i in range(300):
            write(files / f"user/r{round}/f{i:03d}.bin", os.urandom(16 * 1024))
        with trio.move_on_after(0.01 * (round + 1)) as scope:
            await exact.scan()
        cancelled += scope.cancel_called  # (the deadline came mid-scan, whether or not a
        # shielded commit then ran the scan to its end)
        assert temps_left(exact) == []
    assert cancelled, "every scan finished before its deadline: nothing was tested"
    await exact.scan()
    await assert_sound(exact)


async def test_the_cli_start_clears_leftovers_without_the_full_fsck(
    settings: Settings, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import horace.assemble

    async with open_catalog(settings, create=True) as catalog:
        write(files / "user/a.txt", "a")
        await catalog.register("user/a.txt")
        leftover = write(catalog.storage.tmp / _temp_of_a_dead_process("stage"), "torn copy")
    ran: list[str] = []
    real_fsck = horace.assemble.fsck

    async def full_fsck(*args: Any, **kwargs: Any) -> Any:
        ran.append("full")
        return await real_fsck(*args, **kwargs)

    monkeypatch.setattr(horace.assemble, "fsck", full_fsck)
    async with open_catalog(settings, check=StartCheck.LEFTOVERS):
        pass
    assert ran == [] and not leftover.exists()
    async with open_catalog(settings):  # the server's start: the full check
        pass
    assert ran == ["full"]


def _temp_of_a_dead_process(kind: str) -> str:
    from horace.storage import _HOST, TMP_PREFIX

    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return f"{TMP_PREFIX}{kind}.{_HOST}.{pid}.000000000000"


def test_unchanged_since_wants_every_field_and_an_old_enough_recording(tmp_path: Path) -> None:
    from horace.catalog import unchanged_since

    path = tmp_path / "a.txt"
    path.write_text("a")
    st = os.lstat(path)
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    good = WorkingStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, changed + 2 * 10**9)
    assert unchanged_since(good, st, 10**9)
    assert not unchanged_since(None, st, 10**9)
    assert not unchanged_since(attrs.evolve(good, recorded_ns=changed + 10**9), st, 10**9)  # racy
    for field in ("size", "mtime_ns", "ctime_ns", "inode", "device"):
        assert not unchanged_since(attrs.evolve(good, **{field: getattr(good, field) + 1}), st, 10**9), field
    os.link(path, tmp_path / "b.txt")  # a second link: never trusted, never catalogued
    linked = os.lstat(path)
    as_linked = WorkingStat(
        linked.st_size, linked.st_mtime_ns, linked.st_ctime_ns, linked.st_ino, linked.st_dev, 2 * changed
    )
    assert unchanged_since(as_linked, linked, 10**9) is False


def _stamped(st: os.stat_result, mtime_ns: int, ctime_ns: int) -> os.stat_result:
    """*st* with these times (as a filesystem whose clock has that tick would give them)."""
    fields = list(st) + [None] * 3  # (the float times, then the ns ones, by index)
    fields[7:10] = [st.st_atime_ns // 10**9, mtime_ns // 10**9, ctime_ns // 10**9]
    fields[10:16] = [st.st_atime, mtime_ns / 1e9, ctime_ns / 1e9, st.st_atime_ns, mtime_ns, ctime_ns]
    return os.stat_result(fields[:16])


def test_a_copy_made_within_its_times_tick_is_read_again_before_it_is_trusted(tmp_path: Path) -> None:
    """A same-size write in the tick of the file's last change leaves size, mtime and ctime
    as they were: on a filesystem with times in whole seconds (ext2, ext4 with 128-byte
    inodes) a copy a writer tore went in as a version the file never held. A copy whose
    stats cannot vouch for it (the file changed within a tick of the read) is taken only
    when a second read agrees with it; one the stats vouch for is not read again."""
    from horace.storage import _whole_as_read, stamp_tick_ns

    path = tmp_path / "f.bin"
    path.write_bytes(b"B" * 100 + b"A" * 100)  # what the file holds
    torn = hashlib.sha256(b"B" * 50 + b"A" * 50 + b"B" * 50 + b"A" * 50).hexdigest()  # never held
    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    whole_seconds = _stamped(os.stat(path), 1_700_000_000 * 10**9, 1_700_000_001 * 10**9)
    assert stamp_tick_ns(whole_seconds) == 2 * 10**9  # (taken for FAT's, the coarsest)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        tick = stamp_tick_ns(st)
        assert tick == 50 * 10**6
        for read_from in (st.st_ctime_ns, st.st_ctime_ns + tick - 1):  # within the tick
            assert not _whole_as_read(fd, st, st, torn, lambda: None, read_from)  # read again: torn
            assert _whole_as_read(fd, st, st, whole, lambda: None, read_from)  # read again: agrees
        # Past the tick the stats vouch for the copy: not read again (a write during it
        # would have moved them), so even a wrong checksum would stand.
        assert _whole_as_read(fd, st, st, torn, lambda: None, st.st_ctime_ns + tick)
    finally:
        os.close(fd)


def test_whole_second_times_widen_the_racy_margin_to_their_tick(tmp_path: Path) -> None:
    """FAT's mtime ticks every 2 s, past the default 1 s racy margin: an identity recorded
    1.5 s after a change of a file whose times are whole seconds proves nothing."""
    from horace.catalog import unchanged_since

    path = tmp_path / "a.txt"
    path.write_text("a")
    second = (time.time_ns() // 10**9 - 10) * 10**9
    st = _stamped(os.lstat(path), second, second)
    recorded = WorkingStat(st.st_size, second, second, st.st_ino, st.st_dev, second + 1_500_000_000)
    assert not unchanged_since(recorded, st, 10**9)
    assert unchanged_since(attrs.evolve(recorded, recorded_ns=second + 2_000_000_001), st, 10**9)
    fine = _stamped(st, second + 1, second + 1)  # (the same 1.5 s on finer times: trusted)
    assert unchanged_since(attrs.evolve(recorded, mtime_ns=second + 1, ctime_ns=second + 1), fine, 10**9)


@pytest.mark.parametrize("size", [0, 1, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_copy_and_hash_takes_every_byte_whatever_the_size(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        checksum, copied, head = _copy_and_hash(src, dst, lambda: None)
    finally:
        os.close(src)
        os.close(dst)
    assert (checksum, copied, head) == (hashlib.sha256(data).hexdigest(), size, data[:HEAD_BYTES])
    assert (tmp_path / "dst").read_bytes() == data


def test_copy_and_hash_reads_on_when_the_file_grew_after_its_size_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffer is sized from fstat; a file longer by the time it is read is still read
    to its end (the torn-copy check then says whether the copy may be kept)."""
    data = os.urandom(3 * CHUNK)
    (tmp_path / "src").write_bytes(data)
    real = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real(fd)[:6], 100, *real(fd)[7:])))
    src = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        checksum, copied, _ = _copy_and_hash(src, None, lambda: None)
    finally:
        os.close(src)
    assert (checksum, copied) == (hashlib.sha256(data).hexdigest(), len(data))
