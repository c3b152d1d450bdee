"""The catalog operations: the one place where disk and database meet.

Every write follows the same shape, inside the caller's cancel scope:

    lock (Trio lock -> fcntl -> backend advisory lock)
      -> stage: copy + hash into .horace/tmp        (cancellable, temp removed on the way out)
      -> shielded: rename into objects/ + commit     (all or nothing)

so a cancelled call leaves either the whole version or nothing. Objects are never
deleted inline with a commit; pruned content is marked released (:meth:`Catalog.let_go`)
and collected by the periodic purge, which looks for uncatalogued copies of it first and
re-checks references under the storage's grace-period protocol.

The server, the CLI and the watcher are thin edges over this class.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Container, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio
from attrs import frozen

from horace import mime, paths
from horace.backends import words
from horace.backends.protocol import (
    Backend,
    BackendUnavailable,
    CatalogDamaged,
    CatalogUnwritable,
    DatabaseFull,
    FileGone,
    Units,
)
from horace.backends.records import (
    MAX_SEARCH_LIMIT,
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
    VersionRecord,
    WorkingStat,
)
from horace.binding import StoreRefused
from horace.locks import FileLocks, lock_key
from horace.model import ErrorCode, HoraceError, NewFile, SearchPage
from horace.paths import quoted
from horace.redact import redact_url
from horace.storage import (
    COARSE_TICK_NS,
    FileIdentity,
    Hashed,
    Staged,
    Storage,
    StorageUnusable,
    StoreState,
    coarse_stamps,
    files_prefix_hint,
    not_catalogued,
    released_since,
    storage_full,
)
from horace.supervise import together

if TYPE_CHECKING:
    from horace.fsck import FsckReport

log = logging.getLogger("horace.catalog")
T = TypeVar("T")
# A batch's outcome of staging, path by path: staged with its MIME type, or why not.
StagedBatch = list[tuple[str, tuple[Staged, str] | HoraceError]]
Progress = Callable[[int, int], None]
SCAN_BATCH = 256
NAMED_MISSING = 20  # file ids an error names (of the ones not catalogued)
# A scan commits new and changed files in groups this large: one filesystem sync each.
SCAN_COMMIT_GROUP = 2048
# A batch of new files at least this long keeps its small ones as one pack, staged in
# memory (at most this many bytes of them per thread): see Storage.stage_many.
PACK_MIN_FILES = 64
PACK_BATCH_BYTES = 8 << 20
# An owner, a tag, a collection name: labels the catalog indexes, whose index entries a
# database bounds (PostgreSQL's B-tree holds at most 2,704 bytes an entry).
MAX_LABEL_CHARS = 200
MIN_PER_THREAD = 16  # a batch is split over the cores only in slices at least this long
# Changed files a scan commits together hold this many locks at once (PostgreSQL's lock
# table is sized for 64 a connection on average: max_locks_per_transaction).
LOCKS_AT_ONCE = 64


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


WORKER_THREADS = max(1, min(_cores(), 8))  # batches are staged and hashed on this many threads
BYTES_PER_THREAD = 64 << 20  # at least, in each thread's slice of a batch of known size


def unchanged_since(recorded: WorkingStat | None, now: os.stat_result, margin_ns: int) -> bool:
    """Whether the working file whose ``lstat`` is *now* is, for certain, the file whose
    content was read when *recorded* was taken (git's index rule): same size, mtime,
    ctime, inode and device, and *recorded* taken well after the file's last change.

    A write changes ctime (which, unlike mtime, nobody can set back), but only to the
    filesystem clock's tick: a write in the tick of the recording could leave every field
    as it was (the racy-git problem). So a recording whose file had changed within
    *margin_ns* of the moment it was taken (on the filesystem's own clock, read before
    the content was), or within its times' tick when that is longer (FAT's two seconds:
    see :func:`stamp_tick_ns`), proves nothing: the file is read again.
    """
    if recorded is None or not stat.S_ISREG(now.st_mode) or now.st_nlink != 1:
        return False
    same = (now.st_size, now.st_mtime_ns, now.st_ctime_ns, now.st_ino, now.st_dev) == (
        recorded.size,
        recorded.mtime_ns,
        recorded.ctime_ns,
        recorded.inode,
        recorded.device,
    )
    if coarse_stamps(now):
        margin_ns = max(margin_ns, COARSE_TICK_NS)
    return same and max(recorded.mtime_ns, recorded.ctime_ns) < recorded.recorded_ns - margin_ns


def _check_kept(file: FileRecord, found: VersionRecord, held: tuple[str, int] | None) -> None:
    """``CHECKSUM_MISMATCH`` unless *held*, the (sha256, size) the stored content of
    version *found* of *file* reads as (None: missing), is what the version recorded."""
    where = f"version {found.version} of {quoted(file.file_path)}"
    if held is None:
        missing = f"the content of {where} is missing from the object store"
        raise HoraceError(ErrorCode.CHECKSUM_MISMATCH, missing)
    if held != (found.checksum, found.size):
        raise HoraceError(ErrorCode.CHECKSUM_MISMATCH, f"the stored content of {where} is corrupt")


# Inserts of a new file tried, each time the file holding its content changed in between.
REGISTER_ATTEMPTS = 3


def rename_identity(working: WorkingStat) -> tuple[int, int, int]:
    """(inode, device, mtime_ns): what a rename keeps of a file (its ctime moves). A file
    made anew in the inode of one removed (``rm a; touch b``: filesystems reuse a number
    at once) has an mtime of its own, so it is not taken for that one, renamed."""
    return (working.inode, working.device, working.mtime_ns)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking disk work in a worker thread.

    The thread is never abandoned: a cancelled call waits for it, and long copies
    notice the cancellation themselves through ``trio.from_thread.check_cancelled``.
    """
    return await trio.to_thread.run_sync(fn, *args)


def check_cancelled() -> None:
    """In a worker thread of a copy: raise Cancelled when the call's scope was cancelled
    (checked between chunks, so a cancelled copy stops within a chunk)."""
    trio.from_thread.check_cancelled()


@frozen
class Registered:
    file: FileRecord
    duplicate: bool
    version_created: bool


@frozen
class Updated:
    file: FileRecord
    changed_fields: tuple[str, ...]
    version_created: bool


@frozen
class Restored:
    file: FileRecord
    version: VersionRecord
    preserved_version: int | None  # the working file's unsaved content, kept first


@frozen
class Content:
    """The bytes of one version of a file, read back from the object store and checked."""

    file: FileRecord
    version: VersionRecord
    data: bytes


@frozen
class FileInfo:
    file: FileRecord
    versions: tuple[VersionRecord, ...] | None


@frozen
class ScanReport:
    scanned: int
    registered: int
    versioned: int
    unchanged: int
    # New files left out for their content, an active file's that is not at its own path
    # (renamed there perhaps, not followed): taken once that file is deleted. A copy of a
    # file still at its path is registered, a file of its own.
    duplicates: int
    errors: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # names that can never be catalogued, each with why
    # Active catalogued files the scan looked for and did not find: deleted, moved or
    # renamed outside Horace. A scan records nothing of them (each stays restorable, and
    # fsck --repair would put it back); the watcher's reconcile soft-deletes them.
    missing: tuple[str, ...] = ()
    # "old -> new" of each catalogued file found renamed (at a new path under its inode, its
    # content as recorded, its old path gone): it keeps its id and history there.
    moved: tuple[str, ...] = ()


@frozen
class FolderUndeleted:
    undeleted: tuple[FileRecord, ...]
    errors: tuple[str, ...]  # "path: CODE why" of each file that could not come back


@frozen
class Followed:
    """Renames followed: (new path, the file's record from before) of each moved; (new
    path, why) of each whose move failed (it waits for what comes next)."""

    moved: tuple[tuple[str, FileRecord], ...]
    failed: tuple[tuple[str, HoraceError], ...]


@frozen
class NewFiles:
    registered: tuple[FileRecord, ...]
    # (path, checksum) of those not inserted: content catalogued already (or earlier in the
    # batch), or the path taken meanwhile by another writer
    skipped: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, HoraceError], ...]


@frozen
class ReconcileReport:
    scan: ScanReport
    moved: int
    deleted: int


@frozen
class PurgeReport:
    files_purged: int
    objects_deleted: int


@frozen
class CatalogPolicy:
    retention: Retention = Retention()
    gc_grace_seconds: float = 600.0  # an object younger than this is never collected
    # Also how long an object no version row refers to is kept, unless the catalog itself
    # let it go (a purged or pruned version): such a stray may be the only copy of a
    # version, when the catalog was restored from a backup older than the store.
    deleted_retention: timedelta = timedelta(days=30)
    # A stat identity taken within this long after the file's last change is not trusted
    # (see unchanged_since): beyond the clock's tick, it covers a clock set back a little.
    racy_margin_seconds: float = 1.0

    # What a caller says of a file (owner, purpose, tags, custom fields) or a collection
    # (description, metadata), as JSON. Written once, it is read back a thousand times a
    # page: unbounded, one search could build gigabytes.
    max_metadata_bytes: int = 16 * 1024

    @property
    def racy_margin_ns(self) -> int:
        return int(self.racy_margin_seconds * 1e9)


class Vanished:
    """Catalogued files gone from their paths, each waiting for its content to turn up
    at another path (a rename, which keeps the file's id and history): the one rename
    matcher, of the reconcile and of the watcher. Matched by content; of several files
    with that content, the one whose path ends as the new one does, then first come."""

    def __init__(self, files: Sequence[FileRecord] = (), since: float = 0.0) -> None:
        self._files: dict[str, tuple[FileRecord, float]] = {}
        # By content too: each file of a folder of thousands moved is matched in one look.
        self._by_checksum: dict[str, dict[str, FileRecord]] = {}
        for file in files:
            self.add(file, since)

    def __len__(self) -> int:
        return len(self._files)

    def add(self, file: FileRecord, since: float) -> None:
        known = self._files.get(file.id)
        if known is not None and known[0].checksum != file.checksum:
            self.discard(file.id)
        self._files[file.id] = (file, since)
        self._by_checksum.setdefault(file.checksum, {})[file.id] = file

    def discard(self, file_id: str) -> None:
        found = self._files.pop(file_id, None)
        if found is not None:
            same = self._by_checksum[found[0].checksum]
            del same[file_id]
            if not same:
                del self._by_checksum[found[0].checksum]

    def since(self, file_id: str) -> float:
        """When the vanished file *file_id* was seen gone."""
        return self._files[file_id][1]

    def holding(self, checksum: str) -> list[FileRecord]:
        """The vanished files whose content is *checksum*, first vanished first."""
        return list(self._by_checksum.get(checksum, {}).values())

    def claim(self, checksum: str, rel: str, among: Container[str] | None = None) -> FileRecord | None:
        """The vanished file whose content the file now at *rel* has (of the ids *among*,
        when given), taken off the list; or None. Of several, the one with the most path
        parts in common with *rel* at its end, then at its start: a folder renamed keeps
        its files' names and what lies below it, and what lies above, so that `p/A/a.txt`
        -> `p/B/a.txt` is not taken for `other/a.txt` -> `p/B/a.txt` when both held the
        same bytes (on ties, the first to vanish)."""
        same = [f for f in self.holding(checksum) if among is None or f.id in among]
        if not same:
            return None
        parts = rel.split("/")

        def kinship(file: FileRecord) -> tuple[int, int]:
            theirs = file.file_path.split("/")
            return _parts_in_common(theirs[::-1], parts[::-1]), _parts_in_common(theirs, parts)

        chosen = max(same, key=kinship)
        self.discard(chosen.id)
        return chosen

    def sizes(self) -> set[int]:
        return {file.size for file, _ in self._files.values()}

    def times(self) -> list[float]:
        return [since for _, since in self._files.values()]

    def expired(self, before: float) -> list[FileRecord]:
        """The files vanished before *before*, taken off the list: no rename came."""
        gone = [file for file, since in self._files.values() if since <= before]
        for file in gone:
            self.discard(file.id)
        return gone


