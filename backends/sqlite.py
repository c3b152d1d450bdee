"""The SQLite backend: WAL mode, every unit of work one hop to a worker thread.

Writes go through one connection, one unit at a time (SQLite has a single writer
anyway); reads use a small pool of their own connections, so in WAL mode readers never
wait for writers. Units run with ``abandon_on_cancel=False``: a unit that has started
finishes and commits or rolls back before cancellation is delivered.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import outcome
import trio
from attrs import frozen

from . import migrations, place_problem, words
from .protocol import (
    NOT_HORACES_ADVICE,
    PING,
    REFUSALS,
    BackendUnavailable,
    CatalogDamaged,
    CatalogMissing,
    CatalogUnwritable,
    DatabaseFull,
    FileGone,
    LastRefusal,
    NotHoraces,
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

T = TypeVar("T")

log = logging.getLogger("horace.backends")

READERS = 4
# How long a write waits for a lock another connection holds (Horace's own writers take
# turns by a file lock first: only another program holds one this long).
BUSY_TIMEOUT_MS = 30_000
# A read by key on the event loop's thread that takes this long has waited for a slow disk
# (network storage, a disk spun down), stalling every session: then such reads go to worker
# threads for a while (SqliteBackend._read_by_key). Well above the 5 ms another thread may
# keep the GIL when the read wants it back, and far above a read from memory or an SSD.
KEY_READ_SLOW = 0.02
KEY_READ_BACKOFF = 10.0
_FILE_COLUMNS = (
    "id, file_path, owner, purpose, tags, size, mime_type, checksum, status, current_version, "
    "correlation_id, created_at, updated_at, deleted_at, metadata"
)
_F_COLUMNS = ", ".join(f"f.{c.strip()}" for c in _FILE_COLUMNS.split(","))
_VERSION_COLUMNS = "file_id, version, checksum, size, created_at, restored_from_version, correlation_id"
_STAT_COLUMNS = "stat_size, stat_mtime_ns, stat_ctime_ns, stat_inode, stat_device, stat_recorded_ns"
_NO_STAT = "stat_size = NULL, stat_mtime_ns = NULL, stat_ctime_ns = NULL, stat_inode = NULL, " + (
    "stat_device = NULL, stat_recorded_ns = NULL"
)
_SORT_COLUMNS = {
    SortKey.CREATED_AT: "created_at",
    SortKey.UPDATED_AT: "updated_at",
    SortKey.SIZE: "size",
    SortKey.PATH: "file_path",
}


@functools.lru_cache(maxsize=1024)  # a batch's rows share a few instants; formatting one takes 2.4 µs
def _ts(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        id=row["id"],
        file_path=row["file_path"],
        owner=row["owner"],
        purpose=row["purpose"],
        tags=tuple(json.loads(row["tags"])),
        size=row["size"],
        mime_type=row["mime_type"],
        checksum=row["checksum"],
        status=Status(row["status"]),
        current_version=row["current_version"],
        correlation_id=row["correlation_id"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        deleted_at=_dt(row["deleted_at"]),
        metadata=json.loads(row["metadata"]),
    )


def _stat_values(working: WorkingStat | None) -> tuple[int | None, ...]:
    """The values of the stat columns, then of working_mode (NULL: kept as it is)."""
    if working is None:
        return (None,) * 7
    w = working
    return (w.size, w.mtime_ns, w.ctime_ns, to_int64(w.inode), to_int64(w.device), w.recorded_ns, w.mode)


# The stat columns set, and working_mode when the stat knows it (see _stat_values).
_SET_STAT = f"({_STAT_COLUMNS}) = (?, ?, ?, ?, ?, ?), working_mode = coalesce(?, working_mode)"


def _version(row: sqlite3.Row) -> VersionRecord:
    return VersionRecord(
        file_id=row["file_id"],
        version=row["version"],
        checksum=row["checksum"],
        size=row["size"],
        created_at=datetime.fromisoformat(row["created_at"]),
        restored_from_version=row["restored_from_version"],
        correlation_id=row["correlation_id"],
    )


def _collection(row: sqlite3.Row) -> Collection:
    return Collection(
        name=row["name"],
        description=row["description"],
        metadata=json.loads(row["metadata"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        member_count=row["member_count"],
    )


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return _open_connection(path)
    except sqlite3.DatabaseError as exc:
        damaged = _damaged(exc, path)
        if damaged is None:
            raise
        raise damaged from None


WAL_KEPT_BYTES = 64 << 20  # the write-ahead log's size once a checkpoint emptied it


def _open_connection(path: Path) -> sqlite3.Connection:
    conn = None
    try:
        # (Some SQLite builds open the file here, others at the first statement.)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")  # the first statement that opens the file
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            raise UnusableURL(f"unusable database URL: sqlite://{path} is not an SQLite database") from None
        if not isinstance(exc, sqlite3.OperationalError):
            raise
        if _disk_full(exc, path):  # (first: a disk out of inodes cannot open the -wal file)
            raise DatabaseFull(f"the disk of the SQLite catalog {path} is full: {exc}") from None
        if "unable to open" in str(exc) or "readonly" in str(exc):
            raise CatalogUnwritable(
                f"the catalog {path} cannot be opened for writing ({exc}): "
                "is the storage read-only, or not this user's to write (or this process out of "
                "open files: ulimit -n)? SQLite writes beside the catalog even to read it: to read "
                "a store on a read-only mount, copy it (cp -a) and read the copy"
            ) from None
        if "disk I/O error" in str(exc):
            raise CatalogUnwritable(
                f"the catalog {path} cannot be used ({exc}): its filesystem refuses what SQLite's "
                "write-ahead log needs (shared memory beside the file, as vfat, exFAT and some "
                "network filesystems do), or is failing; put the catalog on a local filesystem "
                "such as ext4 or XFS"
            ) from None
        raise
    # Each commit synced: with NORMAL (synced only at checkpoints) a power cut loses the last
    # seconds of commits, versions whose content is kept and that clients were told of.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # A statement journal (each many-row INSERT in a transaction makes one) stays in
    # memory: past 64 KiB it would be a temp file in /var/tmp, written page by page and
    # deleted, a transaction at a time (and a full /var/tmp would fail the write).
    conn.execute("PRAGMA temp_store=MEMORY")
    # The write-ahead log grows as large as the most a checkpoint left in it (a first scan's
    # batches, writes while a long read held the checkpoint back) and keeps that size; cut
    # back to this each time it starts over.
    conn.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
    # The words of the word index, for searches (see _terms); read at each use.
    conn.execute("CREATE VIRTUAL TABLE temp.horace_word_terms USING fts5vocab(main, horace_words, row)")
    return conn


def _connect_key_reader(path: Path) -> sqlite3.Connection:
    """The connection of :meth:`SqliteBackend._read_by_key`: it reads only, and never
    waits (a busy database is an error at once, for the caller to read elsewhere)."""
    conn = _connect(path)
    conn.execute("PRAGMA query_only=ON")
    conn.execute("PRAGMA busy_timeout=0")
    return conn


@contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        # SQLite has rolled back by itself after some errors (a full disk mid-statement):
        # a ROLLBACK then would fail, and its error hide the one that matters.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as failed:
                exc.add_note(f"and its ROLLBACK failed: {failed}")
        raise


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


# A tag row carries its file's status and created_at (schema step 003), read from the file.
_INSERT_TAG = (
    "INSERT OR IGNORE INTO horace_file_tags (tag, file_id, status, created_at) "
    "SELECT ?, id, status, created_at FROM horace_files WHERE id = ?"
)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- the units of work, each a plain function of a connection ----------------------------


def _file_by(conn: sqlite3.Connection, column: str, value: str) -> FileRecord | None:
    row = conn.execute(f"SELECT {_FILE_COLUMNS} FROM horace_files WHERE {column} = ?", (value,)).fetchone()
    return _file(row) if row else None


def _file_by_checksum(conn: sqlite3.Connection, checksum: str) -> FileRecord | None:
    row = conn.execute(
        f"SELECT {_FILE_COLUMNS} FROM horace_files WHERE checksum = ? AND status = 'active' "
        "ORDER BY created_at, id LIMIT 1",
        (checksum,),
    ).fetchone()
    return _file(row) if row else None


def _versions(conn: sqlite3.Connection, file_id: str) -> list[VersionRecord]:
    rows = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM horace_versions WHERE file_id = ? ORDER BY version DESC",
        (file_id,),
    )
    return [_version(r) for r in rows]


def _one_version(conn: sqlite3.Connection, file_id: str, version: int) -> VersionRecord | None:
    row = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM horace_versions WHERE file_id = ? AND version = ?",
        (file_id, version),
    ).fetchone()
    return _version(row) if row else None


def _working_mode(conn: sqlite3.Connection, file_id: str) -> int | None:
    row = conn.execute("SELECT working_mode FROM horace_files WHERE id = ?", (file_id,)).fetchone()
    return row[0] if row else None


def _ensure_collection(conn: sqlite3.Connection, name: str, now: str) -> None:
    conn.execute(
        "INSERT INTO horace_collections (name, created_at, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO NOTHING",
        (name, now, now),
    )


def _add_members(conn: sqlite3.Connection, name: str, file_ids: Sequence[str], now: str) -> None:
    conn.executemany(
        "INSERT INTO horace_collection_members (collection, file_id, added_at) "
        "SELECT ?, id, ? FROM horace_files WHERE id = ? ON CONFLICT DO NOTHING",
        [(name, now, fid) for fid in file_ids],
    )
    conn.execute("UPDATE horace_collections SET updated_at = ? WHERE name = ?", (now, name))


def _insert_files(
    conn: sqlite3.Connection,
    files: Sequence[FileRecord],
    collection: str | None,
    working: Mapping[str, WorkingStat],
    copies: bool,
) -> list[FileRecord]:
    inserted: list[FileRecord] = []
    with _transaction(conn):
        taken_paths: set[str] = set()
        taken_sums: set[str] = set()
        for i in range(0, len(files), 400):  # 2 parameters a file, well under SQLite's limit
            chunk = files[i : i + 400]
            paths = [f.file_path for f in chunk]
            sums = [f.checksum for f in chunk]
            for path, checksum, status in conn.execute(
                f"SELECT file_path, checksum, status FROM horace_files WHERE file_path IN "
                f"({_placeholders(paths)}) OR checksum IN ({_placeholders(sums)})",
                [*paths, *sums],
            ):
                taken_paths.add(path)
                if status == "active" and not copies:
                    taken_sums.add(checksum)
        for f in files:  # also refuses a repeat inside the batch, as one-by-one inserts did
            if f.file_path in taken_paths or f.checksum in taken_sums:
                continue
            taken_paths.add(f.file_path)
            if f.status is Status.ACTIVE and not copies:  # only an active file's content is taken
                taken_sums.add(f.checksum)
            inserted.append(f)
        conn.executemany(
            f"INSERT INTO horace_files ({_FILE_COLUMNS}, {_STAT_COLUMNS}, working_mode) "
            f"VALUES ({_placeholders(range(22))})",
            [
                (
                    f.id,
                    f.file_path,
                    f.owner,
                    f.purpose,
                    json_array(f.tags),
                    f.size,
                    f.mime_type,
                    f.checksum,
                    f.status.value,
                    1,
                    f.correlation_id,
                    _ts(f.created_at),
                    _ts(f.updated_at),
                    None,
                    json_object(f.metadata),
                    *_stat_values(working.get(f.id)),
                )
                for f in inserted
            ],
        )
        conn.executemany(
            _INSERT_TAG,
            [(tag, f.id) for f in inserted for tag in f.tags],
        )
        conn.executemany(
            f"INSERT INTO horace_versions ({_VERSION_COLUMNS}) VALUES (?, 1, ?, ?, ?, NULL, ?)",
            [(f.id, f.checksum, f.size, _ts(f.created_at), f.correlation_id) for f in inserted],
        )
        if collection and inserted:
            now = _ts(inserted[0].created_at)
            _ensure_collection(conn, collection, now)
            _add_members(conn, collection, [f.id for f in inserted], now)
        _insert_words(conn, inserted)  # last: see _insert_words
    return inserted


# The status in a horace_word_keys key's low bits (schema step 003 spells it in its triggers).
_STATUS_CODE = {Status.ACTIVE: 0, Status.ARCHIVED: 1, Status.DELETED: 2}
# The creation second of a horace_word_keys key, newest first: as in schema/sqlite/003.
_SECOND_SQL = "(17179869183 - min(max(CAST(strftime('%s', {}) AS INTEGER), 0), 17179869183))"
_SECOND_SHIFT = 29
_SECOND_LOW_BITS = (1 << _SECOND_SHIFT) - 1

# A new file's key in horace_word_keys, as schema step 003 numbers them: its creation
# second, the next sequence number in that second (after the newest key of the second,
# read from the key's own index), its status. This reads a second and its newest key.
_NEWEST_KEY_OF_SECOND = f"""
SELECT s.second, (SELECT max(k.key) FROM horace_word_keys k
                  WHERE k.key BETWEEN (s.second << {_SECOND_SHIFT})
                                  AND ((s.second << {_SECOND_SHIFT}) | {_SECOND_LOW_BITS}))
