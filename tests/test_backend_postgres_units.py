"""The PostgreSQL backend's units of work, one by one, and against the SQLite reference.

Needs a PostgreSQL server: ``HORACE_TEST_PG_DSN`` if set, else the local Debian cluster
(``postgresql://root@/horace_dev?host=/var/run/postgresql``); skipped when
``HORACE_TEST_BACKEND=sqlite``. Every test gets a schema of its own through the URL's
``search_path``, dropped afterwards. ``PG_UNITS_SEEDS`` sets how many random op sequences
the comparison with SQLite runs (6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import attrs
import pytest
import trio

from horace.backends import open_backend, url_problem
from horace.backends.migrations import SchemaTooNew, steps
from horace.backends.postgres import (
    MIN_CONNECTIONS,
    Conn,
    PostgresBackend,
    _execute,
    _fetch,
    _fetchrow,
    _Glob,
    _glob_regex,
    _PoolSource,
    _search_sql,
    open_postgres,
)
from horace.backends.protocol import BackendUnavailable, CatalogUnwritable, UnusableURL
from horace.backends.records import (
    Collection,
    FileChanges,
    FileRecord,
    NewVersion,
    Order,
    Retention,
    SearchQuery,
    SortKey,
    Status,
    Turn,
    WorkingStat,
)
from horace.backends.sqlite import SqliteBackend, open_sqlite
from horace.backends.words import prefix_end
from horace.sinks.conversations import TURNS_APPLICATION, TURNS_CONNECTIONS

# The sqlite environments of the tox matrix have no server; the postgres ones run these.
pytestmark = pytest.mark.skipif(
    os.environ.get("HORACE_TEST_BACKEND") == "sqlite", reason="PostgreSQL backend tests"
)
PG_DSN = os.environ.get("HORACE_TEST_PG_DSN", "postgresql://root@/horace_dev?host=/var/run/postgresql")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NEWEST_SCHEMA = steps("postgres")[-1].version
T = TypeVar("T")


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def on_admin(work: Callable[[Any], Awaitable[T]]) -> T:
    """*work* on a connection to the test database, outside the backend (plain asyncio)."""

    async def run() -> T:
        conn = await asyncpg.connect(PG_DSN)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def admin(*statements: str) -> None:
    """Run statements on the test database outside the backend."""

    async def work(conn: Any) -> None:
        for statement in statements:
            await conn.execute(statement)

    on_admin(work)


def admin_column(query: str) -> list[Any]:
    """The first column of *query*'s rows, read outside the backend."""

    async def work(conn: Any) -> list[Any]:
        return [row[0] for row in await conn.fetch(query)]

    return on_admin(work)


def kill_sessions(url: str, *, busy_only: bool = False) -> str:
    """SQL that ends the sessions of *url*'s application_name (with *busy_only*, those
    running a statement)."""
    app = dict(parse_qsl(urlsplit(url).query))["application_name"]
    busy = " AND state = 'active'" if busy_only else ""
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = '{app}' AND pid <> pg_backend_pid(){busy}"
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin(f"CREATE SCHEMA {schema}")
    try:
        yield with_query(PG_DSN, search_path=schema, application_name=schema)
    finally:
        admin(f"DROP SCHEMA {schema} CASCADE")


def new_role(pg_url: str) -> tuple[str, str]:
    """A name for a new role, and *pg_url* as that role."""
    role = f"r_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(pg_url)
    return role, urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[PostgresBackend]:
    async with open_postgres(pg_url) as backend:
        assert await backend.migrate() == NEWEST_SCHEMA
        yield backend


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rec(
    path: str,
    checksum: str,
    *,
    when: float = 0,
    size: int = 10,
    tags: Sequence[str] = (),
    owner: str | None = None,
    purpose: str | None = None,
    mime: str = "text/plain",
    status: Status = Status.ACTIVE,
    correlation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    file_id: str | None = None,
) -> FileRecord:
    return FileRecord(
        id=file_id or str(uuid.uuid4()),
        file_path=path,
        owner=owner,
        purpose=purpose,
        tags=tuple(tags),
        size=size,
        mime_type=mime,
        checksum=checksum,
        status=status,
        current_version=1,
        correlation_id=correlation_id,
        created_at=at(when),
        updated_at=at(when),
        deleted_at=None,
        metadata=metadata or {},
    )


def new(checksum: str, size: int = 20, mime: str = "text/plain") -> NewVersion:
    return NewVersion(checksum=checksum, size=size, mime_type=mime)


# -- migrations ------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_refuses_a_newer_schema(pg_url: str) -> None:
    async with open_postgres(pg_url) as backend:
        assert await backend.migrate() == NEWEST_SCHEMA
        assert await backend.migrate() == NEWEST_SCHEMA
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    await trio.to_thread.run_sync(
        admin, f"INSERT INTO {schema}.schema_version (version) VALUES ({NEWEST_SCHEMA + 1})"
    )
    async with open_postgres(pg_url) as backend:
        with pytest.raises(SchemaTooNew):
            await backend.migrate()


async def test_instances_starting_together_migrate_once(pg_url: str) -> None:
    results: list[int] = []

    async def start() -> None:
        async with open_postgres(pg_url, max_connections=2) as backend:
            results.append(await backend.migrate())

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(start)
    assert results == [NEWEST_SCHEMA] * 4


# -- inserting -------------------------------------------------------------------------------


async def test_insert_files_skips_catalogued_paths_and_contents(db: PostgresBackend) -> None:
    a = rec("a.txt", "x", tags=("t1", "t2"), metadata={"k": [1, 2]})
    assert await db.insert_files([a]) == [a]
    gone = rec("gone.txt", "dead", status=Status.DELETED)
    assert await db.insert_files([gone]) == [gone]

    batch = [
        rec("a.txt", "fresh"),  # path catalogued
        rec("b.txt", "x"),  # content catalogued (not deleted)
        c := rec("c.txt", "dead"),  # content only in a deleted file: fine
        d := rec("d.txt", "y"),
        rec("e.txt", "y"),  # same content as d, earlier in the batch
        rec("d.txt", "z"),  # same path as d, earlier in the batch
        f := rec("f.txt", "z"),  # z is free again: the d.txt/z row was skipped
    ]
    inserted = await db.insert_files(batch, collection="new")
    assert inserted == [c, d, f]
    assert all(x is y for x, y in zip(inserted, [c, d, f], strict=True))

    stored = await db.file_by_id(a.id)
    assert stored == a
    assert stored is not None and stored.metadata == {"k": [1, 2]}
    for r in (c, d, f):
        (v1,) = await db.versions(r.id)
        assert (v1.version, v1.checksum, v1.size, v1.created_at) == (1, r.checksum, 10, T0)
    found = await db.get_collection("new", 10, 0)
    assert found is not None
    coll, members = found
    assert coll.member_count == 3 and coll.created_at == T0
    assert {m.id for m in members} == {c.id, d.id, f.id}
    assert await db.insert_files([]) == []


async def _insert_into(
    backend: PostgresBackend, file: FileRecord, won: list[list[FileRecord]], i: int
) -> None:
    won[i] = await backend.insert_files([file])


async def test_one_content_inserted_at_two_paths_by_two_instances_at_once_is_one_file(
    db: PostgresBackend, pg_url: str
) -> None:
    """Two instances (two pools) register the same new content at two paths at the same
    instant: the inserts take turns on the content, and the second finds the first's file
    (a duplicate), as on one instance. Without the turn both looked before either
    committed, and both paths became files (some rounds in ten)."""
    async with open_postgres(pg_url) as other:
        doubles = 0
        for n in range(40):
            content = uuid.uuid4().hex
            pair = [rec(f"a{n}.txt", content), rec(f"b{n}.txt", content)]
            won: list[list[FileRecord]] = [[], []]
            async with trio.open_nursery() as nursery:
                for i, backend in enumerate((db, other)):
                    nursery.start_soon(_insert_into, backend, pair[i], won, i)
            assert len(won[0]) + len(won[1]) >= 1, n
            doubles += len(won[0]) + len(won[1]) == 2
        assert doubles == 0


async def test_insert_files_batch_with_only_repeated_checksums(db: PostgresBackend) -> None:
    batch = [
        rec(f"p{i}.bin", f"c{i % 3}", status=Status.DELETED if i == 0 else Status.ACTIVE) for i in range(9)
    ]
    # p0 (deleted, c0) does not block c0; p3 (c0) does, then p1, p2 for c1, c2.
    inserted = await db.insert_files(batch)
    assert [r.file_path for r in inserted] == ["p0.bin", "p1.bin", "p2.bin", "p3.bin"]


async def test_insert_files_large_batch(db: PostgresBackend) -> None:
    batch = [rec(f"bulk/{i:04}.dat", f"sum{i}", tags=(f"t{i % 7}",)) for i in range(600)]
    assert len(await db.insert_files(batch)) == 600
    total, _ = await db.search(SearchQuery(tags=("t3",), limit=1))
    assert total == len([i for i in range(600) if i % 7 == 3])


async def test_batches_and_filtered_word_searches_are_planned_for_their_arguments(pg_url: str) -> None:
    # From a prepared statement's sixth run on, PostgreSQL may plan it without its
    # arguments: a batch's arrays taken for 10 rows, joined by nested loops (5,000 files
    # took 20 s instead of 1.5 s). Such statements are prepared for their one run; so are
    # searches by words and other filters, whose best plan depends on how common the word is.
    async with open_postgres(pg_url, max_connections=1) as one:  # (one session to look at)
        await one.migrate()
        for batch in range(8):
            files = [
                rec(f"b{batch}/{i}.txt", f"s{batch}-{i}", purpose="nightly report", owner="gates")
                for i in range(50)
            ]
            assert len(await one.insert_files(files)) == 50
            total, _ = await one.search(SearchQuery(purpose="nightly", owner="gates"))
            assert total == 50 * (batch + 1)
        row = await one._source.run(
            _fetchrow,
            "SELECT count(*) AS statements, coalesce(sum(generic_plans), 0) AS generic "
            "FROM pg_prepared_statements WHERE (statement LIKE '%WITH ORDINALITY AS t(id, file_path%' "
            "OR statement LIKE '%words @@%') AND statement NOT LIKE '%pg_prepared_statements%'",
        )
        assert row is not None
        assert row["generic"] == 0


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


