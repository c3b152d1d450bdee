"""The PostgreSQL backend: asyncpg on a trio-asyncio loop, one hop per unit of work.

Every unit is an asyncio-flavoured coroutine of one connection, run through
``trio_asyncio.aio_as_trio`` as a single hop: crossing between Trio and asyncio costs
far more than a statement, so a unit crosses once however many statements it sends, and
most units send exactly one (data-modifying CTEs), which also makes them atomic without
an explicit transaction (an explicit one would add a BEGIN and a COMMIT round trip).

The units are written once, in :class:`_Units`, over a connection *source*: the backend
takes a pool connection per unit, and :meth:`PostgresBackend.exclusive` hands out the
connection that holds the file's advisory lock, so work under the lock needs no extra
acquire and runs in the lock holder's session.

File ids are ``uuid`` columns but ``str`` in the model: records carry the canonical text
form, and an id that is not a canonical (lowercase, hyphenated) UUID is treated as not
catalogued, exactly as the SQLite backend would find no row for it. ``file_path`` is
``COLLATE "C"`` so that sorting, keyset positions and glob prefixes follow code points,
as SQLite's binary collation does, whatever the database's locale.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
import attrs
import trio
import trio_asyncio

from . import hosts_of, migrations, words
from .protocol import (
    NOT_HORACES_ADVICE,
    PING,
    REFUSALS,
    BackendUnavailable,
    CatalogDamaged,
    CatalogUnwritable,
    DatabaseFull,
    FileGone,
    LastRefusal,
    NotHoraces,
    SchemaBehind,
    Units,
    UnusableURL,
)
from .records import (
    CatalogIdentity,
    Collection,
    DuplicateGroup,
    FileChanges,
    FileRecord,
    IndexEntry,
    NewVersion,
    Order,
    Retention,
    SearchQuery,
    SortKey,
    Status,
    Turn,
    VersionRecord,
    WorkingStat,
    from_int64,
    json_array,
    json_object,
    metadata_json,
    to_int64,
)

__all__ = ["PostgresBackend", "open_postgres"]

T = TypeVar("T")
P = ParamSpec("P")
Conn = Any  # asyncpg.Connection / PoolConnectionProxy (asyncpg ships no type hints)
Row = Any  # asyncpg.Record

DEFAULT_MAX_CONNECTIONS = 20
APPLICATION_NAME = "horace"  # of the connections, unless the URL or PGAPPNAME names them
MIN_CONNECTIONS = 2
CONNECT_TIMEOUT = 10.0
PING_TIMEOUT = 5.0
CLOSE_TIMEOUT = 10.0
# The migration lock lives in the two-int4 advisory key space, which never overlaps the
# single-bigint space of the file locks (horace.locks.lock_key). "Hora", 1.
MIGRATION_LOCK = (0x486F7261, 1)
# New files' contents, locked (in that space too) by the transaction that inserts files
# with them: two instances registering one content at two paths at once take turns, and
# the second sees the first's file (a duplicate), as one instance would. A content's lock
# is one of CONTENT_LOCKS (by its checksum's hash): a batch of thousands of new files takes
# at most that many from PostgreSQL's shared lock table (max_locks_per_transaction, 64 by
# default, times max_connections), and unrelated contents sharing one only take turns.
CONTENT_LOCK_CLASS = 0x486F7262
CONTENT_LOCKS = 64

_FILE_COLUMNS = (
    "id",
    "file_path",
    "owner",
    "purpose",
    "tags",
    "size",
    "mime_type",
    "checksum",
    "status",
    "current_version",
    "correlation_id",
    "created_at",
    "updated_at",
    "deleted_at",
    "metadata",
)
_VERSION_COLUMNS = (
    "file_id",
    "version",
    "checksum",
    "size",
    "created_at",
    "restored_from_version",
    "correlation_id",
)
_COLLECTION_COLUMNS = ("name", "description", "metadata", "created_at", "updated_at")
_STAT_COLUMNS = "stat_size, stat_mtime_ns, stat_ctime_ns, stat_inode, stat_device, stat_recorded_ns"
_NO_STAT = f"({_STAT_COLUMNS}) = (NULL, NULL, NULL, NULL, NULL, NULL)"
_STAT_KEPT_UNLESS_STATUS_CHANGES = ", ".join(
    f"{c} = CASE WHEN $6::text IS NULL OR $6::text = f.status THEN f.{c} END"
    for c in _STAT_COLUMNS.split(", ")
)


def _cols(columns: Sequence[str], table: str = "", prefix: str = "") -> str:
    """``t.a AS pa, t.b AS pb``: a column list, optionally qualified and renamed."""
    qualified = f"{table}." if table else ""
    return ", ".join(f"{qualified}{c} AS {prefix}{c}" if prefix else f"{qualified}{c}" for c in columns)


F = _cols(_FILE_COLUMNS)
F_F = _cols(_FILE_COLUMNS, "f")
V = _cols(_VERSION_COLUMNS)
_SORT = {
    SortKey.CREATED_AT: ("created_at", "timestamptz"),
    SortKey.UPDATED_AT: ("updated_at", "timestamptz"),
    SortKey.SIZE: ("size", "bigint"),
    SortKey.PATH: ("file_path", "text"),
}


# -- rows to records ----------------------------------------------------------------------


def _file(row: Row, p: str = "") -> FileRecord:
    return FileRecord(
        id=str(row[p + "id"]),
        file_path=row[p + "file_path"],
        owner=row[p + "owner"],
        purpose=row[p + "purpose"],
        tags=tuple(row[p + "tags"]),
        size=row[p + "size"],
        mime_type=row[p + "mime_type"],
        checksum=row[p + "checksum"],
        status=Status(row[p + "status"]),
        current_version=row[p + "current_version"],
        correlation_id=row[p + "correlation_id"],
        created_at=row[p + "created_at"],
        updated_at=row[p + "updated_at"],
        deleted_at=row[p + "deleted_at"],
        metadata=row[p + "metadata"],
    )


def _version(row: Row, p: str = "") -> VersionRecord:
    return VersionRecord(
        file_id=str(row[p + "file_id"]),
        version=row[p + "version"],
        checksum=row[p + "checksum"],
        size=row[p + "size"],
        created_at=row[p + "created_at"],
        restored_from_version=row[p + "restored_from_version"],
        correlation_id=row[p + "correlation_id"],
    )


def _stat_values(working: WorkingStat | None) -> tuple[int | None, ...]:
    """The values of the stat columns, then of working_mode (NULL: kept as it is)."""
    if working is None:
        return (None,) * 7
    w = working
    return (w.size, w.mtime_ns, w.ctime_ns, to_int64(w.inode), to_int64(w.device), w.recorded_ns, w.mode)


def _index_entry(row: Row) -> IndexEntry:
    working = None
    if row["stat_recorded_ns"] is not None:
        working = WorkingStat(
            size=row["stat_size"],
            mtime_ns=row["stat_mtime_ns"],
            ctime_ns=row["stat_ctime_ns"],
            inode=from_int64(row["stat_inode"]),
            device=from_int64(row["stat_device"]),
            recorded_ns=row["stat_recorded_ns"],
        )
    return IndexEntry(
        str(row["id"]),
        row["file_path"],
        row["checksum"],
        Status(row["status"]),
        row["current_version"],
        working,
    )


def _collection(row: Row, p: str = "") -> Collection:
    return Collection(
        name=row[p + "name"],
        description=row[p + "description"],
        metadata=row[p + "metadata"],
        created_at=row[p + "created_at"],
        updated_at=row[p + "updated_at"],
        member_count=row[p + "member_count"],
    )


def _uuid(text: str) -> uuid.UUID | None:
    """The UUID of a canonical id string; None for anything else (no such file)."""
    try:
        value = uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return None
    return value if str(value) == text else None


def _any_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return None


def _uuids(texts: Sequence[str]) -> list[uuid.UUID]:
    return [u for u in map(_uuid, texts) if u is not None]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- shell globs (SQLite GLOB semantics) ------------------------------------------------


class _Glob:
    """A GLOB pattern translated for PostgreSQL.

    ``exact``: no wildcard at all; ``like``: only ``*``/``?``; ``regex``: an anchored
    ARE for patterns with ``[...]`` classes; ``never``: a pattern that matches nothing (an
    unclosed ``[``, as in SQLite). ``prefix`` is the constant head every match starts with.
    """

    def __init__(self, pattern: str) -> None:
        self.exact: str | None = None
        self.like: str | None = None
        self.regex: str | None = None
        self.never = False
        wild = next((i for i, ch in enumerate(pattern) if ch in "*?["), len(pattern))
        self.prefix = pattern[:wild]
        if wild == len(pattern):
            self.exact = pattern
        elif "[" not in pattern:
            self.like = "".join(
                "%" if ch == "*" else "_" if ch == "?" else _like_escape(ch) for ch in pattern
            )
        else:
            regex = _glob_regex(pattern)
            if regex is None:
                self.never = True
            else:
                self.regex = regex


def _re_literal(ch: str) -> str:
    # In an ARE a backslash before a non-alphanumeric character makes it literal, inside
    # and outside brackets; letters, digits and non-ASCII characters stand for themselves.
    return ch if ch.isalnum() or not ch.isascii() else "\\" + ch


def _glob_regex(pattern: str) -> str | None:
    """SQLite's patternCompare() as an anchored ARE; None if nothing can match."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch != "[":
            out.append(_re_literal(ch))
        else:
            if i >= n:
                return None
            invert = False
            if pattern[i] == "^":
                invert = True
                i += 1
            singles: list[str] = []
            ranges: list[tuple[str, str]] = []
            if i < n and pattern[i] == "]":
                singles.append("]")
                i += 1
            prior: str | None = None
            while i < n and pattern[i] != "]":
                c2 = pattern[i]
                i += 1
                if c2 == "-" and prior is not None and i < n and pattern[i] != "]":
                    c3 = pattern[i]
                    i += 1
                    if prior <= c3:  # (the low end also stays a member: "[z-a]" is "[z]")
                        ranges.append((prior, c3))
                    prior = None
                else:
                    singles.append(c2)
                    prior = c2
            if i >= n:
                return None  # unclosed class: SQLite matches nothing
            i += 1  # the closing ]
            items = [_re_literal(c) for c in singles]
            items += [f"{_re_literal(lo)}-{_re_literal(hi)}" for lo, hi in ranges]
            if not items:
                if not invert:
                    return None
                out.append(".")
            else:
                out.append("[" + ("^" if invert else "") + "".join(items) + "]")
    out.append("$")
    return "".join(out)


# -- search ------------------------------------------------------------------------------


class _Params:
    """Numbered query parameters: ``p(value, "text")`` appends and returns ``$n::text``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def _path_filter(pattern: str, p: _Params) -> list[str]:
    glob = _Glob(pattern)
    if glob.never or "\x00" in pattern:  # no path holds NUL (nor can PostgreSQL text)
        return ["false"]
    if glob.exact is not None:
        return [f"f.file_path = {p(glob.exact, 'text')}"]
    where: list[str] = []
    if glob.prefix:
        # The constant head as a plain range too, so that the index serves it even in a
        # generic plan of the prepared statement (where LIKE $n tells the planner nothing).
        where.append(f"f.file_path >= {p(glob.prefix, 'text')}")
        upper = words.prefix_end(glob.prefix)
        if upper is not None:
            where.append(f"f.file_path < {p(upper, 'text')}")
    if glob.like is not None:
        where.append(f"f.file_path LIKE {p(glob.like, 'text')}")
    else:
        where.append(f"f.file_path ~ {p(glob.regex, 'text')}")
    return where


def _position(sort_by: SortKey, after: tuple[Any, str]) -> tuple[Any, str]:
    """The keyset position with a value of the sort column's type (ValueError if not)."""
    value, last_id = after
    if sort_by in (SortKey.CREATED_AT, SortKey.UPDATED_AT):
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        ok = isinstance(value, datetime)
    elif sort_by is SortKey.SIZE:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok or not isinstance(last_id, str):
        raise ValueError(f"search position {after!r} does not fit sort key {sort_by.value}")
    return value, last_id


def _field_filters(q: SearchQuery, p: _Params) -> list[str]:
    """The filters on the file's own columns (not status, tags or purpose)."""
    where: list[str] = []
    if q.owner is not None:
        where.append(f"f.owner = {p(q.owner, 'text')}")
    if q.path:
        where.extend(_path_filter(q.path, p))
    if q.collection is not None:
        where.append(
            "EXISTS (SELECT 1 FROM horace_collection_members m "
            f"WHERE m.file_id = f.id AND m.collection = {p(q.collection, 'text')})"
        )
    if q.file_type:
        if "/" in q.file_type:
            if q.file_type.endswith("/*"):
                # (A MIME type's case means nothing: Text/* is text/*, as on SQLite.)
                prefix = _like_escape(q.file_type[:-1]) + "%"
                where.append(f"f.mime_type ILIKE {p(prefix, 'text')}")
            else:
                where.append(f"lower(f.mime_type) = lower({p(q.file_type, 'text')})")
        else:
            suffix = "%." + _like_escape(q.file_type.lstrip("."))
            where.append(f"f.file_path ILIKE {p(suffix, 'text')}")  # file_path is "C": ASCII
    for column, op, value, cast in (
        ("size", ">=", q.min_size, "bigint"),
        ("size", "<=", q.max_size, "bigint"),
        ("created_at", ">=", q.created_after, "timestamptz"),
        ("created_at", "<", q.created_before, "timestamptz"),
        ("checksum", "=", q.checksum, "text"),
        ("correlation_id", "=", q.correlation_id, "text"),
    ):
        if value is not None:
            where.append(f"f.{column} {op} {p(value, cast)}")
    return where


def _tag_filters(q: SearchQuery, p: _Params) -> list[str]:
    where: list[str] = []
    if q.tags:
        where.append(f"f.tags @> {p(list(q.tags), 'text[]')}")
    if q.any_tags:
        where.append(f"f.tags && {p(list(q.any_tags), 'text[]')}")
    return where


def _words_filter(q: SearchQuery, p: _Params) -> list[str]:
    """Files whose purpose or path has a word starting with each word of the purpose
    (backends/words.py), of the query's status; a text without words matches nothing."""
    if not q.purpose:
        return []
    found = words.query_words(q.purpose)
    if not found:
        return ["false"]
    statuses = [q.status] if q.status is not None else list(Status)
    return [f"f.words @@ {p(words.tsquery(found, [s.value for s in statuses]), 'tsquery')}"]


def _status_filter(q: SearchQuery, p: _Params) -> list[str]:
    return [] if q.status is None else [f"f.status = {p(q.status.value, 'text')}"]


def _after(q: SearchQuery, p: _Params, column: str, id_column: str) -> list[str]:
    """Rows past the keyset position, in the query's order.

    The id is compared as text in byte order, as SQLite compares its TEXT ids (and so a
    malformed id in a cursor is a position, not an error); for canonical ids this is the
    uuid order of the ORDER BY. The plain bound lets an index start there.
    """
    if q.after is None:
        return []
    value, last_id = _position(q.sort_by, q.after)
    op = ">" if q.order is Order.ASC else "<"
    x = p(value, _SORT[q.sort_by][1])
    return [
        f"{column} {op}= {x}",
        f'({column}, {id_column}::text COLLATE "C") {op} ({x}, {p(str(last_id), "text")})',
    ]


def _and(clauses: Sequence[str]) -> str:
    return " AND ".join(clauses) or "true"


def _direction(q: SearchQuery) -> str:
    return "ASC" if q.order is Order.ASC else "DESC"


def _search_sql(q: SearchQuery) -> tuple[str, list[Any], bool]:
    """One statement: the count, and the page (every column of each row); and whether
    one plan fits every run of it (else it is planned anew for its arguments, as
    _fetch_planned says)."""
    p = _Params()
    newest_first_of_a_status = q.sort_by is SortKey.CREATED_AT and q.status is not None
    words_alone = _words_alone(q)
    if newest_first_of_a_status and q.tags:
        count, page = _by_tag(q, p)
    elif newest_first_of_a_status and q.any_tags:
        count, page = _by_any_tag(q, p)
    elif words_alone:
        count, page = _by_words(q, p)
    else:
        count, page = _by_files(q, p)
    column = _SORT[q.sort_by][0]
    sql = (
        f"WITH c AS MATERIALIZED ({count}), page AS ({page}) "
        f"SELECT c.total, page.* FROM c LEFT JOIN page ON true "
        f"ORDER BY page.{column} {_direction(q)}, page.id {_direction(q)}"
    )
    return sql, p.values, not q.purpose or words_alone


def _by_files(q: SearchQuery, p: _Params) -> tuple[str, str]:
    """Any search, through horace_files and its indexes."""
    shared = _tag_filters(q, p) + _field_filters(q, p) + _words_filter(q, p)
    status = _status_filter(q, p)
    count = (
        _words_count(q, p)
        if q.purpose and len(shared) == 1  # the words (which hold the status) and nothing else
        else f"SELECT count(*) AS total FROM horace_files f WHERE {_and(shared + status)}"
    )
    column = f"f.{_SORT[q.sort_by][0]}"
    where = shared + status + _after(q, p, column, "f.id")
    # The page's ids first: an index that holds the sort key and the filters' columns
    # orders the matches without reading their rows; only the page's rows are read.
    ids = (
        f"SELECT f.id FROM horace_files f WHERE {_and(where)} "
        f"ORDER BY {column} {_direction(q)}, f.id {_direction(q)} "
        f"LIMIT {p(q.limit, 'bigint')} OFFSET {p(q.offset, 'bigint')}"
    )
    return count, f"SELECT {F_F} FROM ({ids}) ids JOIN horace_files f ON f.id = ids.id"


def _words_alone(q: SearchQuery) -> bool:
    """A search by purpose words and a status, and nothing else."""
    return (
        bool(q.purpose and words.query_words(q.purpose))
        and q.status is not None
        and not _tag_filters(q, _Params())
        and not _field_filters(q, _Params())
    )


# A sort key (by its type, _SORT) as an expression of itself: no index can serve the order.
_UNINDEXED = {"timestamptz": "{} + interval '0'", "bigint": "{} + 0", "text": "{} || ''"}


def _by_words(q: SearchQuery, p: _Params) -> tuple[str, str]:
    """Purpose words and a status alone. The count comes first (_words_count); the page
    one of two ways, chosen by that count as the statement runs:

    - many matches: the status's files in page order (the sort key's index), each tested,
      until the page is full: about (offset + limit) x files / matches rows read;
    - few: every match, through the words' GIN index, then sorted: about matches rows.

    The first reads fewer when matches² > (offset + limit) x files (pg_class.reltuples, the
    planner's own estimate). Chosen so, not by the planner, the one plan fits every word,
    and the statement is prepared once: a plan made without the words (the generic plan a
    prepared statement gets from its sixth run) cannot tell a common word from a rare one,
    and was several times slower than either way; planning each run for its words cost a
    round trip and about as long as the run itself. Each way is held to its own index:
    ts_match_vq (the function under @@) keeps the GIN index out of the first, an order by
    an expression of the sort key keeps the sort key's index out of the second (and there
    is no status filter: the status is in the words' lexemes)."""
    assert q.status is not None and q.purpose is not None
    tsquery = p(words.tsquery(words.query_words(q.purpose), [q.status.value]), "tsquery")
    reach = p(q.reach, "bigint")
    many = (  # (c: the count, as _search_sql names it)
        f"(SELECT total FROM c)::float8 ^ 2 > {reach}::float8 * "
        "greatest((SELECT reltuples FROM pg_class WHERE oid = 'horace_files'::regclass), 1000)"
    )
    name, cast = _SORT[q.sort_by]
    column = f"f.{name}"
    after = _after(q, p, column, "f.id")
    direction = _direction(q)
    limit = f"LIMIT {p(q.limit, 'bigint')} OFFSET {p(q.offset, 'bigint')}"
    in_order = (
        f"SELECT f.id FROM horace_files f "
        f"WHERE {_and([many, *_status_filter(q, p), f'ts_match_vq(f.words, {tsquery})', *after])} "
        f"ORDER BY {column} {direction}, f.id {direction} {limit}"
    )
    by_index = (
        f"SELECT f.id FROM horace_files f WHERE {_and([f'NOT {many}', f'f.words @@ {tsquery}', *after])} "
        f"ORDER BY {_UNINDEXED[cast].format(column)} {direction}, f.id {direction} {limit}"
    )
    ids = f"({in_order}) UNION ALL ({by_index})"
    return _words_count(q, p), f"SELECT {F_F} FROM ({ids}) ids JOIN horace_files f ON f.id = ids.id"


def _words_count(q: SearchQuery, p: _Params) -> str:
    """The count of a search by purpose words (and status) alone, from the index of
    horace_file_words: for each word, the files with a lexeme in one of its ranges
    ("<status>:<word>" and longer). A file may have several lexemes of a range ("report",
    "reports"), so the files are told apart; a range that holds one lexeme only is counted
    by horace_word_counts (schema step 5), without reading its matches. A file has one
    status: a single word's matches of each status add up."""
    assert q.purpose is not None
    found = words.query_words(q.purpose)
    if not found:
        return "SELECT 0::bigint AS total"
    statuses = [q.status] if q.status is not None else list(Status)
    ranges = [_lexeme_range(f"{s.value}:{word}", p) for word in found for s in statuses]
    if len(found) == 1:
        return f"SELECT {' + '.join(map(_range_count, ranges))} AS total"
    per_word = [
        "SELECT file_id FROM horace_file_words WHERE "
        + " OR ".join(ranges[i * len(statuses) : (i + 1) * len(statuses)])
        for i in range(len(found))
    ]
    # INTERSECT tells the files apart (its rows are distinct).
    return f"SELECT count(*) AS total FROM ({' INTERSECT '.join(per_word)}) w"


def _range_count(where: str) -> str:
    """The files with a lexeme in one range (*where*), as an expression."""
    least = f"(SELECT min(lexeme) FROM horace_file_words WHERE {where})"
    return (
        f"CASE WHEN {least} = (SELECT max(lexeme) FROM horace_file_words WHERE {where}) "
        f"THEN (SELECT coalesce(sum(files), 0)::bigint FROM horace_word_counts WHERE lexeme = {least}) "
        f"ELSE (SELECT count(DISTINCT file_id) FROM horace_file_words WHERE {where}) END"
    )


def _lexeme_range(prefix: str, p: _Params) -> str:
    """Lexemes that start with *prefix* (code point order: the column is "C")."""
    where = f"(lexeme >= {p(prefix, 'text')}"
    upper = words.prefix_end(prefix)
    return where + (f" AND lexeme < {p(upper, 'text')})" if upper is not None else ")")


_TAG_JOIN = " JOIN horace_files f ON f.id = t.file_id"


def _by_tag(q: SearchQuery, p: _Params) -> tuple[str, str]:
    """Newest first, led by the first tag: horace_file_tags' key is (tag, status,
    created_at, file_id), in page order."""
    assert q.status is not None
    lead = [f"t.tag = {p(q.tags[0], 'text')}", f"t.status = {p(q.status.value, 'text')}"]
    others = _tag_filters(attrs.evolve(q, tags=q.tags[1:]), p) + _field_filters(q, p) + _words_filter(q, p)
    count = (
        f"SELECT count(*) AS total FROM horace_file_tags t{_TAG_JOIN if others else ''} "
        f"WHERE {_and(lead + others)}"
    )
    order = f"t.created_at {_direction(q)}, t.file_id {_direction(q)}"
    where = lead + others + _after(q, p, "t.created_at", "t.file_id")
    page = (
        f"SELECT {F_F} FROM horace_file_tags t{_TAG_JOIN} WHERE {_and(where)} "
        f"ORDER BY {order} LIMIT {p(q.limit, 'bigint')} OFFSET {p(q.offset, 'bigint')}"
    )
    return count, page


def _tag_is(p: _Params, tag: str) -> str:
    return f"t.tag = {p(tag, 'text')}"


def _by_any_tag(q: SearchQuery, p: _Params) -> tuple[str, str]:
    """Newest first, any of the tags: the page is among the first offset+limit files of
    each tag (a file ahead of it is ahead in its own tag's list too)."""
    assert q.status is not None
    status = f"t.status = {p(q.status.value, 'text')}"
    others = _field_filters(q, p) + _words_filter(q, p)
    join = _TAG_JOIN if others else ""
    any_tag = f"t.tag = ANY ({p(list(q.any_tags), 'text[]')})"
    count = (
        f"SELECT count(DISTINCT t.file_id) AS total FROM horace_file_tags t{join} "
        f"WHERE {_and([any_tag, status, *others])}"
    )
    after = _after(q, p, "t.created_at", "t.file_id")
    reach = p(q.reach, "bigint")
    direction = _direction(q)
    heads = " UNION ".join(
        f"(SELECT t.file_id, t.created_at FROM horace_file_tags t{join} "
        f"WHERE {_and([_tag_is(p, tag), status, *others, *after])} "
        f"ORDER BY t.created_at {direction}, t.file_id {direction} LIMIT {reach})"
        for tag in dict.fromkeys(q.any_tags)
    )
    limit, offset = p(q.limit, "bigint"), p(q.offset, "bigint")
    # The page's ids first, then their rows: not the rows of every head.
    ids = (
        f"SELECT u.file_id FROM ({heads}) u "
        f"ORDER BY u.created_at {direction}, u.file_id {direction} LIMIT {limit} OFFSET {offset}"
    )
    return count, f"SELECT {F_F} FROM ({ids}) h JOIN horace_files f ON f.id = h.file_id"


# -- the units of work: asyncio coroutines of one connection ------------------------------

_FILE_BY_ID = f"SELECT {F} FROM horace_files WHERE id = $1::uuid"
_FILE_BY_PATH = f"SELECT {F} FROM horace_files WHERE file_path = $1::text"
_FILE_BY_CHECKSUM = (
    f"SELECT {F} FROM horace_files WHERE checksum = $1::text AND status = 'active' "
    "ORDER BY created_at, id LIMIT 1"
)
_VERSIONS = f"SELECT {V} FROM horace_versions WHERE file_id = $1::uuid ORDER BY version DESC"
_VERSION = f"SELECT {V} FROM horace_versions WHERE file_id = $1::uuid AND version = $2::bigint"
_WORKING_MODE = "SELECT working_mode FROM horace_files WHERE id = $1::uuid"

_INSERT_INPUT = """
input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
        $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::text[],
        $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[],
        $21::integer[]
    ) WITH ORDINALITY AS t(id, file_path, owner, purpose, tags, size, mime_type, checksum,
                           status, correlation_id, created_at, updated_at, metadata,
                           stat_size, stat_mtime_ns, stat_ctime_ns, stat_inode, stat_device,
                           stat_recorded_ns, working_mode, ord)
),
candidates AS (  -- not catalogued already, by path or (unless copies, $22) by an active file's content
    SELECT i.* FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM horace_files f WHERE f.file_path = i.file_path)
      AND ($22::boolean OR NOT EXISTS (SELECT 1 FROM horace_files f
                                       WHERE f.checksum = i.checksum AND f.status = 'active'))
),
"""
# Inside the batch, a file is skipped when an earlier one that was inserted has its path or
# (when that one is active) its checksum. If the batch repeats only paths or only
# checksums, "an earlier candidate" is the same as "an earlier inserted file":
_CHOSEN_SIMPLE = """
chosen AS (
    SELECT c.* FROM candidates c
    WHERE NOT EXISTS (SELECT 1 FROM candidates e WHERE e.ord < c.ord AND e.file_path = c.file_path)
      AND ($22::boolean OR NOT EXISTS (SELECT 1 FROM candidates e WHERE e.ord < c.ord
                                       AND e.checksum = c.checksum AND e.status = 'active'))
),
"""
# ... if it repeats both, one file at a time, in order (quadratic, only for such batches):
_CHOSEN_WALK = """
numbered AS (SELECT c.*, row_number() OVER (ORDER BY c.ord) AS n FROM candidates c),
walk (n, paths, sums, take) AS (
    SELECT 0::bigint, ARRAY[]::text[], ARRAY[]::text[], false
    UNION ALL
    SELECT x.n,
           CASE WHEN x.take THEN w.paths || x.file_path ELSE w.paths END,
           CASE WHEN x.take AND x.status = 'active' AND NOT $22::boolean THEN w.sums || x.checksum
                ELSE w.sums END,
           x.take
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT c.n, c.file_path, c.checksum, c.status,
               NOT (c.file_path = ANY (w.paths)) AND NOT (c.checksum = ANY (w.sums)) AS take
        FROM numbered c WHERE c.n = w.n + 1
    ) x
),
chosen AS (SELECT c.* FROM numbered c JOIN walk w ON w.n = c.n WHERE w.take),
"""
_INSERT_REST = """
inserted AS (
    INSERT INTO horace_files (id, file_path, owner, purpose, tags, size, mime_type, checksum,
                              status, current_version, correlation_id, created_at, updated_at,
                              deleted_at, metadata, stat_size, stat_mtime_ns, stat_ctime_ns,
                              stat_inode, stat_device, stat_recorded_ns, working_mode)
    SELECT c.id, c.file_path, c.owner, c.purpose,
           ARRAY(SELECT jsonb_array_elements_text(c.tags::jsonb)), c.size, c.mime_type,
           c.checksum, c.status, 1, c.correlation_id, c.created_at, c.updated_at, NULL,
           c.metadata::jsonb, c.stat_size, c.stat_mtime_ns, c.stat_ctime_ns, c.stat_inode,
           c.stat_device, c.stat_recorded_ns, c.working_mode
    FROM chosen c ORDER BY c.ord
    ON CONFLICT (file_path) DO NOTHING  -- a concurrent writer was first
    RETURNING id
),
done AS (SELECT c.* FROM chosen c JOIN inserted USING (id)),
first_version AS (
    INSERT INTO horace_versions (file_id, version, checksum, size, created_at,
                                 restored_from_version, correlation_id)
    SELECT id, 1, checksum, size, created_at, NULL, correlation_id FROM done
),
first_done AS (SELECT created_at FROM done ORDER BY ord LIMIT 1),
collection AS (
    INSERT INTO horace_collections (name, created_at, updated_at)
    SELECT $14::text, created_at, created_at FROM first_done WHERE $14::text IS NOT NULL
    ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at
),
members AS (
    INSERT INTO horace_collection_members (collection, file_id, added_at)
    SELECT $14::text, d.id, first_done.created_at FROM done d, first_done
    WHERE $14::text IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT ord FROM done ORDER BY ord
"""
_INSERT_SIMPLE = "WITH " + _INSERT_INPUT + _CHOSEN_SIMPLE + _INSERT_REST
_INSERT_WALK = "WITH RECURSIVE " + _INSERT_INPUT + _CHOSEN_WALK + _INSERT_REST


def _add_version_sql(only: str = "") -> str:
    return f"""
WITH numbered AS (
    -- The next number after the newest row, and never below the file's current one (see
    -- the SQLite backend).
    SELECT f.id, greatest(coalesce(
               (SELECT max(v.version) FROM horace_versions v WHERE v.file_id = f.id), 0
           ), f.current_version - 1) + 1 AS number
    FROM horace_files f WHERE f.id = $1::uuid{only}
),
inserted AS (
    INSERT INTO horace_versions ({V})
    SELECT n.id, n.number, $2::text, $3::bigint, $4::timestamptz, $5::integer, $6::text
    FROM numbered n
    RETURNING {V}
),
updated AS (
    UPDATE horace_files f SET current_version = n.number, checksum = $2::text,
        size = $3::bigint, mime_type = $7::text, updated_at = $4::timestamptz,
        status = coalesce($8::text, f.status),
        deleted_at = CASE WHEN coalesce($8::text, f.status) = 'deleted' THEN f.deleted_at END,
        ({_STAT_COLUMNS}) = ($11::bigint, $12::bigint, $13::bigint, $14::bigint, $15::bigint,
                             $16::bigint),
        working_mode = coalesce($17::integer, f.working_mode)
    FROM numbered n WHERE f.id = n.id
    RETURNING {F_F}
),
pruned AS (
    DELETE FROM horace_versions v USING numbered n
    WHERE v.file_id = n.id AND v.version <= n.number - $9::integer
      AND v.created_at <= $10::timestamptz
    RETURNING v.version, v.checksum
)
SELECT {_cols(_FILE_COLUMNS, "u")}, {_cols(_VERSION_COLUMNS, "i", "v_")},
    ARRAY(
        -- Every CTE sees the snapshot before the statement: the pruned rows are still
        -- visible (so they are excluded by key) and the new version is not (so its
        -- checksum is excluded by value).
        SELECT DISTINCT p.checksum FROM pruned p
        WHERE p.checksum <> $2::text
          AND NOT EXISTS (
              SELECT 1 FROM horace_versions o
              WHERE o.checksum = p.checksum
                AND NOT (o.file_id = $1::uuid AND o.version IN (SELECT version FROM pruned))
          )
    ) AS orphans
FROM updated u, inserted i
"""


_ADD_VERSION = _add_version_sql()
# Only to a file still active at the version the caller looked at ($18); else no row.
# (As a scan saw it: its current version, active, at its path; a file moved since holds
# another file's content at the path that was read.)
_ADD_SEEN_VERSION = _add_version_sql(
    " AND f.current_version = $18::integer AND f.status = 'active' AND f.file_path = $19::text"
)

_UPDATE_FILE = f"""
WITH updated AS (
    UPDATE horace_files f SET
        updated_at = $2::timestamptz,
        owner = coalesce($3::text, f.owner),
        purpose = coalesce($4::text, f.purpose),
        tags = coalesce($5::text[], f.tags),
        status = coalesce($6::text, f.status),
        deleted_at = CASE
            WHEN $6::text IS NULL OR $6::text = f.status THEN f.deleted_at
            -- never before the file's last change (a writer's clock behind: see sqlite.py)
            WHEN $6::text = 'deleted' THEN greatest($2::timestamptz, f.updated_at)
        END,
        metadata = CASE WHEN $7::jsonb IS NULL THEN f.metadata ELSE f.metadata || $7::jsonb END,
        working_mode = coalesce($9::integer, f.working_mode),
        -- a status change: the working file leaves files/, or comes back as another file
        {_STAT_KEPT_UNLESS_STATUS_CHANGES}
    WHERE f.id = $1::uuid
    RETURNING {F_F}
),
collection AS (
    INSERT INTO horace_collections (name, created_at, updated_at)
    SELECT $8::text, $2::timestamptz, $2::timestamptz FROM updated WHERE $8::text IS NOT NULL
    ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at
),
member AS (
    INSERT INTO horace_collection_members (collection, file_id, added_at)
    SELECT $8::text, u.id, $2::timestamptz FROM updated u WHERE $8::text IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT * FROM updated
"""

_MOVE_FILE = f"""
UPDATE horace_files f SET file_path = $2::text, updated_at = $3::timestamptz,
    ({_STAT_COLUMNS}) = ($4::bigint, $5::bigint, $6::bigint, $7::bigint, $8::bigint, $9::bigint),
    working_mode = coalesce($10::integer, f.working_mode)
WHERE f.id = $1::uuid
RETURNING {F_F}
"""

_FIND_DUPLICATES = f"""
WITH sums AS (
    SELECT checksum, max(size) AS size, count(*) AS file_count FROM horace_files
    WHERE status <> 'deleted' GROUP BY checksum HAVING count(*) > 1
    ORDER BY max(size) DESC, checksum COLLATE "C" LIMIT $1::bigint OFFSET $2::bigint
)
SELECT s.checksum AS g_checksum, s.size AS g_size, s.file_count AS g_file_count, f.*
FROM sums s CROSS JOIN LATERAL (
    SELECT {F_F} FROM horace_files f WHERE f.checksum = s.checksum AND f.status <> 'deleted'
    ORDER BY f.created_at, f.id LIMIT $3::bigint
) f
ORDER BY s.size DESC, s.checksum COLLATE "C", f.created_at, f.id
"""

_MEMBER_COUNT = "(SELECT count(*) FROM horace_collection_members x WHERE x.collection = c.name)"
_COLLECTION_SELECT = (
    f"SELECT {_cols(_COLLECTION_COLUMNS, 'c')}, {_MEMBER_COUNT} AS member_count FROM horace_collections c"
)
_UPSERT_COLLECTION = f"""
WITH c AS (
    INSERT INTO horace_collections AS h (name, description, metadata, created_at, updated_at)
    VALUES ($1::text, $2::text, coalesce($3::jsonb, '{{}}'::jsonb), $4::timestamptz,
            $4::timestamptz)
    ON CONFLICT (name) DO UPDATE SET
        description = coalesce(excluded.description, h.description),
        metadata = CASE WHEN $3::jsonb IS NOT NULL THEN excluded.metadata ELSE h.metadata END,
        updated_at = excluded.updated_at
    RETURNING {", ".join(_COLLECTION_COLUMNS)}
),
added AS (
    INSERT INTO horace_collection_members (collection, file_id, added_at)
    SELECT $1::text, f.id, $4::timestamptz FROM horace_files f WHERE f.id = ANY ($5::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING file_id
)
SELECT c.*, {_MEMBER_COUNT} + (SELECT count(*) FROM added) AS member_count FROM c
"""
_LIST_COLLECTIONS = f"""
SELECT t.total, page.* FROM (SELECT count(*) AS total FROM horace_collections) t
LEFT JOIN ({_COLLECTION_SELECT} ORDER BY c.name COLLATE "C"
           LIMIT $1::bigint OFFSET $2::bigint) page ON true
ORDER BY page.name COLLATE "C"
"""
_GET_COLLECTION = f"""
WITH c AS ({_COLLECTION_SELECT} WHERE c.name = $1::text)
SELECT {_cols((*_COLLECTION_COLUMNS, "member_count"), "c", "c_")}, page.*
FROM c LEFT JOIN LATERAL (
    SELECT m.added_at AS m_added_at, {F_F}
    FROM horace_collection_members m JOIN horace_files f ON f.id = m.file_id
    WHERE m.collection = c.name
    ORDER BY m.added_at, f.id LIMIT $2::bigint OFFSET $3::bigint
) page ON true
ORDER BY page.m_added_at, page.id
"""
_ADD_MEMBERS = f"""
WITH c AS (
    UPDATE horace_collections SET updated_at = $2::timestamptz WHERE name = $1::text
    RETURNING {", ".join(_COLLECTION_COLUMNS)}
),
added AS (
    INSERT INTO horace_collection_members (collection, file_id, added_at)
    SELECT c.name, f.id, $2::timestamptz FROM c JOIN horace_files f ON f.id = ANY ($3::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING file_id
)
SELECT c.*, {_MEMBER_COUNT} + (SELECT count(*) FROM added) AS member_count FROM c
"""
_REMOVE_MEMBERS = f"""
WITH c AS (
    UPDATE horace_collections SET updated_at = $2::timestamptz WHERE name = $1::text
    RETURNING {", ".join(_COLLECTION_COLUMNS)}
),
removed AS (
    DELETE FROM horace_collection_members x USING c
    WHERE x.collection = c.name AND x.file_id = ANY ($3::uuid[])
    RETURNING x.file_id
)
SELECT c.*, {_MEMBER_COUNT} - (SELECT count(*) FROM removed) AS member_count FROM c
"""
_DELETE_COLLECTION = "DELETE FROM horace_collections WHERE name = $1::text RETURNING 1"
_PRESENT_IDS = "SELECT id FROM horace_files WHERE id = ANY ($1::uuid[])"
_UNREFERENCED = (
    "SELECT s FROM unnest($1::text[]) s "
    "WHERE NOT EXISTS (SELECT 1 FROM horace_versions v WHERE v.checksum = s)"
)
_ALL_FILES = f"SELECT {F} FROM horace_files"
_WORKING_INDEX = f"SELECT id, file_path, checksum, status, current_version, {_STAT_COLUMNS} FROM horace_files"
_INDEX_ENTRY = _WORKING_INDEX + " WHERE id = $1::uuid"
_REFRESH_WORKING = f"""
WITH seen AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::integer[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::bigint[], $10::integer[], $11::text[]
    ) AS t(id, version, checksum, size, mtime_ns, ctime_ns, inode, device, recorded_ns, mode, path)
)
UPDATE horace_files f SET ({_STAT_COLUMNS}) = (
    s.size, s.mtime_ns, s.ctime_ns, s.inode, s.device, s.recorded_ns),
    working_mode = coalesce(s.mode, f.working_mode)
FROM seen s
WHERE f.id = s.id AND f.current_version = s.version AND f.checksum = s.checksum AND f.file_path = s.path
"""
_ALL_VERSIONS = f"SELECT {V} FROM horace_versions"
_REPAIR_CURRENT = f"""
WITH repaired AS (
    UPDATE horace_files f SET (current_version, checksum, size) = (
        SELECT v.version, v.checksum, v.size FROM horace_versions v
        WHERE v.file_id = f.id ORDER BY v.version DESC LIMIT 1), {_NO_STAT}
    WHERE f.id = $1::uuid AND EXISTS (SELECT 1 FROM horace_versions v WHERE v.file_id = f.id)
    RETURNING {F_F}
)
SELECT * FROM repaired
UNION ALL
SELECT {F} FROM horace_files WHERE id = $1::uuid AND NOT EXISTS (SELECT 1 FROM repaired)
"""
_DELETE_VERSION = "DELETE FROM horace_versions WHERE file_id = $1::uuid AND version = $2::bigint"
_PURGE_DELETED = """
WITH gone AS (
    DELETE FROM horace_files WHERE status = 'deleted' AND deleted_at < $1::timestamptz
    RETURNING id
),
sums AS (  -- the versions of the purged files are still visible to this statement
    SELECT DISTINCT v.checksum FROM horace_versions v JOIN gone g ON g.id = v.file_id
)
SELECT (SELECT count(*) FROM gone) AS purged,
    ARRAY(
        SELECT s.checksum FROM sums s
        WHERE NOT EXISTS (
            SELECT 1 FROM horace_versions o
            WHERE o.checksum = s.checksum AND o.file_id NOT IN (SELECT id FROM gone)
        )
    ) AS orphans
"""
# In id order, as SQLite's (see there).
_PRUNE_TURNS = (
    "DELETE FROM conversations WHERE id IN "
    "(SELECT id FROM conversations WHERE created_at < $1 ORDER BY id LIMIT $2)"
)

_INSERT_TURNS = """
WITH input AS (
    SELECT t.*, min(t.ord) OVER (PARTITION BY t.conversation_id, t.turn_number) AS first_ord
    FROM unnest(
        $1::uuid[], $2::integer[], $3::text[], $4::text[], $5::text[], $6::integer[],
        $7::integer[], $8::double precision[], $9::text[], $10::timestamptz[]
    ) WITH ORDINALITY AS t(conversation_id, turn_number, role, content, model, input_tokens,
                           output_tokens, timing_ms, metadata, created_at, ord)
),
inserted AS (
    INSERT INTO conversations (conversation_id, turn_number, role, content, model,
                               input_tokens, output_tokens, timing_ms, metadata, created_at)
    SELECT conversation_id, turn_number, role, content, model, input_tokens, output_tokens,
           timing_ms, metadata::jsonb, created_at
    FROM input ORDER BY ord
    ON CONFLICT (conversation_id, turn_number) DO NOTHING
    RETURNING conversation_id, turn_number
),
outcome AS (
    SELECT i.*, EXISTS (
        SELECT 1 FROM inserted n
        WHERE n.conversation_id = i.conversation_id AND n.turn_number = i.turn_number
    ) AS key_inserted  -- by the first turn of the batch with this key
    FROM input i
)
SELECT o.ord FROM outcome o
WHERE NOT (o.key_inserted AND o.ord = o.first_ord)
  AND NOT EXISTS (  -- stored before, with the same content: a retried delivery
      SELECT 1 FROM conversations c
      WHERE c.conversation_id = o.conversation_id AND c.turn_number = o.turn_number
        AND c.role = o.role AND c.content = o.content)
  AND NOT (o.key_inserted AND EXISTS (  -- the same content earlier in this batch
      SELECT 1 FROM input f
      WHERE f.ord = o.first_ord AND f.role = o.role AND f.content = o.content))
ORDER BY o.ord
"""


async def _fetchrow(conn: Conn, sql: str, *args: Any) -> Row | None:
    return await conn.fetchrow(sql, *args)


async def _fetch(conn: Conn, sql: str, *args: Any) -> list[Row]:
    return list(await conn.fetch(sql, *args))


async def _fetch_planned(conn: Conn, sql: str, *args: Any) -> list[Row]:
    """As _fetch, planned for these very arguments: a statement prepared for this one run.
    A prepared statement run often gets a generic plan from its sixth run on, made without
    the arguments. For words, that plan cannot tell a word in every tenth file (read the
    newest files until the page is full) from a rare one (read its few files, then sort),
    and was several times slower than either. For a batch of files, it takes the batch's
    arrays for 10 rows and joins them by nested loops: 20 s for 5,000 files, not 1.5 s.
    (``SET LOCAL plan_cache_mode`` would also replan each foreign key check the batch's
    rows make inside the statement: three times as long.)"""
    statement = await conn.prepare(sql)
    return list(await statement.fetch(*args))


_LOCK_CONTENTS = (
    f"SELECT pg_advisory_xact_lock({CONTENT_LOCK_CLASS}, k) "
    "FROM unnest($1::int[]) WITH ORDINALITY AS t(k, n) ORDER BY n"
)


def _content_key(checksum: str) -> int:
    """A content's lock: one of CONTENT_LOCKS, by its checksum's hash."""
    return int.from_bytes(hashlib.blake2b(checksum.encode(), digest_size=4).digest(), "big") % CONTENT_LOCKS


async def _insert_by_content(conn: Conn, contents: list[int], sql: str, *args: Any) -> list[Row]:
    """Insert files (*sql*) holding the locks of their contents, *contents* in order (so
    that two batches sharing contents never wait on each other in a cycle): the insert's
    look for an active file with its content sees any that another instance committed
    while this one waited."""
    async with conn.transaction():
        if contents:
            await conn.execute(_LOCK_CONTENTS, contents)
        return await _fetch_planned(conn, sql, *args)


# One fold at a time per schema (several instances share one); another finding it under way
# leaves it be. (A two-int4 key, as the migration lock's.)
_FOLD_LOCK = f"SELECT pg_try_advisory_xact_lock({MIGRATION_LOCK[0]}, hashtext(current_schema()))"
# Rows that a writer adds meanwhile are not in this statement's snapshot: they stay as they
# are, and a row another fold took first is not returned by this one's DELETE.
_FOLD_WORD_COUNTS = """
WITH folded AS (
    DELETE FROM horace_word_counts WHERE lexeme IN (
        SELECT lexeme FROM horace_word_counts GROUP BY lexeme HAVING count(*) > 1 OR sum(files) = 0
    )
    RETURNING lexeme, files
)
INSERT INTO horace_word_counts (lexeme, files)
SELECT lexeme, sum(files) FROM folded GROUP BY lexeme HAVING sum(files) <> 0
"""


async def _fold_word_counts(conn: Conn) -> None:
    async with conn.transaction():
        if await conn.fetchval(_FOLD_LOCK):
            await conn.execute(_FOLD_WORD_COUNTS)


async def _execute(conn: Conn, sql: str, *args: Any) -> str:
    return str(await conn.execute(sql, *args))


def _version_args(
    fid: uuid.UUID,
    new: NewVersion,
    at: datetime,
    correlation_id: str | None,
    retention: Retention,
    status: str | None,
) -> tuple[Any, ...]:
    """The parameters $1..$17 of :data:`_ADD_VERSION`."""
    cutoff = datetime.fromtimestamp(at.timestamp() - retention.min_age_seconds, UTC)
    return (
        fid,
        new.checksum,
        new.size,
        at,
        new.restored_from_version,
        correlation_id,
        new.mime_type,
        None if status is None else str(status),
        retention.keep,
        cutoff,
        *_stat_values(new.working),
    )


def _added(row: Row) -> tuple[FileRecord, VersionRecord, list[str]]:
    return _file(row), _version(row, "v_"), sorted(set(row["orphans"]))


async def _add_version(conn: Conn, *args: Any) -> Row | None:
    # Writers of one file hold its lock, so the number max+1 is normally free. Without the
    # lock, two writers can pick the same number from their snapshots: the second one
    # then waits for the first to commit, fails on the key, and simply goes again with a
    # fresh snapshot, as the serialized SQLite writer would have. Each failure means that
    # another writer's version was committed, so n writers at once cost one of them n - 1
    # tries at most; the bound is only a backstop.
    for attempt in itertools.count(1):
        try:
            return await conn.fetchrow(_ADD_VERSION, *args)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "horace_versions_pkey" or attempt >= 1000:
                raise
    raise AssertionError("unreachable")


async def _add_seen_versions(conn: Conn, each: Sequence[tuple[Any, ...]]) -> list[Row | None]:
    # One transaction, one commit (and WAL flush) for the lot. Its files' locks are held,
    # so a version number is taken from under it only by a writer that holds none; then
    # the lot is undone and reported as not done, and each file goes again on its own.
    try:
        async with conn.transaction():
            return [await conn.fetchrow(_ADD_SEEN_VERSION, *args) for args in each]
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "horace_versions_pkey":
            raise
        return [None] * len(each)


async def _move_files(conn: Conn, each: list[tuple[Any, ...]]) -> list[Row | None]:
    rows: list[Row | None] = []
    async with conn.transaction():
        for args in each:
            try:
                async with conn.transaction():  # (a savepoint: a path taken undoes this move only)
                    rows.append(await conn.fetchrow(_MOVE_FILE, *args))
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "horace_files_file_path_key":
                    raise
                rows.append(None)  # the new path is catalogued already
    return rows


async def _identity(conn: Conn) -> CatalogIdentity:
    # to_regclass: the tables as the connection's search_path finds them, or NULL; their
    # schema (else the one new tables would go to) is their place, with the database.
    files, store, place = await conn.fetchrow(
        "SELECT to_regclass('horace_files') IS NOT NULL, to_regclass('horace_store') IS NOT NULL, "
        "'postgresql:' || current_database() || '/' || coalesce("
        "(SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass('horace_files')), current_schema(), '')"
    )
    if not files:
        return CatalogIdentity(None, None, empty=True, place=place, tables=False)
    empty = await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM horace_files)")
    row = (
        await conn.fetchrow("SELECT store_id::text, storage_path, bound_at FROM horace_store")
        if store
        else None
    )
    if row is None:
        return CatalogIdentity(None, None, bool(empty), place)
    return CatalogIdentity(row[0], row[1], bool(empty), place, row[2])


