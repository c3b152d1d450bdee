"""A full disk is ``STORAGE_FULL`` for the caller, loses nothing and leaves nothing behind.

Once on a real full filesystem (a small tmpfs; mounting needs root, as in CI), and once by
injecting ENOSPC into the copy, through the catalog and through an MCP client.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import BACKEND, tool_body, write
from mcp_client import connect
from soundness import assert_sound, temps_left

import horace.cli
import horace.storage
from horace.assemble import open_catalog
from horace.backends.protocol import DatabaseFull
from horace.backends.records import FileChanges, Retention
from horace.catalog import LOGGED_SCAN_ERRORS, Catalog
from horace.cli import Exit
from horace.config import Settings
from horace.fsck import fsck
from horace.model import ErrorCode, HoraceError
from horace.testing import run_horace

_copy_and_hash = horace.storage._copy_and_hash


def _no_space(
    src: int, dst: int | None, check: Callable[[], None], *hint: int | None
) -> tuple[str, int, bytes]:
    """Copies fail as on a full disk; reading (hashing) still works."""
    if dst is not None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _copy_and_hash(src, dst, check, *hint)


async def test_a_full_disk_during_a_copy_is_storage_full(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(files / "user/big.bin", b"x" * 100_000)
    kept = (await catalog.register("user/big.bin")).file
    write(files / "user/big.bin", b"y" * 100_000)
    monkeypatch.setattr(horace.storage, "_copy_and_hash", _no_space)
    for attempt in (catalog.register("user/big.bin"), catalog.restore(kept.id, 1)):
        with pytest.raises(HoraceError) as full:
            await attempt
        assert full.value.code is ErrorCode.STORAGE_FULL
    monkeypatch.undo()
    assert (files / "user/big.bin").read_bytes() == b"y" * 100_000  # the unsaved edit is still there
    assert temps_left(catalog) == []
    await assert_sound(catalog)


async def test_a_repair_with_no_room_to_copy_an_object_back_says_the_disk_is_full(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The working copy that holds a lost object's content is readable; copying it into
    the store is what fails. The file's finding says the storage is full (it blamed the
    working copy: "cannot be read now"), and the repair is done once there is room."""
    write(files / "user/a.bin", b"a" * 10_000)
    file = (await catalog.register("user/a.bin")).file
    catalog.storage.object_path(file.checksum).unlink()

    def no_room(*_: Any, **__: Any) -> Any:
        raise HoraceError(ErrorCode.STORAGE_FULL, "the storage is full: No space left on device")

    monkeypatch.setattr(catalog.storage, "stage", no_room)
    (full,) = (await fsck(catalog, repair=True)).findings
    assert not full.repaired and "the storage is full" in full.detail, full
    monkeypatch.undo()
    (finding,) = (await fsck(catalog, repair=True)).findings
    assert finding.repaired and "recovered from the working copy" in finding.detail, finding
    assert catalog.storage.object_path(file.checksum).read_bytes() == b"a" * 10_000
    await assert_sound(catalog)