async def test_a_search_by_words_alone_reads_the_way_its_count_chooses_in_one_plan_for_all(
    db: PostgresBackend,
) -> None:
    # One prepared plan serves every word (no planning per search); the count, as the
    # statement runs, chooses between reading the files in page order until the page is
    # full (a common word) and reading every match through the words' index (a rare one).
    # (enough files, analyzed, that the planner would rather use an index than read them all)
    files = [
        rec(f"common/{i}.txt", f"c{i}", purpose="nightly report" if i % 4 else "weekly", when=i, size=i)
        for i in range(4000)
    ]
    files.append(rec("rare/zebra.txt", "z", purpose="nightly zebra", when=5000))
    await db.insert_files(files)
    await db._source.run(_execute, "ANALYZE")

    async def run_generic(conn: Conn, query: SearchQuery) -> tuple[dict[str, Any], list[Any]]:
        sql, params, one_plan = _search_sql(query)
        assert one_plan
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE words_alone AS {sql}")
        try:
            # (EXECUTE takes no parameters: its arguments as literals)
            literals = await conn.fetchval(
                "SELECT string_agg(quote_literal(v), ', ' ORDER BY n) FROM unnest($1::text[]) "
                "WITH ORDINALITY AS a(v, n)",
                [str(v) for v in params],
            )
            execute = f"EXECUTE words_alone({literals})"
            (plan,) = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {execute}"))
            return plan["Plan"], list(await conn.fetch(execute))
        finally:
            await conn.execute("DEALLOCATE words_alone; RESET plan_cache_mode")

    def ways(plan: dict[str, Any]) -> tuple[bool, bool]:
        """Whether the way in page order ran, and whether the way through the index did."""
        ran = {
            # (matches² > reach x files, or its NOT, which PostgreSQL shows as <=)
            " <= " in node["One-Time Filter"]: node["Plans"][0]["Actual Loops"] > 0
            for node in _plan_nodes(plan)
            if "One-Time Filter" in node
        }
        assert len(ran) == 2, ran
        return ran[False], ran[True]

    def index_loops(plan: dict[str, Any], index: str) -> int:
        return sum(n["Actual Loops"] for n in _plan_nodes(plan) if n.get("Index Name") == index)

    for sort_by, ordered_index in (
        (SortKey.CREATED_AT, "horace_files_status_created"),
        (SortKey.UPDATED_AT, "horace_files_status_updated"),
        (SortKey.SIZE, "horace_files_status_size"),
        (SortKey.PATH, "horace_files_file_path_key"),
    ):
        plan, rows = await db._source.run(
            run_generic, SearchQuery(purpose="report", sort_by=sort_by, limit=20)
        )
        assert rows[0]["total"] == 3000 and len(rows) == 20
        assert ways(plan) == (True, False), sort_by
        assert index_loops(plan, ordered_index) > 0 and index_loops(plan, "horace_files_words") == 0

        plan, rows = await db._source.run(
            run_generic, SearchQuery(purpose="zebra", sort_by=sort_by, limit=20)
        )
        assert [(r["total"], r["file_path"]) for r in rows] == [(1, "rare/zebra.txt")]
        assert ways(plan) == (False, True), sort_by
        assert index_loops(plan, ordered_index) == 0


# -- versions --------------------------------------------------------------------------------


async def test_add_version_numbers_prunes_and_reports_orphans(db: PostgresBackend) -> None:
    f = rec("doc.md", "v1")
    other = rec("other.md", "shared")
    await db.insert_files([f, other])
    keep2 = Retention(keep=2)

    rec2, v2, orphans = await db.add_version(f.id, new("shared"), at(10), "c2", keep2)
    assert (v2.version, v2.checksum, v2.size, v2.correlation_id) == (2, "shared", 20, "c2")
    assert (rec2.current_version, rec2.checksum, rec2.size, rec2.updated_at) == (
        2,
        "shared",
        20,
        at(10),
    )
    assert rec2.created_at == T0 and orphans == []

    # v3 prunes v1 (checksum v1: nobody else has it)
    _, v3, orphans = await db.add_version(f.id, new("v3"), at(20), None, keep2)
    assert v3.version == 3 and orphans == ["v1"]
    # v4 prunes v2 ("shared": other.md still refers to it)
    _, _, orphans = await db.add_version(f.id, new("v3"), at(30), None, keep2)
    assert orphans == []
    # v5 = v3's content again: pruning v3 leaves "v3" referenced by v4 and v5
    _, _, orphans = await db.add_version(f.id, new("v3"), at(40), None, keep2)
    assert orphans == []
    # v6 with new content prunes v4 ("v3", still in v5)
    _, v6, orphans = await db.add_version(f.id, new("v6"), at(50), None, keep2)
    assert orphans == [] and v6.version == 6
    assert [v.version for v in await db.versions(f.id)] == [6, 5]
    # v7 prunes v5: "v3" has no row any more
    _, _, orphans = await db.add_version(f.id, new("v6"), at(60), None, keep2)
    assert orphans == ["v3"]
    # pruning a version whose checksum the new version brings back is no orphan
    _, _, orphans = await db.add_version(f.id, new("v6"), at(70), None, keep2)
    assert orphans == [] and [v.version for v in await db.versions(f.id)] == [8, 7]
    assert (await db.version(f.id, 7)) is not None
    assert (await db.version(f.id, 6)) is None


async def test_add_version_respects_min_age_and_sets_status(db: PostgresBackend) -> None:
    f = rec("x.txt", "a")
    await db.insert_files([f])
    young = Retention(keep=1, min_age_seconds=100)
    await db.add_version(f.id, new("b"), at(50), None, young)
    _, _, orphans = await db.add_version(f.id, new("c"), at(90), None, young)
    # v1 (T0) is 90 s old: kept; v2 (50) too
    assert orphans == [] and [v.version for v in await db.versions(f.id)] == [3, 2, 1]
    record, _, orphans = await db.add_version(f.id, new("d"), at(150), None, young, "archived")
    # cutoff 50: v1 and v2 (created exactly at the cutoff) go, v3 stays (too young)
    assert sorted(orphans) == ["a", "b"]
    assert [v.version for v in await db.versions(f.id)] == [4, 3]
    assert record.status is Status.ARCHIVED and record.mime_type == "text/plain"

    with pytest.raises(LookupError):
        await db.add_version(str(uuid.uuid4()), new("e"), at(200), None, young)
    with pytest.raises(LookupError):
        await db.add_version("not-a-uuid", new("e"), at(200), None, young)


# -- updating --------------------------------------------------------------------------------


async def test_update_file(db: PostgresBackend) -> None:
    f = rec("u.txt", "a", tags=("old",), owner="o", purpose="p", metadata={"a": 1, "b": 2})
    await db.insert_files([f])

    r = await db.update_file(f.id, FileChanges(tags=("n1", "n2"), custom={"b": 3, "c": {"d": 4}}), at(1))
    assert r is not None
    assert r.tags == ("n1", "n2") and r.metadata == {"a": 1, "b": 3, "c": {"d": 4}}
    assert (r.owner, r.purpose, r.updated_at, r.status) == ("o", "p", at(1), Status.ACTIVE)

    r = await db.update_file(f.id, FileChanges(status=Status.DELETED, owner="x"), at(2))
    assert r is not None and r.status is Status.DELETED and r.deleted_at == at(2) and r.owner == "x"
    r = await db.update_file(f.id, FileChanges(status=Status.DELETED), at(3))
    assert r is not None and r.deleted_at == at(2)  # unchanged status keeps deleted_at
    r = await db.update_file(f.id, FileChanges(status=Status.ACTIVE, tags=()), at(4))
    assert r is not None and r.deleted_at is None and r.tags == ()
    assert r.metadata == {"a": 1, "b": 3, "c": {"d": 4}}

    r = await db.update_file(f.id, FileChanges(collection="c1"), at(5))
    assert r is not None
    r = await db.update_file(f.id, FileChanges(collection="c1"), at(6))  # already a member
    found = await db.get_collection("c1", 10, 0)
    assert found is not None
    coll, members = found
    assert (coll.created_at, coll.updated_at, coll.member_count) == (at(5), at(6), 1)
    assert [m.id for m in members] == [f.id]

    assert await db.update_file(str(uuid.uuid4()), FileChanges(owner="x"), at(7)) is None
    assert await db.update_file("not-a-uuid", FileChanges(owner="x"), at(7)) is None
    assert await db.update_file(f.id.upper(), FileChanges(owner="x"), at(7)) is None


async def test_move_files(db: PostgresBackend) -> None:
    f, g, h = rec("old/name.txt", "a"), rec("taken.txt", "b"), rec("old/other.txt", "c")
    await db.insert_files([f, g, h])
    [moved] = await db.move_files([(f.id, "new/name.txt", None)], at(5))
    assert moved is not None and moved.file_path == "new/name.txt" and moved.updated_at == at(5)
    assert await db.file_by_path("old/name.txt") is None
    there = WorkingStat(size=1, mtime_ns=2, ctime_ns=3, inode=2**63 + 4, device=5, recorded_ns=6, mode=0o640)
    # A path taken, an unknown id and a malformed one fail alone; the others move together.
    done = await db.move_files(
        [
            (f.id, "taken.txt", None),
            (str(uuid.uuid4()), "free.txt", None),
            ("nope", "free.txt", None),
            (h.id, "new/other.txt", there),
        ],
        at(6),
    )
    assert done[:3] == [None, None, None] and done[3] is not None and done[3].file_path == "new/other.txt"
    entry = await db.index_entry(h.id)
    assert entry is not None and entry.working == attrs.evolve(there, mode=None)  # (mode: kept apart)
    [same] = await db.move_files([(f.id, "new/name.txt", None)], at(7))
    assert same is not None and same.updated_at == at(7)
    assert await db.move_files([], at(8)) == []


async def test_malformed_ids_are_not_found(db: PostgresBackend) -> None:
    f = rec("m.txt", "a")
    await db.insert_files([f])
    for bad in ("not-a-uuid", "", f.id.upper(), f.id.replace("-", "")):
        assert await db.file_by_id(bad) is None
        assert await db.versions(bad) == []
        assert await db.version(bad, 1) is None
        assert await db.repair_current(bad) is None
        await db.delete_version(bad, 1)
    assert await db.missing_file_ids(["not-a-uuid", f.id, f.id.upper(), f.id]) == [
        "not-a-uuid",
        f.id.upper(),
    ]
    c = await db.upsert_collection("c", None, None, ["nope", f.id], at(1))
    assert c.member_count == 1
    c2 = await db.remove_members("c", ["nope"], at(2))
    assert c2 is not None and c2.member_count == 1


# -- searching -------------------------------------------------------------------------------


async def seed_search(db: PostgresBackend) -> dict[str, FileRecord]:
    files = {
        "a": rec(
            "gates/report.md",
            "s1",
            when=1,
            size=100,
            tags=("red", "blue"),
            owner="gates",
            purpose="Quarterly REPORT",
            mime="text/markdown",
            correlation_id="k1",
        ),
        "b": rec(
            "gates/data_1.csv",
            "s2",
            when=2,
            size=5000,
            tags=("red",),
            owner="gates",
            purpose="raw 100% data",
            mime="text/csv",
        ),
        "c": rec(
            "playfair/chart.PNG",
            "s3",
            when=3,
            size=300,
            tags=("green",),
            owner="playfair",
            mime="image/png",
        ),
        "d": rec(
            "playfair/chart2.png",
            "s4",
            when=4,
            size=300,
            tags=("blue",),
            owner="playfair",
            mime="image/png",
        ),
        "e": rec("user/notes [draft].txt", "s5", when=5, size=1, owner="user"),
        "f": rec("user/Ärger.txt", "s6", when=6, size=2, owner="user", purpose="ärger"),
        "g": rec("user/old.txt", "s7", when=7, size=3, owner="user"),
    }
    await db.insert_files(list(files.values()))
    await db.update_file(files["g"].id, FileChanges(status=Status.DELETED), at(8))
    await db.update_file(files["d"].id, FileChanges(status=Status.ARCHIVED), at(9))
    await db.upsert_collection("charts", None, None, [files["c"].id, files["d"].id], at(10))
    return files


def keys(files: dict[str, FileRecord], page: list[FileRecord]) -> set[str]:
    by_id = {f.id: k for k, f in files.items()}
    return {by_id[r.id] for r in page}


