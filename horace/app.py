"""Assembling a catalog from settings: storage layout, backend, locks, start-up fsck."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backends import open_backend
from horace.catalog import Catalog, CatalogPolicy, in_thread
from horace.config import Settings
from horace.fsck import fsck, log_findings
from horace.locks import FileLocks
from horace.storage import Storage

log = logging.getLogger("horace")


def policy_of(settings: Settings) -> CatalogPolicy:
    return CatalogPolicy(
        retention=settings.retention,
        gc_grace_seconds=settings.gc_grace,
        deleted_retention=settings.deleted_retention_delta,
    )


@asynccontextmanager
async def open_catalog(settings: Settings, *, check: bool = True) -> AsyncIterator[Catalog]:
    """Open storage and backend; with *check*, run the quick fsck with repair first."""
    storage = Storage(settings.storage_path)
    await in_thread(storage.ensure_layout)
    locks = FileLocks(storage.lock_file, wait_seconds=settings.lock_wait)
    try:
        async with open_backend(settings.catalog_url) as backend:
            catalog = Catalog(storage, backend, locks, policy_of(settings))
            if check:
                log_findings(await fsck(catalog, repair=True, restore_working=False), "at start")
            yield catalog
    finally:
        locks.close()
