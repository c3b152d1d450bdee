"""SQLite's write-ahead log does not keep the size of its largest moment: once a checkpoint
has emptied it, the next write cuts the file back to ``WAL_KEPT_BYTES``. SQLite only,
whatever backend the rest of the suite runs on."""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import write

from horace.assemble import open_catalog
from horace.backends import open_backend, sqlite
from horace.backends.protocol import BackendUnavailable, CatalogUnwritable
from horace.backends.records import Turn
from horace.config import Settings

KEPT = 256 << 10


async def test_the_log_is_cut_back_after_a_large_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "WAL_KEPT_BYTES", KEPT)
    settings = Settings(storage_path=tmp_path / "root", database_url=f"sqlite://{tmp_path}/catalog.db")
    for i in range(3000):
        write(settings.storage_path / f"files/user/many/f{i:04d}.txt", f"file {i}")
    wal = tmp_path / "catalog.db-wal"
    async with open_catalog(settings, create=True) as catalog:
        report = await catalog.scan()
        assert report.registered == 3000
        largest = wal.stat().st_size
        assert largest > 4 * KEPT  # the scan's batches grew it
        write(settings.storage_path / "files/user/one.txt", "one")
        await catalog.register("user/one.txt")  # starts the log over, after the checkpoint
        assert wal.stat().st_size <= KEPT


async def test_a_catalog_replaced_under_a_process_is_not_given_its_log(tmp_path: Path) -> None:
    """A backup copy put in place of the catalog while a process has it open (a restore):
    SQLite does not checkpoint into a file that moved, and would leave its log beside the
    copy, to be replayed over it by the next opener. The process empties it into the file
    it holds as it closes: the copy opens whole, with its own content."""
    settings = Settings(storage_path=tmp_path / "root", database_url=f"sqlite://{tmp_path}/catalog.db")
    files = settings.storage_path / "files/user"
    backup = tmp_path / "backup.db"
    async with open_catalog(settings, create=True) as catalog:
        for i in range(20):
            write(files / f"f{i}.txt", f"first {i}")
            await catalog.register(f"user/f{i}.txt")
        with sqlite3.connect(tmp_path / "catalog.db") as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        for i in range(20):
            write(files / f"f{i}.txt", f"second {i}")
            await catalog.register(f"user/f{i}.txt")
        assert (tmp_path / "catalog.db-wal").stat().st_size > 0  # frames not in the file yet
        shutil.copy(backup, tmp_path / "catalog.db.new")
        os.replace(tmp_path / "catalog.db.new", tmp_path / "catalog.db")
    with sqlite3.connect(tmp_path / "catalog.db") as restored:
        assert restored.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert restored.execute("SELECT count(*) FROM horace_versions").fetchone() == (20,)


async def test_a_writer_sqlite_opened_read_only_is_opened_anew_after_a_refused_write(tmp_path: Path) -> None:
    """SQLite opens a file it may not write read-only, and such a connection stays so when
    the file becomes writable: a write it refuses is the catalog's state (CatalogUnwritable,
    noted for /health), not a bug, and the next write goes through a new connection."""
    path = tmp_path / "catalog.db"
    turn = Turn("c", 1, "user", "hello", None, None, None, None, {}, datetime.now(UTC))
    async with open_backend(f"sqlite://{path}") as backend:
        assert isinstance(backend, sqlite.SqliteBackend)
        opened = backend._writer
        backend._writer = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )  # (as SQLite opens a file this user may not write)
        opened.close()
        with pytest.raises(CatalogUnwritable, match=f"the catalog {path} cannot be written"):
            await backend.insert_turns([turn])
        assert "cannot be written" in backend.refusals.said
        assert await backend.insert_turns([turn]) == []
    with sqlite3.connect(path) as stored:
        assert stored.execute("SELECT content FROM conversations").fetchall() == [("hello",)]


async def test_a_catalog_another_program_keeps_locked_is_unavailable_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program holding the catalog's write lock past the busy timeout (an sqlite3
    shell left in a transaction): a write is BACKEND_UNAVAILABLE, saying so; it was
    INTERNAL ("database is locked"), which says to report a bug."""
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "catalog.db"
    turn = Turn("c", 1, "user", "hello", None, None, None, None, {}, datetime.now(UTC))
    async with open_backend(f"sqlite://{path}") as backend:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(BackendUnavailable, match="locked by another program"):
                await backend.insert_turns([turn])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await backend.insert_turns([turn]) == []  # taken once the lock is let go