async def test_search_filters(db: PostgresBackend) -> None:
    files = await seed_search(db)
    any_status = {"status": None}
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"a", "b", "c", "e", "f"}),
        (any_status, set("abcdefg")),
        ({"status": Status.DELETED}, {"g"}),
        ({"status": Status.ARCHIVED}, {"d"}),
        ({"tags": ("red",)}, {"a", "b"}),
        ({"tags": ("red", "blue")}, {"a"}),
        ({"any_tags": ("green", "blue"), **any_status}, {"a", "c", "d"}),
        ({"owner": "playfair", **any_status}, {"c", "d"}),
        ({"purpose": "report"}, {"a"}),
        ({"purpose": "QUART"}, {"a"}),  # words start with the query's words
        ({"purpose": "uarterly"}, set()),  # ... not merely contain them
        ({"purpose": "100%"}, {"b"}),
        ({"purpose": "0_"}, set()),  # _ separates words; no word starts with 0
        ({"purpose": "data"}, {"b"}),  # the path's words too: gates/data_1.csv
        ({"purpose": "gates md"}, {"a"}),  # every word, from the purpose or the path
        ({"purpose": "äRGER"}, {"f"}),  # ASCII case folding only
        ({"purpose": "ÄRGER"}, {"f"}),  # (the path's "Ärger")
        ({"purpose": "%"}, set()),  # no word: nothing
        ({"path": "gates/*"}, {"a", "b"}),
        ({"path": "*.png"}, set()),  # GLOB is case-sensitive
        ({"path": "*.png", **any_status}, {"d"}),
        ({"path": "playfair/chart?.png", **any_status}, {"d"}),
        ({"path": "gates/data_?.csv"}, {"b"}),
        ({"path": "gates/data%"}, set()),  # % is no wildcard
        ({"path": "gates/report.md"}, {"a"}),
        ({"path": "*[[]draft]*"}, {"e"}),
        ({"path": "playfair/chart[0-9].png", **any_status}, {"d"}),
        ({"path": "playfair/chart[^0-9].PNG"}, set()),
        ({"path": "playfair/chart.[P]NG"}, {"c"}),
        ({"path": "user/[!Ä]*"}, {"f"}),  # '!' is a member, not a negation, in GLOB
        ({"path": "user/[^n]*"}, {"f"}),
        ({"path": "user/[a-zÄ]*", **any_status}, {"e", "f", "g"}),
        ({"path": "user/[z-a]*"}, set()),  # "[z]"
        ({"path": "user/[abc"}, set()),  # unclosed class matches nothing
        ({"path": "*/*"}, {"a", "b", "c", "e", "f"}),
        ({"path": "gates/*\x00"}, set()),  # no path holds NUL
        ({"collection": "charts", **any_status}, {"c", "d"}),
        ({"collection": "nope"}, set()),
        ({"file_type": "image/png", **any_status}, {"c", "d"}),
        ({"file_type": "text/*"}, {"a", "b", "e", "f"}),
        ({"file_type": "png", **any_status}, {"c", "d"}),  # extension, case-insensitive
        ({"file_type": ".CSV"}, {"b"}),
        ({"min_size": 300}, {"b", "c"}),
        ({"max_size": 100}, {"a", "e", "f"}),
        ({"min_size": 2, "max_size": 300}, {"a", "c", "f"}),
        ({"created_after": at(3)}, {"c", "e", "f"}),
        ({"created_before": at(3)}, {"a", "b"}),
        ({"checksum": "s5"}, {"e"}),
        ({"correlation_id": "k1"}, {"a"}),
    ]
    for filters, expected in cases:
        total, page = await db.search(SearchQuery(limit=100, **filters))
        assert keys(files, page) == expected, filters
        assert total == len(expected), filters


async def test_search_total_with_an_empty_page(db: PostgresBackend) -> None:
    await seed_search(db)
    assert await db.search(SearchQuery(offset=50)) == (5, [])
    assert await db.search(SearchQuery(owner="nobody")) == (0, [])


@pytest.mark.parametrize("sort_by", list(SortKey))
@pytest.mark.parametrize("order", list(Order))
async def test_search_keyset_pages(db: PostgresBackend, sort_by: SortKey, order: Order) -> None:
    # many ties in every sort column, so that the id decides
    batch = [rec(f"k/{i % 5}/{i:03}", f"k{i}", when=i % 4, size=i % 3) for i in range(40)]
    await db.insert_files(batch)
    column = {
        SortKey.CREATED_AT: "created_at",
        SortKey.UPDATED_AT: "updated_at",
        SortKey.SIZE: "size",
        SortKey.PATH: "file_path",
    }[sort_by]
    _, everything = await db.search(SearchQuery(limit=1000, sort_by=sort_by, order=order))
    expected = sorted(batch, key=lambda r: (getattr(r, column), r.id), reverse=order is Order.DESC)
    assert [r.id for r in everything] == [r.id for r in expected]

    seen: list[FileRecord] = []
    after = None
    while True:
        total, page = await db.search(SearchQuery(limit=7, sort_by=sort_by, order=order, after=after))
        assert total == 40
        if not page:
            break
        seen.extend(page)
        last = page[-1]
        after = (getattr(last, column), last.id)
    assert [r.id for r in seen] == [r.id for r in expected]

    _, offset_page = await db.search(SearchQuery(limit=5, offset=10, sort_by=sort_by, order=order))
    assert [r.id for r in offset_page] == [r.id for r in expected[10:15]]


async def test_search_position_of_the_wrong_type(db: PostgresBackend) -> None:
    with pytest.raises(ValueError):
        await db.search(SearchQuery(sort_by=SortKey.SIZE, after=("big", str(uuid.uuid4()))))
    # a malformed id in a position is a position, not an error
    await db.search(SearchQuery(sort_by=SortKey.SIZE, after=(3, "zzz")))


def test_glob_translation() -> None:
    assert _Glob("a/b.txt").exact == "a/b.txt"
    g = _Glob("a_%/*.t?t")
    assert (g.prefix, g.like) == ("a_%/", "a\\_\\%/%.t_t")
    assert _glob_regex("[abc") is None
    assert _glob_regex("[z-a]") == "^[z]$"  # SQLite: the low end is still a member
    assert _Glob("a[b").never


async def test_glob_matches_sqlite_glob() -> None:
    """Random patterns over an awkward alphabet: PostgreSQL (as translated) and SQLite's
    GLOB agree on every string."""
    rnd = random.Random(7)
    chars = "ab-^]zé%_\\!["
    strings = sorted({"".join(rnd.choices(chars, k=rnd.randint(0, 4))) for _ in range(150)})

    def piece(ch: str) -> str:
        other = "".join(rnd.choices(chars, k=rnd.randint(0, 2)))
        return rnd.choice(
            [
                ch,
                ch,
                "?",
                "*",
                f"[{other}{ch}]",
                f"[^{other}]",
                f"[{ch}-{rnd.choice(chars)}]",
                f"[{rnd.choice(chars)}-{ch}{other}]",
                f"[{other}",
            ]
        )

    # patterns made from the strings (so that many match) and plain random ones
    patterns = {"".join(map(piece, rnd.choice(strings))) for _ in range(300)}
    patterns |= {"".join(rnd.choices(chars + "*?[", k=rnd.randint(1, 6))) for _ in range(200)}
    lite = sqlite3.connect(":memory:")
    cases = []
    for pattern in sorted(patterns):
        glob = _Glob(pattern)
        kind, param = (
            ("never", "")
            if glob.never
            else ("exact", glob.exact)
            if glob.exact is not None
            else ("like", glob.like)
            if glob.like is not None
            else ("regex", glob.regex)
        )
        upper = prefix_end(glob.prefix) if glob.prefix else None
        for text in sorted(strings):
            want = bool(lite.execute("SELECT ? GLOB ?", (text, pattern)).fetchone()[0])
            cases.append((pattern, text, kind, param, glob.prefix, upper, want))

    async def evaluate() -> list[bool]:
        conn = await asyncpg.connect(PG_DSN)
        try:
            rows = await conn.fetch(
                """
                SELECT (s >= p OR p = '') AND (u IS NULL OR s < u) AND CASE k  -- s is "C"
                    WHEN 'exact' THEN s = x WHEN 'like' THEN s LIKE x
                    WHEN 'regex' THEN s ~ x ELSE false END AS hit
                FROM (SELECT s COLLATE "C" AS s, k, x, p, u, n FROM unnest(
                    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[]
                ) WITH ORDINALITY AS t(s, k, x, p, u, n)) t
                ORDER BY n
                """,
                [c[1] for c in cases],
                [c[2] for c in cases],
                [c[3] for c in cases],
                [c[4] for c in cases],
                [c[5] for c in cases],
            )
        finally:
            await conn.close()
        return [r["hit"] for r in rows]

    got = await trio.to_thread.run_sync(lambda: asyncio.run(evaluate()))
    wrong = [(c[0], c[1], c[6]) for c, hit in zip(cases, got, strict=True) if hit != c[6]]
    assert not wrong, wrong[:20]
    assert sum(got) > 1000  # the patterns are not trivial


# -- duplicates, collections, maintenance ---------------------------------------------------


async def test_find_duplicates(db: PostgresBackend) -> None:
    a1, a2 = rec("a1", "A", size=5), rec("a2", "A", size=5, when=1)
    b1, b2 = rec("b1", "B", size=9), rec("b2", "B", size=9)
    c1 = rec("c1", "C")
    await db.insert_files([a1, c1])
    await db.insert_files([b1])
    # duplicates arise when content changes to match another file's
    tmp = [rec("a2", "tmp-a2", when=1), rec("b2", "tmp-b2"), rec("d", "tmp-d")]
    await db.insert_files(tmp)
    await db.add_version(tmp[0].id, new("A", 5), at(5), None, Retention())
    await db.add_version(tmp[1].id, new("B", 9), at(5), None, Retention())
    await db.add_version(tmp[2].id, new("C", 10), at(5), None, Retention())
    await db.update_file(tmp[2].id, FileChanges(status=Status.DELETED), at(6))
    groups = await db.find_duplicates(10, 0, 100)
    assert [(g.checksum, g.size, g.file_count) for g in groups] == [("B", 9, 2), ("A", 5, 2)]
    b_ids = sorted([b1.id, tmp[1].id])  # same created_at: by id
    assert [f.id for f in groups[0].files] == b_ids
    assert [f.id for f in groups[1].files] == [a1.id, tmp[0].id]
    assert [g.checksum for g in await db.find_duplicates(1, 0, 100)] == ["B"]
    [second] = await db.find_duplicates(1, 1, 1)
    assert (second.checksum, second.file_count, [f.id for f in second.files]) == ("A", 2, [a1.id])
    assert await db.find_duplicates(10, 2, 100) == []
    del a2, b2