_BIND = (
    "WITH ins AS (INSERT INTO horace_store (id, store_id, storage_path, bound_at) "
    "VALUES (1, $1::uuid, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING store_id) "
    "SELECT store_id::text FROM ins UNION ALL SELECT store_id::text FROM horace_store LIMIT 1"
)


_BOUND = "SELECT store_id::text FROM horace_store"


_REBIND = (
    "UPDATE horace_store SET store_id = $2::uuid, storage_path = $3, bound_at = $4 "
    "WHERE store_id = $1::uuid RETURNING store_id"
)


async def _migrate(conn: Conn) -> int:
    # Up to date (every start but the first after an upgrade): nothing is made, so a role
    # that may only read and write the tables (no CREATE on the schema) can run Horace.
    if await _version_table(conn):  # (absent, it is made below: Horace's, or another starting one's)
        applied = await _applied(conn)
        if not migrations.pending("postgres", applied):
            return max(applied, default=0)
    async with conn.transaction():
        # Several instances starting together queue here; the lock ends with the transaction.
        # A wait is said first: one as long as another's migration, or for ever behind a
        # process that holds the lock and is stuck (nothing else would say why).
        if not await conn.fetchval(
            f"SELECT pg_try_advisory_xact_lock({MIGRATION_LOCK[0]}, {MIGRATION_LOCK[1]})"
        ):
            log.warning(
                "another process is applying schema steps to this catalog: waiting for it (pid in "
                "pg_locks where locktype = 'advisory' and classid = %d and objid = %d)",
                MIGRATION_LOCK[0],
                MIGRATION_LOCK[1],
            )
        await conn.execute(
            f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK[0]}, {MIGRATION_LOCK[1]}); "
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        applied = await _applied(conn)
        for step in migrations.pending("postgres", applied):
            await conn.execute(step.sql)  # no arguments: a multi-statement simple query
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step.version)
            applied.add(step.version)
    return max(applied, default=0)


