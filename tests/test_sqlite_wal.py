"""SQLite's write-ahead log does not keep the size of its largest moment: once a checkpoint
has emptied it, the next write cuts the file back to ``WAL_KEPT_BYTES``. SQLite only,
whatever backend the rest of the suite runs on."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write

from horace.assemble import open_catalog
from horace.backends import sqlite
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