async def test_collections(db: PostgresBackend) -> None:
    f1, f2, f3 = rec("1", "1", when=1), rec("2", "2", when=2), rec("3", "3", when=3)
    await db.insert_files([f1, f2, f3])
    c = await db.upsert_collection("b-coll", "first", {"x": 1}, [f2.id, f1.id, f2.id], at(10))
    assert c == Collection("b-coll", "first", {"x": 1}, at(10), at(10), 2)
    c = await db.upsert_collection("b-coll", None, None, [f3.id, f1.id], at(11))
    assert c == Collection("b-coll", "first", {"x": 1}, at(10), at(11), 3)
    c = await db.upsert_collection("b-coll", "second", {"y": 2}, [], at(12))
    assert (c.description, c.metadata, c.member_count) == ("second", {"y": 2}, 3)
    await db.upsert_collection("a-coll", None, None, [], at(13))
    await db.upsert_collection("C-coll", None, None, [], at(13))

    total, page = await db.list_collections(2, 0)
    assert total == 3 and [x.name for x in page] == ["C-coll", "a-coll"]  # code point order
    total, page = await db.list_collections(2, 2)
    assert total == 3 and [(x.name, x.member_count) for x in page] == [("b-coll", 3)]
    assert await db.list_collections(5, 10) == (3, [])

    found = await db.get_collection("b-coll", 2, 0)
    assert found is not None
    coll, members = found
    assert coll.member_count == 3
    # added_at order: f2 and f1 at 10 (by id), then f3 at 11
    first_two = sorted([f1.id, f2.id])
    assert [m.id for m in members] == first_two
    found = await db.get_collection("b-coll", 2, 2)
    assert found is not None and [m.id for m in found[1]] == [f3.id]
    found = await db.get_collection("b-coll", 2, 5)
    assert found is not None and found[1] == [] and found[0].member_count == 3
    assert await db.get_collection("nope", 5, 0) is None

    c2 = await db.remove_members("b-coll", [f1.id, f1.id, str(uuid.uuid4())], at(20))
    assert c2 is not None and c2.member_count == 2 and c2.updated_at == at(20)
    c2 = await db.add_members("b-coll", [f1.id, f2.id, str(uuid.uuid4())], at(21))
    assert c2 is not None and c2.member_count == 3 and c2.updated_at == at(21)
    assert await db.add_members("nope", [f1.id], at(22)) is None
    assert await db.remove_members("nope", [f1.id], at(22)) is None

    assert await db.delete_collection("b-coll") is True
    assert await db.delete_collection("b-coll") is False
    assert await db.file_by_id(f1.id) is not None
    assert await db.missing_file_ids([f1.id, "x"]) == ["x"]


async def test_maintenance_units(db: PostgresBackend) -> None:
    f, g = rec("f", "a"), rec("g", "b")
    await db.insert_files([f, g])
    await db.add_version(f.id, new("c"), at(1), None, Retention())
    await db.add_version(f.id, new("d"), at(2), None, Retention())
    assert await db.unreferenced(["a", "zz", "d", "zz", "b", "yy"]) == ["yy", "zz"]
    assert await db.unreferenced([]) == []
    assert {r.id for r in await db.all_files()} == {f.id, g.id}
    assert sorted((v.file_id == f.id, v.version) for v in await db.all_versions()) == [
        (False, 1),
        (True, 1),
        (True, 2),
        (True, 3),
    ]

    await db.delete_version(f.id, 3)
    fixed = await db.repair_current(f.id)
    assert fixed is not None and (fixed.current_version, fixed.checksum, fixed.size) == (2, "c", 20)
    await db.delete_version(g.id, 1)
    same = await db.repair_current(g.id)  # no versions left: unchanged
    assert same is not None and (same.current_version, same.checksum) == (1, "b")
    assert await db.repair_current(str(uuid.uuid4())) is None


async def test_purge_deleted(db: PostgresBackend) -> None:
    old, recent, alive = rec("old", "o1"), rec("recent", "r1"), rec("alive", "shared")
    await db.insert_files([old, recent, alive])
    await db.add_version(old.id, new("shared"), at(1), None, Retention())
    await db.add_version(old.id, new("o3"), at(2), None, Retention())
    await db.upsert_collection("c", None, None, [old.id, alive.id], at(3))
    await db.update_file(old.id, FileChanges(status=Status.DELETED), at(10))
    await db.update_file(recent.id, FileChanges(status=Status.DELETED), at(100))

    assert await db.purge_deleted(at(10)) == (0, [])  # strictly before the cutoff
    purged, orphans = await db.purge_deleted(at(50))
    assert (purged, orphans) == (1, ["o1", "o3"])  # "shared" is alive's too
    assert await db.file_by_id(old.id) is None and await db.versions(old.id) == []
    found = await db.get_collection("c", 10, 0)
    assert found is not None and found[0].member_count == 1
    assert await db.purge_deleted(at(1000)) == (1, ["r1"])


async def test_add_version_without_the_lock_still_numbers_uniquely(db: PostgresBackend) -> None:
    f = rec("busy.txt", "s0")
    await db.insert_files([f])

    async def write(i: int) -> None:
        await db.add_version(f.id, new(f"s{i}"), at(i), None, Retention(keep=100))

    async with trio.open_nursery() as nursery:
        for i in range(1, 16):
            nursery.start_soon(write, i)
    assert [v.version for v in await db.versions(f.id)] == list(range(16, 0, -1))
    stored = await db.file_by_id(f.id)
    assert stored is not None and stored.current_version == 16


# -- conversations ----------------------------------------------------------------------------


def turn(cid: str, n: int, content: str = "hi", role: str = "user") -> Turn:
    return Turn(cid, n, role, content, "m", 1, 2, 3.5, {"k": "v"}, at(n))


async def test_insert_turns(db: PostgresBackend) -> None:
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    assert await db.insert_turns([turn(c1, 1), turn(c1, 2, "answer", "assistant")]) == []
    clash = turn(c1, 2, "other answer", "assistant")
    batch = [
        turn(c1, 1),  # retried delivery: fine
        clash,  # same key, other content: reported
        turn(c2, 1, "x"),
        turn(c2, 1, "x"),  # same content twice in one batch: fine
        again := turn(c2, 1, "y"),  # different content after it in the batch: reported
        bad := turn("not-a-uuid", 1),
    ]
    assert await db.insert_turns(batch) == [clash, again, bad]
    assert await db.insert_turns([]) == []


# -- the lock --------------------------------------------------------------------------------


async def test_exclusive_excludes_and_runs_units_on_the_held_connection(pg_url: str) -> None:
    # One connection in the pool: a unit under the lock that acquired from the pool
    # would wait forever.
    async with open_postgres(pg_url, max_connections=1) as one:
        await one.migrate()
        f = rec("locked.txt", "a")
        with trio.fail_after(5):
            async with one.exclusive(7) as units:
                await units.insert_files([f])
                assert await units.file_by_id(f.id) is not None
                await units.add_version(f.id, new("b"), at(1), None, Retention())
        assert (await one.file_by_id(f.id)) is not None

    async with open_postgres(pg_url) as a, open_postgres(pg_url) as b:
        log: list[str] = []
        entered = trio.Event()

        async def first() -> None:
            async with a.exclusive(42):
                log.append("first in")
                entered.set()
                await trio.sleep(0.3)
                log.append("first out")

        async def second() -> None:
            await entered.wait()
            async with b.exclusive(42):
                log.append("second in")

        async def other_key() -> None:
            await entered.wait()
            with trio.fail_after(0.2):  # a different key does not wait
                async with b.exclusive(43):
                    log.append("other key")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                nursery.start_soon(second)
                nursery.start_soon(other_key)
        assert log == ["first in", "other key", "first out", "second in"]


async def test_exclusive_wait_is_cancellable(pg_url: str) -> None:
    async with (
        open_postgres(pg_url, max_connections=2) as a,
        open_postgres(pg_url, max_connections=2) as b,
    ):
        await a.migrate()
        async with a.exclusive(5):
            for _ in range(5):  # each cancelled wait gives its connection back
                with trio.move_on_after(0.1) as waited:
                    async with b.exclusive(5):
                        pytest.fail("entered a held lock")
                assert waited.cancelled_caught
        with trio.fail_after(2):
            async with b.exclusive(5) as units:
                assert await units.file_by_path("x") is None


async def test_exclusive_unit_cancelled_mid_statement_releases_the_lock(pg_url: str) -> None:
    async with open_postgres(pg_url) as a, open_postgres(pg_url) as b:
        await a.migrate()
        with trio.move_on_after(0.3) as interrupted:
            async with a.exclusive(9) as units:
                held = units._source  # type: ignore[attr-defined]
                await held.run(_fetchrow, "SELECT pg_sleep(30)")
        assert interrupted.cancelled_caught
        with trio.fail_after(5):
            async with b.exclusive(9):
                pass
        with trio.fail_after(5):
            async with a.exclusive(9) as units:
                assert await units.file_by_path("nothing") is None
        with pytest.raises(RuntimeError):
            await units.file_by_path("nothing")  # the block is over


async def test_exclusive_try_interrupted_mid_statement(pg_url: str) -> None:
    # Cancel while pg_try_advisory_lock is on the wire, at many points in time: the lock
    # must never stay behind.
    async with open_postgres(pg_url, max_connections=3) as a, open_postgres(pg_url) as b:
        for i in range(60):
            with trio.move_on_after(i * 0.0001):
                async with a.exclusive(11):
                    await trio.lowlevel.checkpoint()
            with trio.fail_after(5):
                async with b.exclusive(11):
                    pass


# -- availability ----------------------------------------------------------------------------


async def test_unreachable_server_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="unavailable"):
        async with open_postgres("postgresql://nobody:secret@127.0.0.1:1/nothing", connect_timeout=2):
            pass
    with pytest.raises(BackendUnavailable) as refused:
        async with open_postgres("postgresql://nobody:secret@127.0.0.1:1/x", connect_timeout=2):
            pass
    assert "secret" not in str(refused.value) and "127.0.0.1:1" in str(refused.value)


async def test_an_unreachable_server_is_named_where_the_url_and_the_environment_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket's folder and port in the URL's query, or in PGHOST and PGPORT: the message
    names them, not the default localhost:5432 the URL's netloc alone would give."""
    sockets = tmp_path / "no-server-here"
    sockets.mkdir()
    with pytest.raises(BackendUnavailable) as refused:
        async with open_postgres(
            f"postgresql://nobody:secret@/nothing?host={sockets}&port=47123", connect_timeout=2
        ):
            pass
    assert f"{sockets}:47123/nothing" in str(refused.value) and "secret" not in str(refused.value)
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", "1")
    monkeypatch.setenv("PGDATABASE", "elsewhere")
    with pytest.raises(BackendUnavailable) as refused:
        async with open_postgres("postgresql://nobody@", connect_timeout=2):
            pass
    assert "127.0.0.1:1/elsewhere" in str(refused.value)


async def test_a_url_of_several_servers_is_served_by_the_first_that_answers(pg_url: str) -> None:
    """libpq's list of servers (``host1:port1,host2:port2``), as asyncpg takes it: the dead
    first one is passed over; each bad port of the list is said as such."""
    parts = urlsplit(pg_url)
    user = parts.netloc.rpartition("@")[0]
    several = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:1,{parts.hostname}:{parts.port}"))
    async with open_postgres(several, connect_timeout=5) as backend:
        await backend._source.run(_fetchrow, "SELECT 1")
    assert url_problem(several) is None
    assert "the port 'x' is not a port number" in str(url_problem("postgresql://u@db1:5432,db2:x/horace"))
    for empty in ("postgresql://u@db1:5432,/horace", "postgresql://u@,db2:5432/horace"):
        assert "an empty server in the list" in str(url_problem(empty))


async def test_lost_connections_are_backend_unavailable(pg_url: str) -> None:
    kill = kill_sessions(pg_url)
    async with open_postgres(pg_url, max_connections=2) as backend:
        await backend.migrate()
        await backend.ping()
        # idle connections that died are replaced by the pool unnoticed
        await trio.to_thread.run_sync(admin, kill)
        await trio.sleep(0.1)
        assert await backend.file_by_path("x") is None
        # a connection lost under a running statement is BackendUnavailable
        async with trio.open_nursery() as nursery:

            async def killer() -> None:
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(admin, kill)

            nursery.start_soon(killer)
            with pytest.raises(BackendUnavailable, match="unavailable") as lost:
                await backend._source.run(_fetchrow, "SELECT pg_sleep(10)")
        assert lost.value.in_doubt  # (a COMMIT lost so: kept or not, none can say)
        await trio.sleep(0.1)  # (the other, idle, connection's end is seen, as above)
        await backend.ping()  # and the pool recovers
        await backend.aclose()
        with pytest.raises(BackendUnavailable, match="unavailable") as closed:
            await backend.file_by_path("x")
        assert not closed.value.in_doubt  # (nothing was sent)
        with pytest.raises(BackendUnavailable):
            await backend.ping()