FROM (SELECT {_SECOND_SQL.format("?")} AS second) s
"""


def _insert_words(conn: sqlite3.Connection, files: Sequence[FileRecord]) -> None:
    """Number and index the words of files just inserted (schema step 005: no trigger
    does it).

    Called last in its transaction, and one row an execution with VALUES (never INSERT
    ... SELECT): once the FTS5 table has been written, every statement that opens a
    statement journal, as one that may write several rows does, makes it flush what it
    holds in memory (a first scan of 10,000 files: 260 ms for the words that way, 30 ms
    this way)."""
    seconds: dict[str, int] = {}  # created_at as stored -> its second
    next_key: dict[int, int] = {}  # second -> the next free key in it (status bits clear)
    keyed: list[tuple[int, FileRecord]] = []
    for f in files:
        at = _ts(f.created_at)
        second = seconds.get(at)
        if second is None:
            second, newest = conn.execute(_NEWEST_KEY_OF_SECOND, (at,)).fetchone()
            seconds[at] = second
            if second not in next_key:
                next_key[second] = second << _SECOND_SHIFT if newest is None else (newest & ~3) + 4
        key = next_key[second]
        if key >> _SECOND_SHIFT != second:
            raise sqlite3.IntegrityError("horace_word_keys: too many files created in one second")
        next_key[second] = key + 4
        keyed.append((key | _STATUS_CODE[f.status], f))
    conn.executemany(
        "INSERT INTO horace_word_keys (key, file_id) VALUES (?, ?)", [(k, f.id) for k, f in keyed]
    )
    conn.executemany(
        "INSERT INTO horace_words (rowid, purpose, path) VALUES (?, substr(?, 1, 100000), ?)",
        [(k, f.purpose, f.file_path) for k, f in keyed],
    )


def _add_version(
    conn: sqlite3.Connection,
    file_id: str,
    new: NewVersion,
    at: datetime,
    correlation_id: str | None,
    retention: Retention,
    status: str | None,
) -> tuple[FileRecord, VersionRecord, list[str]]:
    with _transaction(conn):
        if _file_by(conn, "id", file_id) is None:
            raise FileGone(f"add_version: no catalogued file {file_id!r}")
        return _record_version(conn, file_id, new, at, correlation_id, retention, status)


def _add_versions(
    conn: sqlite3.Connection,
    changes: Sequence[tuple[IndexEntry, NewVersion]],
    at: datetime,
    correlation_id: str | None,
    retention: Retention,
) -> list[tuple[FileRecord, VersionRecord, list[str]] | None]:
    done: list[tuple[FileRecord, VersionRecord, list[str]] | None] = []
    with _transaction(conn):
        for seen, new in changes:
            row = conn.execute(
                "SELECT current_version, status, file_path FROM horace_files WHERE id = ?", (seen.file_id,)
            ).fetchone()
            # (As the scan saw it; a file moved since holds another's content at that path.)
            if row is None or tuple(row) != (seen.current_version, Status.ACTIVE.value, seen.file_path):
                done.append(None)
            else:
                done.append(_record_version(conn, seen.file_id, new, at, correlation_id, retention, None))
    return done


def _record_version(
    conn: sqlite3.Connection,
    file_id: str,
    new: NewVersion,
    at: datetime,
    correlation_id: str | None,
    retention: Retention,
    status: str | None,
) -> tuple[FileRecord, VersionRecord, list[str]]:
    """In the caller's transaction, of a file known to be catalogued."""
    now = _ts(at)
    # The next number after the newest row, and never below the file's current one: a file
    # whose rows were lost (fsck records its content again) keeps the number it had.
    (number,) = conn.execute(
        "SELECT max(coalesce((SELECT max(version) FROM horace_versions WHERE file_id = ?), 0), "
        "current_version - 1) + 1 FROM horace_files WHERE id = ?",
        (file_id, file_id),
    ).fetchone()
    conn.execute(
        f"INSERT INTO horace_versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (file_id, number, new.checksum, new.size, now, new.restored_from_version, correlation_id),
    )
    conn.execute(
        "UPDATE horace_files SET current_version = ?, checksum = ?, size = ?, mime_type = ?, "
        "updated_at = ?, status = coalesce(?, status), "
        "deleted_at = CASE WHEN coalesce(?, status) = 'deleted' THEN deleted_at END, "
        f"{_SET_STAT} WHERE id = ?",
        (
            number,
            new.checksum,
            new.size,
            new.mime_type,
            now,
            status,
            status,
            *_stat_values(new.working),
            file_id,
        ),
    )
    cutoff = _ts(datetime.fromtimestamp(at.timestamp() - retention.min_age_seconds, UTC))
    pruned = [
        r[0]
        for r in conn.execute(
            "DELETE FROM horace_versions WHERE file_id = ? AND version <= ? AND created_at <= ? "
            "RETURNING checksum",
            (file_id, number - retention.keep, cutoff),
        )
    ]
    orphans = _unreferenced(conn, pruned)
    record = _file_by(conn, "id", file_id)
    version = _one_version(conn, file_id, number)
    assert record is not None and version is not None
    return record, version, orphans