async def _version_table(conn: Conn) -> bool:
    """Whether there is a ``schema_version`` table: :class:`NotHoraces` when it is another
    application's (a migration tool's, of another shape)."""
    if not await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
        return False
    columns, records_steps, has_files = await conn.fetchrow(
        "SELECT (SELECT array_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod)) "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass('schema_version') "
        "AND a.attnum > 0 AND NOT a.attisdropped), EXISTS (SELECT 1 FROM schema_version), "
        "to_regclass('horace_files') IS NOT NULL"
    )
    migrations.check_version_table(list(columns or ()), records_steps, has_files)
    return True


async def _applied_if_any(conn: Conn) -> set[int]:
    """The schema steps applied (none when there is no table of them)."""
    return await _applied(conn) if await _version_table(conn) else set()


async def _applied(conn: Conn) -> set[int]:
    return {row[0] for row in await conn.fetch("SELECT version FROM schema_version")}


log = logging.getLogger("horace.backends")


def _asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """What asyncio reports with nobody to raise it to. trio-asyncio's own handler raises
    it into the loop's nursery, which ends the backend and everything in it; a connection
    lost without a statement on it ("Future exception was never retrieved": asyncpg's
    pool is told of it later, and replaces it) is no reason for that: logged, one line, at
    INFO (what follows from it is said where it matters: a command's error, /health)."""
    exc = context.get("exception")
    if isinstance(exc, OSError | asyncpg.exceptions.PostgresConnectionError):
        log.info("PostgreSQL: %s: %s: %s", context.get("message"), type(exc).__name__, exc)
        return
    loop.default_exception_handler(context)