async def test_a_login_refused_under_a_running_backend_is_backend_unavailable(pg_url: str) -> None:
    """The role's login revoked (its password changed, alike) while Horace runs: each new
    connection is refused, which is BackendUnavailable (a tool error of that code, /health
    503), not a bug; the pool comes back once the login does. (The role has no tables:
    statements that need none.)"""
    role, as_role = new_role(pg_url)
    kill = kill_sessions(pg_url)
    await trio.to_thread.run_sync(admin, f"CREATE ROLE {role} LOGIN")
    try:
        async with open_postgres(as_role, max_connections=2) as backend:
            await backend._source.run(_fetchrow, "SELECT 1")
            await trio.to_thread.run_sync(admin, f"ALTER ROLE {role} NOLOGIN", kill)
            said: list[str] = []
            for _ in range(20):  # (until the pool has found its connections gone)
                try:
                    await backend._source.run(_fetchrow, "SELECT 1")
                except BackendUnavailable as exc:
                    said.append(str(exc))
                    if "refused the connection" in str(exc):
                        break
                    # (a connection killed under the pool, found dead before it was replaced)
                    assert "its connection was lost" in str(exc), said
                await trio.sleep(0.05)
            assert said and re.search(f'refused the connection: .*"{role}"', said[-1]), said
            await trio.to_thread.run_sync(admin, f"ALTER ROLE {role} LOGIN")
            await backend._source.run(_fetchrow, "SELECT 1")
    finally:
        await trio.to_thread.run_sync(admin, kill, f"DROP ROLE {role}")


async def test_a_database_the_role_may_not_connect_to_is_a_refused_login(pg_url: str) -> None:
    """CONNECT revoked from PUBLIC (a common hardening) and not granted: the login is
    refused, BackendUnavailable saying which GRANT is missing, not a table's privilege."""
    role, as_role = new_role(pg_url)
    await trio.to_thread.run_sync(admin, f"CREATE ROLE {role} LOGIN")
    try:
        async with scratch_database(as_role, "", "REVOKE CONNECT ON DATABASE {} FROM PUBLIC") as (
            database,
            elsewhere,
        ):
            with pytest.raises(BackendUnavailable, match=f"GRANT CONNECT ON DATABASE {database} TO {role}"):
                async with open_postgres(elsewhere, connect_timeout=5):
                    pass
    finally:
        await trio.to_thread.run_sync(admin, f"DROP ROLE {role}")


@asynccontextmanager
async def scratch_database(url: str, options: str, *then: str) -> AsyncIterator[tuple[str, str]]:
    """A database of its own made with *options* (and the statements *then*, each with
    ``{}`` for its name), dropped on exit: its name, and *url* leading to it."""
    database = f"d_{uuid.uuid4().hex[:12]}"
    await trio.to_thread.run_sync(
        admin, f"CREATE DATABASE {database} {options}".rstrip(), *(t.format(database) for t in then)
    )
    try:
        yield database, urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=""))
    finally:
        await trio.to_thread.run_sync(admin, f"DROP DATABASE {database}")


async def test_libpq_url_parameters(pg_url: str) -> None:
    """connect_timeout is libpq's, not a server setting (asyncpg would send it on, and the
    server refuse it); a parameter the server does not know is a bad URL, not a refusal."""
    async with open_postgres(with_query(pg_url, connect_timeout="5")) as backend:
        await backend._source.run(_fetchrow, "SELECT 1")
    with pytest.raises(UnusableURL, match=r"refused a setting the URL gives: .*no_such_setting"):
        async with open_postgres(with_query(pg_url, no_such_setting="1")):
            pass