def _update_file(
    conn: sqlite3.Connection, file_id: str, changes: FileChanges, at: datetime
) -> FileRecord | None:
    now = _ts(at)
    with _transaction(conn):
        current = _file_by(conn, "id", file_id)
        if current is None:
            return None
        sets: dict[str, Any] = {"updated_at": now}
        if changes.owner is not None:
            sets["owner"] = changes.owner
        if changes.purpose is not None:
            sets["purpose"] = changes.purpose
        if changes.tags is not None:
            sets["tags"] = json_array(changes.tags)
            conn.execute("DELETE FROM horace_file_tags WHERE file_id = ?", (file_id,))
            conn.executemany(
                _INSERT_TAG,
                [(tag, file_id) for tag in changes.tags],
            )
        if changes.status is not None and changes.status != current.status:
            sets["status"] = changes.status.value
            # Never before the file's last change: a process whose clock is behind would
            # date the delete so long ago that the next purge took the file at once.
            sets["deleted_at"] = (
                max(now, _ts(current.updated_at)) if changes.status is Status.DELETED else None
            )
        if changes.custom is not None:
            sets["metadata"] = json_object({**current.metadata, **changes.custom})
        if changes.working_mode is not None:
            sets["working_mode"] = changes.working_mode
        assignments = ", ".join(f"{column} = ?" for column in sets)
        if "status" in sets:  # the working file leaves files/, or comes back as another file
            assignments += ", " + _NO_STAT
        conn.execute(f"UPDATE horace_files SET {assignments} WHERE id = ?", (*sets.values(), file_id))
        if changes.collection:
            _ensure_collection(conn, changes.collection, now)
            _add_members(conn, changes.collection, [file_id], now)
        return _file_by(conn, "id", file_id)


def _move_files(
    conn: sqlite3.Connection, moves: Sequence[tuple[str, str, WorkingStat | None]], at: datetime
) -> list[FileRecord | None]:
    done: list[FileRecord | None] = []
    with _transaction(conn):
        for file_id, new_path, working in moves:
            try:
                moved = conn.execute(
                    f"UPDATE horace_files SET file_path = ?, updated_at = ?, {_SET_STAT} WHERE id = ?",
                    (new_path, _ts(at), *_stat_values(working), file_id),
                ).rowcount
            except sqlite3.IntegrityError:
                moved = 0  # the new path is catalogued already
            done.append(_file_by(conn, "id", file_id) if moved else None)
    return done


# -- searching --------------------------------------------------------------------------
#
# A search is a count and a page, read in one snapshot. The common searches (newest first,
# one status, led by tags, any_tags or purpose words) are read from an index that holds
# the status and the creation order already (schema step 003): the count touches index
# entries only, and the page reads the matches in order and stops after it. Every other
# search goes through horace_files, whose sorter keeps only (sort value, id) pairs.

_TEXT_MATCHES = "SELECT k.file_id FROM horace_words(?) w CROSS JOIN horace_word_keys k ON k.key = w.rowid"


@frozen
class _Where:
    """``AND``-ed SQL conditions and their parameters, in order."""

    clauses: tuple[str, ...] = ()
    params: tuple[Any, ...] = ()

    def __add__(self, other: _Where) -> _Where:
        return _Where(self.clauses + other.clauses, self.params + other.params)

    def sql(self) -> str:
        """The conditions, each after " AND " (to follow a first condition such as 1)."""
        return "".join(" AND " + c for c in self.clauses)


def _where(clause: str, *params: Any) -> _Where:
    return _Where((clause,), params)


def _text_match(conn: sqlite3.Connection, q: SearchQuery) -> str | None:
    """The FTS5 query of *q*'s purpose words; None when it has none (matches nothing).
    A word that begins only a few of the index's words is written as those words: FTS5
    reads all of a prefix's matches before it gives the first, and a word's as they are
    needed. (A word in one file of ten, at 100,000 files: a page's keys in 0.57 ms as a
    prefix, 0.04 ms as the word; the count in 1.29 ms, 0.73 ms; the look-up, 0.4 ms.)"""
    found = words.query_words(q.purpose or "")
    if not found:
        return None
    known = {word: terms for word in found if (terms := _terms(conn, word)) is not None}
    return words.fts5_match(found, known)


_MAX_TERMS = 8  # a word that begins more of the index's words stays a prefix


def _terms(conn: sqlite3.Connection, word: str) -> list[str] | None:
    """The index's words that begin with *word*, or None when there are more than
    _MAX_TERMS (or no bound to read them by)."""
    end = words.prefix_end(word)
    if end is None:
        return None
    rows = conn.execute(
        "SELECT term FROM temp.horace_word_terms WHERE term >= ? AND term < ? LIMIT ?",
        (word, end, _MAX_TERMS + 1),
    ).fetchall()
    return [term for (term,) in rows] if len(rows) <= _MAX_TERMS else None


def _purpose_filter(match: str | None) -> _Where:
    return _where(f"f.id IN ({_TEXT_MATCHES})", match) if match else _where("0")


def _tag_filters(tags: tuple[str, ...], any_tags: tuple[str, ...]) -> _Where:
    where = _Where()
    for tag in tags:
        where += _where("f.id IN (SELECT file_id FROM horace_file_tags WHERE tag = ?)", tag)
    if any_tags:
        where += _where(
            f"f.id IN (SELECT file_id FROM horace_file_tags WHERE tag IN ({_placeholders(any_tags)}))",
            *any_tags,
        )
    return where


def _field_filters(q: SearchQuery) -> _Where:
    """The filters on the file's own columns (not status, tags or purpose)."""
    where = _Where()
    if q.owner is not None:
        where += _where("f.owner = ?", q.owner)
    if q.path:
        # No path holds NUL; SQLite's GLOB would read the pattern only up to it.
        where += _where("f.file_path GLOB ?", q.path) if "\x00" not in q.path else _where("0")
    if q.collection is not None:
        where += _where(
            "f.id IN (SELECT file_id FROM horace_collection_members WHERE collection = ?)", q.collection
        )
    if q.file_type:
        if "/" in q.file_type:
            if q.file_type.endswith("/*"):
                where += _where("f.mime_type LIKE ? ESCAPE '\\'", _like_escape(q.file_type[:-1]) + "%")
            else:
                where += _where("f.mime_type = ? COLLATE NOCASE", q.file_type)  # (as LIKE: any case)
        else:  # LIKE is case-insensitive here
            where += _where("f.file_path LIKE ? ESCAPE '\\'", "%." + _like_escape(q.file_type.lstrip(".")))
    for column, op, value in (
        ("size", ">=", q.min_size),
        ("size", "<=", q.max_size),
        ("created_at", ">=", q.created_after and _ts(q.created_after)),
        ("created_at", "<", q.created_before and _ts(q.created_before)),
        ("checksum", "=", q.checksum),
        ("correlation_id", "=", q.correlation_id),
    ):
        if value is not None:
            where += _where(f"f.{column} {op} ?", value)
    return where


def _status_filter(q: SearchQuery) -> _Where:
    if q.status is None:
        return _Where()
    selective = (
        q.tags
        or q.any_tags
        or q.purpose
        or q.owner is not None
        or q.path
        or q.collection is not None
        or q.checksum
        or q.correlation_id
    )
    # Unary + keeps status (3 values, but SQLite without statistics takes any equality
    # for a selective one) from choosing a status_* index over the selective filter's;
    # the owner's index has the status in it.
    plain = q.owner is not None or not selective
    return _where(f"{'' if plain else '+'}f.status = ?", q.status.value)


def _after(q: SearchQuery, column: str, id_column: str) -> _Where:
    """Rows past the keyset position, in the query's order."""
    if q.after is None:
        return _Where()
    value, last_id = q.after
    if isinstance(value, datetime):
        value = _ts(value)
    op = ">" if q.order is Order.ASC else "<"
    return _where(f"({column}, {id_column}) {op} (?, ?)", value, last_id)


