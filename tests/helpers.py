"""Small helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

BACKEND = os.environ.get("HORACE_TEST_BACKEND", "sqlite")
PG_DSN = os.environ.get("HORACE_TEST_PG_DSN")


def pg_execute(*statements: str) -> None:
    """Run statements on the test PostgreSQL server, outside any backend."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_fetchval(query: str) -> Any:
    """The first value of *query*'s first row, on the test PostgreSQL server."""
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(PG_DSN)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def catalog_execute(database_url: str, statement: str) -> None:
    """Run *statement* on a test's catalog database behind Horace's back (a hand edit).
    Blocking, and outside any event loop: from a test, in a thread."""
    if database_url.startswith("sqlite://"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite://"))) as conn, conn:
            conn.execute(statement)
        return
    schema = dict(parse_qsl(urlsplit(database_url).query))["search_path"]
    pg_execute(f"SET search_path TO {schema}", statement)


@contextmanager
def fresh_database(folder: Path, name: str = "catalog") -> Iterator[str]:
    """The URL of a new, empty catalog database of the backend under test (a PostgreSQL
    schema of its own, through the URL's ``search_path``, dropped afterwards)."""
    if BACKEND == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        yield f"sqlite://{folder / f'{name}.db'}"
        return
    assert PG_DSN is not None
    schema = f"t_{uuid.uuid4().hex[:16]}"
    pg_execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_query(PG_DSN, search_path=schema)
    finally:
        pg_execute(f"DROP SCHEMA {schema} CASCADE")


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def godot_that_never_answers(flush: str = "3s") -> Iterator[dict[str, str]]:
    """The settings of a Godot that takes connections and never answers, and of sinks that
    flush for up to *flush* at a stop: a stop that is still going on, for that long."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        yield {"GODOT_URL": f"ws://127.0.0.1:{silent.getsockname()[1]}/", "HORACE_SINK_FLUSH": flush}


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def tool_body(result: dict[str, Any]) -> dict[str, Any]:
    """What a tool result carries: its structuredContent, or for a tool error (which has
    none: the outputSchema describes results) the JSON of its text content."""
    if result["isError"]:
        assert "structuredContent" not in result, result
        return json.loads(result["content"][0]["text"])  # type: ignore[no-any-return]
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"], result
    return result["structuredContent"]  # type: ignore[no-any-return]
