"""The one narrow protocol every catalog backend implements.

Each method is a unit of work: it runs as one transaction (and, where the backend can
manage it, one round trip or one thread hop). Backends know SQL; they know nothing of
files, paths on disk or MCP. They return ``None`` or empty results for things that are
not there; turning that into an error code is the catalog's business.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from .records import (
    CatalogIdentity,
    Collection,
    DuplicateGroup,
    FileChanges,
    FileRecord,
    IndexEntry,
    NewVersion,
    Retention,
    SearchQuery,
    Turn,
    VersionRecord,
    WorkingStat,
)


class BackendUnavailable(Exception):
    """The database cannot be reached (connection refused, server gone, login refused).
    *in_doubt*: lost under a statement, a commit among them: what it was writing may have
    been committed or not, and only a look says which."""

    def __init__(self, message: str, *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


class CatalogMissing(Exception):
    """The catalog database does not exist, and was not to be created."""


class SchemaBehind(Exception):
    """A command that only reads (and so applies no schema step) needs what a step this
    code knows and the catalog has not had yet would have made."""


class DatabaseFull(Exception):
    """The database's disk is full: nothing more can be written until there is room."""


class FileGone(LookupError):
    """The file a unit of work names is not (or no longer) in the catalog: purged meanwhile."""


class UnusableURL(ValueError):
    """A database URL that names no catalog Horace can open (scheme, path, port, options)."""


class NotHoraces(Exception):
    """The database (or schema) already holds a table of one of Horace's names that Horace
    did not make: another application's. Said as an :class:`UnusableURL` by the backend."""


NOT_HORACES_ADVICE = (
    "another application's? Give Horace a database of its own (on PostgreSQL, or a schema of "
    "its own: search_path in the URL)"
)


class CatalogUnwritable(Exception):
    """The catalog database file cannot be opened or written: a read-only filesystem, or
    a folder or file this user may not write."""


class CatalogDamaged(Exception):
    """The catalog database's file is damaged (SQLite: "database disk image is malformed"):
    what it holds cannot all be read until it is mended (``horace fsck --repair``) or put
    back from a backup copy."""


# What the database's state makes fail (it is down, refuses Horace's role, is full or
# damaged), not what Horace or the data did: worth a line in the log and a retry, not a
# traceback.
OUTAGES = (BackendUnavailable, CatalogUnwritable, DatabaseFull, CatalogDamaged)
# Of those, what a database that still answers refuses (a ping reads: it goes on working).
REFUSALS = (CatalogUnwritable, DatabaseFull, CatalogDamaged)