async def test_mcp_clients_get_storage_full_without_a_traceback(
    settings: Settings, files: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write(files / "user/a.txt", "will not fit")
    monkeypatch.setattr(horace.storage, "_copy_and_hash", _no_space)
    served = attrs.evolve(settings, port=0, conversations=False)
    async with run_horace(served) as running, connect(running.url) as client:
        reply = await client.request(
            "tools/call", {"name": "horace_register_file", "arguments": {"file_path": "user/a.txt"}}
        )
    result = reply["result"]
    assert result["isError"] and tool_body(result)["error_code"] == "STORAGE_FULL"
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


async def test_no_space_met_outside_the_copy_is_storage_full_too(
    settings: Settings, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC wherever it comes from (no inode left for a temp file, say) is STORAGE_FULL,
    for an MCP client and for the CLI, not a failing disk's STORAGE_ERROR."""
    write(files / "user/a.txt", "no inode for it")

    async def no_inode(*_: Any, **__: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/store/.horace/tmp")

    monkeypatch.setattr(Catalog, "register", no_inode)
    served = attrs.evolve(settings, port=0, conversations=False)
    async with run_horace(served) as running, connect(running.url) as client:
        reply = await client.request(
            "tools/call", {"name": "horace_register_file", "arguments": {"file_path": "user/a.txt"}}
        )
    assert tool_body(reply["result"])["error_code"] == "STORAGE_FULL"
    failure = horace.cli._failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert failure is not None and (failure.code, failure.exit) == ("STORAGE_FULL", Exit.STORAGE)


async def test_a_release_mark_that_cannot_be_written_after_a_restore_leaves_the_restore_done(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The restore's version is committed, and prunes an older one whose release mark
    cannot be written (no room left for it): the restore stands, the working file holds
    the version asked for (it was put back to its content before, under a version saying
    otherwise), and the pruned content waits for the orphan collection, as is said."""
    catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=3))
    path = write(files / "user/r.txt", "one")
    file = (await catalog.register("user/r.txt")).file
    for text in ("two", "three"):
        write(path, text)
        await catalog.update(file.id, FileChanges())

    def no_room(*_: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/store/.horace/released")

    monkeypatch.setattr(horace.storage.Storage, "mark_released", no_room)
    done = await catalog.restore(file.id, 2)
    monkeypatch.undo()
    assert done.version.restored_from_version == 2 and done.file.current_version == 4
    assert path.read_text() == "two"
    assert any("left to the orphan collection" in r.getMessage() for r in caplog.records)
    assert (await catalog.scan()).versioned == 0  # (nothing to take back in)
    report = await fsck(catalog, deep=True)
    assert report.clean and report.orphans == (hashlib.sha256(b"one").hexdigest(),), report


def _read_only(
    src: int, dst: int | None, check: Callable[[], None], *hint: int | None
) -> tuple[str, int, bytes]:
    """Copies fail as on a filesystem gone read-only (as the kernel makes one on errors)."""
    if dst is not None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/store/.horace/tmp")
    return _copy_and_hash(src, dst, check, *hint)


async def test_a_storage_gone_read_only_is_a_storage_error_and_degrades_health(
    settings: Settings, files: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a running server, the store's filesystem goes read-only: a write is
    STORAGE_ERROR, said in one log line (no traceback), not INTERNAL; /health says the
    store cannot be written (degraded); reads still work."""
    write(files / "user/a.txt", "v1")
    served = attrs.evolve(settings, port=0, conversations=False)
    register = {"name": "horace_register_file", "arguments": {"file_path": "user/a.txt"}}
    async with run_horace(served) as running, connect(running.url) as client:
        first = tool_body((await client.request("tools/call", register))["result"])
        write(files / "user/a.txt", "v2")
        monkeypatch.setattr(horace.storage, "_copy_and_hash", _read_only)
        monkeypatch.setattr(horace.storage.Storage, "writable", lambda self: False)
        result = (await client.request("tools/call", register))["result"]
        assert result["isError"], result
        refused = tool_body(result)
        assert refused["error_code"] == "STORAGE_ERROR" and "Read-only file system" in refused["message"]
        with trio.fail_after(10):
            while (await running.server.health())[1]["status"] != "degraded":
                await trio.sleep(0.1)
        assert (await running.server.health())[1]["store"]["ok"] is False
        info = await client.request(
            "tools/call", {"name": "horace_get_file_info", "arguments": {"file_id": first["file"]["id"]}}
        )
        assert not info["result"]["isError"]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert (files / "user/a.txt").read_text() == "v2"


async def test_a_store_failing_with_io_errors_degrades_health_until_it_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that fails every access (EIO) is no healthy store, writable or not: /health
    says so while the look at the store fails, and ok again once it gets through (which
    the log says too, as it said each failure)."""
    served = attrs.evolve(settings, port=0, conversations=False)
    async with run_horace(served) as running:
        assert (await running.server.health())[1]["store"]["ok"] is True

        def failing(self: horace.storage.Storage) -> bool:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(horace.storage.Storage, "writable", failing)
        with trio.fail_after(10):
            while (await running.server.health())[1]["status"] != "degraded":
                await trio.sleep(0.1)
        store = (await running.server.health())[1]["store"]
        assert store["ok"] is False and "Input/output error" in store["last_error"], store
        monkeypatch.undo()
        with trio.fail_after(40):  # (the look is retried with backoff)
            while (await running.server.health())[1]["store"]["ok"] is not True:
                await trio.sleep(0.2)
        assert "the store's check gets through again" in caplog.text


@pytest.mark.parametrize("room", [(0, 100), (1 << 30, 0)], ids=["no-byte", "no-inode"])
async def test_a_store_whose_disk_is_full_degrades_health_until_it_has_room(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, room: tuple[int, int]
) -> None:
    """Every write is STORAGE_FULL with no byte, or no inode, left: /health says so (the
    store not ok, with what is left), and ok again once there is room."""
    served = attrs.evolve(settings, port=0, conversations=False)
    async with run_horace(served) as running:
        assert (await running.server.health())[1]["store"]["ok"] is True
        monkeypatch.setattr(horace.storage.Storage, "room", lambda self: room)
        with trio.fail_after(10):
            while (await running.server.health())[1]["status"] != "degraded":
                await trio.sleep(0.1)
        store = (await running.server.health())[1]["store"]
        assert store["ok"] is False and store["details"]["full"] is True, store
        assert (store["details"]["free_bytes"], store["details"]["free_inodes"]) == room
        monkeypatch.undo()
        with trio.fail_after(10):
            while (await running.server.health())[1]["store"]["ok"] is not True:
                await trio.sleep(0.1)


@contextlib.contextmanager
def mounted_tmpfs(tmp_path: Path, options: str) -> Iterator[Path]:
    mount = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path, "size=3m") as mount:
        yield mount


async def test_a_real_full_filesystem(small_tmpfs: Path) -> None:
    settings = Settings(storage_path=small_tmpfs / "root", gc_grace=0.0)
    async with open_catalog(settings, create=True) as catalog:
        files = catalog.storage.files
        write(files / "user/small.txt", "fits")
        await catalog.register("user/small.txt")
        big = os.urandom(1_800_000)  # the working file fits; a second copy of it does not
        write(files / "user/big.bin", big)
        with pytest.raises(HoraceError) as full:
            await catalog.register("user/big.bin")
        assert full.value.code is ErrorCode.STORAGE_FULL
        assert (files / "user/big.bin").read_bytes() == big
        assert temps_left(catalog) == []
        (files / "user/big.bin").unlink()
        await assert_sound(catalog)


async def test_a_sparse_file_that_does_not_fit_whole_says_so(small_tmpfs: Path) -> None:
    """Its holes are kept as the zeros they read as: on a nearly empty disk, "full" alone
    would send the operator looking for what filled it."""
    settings = Settings(storage_path=small_tmpfs / "root", gc_grace=0.0)
    async with open_catalog(settings, create=True) as catalog:
        sparse = catalog.storage.files / "user/sparse.img"
        sparse.parent.mkdir(parents=True, exist_ok=True)
        with sparse.open("wb") as out:
            out.truncate(1 << 30)
            out.seek(500_000_000)
            out.write(b"hello")
        with pytest.raises(HoraceError) as full:
            await catalog.register("user/sparse.img")
        assert full.value.code is ErrorCode.STORAGE_FULL
        assert "reads as 1.0 GiB" in full.value.message and "(sparse, or compressed" in full.value.message
        assert sparse.stat().st_size == 1 << 30 and temps_left(catalog) == []


async def test_a_scan_on_a_nearly_full_disk_takes_what_fits(
    small_tmpfs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """New files staged as one pack that does not fit: taken one by one instead, each that
    does not fit an error of its own, not the whole scan refused (the log names the first
    few, and counts the rest). Once there is room, the next scan takes the rest."""
    settings = Settings(
        storage_path=small_tmpfs / "root", database_url=f"sqlite:///{tmp_path}/catalog.db", gc_grace=0.0
    )
    async with open_catalog(settings, create=True) as catalog:
        files = catalog.storage.files
        for i in range(300):
            write(files / f"user/many/{i:03d}.bin", os.urandom(4096))
        free = os.statvfs(small_tmpfs)
        filler = small_tmpfs / "filler"
        write(filler, b"\0" * (free.f_bavail * free.f_frsize - 400 * 1024))
        report = await catalog.scan()
        assert 0 < report.registered < 300
        assert report.registered + len(report.errors) == 300
        assert all("the storage is full" in error for error in report.errors), report.errors[:3]
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scan: ")]
        assert len([m for m in logged if m.startswith("scan: not taken: ")]) == LOGGED_SCAN_ERRORS
        assert f"scan: {len(report.errors) - LOGGED_SCAN_ERRORS} more files not taken" in "\n".join(logged)
        assert temps_left(catalog) == []
        filler.unlink()
        again = await catalog.scan()
        assert (again.registered, again.errors) == (300 - report.registered, ())
        await assert_sound(catalog)


def test_a_read_only_storage_is_a_storage_error_in_one_line(small_tmpfs: Path) -> None:
    """A store whose filesystem went read-only: every command says so in one line, exit 8
    (the SQLite catalog beside the files cannot be opened for writing), not an internal
    error; the files are untouched."""
    from test_cli import horace, one_line_error

    root = small_tmpfs / "store"
    env = {"HORACE_STORAGE_PATH": str(root)}
    assert horace("init", env=env).returncode == 0
    write(root / "files/user/a.txt", "kept")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True)
    assert remount.returncode == 0, remount.stderr
    for command in (["search"], ["info", "user/a.txt"], ["scan"], ["mcp"]):
        one_line_error(horace(*command, env=env), Exit.STORAGE, "STORAGE_ERROR", "read-only", "read the copy")
    assert (root / "files/user/a.txt").read_text() == "kept"


def test_a_full_disk_under_the_catalog_is_storage_full_at_start(small_tmpfs: Path) -> None:
    """With not a byte free, SQLite cannot grow the ``-shm`` file it opens beside the
    catalog and says "disk I/O error": every command, read-only ones too, says
    STORAGE_FULL in one line (exit 8), and works again once there is room."""
    from test_cli import horace, one_line_error

    root = small_tmpfs / "store"
    env = {"HORACE_STORAGE_PATH": str(root)}
    assert horace("init", env=env).returncode == 0
    write(root / "files/user/a.txt", "kept")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    filler = small_tmpfs / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
    for command in (["info", "user/a.txt"], ["search"], ["scan"]):
        one_line_error(horace(*command, env=env), Exit.STORAGE, "STORAGE_FULL", "full")
    filler.unlink()
    assert horace("info", "user/a.txt", env=env).returncode == 0
    assert (root / "files/user/a.txt").read_text() == "kept"


def test_a_disk_out_of_inodes_under_the_catalog_is_storage_full(tmp_path: Path) -> None:
    """Bytes to spare but no inode left: SQLite cannot make the ``-wal`` file beside the
    catalog and says "unable to open": that is STORAGE_FULL (exit 8), not a read-only
    store; the files are untouched, and it works again once an inode is free."""
    from test_cli import horace, one_line_error

    with mounted_tmpfs(tmp_path, "size=64m,nr_inodes=600") as mount:
        root = mount / "store"
        env = {"HORACE_STORAGE_PATH": str(root)}
        assert horace("init", env=env).returncode == 0
        write(root / "files/user/a.txt", "kept")
        assert horace("register", "user/a.txt", env=env).returncode == 0
        assert not (root / ".horace/catalog.db-wal").exists()  # (removed as the last connection closed)
        fillers = mount / "fillers"
        fillers.mkdir()
        with contextlib.suppress(OSError):
            for i in range(10_000):
                (fillers / str(i)).touch()
        assert os.statvfs(mount).f_favail == 0 and os.statvfs(mount).f_bavail > 0
        for command in (["info", "user/a.txt"], ["search"]):
            one_line_error(horace(*command, env=env), Exit.STORAGE, "STORAGE_FULL", "full")
        for filler in list(fillers.iterdir())[:20]:
            filler.unlink()
        assert horace("info", "user/a.txt", env=env).returncode == 0
        assert (root / "files/user/a.txt").read_text() == "kept"


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's own rollback on a full disk")
async def test_a_catalog_full_in_the_middle_of_a_statement_is_storage_full(
    catalog: Catalog, files: Path
) -> None:
    """A full disk met in the middle of a large insert makes SQLite roll the transaction
    back by itself: what the caller gets is the full disk (``DatabaseFull``, so
    ``STORAGE_FULL``), not the error of a ROLLBACK with no transaction left to undo; and
    the catalog writes again once there is room."""
    for i in range(300):
        write(files / f"user/f{i:03}.txt", f"file {i} " * 50)
    writer = catalog.backend._writer  # type: ignore[attr-defined]
    (pages,) = writer.execute("PRAGMA page_count").fetchone()
    writer.execute(f"PRAGMA max_page_count={pages}")  # (SQLITE_FULL as a full disk gives it)
    with pytest.raises(DatabaseFull):
        await catalog.register_new([f"user/f{i:03}.txt" for i in range(300)])
    assert not writer.in_transaction
    writer.execute("PRAGMA max_page_count=1073741823")
    assert len((await catalog.register_new(["user/f000.txt"])).registered) == 1
    await assert_sound(catalog)


def test_a_store_on_a_filesystem_without_hard_links_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vfat and exFAT have no hard links, and every version is kept through one: the store
    is refused when it is made or opened to write, by name, rather than each write failing."""

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    storage = horace.storage.Storage(tmp_path / "store")
    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(horace.storage.StorageUnusable, match="has no hard links"):
        storage.ensure_layout()
    assert not [p for p in storage.tmp.iterdir()]  # (the probe's file is gone)
    monkeypatch.undo()
    storage.ensure_layout()


def test_the_sqlite_catalog_syncs_every_commit(tmp_path: Path) -> None:
    """A power cut must not take commits a client was told of (WAL synced at each commit,
    not only at checkpoints)."""
    import horace.backends.sqlite as sqlite_backend

    conn = sqlite_backend._connect(tmp_path / "catalog.db")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize("at", ["connect", "first statement"])
def test_a_catalog_sqlite_cannot_open_is_unwritable_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """A folder this user may not write: some SQLite builds refuse the file as the
    connection is made, others at its first statement; either is CatalogUnwritable
    (STORAGE_ERROR, exit 8), never INTERNAL."""
    import sqlite3

    import horace.backends.sqlite as sqlite_backend
    from horace.backends import CatalogUnwritable

    real_connect = sqlite3.connect

    class Refusing(sqlite3.Connection):
        def execute(self, *args: Any) -> sqlite3.Cursor:
            raise sqlite3.OperationalError("unable to open database file")

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        if at == "connect":
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(*args, **kwargs, factory=Refusing)

    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(CatalogUnwritable, match="cannot be opened for writing"):
        sqlite_backend._connect(tmp_path / "catalog.db")


def test_a_catalog_whose_filesystem_refuses_the_wal_is_unwritable_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On vfat (no shared memory beside the file) SQLite's WAL says "disk I/O error" with
    room to spare: the catalog is unusable there, said so, never INTERNAL."""
    import sqlite3

    import horace.backends.sqlite as sqlite_backend
    from horace.backends import CatalogUnwritable

    real_connect = sqlite3.connect

    class NoWal(sqlite3.Connection):
        def execute(self, *args: Any) -> sqlite3.Cursor:
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, **k, factory=NoWal))
    with pytest.raises(CatalogUnwritable, match="write-ahead log"):
        sqlite_backend._connect(tmp_path / "catalog.db")