def _search(conn: sqlite3.Connection, q: SearchQuery) -> tuple[int, list[FileRecord]]:
    newest_first_of_a_status = q.sort_by is SortKey.CREATED_AT and q.status is not None
    with _transaction(conn, "DEFERRED"):  # one snapshot for the words, the count and the page
        match = _text_match(conn, q)
        if newest_first_of_a_status and q.tags:
            total, rows = _search_by_tag(conn, q, match)
        elif newest_first_of_a_status and q.any_tags:
            total, rows = _search_by_any_tag(conn, q, match)
        elif newest_first_of_a_status and match is not None:
            total, rows = _search_by_words(conn, q, match)
        else:
            total, rows = _search_files(conn, q, match)
    return total, [_file(r) for r in rows]


def _direction(q: SearchQuery) -> str:
    return "ASC" if q.order is Order.ASC else "DESC"


def _search_files(
    conn: sqlite3.Connection, q: SearchQuery, match: str | None
) -> tuple[int, list[sqlite3.Row]]:
    """Any search, through horace_files and its indexes (*match*: of its purpose)."""
    where = _status_filter(q) + _tag_filters(q.tags, q.any_tags) + _field_filters(q)
    if q.purpose:
        where += _purpose_filter(match)
    column = f"f.{_SORT_COLUMNS[q.sort_by]}"
    order = f"{column} {_direction(q)}, f.id {_direction(q)}"
    page = where + _after(q, column, "f.id")
    count = f"SELECT count(*) FROM horace_files f WHERE 1{where.sql()}"
    (total,) = conn.execute(count, where.params).fetchone()
    # The sorter holds rowids and sort keys; only the page's rows are read whole.
    rows = conn.execute(
        f"SELECT {_F_COLUMNS} FROM horace_files f WHERE f.rowid IN ("
        f"SELECT f.rowid FROM horace_files f WHERE 1{page.sql()} ORDER BY {order} LIMIT ? OFFSET ?"
        f") ORDER BY {order}",
        [*page.params, q.limit, q.offset],
    ).fetchall()
    return total, rows


def _others(q: SearchQuery, tags: tuple[str, ...], any_tags: tuple[str, ...], match: str | None) -> _Where:
    """The filters a tag- or word-led search checks on each of its matches: all but its
    lead and the status (*tags* and *any_tags*: those that are not its lead)."""
    where = _tag_filters(tags, any_tags) + _field_filters(q)
    return where + _purpose_filter(match) if q.purpose else where


def _search_by_tag(
    conn: sqlite3.Connection, q: SearchQuery, match: str | None
) -> tuple[int, list[sqlite3.Row]]:
    """Newest first, led by the first tag: horace_file_tags_search holds (tag, status,
    created_at, file_id) in page order."""
    assert q.status is not None
    others = _others(q, q.tags[1:], q.any_tags, match)
    join = " CROSS JOIN horace_files f ON f.id = t.file_id"
    lead = _where("t.tag = ?", q.tags[0]) + _where("t.status = ?", q.status.value)
    (total,) = conn.execute(
        f"SELECT count(*) FROM horace_file_tags t{join if others.clauses else ''} "
        f"WHERE 1{(lead + others).sql()}",
        (lead + others).params,
    ).fetchone()
    order = f"t.created_at {_direction(q)}, t.file_id {_direction(q)}"
    page = lead + others + _after(q, "t.created_at", "t.file_id")
    rows = conn.execute(
        f"SELECT {_F_COLUMNS} FROM horace_file_tags t{join} WHERE 1{page.sql()} "
        f"ORDER BY {order} LIMIT ? OFFSET ?",
        [*page.params, q.limit, q.offset],
    ).fetchall()
    return total, rows


def _search_by_any_tag(
    conn: sqlite3.Connection, q: SearchQuery, match: str | None
) -> tuple[int, list[sqlite3.Row]]:
    """Newest first, any of the tags: the page is among the first offset+limit files of
    each tag (a file ahead of it is ahead in its own tag's list too)."""
    assert q.status is not None
    others = _others(q, (), (), match)
    join = " CROSS JOIN horace_files f ON f.id = t.file_id" if others.clauses else ""
    status = _where("t.status = ?", q.status.value)
    tags = list(dict.fromkeys(q.any_tags))
    # Counted as a UNION of one arm a tag, each read from the primary key (tag, file_id)
    # in file_id order, which SQLite merges as it goes; count(DISTINCT) put every match
    # into a temporary b-tree first (3,400 matches at 100,000 files: 3.4 -> 2.4 ms).
    arms = [_where("t.tag = ?", tag) + status + others for tag in tags]
    (total,) = conn.execute(
        "SELECT count(*) FROM ("
        + " UNION ".join(f"SELECT t.file_id FROM horace_file_tags t{join} WHERE 1{arm.sql()}" for arm in arms)
        + " ORDER BY 1)",
        [param for arm in arms for param in arm.params],
    ).fetchone()
    order = f"created_at {_direction(q)}, file_id {_direction(q)}"
    heads, params = [], []
    for tag in tags:
        head = _where("t.tag = ?", tag) + status + others + _after(q, "t.created_at", "t.file_id")
        heads.append(
            f"SELECT * FROM (SELECT t.file_id, t.created_at FROM horace_file_tags t{join} "
            f"WHERE 1{head.sql()} ORDER BY t.{order.replace(', ', ', t.')} LIMIT ?)"
        )
        params += [*head.params, q.reach]
    # The page's ids first, then their rows: not the rows of every head.
    by = f"ORDER BY h.{order.replace(', ', ', h.')}"
    rows = conn.execute(
        f"SELECT {_F_COLUMNS} FROM (SELECT * FROM ({' UNION '.join(heads)}) h {by} LIMIT ? OFFSET ?) h "
        f"CROSS JOIN horace_files f ON f.id = h.file_id {by}",
        [*params, q.limit, q.offset],
    ).fetchall()
    return total, rows


def _search_by_words(conn: sqlite3.Connection, q: SearchQuery, match: str) -> tuple[int, list[sqlite3.Row]]:
    """Newest first, led by purpose words: horace_words is numbered in page order up to
    the creation second (schema step 003). The page is the first offset+limit matches in
    that order and every other match of the last second they reach, sorted exactly."""
    assert q.status is not None
    others = _others(attrs.evolve(q, purpose=None), (), (), None)  # (no tags: they would lead)
    joins = " CROSS JOIN horace_word_keys k ON k.key = w.rowid CROSS JOIN horace_files f ON f.id = k.file_id"
    lead = _where("(w.rowid & 3) = ?", _STATUS_CODE[q.status])
    (total,) = conn.execute(
        f"SELECT count(*) FROM horace_words(?) w{joins if others.clauses else ''} "
        f"WHERE 1{(lead + others).sql()}",
        [match, *(lead + others).params],
    ).fetchone()
    newest_first = q.order is Order.DESC  # keys grow from the newest second to the oldest
    if q.after is not None:
        value = q.after[0]
        position = _ts(value) if isinstance(value, datetime) else value
        second = f"({_SECOND_SQL.format('?')} << {_SECOND_SHIFT})"
        if newest_first:
            lead += _where(f"w.rowid >= {second}", position)
        else:
            lead += _where(f"w.rowid <= ({second} | {_SECOND_LOW_BITS})", position)
    page = lead + others + _after(q, "f.created_at", "f.id")
    hits = _Hits(match, page, joins if others.clauses or q.after is not None else "", newest_first)
    reach = q.reach
    if reach <= _MAX_KEYS_READ:
        keys = hits.keys(conn, 2 * reach)
        if len(keys) <= reach or keys[reach - 1] >> _SECOND_SHIFT != keys[-1] >> _SECOND_SHIFT:
            return total, _rows_of_keys(conn, q, _through_last_second(keys, reach))
    # A far page, or a last second with more matches than were read: read to its end.
    rows = conn.execute(
        f"WITH hits AS ({hits.sql}) "
        f"SELECT {_F_COLUMNS} FROM horace_words(?) w{joins} WHERE {hits.last_second_sql}{page.sql()} "
        f"ORDER BY f.created_at {_direction(q)}, f.id {_direction(q)} LIMIT ? OFFSET ?",
        [*hits.params, reach, match, *page.params, q.limit, q.offset],
    ).fetchall()
    return total, rows


# A words search reads up to twice its offset+limit keys and then their rows, by key.
_MAX_KEYS_READ = 2000