# -- connection sources --------------------------------------------------------------------

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS, connect timeout (TimeoutError)
    asyncpg.exceptions.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# A new connection refused (the role's login revoked or its password changed, the database
# dropped): unavailable until an operator mends it, as a server down is.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # class 28, a wrong password too
    asyncpg.exceptions.InvalidCatalogNameError,  # no such database
)


# asyncpg's words for a call on a pool connection it detached, once lost, from its pool.
_DETACHED = "released back to the pool"


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # The pool or the connection is closed (or closing), or the connection was lost under
    # a unit that had more to do (asyncpg then detaches it from its pool: "released back
    # to the pool"); other interface errors are bugs.
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and ("clos" in str(exc) or _DETACHED in str(exc)):
        return True
    # A connection the server dropped mid-statement (fast shutdown) is left in a protocol
    # state asyncpg reports as "cannot switch to state ...": the server is going away.
    return _is_stale(exc)


# Refusals met before any statement was sent: a connection never made.
_NEVER_CONNECTED: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    socket.gaierror,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def _in_doubt(exc: BaseException) -> bool:
    """Whether the connection an unavailable database (:func:`_is_unavailable`) was met
    on could have been lost under a statement, a COMMIT among them (sent, its answer never
    read), rather than never made: a writer cannot tell whether its change was kept."""
    connect_timeout = isinstance(exc, TimeoutError) and not str(exc)
    pool_closed = isinstance(exc, asyncpg.exceptions.InterfaceError) and "pool is clos" in str(exc)
    return not (isinstance(exc, _NEVER_CONNECTED) or connect_timeout or pool_closed)