async def test_a_url_that_names_no_database_takes_pgdatabase_as_libpq_does(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`postgresql://host/` (a path, but no database in it): PGDATABASE, as libpq takes
    it, not the user's name (asyncpg reads an empty path as a database named '')."""
    parts = urlsplit(pg_url)
    monkeypatch.setenv("PGDATABASE", parts.path.lstrip("/"))
    for path in ("/", ""):
        async with open_postgres(urlunsplit(parts._replace(path=path))) as backend:
            row = await backend._source.run(_fetchrow, "SELECT current_database()")
        assert row is not None and row[0] == parts.path.lstrip("/"), path


async def test_a_database_not_in_utf8_is_refused_by_name(pg_url: str) -> None:
    """Names, purposes and tags are Unicode: a LATIN1 (or SQL_ASCII) database would take
    some and fail others mid-scan; it is refused at the start, saying what it needs."""
    latin1 = "ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
    async with scratch_database(pg_url, latin1) as (_, elsewhere):
        with pytest.raises(UnusableURL, match=r"encoding is LATIN1.*needs a UTF8 database"):
            async with open_postgres(elsewhere, connect_timeout=5):
                pass


async def test_another_sessions_prepared_statement_is_said_to_be_a_pooler_in_transaction_mode(
    pg_url: str,
) -> None:
    """Behind PgBouncer in transaction mode, a connection meets the prepared statements of
    the other clients' sessions (asyncpg names them alike in every process): that is said
    as such (a configuration Horace cannot use), not an internal error."""
    import asyncpg.connection

    async def meets_another_sessions_statement(conn: Any) -> Any:
        upcoming = f"__asyncpg_stmt_{asyncpg.connection._uid + 1:x}__"  # (asyncpg's next name)
        await conn.execute(f'PREPARE "{upcoming}" AS SELECT 1')
        try:
            return await conn.fetchval("SELECT 2 + $1::integer", 1)
        finally:
            await conn.execute(f'DEALLOCATE "{upcoming}"')

    async with open_postgres(pg_url) as backend:
        with pytest.raises(UnusableURL, match="pooler in transaction mode"):
            await backend._source.run(meets_another_sessions_statement)


async def test_a_role_that_may_only_read_and_write_runs_an_up_to_date_catalog(pg_url: str) -> None:
    """Least privilege, as docs/postgres.md shows it: an owner makes the schema, the
    instances' role may only use the tables (no CREATE): its start makes nothing."""
    role, as_role = new_role(pg_url)
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    kill = kill_sessions(pg_url)
    async with open_postgres(pg_url) as owner:
        await owner.migrate()
    await trio.to_thread.run_sync(
        admin,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
    )
    try:
        async with open_postgres(as_role) as backend:
            assert await backend.migrate() == NEWEST_SCHEMA
            assert await backend.file_by_path("x") is None
            # and writes, through every table the triggers keep, and the upkeep
            f = rec("a/x.txt", "s1", purpose="weekly report", tags=("t",))
            await backend.insert_files([f])
            await backend.update_file(f.id, FileChanges(purpose="monthly report"), at(1))
            await backend.tidy()
            assert (await backend.search(SearchQuery(purpose="report")))[0] == 1
            assert (await backend.search(SearchQuery(purpose="weekly")))[0] == 0
    finally:
        await trio.to_thread.run_sync(admin, kill, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_units_wait_for_a_connection_when_postgresql_allows_no_more(pg_url: str) -> None:
    """Instances that share a connection budget (a role's CONNECTION LIMIT, the server's
    max_connections): when PostgreSQL refuses the pool a new connection, a unit waits for
    one of those the pool holds instead of failing; with none, the refusal stands."""
    role, as_role = new_role(pg_url)
    kill = kill_sessions(pg_url)
    await trio.to_thread.run_sync(admin, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    try:
        async with open_postgres(as_role, max_connections=10) as backend:
            done = []

            async def unit() -> None:
                await backend._source.run(_fetchrow, "SELECT pg_sleep(0.05)")
                done.append(1)

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(unit)
            assert len(done) == 12
        await trio.to_thread.run_sync(admin, f"ALTER ROLE {role} CONNECTION LIMIT 0")
        with pytest.raises(BackendUnavailable, match="too many connections") as refused:
            async with open_postgres(as_role, max_connections=10) as backend:
                await backend._source.run(_fetchrow, "SELECT 1")
        assert not refused.value.in_doubt
    finally:
        await trio.to_thread.run_sync(admin, kill, f"DROP ROLE {role}")


async def test_a_connection_lost_inside_an_exclusive_block_is_backend_unavailable(pg_url: str) -> None:
    """A held connection killed under a unit: asyncpg detaches it from its pool, and every
    later unit of the block, and giving it back, meet "released back to the pool": that is
    the connection lost (BackendUnavailable), never a bug, and the pool goes on."""
    kill = kill_sessions(pg_url, busy_only=True)
    async with open_postgres(pg_url, max_connections=2) as backend:
        await backend.migrate()
        with pytest.raises(BackendUnavailable, match="its connection was lost"):
            async with backend.exclusive(7) as units:  # (its end raises no InterfaceError)

                async def killer() -> None:
                    await trio.sleep(0.3)
                    await trio.to_thread.run_sync(admin, kill)

                with pytest.RaisesGroup(BackendUnavailable):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(killer)
                        await units._source.run(_fetchrow, "SELECT pg_sleep(10)")  # type: ignore[attr-defined]
                await units.file_by_path("x")  # on the connection lost
        async with backend.exclusive(7) as units:  # the lock went with the session
            assert await units.file_by_path("x") is None


async def test_a_block_whose_work_is_done_ends_well_when_its_lock_cannot_be_released(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session is lost at the unlock, after the block's last unit (a restore recorded):
    the work stands, and the block's end is no error (the session's end released its
    lock), so no caller is told its recorded work failed."""
    import horace.backends.postgres as postgres_backend

    cid = str(uuid.uuid4())
    async with open_postgres(pg_url, max_connections=2) as backend:
        await backend.migrate()
        monkeypatch.setattr(  # the unlock meets its session's end
            postgres_backend, "_UNLOCKS", "SELECT pg_terminate_backend(pg_backend_pid()), $1::bigint[]"
        )
        async with backend.exclusive(7) as units:
            assert await units.insert_turns([turn(cid, 1)]) == []
        monkeypatch.undo()
        async with backend.exclusive(7) as units:  # the lock went with the session
            assert await units.insert_turns([turn(cid, 1)]) == []  # (stored once: the same turn)


async def test_a_connection_lost_with_nobody_waiting_on_it_does_not_end_the_backend(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg leaves a lost idle connection's error in a future nobody reads; asyncio
    reports it to the loop's handler, which trio-asyncio turns into an error that ends the
    backend (a CLI command then exited 70). Logged instead, and the backend goes on."""
    caplog.set_level(logging.INFO, logger="horace.backends")
    async with open_postgres(pg_url) as backend:
        await backend.migrate()
        loop = backend._hop.loop
        lost = ConnectionError("unexpected connection_lost() call")
        loop.call_exception_handler({"message": "Future exception was never retrieved", "exception": lost})
        await trio.sleep(0.05)  # (where trio-asyncio's handler would have raised it)
        await backend.ping()
    said = [r.getMessage() for r in caplog.records if r.name == "horace.backends"]
    assert (
        "PostgreSQL: Future exception was never retrieved: ConnectionError: unexpected connection_lost() call"
        in said
    )


async def test_a_statement_timeout_and_a_privilege_refused_are_said_as_such(pg_url: str) -> None:
    """The operator's settings, not bugs: a statement the server cancels (statement_timeout)
    is BackendUnavailable; a role that may not use Horace's tables, CatalogUnwritable
    (STORAGE_ERROR at the CLI), with what to do."""
    async with open_postgres(with_query(pg_url, statement_timeout="100")) as backend:
        await backend.migrate()
        with pytest.raises(BackendUnavailable, match=r"cancelled a statement: .*statement_timeout"):
            await backend._source.run(_fetchrow, "SELECT pg_sleep(2)")
        assert await backend.file_by_path("x") is None  # the next statement runs
    role = f"r_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(pg_url)
    schema = dict(parse_qsl(parts.query))["search_path"]
    await trio.to_thread.run_sync(
        admin, f"CREATE ROLE {role} LOGIN", f"GRANT USAGE ON SCHEMA {schema} TO {role}"
    )
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    try:
        async with open_postgres(as_role) as backend:
            with pytest.raises(
                CatalogUnwritable, match=r"refuses Horace's role: permission denied.*on all its sequences"
            ):
                await backend.file_by_path("x")
    finally:
        await trio.to_thread.run_sync(admin, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_a_catalog_dropped_under_a_running_backend_is_unavailable_not_a_bug(pg_url: str) -> None:
    """Horace's tables gone from under a running backend (the database dropped and made
    again empty; here its schema): BackendUnavailable, saying so (a tool error of that
    code, /health 503), not an internal error; back once the catalog is."""
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    async with open_postgres(pg_url) as backend:
        await backend.migrate()
        assert await backend.file_by_path("x") is None
        await trio.to_thread.run_sync(admin, f"DROP SCHEMA {schema} CASCADE", f"CREATE SCHEMA {schema}")
        with pytest.raises(BackendUnavailable, match=r"no longer holds Horace's catalog: .*horace_files"):
            await backend.file_by_path("x")
        with pytest.raises(BackendUnavailable, match="no longer holds Horace's catalog"):
            await backend.ping()
        await backend.migrate()
        assert await backend.file_by_path("x") is None


async def test_a_read_only_database_is_said_as_such_and_writable_again_once_reset(pg_url: str) -> None:
    """default_transaction_read_only set on Horace's role: writes and pings are
    CatalogUnwritable, saying why; once the operator resets it, the running backend
    writes again (its connections, which keep the setting they started with, replaced)."""
    role, as_role = new_role(pg_url)
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    await trio.to_thread.run_sync(
        admin, f"CREATE ROLE {role} LOGIN", f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}"
    )
    cid = str(uuid.uuid4())
    try:
        async with open_postgres(as_role) as backend:
            await backend.migrate()
            await trio.to_thread.run_sync(
                admin, f"ALTER ROLE {role} SET default_transaction_read_only = on", kill_sessions(pg_url)
            )
            for _ in range(3):  # until the pool's connections the kill left are gone
                with contextlib.suppress(BackendUnavailable):
                    await backend.file_by_path("x")
            for attempt in (lambda: backend.insert_turns([turn(cid, 1)]), backend.ping):
                with pytest.raises(
                    CatalogUnwritable, match=r"takes no writes.*default_transaction_read_only"
                ):
                    await attempt()
            async with backend.exclusive(7) as units:
                with pytest.raises(CatalogUnwritable, match="takes no writes"):
                    await units.insert_turns([turn(cid, 1)])
            await trio.to_thread.run_sync(admin, f"ALTER ROLE {role} RESET default_transaction_read_only")
            await backend.ping()
            assert await backend.insert_turns([turn(cid, 1)]) == []
            async with backend.exclusive(7) as units:
                assert await units.insert_turns([turn(cid, 2)]) == []
    finally:
        await trio.to_thread.run_sync(
            admin, kill_sessions(pg_url), f"DROP OWNED BY {role}", f"DROP ROLE {role}"
        )


async def test_an_idle_session_timeout_never_ends_a_connection_holding_a_lock(pg_url: str) -> None:
    """A file's lock is held, its connection idle, while the file is copied: an operator's
    idle_session_timeout would end it mid-call, every time the copy is slower."""
    role, as_role = new_role(pg_url)
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    await trio.to_thread.run_sync(
        admin,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}",
        f"ALTER ROLE {role} SET idle_session_timeout = '100ms'",
    )
    try:
        async with open_postgres(as_role) as backend:
            await backend.migrate()
            async with backend.exclusive(7) as units:
                await trio.sleep(0.5)  # (the copy)
                assert await units.insert_turns([turn(str(uuid.uuid4()), 1)]) == []
    finally:
        await trio.to_thread.run_sync(
            admin, kill_sessions(pg_url), f"DROP OWNED BY {role}", f"DROP ROLE {role}"
        )


async def test_a_schema_horace_may_not_make_its_tables_in_is_said_plainly() -> None:
    """A search_path naming no schema, or a role without the right to create in it: a
    setup mistake said as such (CONFIG, STORAGE_ERROR at the CLI), never a bug's exit 70."""
    missing = f"none_{uuid.uuid4().hex[:12]}"
    async with open_postgres(with_query(PG_DSN, search_path=missing)) as backend:
        with pytest.raises(UnusableURL, match="the schema the URL's search_path names must exist, and"):
            await backend.migrate()
    role, schema = f"r_{uuid.uuid4().hex[:12]}", f"t_{uuid.uuid4().hex[:16]}"
    await trio.to_thread.run_sync(
        admin,
        f"CREATE ROLE {role} LOGIN",
        f"CREATE SCHEMA {schema}",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
    )
    parts = urlsplit(with_query(PG_DSN, search_path=schema))
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    try:
        async with open_postgres(as_role) as backend:
            with pytest.raises(CatalogUnwritable, match="role make or change its tables"):
                await backend.migrate()
    finally:
        await trio.to_thread.run_sync(
            admin, f"DROP SCHEMA {schema} CASCADE", f"DROP OWNED BY {role}", f"DROP ROLE {role}"
        )


async def test_a_user_role_meeting_a_schema_behind_is_told_to_migrate_as_the_owner() -> None:
    """The least-privilege set-up (docs/postgres.md), after an upgrade: the instance's role
    may use the tables but not change them, and the schema lacks this release's step."""
    role, schema = f"r_{uuid.uuid4().hex[:12]}", f"t_{uuid.uuid4().hex[:16]}"
    await trio.to_thread.run_sync(admin, f"CREATE ROLE {role} LOGIN", f"CREATE SCHEMA {schema}")
    owners = with_query(PG_DSN, search_path=schema)
    try:
        async with open_postgres(owners) as backend:
            await backend.migrate()
        await trio.to_thread.run_sync(
            admin,
            f"SET search_path TO {schema}; DROP TABLE horace_word_counts; "
            "DROP FUNCTION horace_word_counts_changed CASCADE; "
            "DROP FUNCTION horace_word_counts_fixed CASCADE; DELETE FROM schema_version WHERE version = 5",
            f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        )
        parts = urlsplit(owners)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        async with open_postgres(as_role) as backend:
            await backend.identity()  # (as every start reads it, before the schema steps)
            with pytest.raises(CatalogUnwritable) as refused:
                await backend.migrate()
        message = str(refused.value)
        assert "whose schema is behind this Horace (steps 5 not applied)" in message, message
        assert "run `horace migrate` as the role that owns them" in message, message
    finally:
        await trio.to_thread.run_sync(
            admin, f"DROP SCHEMA {schema} CASCADE", f"DROP OWNED BY {role}", f"DROP ROLE {role}"
        )


# -- the same answers as SQLite --------------------------------------------------------------


class Both:
    """Runs every unit on both backends and insists on the same answer."""

    def __init__(self, pg: PostgresBackend, lite: SqliteBackend) -> None:
        self.pg = pg
        self.lite = lite

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        got, want = (
            await self._run(self.pg, name, args, kwargs),
            await self._run(self.lite, name, args, kwargs),
        )
        if isinstance(got, Exception) or isinstance(want, Exception):
            # e.g. add_version for a purged file: the same exception type from both
            assert type(got) is type(want), (name, args, got, want)
            return None
        if normal(got) != normal(want):
            pytest.fail(f"{name}{args!r}:\n postgres: {normal(got)!r}\n sqlite:   {normal(want)!r}")
        return got

    @staticmethod
    async def _run(backend: Any, name: str, args: Any, kwargs: Any) -> Any:
        try:
            return await getattr(backend, name)(*args, **kwargs)
        except Exception as exc:
            return exc


def normal(value: Any) -> Any:
    if attrs.has(type(value)):
        return {k: normal(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    return value


@pytest.fixture
async def both(pg_url: str, tmp_path: Path) -> AsyncIterator[Both]:
    async with open_postgres(pg_url) as pg, open_sqlite(tmp_path / "ref.db") as lite:
        await pg.migrate()
        await lite.migrate()
        yield Both(pg, lite)


PATHS = [
    "a.txt",
    "A.txt",
    "b/c.md",
    "b/d.MD",
    "é.txt",
    "z_1%.bin",
    "[x].txt",
    "b/ä/e.png",
    "Zed",
    "b/c.md.bak",
    "_",
    "%",
]
SUMS = [f"sum{i}" for i in range(8)]
TAGS = ["red", "green", "blue", "x y"]
CONVERSATIONS = [str(uuid.UUID(int=i)) for i in range(3)]
GLOBS = [
    "*",
    "b/*",
    "*.txt",
    "?.txt",
    "b/?/*",
    "[a-c]*",
    "[^a]*",
    "*[[]x]*",
    "z_1%.bin",
    "*.md",
    "b/c.md*",
    "é*",
    "[é]*",
    "*_*",
    "%",
    "[_]",
    "b/[cd].*",
    "[!a]*",
    "b/c.md\x00.bak",
]


@pytest.mark.parametrize("seed", range(int(os.environ.get("PG_UNITS_SEEDS", "6"))))
async def test_same_answers_as_sqlite(both: Both, seed: int) -> None:
    rnd = random.Random(seed)
    ids: list[str] = []
    clock = 0.0

    def tick() -> datetime:
        nonlocal clock
        clock += rnd.choice([0, 0, 0.5, 1, 30])  # ties on purpose
        return at(clock)

    def some_ids() -> list[str]:
        pool = [*ids, "not-a-uuid", str(uuid.uuid4())]
        return rnd.sample(pool, k=min(len(pool), rnd.randint(0, 4)))

    for _ in range(120):
        op = rnd.choice(
            ["insert"] * 4
            + ["version"] * 4
            + ["update"] * 3
            + ["collection", "members", "drop", "repair", "purge", "read", "move"]
        )
        if op == "insert" or not ids:
            now = tick()
            batch = [
                attrs.evolve(
                    rec(
                        rnd.choice(PATHS),
                        rnd.choice(SUMS),
                        size=rnd.randint(0, 5),
                        tags=rnd.sample(TAGS, rnd.randint(0, 2)),
                        owner=rnd.choice([None, "gates", "user"]),
                        purpose=rnd.choice([None, "Report", "50% DONE", "ärger"]),
                        mime=rnd.choice(["text/plain", "image/png", "text/markdown"]),
                        status=rnd.choice([Status.ACTIVE] * 4 + [Status.DELETED]),
                        correlation_id=rnd.choice([None, "k1"]),
                    ),
                    created_at=now,
                    updated_at=now,
                )
                for _ in range(rnd.randint(1, 6))
            ]
            inserted = await both("insert_files", batch, rnd.choice([None, "", "ins"]))
            ids.extend(r.id for r in inserted)
        elif op == "version":
            status = rnd.choice([None, None, "active", "archived", "deleted"])
            retention = Retention(keep=rnd.randint(1, 3), min_age_seconds=rnd.choice([0, 10]))
            await both(
                "add_version",
                rnd.choice(ids),
                new(rnd.choice(SUMS), rnd.randint(0, 5)),
                tick(),
                rnd.choice([None, "k2"]),
                retention,
                status,
            )
        elif op == "update":
            changes = FileChanges(
                owner=rnd.choice([None, "x"]),
                purpose=rnd.choice([None, "new purpose"]),
                tags=rnd.choice([None, (), ("red",), ("blue", "x y")]),
                status=rnd.choice([None, *Status]),
                collection=rnd.choice([None, "", "upd", "ins"]),
                custom=rnd.choice([None, {}, {"a": 1}, {"a": {"b": [1, 2.5]}, "c": None}]),
            )
            await both("update_file", rnd.choice([*ids, "not-a-uuid"]), changes, tick())
        elif op == "collection":
            await both(
                "upsert_collection",
                rnd.choice(["ins", "upd", "other"]),
                rnd.choice([None, "d"]),
                rnd.choice([None, {}, {"m": 1}]),
                some_ids(),
                tick(),
            )
        elif op == "members":
            name = rnd.choice(["ins", "upd", "other", "missing"])
            unit = rnd.choice(["add_members", "remove_members"])
            await both(unit, name, some_ids(), tick())
        elif op == "move":
            moves = [
                (rnd.choice([*ids, "not-a-uuid"]), rnd.choice(PATHS), None) for _ in range(rnd.randint(1, 3))
            ]
            await both("move_files", moves, tick())
        elif op == "drop":
            await both("delete_collection", rnd.choice(["ins", "upd", "other", "missing"]))
        elif op == "repair":
            fid = rnd.choice(ids)
            versions = await both("versions", fid)
            if versions:
                await both("delete_version", fid, rnd.choice(versions).version)
            await both("repair_current", fid)
        elif op == "purge":
            await both("purge_deleted", at(clock - rnd.choice([0, 10, 60])))
        else:
            fid = rnd.choice([*ids, "not-a-uuid"])
            await both("file_by_id", fid)
            await both("file_by_path", rnd.choice(PATHS))
            await both("file_by_checksum", rnd.choice(SUMS))
            await both("version", fid, rnd.randint(1, 4))
            await both("missing_file_ids", some_ids())
            await both("unreferenced", rnd.sample(SUMS, 3))
            await both("find_duplicates", rnd.randint(1, 5), rnd.randint(0, 2), rnd.randint(1, 3))
            await both("list_collections", rnd.randint(1, 3), rnd.randint(0, 2))
            await both(
                "get_collection",
                rnd.choice(["ins", "upd", "missing"]),
                rnd.randint(1, 3),
                rnd.randint(0, 2),
            )
            turns = [
                Turn(
                    rnd.choice(CONVERSATIONS),
                    rnd.randint(1, 3),
                    rnd.choice(["user", "assistant"]),
                    rnd.choice(["a", "b"]),
                    None,
                    None,
                    None,
                    None,
                    {},
                    tick(),
                )
                for _ in range(rnd.randint(1, 4))
            ]
            await both("insert_turns", turns)

    by_id = attrgetter("id")
    assert sorted(await both.pg.all_files(), key=by_id) == sorted(await both.lite.all_files(), key=by_id)
    by_key = attrgetter("file_id", "version")
    assert sorted(await both.pg.all_versions(), key=by_key) == sorted(
        await both.lite.all_versions(), key=by_key
    )

    for _ in range(150):
        filters: dict[str, Any] = {}
        for name, choices in (
            ("tags", [(), ("red",), ("red", "blue")]),
            ("any_tags", [(), ("green", "x y")]),
            ("owner", [None, "gates"]),
            ("purpose", [None, "report", "%", "ÄRGER", "o"]),
            ("path", [None, *GLOBS]),
            ("collection", [None, "ins", "upd"]),
            ("file_type", [None, "image/png", "text/*", "txt", "MD", ".png"]),
            ("min_size", [None, 2]),
            ("max_size", [None, 4]),
            ("created_after", [None, at(clock / 3)]),
            ("created_before", [None, at(clock / 2)]),
            ("checksum", [None, "sum1"]),
            ("correlation_id", [None, "k1"]),
            ("status", [Status.ACTIVE, None, Status.DELETED, Status.ARCHIVED]),
        ):
            if rnd.random() < 0.25:
                filters[name] = rnd.choice(choices)
        sort_by, order = rnd.choice(list(SortKey)), rnd.choice(list(Order))
        column = {
            SortKey.CREATED_AT: "created_at",
            SortKey.UPDATED_AT: "updated_at",
            SortKey.SIZE: "size",
            SortKey.PATH: "file_path",
        }[sort_by]
        query = SearchQuery(
            limit=rnd.randint(1, 4),
            offset=rnd.choice([0, 0, 1]),
            sort_by=sort_by,
            order=order,
            **filters,
        )
        total, page = await both("search", query)
        pages = 0
        while page and pages < 30:
            last = page[-1]
            query = attrs.evolve(query, offset=0, after=(getattr(last, column), last.id))
            _, page = await both("search", query)
            pages += 1
        del total


# -- the text search: the same words on both backends ------------------------------------------

WORDY = [  # (path, purpose)
    ("notes/report-2024.md", "Monthly report: Q3 (final)"),
    ("notes/reports.txt", "reports & summaries | draft"),
    ("data/naïve_café.csv", "Café CRÈME naïve"),
    ("x/NEAR/and.txt", 'say "NEAR" AND OR NOT * ^ - :col'),
    ("x/quote.txt", "it's a \\ back'slash \"quoted\""),
    ("x/long.txt", "a" * 300 + " end"),
    ("x/日本語.txt", "日本語 テキスト"),
    ("x/empty.txt", None),
    ("x/digits.txt", "v1.2.3 build 0042 ipv6 ::1"),
]
WORD_QUERIES = [
    *("report", "REPORT", "rep", "reports", "Monthly report", "report monthly", "2024", "q3"),
    *("(final)", "final)", '"NEAR"', "NEAR", "near", "AND", "OR", "NOT", "*", "rep*", "-draft"),
    *(":col", "col:", "&", "|", "!", "!draft", "a & b", "it's", "'", '"', "\\", "back\\slash"),
    *("café", "CAFÉ", "Café", "naïve", "naive", "crème", "CRÈME", "crÈ", "日本", "テ"),
    *("a" * 300, "a" * 255, "a" * 256 + "x", "v1.2", "0042", "42", "::1", " ", "   ", "%", "_"),
    *("md", "notes/report", "x/*", "{", "^", "$1", ":*", "'a':*", "a & !b", "<->", "NEAR(a b)"),
]


async def test_text_search_edge_cases_agree(both: Both) -> None:
    now = at(0)
    records = [
        attrs.evolve(rec(path, f"w{i}", purpose=purpose), created_at=now, updated_at=now)
        for i, (path, purpose) in enumerate(WORDY)
    ]
    await both("insert_files", records)
    answers: dict[str, set[str]] = {}
    for text in WORD_QUERIES:
        for query in (SearchQuery(purpose=text, limit=100), SearchQuery(purpose=text, status=None)):
            result = await both("search", query)
            assert result is not None, (text, "an error")  # both raised: never for user text
            total, page = result
            assert total >= len(page)
        answers[text] = {f.file_path for f in result[1]}
    # Both agree on each of these; a few say what the agreement is.
    assert (
        answers["rep"]
        == answers["REPORT"] | {"notes/reports.txt"}
        == {
            "notes/report-2024.md",
            "notes/reports.txt",
        }
    )
    assert answers["Monthly report"] == answers["report monthly"] == {"notes/report-2024.md"}
    assert answers['"NEAR"'] == answers["near"] == {"x/NEAR/and.txt"}
    assert answers["Café"] == answers["café"] == {"data/naïve_café.csv"}
    assert answers["CAFÉ"] == set()  # É is not folded
    assert answers["crÈ"] == {"data/naïve_café.csv"}
    assert answers["a" * 300] == answers["a" * 255] == {"x/long.txt"}
    assert answers["a" * 256 + "x"] == {"x/long.txt"}  # words are cut to 255 characters
    assert answers["テ"] == {"x/日本語.txt"}
    assert answers["::1"] == {"x/digits.txt"}  # the word 1 of "ipv6 ::1"
    assert answers["%"] == answers[" "] == answers["*"] == set()  # no word: nothing
    assert answers["42"] == set() and answers["0042"] == {"x/digits.txt"}


_COUNTS_DISAGREE = """
SELECT lexeme, w.files AS indexed, c.files AS counted
FROM (SELECT lexeme, count(*) AS files FROM horace_file_words GROUP BY lexeme) w
FULL JOIN (SELECT lexeme, sum(files) AS files FROM horace_word_counts GROUP BY lexeme) c USING (lexeme)
WHERE coalesce(w.files, 0) <> coalesce(c.files, 0)
"""


async def word_counts(db: PostgresBackend) -> tuple[list[Any], int, int]:
    """(lexemes whose count disagrees with horace_file_words, count rows, lexemes)."""
    wrong = await db._source.run(_fetch, _COUNTS_DISAGREE)
    shape = await db._source.run(
        _fetchrow, "SELECT count(*) AS n, count(DISTINCT lexeme) AS lexemes FROM horace_word_counts"
    )
    assert shape is not None
    return [tuple(r) for r in wrong], shape["n"], shape["lexemes"]


async def test_word_counts_follow_every_change_and_fold_into_one_row_each(db: PostgresBackend) -> None:
    files = [
        rec(f"dir/f{i}.txt", f"s{i}", purpose="nightly report" if i % 2 else "weekly") for i in range(40)
    ]
    await db.insert_files(files[:20])
    await db.insert_files(files[20:])
    for f in files[:10]:
        await db.update_file(f.id, FileChanges(purpose="nightly summary"), at(1))
    for f in files[10:15]:
        await db.update_file(f.id, FileChanges(status=Status.DELETED), at(2))
    for f in files[15:18]:
        await db.update_file(f.id, FileChanges(status=Status.ARCHIVED), at(2))
    await db.move_files([(files[30].id, "elsewhere/renamed.txt", None)], at(3))
    assert (await db.purge_deleted(at(10)))[0] == 5  # (the rows go by the foreign key's cascade)
    wrong, rows, lexemes = await word_counts(db)
    assert wrong == [] and rows > lexemes  # several rows for a lexeme until folded

    await db.tidy()
    wrong, rows, lexemes = await word_counts(db)
    assert wrong == [] and rows == lexemes
    # (searches by one word of one status are counted from horace_word_counts)
    assert (await db.search(SearchQuery(purpose="report")))[0] == 11  # odd 19..39
    assert (await db.search(SearchQuery(purpose="report", status=None)))[0] == 13  # and 15, 17
    assert (await db.search(SearchQuery(purpose="report nightly", status=None)))[0] == 13
    assert (await db.search(SearchQuery(purpose="summary")))[0] == 10  # 0..9
    assert (await db.search(SearchQuery(purpose="weekly", status=Status.ARCHIVED)))[0] == 1  # 16 (15..17)
    assert (await db.search(SearchQuery(purpose="renamed")))[0] == 1
    assert (await db.search(SearchQuery(purpose="f30")))[0] == 0
    assert (await db.search(SearchQuery(purpose="f31")))[0] == 1
    for bypass in ("TRUNCATE horace_file_words CASCADE", "UPDATE horace_file_words SET lexeme = 'x'"):
        with pytest.raises(asyncpg.exceptions.RaiseError, match="would bypass horace_word_counts"):
            await db._source.run(_execute, bypass)
    assert (await word_counts(db))[0] == []


async def test_word_counts_stay_true_under_concurrent_writers_and_folds(pg_url: str) -> None:
    async with open_postgres(pg_url, max_connections=8) as db:
        await db.migrate()

        async def writer(w: int) -> None:
            for batch in range(6):
                files = [
                    rec(f"w{w}/{batch}-{i}.txt", f"{w}-{batch}-{i}", purpose="shared words") for i in range(5)
                ]
                await db.insert_files(files)
                await db.update_file(files[0].id, FileChanges(purpose="other words"), at(1))

        async def folder() -> None:
            for _ in range(12):
                await db.tidy()

        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(writer, w)
            nursery.start_soon(folder)
            nursery.start_soon(folder)
        wrong, _, _ = await word_counts(db)
        assert wrong == []
        total, _ = await db.search(SearchQuery(purpose="shared"))
        assert total == 4 * 6 * 4
        await db.tidy()
        wrong, rows, lexemes = await word_counts(db)
        assert wrong == [] and rows == lexemes


def older_catalog(
    schema: str, made: Sequence[int], recorded: Sequence[int], files: Sequence[FileRecord]
) -> str:
    """SQL that makes, in *schema*, a catalog of the schema steps *made* (recording
    *recorded* in schema_version) holding *files*: one of an older release."""
    by_number = {step.version: step for step in steps("postgres")}
    rows = ", ".join(
        f"('{f.id}', '{f.file_path}', {f'$${f.purpose}$$' if f.purpose else 'NULL'}, "
        f"ARRAY{list(f.tags)}::text[], 1, 'text/plain', '{f.checksum}', '{f.status.value}', 1, "
        f"'{f.created_at.isoformat()}', '{f.updated_at.isoformat()}')"
        for f in files
    )
    return (
        f"SET search_path = {schema}; "
        + "".join(f"{by_number[number].sql}; " for number in made)
        + "CREATE TABLE schema_version (version INTEGER NOT NULL); "
        + f"INSERT INTO schema_version VALUES {', '.join(f'({number})' for number in recorded)}; "
        + "INSERT INTO horace_files (id, file_path, purpose, tags, size, mime_type, checksum, status, "
        + f"current_version, created_at, updated_at) VALUES {rows}"
    )


async def test_step_3_indexes_the_files_already_there(pg_url: str) -> None:
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    old = rec("a/old report.txt", "s1", tags=("q", "r"), purpose="Quarterly numbers")
    gone = rec("b/other.txt", "s2", when=5, tags=("r",), status=Status.ARCHIVED)
    await trio.to_thread.run_sync(admin, older_catalog(schema, (1, 2), (2,), (old, gone)))
    async with open_postgres(pg_url) as backend:
        assert await backend.migrate() == NEWEST_SCHEMA
        total, page = await backend.search(SearchQuery(purpose="quart report"))
        assert (total, [f.id for f in page]) == (1, [old.id])
        total, page = await backend.search(SearchQuery(tags=("r",)))
        assert (total, [f.id for f in page]) == (1, [old.id])
        total, page = await backend.search(SearchQuery(any_tags=("r", "q"), status=Status.ARCHIVED))
        assert (total, [f.id for f in page]) == (1, [gone.id])
        total, page = await backend.search(SearchQuery(purpose="other", status=None))
        assert (total, [f.id for f in page]) == (1, [gone.id])
        wrong, rows, _ = await word_counts(backend)  # step 5 counted them
        assert wrong == [] and rows > 0


@pytest.mark.parametrize(
    ("foreign", "said"),
    [
        ("CREATE TABLE conversations (id serial PRIMARY KEY, body jsonb)", 'relation "conversations"'),
        ("CREATE TABLE horace_files (id int)", 'relation "horace_files"'),
        (  # a migration tool's (Flyway's) table of the same name
            "CREATE TABLE schema_version (installed_rank int, version varchar(50), script text)",
            "schema_version (installed_rank integer, version character varying(50), script text)",
        ),
        (
            "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (3)",
            "records steps, but none of Horace's tables",
        ),
        ("CREATE TABLE schema_version (v int)", "schema_version (v integer)"),  # no version column
    ],
)
async def test_a_database_holding_another_applications_tables_is_refused_untouched(
    pg_url: str, foreign: str, said: str
) -> None:
    """A table of one of Horace's names that Horace did not make: the URL is refused (a
    CONFIG error, said so), and nothing is made beside it."""
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    await trio.to_thread.run_sync(admin, f"SET search_path = {schema}; {foreign}")
    before = await trio.to_thread.run_sync(
        admin_column, f"SELECT tablename::text FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"
    )
    async with open_postgres(pg_url) as backend:
        with pytest.raises(UnusableURL, match="another application's") as refused:
            await backend.migrate()
        assert said in str(refused.value)
        if "schema_version" in foreign:  # looked at by every start too, before any migration
            with pytest.raises(UnusableURL, match="another application's") as refused:
                await backend.identity()
            assert said in str(refused.value)
    after = await trio.to_thread.run_sync(
        admin_column, f"SELECT tablename::text FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"
    )
    assert after == before


async def test_a_step_that_landed_out_of_order_is_applied(pg_url: str) -> None:
    """A catalog made when step 004 had landed and 003 had not (steps 1, 2 and 4) is given
    003 and every step after, not only those above 4."""
    schema = dict(parse_qsl(urlsplit(pg_url).query))["search_path"]
    old = rec("a/old report.txt", "s1", tags=("q",), purpose="Quarterly numbers")
    await trio.to_thread.run_sync(admin, older_catalog(schema, (1, 2, 4), (1, 2, 4), (old,)))
    async with open_postgres(pg_url) as backend:
        assert await backend.migrate() == NEWEST_SCHEMA
        total, page = await backend.search(SearchQuery(purpose="quart"))
        assert (total, [f.id for f in page]) == (1, [old.id])
        total, page = await backend.search(SearchQuery(tags=("q",)))
        assert (total, [f.id for f in page]) == (1, [old.id])
    applied = await trio.to_thread.run_sync(admin_column, f"SELECT version FROM {schema}.schema_version")
    assert sorted(applied) == [step.version for step in steps("postgres")]


async def test_a_connection_dropped_while_idle_costs_no_unit() -> None:
    """The pool may hand out a connection the server has just dropped, before asyncpg has
    seen the end of its socket: its first statement is refused unsent, and the unit runs
    on another connection. Anything else lost is not run again."""
    stale = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"
    )

    class Conn:
        def __init__(self, fails: Exception | None) -> None:
            self.fails, self.terminated = fails, False

        def is_closed(self) -> bool:
            return self.terminated

        def terminate(self) -> None:
            self.terminated = True

    class Pool:
        def __init__(self, *conns: Conn) -> None:
            self.conns = list(conns)
            self.out = 0

        async def acquire(self) -> Conn:
            self.out += 1
            return self.conns.pop(0)

        async def release(self, conn: Conn) -> None:
            self.out -= 1

    async def unit(conn: Conn) -> str:
        if conn.fails is not None:
            raise conn.fails
        return "done"

    async def hop(fn: Any) -> Any:
        return await fn()

    dropped, fresh = Conn(stale), Conn(None)
    assert await _PoolSource(Pool(dropped, fresh), hop).run(unit) == "done"  # type: ignore[arg-type]
    assert dropped.terminated and not fresh.terminated
    with pytest.raises(asyncpg.exceptions.InternalClientError):  # twice: the server is going away
        await _PoolSource(Pool(Conn(stale), Conn(stale), Conn(None)), hop).run(unit)  # type: ignore[arg-type]
    lost = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):  # it may have run: not again
        await _PoolSource(Pool(Conn(lost), Conn(None)), hop).run(unit)  # type: ignore[arg-type]


async def test_a_connection_the_server_dropped_is_said_plainly(pg_url: str) -> None:
    """asyncpg's words for a dropped connection ("cannot switch to state ...") are its
    internals: the message says the connection was lost."""

    async def dropped() -> None:
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )

    async def closed_under_a_transaction() -> None:  # (the database dropped mid-scan)
        raise asyncpg.exceptions.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        )

    async with open_postgres(pg_url) as backend:
        for fails in (dropped, closed_under_a_transaction):
            with pytest.raises(BackendUnavailable, match=r"is unavailable: its connection was lost$"):
                await backend._hop(fails)