@frozen
class _Hits:
    """The matches of a words search in key order (creation second, then no order)."""

    match: str
    page: _Where
    joins: str
    newest_first: bool  # keys grow from the newest second to the oldest

    @property
    def sql(self) -> str:
        walk = "ASC" if self.newest_first else "DESC"
        return (
            f"SELECT w.rowid AS key FROM horace_words(?) w{self.joins} WHERE 1{self.page.sql()} "
            f"ORDER BY w.rowid {walk} LIMIT ?"
        )

    @property
    def params(self) -> tuple[Any, ...]:
        return (self.match, *self.page.params)

    def keys(self, conn: sqlite3.Connection, count: int) -> list[int]:
        return [key for (key,) in conn.execute(self.sql, [*self.params, count])]

    @property
    def last_second_sql(self) -> str:
        """Keys up to the end of the second of the last of ``hits`` (a CTE of ``sql``).
        (In SQLite, << >> & | share one precedence, left to right: hence the parentheses.)"""
        if self.newest_first:
            return (
                f"w.rowid <= ((((SELECT max(key) FROM hits) >> {_SECOND_SHIFT}) << {_SECOND_SHIFT}) "
                f"| {_SECOND_LOW_BITS})"
            )
        return f"w.rowid >= (((SELECT min(key) FROM hits) >> {_SECOND_SHIFT}) << {_SECOND_SHIFT})"


def _through_last_second(keys: list[int], reach: int) -> list[int]:
    """The first *reach* keys and the others of the second the last of them is in (in
    key order, the seconds of the keys never turn back)."""
    end = min(reach, len(keys))
    while 0 < end < len(keys) and keys[end] >> _SECOND_SHIFT == keys[end - 1] >> _SECOND_SHIFT:
        end += 1
    return keys[:end]


def _rows_of_keys(conn: sqlite3.Connection, q: SearchQuery, keys: list[int]) -> list[sqlite3.Row]:
    """The page among the files of *keys*, in exact order (created_at, then id)."""
    if not keys:
        return []
    return conn.execute(
        f"SELECT {_F_COLUMNS} FROM horace_word_keys k CROSS JOIN horace_files f ON f.id = k.file_id "
        f"WHERE k.key IN ({_placeholders(keys)}) "
        f"ORDER BY f.created_at {_direction(q)}, f.id {_direction(q)} LIMIT ? OFFSET ?",
        [*keys, q.limit, q.offset],
    ).fetchall()


def _find_duplicates(
    conn: sqlite3.Connection, limit: int, offset: int, files_per_group: int
) -> list[DuplicateGroup]:
    with _transaction(conn, "DEFERRED"):
        sums = conn.execute(
            "SELECT checksum, max(size), count(*) FROM horace_files WHERE status != 'deleted' "
            "GROUP BY checksum HAVING count(*) > 1 ORDER BY max(size) DESC, checksum LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        groups = []
        for checksum, size, count in sums:
            rows = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM horace_files WHERE checksum = ? "
                "AND status != 'deleted' ORDER BY created_at, id LIMIT ?",
                (checksum, files_per_group),
            )
            groups.append(DuplicateGroup(checksum, size, count, tuple(_file(r) for r in rows)))
    return groups


_COLLECTION_SELECT = (
    "SELECT c.name, c.description, c.metadata, c.created_at, c.updated_at, "
    "(SELECT count(*) FROM horace_collection_members m WHERE m.collection = c.name) AS member_count "
    "FROM horace_collections c"
)


def _get_collection_row(conn: sqlite3.Connection, name: str) -> Collection | None:
    row = conn.execute(f"{_COLLECTION_SELECT} WHERE c.name = ?", (name,)).fetchone()
    return _collection(row) if row else None


def _upsert_collection(
    conn: sqlite3.Connection,
    name: str,
    description: str | None,
    metadata: Mapping[str, Any] | None,
    file_ids: Sequence[str],
    at: datetime,
) -> Collection:
    now = _ts(at)
    with _transaction(conn):
        conn.execute(
            "INSERT INTO horace_collections (name, description, metadata, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "description = coalesce(excluded.description, description), "
            "metadata = CASE WHEN ? THEN excluded.metadata ELSE metadata END, "
            "updated_at = excluded.updated_at",
            (name, description, json_object(metadata or {}), now, now, metadata is not None),
        )
        _add_members(conn, name, file_ids, now)
        found = _get_collection_row(conn, name)
    assert found is not None
    return found


