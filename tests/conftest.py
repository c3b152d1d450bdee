"""Fixtures shared by the whole suite, which runs once per backend.

``HORACE_TEST_BACKEND`` picks the backend (``sqlite`` by default). For ``postgres`` a
reachable server is required through ``HORACE_TEST_PG_DSN``: without it the run fails,
it is never skipped. Each test gets its own PostgreSQL schema (through the URL's
``search_path``), dropped afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import BACKEND, PG_DSN, fresh_database

from horace.assemble import open_catalog
from horace.catalog import Catalog
from horace.config import Settings


def pytest_configure(config: pytest.Config) -> None:
    if BACKEND not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"HORACE_TEST_BACKEND={BACKEND!r}: use sqlite or postgres")
    if BACKEND == "postgres" and not PG_DSN:
        raise pytest.UsageError(
            "HORACE_TEST_BACKEND=postgres needs HORACE_TEST_PG_DSN (scripts/test sets it up)"
        )


def pytest_report_header() -> str:
    return f"horace backend: {BACKEND}" + (f" ({PG_DSN})" if BACKEND == "postgres" else "")


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


@pytest.fixture
def fifo_rescue() -> Iterator[list[bool]]:
    """The FIFOs a test puts in the list: should something open one to read and block (in
    a worker thread that no cancellation can reach), a timer plays its writer after a few
    seconds, so that the test fails instead of hanging."""
    rescued: list[bool] = []
    fifos: list[Path] = []

    def play_the_writer() -> None:
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                rescued.append(True)
            except OSError:  # ENXIO: nobody is blocked reading it
                pass

    timer = threading.Timer(5.0, play_the_writer)
    timer.start()
    try:
        yield fifos  # type: ignore[misc]
    finally:
        timer.cancel()
    assert not rescued, "something blocked opening a FIFO"
