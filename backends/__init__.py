"""Catalog backends: one protocol (``backends.protocol``), chosen at the edge by URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from backends.protocol import Backend, BackendUnavailable, Units

__all__ = ["Backend", "BackendUnavailable", "Units", "open_backend"]


@asynccontextmanager
async def open_backend(url: str, *, migrate: bool = True) -> AsyncIterator[Backend]:
    """Open the backend named by *url* (``sqlite:///path`` or ``postgresql://...``).

    The schema is brought up to date unless ``migrate=False``; a database whose schema
    is newer than this code is refused.
    """
    backend: Backend
    if url.startswith("sqlite://"):
        from backends.sqlite import open_sqlite

        async with open_sqlite(Path(url.removeprefix("sqlite://"))) as backend:
            if migrate:
                await backend.migrate()
            yield backend
    elif url.startswith(("postgresql://", "postgres://")):
        from backends.postgres import open_postgres

        async with open_postgres(url) as backend:
            if migrate:
                await backend.migrate()
            yield backend
    else:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://")
