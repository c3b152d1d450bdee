"""Fixtures shared by the whole suite, which runs once per backend.

``HORACE_TEST_BACKEND`` picks the backend (``sqlite`` by default). For ``postgres`` a
reachable server is required through ``HORACE_TEST_PG_DSN``: without it the run fails,
it is never skipped. Each test gets its own PostgreSQL schema (through the URL's
``search_path``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import with_query

from horace.assemble import open_catalog
from horace.catalog import Catalog
from horace.config import Settings

BACKEND = os.environ.get("HORACE_TEST_BACKEND", "sqlite")
PG_DSN = os.environ.get("HORACE_TEST_PG_DSN")


def pytest_configure(config: pytest.Config) -> None:
    if BACKEND not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"HORACE_TEST_BACKEND={BACKEND!r}: use sqlite or postgres")
    if BACKEND == "postgres" and not PG_DSN:
        raise pytest.UsageError(
            "HORACE_TEST_BACKEND=postgres needs HORACE_TEST_PG_DSN (scripts/test sets it up)"
        )


def pytest_report_header() -> str:
    return f"horace backend: {BACKEND}" + (f" ({PG_DSN})" if BACKEND == "postgres" else "")


def _pg(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def fresh_database(folder: Path, name: str = "catalog") -> Iterator[str]:
    """The URL of a new, empty catalog database of the test backend."""
    if BACKEND == "sqlite":
        yield f"sqlite://{folder / f'{name}.db'}"
        return
    assert PG_DSN is not None
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg(f"CREATE SCHEMA {schema}")
    try:
        yield with_query(PG_DSN, search_path=schema)
    finally:
        _pg(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty catalog database for this test."""
    with fresh_database(tmp_path) as url:
        yield url


@pytest.fixture
def other_database_url(tmp_path: Path) -> Iterator[str]:
    """A second fresh catalog database, of the same backend."""
    with fresh_database(tmp_path, "other") as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(storage_path=tmp_path / "root", database_url=database_url, gc_grace=0.0)


@pytest.fixture
async def catalog(settings: Settings) -> AsyncIterator[Catalog]:
    async with open_catalog(settings, create=True) as opened:
        yield opened


@pytest.fixture
def files(settings: Settings) -> Path:
    """The working-file folder of the catalog's storage root."""
    return settings.storage_path / "files"