def _still_open(conn: Conn) -> bool:
    """Is *conn* open? A pool's connection that was lost has been detached from its pool
    by asyncpg, which then refuses every call on it, this question too."""
    try:
        return not conn.is_closed()
    except asyncpg.exceptions.InterfaceError:
        return False


def _is_stale(exc: BaseException) -> bool:
    """A connection the server has dropped, refusing a statement before sending it."""
    return isinstance(exc, asyncpg.exceptions.InternalClientError) and "cannot switch to state" in str(exc)


def server_of(url: str) -> str:
    """Which server a URL names, for messages: host, port and database, never the
    credentials or the other parameters it carries. Each is looked for where libpq (and
    asyncpg) look: the URL's netloc, its query (``?host=/run/postgresql&port=5433``, a
    socket's folder), then ``PGHOST``, ``PGPORT``, ``PGDATABASE``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    database = (
        parts.path.lstrip("/") or query.get("dbname") or query.get("database") or os.environ.get("PGDATABASE")
    )
    addresses = hosts_of(parts.netloc)
    if len(addresses) > 1:  # several servers, tried in turn
        return f"{','.join(addresses)}/{database or ''}"
    try:
        host = parts.hostname or query.get("host") or os.environ.get("PGHOST") or "localhost"
        port = parts.port or query.get("port") or os.environ.get("PGPORT") or 5432
    except ValueError:
        return "the configured server"
    return f"{host}:{port}/{database or ''}"


def _connect_refused(exc: Exception) -> bool:
    """The login refused because the role lacks CONNECT on the database (revoked from
    PUBLIC): a refused login, not a privilege on Horace's tables."""
    return isinstance(exc, asyncpg.exceptions.InsufficientPrivilegeError) and "CONNECT privilege" in str(
        getattr(exc, "detail", "") or ""
    )