def _list_collections(conn: sqlite3.Connection, limit: int, offset: int) -> tuple[int, list[Collection]]:
    with _transaction(conn, "DEFERRED"):
        (total,) = conn.execute("SELECT count(*) FROM horace_collections").fetchone()
        rows = conn.execute(
            f"{_COLLECTION_SELECT} ORDER BY c.name LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
    return total, [_collection(r) for r in rows]


def _get_collection(
    conn: sqlite3.Connection, name: str, limit: int, offset: int
) -> tuple[Collection, list[FileRecord]] | None:
    with _transaction(conn, "DEFERRED"):
        found = _get_collection_row(conn, name)
        if found is None:
            return None
        rows = conn.execute(
            f"SELECT {_F_COLUMNS} FROM horace_files f JOIN horace_collection_members m "
            "ON m.file_id = f.id WHERE m.collection = ? ORDER BY m.added_at, f.id LIMIT ? OFFSET ?",
            (name, limit, offset),
        ).fetchall()
    return found, [_file(r) for r in rows]


def _change_members(
    conn: sqlite3.Connection, name: str, file_ids: Sequence[str], at: datetime, add: bool
) -> Collection | None:
    now = _ts(at)
    with _transaction(conn):
        if _get_collection_row(conn, name) is None:
            return None
        if add:
            _add_members(conn, name, file_ids, now)
        else:
            conn.executemany(
                "DELETE FROM horace_collection_members WHERE collection = ? AND file_id = ?",
                [(name, fid) for fid in file_ids],
            )
            conn.execute("UPDATE horace_collections SET updated_at = ? WHERE name = ?", (now, name))
        return _get_collection_row(conn, name)


def _delete_collection(conn: sqlite3.Connection, name: str) -> bool:
    with _transaction(conn):
        return conn.execute("DELETE FROM horace_collections WHERE name = ?", (name,)).rowcount > 0


def _missing_file_ids(conn: sqlite3.Connection, file_ids: Sequence[str]) -> list[str]:
    if not file_ids:
        return []
    found = {
        r[0]
        for r in conn.execute(
            f"SELECT id FROM horace_files WHERE id IN ({_placeholders(file_ids)})", list(file_ids)
        )
    }
    return [fid for fid in file_ids if fid not in found]


def _unreferenced(conn: sqlite3.Connection, checksums: Sequence[str]) -> list[str]:
    unique = sorted(set(checksums))
    if not unique:
        return []
    used = {
        r[0]
        for r in conn.execute(
            f"SELECT DISTINCT checksum FROM horace_versions WHERE checksum IN ({_placeholders(unique)})",
            unique,
        )
    }
    return [c for c in unique if c not in used]


def _repair_current(conn: sqlite3.Connection, file_id: str) -> FileRecord | None:
    with _transaction(conn):
        conn.execute(
            "UPDATE horace_files SET (current_version, checksum, size) = "
            "(SELECT version, checksum, size FROM horace_versions v WHERE v.file_id = horace_files.id "
            f" ORDER BY version DESC LIMIT 1), {_NO_STAT} "
            "WHERE id = ? AND EXISTS (SELECT 1 FROM horace_versions WHERE file_id = ?)",
            (file_id, file_id),
        )
        return _file_by(conn, "id", file_id)


_STATUS_OF = {status.value: status for status in Status}


def _working_index(conn: sqlite3.Connection, file_id: str | None = None) -> list[IndexEntry]:
    # Every file, at every scan: plain tuples read by position (a Row looked up by name,
    # and Status() for each, took three quarters of the time on 10,000 files).
    cursor = conn.cursor()
    cursor.row_factory = None
    query = f"SELECT id, file_path, checksum, status, current_version, {_STAT_COLUMNS} FROM horace_files"
    rows = cursor.execute(query) if file_id is None else cursor.execute(f"{query} WHERE id = ?", (file_id,))
    status_of = _STATUS_OF
    return [
        IndexEntry(
            file_id,
            path,
            checksum,
            status_of[status],
            version,
            None
            if recorded is None
            else WorkingStat(size, mtime, ctime, from_int64(inode), from_int64(device), recorded),
        )
        for file_id, path, checksum, status, version, size, mtime, ctime, inode, device, recorded in rows
    ]


def _refresh_working(conn: sqlite3.Connection, entries: Sequence[IndexEntry]) -> int:
    with _transaction(conn):
        return sum(
            conn.execute(
                f"UPDATE horace_files SET {_SET_STAT} "
                "WHERE id = ? AND current_version = ? AND checksum = ? AND file_path = ?",
                (*_stat_values(e.working), e.file_id, e.current_version, e.checksum, e.file_path),
            ).rowcount
            for e in entries
            if e.working is not None
        )


def _delete_version(conn: sqlite3.Connection, file_id: str, version: int) -> None:
    with _transaction(conn):
        conn.execute("DELETE FROM horace_versions WHERE file_id = ? AND version = ?", (file_id, version))


# FTS5 adds a segment to the word index with every write and merges them a few at a time,
# and a search reads each segment's entries for its words: loaded in 20 batches, 100,000
# files' index took 0.7 ms of a purpose search's 2.4. Merged into one segment (0.13 s in
# all), in steps of 200 pages (20 ms at most), each its own transaction.
_MERGE_PAGES = 200


def _merge_words(conn: sqlite3.Connection) -> bool:
    """One step of merging the word index into one segment; False once there was none
    left to take."""
    with _transaction(conn):
        before = conn.total_changes
        conn.execute("INSERT INTO horace_words (horace_words, rank) VALUES ('merge', ?)", (-_MERGE_PAGES,))
        return conn.total_changes - before >= 2  # (FTS5's way of saying it merged something)


def _purge_deleted(conn: sqlite3.Connection, deleted_before: datetime) -> tuple[int, list[str]]:
    with _transaction(conn):
        checksums = [
            r[0]
            for r in conn.execute(
                "SELECT v.checksum FROM horace_versions v JOIN horace_files f ON f.id = v.file_id "
                "WHERE f.status = 'deleted' AND f.deleted_at < ?",
                (_ts(deleted_before),),
            )
        ]
        purged = conn.execute(
            "DELETE FROM horace_files WHERE status = 'deleted' AND deleted_at < ?",
            (_ts(deleted_before),),
        ).rowcount
        return purged, _unreferenced(conn, checksums)


_TURN_COLUMNS = (
    "conversation_id, turn_number, role, content, model, input_tokens, output_tokens, timing_ms, "
    "metadata, created_at"
)
_TURN_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_TURNS_A_STATEMENT = 100  # 1,000 parameters: far below SQLite's limit (32,766)


def _prune_turns(conn: sqlite3.Connection, before: str, limit: int) -> int:
    # In id order (the order turns are stored in, near enough the order of their times):
    # the oldest are found first, without an index on created_at to keep up per turn.
    with _transaction(conn):
        return conn.execute(
            "DELETE FROM conversations WHERE id IN "
            "(SELECT id FROM conversations WHERE created_at < ? ORDER BY id LIMIT ?)",
            (before, limit),
        ).rowcount


def _insert_turns(conn: sqlite3.Connection, turns: Sequence[Turn]) -> list[Turn]:
    """Store *turns*; the ones that conflict with a stored turn of other content.

    Many rows a statement: the sqlite3 module lets go of the GIL for each step of a
    statement, and each time the event loop's thread may have to hand it back; one step
    for a hundred rows keeps a batch from taking the GIL back and forth all along."""
    params: list[Any] = []
    for t in turns:
        params += (
            t.conversation_id,
            t.turn_number,
            t.role,
            t.content,
            t.model,
            t.input_tokens,
            t.output_tokens,
            t.timing_ms,
            metadata_json(t),
            _ts(t.created_at),
        )
    conflicts = []
    width = 10
    with _transaction(conn):
        inserted = 0
        for start in range(0, len(turns), _TURNS_A_STATEMENT):
            count = min(_TURNS_A_STATEMENT, len(turns) - start)
            inserted += conn.execute(
                f"INSERT INTO conversations ({_TURN_COLUMNS}) VALUES "
                f"{', '.join([_TURN_ROW] * count)} ON CONFLICT DO NOTHING",
                params[start * width : (start + count) * width],
            ).rowcount
        if inserted != len(turns):
            # Some were stored already: each is either the same turn delivered again
            # (fine) or another turn under the same number (a conflict to report).
            for t in turns:
                same = conn.execute(
                    "SELECT 1 FROM conversations WHERE conversation_id = ? AND turn_number = ? "
                    "AND role = ? AND content = ?",
                    (t.conversation_id, t.turn_number, t.role, t.content),
                ).fetchone()
                if not same:
                    conflicts.append(t)
    return conflicts


def _identity(conn: sqlite3.Connection) -> CatalogIdentity:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "horace_files" not in tables:
        return CatalogIdentity(None, None, empty=True, tables=False)
    (empty,) = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM horace_files)").fetchone()
    row = (
        conn.execute("SELECT store_id, storage_path, bound_at FROM horace_store").fetchone()
        if ("horace_store" in tables)
        else None
    )
    if row is None:
        return CatalogIdentity(None, None, bool(empty))
    return CatalogIdentity(row[0], row[1], bool(empty), bound_at=_dt(row[2]))


def _bound_to(conn: sqlite3.Connection) -> str | None:
    tables = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'horace_store'")
    if tables.fetchone() is None:
        return None
    row = conn.execute("SELECT store_id FROM horace_store").fetchone()
    return None if row is None else str(row[0])


def _bind(conn: sqlite3.Connection, store_id: str, storage_path: str, at: datetime) -> str:
    with _transaction(conn):
        conn.execute(
            "INSERT INTO horace_store (id, store_id, storage_path, bound_at) VALUES (1, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (store_id, storage_path, _ts(at)),
        )
        (bound,) = conn.execute("SELECT store_id FROM horace_store").fetchone()
    return str(bound)


def _rebind(conn: sqlite3.Connection, old_id: str, new_id: str, storage_path: str, at: datetime) -> bool:
    with _transaction(conn):
        done = conn.execute(
            "UPDATE horace_store SET store_id = ?, storage_path = ?, bound_at = ? WHERE store_id = ?",
            (new_id, storage_path, _ts(at), old_id),
        )
        return done.rowcount == 1


def _migrate(conn: sqlite3.Connection) -> int:
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        columns = [
            f"{name} {kind}" for _, name, kind, *_ in conn.execute("PRAGMA table_info(schema_version)")
        ]
        records_steps, has_files = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM schema_version), "
            "EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'horace_files')"
        ).fetchone()
        migrations.check_version_table(columns, bool(records_steps), bool(has_files))
        applied = {version for (version,) in conn.execute("SELECT version FROM schema_version")}
        for step in migrations.pending("sqlite", applied):
            # executescript would COMMIT; run the statements one by one inside our transaction.
            for statement in _statements(step.sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (step.version,))
            applied.add(step.version)
    return max(applied, default=0)


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""


def _disk_full(exc: sqlite3.OperationalError, path: Path) -> bool:
    """Whether *exc* comes of a full disk under the catalog at *path*. Opening it, SQLite
    says "disk I/O error" when it cannot grow the ``-shm`` file beside it, and "unable to
    open" when there is no inode left for the ``-wal`` file: the disk is asked then."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    if code is None or code & 0xFF not in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
        return False
    try:
        room = os.statvfs(path.parent)
    except OSError:
        return False
    # Out of bytes, or of inodes (f_files is 0 where the filesystem counts none: btrfs).
    # A filesystem of no blocks at all (/proc, /sys) is no disk that filled up.
    full = room.f_bavail == 0 or (room.f_files > 0 and room.f_favail == 0)
    return full and room.f_blocks > 0


async def _interruptible(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` (a read) in a worker thread, its statement interrupted when the
    caller is cancelled (a call's deadline, a client's cancel): a thread cannot be
    cancelled, and one long statement would hold the call past its deadline."""
    finished = False

    async def interrupt_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not finished:
                conn.interrupt()  # (from another thread: what it is for)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt_when_cancelled)
        try:
            # Kept, not raised here: raised in the nursery, an error (CatalogDamaged, say)
            # would come out of it in an ExceptionGroup, which no caller looks into.
            done = await outcome.acapture(trio.to_thread.run_sync, fn, conn, *args)
        finally:
            finished = True
            nursery.cancel_scope.cancel()
    if isinstance(done, outcome.Error) and str(done.error) == "interrupted":
        await trio.lowlevel.checkpoint()  # the cancel that interrupted it
    return done.unwrap()


_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _damaged(exc: sqlite3.DatabaseError, path: Path | str) -> CatalogDamaged | None:
    """A damaged catalog file is :class:`CatalogDamaged`, that says what to do, not a bug."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _DAMAGED:
        return None
    return CatalogDamaged(
        f"the catalog {path} is damaged (SQLite: {exc}): if only its indexes are, `horace fsck "
        "--repair` rebuilds them; else put back a backup copy of it, after removing the "
        "catalog.db-wal and catalog.db-shm beside it (README: Backing up a store on SQLite), or "
        "save what it still holds with the sqlite3 shell's .recover; files/ and .horace/objects/ "
        "are untouched"
    )


def _integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's full integrity check finds (at most 100 problems): every page, and every
    index against its table (its quick check leaves the indexes out)."""
    try:
        rows = [row[0] for row in conn.execute("PRAGMA integrity_check(100)")]
    except sqlite3.DatabaseError as exc:  # (a schema or header it cannot even read)
        return [str(exc)]
    if rows == ["ok"]:
        return []
    return [line for row in rows for line in row.splitlines() if line and not line.startswith("***")]