async def test_a_store_bound_by_another_instance_as_this_one_binds_is_the_one_read(
    db: PostgresBackend, pg_url: str
) -> None:
    """Instances started together on a new catalog: one's INSERT of the binding waits for
    another's, skips the row once that commits, and cannot see it in its own statement's
    snapshot. The binding read is the other's (it was an assertion error, and the loser
    then took the store's folders back from under the others)."""
    other = str(uuid.uuid4())
    inserted, commit = threading.Event(), threading.Event()

    def first_instance() -> None:
        async def work(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO horace_store (id, store_id, storage_path, bound_at) "
                    "VALUES (1, $1::uuid, '/the/other', now())",
                    other,
                )
                inserted.set()
                await asyncio.get_running_loop().run_in_executor(None, commit.wait, 30)

        async def run() -> None:
            conn = await asyncpg.connect(pg_url)
            try:
                await work(conn)
            finally:
                await conn.close()

        asyncio.run(run())

    async def commit_soon() -> None:
        await trio.sleep(0.5)  # the bind below waits on the row meanwhile
        commit.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, first_instance)
        assert await trio.to_thread.run_sync(inserted.wait, 30)
        nursery.start_soon(commit_soon)
        assert await db.bind(str(uuid.uuid4()), "/this/one", T0) == other


