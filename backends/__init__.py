"""Catalog backends: one protocol (``backends.protocol``), chosen at the edge by URL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .protocol import (
    Backend,
    BackendUnavailable,
    CatalogDamaged,
    CatalogMissing,
    CatalogUnwritable,
    DatabaseFull,
    SchemaBehind,
    Units,
    UnusableURL,
)

__all__ = [
    "Backend",
    "BackendUnavailable",
    "CatalogDamaged",
    "CatalogMissing",
    "CatalogUnwritable",
    "DatabaseFull",
    "SchemaBehind",
    "Units",
    "UnusableURL",
    "open_backend",
    "url_problem",
]

SCHEMES = ("sqlite://", "postgresql://", "postgres://")


SQLITE_LONGEST_PATH = 503  # SQLite's unix files: 512 bytes for a path, "-journal" and a NUL


def place_problem(url: str) -> str | None:
    """Why no catalog can be at the SQLite file *url* (a well-formed URL) names, or None:
    a folder there, or no folder for it (a typo in a URL makes no folders). Of a
    PostgreSQL URL, connecting tells."""
    if not url.startswith("sqlite://"):
        return None
    path = Path(url.removeprefix("sqlite://"))
    # (SQLite opens the file by its real path: through a symbolic link, that may be longer.)
    longest = max(len(os.fsencode(path)), len(os.fsencode(os.path.realpath(path))))
    if longest > SQLITE_LONGEST_PATH:
        return (
            f"unusable database URL: sqlite://{path}: its path is {longest} bytes (symbolic links "
            f"followed), and SQLite opens none over {SQLITE_LONGEST_PATH} (its journal's name must "
            "fit in 512): choose a shorter one"
        )
    if path.is_dir():
        return f"unusable database URL: sqlite://{path} is a folder; name the database's file in it"
    if path.exists() and not path.is_file():
        return (
            f"unusable database URL: sqlite://{path} is not a regular file (a device, a FIFO or a "
            "socket): name an SQLite file, or a new one's path"
        )
    if path.parent.exists() and not path.parent.is_dir():
        return f"unusable database URL: sqlite://{path}: {path.parent} is a file, not a folder"
    if not path.parent.is_dir():
        return (
            f"unusable database URL: sqlite://{path}: there is no folder {path.parent} "
            "(make it first, or mend the URL)"
        )
    return None


def url_problem(url: str) -> str | None:
    """Why *url* cannot name a catalog database, or None."""
    if not url.startswith(SCHEMES):
        scheme = url.partition("://")[0] if "://" in url else None
        named = f"the scheme {scheme!r} is not supported" if scheme else "it is not a URL"
        return f"{named}: use sqlite:///absolute/path.db or postgresql://user@host/database"
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path:
            return "sqlite:// needs a path, e.g. sqlite:///var/lib/horace/catalog.db"
        if not path.startswith("/"):  # it would name a different file in every folder
            return (
                f"sqlite:// needs an absolute path, as in sqlite:///var/lib/horace/catalog.db "
                f"(three slashes): {url}"
            )
        if "?" in path or "#" in path:  # (SQLite's own URI options are not taken)
            return f"sqlite:// takes a path only, no ?options or #: {url}"
        return None
    # PostgreSQL: what asyncpg would fail on later with a bare ValueError.
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a [ without its ]
        return f"the server's address cannot be read ({exc}): use postgresql://user@host:port/database"
    if "@" in parts.path or parts.fragment or parts.netloc.count("@") > 1:
        # A / or # in the password ends the authority early: the rest of it would be read
        # as the host and the database (and shown, in messages, as the server's name); of
        # two @, libpq and asyncpg take the first as the end of the password.
        return (
            "a '/', '@' or '#' in the user name or password must be percent-encoded "
            "(%2F, %40, %23), or the password given in PGPASSWORD"
        )
    addresses = hosts_of(parts.netloc)
    if len(addresses) > 1 and not all(addresses):  # (asyncpg fails on it with an IndexError)
        return f"an empty server in the list {','.join(addresses)!r}: use postgresql://user@host1:port1,host2:port2/database"
    for address in addresses:  # (several: asyncpg tries each in turn)
        port = _port_of(address)
        if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
            return f"the port {port!r} is not a port number: use postgresql://user@host:port/database"
    return None


def hosts_of(netloc: str) -> list[str]:
    """The host:port addresses of a URL's authority, credentials left out: one, or the
    several of a URL that lists them (``postgresql://u@db1:5432,db2:5432/horace``)."""
    return netloc.rpartition("@")[2].split(",")


def _port_of(address: str) -> str:
    """The port of ``host:port`` or ``[v6]:port``; '' when none is given."""
    if address.startswith("["):
        return address.partition("]")[2].removeprefix(":")
    return address.partition(":")[2]


@asynccontextmanager
async def open_backend(
    url: str,
    *,
    migrate: bool = True,
    create: bool = True,
    connections: int | None = None,
    application_name: str | None = None,
) -> AsyncIterator[Backend]:
    """Open the backend named by *url* (``sqlite:///path`` or ``postgresql://...``).

    The schema is brought up to date unless ``migrate=False``; a database whose schema
    is newer than this code is refused. Without *create* a missing SQLite file is
    :class:`CatalogMissing` rather than a new, empty catalog. *connections*: the most a
    PostgreSQL pool holds (else its default); *application_name*: what its connections
    are named when neither the URL nor ``PGAPPNAME`` names them (else ``horace``).
    """
    problem = url_problem(url)
    if problem is not None:
        raise UnusableURL(f"unusable database URL: {problem}")
    backend: Backend
    if url.startswith("sqlite://"):
        from .sqlite import open_sqlite

        async with open_sqlite(Path(url.removeprefix("sqlite://")), create=create) as backend:
            if migrate:
                await backend.migrate()
            yield backend
    else:
        from .postgres import open_postgres

        options: dict[str, Any] = {}
        if connections is not None:
            options["max_connections"] = connections
        if application_name is not None:
            options["application_name"] = application_name
        async with open_postgres(url, **options) as backend:
            if migrate:
                await backend.migrate()
            yield backend