class Catalog:
    def __init__(
        self,
        storage: Storage,
        backend: Backend,
        locks: FileLocks,
        policy: CatalogPolicy = CatalogPolicy(),
        clock: Callable[[], datetime] = utcnow,
        store_id: str | None = None,
        bound_at: datetime | None = None,
    ) -> None:
        self.storage = storage
        self.backend = backend
        self.locks = locks
        self.policy = policy
        self.clock = clock
        self.store_id = store_id  # the identity the pair was bound under (None: unbound)
        # When the pair was bound (the catalog made, or adopted): see predates_binding.
        self.bound_at = None if bound_at is None else bound_at.timestamp()
        # One walk of many files at a time in this process (a scan, a verify): each holds
        # what it found, a few KiB a file, and several side by side (clients of a server
        # each asking for a scan of a large store) would add that up.
        self.walking = trio.Lock()
        # What the fsck at start (horace.assemble.open_catalog) found: /health's fsck part
        # says so until the periodic one runs.
        self.checked_at_start: FsckReport | None = None

    # -- shared steps -------------------------------------------------------------------

    async def ensure_bound(self) -> None:
        """Refuse (:class:`StoreRefused`) when the store is no longer bound to this catalog:
        an operator may have bound it to another since this process opened it (`horace init
        --adopt`, of a copy of this catalog or of a new one). From then on this catalog no
        longer opens the store, and nothing it does may delete what only the other refers
        to: checked before the collector, the purge and a repair delete anything, and
        before a vanished file is recorded deleted. So is a store no longer in place
        (:meth:`Storage.in_place`): what the catalog would record of it is not so."""

        def look() -> tuple[StoreState | None, bool, str | None]:
            # The record first, then the place: a store moved while its record was read
            # is said to be moved, not bound elsewhere. The catalog's file in the same hop.
            replaced = self.backend.replaced()
            try:
                state = None if self.store_id is None else self.storage.state()
            except StorageUnusable:  # (the root a file now, say)
                if self.storage.in_place():
                    raise
                return None, False, replaced
            return state, self.storage.in_place(), replaced

        state, in_place, replaced = await in_thread(look)
        if not in_place:  # (first: a SQLite catalog inside the store moved with it)
            raise StoreRefused(
                f"the store at {self.storage.root} is not the one this process opened any more: "
                "it was moved, removed or replaced (a copy put in its place, a volume unmounted "
                "or mounted over it) while Horace ran; nothing more is written to it: start "
                "again once the store is back in place"
            )
        if replaced is not None:
            raise StoreRefused(
                f"{replaced} while Horace ran: this process holds the file it opened, and what it "
                "would record there is lost to the store; nothing more is written: start again, "
                "and the catalog in place is used (`horace fsck` then lists the objects it lacks "
                "rows for)"
            )
        if state is not None and state.store_id != self.store_id:
            now = f"bound to catalog {state.store_id}" if state.store_id else "without its store.json"
            raise StoreRefused(
                f"the store at {self.storage.root} is {now} now, no longer to this one ({self.store_id}), "
                "which opened it: another catalog was made the store's own meanwhile (`horace init "
                "--adopt`), and this one no longer opens it; nothing was deleted"
            )
        if self.store_id is not None:
            # The other side: a database renamed or dropped under the process and another
            # made under its name would otherwise be served as this store's catalog (every
            # file not catalogued, new versions recorded there, and the collector's
            # references looked up in it).
            bound = await self.backend.bound_to()
            if bound != self.store_id:
                now = f"bound to another store ({bound})" if bound else "bound to no store"
                raise StoreRefused(
                    f"the catalog {redact_url(self.backend.url)} is {now} now, not to the store at "
                    f"{self.storage.root} ({self.store_id}) that this process opened it with: another "
                    "database was put in its place (dropped or renamed, and one made under its name) or "
                    "its binding removed while Horace ran; nothing more is written and nothing was "
                    "deleted: start again once the store's own catalog is back in place"
                )

    def relative(self, client_path: str, *, folder: bool = False, on_disk: bool = True) -> str:
        """*client_path* relative to files/: a file's path, or with *folder* a folder's
        (which may end in "/"; a file's may not: ``a.txt/`` names no file; files/ itself
        is ``""``). Not *on_disk*:
        a catalogued file's name only, whatever is at that path now (a symlink, a file
        where a folder was): its record is found, and what acts on disk refuses such a
        path there (each component opened with O_NOFOLLOW)."""
        if not folder and isinstance(client_path, str) and client_path.endswith("/"):
            raise HoraceError(
                ErrorCode.INVALID_PATH, f"invalid path {quoted(client_path)}: ends in / (a folder)"
            )
        return paths.to_relative(self.storage.files, client_path, on_disk=on_disk, folder=folder)

    def _check_described(self, what: str, description: dict[str, Any]) -> None:
        # In UTF-8, as the wire carries it (not as \uXXXX escapes, 2-6 times as long)
        size = len(json.dumps(description, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        limit = self.policy.max_metadata_bytes
        if size > limit:
            raise HoraceError(
                ErrorCode.INVALID_ARGUMENT,
                f"{what} would be {size} bytes as JSON, over the limit of {limit} "
                "(HORACE_MAX_METADATA_BYTES)",
            )

    @asynccontextmanager
    async def writing(self, rel: str) -> AsyncIterator[Units]:
        """Hold the write lock of *rel* (in this process, on this host, across hosts);
        the units it yields run under that lock."""
        async with self.locks.hold(rel), self.backend.exclusive(lock_key(rel)) as db:
            yield db

    @asynccontextmanager
    async def writing_file(self, file_id: str) -> AsyncIterator[tuple[Units, FileRecord]]:
        """Hold the write lock of the path of the file *file_id*, and yield the file as
        read under it. A file moved while this waited for its old path's lock (a rename
        followed by a watcher) is locked again at its new path: the lock held is always
        that of the path worked on, which another writer (a register of that path) may
        hold otherwise."""
        while True:
            before = await self.file(file_id)
            async with self.writing(before.file_path) as db:
                current = await self.file(file_id, db)
                if current.file_path == before.file_path:
                    yield db, current
                    return

    async def _stage(self, rel: str, *, as_it_is: bool = False) -> Staged:
        """The working file *rel*, staged; ``FILE_LOCKED`` while another process has it open
        for writing, unless *as_it_is* (see :meth:`Storage.stage`)."""
        return await in_thread(partial(self.storage.stage, rel, check_cancelled, as_it_is=as_it_is))

    async def discard(self, *staged: Staged) -> None:
        """Remove staged copies (on the way out, cancelled or not)."""
        with trio.CancelScope(shield=True):
            await in_thread(lambda: [self.storage.discard(s) for s in staged])

    async def file(self, file_id: str, db: Units | None = None) -> FileRecord:
        """The file with this id; ``NOT_CATALOGED`` when there is none."""
        if not isinstance(file_id, str) or not file_id:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "file_id must be a non-empty string")
        found = await (db or self.backend).file_by_id(file_id)
        if found is None:
            raise HoraceError(ErrorCode.NOT_CATALOGED, f"no catalogued file with id {file_id!r}")
        return found

    async def _commit_version(
        self,
        db: Units,
        file: FileRecord,
        new: NewVersion,
        correlation_id: str | None,
        staged: Staged | None = None,
        status: Status | None = None,
        spare: int | None = None,
    ) -> tuple[FileRecord, VersionRecord]:
        """Shielded: make *staged* an object (when given) and record the version. Retention
        prunes no version from *spare* on: a restore keeps the one it is about to put back
        (and its object) until the restored version refers to its content, and what it kept
        of the working file past the restored version's own commit."""
        retention = self.policy.retention
        if spare is not None:
            retention = attrs.evolve(retention, keep=max(retention.keep, file.current_version + 2 - spare))
        with trio.CancelScope(shield=True):
            if staged is not None:
                await in_thread(self.storage.keep, staged)
            record, version, orphans = await db.add_version(
                file.id,
                new,
                self.clock(),
                correlation_id,
                retention,
                status.value if status else None,
            )
            self.backend.refusals.clear()
            if staged is not None:
                await in_thread(self.storage.release, staged)
        if orphans:
            await self.let_go(orphans, correlation_id)
        _say_if_pruned_at_once(record.file_path, len(orphans), retention, correlation_id)
        return record, version

    async def _version_working_copy(
        self,
        db: Units,
        file: FileRecord,
        correlation_id: str | None,
        status: Status | None = None,
        spare: int | None = None,
        leaving: bool = False,
        as_it_is: bool = False,
    ) -> tuple[FileRecord, VersionRecord | None, FileIdentity | None]:
        """Keep the working file as a new version when it differs from the current one;
        also say which file that was (for a later replace to check against). *leaving*:
        the working file is about to be overwritten (see :meth:`_version_staged`);
        *as_it_is*: see :meth:`_stage`."""
        staged = await self._stage(file.file_path, as_it_is=as_it_is)
        try:
            record, version = await self._version_staged(
                db, file, staged, correlation_id, status, spare, leaving
            )
            return record, version, staged.source
        finally:
            await self.discard(staged)

    async def _version_staged(
        self,
        db: Units,
        file: FileRecord,
        staged: Staged,
        correlation_id: str | None,
        status: Status | None = None,
        spare: int | None = None,
        leaving: bool = False,
    ) -> tuple[FileRecord, VersionRecord | None]:
        """*leaving*: the working copy *staged* was read from is about to leave files/ or
        be overwritten, so the current version's object is read whole to be sure it holds
        that content (else the copy takes its place); otherwise its size is looked at."""
        if staged.checksum == file.checksum:
            intact = await in_thread(
                self.storage.object_holds, staged.checksum, staged.size, leaving, check_cancelled
            )
            if not intact:
                await self._object_from_copy(file.file_path, file.id, staged)
            if staged.working is not None:
                # Read again and unchanged: its stat identity now is the one to trust.
                await db.refresh_working([_entry(file, staged.working)])
            return file, None
        mime_type = mime.detect(file.file_path, staged.head)
        new = NewVersion(staged.checksum, staged.size, mime_type, working=staged.working)
        return await self._commit_version(db, file, new, correlation_id, staged, status, spare)

    async def _object_from_copy(self, rel: str, file_id: str, staged: Staged) -> None:
        """The object of the current version of *rel* is lost or damaged, and *staged*
        holds its content: it takes the object's place, before the working copy it was
        read from may leave files/ or be overwritten (a delete, a restore), which would
        lose the last copy of that content."""
        with trio.CancelScope(shield=True):
            await in_thread(self.storage.keep, staged)
            await in_thread(self.storage.release, staged)
        log.warning(
            "%r: the object of its current version was missing or damaged; put back from its working copy",
            rel,
            extra={"file_id": file_id},
        )

    async def _version_held(
        self,
        db: Units,
        file: FileRecord,
        held: Path,
        correlation_id: str | None,
        spare: int | None = None,
        *,
        release: bool = True,
    ) -> tuple[FileRecord, VersionRecord | None]:
        """Version a working file moved out of files/, then let it go (unless not to
        *release* it: the caller does, once what moved it out is committed). Shielded: the
        file has left files/ already, and its content must not be dropped half-way. Should
        versioning fail, the held file goes back, or stays for fsck to put back."""
        with trio.CancelScope(shield=True):
            try:
                staged = await in_thread(self.storage.stage_held, held)
                try:
                    done = await self._version_staged(
                        db, file, staged, correlation_id, spare=spare, leaving=True
                    )
                finally:
                    await self.discard(staged)
            except BaseException as exc:
                # Not versioned (a full disk, say): the file goes back where it was, or
                # beside it when its name is taken meanwhile.
                placed = await in_thread(self.storage.put_back, held, file.file_path)
                if placed != file.file_path:
                    log.warning(
                        "%r could not be versioned (%s: %s); its content %s",
                        file.file_path,
                        type(exc).__name__,
                        exc,
                        f"was put back beside it as {quoted(placed)}, a file having been made at its "
                        "path meanwhile"
                        if placed
                        else f"stays in {held} for fsck: its folder can no longer be reached",
                        extra={"file_id": file.id, "correlation_id": correlation_id},
                    )
                raise
            if release:
                await in_thread(self.storage.release_held, held)
        return done

    # -- register -----------------------------------------------------------------------

    async def register(
        self,
        client_path: str,
        new: NewFile = NewFile(),
        correlation_id: str | None = None,
        *,
        as_it_is: bool = False,
    ) -> Registered:
        """Catalog the working file at *client_path*, or version it if it is catalogued
        and changed. ``FILE_LOCKED`` while another process has it open for writing, unless
        *as_it_is* (the watcher's, which waits for writers itself)."""
        rel = self.relative(client_path)
        _check_labels(new.owner, new.tags, new.collection)
        self._check_described(
            "the file's metadata",
            {"owner": new.owner, "purpose": new.purpose, "tags": new.tags, "custom": dict(new.custom)},
        )
        async with self.writing(rel) as db:
            existing = await db.file_by_path(rel)
            if existing is not None:
                try:
                    return await self._reregister(db, existing, correlation_id, as_it_is=as_it_is)
                except FileGone:  # a deleted file purged meanwhile (purge takes no file lock)
                    log.info("register: %s was purged meanwhile: catalogued anew", rel)
            for _ in range(REGISTER_ATTEMPTS):
                staged = await self._stage(rel, as_it_is=as_it_is)
                try:
                    duplicate = await db.file_by_checksum(staged.checksum)
                    if duplicate is not None:
                        return Registered(duplicate, duplicate=True, version_created=False)
                    now = self.clock()
                    record = _new_record(rel, staged, mime.detect(rel, staged.head), now, correlation_id, new)
                    working = {record.id: staged.working} if staged.working else None
                    with trio.CancelScope(shield=True):
                        await in_thread(self.storage.keep, staged)
                        inserted = await db.insert_files([record], new.collection, working)
                        self.backend.refusals.clear()
                        await in_thread(self.storage.release, staged)
                finally:
                    await self.discard(staged)
                if inserted:
                    return Registered(inserted[0], duplicate=False, version_created=True)
                # Another writer registered this path or content between our look-up and
                # insert: its record is the answer. None left (the file that held the
                # content deleted or changed meanwhile): the insert is tried again.
                raced = await db.file_by_path(rel) or await db.file_by_checksum(record.checksum)
                if raced is not None:
                    return Registered(raced, duplicate=raced.file_path != rel, version_created=False)
            raise HoraceError(
                ErrorCode.FILE_LOCKED,
                f"{quoted(rel)} could not be registered: the file that held its content changed "
                f"{REGISTER_ATTEMPTS} times as it was; try again",
            )

    async def _reregister(
        self, db: Units, existing: FileRecord, correlation_id: str | None, *, as_it_is: bool = False
    ) -> Registered:
        # A catalogued path: version its content if it changed; a deleted or archived
        # file whose working copy is back becomes active again.
        revive = Status.ACTIVE if existing.status is not Status.ACTIVE else None
        record, version, _ = await self._version_working_copy(
            db, existing, correlation_id, revive, as_it_is=as_it_is
        )
        if version is None and revive is not None:
            revived = await db.update_file(existing.id, FileChanges(status=revive), self.clock())
            if revived is None:
                raise FileGone(f"{quoted(existing.file_path)} was purged meanwhile")
            record = revived
        return Registered(record, duplicate=False, version_created=version is not None)

    # -- reading ------------------------------------------------------------------------

    async def resolve(self, ref: str) -> FileRecord:
        """A file by id, or by path when *ref* is not a catalogued id."""
        found = await self.backend.file_by_id(ref) if ref.isascii() else None  # (an id is ASCII)
        if found is None:
            found = await self.backend.file_by_path(self.relative(ref, on_disk=False))
        if found is None:
            raise not_catalogued(ref)
        return found

    async def locate(self, file_id: str | None = None, file_path: str | None = None) -> FileRecord:
        """A file by its id, else by its path; ``NOT_CATALOGED`` when there is none. Given
        both, they must name the same file: a call about one file must not act on another."""
        if file_id:
            by_id = await self.file(file_id)
            if file_path is not None and self.relative(file_path, on_disk=False) != by_id.file_path:
                said = f"{quoted(by_id.file_path)}, not {quoted(file_path)}"
                raise HoraceError(
                    ErrorCode.INVALID_ARGUMENT, f"file_id {file_id!r} is {said}: give one of them"
                )
            return by_id
        if file_path is not None:  # an empty path is an invalid path, not a missing one
            rel = self.relative(file_path, on_disk=False)
            found = await self.backend.file_by_path(rel)
            if found is None:
                raise not_catalogued(rel)
            return found
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "give file_id or file_path")

    async def get_info(
        self, *, file_id: str | None = None, file_path: str | None = None, include_versions: bool = False
    ) -> FileInfo:
        record = await self.locate(file_id, file_path)
        versions = tuple(await self.backend.versions(record.id)) if include_versions else None
        return FileInfo(record, versions)

    async def search(self, query: SearchQuery, cursor: str | None = None) -> SearchPage:
        asked = len(words.query_words(query.purpose or ""))
        if asked > words.QUERY_WORDS:
            said = f"purpose: at most {words.QUERY_WORDS} words to search for, not {asked}"
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, said)
        # Tags are looked for as they are stored: " x " was stored as "x".
        query = attrs.evolve(query, tags=_clean_tags(query.tags), any_tags=_clean_tags(query.any_tags))
        if cursor:
            if query.offset:
                raise HoraceError(
                    ErrorCode.INVALID_ARGUMENT,
                    "give a cursor or an offset, not both: a cursor's page starts where it says",
                )
            query = attrs.evolve(query, after=_decode_cursor(cursor, query, self.store_id), offset=0)
        # One row past the page says whether there is a next one (a cursor is only given
        # when there is: a full last page used to get one that led to an empty page).
        total, rows = await self.backend.search(attrs.evolve(query, limit=query.limit + 1))
        more, rows = len(rows) > query.limit, rows[: query.limit]
        next_cursor = _encode_cursor(query, rows[-1], self.store_id) if more else None
        return SearchPage(total, tuple(rows), query.limit, query.offset, next_cursor)

    async def find_duplicates(
        self, limit: int = 100, offset: int = 0, files_per_group: int = 1000
    ) -> list[DuplicateGroup]:
        return await self.backend.find_duplicates(
            _bounded(limit, "limit"), _offset(offset), _bounded(files_per_group, "files_per_group")
        )

    async def kept_version(self, file: FileRecord, version: int | None) -> VersionRecord:
        """Version *version* of *file* (None: the current one); ``VERSION_NOT_FOUND``."""
        number = file.current_version if version is None else version
        found = await self.backend.version(file.id, number)
        if found is None:
            raise HoraceError(
                ErrorCode.VERSION_NOT_FOUND, f"{quoted(file.file_path)} has no version {number}"
            )
        return found

    async def content(self, file: FileRecord, version: int | None, max_bytes: int) -> Content:
        """A version's content (None: the current one), from the object store: the bytes
        Horace keeps, hashed as they are read. ``INVALID_ARGUMENT`` past *max_bytes*."""
        return await self.content_of(file, await self.kept_version(file, version), max_bytes)

    async def content_of(self, file: FileRecord, found: VersionRecord, max_bytes: int) -> Content:
        """:meth:`content` of the version *found* (of *file*), looked up already."""
        number = found.version
        if found.size > max_bytes:
            raise HoraceError(
                ErrorCode.INVALID_ARGUMENT,
                f"version {number} of {quoted(file.file_path)} is {found.size} bytes, over the limit of "
                f"{max_bytes} for reading it whole (HORACE_MAX_READ_BYTES)",
            )
        data = await in_thread(self.storage.read_object, found.checksum, check_cancelled)
        _check_kept(file, found, None if data is None else (hashlib.sha256(data).hexdigest(), len(data)))
        assert data is not None  # (a missing one was refused)
        return Content(file, found, data)

    async def copy_out(
        self, file: FileRecord, version: int | None, write: Callable[[bytes], None]
    ) -> VersionRecord:
        """A version's content (None: the current one) handed to *write* (in a worker
        thread), of any size: checked against its checksum first, so nothing but the
        version's bytes is ever written (``CHECKSUM_MISMATCH`` else, and nothing written)."""
        found = await self.kept_version(file, version)
        _check_kept(file, found, await in_thread(self.storage.hash_object, found.checksum, check_cancelled))
        # Objects are written once and never changed in place: what was checked is what is copied
        # (should a failing disk read otherwise the second time, it is said, after the fact).
        copied = await in_thread(self.storage.copy_object_out, found.checksum, write, check_cancelled)
        if copied != (found.checksum, found.size):
            raise HoraceError(
                ErrorCode.CHECKSUM_MISMATCH,
                f"the stored content of version {found.version} of {quoted(file.file_path)} read otherwise "
                "as it was copied",
            )
        return found

    async def copy_object_out(self, checksum: str, write: Callable[[bytes], None]) -> int:
        """The content of the object *checksum* (of its own or in a pack), whichever
        version refers to it or none (one fsck lists as kept: a version newer than a
        catalog restored from a backup, say), handed to *write*: checked first, as a
        version's is. Its size."""
        if not re.fullmatch(r"[0-9a-f]{64}", checksum):
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"{checksum!r} is no SHA-256 (64 hex digits)")
        held = await in_thread(self.storage.hash_object, checksum, check_cancelled)
        if held is None:
            raise HoraceError(ErrorCode.FILE_NOT_FOUND, f"no object {checksum} in this store")
        if held[0] != checksum:
            raise HoraceError(ErrorCode.CHECKSUM_MISMATCH, f"the object {checksum} holds other bytes")
        copied = await in_thread(self.storage.copy_object_out, checksum, write, check_cancelled)
        if copied != held:
            raise HoraceError(
                ErrorCode.CHECKSUM_MISMATCH, f"the object {checksum} read otherwise as it was copied"
            )
        return held[1]

    # -- update, restore, lifecycle -----------------------------------------------------

    async def update(
        self,
        file_id: str,
        changes: FileChanges,
        *,
        check_for_changes: bool = True,
        correlation_id: str | None = None,
        vanished: bool = False,
    ) -> Updated:
        """Change a file's record (metadata, status), versioning its working copy first
        when it changed. *vanished*: the caller found the working copy gone (the watcher,
        the reconcile) and is taking the file out of files/ for that: should a file be back
        at its path by the time the lock is held, nothing is done (it is a writer's,
        re-created meanwhile, and the caller's next look takes it in)."""
        _check_labels(changes.owner, changes.tags, changes.collection)
        async with self.writing_file(file_id) as (db, current):  # (an unknown id is told first)
            if changes.tags is not None:
                changes = attrs.evolve(changes, tags=_clean_tags(changes.tags))
            # What this update changes is told against the file as it found it under the
            # lock: another writer's change made while it waited is not this one's.
            locked = current
            if any(v is not None for v in (changes.owner, changes.purpose, changes.tags, changes.custom)):
                self._check_described(  # as it will be stored: custom fields are merged
                    "the file's metadata",
                    {
                        "owner": current.owner if changes.owner is None else changes.owner,
                        "purpose": current.purpose if changes.purpose is None else changes.purpose,
                        "tags": current.tags if changes.tags is None else changes.tags,
                        "custom": {**current.metadata, **(changes.custom or {})},
                    },
                )
            target = changes.status if changes.status is not current.status else None
            version_created = False
            written: FileIdentity | None = None  # the working copy an undelete wrote
            taken: Path | None = None  # the working copy moved out, held until the change commits
            if (
                vanished
                and current.status is Status.ACTIVE
                and not await in_thread(self.storage.surely_gone, current.file_path)
            ):
                return Updated(current, (), False)  # back meanwhile: not gone after all
            if current.status is Status.ACTIVE and target is not None:
                # The working copy leaves files/: moved out first, then versioned, so the
                # version kept is exactly the content removed (whatever the flag says).
                await self._not_being_written(current.file_path)
                current, version_created, taken = await self._take_working_copy(db, current, correlation_id)
            elif current.status is Status.ACTIVE and check_for_changes:
                if await in_thread(self.storage.working_exists, current.file_path):
                    # A copy made while a writer is at it may be half its work: the watcher
                    # waits for the writer to close, and so does this.
                    await self._not_being_written(
                        current.file_path, " (or with check_for_changes false, which versions nothing)"
                    )
                    current, version, _ = await self._version_working_copy(db, current, correlation_id)
                    version_created = version is not None
            elif target is Status.ACTIVE:
                version_created, written = await self._bring_back(db, current, correlation_id)
            elif (
                current.status is not Status.ACTIVE
                and changes.status is not None
                and await in_thread(self.storage.working_exists, current.file_path)
            ):
                # Deleted or archived, its working copy back (a writer made it again), and
                # told to be deleted or archived: that copy leaves files/ as a delete takes
                # one, kept as a version, rather than stay there uncatalogued.
                await self._not_being_written(current.file_path)
                current, version_created, taken = await self._take_working_copy(db, current, correlation_id)
            elif (
                check_for_changes
                and changes.status is None
                and await in_thread(self.storage.working_exists, current.file_path)
            ):
                # A deleted or archived file whose working copy is back: taken in as
                # registering takes it (active again, versioned if it changed), then changed.
                taken_in = await self._reregister(db, current, correlation_id)
                current, version_created = taken_in.file, taken_in.version_created
            try:
                # Shielded from the copy's move out on (a cancellation that came meanwhile
                # is met at the first checkpoint after the shield: here, with the copy out).
                with trio.CancelScope(shield=True):
                    if taken is not None:  # written back with its mode, should it come back
                        mode = await in_thread(self.storage.held_mode, taken)
                        changes = attrs.evolve(changes, working_mode=mode)
                    updated = await db.update_file(file_id, changes, self.clock())
            except BaseException as exc:
                if taken is not None:  # still active, as the catalog says: its working copy comes back
                    await self._put_held_back(current, taken)
                elif written is not None:  # still deleted or archived: the copy written for it goes
                    await self._withdraw_working(current)
                if version_created and isinstance(exc, Exception):
                    kept = _kept_first(exc, current)
                    if kept is not None:
                        raise kept from exc
                raise
            if taken is not None:  # its content is the current version, and the file is out of files/
                with trio.CancelScope(shield=True):
                    await in_thread(self.storage.release_held, taken)
            if updated is None:
                raise HoraceError(ErrorCode.NOT_CATALOGED, f"{file_id!r} vanished")
            if written is not None:
                await self._record_written(updated, written, correlation_id)
        changed = tuple(
            name
            for name in ("owner", "purpose", "tags", "status", "metadata", "checksum", "current_version")
            if getattr(locked, name) != getattr(updated, name)
        ) + (("collection",) if changes.collection else ())
        return Updated(updated, changed, version_created)

    async def _not_being_written(self, rel: str, otherwise: str = "") -> None:
        """Refuse to move a working copy out from under a process that has it open for
        writing (a log being appended to, say): what it wrote after the move would go to
        a file no longer in files/, and be lost. (Local filesystems: see
        :meth:`Storage.is_being_written`.) A quick refusal before any copy is made; what
        guarantees it to the instant of the move is the lease the move holds."""
        if await in_thread(self.storage.is_being_written, rel):
            raise HoraceError(
                ErrorCode.FILE_LOCKED,
                f"{quoted(rel)} is open for writing by another process: try again once it is "
                f"closed{otherwise}",
            )

    async def _take_working_copy(
        self, db: Units, file: FileRecord, correlation_id: str | None
    ) -> tuple[FileRecord, bool, Path | None]:
        """Move the working copy out and version it: the file's record then, whether a
        version was made, and the copy held in .horace/tmp (None when there was none). The
        caller lets it go once the status change is committed: a crash before that finds
        the file active and its copy held, which fsck puts back."""
        held = await in_thread(self.storage.take_working, file.file_path, file.id)
        if held is None:
            return file, False, None  # already gone: its last content is the current version
        record, version = await self._version_held(db, file, held, correlation_id, release=False)
        return record, version is not None, held

    async def _put_held_back(self, file: FileRecord, held: Path) -> None:
        """A status change failed after *file*'s working copy left files/ (held, its
        content the current version): an active file must not be left without it. It
        goes back by a rename, which a full disk allows; where a writer has made the file
        again meanwhile, that one stays and the held copy goes. What cannot be put back
        now is logged and stays held: ``horace fsck --repair`` puts it back."""
        with trio.CancelScope(shield=True):
            try:
                placed = await in_thread(partial(self.storage.put_back, beside=False), held, file.file_path)
                if placed is None and await in_thread(self.storage.working_exists, file.file_path):
                    await in_thread(self.storage.release_held, held)
                elif placed is None:
                    log.error(
                        "%s: its working copy could not be put back (its folder cannot be reached); "
                        "it stays in %s, and `horace fsck --repair` puts it back",
                        quoted(file.file_path),
                        held,
                        extra={"file_id": file.id},
                    )
            except Exception as exc:
                log.error(
                    "%s: its working copy could not be put back (%s); it stays in %s, and "
                    "`horace fsck --repair` puts it back",
                    quoted(file.file_path),
                    exc,
                    held,
                    extra={"file_id": file.id},
                )

    async def _withdraw_working(self, file: FileRecord) -> None:
        """Undo :meth:`_bring_back`'s write when the status change then failed: the file
        is still out of files/ as the catalog says (its content is its current version).
        A copy changed meanwhile is a writer's, and stays; what fails is logged, and the
        next scan takes the copy in."""
        with trio.CancelScope(shield=True):
            try:
                await in_thread(self.storage.withdraw_working, file.file_path, file.id, file.checksum)
            except Exception as exc:
                log.error(
                    "%r: the working copy written for it could not be taken back (%s); "
                    "the next scan brings the file back",
                    file.file_path,
                    exc,
                    extra={"file_id": file.id},
                )

    async def _bring_back(
        self, db: Units, file: FileRecord, correlation_id: str | None
    ) -> tuple[bool, FileIdentity | None]:
        """Back to active: the working copy is written again from the current version,
        unless one is there (it came back on its own): then that is versioned. Whether a
        version was made, and the working copy written (None: none was)."""
        if not await in_thread(self.storage.working_exists, file.file_path):
            await self._verified_object(file.checksum, file.file_path)
            mode = await db.working_mode(file.id)  # (the mode it left files/ with)
            written = await in_thread(
                self.storage.create_working, file.file_path, file.checksum, file.id, check_cancelled, mode
            )
            if written is not None:
                return False, written
        _, version, _ = await self._version_working_copy(db, file, correlation_id)
        return version is not None, None

    async def _record_written(
        self, file: FileRecord, written: FileIdentity, correlation_id: str | None
    ) -> None:
        """Record the stat identity of the working file a restore or an undelete wrote for
        *file*'s current version, so that a rename of it right after (`cp a b; mv a c`)
        is told by its inode and mtime, not by content alone (the copy, b, would do as
        well). It is recorded as if read at its mtime, racy (see :func:`unchanged_since`):
        a scan still reads the file again once. One a writer wrote to meanwhile is not
        ours to record (its ctime -1)."""
        if written.ctime_ns is None or written.ctime_ns < 0:
            return
        working = WorkingStat(
            written.size, written.mtime_ns, written.ctime_ns, written.inode, written.device, written.mtime_ns
        )
        try:
            # Shielded: the change is committed, and a cancel met here would say otherwise.
            with trio.CancelScope(shield=True):
                await self.backend.refresh_working([_entry(file, working)])
        except Exception as exc:  # (the change stands, with no identity)
            log.warning(
                "%s: the identity of the working file written for it was not recorded (%s); "
                "a rename of it before it is read again is told by its content alone",
                quoted(file.file_path),
                exc,
                extra={"correlation_id": correlation_id, "file_id": file.id},
            )

    async def delete(
        self, file_id: str, correlation_id: str | None = None, *, vanished: bool = False
    ) -> Updated:
        """Soft delete; a file deleted already stays as it is (and is answered as such).
        *vanished*: see :meth:`update` (a store gone from under the process would make
        every file vanish: checked first)."""
        if vanished:
            await self.ensure_bound()
        return await self.update(
            file_id, FileChanges(status=Status.DELETED), correlation_id=correlation_id, vanished=vanished
        )

    async def undelete(self, file_id: str, correlation_id: str | None = None) -> Updated:
        """Back to active; an active file stays as it is. An archived file is not deleted:
        it comes back with an update to status active."""
        file = await self.file(file_id)
        if file.status is Status.ARCHIVED:
            raise HoraceError(
                ErrorCode.INVALID_ARGUMENT,
                f"{quoted(file.file_path)} is archived, not deleted: update its status to active instead",
            )
        # Of an active file: nothing to do (not even a look for unsaved changes, which
        # would write a version).
        check = file.status is not Status.ACTIVE
        return await self.update(
            file_id, FileChanges(status=Status.ACTIVE), check_for_changes=check, correlation_id=correlation_id
        )

    async def undelete_folder(
        self, folder: str, deleted_after: datetime | None = None, correlation_id: str | None = None
    ) -> FolderUndeleted:
        """Undelete every file deleted under *folder*, or only those deleted at or after
        *deleted_after*: a removed folder (``rm -rf``) brought back without the files
        deleted there on purpose before. The files are found first, then undeleted one at
        a time, in path order, each whole; one that cannot come back (a folder now at its
        path, a writer's file) is an error of its own, and the others still come back. A
        file's path, or a folder with no file ever deleted under it (a typo), is refused;
        so is files/ itself without *deleted_after* (every file ever deleted)."""
        rel = self.relative(folder, folder=True, on_disk=False).rstrip("/")
        if not rel and deleted_after is None:
            raise HoraceError(
                ErrorCode.INVALID_ARGUMENT,
                "files/ itself takes a moment to undelete from (--deleted-after): "
                "without one, every file ever deleted would come back",
            )
        if rel and await self.backend.file_by_path(rel) is not None:
            raise HoraceError(
                ErrorCode.INVALID_ARGUMENT,
                f"{quoted(rel)} is a file, not a folder: undelete it alone (without -r)",
            )
        deleted = await self.files_under(rel, Status.DELETED)
        if not deleted:
            where = repr(rel) if rel else "files/"
            raise HoraceError(ErrorCode.NOT_CATALOGED, f"no file was deleted under {where}")
        found = [
            f
            for f in deleted
            if deleted_after is None or (f.deleted_at is not None and f.deleted_at >= deleted_after)
        ]
        undeleted: list[FileRecord] = []
        errors: list[str] = []
        for file in found:
            try:
                undeleted.append((await self.undelete(file.id, correlation_id)).file)
            except HoraceError as exc:
                errors.append(f"{quoted(file.file_path)}: {exc.code.value} {exc.message}")
        return FolderUndeleted(tuple(undeleted), tuple(errors))

    async def files_under(self, rel: str, status: Status) -> list[FileRecord]:
        """The files catalogued under the folder *rel* (relative to files/; "": files/
        itself) with *status*, in path order, read a search page at a time."""
        query = SearchQuery(
            path=_literal_glob(rel) + "/*" if rel else "*",  # (a glob's * crosses /: every file below)
            status=status,
            sort_by=SortKey.PATH,
            order=Order.ASC,
            limit=MAX_SEARCH_LIMIT,
        )
        found: list[FileRecord] = []
        cursor: str | None = None
        while True:
            page = await self.search(query, cursor)
            found += page.results
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    async def _verified_object(self, checksum: str, what: str) -> None:
        found = await in_thread(self.storage.hash_object, checksum, check_cancelled)
        if found is None:
            raise HoraceError(
                ErrorCode.CHECKSUM_MISMATCH, f"the content of {what} is missing from the object store"
            )
        if found[0] != checksum:
            raise HoraceError(ErrorCode.CHECKSUM_MISMATCH, f"the stored content of {what} is corrupt")

    async def restore(self, file_id: str, version: int, correlation_id: str | None = None) -> Restored:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "version must be a positive integer")
        async with self.writing_file(file_id) as (db, current):
            if current.status is not Status.ACTIVE:
                raise HoraceError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{quoted(current.file_path)} is {current.status.value}: make it active before restoring",
                )
            wanted = await db.version(file_id, version)
            if wanted is None:
                raise HoraceError(
                    ErrorCode.VERSION_NOT_FOUND, f"{quoted(current.file_path)} has no version {version}"
                )
            await self._verified_object(wanted.checksum, f"version {version} of {quoted(current.file_path)}")
            preserved = None
            examined: FileIdentity | None = None
            if await in_thread(self.storage.working_exists, current.file_path):
                await self._not_being_written(current.file_path)
                # (Retention spares the wanted version: its object is read below.)
                current, kept, examined = await self._version_working_copy(
                    db, current, correlation_id, spare=version, leaving=True
                )
                preserved = kept.version if kept else None
            # Once the unsaved content is a version, the restore goes on to its end: cancelled
            # (a client's cancel, the deadline) it would stand half made, that version current
            # and the one asked for not back. Before, a cancel stops the copy, and nothing is made.
            # Where no working copy is, the content goes in with the mode the file left with.
            mode = None if examined is not None else await db.working_mode(current.id)
            with trio.CancelScope(shield=preserved is not None):
                written, displaced = await in_thread(
                    self.storage.replace_working,
                    current.file_path,
                    wanted.checksum,
                    current.id,
                    examined,
                    check_cancelled,
                    mode,
                )
            # The working file holds version N now: what follows is recorded whatever
            # happens, or, should the record fail, undone.
            had_working = examined is not None
            # What the restore kept of the working file (unsaved content, a writer's) is
            # spared by the restored version's retention: a count of 1 or 2 would prune it
            # at once, and the file's content before the restore with it.
            kept_from = preserved
            with trio.CancelScope(shield=True):
                try:
                    if displaced is not None:
                        # A writer replaced the file after it was versioned: keep that too.
                        current, held = await self._version_held(
                            db, current, displaced, correlation_id, version
                        )
                        if kept_from is None and held is not None:
                            kept_from = held.version
                        had_working = True
                    new = NewVersion(
                        wanted.checksum, wanted.size, current.mime_type, restored_from_version=version
                    )
                    record, restored = await self._commit_version(
                        db, current, new, correlation_id, spare=kept_from
                    )
                except BaseException:
                    await self._unrestore(current, written, wanted.checksum, had_working)
                    raise
                await self._record_written(record, written, correlation_id)
        return Restored(record, restored, preserved)

    async def _unrestore(
        self, current: FileRecord, written: FileIdentity, restored_checksum: str, had_working: bool
    ) -> None:
        """Undo a restore's write when its record failed (the catalog gone, a full disk),
        so that the working file holds again what the catalog says is current (*current*,
        or no working file when there was none) and the client's error tells the truth.
        A file changed since it was written is a writer's, and stays. What cannot be undone
        is logged; nothing is lost either way (both contents are versions)."""
        rel = current.file_path
        try:
            if not had_working:
                await in_thread(self.storage.withdraw_working, rel, current.id, restored_checksum)
            elif await in_thread(self.storage.holds_file, rel, written):
                # (Checked to its ctime above; the swap checks what a rename leaves alike.)
                examined = attrs.evolve(written, ctime_ns=None)
                undone, displaced = await in_thread(
                    self.storage.replace_working, rel, current.checksum, current.id, examined
                )
                if displaced is not None:  # written to between the look and the swap: the writer's
                    left = await in_thread(self.storage.swap_back, displaced, rel, undone)
                    if left is not None:  # (and written to again: both kept, the newest at rel)
                        placed = await in_thread(self.storage.put_back, left, rel)
                        log.warning(
                            "%r was written to again as a failed restore was undone: both writes "
                            "kept, one beside it as %s",
                            rel,
                            placed or f"{left} (its folder out of reach)",
                            extra={"file_id": current.id},
                        )
            else:
                log.warning(
                    "%r was written to after the restore wrote it: left as it is, for the next "
                    "scan to record",
                    rel,
                    extra={"file_id": current.id},
                )
        except Exception as exc:
            log.error(
                "%r: the restored content could not be taken back after the restore failed (%s); "
                "the next scan records it as a new version",
                rel,
                exc,
                extra={"file_id": current.id},
            )

    # -- collections --------------------------------------------------------------------

    async def _existing_ids(self, file_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(file_ids))
        missing = await self.backend.missing_file_ids(ids)
        if missing:
            more = f" and {len(missing) - NAMED_MISSING} more" if len(missing) > NAMED_MISSING else ""
            raise HoraceError(
                ErrorCode.NOT_CATALOGED, f"not catalogued: {', '.join(missing[:NAMED_MISSING])}{more}"
            )
        return ids

    async def create_collection(
        self,
        name: str,
        description: str | None = None,
        file_ids: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> Collection:
        _check_name(name)
        self._check_described("the collection's description and metadata", {"d": description, "m": metadata})
        ids = await self._existing_ids(file_ids)
        return await self.backend.upsert_collection(name, description, metadata, ids, self.clock())

    async def list_collections(self, limit: int = 50, offset: int = 0) -> tuple[int, list[Collection]]:
        return await self.backend.list_collections(_bounded(limit, "limit"), _offset(offset))

    async def get_collection(
        self, name: str, limit: int = 50, offset: int = 0
    ) -> tuple[Collection, list[FileRecord]]:
        found = await self.backend.get_collection(name, _bounded(limit, "limit"), _offset(offset))
        if found is None:
            raise HoraceError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection {name!r}")
        return found

    async def add_to_collection(self, name: str, file_ids: Sequence[str]) -> Collection:
        ids = await self._existing_ids(file_ids)
        found = await self.backend.add_members(name, ids, self.clock())
        if found is None:
            raise HoraceError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection {name!r}")
        return found

    async def remove_from_collection(self, name: str, file_ids: Sequence[str]) -> Collection:
        """Catalogued files that are not members are passed over; an id that is not a
        catalogued file's is refused, as by :meth:`add_to_collection` (a mistyped id
        would otherwise look removed)."""
        ids = await self._existing_ids(file_ids)
        found = await self.backend.remove_members(name, ids, self.clock())
        if found is None:
            raise HoraceError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection {name!r}")
        return found

    async def delete_collection(self, name: str) -> None:
        if not await self.backend.delete_collection(name):
            raise HoraceError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection {name!r}")

    # -- scan, purge, collect ---------------------------------------------------

    async def scan(
        self,
        under: str | None = None,
        correlation_id: str | None = None,
        progress: Progress | None = None,
        *,
        rehash: bool = False,
    ) -> ScanReport:
        """Register untracked files and version changed ones under files/ (or *under*, a
        folder or one file).

        A catalogued file is read again only when its stat identity says it may have
        changed (:func:`unchanged_since`), or with *rehash*, always.
        """
        rel_under = None
        if under is not None:
            rel_under = self.relative(under, folder=True) or None  # (files/ itself: all of it)
            target = self.storage.files / (rel_under or "")

            def what() -> str | None:  # (the three looks in one hop)
                if target.is_dir():
                    return "folder"
                return "file" if target.is_file() else "other" if target.exists() else None

            found = None if rel_under is None else await in_thread(what)
            if rel_under is not None and found != "folder":
                if found == "file":
                    if not under.endswith("/"):
                        return await self._scan_one(rel_under, correlation_id, progress)
                elif found == "other":  # a FIFO, a socket, a device
                    raise HoraceError(
                        ErrorCode.INVALID_PATH, f"{quoted(rel_under)} is not a regular file or a folder"
                    )
                raise HoraceError(
                    ErrorCode.FILE_NOT_FOUND,
                    f"no folder or file {quoted(rel_under)} under files/{files_prefix_hint(rel_under)}",
                )
        async with self.walking:
            return await self._scan_folder(rel_under, correlation_id, progress, rehash)

    async def _scan_folder(
        self, rel_under: str | None, correlation_id: str | None, progress: Progress | None, rehash: bool
    ) -> ScanReport:
        skipped: list[str] = []
        # One after the other: run at once, the walk's thread (a system call a file, each
        # giving up the GIL) waits behind the index read's Python for the GIL, and the two
        # take longer together than in turn.
        found = await in_thread(self.storage.walk_stats, rel_under, skipped, check_cancelled)
        index = await self.backend.working_index()
        for why in skipped:
            log.warning("scan: skipped %s", why, extra={"correlation_id": correlation_id})
        missing = await self._missing(rel_under, found, index)
        moved: tuple[str, ...] = ()
        if missing:  # renamed, perhaps
            moved, followed = await self._follow_moves(missing, found, index, correlation_id)
            if moved:
                index = await self.backend.working_index()
                missing = [e for e in missing if e.file_id not in followed]
        report = await self._scan_found(found, skipped, index, correlation_id, progress, rehash)
        for error in report.errors[:LOGGED_SCAN_ERRORS]:
            log.warning("scan: not taken: %s", error, extra={"correlation_id": correlation_id})
        if len(report.errors) > LOGGED_SCAN_ERRORS:  # (a full disk fails every file, alike)
            log.warning(
                "scan: %d more files not taken (each named in the scan's report)",
                len(report.errors) - LOGGED_SCAN_ERRORS,
                extra={"correlation_id": correlation_id},
            )
        return attrs.evolve(
            report,
            missing=tuple(sorted({e.file_path for e in missing} | set(report.missing))),
            moved=moved,
        )

    async def _vanished(self, missing: list[IndexEntry]) -> Vanished:
        """The records of the *missing* files, waiting for their content to turn up."""
        if not missing:
            return Vanished()
        gone = {e.file_id for e in missing}
        return Vanished([f for f in await self.backend.all_files() if f.id in gone])

    async def _missing(
        self, rel_under: str | None, found: list[tuple[str, os.stat_result]], index: list[IndexEntry]
    ) -> list[IndexEntry]:
        """The active files of *index* under *rel_under* (None: all of files/) that the walk
        did not find and that are not there (a name the walk passes over, an editor's temp
        form, is)."""
        walked = {rel for rel, _ in found}
        prefix = f"{rel_under}/" if rel_under else ""
        unseen = [
            e
            for e in index
            if e.status is Status.ACTIVE and e.file_path.startswith(prefix) and e.file_path not in walked
        ]
        if not unseen:
            return []
        return await in_thread(lambda: [e for e in unseen if self.storage.surely_gone(e.file_path)])

    async def _scan_one(self, rel: str, correlation_id: str | None, progress: Progress | None) -> ScanReport:
        """A scan of one file: it is registered (or versioned, or found a duplicate) as
        :meth:`register` does, but that a copy is catalogued as a scan of its folder
        catalogs it (:meth:`register_new`); counted as a scan counts it."""
        tally = _ScanTally(1, progress)
        try:
            taken = await self.register(rel, correlation_id=correlation_id)
            if taken.duplicate:
                copy = await self.register_copy(rel, correlation_id)
                if copy is not None:
                    taken = Registered(copy, version_created=True, duplicate=False)
        except HoraceError as exc:
            tally.errors.append(f"{quoted(rel)}: {exc.message}")
            log.warning(
                "scan: not taken: %s: %s", quoted(rel), exc.message, extra={"correlation_id": correlation_id}
            )
        else:
            if taken.duplicate:
                tally.duplicates += 1
            elif taken.version_created and taken.file.current_version == 1:
                tally.registered += 1
            else:
                tally.count(taken.version_created)
        tally.advance(1)
        return tally.report(())

    async def _scan_found(
        self,
        found: list[tuple[str, os.stat_result]],
        skipped: list[str],
        entries: list[IndexEntry],
        correlation_id: str | None,
        progress: Progress | None,
        rehash: bool,
    ) -> ScanReport:
        tally = _ScanTally(len(found), progress)
        try:
            return await self._take_found(found, skipped, entries, correlation_id, rehash, tally)
        except Exception as exc:
            kept = _kept_by_scan(exc, tally)
            if kept is None:
                raise
            raise kept from exc

    async def _take_found(
        self,
        found: list[tuple[str, os.stat_result]],
        skipped: list[str],
        entries: list[IndexEntry],
        correlation_id: str | None,
        rehash: bool,
        tally: _ScanTally,
    ) -> ScanReport:
        found.sort(key=lambda seen: seen[0])  # batches then hold the files of few folders
        index = {e.file_path: e for e in entries}
        margin = self.policy.racy_margin_ns
        new: list[str] = []
        sizes: dict[str, int] = {}  # of the new files: how to spread a batch over threads
        suspects: list[IndexEntry] = []
        back: list[str] = []  # catalogued, not active, and in files/ again
        for rel, st in found:
            entry = index.get(rel)
            if entry is None:
                new.append(rel)
                sizes[rel] = st.st_size
            elif entry.status is not Status.ACTIVE:
                back.append(rel)
            elif not rehash and unchanged_since(entry.working, st, margin):
                tally.unchanged += 1
            else:
                suspects.append(entry)
        tally.advance(tally.unchanged)
        # The files the catalog knows first, then the new ones: a new file is a duplicate
        # only of content still catalogued once this scan is done (a copy of what its
        # original is leaving in this scan is catalogued, not passed over).
        for group in _slices(suspects, SCAN_COMMIT_GROUP):
            await self._look_again(group, correlation_id, tally)
            tally.advance(len(group))
        for rel in back:  # register revives it (or versions it)
            try:
                result = await self.register(rel, correlation_id=correlation_id)
                tally.count(result.version_created)
            except HoraceError as exc:
                tally.failed(rel, exc)
            tally.advance(1)
        # Content catalogued at the start or by this scan: a file of it not inserted is a
        # duplicate. Any other was refused for its path, or for content another writer (a
        # second instance's scan, say) catalogued meanwhile: the index, read again, tells.
        known = {e.checksum for e in entries if e.status is Status.ACTIVE}
        unexplained: list[str] = []
        for batch in _slices(new, SCAN_COMMIT_GROUP):
            outcome = await self._register_what_fits(batch, correlation_id, sum(sizes[rel] for rel in batch))
            tally.registered += len(outcome.registered)
            known.update(f.checksum for f in outcome.registered)
            for rel, checksum in outcome.skipped:
                if checksum in known:
                    tally.duplicates += 1
                else:
                    unexplained.append(rel)
            for rel, refused in outcome.failed:
                tally.failed(rel, refused)
            tally.advance(len(batch))
        if unexplained:
            catalogued = {e.file_path for e in await self.backend.working_index()}
            for rel in unexplained:
                if rel in catalogued:
                    tally.unchanged += 1  # catalogued meanwhile, with this very content
                else:
                    tally.duplicates += 1
        active = {e.file_path for e in entries if e.status is Status.ACTIVE}
        for rel in tally.gone:
            if rel not in active:
                log.info(
                    "scan: %s was removed before it was read", rel, extra={"correlation_id": correlation_id}
                )
        return tally.report(skipped, [rel for rel in tally.gone if rel in active])

    async def _look_again(
        self, entries: Sequence[IndexEntry], correlation_id: str | None, tally: _ScanTally
    ) -> None:
        """Hash catalogued files whose stat identity moved: the unchanged ones get their new
        identity recorded, the changed ones are versioned."""
        hashed = await self._in_threads(
            self.storage.hash_many, [e.file_path for e in entries], _recorded_bytes(entries)
        )
        unchanged: list[IndexEntry] = []
        changed: list[IndexEntry] = []
        for entry, outcome in zip(entries, hashed, strict=True):
            if isinstance(outcome, HoraceError):
                tally.failed(entry.file_path, outcome)
            elif outcome.checksum == entry.checksum:
                unchanged.append(attrs.evolve(entry, working=outcome.working))
            else:
                changed.append(entry)  # or being written: staging says which
        if unchanged:
            await self.backend.refresh_working(unchanged)
            tally.unchanged += len(unchanged)
            await self._objects_from_copies(unchanged, tally)
        if changed:
            await self._version_changed(changed, correlation_id, tally)

    async def _objects_from_copies(self, entries: Sequence[IndexEntry], tally: _ScanTally) -> None:
        """Files read again and unchanged whose current object is lost or damaged: their
        working copies put it back (:meth:`_object_from_copy`)."""

        def lost() -> list[IndexEntry]:
            return [
                e
                for e in entries
                if e.working is not None and not self.storage.object_intact(e.checksum, e.working.size)
            ]

        for entry in await in_thread(lost):
            try:
                staged = await self._stage(entry.file_path)
            except HoraceError as exc:
                tally.failed(entry.file_path, exc)
                continue
            try:
                if staged.checksum == entry.checksum:
                    await self._object_from_copy(entry.file_path, entry.file_id, staged)
            finally:
                await self.discard(staged)

    async def _version_changed(
        self, entries: Sequence[IndexEntry], correlation_id: str | None, tally: _ScanTally
    ) -> None:
        """Version changed catalogued files as one batch: staged together (on the threads
        :func:`_thread_slices` gives), then committed in groups (:meth:`_commit_together`)."""
        staged = await self._stage_batch([e.file_path for e in entries], _recorded_bytes(entries))
        released: list[Staged] = []
        try:
            ready: list[tuple[IndexEntry, Staged, str]] = []
            unchanged: list[IndexEntry] = []
            for entry, (_, outcome) in zip(entries, staged, strict=True):
                if isinstance(outcome, HoraceError):
                    tally.failed(entry.file_path, outcome)
                elif outcome[0].checksum == entry.checksum:  # changed back meanwhile
                    tally.unchanged += 1
                    if outcome[0].working is not None:
                        unchanged.append(attrs.evolve(entry, working=outcome[0].working))
                else:
                    ready.append((entry, *outcome))
            if unchanged:
                await self.backend.refresh_working(unchanged)
            for part in _slices(ready, LOCKS_AT_ONCE):
                await self._commit_together(part, correlation_id, tally, released)
        finally:
            await self._discard_batch(staged, released)

    async def _commit_together(
        self,
        ready: Sequence[tuple[IndexEntry, Staged, str]],
        correlation_id: str | None,
        tally: _ScanTally,
        released: list[Staged],
    ) -> None:
        """Record the staged copies of *ready* as new versions. Those of files whose locks
        are free and that no other writer versioned since the scan looked go together,
        shielded as one version is (:meth:`_commit_version`): made objects with one
        filesystem sync, recorded in one unit of work. Each of the others goes the usual
        way, waiting for its lock (:meth:`_commit_looked_at`)."""
        committed: set[str] = set()
        orphans: list[str] = []
        async with self.locks.hold_free([entry.file_path for entry, _, _ in ready]) as held:
            key_of = {rel: lock_key(rel) for rel in held}
            async with self.backend.exclusive_free(list(key_of.values())) as (db, keys):
                together = [
                    (entry, copy, mime_type)
                    for entry, copy, mime_type in ready
                    if key_of.get(entry.file_path) in keys
                ]
                if together:
                    changes = [
                        (entry, NewVersion(copy.checksum, copy.size, mime_type, working=copy.working))
                        for entry, copy, mime_type in together
                    ]
                    with trio.CancelScope(shield=True):
                        await self._keep_batch([copy for _, copy, _ in together], [])
                        done = await db.add_versions(
                            changes, self.clock(), correlation_id, self.policy.retention
                        )
                        recorded = [
                            (entry, copy, outcome)
                            for (entry, copy, _), outcome in zip(together, done, strict=True)
                            if outcome is not None
                        ]
                        await self._release([copy for _, copy, _ in recorded], released)
                    for entry, _, (_, _, pruned) in recorded:
                        committed.add(entry.file_path)
                        orphans += pruned
                        tally.count(True)
                        _say_if_pruned_at_once(
                            entry.file_path, len(pruned), self.policy.retention, correlation_id
                        )
        if orphans:
            await self.let_go(orphans, correlation_id)
        for entry, copy, mime_type in ready:
            if entry.file_path not in committed:
                try:
                    tally.count(await self._commit_looked_at(entry, copy, mime_type, correlation_id))
                except HoraceError as exc:
                    tally.failed(entry.file_path, exc)

    async def _commit_looked_at(
        self, entry: IndexEntry, copy: Staged, mime_type: str, correlation_id: str | None
    ) -> bool:
        """Under the file's lock: record *copy* as the file's new version if the file is
        where *entry* saw it; else take the file the usual way. Whether a version was made."""
        async with self.writing(entry.file_path) as db:
            current = await db.file_by_id(entry.file_id)
            if current is None:
                raise HoraceError(ErrorCode.NOT_CATALOGED, f"{quoted(entry.file_path)} was purged meanwhile")
            if current.file_path != entry.file_path:
                # Moved meanwhile (a rename followed): what was read at its old path is
                # another file's, left for the next look at that path.
                return False
            if (current.current_version, current.status) != (entry.current_version, Status.ACTIVE):
                # (As a scan takes a file: as it is, see stage_many.)
                taken = await self._reregister(db, current, correlation_id, as_it_is=True)
                return taken.version_created
            new = NewVersion(copy.checksum, copy.size, mime_type, working=copy.working)
            await self._commit_version(db, current, new, correlation_id, copy)
            return True

    async def _register_what_fits(
        self, batch: Sequence[str], correlation_id: str | None, total_bytes: int
    ) -> NewFiles:
        """:meth:`register_new`; when the storage is too full for the batch as a whole, its
        files one by one: what fits is taken, and each that does not is told apart."""
        try:
            return await self.register_new(batch, correlation_id, total_bytes, copies=True)
        except HoraceError as exc:
            if exc.code is not ErrorCode.STORAGE_FULL:
                raise
            if len(batch) == 1:
                return NewFiles((), (), ((batch[0], exc),))
            log.warning(
                "scan: %s; taking %d new files one by one",
                exc.message,
                len(batch),
                extra={"correlation_id": correlation_id},
            )
        registered: list[FileRecord] = []
        skipped: list[tuple[str, str]] = []
        failed: list[tuple[str, HoraceError]] = []
        for i, rel in enumerate(batch):
            try:
                one = await self.register_new([rel], correlation_id, copies=True)
            except HoraceError as exc:
                if exc.code is not ErrorCode.STORAGE_FULL:
                    raise
                failed.append((rel, exc))
                continue
            except DatabaseFull as exc:  # the catalog's disk (often the same): no room for any
                full = HoraceError(ErrorCode.STORAGE_FULL, str(exc))
                failed += [(left, full) for left in batch[i:]]
                break
            registered += one.registered
            skipped += one.skipped
            failed += one.failed
        return NewFiles(tuple(registered), tuple(skipped), tuple(failed))

    async def register_new(
        self,
        batch: Sequence[str],
        correlation_id: str | None = None,
        total_bytes: int | None = None,
        *,
        copies: bool = False,
    ) -> NewFiles:
        """Register files not catalogued yet, in one commit: stage all (on every core, when
        *total_bytes* is worth it: see :func:`_thread_slices`), one filesystem sync, one
        insert. Paths must be relative to files/ (as the walks give them).

        A file whose content is an active file's is left out (the duplicate rule of
        :meth:`register`), unless *copies*: then, when that file is still at its path, it
        is catalogued as a file of its own, in a second commit (the scans and the watcher
        catalog every path, so that each can be brought back). When that file is not at
        its path, this one may be its other half of a rename: left out, for the caller.

        No per-file lock is needed: nothing but the insert is written, and the unique
        path constraint decides any race with another writer.
        """
        # A batch this long has its small files read into memory and kept as one pack
        # (fewer, larger files: see horace.packs); a short one, as objects of their own.
        in_memory = PACK_BATCH_BYTES if len(batch) >= PACK_MIN_FILES else 0
        staged = await self._stage_batch(list(batch), total_bytes, in_memory)
        kept: list[Staged] = []
        released: list[Staged] = []
        try:
            failed = [(rel, outcome) for rel, outcome in staged if isinstance(outcome, HoraceError)]
            taken = [(rel, *outcome) for rel, outcome in staged if not isinstance(outcome, HoraceError)]
            now = self.clock()
            records = []
            firsts: list[Staged] = []
            working: dict[str, WorkingStat] = {}
            seen: set[str] = set()
            for rel, s, mime_type in taken:
                if s.checksum in seen:
                    continue  # same content earlier in this batch: a duplicate
                seen.add(s.checksum)
                records.append(_new_record(rel, s, mime_type, now, correlation_id))
                firsts.append(s)
                if s.working is not None:
                    working[records[-1].id] = s.working
            await self._keep_batch(firsts, kept)
            with trio.CancelScope(shield=True):
                try:
                    inserted = await self.backend.insert_files(records, working=working)
                    self.backend.refusals.clear()
                except BaseException:
                    await self.let_go([s.checksum for s in kept], correlation_id)
                    raise
            await self._release(kept, released)
            if copies:
                inserted += await self._insert_copies(taken, inserted, now, correlation_id)
        finally:
            await self._discard_batch(staged, released, kept)
        done = {f.file_path for f in inserted}
        skipped = tuple((rel, s.checksum) for rel, s, _ in taken if rel not in done)
        return NewFiles(tuple(inserted), skipped, tuple(failed))

    async def register_copy(self, rel: str, correlation_id: str | None) -> FileRecord | None:
        """The new file *rel*, found a duplicate by :meth:`register`, catalogued as a copy
        (:meth:`register_new`); None when it is left out (its content's file is not at
        its path). A failure to take it is raised."""
        copy = await self.register_new([rel], correlation_id, copies=True)
        for _, refused in copy.failed:
            raise refused
        return copy.registered[0] if copy.registered else None

    async def _insert_copies(
        self,
        taken: list[tuple[str, Staged, str]],
        inserted: list[FileRecord],
        now: datetime,
        correlation_id: str | None,
    ) -> list[FileRecord]:
        """Of *taken* (staged new files) the ones not *inserted* that are copies, inserted
        as files of their own. Their objects need no keeping: each content was kept (and
        made sure of) with the batch, and an active file's current version refers to it."""
        done = {f.file_path for f in inserted}
        found = await self._copies_among([t for t in taken if t[0] not in done])
        if not found:
            return []
        records = [_new_record(rel, s, mime, now, correlation_id) for rel, s, mime in found]
        working = {
            r.id: s.working for r, (_, s, _) in zip(records, found, strict=True) if s.working is not None
        }
        with trio.CancelScope(shield=True):
            copies = await self.backend.insert_files(records, working=working, copies=True)
            self.backend.refusals.clear()
        return copies

    async def _copies_among(self, left_out: list[tuple[str, Staged, str]]) -> list[tuple[str, Staged, str]]:
        """Of new files left out of an insert, the copies: those whose content an active
        file holds at its own path, still there. (Not there, that file may have been
        renamed to this one; a path taken meanwhile by another writer is left out again.)"""
        present: dict[str, bool] = {}
        found = []
        for rel, s, mime_type in left_out:
            if s.checksum not in present:
                holder = await self.backend.file_by_checksum(s.checksum)
                present[s.checksum] = holder is not None and await in_thread(
                    self.storage.working_exists, holder.file_path
                )
            if present[s.checksum]:
                found.append((rel, s, mime_type))
        return found

    # -- batches: staged on one thread or several, kept with one sync ---------------------

    async def _in_threads(
        self, work: Callable[[list[str]], list[T]], items: list[str], total_bytes: int | None
    ) -> list[T]:
        """*work* over *items* in contiguous slices, one worker thread each (see
        :func:`_thread_slices`); the outcomes in order."""
        slices = _thread_slices(items, total_bytes)
        outcomes: list[list[T]] = [[] for _ in slices]

        async def run(i: int, part: list[str]) -> None:
            outcomes[i] = await in_thread(work, part)

        async with together() as nursery:
            for i, part in enumerate(slices):
                nursery.start_soon(run, i, part)
        return [outcome for part in outcomes for outcome in part]

    async def _stage_batch(
        self, rels: list[str], total_bytes: int | None = None, in_memory: int = 0
    ) -> StagedBatch:
        """Stage working files (copy + hash into .horace/tmp, or small ones into memory:
        see :meth:`Storage.stage_many`) with their MIME types, on as many threads as
        :func:`_thread_slices` says; each outcome with its path. Cancelled, nothing
        staged is left."""

        def stage(part: list[str]) -> StagedBatch:
            outcomes = self.storage.stage_many(part, check_cancelled, in_memory)
            # MIME types here, off the Trio thread.
            return [
                (rel, o if isinstance(o, HoraceError) else (o, mime.detect(rel, o.head)))
                for rel, o in zip(part, outcomes, strict=True)
            ]

        done: StagedBatch = []

        async def staging(part: list[str]) -> None:
            done.extend(await in_thread(stage, part))

        try:
            async with together() as nursery:
                for part in _thread_slices(rels, total_bytes):
                    nursery.start_soon(staging, part)
        except BaseException:
            await self._discard_batch(done)  # what the slices that finished had staged
            raise
        order = {rel: i for i, rel in enumerate(rels)}
        return sorted(done, key=lambda outcome: order[outcome[0]])

    async def _keep_batch(self, staged: Sequence[Staged], kept: list[Staged]) -> None:
        """Shielded: make each staged copy an object (adding it to *kept*), then one
        filesystem sync for all."""
        if staged:
            with trio.CancelScope(shield=True):
                await in_thread(self.storage.keep_batch, staged, kept)

    async def _release(self, kept: Sequence[Staged], released: list[Staged]) -> None:
        """Shielded, after the commit: make sure each kept object is in place (the
        collector may have taken it meanwhile), then drop its staged copy (adding it to
        *released*)."""
        if kept:
            with trio.CancelScope(shield=True):
                await in_thread(self.storage.release_batch, kept, released)

    async def _discard_batch(
        self,
        staged: Sequence[tuple[str, tuple[Staged, str] | HoraceError]],
        released: Sequence[Staged] = (),
        kept: Sequence[Staged] = (),
    ) -> None:
        """Shielded: remove the staged copies (and the staged links of the packs *kept*)
        not released already (on the way out, cancelled or not)."""
        gone = {s.tmp_path for s in released}
        copies = [o[0] for _, o in staged if not isinstance(o, HoraceError)] + list(kept)
        left = {s.tmp_path: s for s in copies if s.tmp_path is not None and s.tmp_path not in gone}
        if left:
            await self.discard(*left.values())

    async def move(self, file_id: str, new_client_path: str, correlation_id: str | None = None) -> FileRecord:
        """A rename seen on disk: the file keeps its id and history under its new path."""
        new_rel = self.relative(new_client_path)
        moved: FileRecord | None = None
        async with self.writing_file(file_id) as (db, old):
            there_already = old.file_path == new_rel  # (moved by another watcher of the store)
            if not there_already:
                [moved] = await db.move_files([(file_id, new_rel, None)], self.clock())
        if there_already:
            return (await self.register(new_rel, correlation_id=correlation_id)).file
        if moved is None:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"{quoted(new_rel)} is catalogued already")
        log.info(
            "moved %s -> %s",
            old.file_path,
            new_rel,
            extra={"correlation_id": correlation_id, "file_id": file_id},
        )
        # The content may have changed along with the name: version it if so.
        try:
            return (await self.register(new_rel, correlation_id=correlation_id)).file
        except HoraceError as exc:
            if exc.code is not ErrorCode.FILE_NOT_FOUND:
                raise
            return moved  # renamed on already: followed from here next time

    async def follow_rename(
        self, vanished: Vanished, rel: str, correlation_id: str | None
    ) -> FileRecord | None:
        """:meth:`follow_renames` of one path: the file's record from before its move, or
        None; a move that fails is raised."""
        try:
            st = await in_thread(os.lstat, self.storage.files / rel)
        except OSError:
            return None
        followed = await self.follow_renames(vanished, [(rel, st)], correlation_id)
        for _, exc in followed.failed:
            raise exc
        return followed.moved[0][1] if followed.moved else None

    async def follow_renames(
        self, vanished: Vanished, found: Sequence[tuple[str, os.stat_result]], correlation_id: str | None
    ) -> Followed:
        """Each uncatalogued file of *found* (its path, as the caller's stat saw it) that
        holds the content of a vanished file,
        under the inode that file's content was read from, is that file, moved there: it
        keeps its id and history under its new path. A file of that content under another
        inode is a copy (`cp a b; mv a c`: b is not a, c is), unless the vanished file's
        inode was not recorded: then content decides. Only files of a vanished file's size
        are read, all in one worker-thread hop, and the moves are recorded together (a
        folder of thousands moved is one transaction, not thousands), each with the stat
        identity its content was read under: a change since is an event of its own, or a
        scan's, as for any file."""
        sizes = vanished.sizes()
        candidates = [rel for rel, st in found if stat.S_ISREG(st.st_mode) and st.st_size in sizes]
        hashed = await in_thread(self.storage.hash_many, candidates, check_cancelled) if candidates else []
        claims: list[tuple[FileRecord, str, WorkingStat]] = []
        gone_since: dict[str, float] = {}
        for rel, seen in zip(candidates, hashed, strict=True):
            if isinstance(seen, HoraceError) or seen.checksum is None:
                continue  # unreadable, or written as it was read: not followed now
            identity = rename_identity(seen.working)
            same = vanished.holding(seen.checksum)
            among = {f.id for f in same if await self.may_have_moved_to(f.id, identity)}
            gone_since.update((f.id, vanished.since(f.id)) for f in same if f.id in among)
            old = vanished.claim(seen.checksum, rel, among)
            if old is not None:
                claims.append((old, rel, seen.working))
        moved: list[tuple[str, FileRecord]] = []
        failed: list[tuple[str, HoraceError]] = []
        try:
            await self._move_claimed(claims, correlation_id, moved, failed)
        finally:
            # Each claimed file not moved (its new path taken meanwhile, the catalog down)
            # waits again, as it was, to be deleted or followed.
            done = {old.id for _, old in moved}
            for old, _, _ in claims:
                if old.id not in done:
                    vanished.add(old, gone_since[old.id])
        return Followed(tuple(moved), tuple(failed))

    async def _move_claimed(
        self,
        claims: Sequence[tuple[FileRecord, str, WorkingStat]],
        correlation_id: str | None,
        moved: list[tuple[str, FileRecord]],
        failed: list[tuple[str, HoraceError]],
    ) -> None:
        """Record the moves of *claims* (a file, its new path, its stat identity there):
        those whose locks are free together, in one unit of work; each of the others the
        usual way, waiting for its lock (:meth:`move`). Each is added to *moved* as it is
        recorded (what a failure of the catalog midway leaves done), or to *failed*."""
        if not claims:
            return
        async with self.locks.hold_free([old.file_path for old, _, _ in claims]) as held:
            key_of = {rel: lock_key(rel) for rel in held}
            async with self.backend.exclusive_free(list(key_of.values())) as (db, keys):
                together = [claim for claim in claims if key_of.get(claim[0].file_path) in keys]
                moves = [(old.id, rel, working) for old, rel, working in together]
                done = await db.move_files(moves, self.clock())
        recorded = {old.id for (old, _, _), record in zip(together, done, strict=True) if record is not None}
        for old, rel, _ in claims:
            if old.id in recorded:
                moved.append((rel, old))
                log.info(
                    "moved %s -> %s",
                    old.file_path,
                    rel,
                    extra={"correlation_id": correlation_id, "file_id": old.id},
                )
                continue
            try:
                await self.move(old.id, rel, correlation_id)
            except HoraceError as exc:
                failed.append((rel, exc))
            else:
                moved.append((rel, old))

    async def may_have_moved_to(self, file_id: str, identity: tuple[int, int, int] | None) -> bool:
        """Whether the file *file_id* may be the one now under *identity* (see
        :func:`rename_identity`): the same as when its content was read, or none recorded
        to tell."""
        entry = await self.backend.index_entry(file_id)
        if entry is None or entry.working is None:
            return entry is not None
        return identity == rename_identity(entry.working)

    async def _follow_renames(
        self,
        vanished: Vanished,
        found: list[tuple[str, os.stat_result]],
        index: list[IndexEntry],
        correlation_id: str | None,
    ) -> int:
        """Each file of *found* not in *index* that holds the content of a *vanished* one
        is that file, moved (the watcher's reconcile: as its watch follows renames, by
        content); how many. Only the new files of a vanished file's size are read; one
        that cannot be followed now (moved on, taken by another process) is left to what
        comes next: a new file, its old one deleted."""
        known = {e.file_path for e in index}
        new = sorted((rel, st) for rel, st in found if rel not in known)
        followed = await self.follow_renames(vanished, new, correlation_id)
        for rel, exc in followed.failed:
            log.info("reconcile: %s not followed as a rename: %s", rel, exc.message)
        return len(followed.moved)

    async def _follow_moves(
        self,
        missing: list[IndexEntry],
        found: list[tuple[str, os.stat_result]],
        index: list[IndexEntry],
        correlation_id: str | None,
    ) -> tuple[tuple[str, ...], set[str]]:
        """A scan's renames: a catalogued file of *missing* found at a new path of *found*
        under the inode its content was read from (a rename keeps the inode, a copy does
        not; a copy left by itself is not taken for the file), still holding that content,
        is that file, moved there. ("old -> new" of each, and their ids.) One that cannot
        be followed now (renamed again meanwhile, taken by another process) is left as it
        is: missing, and a new file for the scan."""
        # (By rename_identity: a file made anew in a reused inode has an mtime of its own.)
        by_identity = {rename_identity(w): (e, w) for e in missing if (w := e.working) is not None}
        known = {e.file_path for e in index}
        moved, followed = [], set()
        for rel, st in sorted(found, key=lambda f: f[0]):
            recorded = by_identity.get((st.st_ino, st.st_dev, st.st_mtime_ns))
            if recorded is None or rel in known or st.st_size != recorded[1].size:
                continue
            entry = recorded[0]
            try:
                if await in_thread(self.storage.hash_working, rel, check_cancelled) != entry.checksum:
                    continue  # (changed too, or an inode used again by another file)
                await self.move(entry.file_id, rel, correlation_id)
            except HoraceError as exc:
                log.info(
                    "scan: %s -> %s not followed as a rename: %s",
                    entry.file_path,
                    rel,
                    exc.message,
                    extra={"correlation_id": correlation_id},
                )
                continue
            del by_identity[(st.st_ino, st.st_dev, st.st_mtime_ns)]
            moved.append(f"{entry.file_path} -> {rel}")
            followed.add(entry.file_id)
        return tuple(moved), followed

    async def reconcile(
        self, correlation_id: str | None = None, progress: Progress | None = None, *, rehash: bool = False
    ) -> ReconcileReport:
        """Catch up with what changed while nobody watched: renames (by content),
        new and changed files (a scan), and missing ones (soft-deleted)."""
        async with self.walking:
            return await self._reconcile(correlation_id, progress, rehash)

    async def _reconcile(
        self, correlation_id: str | None, progress: Progress | None, rehash: bool
    ) -> ReconcileReport:
        skipped: list[str] = []
        found = await in_thread(self.storage.walk_stats, None, skipped, check_cancelled)
        for why in skipped:
            log.warning("scan: skipped %s", why, extra={"correlation_id": correlation_id})
        index = await self.backend.working_index()
        vanished = await self._vanished(await self._missing(None, found, index))
        moved = await self._follow_renames(vanished, found, index, correlation_id)
        if moved:  # their rows have their new paths now
            index = await self.backend.working_index()
        scanned = await self._scan_found(found, skipped, index, correlation_id, progress, rehash)
        missing = vanished.expired(before=math.inf)
        deleted = 0
        for file in missing:
            try:
                done = await self.delete(file.id, correlation_id, vanished=True)
            except HoraceError as exc:  # this file only (written to meanwhile, say): later
                log.warning(
                    "reconcile: %s left as it is: %s",
                    file.file_path,
                    exc.message,
                    extra={"correlation_id": correlation_id},
                )
            else:
                deleted += "status" in done.changed_fields  # (not when it came back meanwhile)
        return ReconcileReport(scanned, moved, deleted)

    async def purge(self) -> PurgeReport:
        """Remove files deleted longer ago than the retention: rows, then objects; then
        collect any other object no version refers to (once past the grace period); then
        the backend's upkeep (:meth:`Backend.tidy`)."""
        await self.ensure_bound()
        cutoff = self.clock() - self.policy.deleted_retention
        await self._take_back_the_present(cutoff)
        purged, orphans = await self.backend.purge_deleted(cutoff)
        orphans = await self._unless_copied(orphans)
        deleted = []
        if orphans:
            # Collected now when past the grace period; a younger one (a writer may have
            # just kept it for a version it is about to record) is let go of, and goes with
            # a later purge. With no grace, only the writer's staged copy would stand
            # between a crash and that version's content.
            await self.let_go(orphans)
            deleted = await self.collect(orphans)
        deleted += await self.collect_orphans()
        await self.backend.tidy()
        return PurgeReport(purged, len(deleted))

    async def _take_back_the_present(self, cutoff: datetime) -> None:
        """The deleted files due for the purge whose path holds a file again, catalogued
        with it as a scan would (:meth:`register` revives them, the file their next
        version): the purge takes the history of files that are gone, not of one put back
        with no scan or watcher since, nor of one recorded deleted by mistake (by a process
        that looked at another folder, say)."""
        due = [
            f
            for f in await self.files_under("", Status.DELETED)
            if f.deleted_at is not None and f.deleted_at < cutoff
        ]
        present = await in_thread(lambda: [f for f in due if self.storage.working_exists(f.file_path)])
        for file in present:
            extra = {"file_id": file.id}
            try:
                await self.register(file.file_path)
            except HoraceError as exc:
                log.error(
                    "purge: a file is at the path of the deleted %s, not catalogued (%s): "
                    "its history is purged",
                    file.file_path,
                    exc.message,
                    extra=extra,
                )
                continue
            log.warning(
                "purge: a file is at the path of %s, deleted at %s: catalogued again as its "
                "next version, its history kept",
                file.file_path,
                file.deleted_at,
                extra=extra,
            )

    async def _unless_copied(self, checksums: Sequence[str]) -> list[str]:
        """*checksums* (contents no version holds any more, about to be collected) but those
        an uncatalogued file under files/ still holds. Such files are catalogued
        (:meth:`_take_in_copies`); the content of one that cannot be (being written, hard
        linked, ...) is kept as a stray: its object dated now and its released mark
        dropped, so the collector keeps it a retention long and then looks for copies of
        it again; fsck lists it meanwhile. (A content catalogued again loses its mark too.)"""
        if not checksums:
            return []
        staying = await self._take_in_copies(checksums)
        if staying:
            await in_thread(self.storage.keep_as_stray, staying)
        return [c for c in checksums if c not in staying]

    async def _take_in_copies(self, checksums: Sequence[str]) -> set[str]:
        """Catalog the files under files/ that hold one of *checksums*, content the catalog
        is letting go of, and that nobody catalogued: a copy registered as a duplicate of a
        file since deleted and purged, with no scan or watcher to take it in meanwhile,
        would be the only place left of its content, unversioned. Only untracked files of
        those contents' sizes are read. Returns the contents that must stay: those of the
        copies catalogued now, and of those that could not be, and, should a file of such a
        size not be readable now, every content of that size."""

        def sizes() -> dict[str, int]:
            found = {}
            for checksum in checksums:
                with contextlib.suppress(OSError):  # gone already: nothing to match
                    size = self.storage.object_size(checksum)
                    if size is not None:
                        found[checksum] = size
            return found

        size_of = await in_thread(sizes)
        found = await in_thread(self.storage.walk_stats, None, [], check_cancelled)
        catalogued = {e.file_path for e in await self.backend.working_index()}
        wanted_sizes = set(size_of.values())
        candidates = [
            (rel, st.st_size) for rel, st in found if rel not in catalogued and st.st_size in wanted_sizes
        ]
        if not candidates:
            return set()
        hashed = await self._in_threads(self.storage.hash_many, [rel for rel, _ in candidates], None)
        copies: dict[str, str] = {}
        staying: set[str] = set()  # contents that must stay
        unread: set[int] = set()  # sizes of candidates that could not be read
        for (rel, size), outcome in zip(candidates, hashed, strict=True):
            checksum = outcome.checksum if isinstance(outcome, Hashed) else None
            if checksum is None:  # not catalogable (hard links, ...), or being written
                checksum = await in_thread(self.storage.checksum_of_any, rel)
                if checksum is None:
                    unread.add(size)
                elif checksum in size_of:
                    staying.add(checksum)
            elif checksum in size_of:
                copies[rel] = checksum
        for batch in _slices(list(copies), SCAN_COMMIT_GROUP):
            taken = await self.register_new(batch)
            for file in taken.registered:
                log.info("purge: catalogued %s, the last copy of a purged file's content", file.file_path)
                staying.add(file.checksum)  # (referred to again)
            for rel, exc in taken.failed:
                log.warning("purge: kept the content of %s, not catalogued: %s", rel, exc.message)
                staying.add(copies[rel])
        return staying | {checksum for checksum, size in size_of.items() if size in unread}

    async def collect_orphans(self) -> list[str]:
        """Collect the objects no version row refers to that are older than the deleted
        files' retention (``CatalogPolicy.deleted_retention``).

        The catalog lets go of the objects of the versions it purges (at once, by
        :meth:`purge`) or prunes (marked released by :meth:`let_go`, collected here once
        past the grace period). Any other object without a row (a crash between
        an object's rename and its commit, a copy a scan kept for a file another writer
        took first; or a version made after the backup a catalog was restored from) is
        kept that long: fsck lists it meanwhile. Only a catalog that owns its store
        (``horace.binding``) gets here.
        """
        await self.ensure_bound()
        released = await in_thread(self.storage.released_marks)
        now = time.time()
        objects = await in_thread(lambda: list(self.storage.walk_objects()))
        due = [
            name
            for name, st in objects
            if self.collectable(st.st_mtime, released_since(released, name, st.st_mtime), now)
        ]
        unreferenced: list[str] = []
        for chunk in _slices(due, SCAN_BATCH):
            unreferenced += await self.backend.unreferenced(chunk)
        collected: list[str] = []
        for chunk in _slices(await self._unless_copied(unreferenced), SCAN_BATCH):
            collected += await self.collect(chunk)
        # A pack goes whole, once no version row refers to any of its entries and each
        # is past the time collectable() gives it.
        packed: set[str] = set()
        dead: list[tuple[str, list[str]]] = []
        for name, st, entries in await in_thread(lambda: list(self.storage.walk_packs())):
            if entries is None:
                continue  # damaged: fsck says so, and nothing takes it
            packed.update(entries)
            due_all = all(
                self.collectable(st.st_mtime, released_since(released, c, st.st_mtime), now) for c in entries
            )
            if due_all and await self.none_referenced(list(entries)):
                dead.append((name, list(entries)))
        if dead:
            free = set(await self._unless_copied([c for _, held in dead for c in held]))
            for name, held in dead:
                if free.issuperset(held):
                    collected += await self._collect_pack(name, held)
        # The marks of objects gone meanwhile (collected by another process), and the stale
        # marks of objects kept again since: dropped.
        stale = {
            name
            for name, st in objects
            if name in released and not released_since(released, name, st.st_mtime)
        }
        gone = released.keys() - {name for name, _ in objects} - packed
        await in_thread(self.storage.unmark_released, gone | stale)
        return collected

    async def _collect_pack(self, name: str, entries: list[str]) -> list[str]:
        """Collect a pack none of whose entries a version row refers to: moved aside
        first, and put back as :meth:`collect` puts back an object."""
        await self.ensure_bound()
        with trio.CancelScope(shield=True):
            aside = await in_thread(self.storage.quarantine_pack, name, self.policy.gc_grace_seconds)
            if aside is None:
                return []
            if await self.none_referenced(entries):
                await in_thread(self.storage.discard_pack_aside, aside, entries)
                log.info("collected pack %s (%d objects)", name, len(entries))
                return sorted(entries)
            await in_thread(self.storage.unquarantine_pack, aside, name)
        return []

    async def none_referenced(self, checksums: Sequence[str]) -> bool:
        """Does no version row refer to any of *checksums*?"""
        for chunk in _slices(checksums, SCAN_BATCH):
            if len(await self.backend.unreferenced(chunk)) < len(chunk):
                return False
        return True

    def collectable(
        self, written: float, released: bool, now: float, *, forget_adopted: bool = False
    ) -> bool:
        """May an object no version row refers to, *written* at that time, be collected?
        One the catalog let go of (*released*) once past the grace period; any other once
        past the deleted files' retention too; never one written before this catalog was
        bound to the store (:meth:`predates_binding`), unless *forget_adopted*."""
        if self.predates_binding(written) and not forget_adopted:
            return False
        grace = self.policy.gc_grace_seconds
        age = now - written
        return age >= (grace if released else max(grace, self.policy.deleted_retention.total_seconds()))

    def predates_binding(self, written: float) -> bool:
        """Was an object written before this catalog was bound to the store (the catalog's
        own record of it, which an adoption sets)? In a catalog made with its store there
        is none. In an adopted one, such an object is the lost catalog's history, or that
        of versions newer than the dump adopted: no row of this catalog refers to it, and
        it is kept for good (`horace fsck --repair --forget-adopted` collects it)."""
        return self.bound_at is not None and written < self.bound_at

    async def let_go(self, checksums: Sequence[str], correlation_id: str | None = None) -> None:
        """The objects of versions retention pruned (or of rows that were not inserted: the
        catalog's disk full, its connection cut): marked released, never collected at
        once. The periodic purge collects them once past the grace period, after it has
        catalogued the uncatalogued files under files/ holding such content (a copy
        registered as a duplicate of the pruned version's file): one walk of files/ a purge,
        not one for each version made. Shielded: the rows are gone already, and unmarked
        content would wait out the deleted files' retention. A mark that cannot be written
        (a full disk) fails nothing: the change it follows stands, committed, and those
        objects wait for the orphan collection instead, a retention long."""
        try:
            with trio.CancelScope(shield=True):
                await in_thread(self.storage.mark_released, checksums)
        except OSError as exc:
            log.warning(
                "%d objects no version refers to any more are left to the orphan collection "
                "(kept a retention long): their release could not be marked: %s",
                len(checksums),
                exc,
                extra={"correlation_id": correlation_id},
            )

    async def collect(self, checksums: Sequence[str], grace_seconds: float | None = None) -> list[str]:
        """Delete the objects among *checksums* that no version row refers to.

        Each is moved aside first and put back if it is fresh (a writer may be about to
        commit a row for it) or if a row refers to it by the time we look. One a row refers
        to already is never moved: the caller's list may be older than that row (an fsck's,
        with a writer beside it), and while aside the object is missing to every reader.
        """
        grace = self.policy.gc_grace_seconds if grace_seconds is None else grace_seconds
        await self.ensure_bound()
        unreferenced: set[str] = set()
        for chunk in _slices(checksums, SCAN_BATCH):
            unreferenced.update(await self.backend.unreferenced(chunk))
        with trio.CancelScope(shield=True):
            aside = []
            in_packs = []
            for checksum in checksums:
                if checksum not in unreferenced:
                    continue
                moved = await in_thread(self.storage.quarantine, checksum, grace)
                if moved is not None:
                    aside.append((checksum, moved))
                elif await in_thread(self.storage.only_in_a_pack, checksum):
                    in_packs.append(checksum)
            # Kept in a pack, which goes whole once none of its entries is referred to
            # (collect_orphans): let go of, so that a grace period is all it waits.
            if in_packs:
                await in_thread(self.storage.mark_released, in_packs)
            if not aside:
                return []
            free = set(await self.backend.unreferenced([c for c, _ in aside]))
            for checksum, moved in aside:
                if checksum in free:
                    await in_thread(self.storage.discard_aside, moved, checksum)
                else:
                    await in_thread(self.storage.unquarantine, moved, checksum)
        return sorted(free)


