"""SQLite's reads by key run on the event loop's thread (``SqliteBackend._read_by_key``):
they never wait for a lock (a database that is busy is read on a worker thread instead),
and after one that was slow (a slow disk) they go to worker threads for a while. SQLite
only, whatever backend the rest of the suite runs on."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import write

from horace.assemble import open_catalog
from horace.backends.records import FileRecord, SearchQuery
from horace.backends.sqlite import KEY_READ_SLOW, READERS, SqliteBackend
from horace.catalog import Catalog
from horace.config import Settings


@attrs.define
class OneFile:
    catalog: Catalog
    backend: SqliteBackend
    file: FileRecord

    def replace_key_reader(self, reader: Any) -> None:
        self.backend._key_reader = reader


@pytest.fixture
async def one_file(tmp_path: Path) -> AsyncIterator[OneFile]:
    """A SQLite catalog holding one file; its own key reader put back afterwards."""
    settings = Settings(storage_path=tmp_path / "root", database_url=f"sqlite://{tmp_path}/catalog.db")
    write(settings.storage_path / "files/user/a.txt", "a")
    async with open_catalog(settings, create=True) as catalog:
        backend = catalog.backend
        assert isinstance(backend, SqliteBackend)
        key_reader = backend._key_reader
        try:
            yield OneFile(catalog, backend, (await catalog.register("user/a.txt")).file)
        finally:
            backend._key_reader = key_reader


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


class _Slow:
    """The key reader, as a disk that takes its time."""

    def __init__(self, conn: sqlite3.Connection, seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds
        self.statements = 0

    def execute(self, *args: Any) -> Any:
        self.statements += 1
        time.sleep(self.seconds)
        return self.conn.execute(*args)


async def test_a_busy_database_is_read_on_a_worker_thread(one_file: OneFile) -> None:
    backend, file = one_file.backend, one_file.file
    version = await backend.version(file.id, 1)
    assert version is not None
    for code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_BUSY | (2 << 8)):
        busy = _Refusing(code, "database is locked")
        one_file.replace_key_reader(busy)
        assert await backend.file_by_id(file.id) == file
        assert await backend.file_by_path("user/a.txt") == file
        assert await backend.file_by_checksum(file.checksum) == file
        assert await backend.version(file.id, 1) == version
        assert (await one_file.catalog.get_info(file_id=file.id)).file == file
        assert busy.statements >= 5  # each was tried here first


async def test_other_errors_of_a_read_by_key_are_raised(one_file: OneFile) -> None:
    one_file.replace_key_reader(_Refusing(sqlite3.SQLITE_IOERR, "disk I/O error"))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await one_file.backend.file_by_id(one_file.file.id)


async def test_the_key_reader_never_waits_and_never_writes(one_file: OneFile, tmp_path: Path) -> None:
    reader = one_file.backend._key_reader
    assert reader.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("INSERT INTO horace_store (id, store_id) VALUES (2, 'x')")
    # What the reads by key would have waited for: a write lock held elsewhere does not
    # stop them (WAL), and they see what was committed.
    other = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert await one_file.backend.file_by_path("user/a.txt") == one_file.file
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_slow_read_by_key_sends_the_next_ones_to_worker_threads(one_file: OneFile) -> None:
    backend, file = one_file.backend, one_file.file
    slow = _Slow(backend._key_reader, KEY_READ_SLOW * 1.5)
    one_file.replace_key_reader(slow)
    assert await backend.file_by_id(file.id) == file  # read here, slowly
    assert slow.statements == 1
    for _ in range(3):  # the next ones: on worker threads, the same answers
        assert await backend.file_by_id(file.id) == file
        assert await backend.file_by_path("user/a.txt") == file
    assert slow.statements == 1
    # Once the backoff is over, here again.
    backend._key_reads_on_threads_until = trio.current_time()
    slow.seconds = 0
    assert await backend.file_by_id(file.id) == file
    assert slow.statements == 2


async def test_a_read_is_interrupted_when_its_caller_is_cancelled(one_file: OneFile) -> None:
    """A call's deadline (or its client's cancel) does not wait for a long statement in a
    worker thread to end; the connection it ran on serves the next read."""
    backend = one_file.backend
    # Some seconds of counting (bounded: without the interrupt the test fails, not hangs).
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000) "
        "SELECT count(*) FROM n"
    )
    started = time.monotonic()
    with trio.move_on_after(0.3) as scope:
        await backend._read(lambda conn: conn.execute(endless).fetchone())
    assert scope.cancelled_caught and time.monotonic() - started < 2
    async with trio.open_nursery() as nursery:  # every pooled connection, at once
        for _ in range(2 * READERS):
            nursery.start_soon(
                backend._read, lambda conn: conn.execute("SELECT count(*) FROM horace_files").fetchone()
            )
    found = await backend.search(SearchQuery(path="user/*"))
    assert found[0] == 1