def _login_hints(url: str) -> dict[type[Exception], str]:
    """What a URL lacks that a refusal of the login may come of, by the refusal's class."""
    parts = urlsplit(url)
    hints: dict[type[Exception], str] = {}
    pgpass = os.environ.get("PGPASSFILE") or os.path.expanduser("~/.pgpass")
    if not parts.password and not os.environ.get("PGPASSWORD") and not os.path.exists(pgpass):
        hints[asyncpg.exceptions.InvalidPasswordError] = (
            "no password was given: in the URL, PGPASSWORD or ~/.pgpass"
        )
    if parts.path in ("", "/") and not os.environ.get("PGDATABASE"):
        hints[asyncpg.exceptions.InvalidCatalogNameError] = (
            "the URL names no database, so the user's name was taken: postgresql://host/DATABASE"
        )
    return hints


class _Hop:
    """Runs asyncio-flavoured coroutines on the trio-asyncio loop, mapping lost
    connections to :class:`BackendUnavailable`."""

    def __init__(self, loop: Any, url: str, renew: Callable[[], Awaitable[None]] | None = None) -> None:
        self.loop = loop
        self.where = server_of(url)
        self.role = unquote(urlsplit(url).username or "") or os.environ.get("PGUSER") or "..."
        self._hints = _login_hints(url)
        self.renew = renew  # the pool's: replaces its connections (after a read-only refusal)
        self.refusals = LastRefusal()
        # The schema steps this code knows and the catalog has not had, when it is behind
        # (as PostgresBackend.identity found it): "5, 6".
        self.behind: str | None = None

    async def __call__(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await self._call(fn, *args, **kwargs)
        except REFUSALS as exc:
            self.refusals.note(exc)
            raise

    async def _call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result: T = await trio_asyncio.aio_as_trio(fn, loop=self.loop)(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, _REFUSED):
                refused = f"PostgreSQL at {self.where} refused the connection: {exc}"
                hint = self._hints.get(type(exc))
                raise BackendUnavailable(refused + (f" ({hint})" if hint else "")) from None
            if _connect_refused(exc):
                database = self.where.partition("/")[2] or "..."
                raise BackendUnavailable(
                    f"PostgreSQL at {self.where} refused the connection: {exc} (the role in the URL "
                    f"needs GRANT CONNECT ON DATABASE {database} TO {self.role})"
                ) from None
            if _is_unavailable(exc):
                detail = str(exc) or type(exc).__name__
                # (asyncpg's words for it: "released back to the pool", "cannot call
                # Transaction.__aexit__(): the underlying connection is closed", ...)
                if _DETACHED in detail or "connection is closed" in detail or _is_stale(exc):
                    detail = "its connection was lost"
                elif isinstance(exc, TimeoutError) and not str(exc):
                    # (asyncpg's connect timeout, or the pool's: a host that takes the
                    # connection and never answers, a firewall that drops it)
                    detail = "no answer in time (TimeoutError: connect_timeout in the URL sets the wait)"
                raise BackendUnavailable(
                    f"PostgreSQL at {self.where} is unavailable: {detail}", in_doubt=_in_doubt(exc)
                ) from exc
            if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
                # A session keeps the default_transaction_read_only it started with: once
                # the operator turns it off, only new connections write. So every
                # connection is replaced (those in use when they come back).
                if self.renew is not None:
                    await trio_asyncio.aio_as_trio(self.renew, loop=self.loop)()
                raise CatalogUnwritable(
                    f"PostgreSQL at {self.where} takes no writes: {exc} (default_transaction_read_only "
                    "set on the role or database, or a standby server?)"
                ) from None
            if isinstance(exc, asyncpg.exceptions.UndefinedTableError) and self.behind is not None:
                raise SchemaBehind(
                    f"PostgreSQL at {self.where} holds a catalog whose schema is behind this Horace "
                    f"(steps {self.behind} not applied): {exc} (`horace migrate`, or any command that "
                    "writes, brings it up; a command that only reads leaves the schema as it is)"
                ) from None
            if isinstance(exc, asyncpg.exceptions.UndefinedTableError):
                # The schema was made at start: its tables gone since is the operator's doing
                # (the database dropped and made again, a dump restored without them).
                raise BackendUnavailable(
                    f"PostgreSQL at {self.where} no longer holds Horace's catalog: {exc} (the database "
                    "or schema dropped or replaced under a running Horace? Restore it; a restart says "
                    "whether the database is this store's)"
                ) from None
            if isinstance(exc, _ANOTHER_SESSIONS_STATEMENT):
                said = getattr(exc, "message", None) or str(exc)  # (not asyncpg's hint, which misleads)
                raise UnusableURL(
                    f"PostgreSQL at {self.where}: {said}: this connection met another session's "
                    "prepared statements, as behind a pooler in transaction mode (PgBouncer's "
                    "pool_mode=transaction or statement), which Horace cannot use: its locks and "
                    "statements are a session's. Use session pooling, or connect to PostgreSQL "
                    "directly (docs/postgres.md)"
                ) from None
            if isinstance(exc, asyncpg.exceptions.DiskFullError):
                raise DatabaseFull(f"the disk of PostgreSQL at {self.where} is full: {exc}") from None
            # Not by Horace (it cancels its statements by cancelling its task): by a timeout.
            if isinstance(
                exc, asyncpg.exceptions.QueryCanceledError | asyncpg.exceptions.LockNotAvailableError
            ):
                raise BackendUnavailable(
                    f"PostgreSQL at {self.where} cancelled a statement: {exc} "
                    "(a statement_timeout or lock_timeout of the role, database or URL?)"
                ) from None
            if isinstance(exc, asyncpg.exceptions.InsufficientPrivilegeError):
                raise CatalogUnwritable(
                    f"PostgreSQL at {self.where} refuses Horace's role: {exc} (the role in the URL "
                    "wants the privileges docs/postgres.md grants an instance's role: USAGE on the "
                    "schema, SELECT, INSERT, UPDATE and DELETE on all its tables, USAGE on all its "
                    "sequences; or the tables' owner runs Horace)"
                ) from exc
            raise
        return result


# What a connection meets when a pooler hands each transaction of it to another session.
_ANOTHER_SESSIONS_STATEMENT = (
    asyncpg.exceptions.DuplicatePreparedStatementError,  # "... already exists"
    asyncpg.exceptions.InvalidSQLStatementNameError,  # "prepared statement ... does not exist"
)


class _PoolSource:
    """A pool connection for each unit."""

    def __init__(self, pool: Any, hop: _Hop) -> None:
        self._pool = pool
        self._hop = hop

    async def run(
        self, fn: Callable[Concatenate[Conn, P], Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        pool = self._pool

        async def in_pool() -> T:
            for attempt in (1, 2):
                conn = await _acquire(pool)
                try:
                    return await fn(conn, *args, **kwargs)
                except Exception as exc:
                    if not _is_unavailable(exc):
                        raise
                    if _still_open(conn):
                        # Lost under a statement, asyncpg may leave the connection in a
                        # half state; it must not go back to the pool for the next unit.
                        conn.terminate()
                    # An idle connection the server has just dropped (a restart, a
                    # terminated backend) can be handed out before asyncpg sees the end
                    # of its socket; it refuses the unit's first statement unsent
                    # ("cannot switch to state"), so the unit runs once more on another.
                    # (Units of several statements run in a transaction, rolled back
                    # with the dropped connection.)
                    if attempt == 2 or not _is_stale(exc):
                        raise
                finally:
                    await pool.release(conn)
            raise AssertionError("unreachable")

        return await self._hop(in_pool)


class _HeldSource:
    """The one connection that holds an advisory lock; units on it run one at a time."""

    def __init__(self, conn: Conn, hop: _Hop) -> None:
        self._conn = conn
        self._hop = hop
        self._turn = trio.Lock()
        self.open = True

    async def run(
        self, fn: Callable[Concatenate[Conn, P], Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        async with self._turn:
            if not self.open:
                raise RuntimeError("the exclusive() block has ended; its units are closed")
            return await self._hop(fn, self._conn, *args, **kwargs)


_Source = _PoolSource | _HeldSource


# -- the units ------------------------------------------------------------------------------


class _Units:
    """Every unit of work, written once over a connection source."""

    def __init__(self, source: _Source) -> None:
        self._source = source

    # reading one file

    async def file_by_id(self, file_id: str) -> FileRecord | None:
        fid = _uuid(file_id)
        if fid is None:
            return None
        row = await self._source.run(_fetchrow, _FILE_BY_ID, fid)
        return _file(row) if row else None

    async def file_by_path(self, file_path: str) -> FileRecord | None:
        row = await self._source.run(_fetchrow, _FILE_BY_PATH, file_path)
        return _file(row) if row else None

    async def file_by_checksum(self, checksum: str) -> FileRecord | None:
        row = await self._source.run(_fetchrow, _FILE_BY_CHECKSUM, checksum)
        return _file(row) if row else None

    async def versions(self, file_id: str) -> list[VersionRecord]:
        fid = _uuid(file_id)
        if fid is None:
            return []
        return [_version(r) for r in await self._source.run(_fetch, _VERSIONS, fid)]

    async def version(self, file_id: str, version: int) -> VersionRecord | None:
        fid = _uuid(file_id)
        if fid is None:
            return None
        row = await self._source.run(_fetchrow, _VERSION, fid, version)
        return _version(row) if row else None

    async def working_mode(self, file_id: str) -> int | None:
        fid = _uuid(file_id)
        if fid is None:
            return None
        row = await self._source.run(_fetchrow, _WORKING_MODE, fid)
        return row["working_mode"] if row else None

    # writing

    async def insert_files(
        self,
        files: Sequence[FileRecord],
        collection: str | None = None,
        working: Mapping[str, WorkingStat] | None = None,
        *,
        copies: bool = False,
    ) -> list[FileRecord]:
        if not files:
            return []
        stats = list(zip(*(_stat_values((working or {}).get(f.id)) for f in files), strict=True))
        paths = [f.file_path for f in files]
        sums = [f.checksum for f in files]
        repeats_both = len(set(paths)) < len(paths) and len(set(sums)) < len(sums)
        # (Copies take no content: they need none of its locks.)
        claimed = [] if copies else [f.checksum for f in files if f.status is Status.ACTIVE]
        contents = sorted({_content_key(checksum) for checksum in claimed})
        rows = await self._source.run(
            _insert_by_content,
            contents,
            _INSERT_WALK if repeats_both else _INSERT_SIMPLE,
            [uuid.UUID(f.id) for f in files],
            paths,
            [f.owner for f in files],
            [f.purpose for f in files],
            [json_array(f.tags) for f in files],
            [f.size for f in files],
            [f.mime_type for f in files],
            sums,
            [f.status.value for f in files],
            [f.correlation_id for f in files],
            [f.created_at for f in files],
            [f.updated_at for f in files],
            [json_object(f.metadata) for f in files],
            collection or None,
            *(list(column) for column in stats),
            copies,
        )
        return [files[row["ord"] - 1] for row in rows]

    async def add_version(
        self,
        file_id: str,
        new: NewVersion,
        at: datetime,
        correlation_id: str | None,
        retention: Retention,
        status: str | None = None,
    ) -> tuple[FileRecord, VersionRecord, list[str]]:
        fid = _uuid(file_id)
        row = None
        if fid is not None:
            args = _version_args(fid, new, at, correlation_id, retention, status)
            row = await self._source.run(_add_version, *args)
        if row is None:
            raise FileGone(f"add_version: no catalogued file {file_id!r}")
        return _added(row)

    async def add_versions(
        self,
        changes: Sequence[tuple[IndexEntry, NewVersion]],
        at: datetime,
        correlation_id: str | None,
        retention: Retention,
    ) -> list[tuple[FileRecord, VersionRecord, list[str]] | None]:
        fids = [_uuid(seen.file_id) for seen, _ in changes]
        each = [
            (
                *_version_args(fid, new, at, correlation_id, retention, None),
                seen.current_version,
                seen.file_path,
            )
            for fid, (seen, new) in zip(fids, changes, strict=True)
            if fid is not None
        ]
        rows = iter(await self._source.run(_add_seen_versions, each) if each else [])
        return [None if fid is None or (row := next(rows)) is None else _added(row) for fid in fids]

    async def update_file(self, file_id: str, changes: FileChanges, at: datetime) -> FileRecord | None:
        fid = _uuid(file_id)
        if fid is None:
            return None
        row = await self._source.run(
            _fetchrow,
            _UPDATE_FILE,
            fid,
            at,
            changes.owner,
            changes.purpose,
            None if changes.tags is None else list(changes.tags),
            None if changes.status is None else changes.status.value,
            None if changes.custom is None else dict(changes.custom),
            changes.collection or None,
            changes.working_mode,
        )
        return _file(row) if row else None

    async def move_files(
        self, moves: Sequence[tuple[str, str, WorkingStat | None]], at: datetime
    ) -> list[FileRecord | None]:
        fids = [_uuid(file_id) for file_id, _, _ in moves]
        each = [
            (fid, new_path, at, *_stat_values(working))
            for fid, (_, new_path, working) in zip(fids, moves, strict=True)
            if fid is not None
        ]
        rows = iter(await self._source.run(_move_files, each) if each else [])
        return [None if fid is None or (row := next(rows)) is None else _file(row) for fid in fids]

    # searching

    async def search(self, query: SearchQuery) -> tuple[int, list[FileRecord]]:
        sql, params, one_plan = _search_sql(query)
        rows = await self._source.run(_fetch if one_plan else _fetch_planned, sql, *params)
        total = rows[0]["total"] if rows else 0
        return total, [_file(r) for r in rows if r["id"] is not None]

    async def find_duplicates(self, limit: int, offset: int, files_per_group: int) -> list[DuplicateGroup]:
        rows = await self._source.run(_fetch, _FIND_DUPLICATES, limit, offset, files_per_group)
        groups: dict[str, tuple[int, int, list[FileRecord]]] = {}
        for row in rows:
            group = groups.setdefault(row["g_checksum"], (row["g_size"], row["g_file_count"], []))
            group[2].append(_file(row))
        return [DuplicateGroup(c, size, count, tuple(fs)) for c, (size, count, fs) in groups.items()]

    # collections

    async def upsert_collection(
        self,
        name: str,
        description: str | None,
        metadata: Mapping[str, Any] | None,
        file_ids: Sequence[str],
        at: datetime,
    ) -> Collection:
        row = await self._source.run(
            _fetchrow,
            _UPSERT_COLLECTION,
            name,
            description,
            None if metadata is None else dict(metadata),
            at,
            _uuids(file_ids),
        )
        assert row is not None
        return _collection(row)

    async def list_collections(self, limit: int, offset: int) -> tuple[int, list[Collection]]:
        rows = await self._source.run(_fetch, _LIST_COLLECTIONS, limit, offset)
        total = rows[0]["total"] if rows else 0
        return total, [_collection(r) for r in rows if r["name"] is not None]

    async def get_collection(
        self, name: str, limit: int, offset: int
    ) -> tuple[Collection, list[FileRecord]] | None:
        rows = await self._source.run(_fetch, _GET_COLLECTION, name, limit, offset)
        if not rows:
            return None
        return _collection(rows[0], "c_"), [_file(r) for r in rows if r["id"] is not None]

    async def add_members(self, name: str, file_ids: Sequence[str], at: datetime) -> Collection | None:
        row = await self._source.run(_fetchrow, _ADD_MEMBERS, name, at, _uuids(file_ids))
        return _collection(row) if row else None

    async def remove_members(self, name: str, file_ids: Sequence[str], at: datetime) -> Collection | None:
        row = await self._source.run(_fetchrow, _REMOVE_MEMBERS, name, at, _uuids(file_ids))
        return _collection(row) if row else None

    async def delete_collection(self, name: str) -> bool:
        return await self._source.run(_fetchrow, _DELETE_COLLECTION, name) is not None

    async def missing_file_ids(self, file_ids: Sequence[str]) -> list[str]:
        valid = _uuids(file_ids)
        found: set[str] = set()
        if valid:
            found = {str(r["id"]) for r in await self._source.run(_fetch, _PRESENT_IDS, valid)}
        return [fid for fid in file_ids if fid not in found]

    async def file_ids_from(self, lowest: str, limit: int) -> list[str]:
        rows = await self._source.run(
            _fetch, "SELECT id FROM horace_files WHERE id >= $1::uuid ORDER BY id LIMIT $2", lowest, limit
        )
        return [str(r["id"]) for r in rows]

    # maintenance

    async def unreferenced(self, checksums: Sequence[str]) -> list[str]:
        unique = sorted(set(checksums))
        if not unique:
            return []
        rows = await self._source.run(_fetch, _UNREFERENCED, unique)
        return sorted(r[0] for r in rows)

    async def all_files(self) -> list[FileRecord]:
        return [_file(r) for r in await self._source.run(_fetch, _ALL_FILES)]

    async def working_index(self) -> list[IndexEntry]:
        return [_index_entry(r) for r in await self._source.run(_fetch, _WORKING_INDEX)]

    async def index_entry(self, file_id: str) -> IndexEntry | None:
        fid = _uuid(file_id)
        row = None if fid is None else await self._source.run(_fetchrow, _INDEX_ENTRY, fid)
        return None if row is None else _index_entry(row)

    async def refresh_working(self, entries: Sequence[IndexEntry]) -> int:
        seen = [(e, _uuid(e.file_id), _stat_values(e.working)) for e in entries if e.working is not None]
        seen = [(e, fid, stat) for e, fid, stat in seen if fid is not None]
        if not seen:
            return 0
        status = await self._source.run(
            _execute,
            _REFRESH_WORKING,
            [fid for _, fid, _ in seen],
            [e.current_version for e, _, _ in seen],
            [e.checksum for e, _, _ in seen],
            *([stat[i] for _, _, stat in seen] for i in range(7)),
            [e.file_path for e, _, _ in seen],
        )
        return int(status.split()[-1])

    async def all_versions(self) -> list[VersionRecord]:
        return [_version(r) for r in await self._source.run(_fetch, _ALL_VERSIONS)]

    async def repair_current(self, file_id: str) -> FileRecord | None:
        fid = _uuid(file_id)
        if fid is None:
            return None
        row = await self._source.run(_fetchrow, _REPAIR_CURRENT, fid)
        return _file(row) if row else None

    async def delete_version(self, file_id: str, version: int) -> None:
        fid = _uuid(file_id)
        if fid is not None:
            await self._source.run(_execute, _DELETE_VERSION, fid, version)

    async def purge_deleted(self, deleted_before: datetime) -> tuple[int, list[str]]:
        row = await self._source.run(_fetchrow, _PURGE_DELETED, deleted_before)
        assert row is not None
        return row["purged"], sorted(row["orphans"])

    async def check_integrity(self, *, repair: bool) -> tuple[list[str], bool]:
        return [], False  # (see the protocol: PostgreSQL's own to keep whole)

    def replaced(self) -> str | None:
        return None  # (a server's database: no file of Horace's to replace)

    def damaged(self) -> str | None:
        return None

    async def tidy(self) -> None:
        """Each word's count rows folded into one (autovacuum keeps the rest in shape)."""
        await self._source.run(_fold_word_counts)

    # conversations

    async def prune_turns(self, before: datetime, limit: int) -> int:
        status = await self._source.run(_execute, _PRUNE_TURNS, before, limit)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <count>"

    async def insert_turns(self, turns: Sequence[Turn]) -> list[Turn]:
        """As SQLite; a turn whose conversation_id is not a UUID cannot be stored in this
        schema, and is returned (reported) with the conflicting ones."""
        ids = [_any_uuid(t.conversation_id) for t in turns]
        good = [i for i, cid in enumerate(ids) if cid is not None]
        refused = {i for i, cid in enumerate(ids) if cid is None}
        if good:
            stored = [turns[i] for i in good]
            rows = await self._source.run(
                _fetch,
                _INSERT_TURNS,
                [ids[i] for i in good],
                [t.turn_number for t in stored],
                [t.role for t in stored],
                [t.content for t in stored],
                [t.model for t in stored],
                [t.input_tokens for t in stored],
                [t.output_tokens for t in stored],
                [t.timing_ms for t in stored],
                [metadata_json(t) for t in stored],
                [t.created_at for t in stored],
            )
            refused.update(good[row["ord"] - 1] for row in rows)
        return [turns[i] for i in sorted(refused)]


# -- the backend ---------------------------------------------------------------------------

_TRY_LOCK = "SELECT pg_try_advisory_lock($1::bigint)"
_TRY_LOCKS = (
    "SELECT coalesce(array_agg(k), '{}') FROM unnest($1::bigint[]) AS k WHERE pg_try_advisory_lock(k)"
)
_UNLOCKS = "SELECT pg_advisory_unlock(k) FROM unnest($1::bigint[]) AS k"


# Waits between tries for a connection when PostgreSQL refuses the pool a new one.
_CROWDED_FIRST, _CROWDED_MOST = 0.005, 0.2


async def _acquire(pool: Any) -> Conn:
    """A connection from the pool. When PostgreSQL refuses a new one (the role's, the
    database's or the server's connection limit: several instances and their sink
    processes under a budget) while the pool holds others, the unit waits for one of
    those rather than failing; with none, the refusal stands. (The call's deadline bounds
    the wait: a cancelled task stops it.)"""
    wait = _CROWDED_FIRST
    while True:
        try:
            return await pool.acquire()
        except asyncpg.exceptions.TooManyConnectionsError:
            if pool.get_size() == 0:
                raise
        await asyncio.sleep(wait)  # (the pool's other holders are handed out first, LIFO)
        wait = min(2 * wait, _CROWDED_MOST)


async def _encoding(pool: Any) -> str:
    return str(await pool.fetchval("SELECT current_setting('server_encoding')"))


async def _acquire_and_try(pool: Any, keys: list[int]) -> tuple[Conn, list[int]]:
    """A connection from the pool, and those of *keys* (distinct) it could lock."""
    conn = await _acquire(pool)
    try:
        got = list(await conn.fetchval(_TRY_LOCKS, keys))
    except BaseException:
        await _give_back(pool, conn, None)  # a try may have been granted
        raise
    return conn, got


async def _try_lock(conn: Conn, key: int) -> bool:
    return bool(await conn.fetchval(_TRY_LOCK, key))


async def _give_back(pool: Any, conn: Conn, keys: Sequence[int] | None) -> None:
    """Release the locks *keys* (``None``: unknown, after an interrupted try) and
    return the connection to the pool.

    A statement interrupted by cancellation is cancelled on the server by asyncpg, and
    the next statement waits for that; so the unlock normally works. If it does not (the
    connection is gone, or it takes too long), the session is ended instead, which ends
    its locks too, and never goes back to the pool holding one.
    """
    if not _still_open(conn):  # lost under its unit: its session, and its locks, are over
        await pool.release(conn)
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            if keys is None:
                await conn.execute("SELECT pg_advisory_unlock_all()")
            elif keys:
                await conn.execute(_UNLOCKS, list(keys))
    except Exception as exc:
        # The block's work is done (its units said how it went); what is left is ending
        # the session, which ends its locks: no error of the block's.
        log.warning("PostgreSQL: a session's locks could not be released (%s): it is ended instead", exc)
        if _still_open(conn):
            conn.terminate()
    except BaseException:
        if _still_open(conn):
            conn.terminate()
        raise
    finally:
        await pool.release(conn)


async def _no_reset(conn: Conn) -> None:
    """The pool's release hook. asyncpg rolls back an open transaction before calling it;
    the default hook would add a round trip to every unit (advisory unlock-all, CLOSE
    ALL, UNLISTEN, RESET ALL) for session state these units never leave behind: the only
    session lock, exclusive()'s, is released (or its session ended) by _give_back()."""


async def _init_connection(conn: Conn) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )
    if conn.get_server_version() >= (14,):
        # A connection holding a file's lock waits, idle, while the file is copied (a
        # big restore: minutes); an idle_session_timeout of the role or database would
        # end it, and that call, every time. The pool closes idle connections itself.
        await conn.execute("SET idle_session_timeout = 0")


async def _create_pool(url: str, min_size: int, max_size: int, connect_timeout: float) -> Any:
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        init=_init_connection,
        reset=_no_reset,
    )


# Refused as a write would be when the session takes none (the hop replaces the pool's
# connections then, as after any read-only refusal).
_PING_WRITABLE = (
    "DO $$ BEGIN IF current_setting('transaction_read_only') = 'on' THEN "
    "RAISE read_only_sql_transaction USING MESSAGE = 'the session is read-only'; END IF; END $$; " + PING
)


class PostgresBackend(_Units):
    def __init__(self, url: str, pool: Any, hop: _Hop, ping_timeout: float = PING_TIMEOUT) -> None:
        super().__init__(_PoolSource(pool, hop))
        self.url = url
        self._pool = pool
        self.refusals = hop.refusals
        self._hop = hop
        self._ping_timeout = ping_timeout
        self._closed = False

    async def identity(self) -> CatalogIdentity:
        found = await self._source.run(_identity)
        try:
            applied = await self._source.run(_applied_if_any)
        except NotHoraces as exc:
            raise UnusableURL(f"PostgreSQL at {self._hop.where}: {exc}: {NOT_HORACES_ADVICE}") from None
        pending = migrations.pending("postgres", applied) if applied else []  # (none: a new database)
        self._hop.behind = ", ".join(str(step.version) for step in pending) or None
        return found

    async def bind(self, store_id: str, storage_path: str, at: datetime) -> str:
        bound = await self._source.run(_fetchrow, _BIND, store_id, storage_path, at)
        if bound is None:
            # Another instance bound it as this statement ran: its INSERT waited for that
            # one's, then skipped the row its own snapshot cannot see. A new statement can.
            bound = await self._source.run(_fetchrow, _BOUND)
        if bound is None:
            raise CatalogDamaged("the catalog's store binding (horace_store) vanished as it was made")
        return str(bound[0])

    async def bound_to(self) -> str | None:
        # (No table: the outage a database without Horace's tables is, as for any call.)
        bound = await self._source.run(_fetchrow, _BOUND)
        return None if bound is None else str(bound[0])

    async def rebind(self, old_id: str, new_id: str, storage_path: str, at: datetime) -> bool:
        return await self._source.run(_fetchrow, _REBIND, old_id, new_id, storage_path, at) is not None

    async def migrate(self) -> int:
        try:
            version = await self._source.run(_migrate)
            self._hop.behind = None
            return version
        except (
            NotHoraces,
            asyncpg.exceptions.DuplicateTableError,
            asyncpg.exceptions.DuplicateObjectError,
        ) as exc:
            raise UnusableURL(f"PostgreSQL at {self._hop.where}: {exc}: {NOT_HORACES_ADVICE}") from None
        except asyncpg.exceptions.InvalidSchemaNameError as exc:  # search_path=<a schema not made>
            raise UnusableURL(
                f"PostgreSQL at {self._hop.where}: {exc}: the schema the URL's search_path names "
                "must exist, and Horace's role may use it (CREATE SCHEMA ... AUTHORIZATION <role>)"
            ) from None
        except CatalogUnwritable as exc:  # (a privilege refused, said by _Hop)
            if self._hop.behind is not None:  # (the least-privilege set-up: docs/postgres.md)
                raise CatalogUnwritable(
                    f"PostgreSQL at {self._hop.where} holds a catalog whose schema is behind this Horace "
                    f"(steps {self._hop.behind} not applied), and Horace's role may not change its tables: "
                    f"{exc.__cause__ or exc} (run `horace migrate` as the role that owns them, then "
                    "grant this role what the new step made, before the instances start; or make "
                    "this role their owner)"
                ) from None
            raise CatalogUnwritable(
                f"PostgreSQL at {self._hop.where} does not let Horace's role make or change its tables: "
                f"{exc.__cause__ or exc} (the least-privilege way: run `horace migrate` as the role "
                "that owns the schema, then grant this role the tables, as docs/postgres.md says; or "
                "make this role the database's owner, or the schema's: tables made by another role, "
                "ALTER TABLE ... OWNER TO it)"
            ) from None

    async def ping(self) -> None:
        with trio.move_on_after(self._ping_timeout):
            try:
                await self._source.run(_execute, _PING_WRITABLE)
            except CatalogUnwritable:
                # A session keeps the setting it started with: asked again on a new one.
                await self._source.run(_execute, _PING_WRITABLE)
            return
        raise BackendUnavailable(
            f"PostgreSQL at {self._hop.where} did not answer within {self._ping_timeout:g} s"
        )

    @asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[Units]:
        conn, got = await self._hop(_acquire_and_try, self._pool, [key])
        held = _HeldSource(conn, self._hop)
        locked: bool | None = bool(got)
        try:
            delay = 0.001
            while not locked:  # polling keeps the wait cancellable
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
                locked = None  # until the answer is in
                locked = await self._hop(_try_lock, conn, key)
            yield _Units(held)
        finally:
            held.open = False
            with trio.CancelScope(shield=True):
                keys = None if locked is None else [key] if locked else []
                await self._hop(_give_back, self._pool, conn, keys)

    @asynccontextmanager
    async def exclusive_free(self, keys: Sequence[int]) -> AsyncIterator[tuple[Units, frozenset[int]]]:
        conn, got = await self._hop(_acquire_and_try, self._pool, sorted(set(keys)))
        held = _HeldSource(conn, self._hop)
        try:
            yield _Units(held), frozenset(got)
        finally:
            held.open = False
            with trio.CancelScope(shield=True):
                await self._hop(_give_back, self._pool, conn, got)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await trio_asyncio.aio_as_trio(self._pool.close, loop=self._hop.loop)()
                    return
                except Exception as exc:
                    # A server already gone, say: its connections are cut instead.
                    log.info("PostgreSQL: the pool did not close cleanly (%s); its connections are cut", exc)
            self._pool.terminate()


@asynccontextmanager
async def open_postgres(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    connect_timeout: float = CONNECT_TIMEOUT,
    ping_timeout: float = PING_TIMEOUT,
    application_name: str = APPLICATION_NAME,
) -> AsyncIterator[PostgresBackend]:
    """A pooled PostgreSQL backend on its own trio-asyncio loop, closed on exit.

    The URL goes to asyncpg as it is: query parameters it does not know (``search_path``,
    ``application_name``, ...) become server settings of every connection.
    """
    url, connect_timeout = _libpq_parameters(url, connect_timeout)
    # Whatever escapes the body (or our own set-up) leaves open_loop()'s nurseries wrapped
    # in exception groups; a lone exception is given back as itself, as a backend without
    # nurseries would raise it.
    raised: BaseException | None = None
    try:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_asyncio_error)
            try:
                hop = _Hop(loop, url)
                try:
                    pool = await hop(
                        _create_pool,
                        _named(url, application_name),
                        min(MIN_CONNECTIONS, max_connections),
                        max_connections,
                        connect_timeout,
                    )
                except (
                    asyncpg.exceptions.UndefinedObjectError,
                    asyncpg.exceptions.InvalidParameterValueError,
                ) as exc:  # a URL parameter asyncpg passed on as a server setting
                    raise UnusableURL(
                        f"bad PostgreSQL URL {hop.where}: the server refused a setting the URL gives: "
                        f"{exc} (asyncpg passes a URL parameter it does not know on to the server, "
                        "as a setting of every connection)"
                    ) from None
                except asyncpg.PostgresError as exc:  # login refused, no such database, ...
                    raise BackendUnavailable(
                        f"PostgreSQL at {hop.where} refused the connection: {exc}"
                    ) from None
                except (asyncpg.exceptions.ClientConfigurationError, ValueError) as exc:
                    # (asyncpg parses the URL here: a port that is not a number is a ValueError)
                    raise UnusableURL(f"bad PostgreSQL URL {hop.where}: {exc}") from None
                hop = _Hop(loop, url, renew=pool.expire_connections)
                encoding = await hop(_encoding, pool)
                if encoding != "UTF8":
                    await hop(pool.close)
                    raise UnusableURL(
                        f"PostgreSQL at {hop.where}: the database's encoding is {encoding}, and Horace "
                        "stores names, purposes and tags as Unicode: it needs a UTF8 database "
                        "(CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
                    )
                backend = PostgresBackend(url, pool, hop, ping_timeout)
                try:
                    yield backend
                finally:
                    await backend.aclose()
            except BaseException as exc:
                raised = exc
                raise
    except BaseExceptionGroup as group:
        if raised is None or not _wraps_only(group, raised):
            raise
    else:
        return
    raise raised


_SSL_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
_FOREVER = 24 * 3600.0


def _named(url: str, name: str) -> str:
    """*url* with an ``application_name``, what ``pg_stat_activity`` shows of each of its
    connections: the URL's own, else libpq's ``PGAPPNAME``, else *name*."""
    parts = urlsplit(url)
    if "application_name" in dict(parse_qsl(parts.query, keep_blank_values=True)):
        return url
    named = urlencode({"application_name": os.environ.get("PGAPPNAME") or name})
    return urlunsplit(parts._replace(query=f"{parts.query}&{named}" if parts.query else named))


def _libpq_parameters(url: str, connect_timeout: float) -> tuple[str, float]:
    """Parameters of libpq's URLs that asyncpg does not take as libpq does: the URL
    without ``connect_timeout`` (asyncpg would send it to the server as a setting, which
    refuses it), and the timeout it gives; the certificate files the URL names, each
    checked to exist (asyncpg's error names none)."""
    parts = urlsplit(url)
    given = parse_qsl(parts.query, keep_blank_values=True)
    kept, timeout = [], connect_timeout
    for name, value in given:
        if name == "connect_timeout":
            try:
                seconds = int(value)
            except ValueError:
                raise UnusableURL(
                    f"bad PostgreSQL URL: connect_timeout={value!r} is not whole seconds"
                ) from None
            timeout = seconds if seconds > 0 else _FOREVER  # libpq: 0 or less waits for ever
            continue
        if name in _SSL_FILES and not os.path.exists(os.path.expanduser(value)):
            raise UnusableURL(f"bad PostgreSQL URL: {name}={value}: no such file")
        kept.append((name, value))
    # A URL whose path names no database (`postgresql://host/`): libpq takes PGDATABASE
    # then, asyncpg the user's name (it reads an empty database, not a missing one).
    path = "" if parts.path == "/" else parts.path
    if len(kept) == len(given) and path == parts.path:
        return url, timeout
    return urlunsplit(parts._replace(path=path, query=urlencode(kept))), timeout


def _wraps_only(group: BaseExceptionGroup[Any], exc: BaseException) -> bool:
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
        if inner is exc:
            return True
    return False