# -- small helpers -----------------------------------------------------------------------


def _say_if_pruned_at_once(
    file_path: str, pruned: int, retention: Retention, correlation_id: str | None
) -> None:
    """One version prunes one (two past a restore): more at once is a count lower than the
    one the file's history was kept with, a command run without the deployment's
    settings, say. Said, as a warning (a CLI command prints it)."""
    if pruned > 2 and not retention.min_age_seconds:
        log.warning(
            "%s: %d older versions' content pruned at once: HORACE_VERSION_COUNT is %d here; "
            "was this store run with a higher count? (give every instance and command the same)",
            file_path,
            pruned,
            retention.keep,
            extra={"correlation_id": correlation_id},
        )


def _parts_in_common(a: Sequence[str], b: Sequence[str]) -> int:
    """How many path parts *a* and *b* share from their start."""
    same = itertools.takewhile(lambda pair: pair[0] == pair[1], zip(a, b, strict=False))
    return sum(1 for _ in same)


class _ScanTally:
    """What a scan found so far, and its progress."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.progress = progress
        self.done = 0
        self.registered = self.versioned = self.unchanged = self.duplicates = 0
        self.errors: list[str] = []
        self.gone: list[str] = []  # found by the walk, gone before they were read

    def failed(self, rel: str, exc: HoraceError) -> None:
        """*rel* was not taken. A file removed since the walk found it is no failure of
        the scan's (its owner removed it): it is told apart, not counted an error."""
        if exc.code is ErrorCode.FILE_NOT_FOUND:
            self.gone.append(rel)
        else:
            self.errors.append(f"{quoted(rel)}: {exc.message}")

    def count(self, version_created: bool) -> None:
        if version_created:
            self.versioned += 1
        else:
            self.unchanged += 1

    def advance(self, files: int) -> None:
        self.done += files
        if self.progress and files:
            self.progress(self.done, self.total)

    def report(self, skipped: Sequence[str], missing: Sequence[str] = ()) -> ScanReport:
        return ScanReport(
            self.total,
            self.registered,
            self.versioned,
            self.unchanged,
            self.duplicates,
            tuple(self.errors),
            tuple(skipped),
            tuple(missing),
        )