async def test_a_pool_of_one_connection_holds_one_however_busy(pg_url: str) -> None:
    """The conversation turns' own pool (``TURNS_CONNECTIONS``) takes one connection of
    the budget, not the catalog pool's two to twenty: under a role's CONNECTION LIMIT the
    sinks of several instances would otherwise hold every slot."""
    app = dict(parse_qsl(urlsplit(pg_url).query))["application_name"]
    counted = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
    async with open_backend(pg_url, connections=TURNS_CONNECTIONS) as backend:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(backend.ping)
        assert await trio.to_thread.run_sync(admin_column, counted) == [1]
    async with open_backend(pg_url) as backend:  # (the catalog's: two at least)
        assert await trio.to_thread.run_sync(admin_column, counted) == [MIN_CONNECTIONS]


async def test_connections_are_named_unless_the_url_or_pgappname_names_them(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``pg_stat_activity`` shows of an instance's connections: ``horace``, the
    conversation log's ``horace conversations``; a name the URL gives, or libpq's
    ``PGAPPNAME``, wins. (The URL shown stays the one given.)"""
    parts = urlsplit(pg_url)
    given = dict(parse_qsl(parts.query))
    unnamed = urlunsplit(parts._replace(query=urlencode({"search_path": given["search_path"]})))
    named = "SELECT current_setting('application_name')"
    monkeypatch.delenv("PGAPPNAME", raising=False)
    for url, options, name in [
        (unnamed, {}, "horace"),
        (unnamed, {"application_name": TURNS_APPLICATION}, "horace conversations"),
        (pg_url, {"application_name": TURNS_APPLICATION}, given["application_name"]),
    ]:
        async with open_backend(url, **options) as backend:
            assert await backend._source.run(_fetchrow, named) == (name,)  # type: ignore[attr-defined]
            assert backend.url == url  # type: ignore[attr-defined]
    monkeypatch.setenv("PGAPPNAME", "horace-a")
    async with open_backend(unnamed) as backend:
        assert await backend._source.run(_fetchrow, named) == ("horace-a",)  # type: ignore[attr-defined]