def _mend_integrity(conn: sqlite3.Connection) -> list[str]:
    """Rebuild every index from its table, then the file itself when only pages lost to no
    table are left (``Page N is never used``); what is still found after."""
    for step in ("REINDEX", "VACUUM"):
        try:
            conn.execute(step)
        except sqlite3.DatabaseError as exc:  # (a table itself damaged, or a unique index broken)
            return [*_integrity_problems(conn), f"{step} failed: {exc}"]
        left = _integrity_problems(conn)
        if not left or not all(re.fullmatch(r"Page \d+ is never used", line) for line in left):
            return left
    return left


def _said(fn: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    """``fn(conn, *args)``, a full disk under the database raised as :class:`DatabaseFull`
    and a damaged file as :class:`CatalogDamaged`, not as bugs."""
    try:
        return fn(conn, *args)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise DatabaseFull(f"the disk of the SQLite catalog is full: {exc}") from None
        damaged = _damaged(exc, _file_of(conn))
        if damaged is not None:
            raise damaged from None
        raise


def _busy(exc: sqlite3.DatabaseError) -> bool:
    """Did SQLite give up waiting for another connection's lock (SQLITE_BUSY, SQLITE_LOCKED)?"""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _read_only(exc: sqlite3.DatabaseError) -> bool:
    """Did SQLite refuse a write for a read-only file (SQLITE_READONLY and its extended
    codes: the database, its -wal or -shm file)?"""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_READONLY


def _side_files_writable(path: Path) -> None:
    """SQLite makes the -wal and -shm files with the catalog's mode: made while the catalog
    was read-only, they stay so when it is made writable again, and every open for writing
    fails on them. When the catalog may be written, they are given its mode."""
    if not os.access(path, os.W_OK):
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if not os.access(side, os.W_OK):
                os.chmod(side, mode)
        except FileNotFoundError:
            continue
        except PermissionError:  # not this user's: the open that follows says so
            log.warning("the catalog's %s is read-only and not this user's to change", side)


def _file_of(conn: sqlite3.Connection) -> str:
    try:
        return str(conn.execute("PRAGMA database_list").fetchone()[2])
    except sqlite3.Error:
        return "database"


def _open(path: Path, create: bool) -> SqliteBackend:
    if not create and not path.exists():
        raise CatalogMissing(f"no catalog database at {path}")
    problem = place_problem(f"sqlite://{path}")
    if problem is not None:
        raise UnusableURL(problem)
    _refuse_shared(path)
    _side_files_writable(path)
    return SqliteBackend(path)


def _refuse_shared(path: Path) -> None:
    """A catalog file hard linked elsewhere (its store copied with ``cp -al``, as rsnapshot
    does) is refused: each copy would write the one file through a write-ahead log of its
    own, which damages it, and each would record versions whose content the other lacks."""
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            links = name.stat().st_nlink
        except FileNotFoundError:
            continue
        if links > 1:
            raise CatalogUnwritable(
                f"the catalog file {name} has {links} hard links: is its store a hard-link copy of "
                "another (`cp -al`, rsnapshot), or the other of such a copy? Horace uses neither "
                "while they share the catalog: remove the copy (`find / -samefile "
                f"{name}` finds it), and copy a store with `cp -a` or rsync instead"
            )


class SqliteBackend:
    def __init__(self, path: Path) -> None:
        self.url = f"sqlite://{path}"
        self.path = path
        self.refusals = LastRefusal()
        self._place = f"sqlite:{os.path.realpath(path)}"  # (see CatalogIdentity.place)
        self._writer = _connect(path)
        self._writer_read_only = False  # (a write refused it for a read-only file: see _write)
        opened = os.stat(path)  # (the file the connection holds: made by the connect if new)
        self._opened = (opened.st_dev, opened.st_ino)
        self._write_lock = trio.Lock()
        self._key_reader = _connect_key_reader(path)
        self._key_reads_on_threads_until = -math.inf
        self._readers: list[sqlite3.Connection] = []
        self._reader_slots = trio.CapacityLimiter(READERS)
        self._holds_file_lock = False
        self._damage: str | None = None  # (see damaged)

    def damaged(self) -> str | None:
        return self._damage

    def _noting(self, exc: BaseException) -> None:
        if isinstance(exc, CatalogDamaged) and self._damage is None:
            self._damage = str(exc)

    def replaced(self) -> str | None:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return f"the catalog {self.path} was removed"
        if (now.st_dev, now.st_ino) != self._opened:
            return f"another file was put in place of the catalog {self.path} (a backup restored over it?)"
        return None

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._write_lock:
            try:
                if self._writer_read_only:
                    await trio.to_thread.run_sync(self._reopen_writer)
                return await trio.to_thread.run_sync(_said, fn, self._writer, *args)
            except sqlite3.DatabaseError as exc:
                if _busy(exc):  # past busy_timeout: held by a program that is no Horace
                    raise BackendUnavailable(
                        f"the catalog {self.path} has been locked by another program for "
                        f"{BUSY_TIMEOUT_MS // 1000} s (an sqlite3 shell left in a transaction?): {exc}"
                    ) from None
                if not _read_only(exc):
                    raise
                self._writer_read_only = True
                unwritable = CatalogUnwritable(
                    f"the catalog {self.path} cannot be written ({exc}): is it, or its -wal or "
                    "-shm file beside it, read-only, or not this user's to write?"
                )
                self.refusals.note(unwritable)
                raise unwritable from None
            except REFUSALS as exc:
                self.refusals.note(exc)
                self._noting(exc)
                raise

    def _reopen_writer(self) -> None:
        """A connection SQLite opened on a file it could not write is read-only for good:
        after a write it refused, the next is tried on a new one (the file may be writable
        again; its side files are made so with it: see :func:`_side_files_writable`)."""
        _side_files_writable(self.path)
        writer = _connect(self.path)
        self._writer.close()
        self._writer, self._writer_read_only = writer, False

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._holds_file_lock:
            # A file lock's holder must not queue behind the reads of everyone waiting
            # for that lock: it reads on the writer connection.
            return await self._write(fn, *args)
        async with self._reader_slots:
            conn = self._readers.pop() if self._readers else None
            try:
                if conn is None:
                    conn = await trio.to_thread.run_sync(_connect, self.path)
                return await _interruptible(conn, functools.partial(_said, fn), *args)
            except CatalogDamaged as exc:
                self._noting(exc)
                raise
            finally:
                if conn is not None:
                    self._readers.append(conn)

    async def _read_by_key(self, fn: Callable[..., T], *args: Any) -> T:
        """A read of a row or a few by key (an index look-up, a handful of pages), here on
        the event loop's thread.

        Such a read takes 10-30 µs: less than handing it to a worker thread, which costs
        the loop 50-90 µs and, with many sessions calling at once, makes the loop and the
        threads wait on each other for the GIL (8 WebSocket sessions: 900 µs of CPU a
        call through threads, 320 µs this way). It never waits for a lock: its connection
        has no busy timeout, and a read that finds the database busy (a WAL being
        recovered, an exclusive lock) is done again on a worker thread, as other reads are.
        What it may wait for is the disk, for pages in no cache: a read that took longer
        than KEY_READ_SLOW sends the reads by key of the next KEY_READ_BACKOFF seconds to
        the worker threads, so a slow disk stalls the loop once in that time at most.
        """
        if self._holds_file_lock:
            return await self._write(fn, *args)
        if trio.current_time() < self._key_reads_on_threads_until:
            return await self._read(fn, *args)
        await trio.lowlevel.checkpoint()
        started = time.perf_counter()
        try:
            return _said(fn, self._key_reader, *args)
        except CatalogDamaged as exc:
            self._noting(exc)
            raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
        finally:
            took = time.perf_counter() - started
            if took > KEY_READ_SLOW:
                self._key_reads_on_threads_until = trio.current_time() + KEY_READ_BACKOFF
                log.info(
                    "a catalog read by key took %.1f ms (a slow disk?): such reads go to worker "
                    "threads for %g s",
                    took * 1000,
                    KEY_READ_BACKOFF,
                )
        return await self._read(fn, *args)

    async def identity(self) -> CatalogIdentity:
        found = await self._read(_identity)
        return attrs.evolve(found, place=self._place)

    async def bind(self, store_id: str, storage_path: str, at: datetime) -> str:
        return await self._write(_bind, store_id, storage_path, at)

    async def bound_to(self) -> str | None:
        return await self._read(_bound_to)

    async def rebind(self, old_id: str, new_id: str, storage_path: str, at: datetime) -> bool:
        return await self._write(_rebind, old_id, new_id, storage_path, at)

    async def migrate(self) -> int:
        # (At every opening for writing.) A process started on a read-only catalog would
        # serve no write until restarted: SQLite keeps the -shm file's read-only mapping while
        # any of the process's connections to the file is open. Said now instead.
        if not await trio.to_thread.run_sync(os.access, self.path, os.W_OK):
            unwritable = CatalogUnwritable(
                f"the catalog {self.path} is read-only (or not this user's to write): make it "
                "writable, and its -wal and -shm files beside it"
            )
            self.refusals.note(unwritable)
            raise unwritable
        try:
            return await self._write(_migrate)
        except NotHoraces as exc:
            raise UnusableURL(f"the SQLite file {self.path}: {exc}: {NOT_HORACES_ADVICE}") from None
        except sqlite3.OperationalError as exc:
            if "already exists" not in str(exc):
                raise
            raise UnusableURL(f"the SQLite file {self.path}: {exc}: {NOT_HORACES_ADVICE}") from None

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute(PING).fetchone())

    @asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[Units]:
        # One SQLite file is one host's: the fcntl lock taken by the caller is enough.
        # The holder gets a view of this backend whose reads skip the readers' queue.
        holder = copy.copy(self)
        holder._holds_file_lock = True
        yield holder

    @asynccontextmanager
    async def exclusive_free(self, keys: Sequence[int]) -> AsyncIterator[tuple[Units, frozenset[int]]]:
        # As exclusive(): the caller's fcntl locks are the ones that count.
        async with self.exclusive(0) as holder:
            yield holder, frozenset(keys)

    async def aclose(self) -> None:
        async with self._write_lock:
            self._key_reader.close()
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            if self.replaced() is not None:
                await trio.to_thread.run_sync(self._empty_the_log_of_the_file_replaced)
            self._writer.close()

    def _empty_the_log_of_the_file_replaced(self) -> None:
        """The catalog's file was replaced (or moved, or removed) under this process: SQLite
        does not checkpoint into a file that moved when it closes, and leaves its log at
        ``catalog.db-wal``, where whoever opens the file now in place would replay it over
        that file (damaging it, or undoing the restore). Its frames go into the file they
        belong to, the one this connection holds, and the log is emptied."""
        try:
            busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            busy, why = 1, str(exc)
        else:
            why = "another process still reads it"
        if busy:
            log.error(
                "the catalog %s was replaced while this process ran, and its write-ahead log could "
                "not be emptied (%s): remove %s-wal and %s-shm before Horace opens the catalog in place",
                self.path,
                why,
                self.path,
                self.path,
            )

    # -- units ----------------------------------------------------------------------------

    async def file_by_id(self, file_id: str) -> FileRecord | None:
        return await self._read_by_key(_file_by, "id", file_id)

    async def file_by_path(self, file_path: str) -> FileRecord | None:
        return await self._read_by_key(_file_by, "file_path", file_path)

    async def file_by_checksum(self, checksum: str) -> FileRecord | None:
        return await self._read_by_key(_file_by_checksum, checksum)

    async def versions(self, file_id: str) -> list[VersionRecord]:
        return await self._read(_versions, file_id)

    async def version(self, file_id: str, version: int) -> VersionRecord | None:
        return await self._read_by_key(_one_version, file_id, version)

    async def working_mode(self, file_id: str) -> int | None:
        return await self._read_by_key(_working_mode, file_id)

    async def insert_files(
        self,
        files: Sequence[FileRecord],
        collection: str | None = None,
        working: Mapping[str, WorkingStat] | None = None,
        *,
        copies: bool = False,
    ) -> list[FileRecord]:
        return await self._write(_insert_files, files, collection, working or {}, copies)

    async def add_version(
        self,
        file_id: str,
        new: NewVersion,
        at: datetime,
        correlation_id: str | None,
        retention: Retention,
        status: str | None = None,
    ) -> tuple[FileRecord, VersionRecord, list[str]]:
        return await self._write(_add_version, file_id, new, at, correlation_id, retention, status)

    async def add_versions(
        self,
        changes: Sequence[tuple[IndexEntry, NewVersion]],
        at: datetime,
        correlation_id: str | None,
        retention: Retention,
    ) -> list[tuple[FileRecord, VersionRecord, list[str]] | None]:
        return await self._write(_add_versions, changes, at, correlation_id, retention)

    async def update_file(self, file_id: str, changes: FileChanges, at: datetime) -> FileRecord | None:
        return await self._write(_update_file, file_id, changes, at)

    async def move_files(
        self, moves: Sequence[tuple[str, str, WorkingStat | None]], at: datetime
    ) -> list[FileRecord | None]:
        return await self._write(_move_files, moves, at) if moves else []

    async def refresh_working(self, entries: Sequence[IndexEntry]) -> int:
        return await self._write(_refresh_working, entries)

    async def search(self, query: SearchQuery) -> tuple[int, list[FileRecord]]:
        return await self._read(_search, query)

    async def find_duplicates(self, limit: int, offset: int, files_per_group: int) -> list[DuplicateGroup]:
        return await self._read(_find_duplicates, limit, offset, files_per_group)

    async def upsert_collection(
        self,
        name: str,
        description: str | None,
        metadata: Mapping[str, Any] | None,
        file_ids: Sequence[str],
        at: datetime,
    ) -> Collection:
        return await self._write(_upsert_collection, name, description, metadata, file_ids, at)

    async def list_collections(self, limit: int, offset: int) -> tuple[int, list[Collection]]:
        return await self._read(_list_collections, limit, offset)

    async def get_collection(
        self, name: str, limit: int, offset: int
    ) -> tuple[Collection, list[FileRecord]] | None:
        return await self._read(_get_collection, name, limit, offset)

    async def add_members(self, name: str, file_ids: Sequence[str], at: datetime) -> Collection | None:
        return await self._write(_change_members, name, file_ids, at, True)

    async def remove_members(self, name: str, file_ids: Sequence[str], at: datetime) -> Collection | None:
        return await self._write(_change_members, name, file_ids, at, False)

    async def delete_collection(self, name: str) -> bool:
        return await self._write(_delete_collection, name)

    async def missing_file_ids(self, file_ids: Sequence[str]) -> list[str]:
        return await self._read(_missing_file_ids, file_ids)

    async def file_ids_from(self, lowest: str, limit: int) -> list[str]:
        return await self._read(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM horace_files WHERE id >= ? ORDER BY id LIMIT ?", (lowest, limit)
                )
            ]
        )

    async def unreferenced(self, checksums: Sequence[str]) -> list[str]:
        return await self._read(_unreferenced, checksums)

    async def all_files(self) -> list[FileRecord]:
        return await self._read(
            lambda conn: [_file(r) for r in conn.execute(f"SELECT {_FILE_COLUMNS} FROM horace_files")]
        )

    async def working_index(self) -> list[IndexEntry]:
        return await self._read(_working_index)

    async def index_entry(self, file_id: str) -> IndexEntry | None:
        found = await self._read(_working_index, file_id)
        return found[0] if found else None

    async def all_versions(self) -> list[VersionRecord]:
        return await self._read(
            lambda conn: [
                _version(r) for r in conn.execute(f"SELECT {_VERSION_COLUMNS} FROM horace_versions")
            ]
        )

    async def repair_current(self, file_id: str) -> FileRecord | None:
        return await self._write(_repair_current, file_id)

    async def delete_version(self, file_id: str, version: int) -> None:
        await self._write(_delete_version, file_id, version)

    async def purge_deleted(self, deleted_before: datetime) -> tuple[int, list[str]]:
        return await self._write(_purge_deleted, deleted_before)

    async def check_integrity(self, *, repair: bool) -> tuple[list[str], bool]:
        found = await self._write(_integrity_problems)
        if not found or not repair:
            return found, False
        return found, not await self._write(_mend_integrity)

    async def tidy(self) -> None:
        while await self._write(_merge_words):  # (other writers get in between the steps)
            pass

    async def insert_turns(self, turns: Sequence[Turn]) -> list[Turn]:
        return await self._write(_insert_turns, turns)

    async def prune_turns(self, before: datetime, limit: int) -> int:
        return await self._write(_prune_turns, _ts(before), limit)


@asynccontextmanager
async def open_sqlite(path: Path, *, create: bool = True) -> AsyncIterator[SqliteBackend]:
    """Open (with *create*, create) the SQLite catalog at *path*."""
    backend = await trio.to_thread.run_sync(_open, path, create)
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