def _thread_slices(items: list[T], total_bytes: int | None) -> list[list[T]]:
    """*items* (files to copy or hash) in contiguous slices, one a worker thread. A slice
    holds at least MIN_PER_THREAD files and, when the batch's size is known, at least
    BYTES_PER_THREAD bytes: for small files the work is Python and system calls in the
    same folders, which a second thread only contends for (a first scan of 10,000 files
    of 4 KiB on tmpfs: 2.0-2.3 s on one thread, 2.6-3.3 s on two), while the hashing and
    copying of large ones (which release the GIL) gain from every core (2,000 files of
    256 KiB: 1.24-1.29 s on one, 0.88-1.15 s on two)."""
    threads = WORKER_THREADS
    if total_bytes is not None:
        threads = max(1, min(WORKER_THREADS, total_bytes // BYTES_PER_THREAD))
    return _slices(items, max(MIN_PER_THREAD, -(-len(items) // threads)))


def _recorded_bytes(entries: Sequence[IndexEntry]) -> int | None:
    """The bytes catalogued files held when last read (None if one is not known)."""
    total = 0
    for entry in entries:
        if entry.working is None:
            return None
        total += entry.working.size
    return total


def _slices(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _entry(file: FileRecord, working: WorkingStat) -> IndexEntry:
    return IndexEntry(file.id, file.file_path, file.checksum, file.status, file.current_version, working)


LOGGED_SCAN_ERRORS = 10  # the files a scan could not take named in the log, one a line


def outage_error(exc: BaseException) -> HoraceError | None:
    """What a caller is told of a failure of the database or the disk under its call (their
    state, no bug of Horace's): the tool error's code and message; None for anything else."""
    if isinstance(exc, BackendUnavailable):
        return HoraceError(ErrorCode.BACKEND_UNAVAILABLE, f"the catalog database is unavailable: {exc}")
    if isinstance(exc, DatabaseFull):
        return HoraceError(ErrorCode.STORAGE_FULL, str(exc))
    if isinstance(exc, CatalogUnwritable):  # (a privilege refused: the operator's to mend)
        return HoraceError(ErrorCode.BACKEND_UNAVAILABLE, f"the catalog database refuses to serve: {exc}")
    if isinstance(exc, CatalogDamaged):
        return HoraceError(ErrorCode.STORAGE_ERROR, str(exc))
    return storage_full(exc)  # met outside the storage's own calls (no inode left, say)


def _kept_first(exc: Exception, file: FileRecord) -> HoraceError | None:
    """An update that versioned the working copy's new content (one commit) and then
    failed to change the record (another) did not change nothing, as its error's code
    alone would say: the same code, saying what was kept. None for a failure that is no
    outage of the database or the disk (a bug, raised as it is)."""
    return _saying_what_was_kept(
        exc,
        f"the working copy's new content was kept first, as version {file.current_version}; the "
        "rest of this update was not applied: try it again",
    )


def _kept_by_scan(exc: Exception, tally: _ScanTally) -> HoraceError | None:
    """A scan stopped by an outage of the database or the disk, after it had committed
    some of its work (it commits as it goes): the same code, saying what was kept. None
    for anything else, or when nothing was committed."""
    if not (tally.registered or tally.versioned):
        return None
    return _saying_what_was_kept(
        exc,
        f"before it stopped, this scan registered {tally.registered} and versioned "
        f"{tally.versioned} files, which are kept: run it again to take the rest",
    )


def _saying_what_was_kept(exc: Exception, kept: str) -> HoraceError | None:
    """*exc*, an outage (:func:`outage_error`) or a tool error met after a commit, as the
    same tool error saying *kept*; None for anything else."""
    refused = exc if isinstance(exc, HoraceError) else outage_error(exc)
    return None if refused is None else HoraceError(refused.code, f"{refused.message}; {kept}")


def new_file_id(at: datetime) -> str:
    """A new file's id: a UUID of version 7 (RFC 9562), whose first 48 bits are *at* in
    Unix milliseconds and the other 74 random. Ids made one after the other sort
    together, so the catalog's indexes of file ids grow at one end rather than all over
    (a first scan of 10,000 files inserted its rows in 0.34 s with random ids, 0.28 s
    with these); two files registered in one millisecond still differ by 74 random bits."""
    millis = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    rand_a, rand_b = divmod(int.from_bytes(os.urandom(10), "big") & ((1 << 74) - 1), 1 << 62)
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


def _new_record(
    rel: str,
    staged: Staged,
    mime_type: str,
    now: datetime,
    correlation_id: str | None,
    new: NewFile = NewFile(),
) -> FileRecord:
    """The record of a file registered now, at version 1."""
    return FileRecord(
        id=new_file_id(now),
        file_path=rel,
        owner=new.owner or _owner_from_path(rel),
        purpose=new.purpose,
        tags=_clean_tags(new.tags),
        size=staged.size,
        mime_type=mime_type,
        checksum=staged.checksum,
        status=Status.ACTIVE,
        current_version=1,
        correlation_id=correlation_id,
        created_at=now,
        updated_at=now,
        deleted_at=None,
        metadata=dict(new.custom),
    )


def _owner_from_path(rel: str) -> str | None:
    first = rel.split("/", 1)[0]
    return first if first in paths.COMPONENT_FOLDERS and "/" in rel else None


def _clean_tags(tags: Sequence[str]) -> tuple[str, ...]:
    cleaned = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "a tag must have a character other than blanks")
        if len(tag.strip()) > MAX_LABEL_CHARS:
            why = f"a tag is at most {MAX_LABEL_CHARS} characters (one has {len(tag.strip())})"
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, why)
        cleaned.append(tag.strip())
    return tuple(dict.fromkeys(cleaned))


def _check_labels(owner: str | None, tags: Sequence[str] | None, collection: str | None) -> None:
    """Refuse what a caller says of a file that the catalog could not index."""
    _check_owner(owner)
    if tags is not None:
        _clean_tags(tags)
    if collection is not None:
        _check_name(collection)


def _check_owner(owner: str | None) -> None:
    if owner is not None and len(owner) > MAX_LABEL_CHARS:
        why = f"an owner is at most {MAX_LABEL_CHARS} characters (this one has {len(owner)})"
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, why)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_LABEL_CHARS or "\x00" in name:
        why = f"a collection name is 1 to {MAX_LABEL_CHARS} characters, not blank, no NUL"
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, why)


def _literal_glob(text: str) -> str:
    """A glob matching *text* only: each of its wildcard characters in brackets."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _bounded(limit: int, what: str, top: int = 1000) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"{what} must be a positive integer")
    return min(limit, top)


def _offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "offset must be a non-negative integer")
    return offset


def _query_fingerprint(query: SearchQuery, store_id: str | None) -> str:
    """The search's filters (and the store's identity: a cursor of another store's
    catalog is no position in this one), hashed."""
    filters = attrs.asdict(attrs.evolve(query, limit=0, offset=0, after=None), value_serializer=_jsonable)
    text = json.dumps({"store": store_id, "filters": filters}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(_inst: Any, _field: Any, value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _sort_value(query: SearchQuery, record: FileRecord) -> Any:
    match query.sort_by:
        case SortKey.CREATED_AT:
            return record.created_at.isoformat()
        case SortKey.UPDATED_AT:
            return record.updated_at.isoformat()
        case SortKey.SIZE:
            return record.size
        case SortKey.PATH:
            return record.file_path


def _encode_cursor(query: SearchQuery, last: FileRecord, store_id: str | None) -> str:
    payload = {"q": _query_fingerprint(query, store_id), "v": _sort_value(query, last), "id": last.id}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, query: SearchQuery, store_id: str | None) -> tuple[Any, str]:
    """The position a cursor of :func:`_encode_cursor` holds. A cursor is the client's to
    keep and send back, so it is read as any argument is: whatever it holds that this
    search could not have put there is refused, never used."""
    unusable = HoraceError(ErrorCode.INVALID_ARGUMENT, "the cursor is not one this server issued")
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        fingerprint, value, last_id = payload["q"], payload["v"], payload["id"]
    except (ValueError, KeyError, TypeError):
        raise unusable from None
    if fingerprint != _query_fingerprint(query, store_id):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "the cursor belongs to a different search")
    try:
        last_id = str(uuid.UUID(last_id))  # (a file's id: anything else matches no row)
        match query.sort_by:
            case SortKey.CREATED_AT | SortKey.UPDATED_AT:
                value = datetime.fromisoformat(value)
                if value.tzinfo is None:
                    raise ValueError("a moment without a zone")
                value = value.astimezone(UTC)  # (one no catalog holds overflows: 0001-01-01+02:00)
            case SortKey.SIZE:
                if type(value) is not int or not 0 <= value < 1 << 63:
                    raise ValueError("not a size")
            case SortKey.PATH:
                if not isinstance(value, str) or "\x00" in value:
                    raise ValueError("not a path")
                value.encode("utf-8")  # (a lone surrogate: no path of a catalogued file)
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise unusable from None
    return value, last_id
