"""SQLite's reads by key run on the event loop's thread (``SqliteBackend._read_by_key``):
they never wait for a lock, and a database that is busy is read on a worker thread
instead. SQLite only, whatever backend the rest of the suite runs on."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import write

from horace.assemble import open_catalog
from horace.backends.sqlite import SqliteBackend
from horace.config import Settings


class _Refusing:
    """A connection whose every statement fails with one SQLite error."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        self.statements = 0

    def execute(self, *_: Any) -> Any:
        self.statements += 1
        exc = sqlite3.OperationalError(self.message)
        exc.sqlite_errorcode = self.code  # type: ignore[attr-defined]
        raise exc


def _settings(tmp_path: Path) -> Settings:
    return Settings(storage_path=tmp_path / "root", database_url=f"sqlite://{tmp_path}/catalog.db")


async def test_a_busy_database_is_read_on_a_worker_thread(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    write(settings.storage_path / "files/user/a.txt", "a")
    async with open_catalog(settings, create=True) as catalog:
        backend = catalog.backend
        assert isinstance(backend, SqliteBackend)
        file = (await catalog.register("user/a.txt")).file
        version = await backend.version(file.id, 1)
        assert version is not None
        key_reader = backend._key_reader
        for code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_BUSY | (2 << 8)):
            busy = _Refusing(code, "database is locked")
            backend._key_reader = busy  # type: ignore[assignment]
            try:
                assert await backend.file_by_id(file.id) == file
                assert await backend.file_by_path("user/a.txt") == file
                assert await backend.file_by_checksum(file.checksum) == file
                assert await backend.version(file.id, 1) == version
                assert (await catalog.get_info(file_id=file.id)).file == file
            finally:
                backend._key_reader = key_reader
            assert busy.statements >= 5  # each was tried here first


async def test_other_errors_of_a_read_by_key_are_raised(tmp_path: Path) -> None:
    async with open_catalog(_settings(tmp_path), create=True) as catalog:
        backend = catalog.backend
        assert isinstance(backend, SqliteBackend)
        key_reader = backend._key_reader
        backend._key_reader = _Refusing(sqlite3.SQLITE_IOERR, "disk I/O error")  # type: ignore[assignment]
        try:
            with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
                await backend.file_by_id("0")
        finally:
            backend._key_reader = key_reader


async def test_the_key_reader_never_waits_and_never_writes(tmp_path: Path) -> None:
    async with open_catalog(_settings(tmp_path), create=True) as catalog:
        backend = catalog.backend
        assert isinstance(backend, SqliteBackend)
        reader = backend._key_reader
        assert reader.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute(
                "INSERT INTO horace_collections (name, created_at, updated_at) VALUES ('c', 't', 't')"
            )
        # What the reads by key would have waited for: a write lock held elsewhere does
        # not stop them (WAL), and they see what was committed.
        other = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            assert await backend.file_by_path("user/none.txt") is None
        finally:
            other.execute("ROLLBACK")
            other.close()