class LastRefusal:
    """When the database last refused Horace's work for its state (a full disk, a
    read-only database, a damaged file), and what it said: for ``/health``, whose ping
    only reads."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.said = ""

    def note(self, exc: BaseException) -> None:
        self.at, self.said = time.monotonic(), str(exc)

    def clear(self) -> None:
        """A write was committed since: the database takes writes again."""
        self.at = None

    def within(self, seconds: float) -> tuple[str, float] | None:
        """What it said, and how many seconds ago, if it was less than *seconds* ago."""
        if self.at is None or time.monotonic() - self.at >= seconds:
            return None
        return self.said, time.monotonic() - self.at


# A ping reads the tables every call and every turn needs, a row at most: a role refused
# them is as unable to serve as a database that does not answer.
PING = "SELECT EXISTS (SELECT 1 FROM horace_files), EXISTS (SELECT 1 FROM conversations)"


class Units(Protocol):
    """The units of work. ``Backend`` offers them, and so does a held file lock."""

    # -- reading one file -------------------------------------------------------------
    async def file_by_id(self, file_id: str) -> FileRecord | None: ...
    async def file_by_path(self, file_path: str) -> FileRecord | None: ...
    async def file_by_checksum(self, checksum: str) -> FileRecord | None:
        """The oldest active file whose current content has this checksum (what makes a
        new file of that content a duplicate)."""

    async def versions(self, file_id: str) -> list[VersionRecord]:
        """Newest first."""

    async def version(self, file_id: str, version: int) -> VersionRecord | None: ...

    async def working_mode(self, file_id: str) -> int | None:
        """The permission bits the file's working copy had when it was last read (its stat
        identity recorded: ``WorkingStat.mode``) or taken out of files/ by a status change
        (``FileChanges.working_mode``); None when not known."""
        ...

    # -- writing ----------------------------------------------------------------------
    async def insert_files(
        self,
        files: Sequence[FileRecord],
        collection: str | None = None,
        working: Mapping[str, WorkingStat] | None = None,
        *,
        copies: bool = False,
    ) -> list[FileRecord]:
        """Insert new files with their version 1 (from each record's checksum and size),
        each with the stat identity of the working file it was read from (*working*, by
        file id; none when absent).

        A path that is catalogued already is skipped, and so is one whose content is an
        active file's (same checksum), unless these are *copies*, catalogued as files of
        their own; returns the records actually inserted.
        """

    async def add_version(
        self,
        file_id: str,
        new: NewVersion,
        at: datetime,
        correlation_id: str | None,
        retention: Retention,
        status: str | None = None,
    ) -> tuple[FileRecord, VersionRecord, list[str]]:
        """Record version max+1 as current (optionally setting status), prune by
        retention, and return the file, the version, and the checksums of pruned
        versions that no version row refers to any more. The file's stat identity becomes
        ``new.working`` (cleared when None). :class:`FileGone` when the file is not
        catalogued."""

    async def add_versions(
        self,
        changes: Sequence[tuple[IndexEntry, NewVersion]],
        at: datetime,
        correlation_id: str | None,
        retention: Retention,
    ) -> list[tuple[FileRecord, VersionRecord, list[str]] | None]:
        """:meth:`add_version` for each (entry, new version) whose file is still active at
        the entry's ``current_version`` (the content the caller looked at), and None,
        touching nothing, for any other: changed, no longer active, or gone meanwhile."""

    async def update_file(self, file_id: str, changes: FileChanges, at: datetime) -> FileRecord | None:
        """Apply the allow-listed changes; a status change sets or clears deleted_at
        and clears the stat identity (the working file leaves or comes back);
        ``collection`` adds the file to that collection (created when missing)."""

    async def move_files(
        self, moves: Sequence[tuple[str, str, WorkingStat | None]], at: datetime
    ) -> list[FileRecord | None]:
        """Give each file (id, new path, its stat identity there) its new path (renames
        seen on disk), in one transaction; the stat identity is recorded (None: cleared).
        One result a move: None where the file is unknown or the new path is taken."""

    async def refresh_working(self, entries: Sequence[IndexEntry]) -> int:
        """Record each entry's ``working`` identity for its file, only where the file is
        still at ``current_version`` with ``checksum`` (its working file was read again
        and found unchanged); return how many were recorded."""

    # -- searching --------------------------------------------------------------------
    async def search(self, query: SearchQuery) -> tuple[int, list[FileRecord]]:
        """(total_count, one page) for the filters, sort and position of *query*."""

    async def find_duplicates(self, limit: int, offset: int, files_per_group: int) -> list[DuplicateGroup]:
        """Groups of active or archived files with one content, the largest content first
        (then by checksum), each with its first *files_per_group* files by creation."""
        ...

    # -- collections ------------------------------------------------------------------
    async def upsert_collection(
        self,
        name: str,
        description: str | None,
        metadata: Mapping[str, Any] | None,
        file_ids: Sequence[str],
        at: datetime,
    ) -> Collection: ...
    async def list_collections(self, limit: int, offset: int) -> tuple[int, list[Collection]]: ...
    async def get_collection(
        self, name: str, limit: int, offset: int
    ) -> tuple[Collection, list[FileRecord]] | None: ...
    async def add_members(self, name: str, file_ids: Sequence[str], at: datetime) -> Collection | None: ...
    async def remove_members(self, name: str, file_ids: Sequence[str], at: datetime) -> Collection | None: ...
    async def delete_collection(self, name: str) -> bool: ...
    async def missing_file_ids(self, file_ids: Sequence[str]) -> list[str]:
        """Which of *file_ids* are not catalogued."""

    async def file_ids_from(self, lowest: str, limit: int) -> list[str]:
        """Up to *limit* catalogued ids from *lowest* (a canonical uuid) on, in id order."""

    # -- maintenance ------------------------------------------------------------------
    async def unreferenced(self, checksums: Sequence[str]) -> list[str]:
        """Which of *checksums* no version row refers to."""

    async def all_files(self) -> list[FileRecord]: ...
    async def working_index(self) -> list[IndexEntry]:
        """Every catalogued file, as a scan compares it with what is on disk."""

    async def index_entry(self, file_id: str) -> IndexEntry | None:
        """One file of :meth:`working_index` (its recorded stat identity, say)."""

    async def all_versions(self) -> list[VersionRecord]: ...
    async def repair_current(self, file_id: str) -> FileRecord | None:
        """Make current_version, checksum and size agree with the newest version row
        (clearing the stat identity, which described the old content)."""

    async def delete_version(self, file_id: str, version: int) -> None: ...
    async def purge_deleted(self, deleted_before: datetime) -> tuple[int, list[str]]:
        """Remove files deleted before the cutoff; (files purged, checksums left
        without any version row)."""

    async def check_integrity(self, *, repair: bool) -> tuple[list[str], bool]:
        """The damage the database finds in its own file (SQLite's integrity check), and
        whether a *repair* mended it all (indexes rebuilt from their tables). PostgreSQL
        keeps its own pages whole (and checks them with data checksums): nothing is found."""

    async def tidy(self) -> None:
        """The backend's own upkeep, run by each periodic purge, in steps short enough that
        writers barely wait (SQLite merges its word index; PostgreSQL folds its word
        counts)."""

    # -- conversations ----------------------------------------------------------------
    async def insert_turns(self, turns: Sequence[Turn]) -> list[Turn]:
        """Store conversation turns. A turn already stored with the same content (a
        retried delivery) is not stored twice; returns the turns whose
        (conversation_id, turn_number) is taken by a *different* row: a bug to report."""

    async def prune_turns(self, before: datetime, limit: int) -> int:
        """Delete at most *limit* conversation turns created before *before*, oldest
        first; how many went."""


class Backend(Units, Protocol):
    url: str
    refusals: LastRefusal

    async def identity(self) -> CatalogIdentity:
        """The store this catalog is bound to, read without migrating or writing."""

    async def bind(self, store_id: str, storage_path: str, at: datetime) -> str:
        """Record the store this catalog belongs to, unless one is recorded already;
        return the store id in force (the first binding wins)."""

    async def bound_to(self) -> str | None:
        """The store this catalog is bound to now, or None (no binding recorded, or no
        tables on SQLite): a running process's look, each second, that its catalog is still
        the one it opened, not an empty database made under the same name."""

    async def rebind(self, old_id: str, new_id: str, storage_path: str, at: datetime) -> bool:
        """Give the store this catalog is bound to (*old_id*) a new identity, *new_id*:
        an operator's choice of this catalog over another copy of it. False when the
        catalog is not bound to *old_id* (any more)."""

    async def migrate(self) -> int:
        """Apply pending schema steps; return the schema version now in force."""

    def replaced(self) -> str | None:
        """What became of the catalog's file since this process opened it, when it is gone
        or another file is in its place (a backup restored over it); None while it is the
        one opened (always, for a database on a server)."""

    def damaged(self) -> str | None:
        """What the database said of the damage it first met in this process's work (a
        backup copied into the open file, a failing disk), or None: a server stops on it,
        for what it would record there may be lost (always None for a database on a
        server, which guards its own files)."""

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` when the database does not answer, and
        :class:`CatalogUnwritable` when it refuses Horace's role its tables (it reads
        them: ``PING``)."""

    def exclusive(self, key: int) -> AbstractAsyncContextManager[Units]:
        """Hold the cross-host write lock *key* for a file; the units it yields run
        under that lock (on PostgreSQL, on the connection that holds it)."""

    def exclusive_free(
        self, keys: Sequence[int]
    ) -> AbstractAsyncContextManager[tuple[Units, frozenset[int]]]:
        """Hold those of the write locks *keys* that no other holder has, without waiting
        for the others (so it cannot deadlock); yields the units that run under them and
        the keys held."""

    async def aclose(self) -> None: ...
