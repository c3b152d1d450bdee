"""The catalog operations: the one place where disk and database meet.

Every write follows the same shape, inside the caller's cancel scope:

    lock (Trio lock -> fcntl -> backend advisory lock)
      -> stage: copy + hash into .horace/tmp        (cancellable, temp removed on the way out)
      -> shielded: rename into objects/ + commit     (all or nothing)

so a cancelled call leaves either the whole version or nothing. Objects are never
deleted inline with a commit; pruned content goes through :meth:`Catalog.collect`, which
re-checks references under the storage's grace-period protocol.

The server, the CLI and the watcher are thin edges over this class.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
from attrs import frozen

from horace import mime, paths
from horace.backends.protocol import Backend, Units
from horace.locks import FileLocks, lock_key
from horace.model import (
    Collection,
    DuplicateGroup,
    ErrorCode,
    FileChanges,
    FileRecord,
    HoraceError,
    NewFile,
    NewVersion,
    Retention,
    SearchPage,
    SearchQuery,
    SortKey,
    Status,
    VersionRecord,
)
from horace.storage import FileIdentity, Staged, Storage

log = logging.getLogger("horace.catalog")
T = TypeVar("T")
Progress = Callable[[int, int], None]
SCAN_BATCH = 256


def utcnow() -> datetime:
    return datetime.now(UTC)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking disk work in a worker thread.

    The thread is never abandoned: a cancelled call waits for it, and long copies
    notice the cancellation themselves through ``trio.from_thread.check_cancelled``.
    """
    return await trio.to_thread.run_sync(fn, *args)


def _check_cancelled() -> None:
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
class FileInfo:
    file: FileRecord
    versions: tuple[VersionRecord, ...] | None
    collections: tuple[str, ...] = ()


@frozen
class Problem:
    kind: str  # missing_object, checksum_mismatch, working_modified, working_missing
    file_id: str
    file_path: str
    version: int | None
    detail: str


@frozen
class VerifyReport:
    files_checked: int
    objects_checked: int
    problems: tuple[Problem, ...]


@frozen
class ScanReport:
    scanned: int
    registered: int
    versioned: int
    unchanged: int
    duplicates: int
    errors: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # names that can never be catalogued, each with why


@frozen
class NewFiles:
    registered: tuple[FileRecord, ...]
    skipped: tuple[str, ...]  # content catalogued already, or the path taken meanwhile
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
    deleted_retention: timedelta = timedelta(days=30)
    # What a caller says of a file (owner, purpose, tags, custom fields) or a collection
    # (description, metadata), as JSON. Written once, it is read back a thousand times a
    # page: unbounded, one search could build gigabytes.
    max_metadata_bytes: int = 16 * 1024


class Catalog:
    def __init__(
        self,
        storage: Storage,
        backend: Backend,
        locks: FileLocks,
        policy: CatalogPolicy = CatalogPolicy(),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.storage = storage
        self.backend = backend
        self.locks = locks
        self.policy = policy
        self.clock = clock

    # -- shared steps -------------------------------------------------------------------

    def relative(self, client_path: str) -> str:
        return paths.to_relative(self.storage.files, client_path)

    def _check_described(self, what: str, description: dict[str, Any]) -> None:
        size = len(json.dumps(description, default=str))
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

    async def _stage(self, rel: str) -> Staged:
        return await in_thread(self.storage.stage, rel, _check_cancelled)

    async def _file(self, file_id: str, db: Units | None = None) -> FileRecord:
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
    ) -> tuple[FileRecord, VersionRecord]:
        """Shielded: make *staged* an object (when given) and record the version."""
        with trio.CancelScope(shield=True):
            if staged is not None:
                await in_thread(self.storage.keep, staged)
            record, version, orphans = await db.add_version(
                file.id,
                new,
                self.clock(),
                correlation_id,
                self.policy.retention,
                status.value if status else None,
            )
        if orphans:
            await self.collect(orphans)
        return record, version

    async def _version_working_copy(
        self, db: Units, file: FileRecord, correlation_id: str | None, status: Status | None = None
    ) -> tuple[FileRecord, VersionRecord | None, FileIdentity | None]:
        """Keep the working file as a new version when it differs from the current one;
        also say which file that was (for a later replace to check against)."""
        staged = await self._stage(file.file_path)
        try:
            record, version = await self._version_staged(db, file, staged, correlation_id, status)
            return record, version, staged.source
        finally:
            self.storage.discard(staged)

    async def _version_staged(
        self,
        db: Units,
        file: FileRecord,
        staged: Staged,
        correlation_id: str | None,
        status: Status | None = None,
    ) -> tuple[FileRecord, VersionRecord | None]:
        if staged.checksum == file.checksum:
            return file, None
        new = NewVersion(staged.checksum, staged.size, mime.detect(file.file_path, staged.head))
        return await self._commit_version(db, file, new, correlation_id, staged, status)

    async def _version_held(
        self, db: Units, file: FileRecord, held: Path, correlation_id: str | None
    ) -> tuple[FileRecord, VersionRecord | None]:
        """Version a working file moved out of files/, then let it go. Shielded: the file
        has left files/ already, and its content must not be dropped half-way. Should
        versioning fail, the held file stays for fsck to put back."""
        with trio.CancelScope(shield=True):
            try:
                staged = await in_thread(self.storage.stage_held, held)
                try:
                    done = await self._version_staged(db, file, staged, correlation_id)
                finally:
                    self.storage.discard(staged)
            except BaseException:
                # Not versioned (a full disk, say): the file goes back where it was, or
                # beside it when its name is taken meanwhile.
                await in_thread(self.storage.put_back, held, file.file_path)
                raise
            await in_thread(self.storage.release_held, held)
        return done

    # -- register -----------------------------------------------------------------------

    async def register(
        self, client_path: str, new: NewFile = NewFile(), correlation_id: str | None = None
    ) -> Registered:
        rel = self.relative(client_path)
        self._check_described(
            "the file's metadata",
            {"owner": new.owner, "purpose": new.purpose, "tags": new.tags, "custom": dict(new.custom)},
        )
        async with self.writing(rel) as db:
            existing = await db.file_by_path(rel)
            if existing is not None:
                return await self._reregister(db, existing, correlation_id)
            staged = await self._stage(rel)
            try:
                duplicate = await db.file_by_checksum(staged.checksum)
                if duplicate is not None:
                    return Registered(duplicate, duplicate=True, version_created=False)
                now = self.clock()
                record = _new_record(rel, staged, mime.detect(rel, staged.head), now, correlation_id, new)
                with trio.CancelScope(shield=True):
                    await in_thread(self.storage.keep, staged)
                    inserted = await db.insert_files([record], new.collection)
            finally:
                self.storage.discard(staged)
            if inserted:
                return Registered(inserted[0], duplicate=False, version_created=True)
            # Another host registered this path or content between our look-up and insert.
            raced = await db.file_by_path(rel) or await db.file_by_checksum(record.checksum)
            if raced is None:
                raise HoraceError(ErrorCode.INTERNAL, f"could not register {rel!r}")
            return Registered(raced, duplicate=raced.file_path != rel, version_created=False)

    async def _reregister(self, db: Units, existing: FileRecord, correlation_id: str | None) -> Registered:
        # A catalogued path: version its content if it changed; a deleted or archived
        # file whose working copy is back becomes active again.
        revive = Status.ACTIVE if existing.status is not Status.ACTIVE else None
        record, version, _ = await self._version_working_copy(db, existing, correlation_id, revive)
        if version is None and revive is not None:
            revived = await db.update_file(existing.id, FileChanges(status=revive), self.clock())
            assert revived is not None
            record = revived
        return Registered(record, duplicate=False, version_created=version is not None)

    # -- reading ------------------------------------------------------------------------

    async def resolve(self, ref: str) -> FileRecord:
        """A file by id, or by path when *ref* is not a catalogued id."""
        found = await self.backend.file_by_id(ref)
        if found is None:
            found = await self.backend.file_by_path(self.relative(ref))
        if found is None:
            raise HoraceError(ErrorCode.NOT_CATALOGED, f"{ref!r} is not catalogued")
        return found

    async def get_info(
        self, *, file_id: str | None = None, file_path: str | None = None, include_versions: bool = False
    ) -> FileInfo:
        if file_id:
            record = await self._file(file_id)
        elif file_path is not None:  # an empty path is an invalid path, not a missing one
            rel = self.relative(file_path)
            found = await self.backend.file_by_path(rel)
            if found is None:
                raise HoraceError(ErrorCode.NOT_CATALOGED, f"{rel!r} is not catalogued")
            record = found
        else:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "give file_id or file_path")
        versions = tuple(await self.backend.versions(record.id)) if include_versions else None
        return FileInfo(record, versions)

    async def search(self, query: SearchQuery, cursor: str | None = None) -> SearchPage:
        if cursor:
            query = attrs.evolve(query, after=_decode_cursor(cursor, query), offset=0)
        total, rows = await self.backend.search(query)
        next_cursor = None
        if len(rows) == query.limit and rows:
            next_cursor = _encode_cursor(query, rows[-1])
        return SearchPage(total, tuple(rows), query.limit, query.offset, next_cursor)

    async def find_duplicates(self, limit: int = 100) -> list[DuplicateGroup]:
        return await self.backend.find_duplicates(_bounded(limit, "limit"))

    # -- update, restore, lifecycle -----------------------------------------------------

    async def update(
        self,
        file_id: str,
        changes: FileChanges,
        *,
        check_for_changes: bool = True,
        correlation_id: str | None = None,
    ) -> Updated:
        before = await self._file(file_id)
        if changes.tags is not None:
            changes = attrs.evolve(changes, tags=_clean_tags(changes.tags))
        async with self.writing(before.file_path) as db:
            current = await self._file(file_id, db)
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
            if current.status is Status.ACTIVE and target is not None:
                # The working copy leaves files/: moved out first, then versioned, so the
                # version kept is exactly the content removed (whatever the flag says).
                current, version_created = await self._take_working_copy(db, current, correlation_id)
            elif current.status is Status.ACTIVE and check_for_changes:
                if await in_thread(self.storage.working_exists, current.file_path):
                    current, version, _ = await self._version_working_copy(db, current, correlation_id)
                    version_created = version is not None
            elif target is Status.ACTIVE:
                version_created = await self._bring_back(db, current, correlation_id)
            with trio.CancelScope(shield=True):
                updated = await db.update_file(file_id, changes, self.clock())
            if updated is None:
                raise HoraceError(ErrorCode.NOT_CATALOGED, f"{file_id!r} vanished")
        changed = tuple(
            name
            for name in ("owner", "purpose", "tags", "status", "metadata", "checksum", "current_version")
            if getattr(before, name) != getattr(updated, name)
        ) + (("collection",) if changes.collection else ())
        return Updated(updated, changed, version_created)

    async def _take_working_copy(
        self, db: Units, file: FileRecord, correlation_id: str | None
    ) -> tuple[FileRecord, bool]:
        held = await in_thread(self.storage.take_working, file.file_path, file.id)
        if held is None:
            return file, False  # already gone: its last content is the current version
        record, version = await self._version_held(db, file, held, correlation_id)
        return record, version is not None

    async def _bring_back(self, db: Units, file: FileRecord, correlation_id: str | None) -> bool:
        """Back to active: the working copy is written again from the current version,
        unless one is there (it came back on its own): then that is versioned."""
        if not await in_thread(self.storage.working_exists, file.file_path):
            await self._verified_object(file.checksum, file.file_path)
            written = await in_thread(
                self.storage.create_working, file.file_path, file.checksum, file.id, _check_cancelled
            )
            if written:
                return False
        _, version, _ = await self._version_working_copy(db, file, correlation_id)
        return version is not None

    async def delete(self, file_id: str, correlation_id: str | None = None) -> Updated:
        """Soft delete; a file deleted already stays as it is (and is answered as such)."""
        return await self.update(file_id, FileChanges(status=Status.DELETED), correlation_id=correlation_id)

    async def undelete(self, file_id: str, correlation_id: str | None = None) -> Updated:
        """Back to active; an active file stays as it is. An archived file is not deleted:
        it comes back with an update to status active."""
        file = await self._file(file_id)
        if file.status is Status.ARCHIVED:
            raise HoraceError(
                ErrorCode.INVALID_ARGUMENT,
                f"{file.file_path!r} is archived, not deleted: update its status to active instead",
            )
        return await self.update(file_id, FileChanges(status=Status.ACTIVE), correlation_id=correlation_id)

    async def _verified_object(self, checksum: str, what: str) -> None:
        found = await in_thread(self.storage.hash_object, checksum, _check_cancelled)
        if found is None:
            raise HoraceError(
                ErrorCode.CHECKSUM_MISMATCH, f"the content of {what} is missing from the object store"
            )
        if found[0] != checksum:
            raise HoraceError(ErrorCode.CHECKSUM_MISMATCH, f"the stored content of {what} is corrupt")

    async def restore(self, file_id: str, version: int, correlation_id: str | None = None) -> Restored:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "version must be a positive integer")
        before = await self._file(file_id)
        async with self.writing(before.file_path) as db:
            current = await self._file(file_id, db)
            if current.status is not Status.ACTIVE:
                raise HoraceError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{current.file_path!r} is {current.status.value}: make it active before restoring",
                )
            wanted = await db.version(file_id, version)
            if wanted is None:
                raise HoraceError(
                    ErrorCode.VERSION_NOT_FOUND, f"{current.file_path!r} has no version {version}"
                )
            await self._verified_object(wanted.checksum, f"version {version} of {current.file_path!r}")
            preserved = None
            examined: FileIdentity | None = None
            if await in_thread(self.storage.working_exists, current.file_path):
                current, kept, examined = await self._version_working_copy(db, current, correlation_id)
                preserved = kept.version if kept else None
            displaced = await in_thread(
                self.storage.replace_working,
                current.file_path,
                wanted.checksum,
                current.id,
                examined,
                _check_cancelled,
            )
            # The working file holds version N now: what follows is recorded whatever happens.
            with trio.CancelScope(shield=True):
                if displaced is not None:
                    # A writer replaced the file after it was versioned: keep that too.
                    current, _ = await self._version_held(db, current, displaced, correlation_id)
                new = NewVersion(
                    wanted.checksum, wanted.size, current.mime_type, restored_from_version=version
                )
                record, restored = await self._commit_version(db, current, new, correlation_id)
        return Restored(record, restored, preserved)

    # -- collections --------------------------------------------------------------------

    async def _existing_ids(self, file_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(file_ids))
        missing = await self.backend.missing_file_ids(ids)
        if missing:
            raise HoraceError(ErrorCode.NOT_CATALOGED, f"not catalogued: {', '.join(missing)}")
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
        found = await self.backend.remove_members(name, list(file_ids), self.clock())
        if found is None:
            raise HoraceError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection {name!r}")
        return found

    async def delete_collection(self, name: str) -> None:
        if not await self.backend.delete_collection(name):
            raise HoraceError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection {name!r}")

    # -- verify, scan, purge, collect ---------------------------------------------------

    async def verify(self, file_id: str | None = None, progress: Progress | None = None) -> VerifyReport:
        """Re-hash objects and working files; report what does not match."""
        if file_id:
            files = [await self._file(file_id)]
            versions = list(await self.backend.versions(file_id))
        else:
            files = await self.backend.all_files()
            versions = await self.backend.all_versions()
        by_id = {f.id: f for f in files}
        problems: list[Problem] = []
        hashed: dict[str, tuple[str, int] | None] = {}
        total = len(versions) + len(files)
        for done, v in enumerate(versions, 1):
            if v.checksum not in hashed:
                hashed[v.checksum] = await in_thread(self.storage.hash_object, v.checksum, _check_cancelled)
            found = hashed[v.checksum]
            path = by_id[v.file_id].file_path if v.file_id in by_id else "?"
            if found is None:
                problems.append(
                    Problem("missing_object", v.file_id, path, v.version, f"object {v.checksum} is missing")
                )
            elif found[0] != v.checksum:
                problems.append(
                    Problem(
                        "checksum_mismatch",
                        v.file_id,
                        path,
                        v.version,
                        f"object {v.checksum} hashes to {found[0]}",
                    )
                )
            if progress:
                progress(done, total)
        for done, f in enumerate(files, len(versions) + 1):
            if f.status is Status.ACTIVE:
                try:
                    digest = await in_thread(self.storage.hash_working, f.file_path, _check_cancelled)
                except HoraceError:
                    problems.append(
                        Problem("working_missing", f.id, f.file_path, None, "the working copy is missing")
                    )
                else:
                    if digest != f.checksum:
                        problems.append(
                            Problem(
                                "working_modified",
                                f.id,
                                f.file_path,
                                None,
                                "the working copy differs from the current version (not yet versioned)",
                            )
                        )
            if progress:
                progress(done, total)
        return VerifyReport(len(files), len(hashed), tuple(problems))

    async def scan(
        self, under: str | None = None, correlation_id: str | None = None, progress: Progress | None = None
    ) -> ScanReport:
        """Register untracked files and version changed ones under files/ (or *under*)."""
        rel_under = self.relative(under) if under is not None else None  # "" is refused
        if rel_under is not None and not (self.storage.files / rel_under).is_dir():
            raise HoraceError(ErrorCode.FILE_NOT_FOUND, f"no folder {rel_under!r} under files/")
        skipped: list[str] = []
        found = await in_thread(lambda: sorted(self.storage.walk_working(rel_under, skipped)))
        for why in skipped:
            log.warning("scan: skipped %s", why, extra={"correlation_id": correlation_id})
        known = {f.file_path: f for f in await self.backend.all_files()}
        counts = {"registered": 0, "versioned": 0, "unchanged": 0, "duplicates": 0}
        errors: list[str] = []
        done = 0
        new_paths = [p for p in found if p not in known]
        for start in range(0, len(new_paths), SCAN_BATCH):
            batch = new_paths[start : start + SCAN_BATCH]
            outcome = await self.register_new(batch, correlation_id)
            counts["registered"] += len(outcome.registered)
            counts["duplicates"] += len(outcome.skipped)
            errors += [f"{rel}: {exc.message}" for rel, exc in outcome.failed]
            done += len(batch)
            if progress:
                progress(done, len(found))
        for rel in (p for p in found if p in known):
            record = known[rel]
            try:
                if record.status is Status.ACTIVE:
                    digest = await in_thread(self.storage.hash_working, rel, _check_cancelled)
                    changed = digest != record.checksum
                else:
                    changed = True  # back in files/: _reregister revives or versions it
                if changed:
                    result = await self.register(rel, correlation_id=correlation_id)
                    counts["versioned" if result.version_created else "unchanged"] += 1
                else:
                    counts["unchanged"] += 1
            except HoraceError as exc:
                errors.append(f"{rel}: {exc.message}")
            done += 1
            if progress:
                progress(done, len(found))
        return ScanReport(len(found), errors=tuple(errors), skipped=tuple(skipped), **counts)

    async def register_new(self, batch: Sequence[str], correlation_id: str | None = None) -> NewFiles:
        """Register files not catalogued yet, in one commit: stage all, one filesystem
        sync, one insert. Paths must be relative to files/ (as the walks give them).

        No per-file lock is needed: nothing but the insert is written, and the unique
        path constraint decides any race with another writer.
        """
        staged: list[tuple[str, Staged]] = []
        types: dict[str, str] = {}
        failed: list[tuple[str, HoraceError]] = []

        def stage_all() -> None:
            for rel in batch:
                try:
                    staged.append((rel, self.storage.stage(rel, _check_cancelled)))
                    types[rel] = mime.detect(rel, staged[-1][1].head)  # here, off the Trio thread
                except HoraceError as exc:
                    failed.append((rel, exc))
                except FileNotFoundError:
                    failed.append((rel, HoraceError(ErrorCode.FILE_NOT_FOUND, f"{rel!r} vanished")))
                except OSError as exc:  # unreadable, say: this file only, never the batch
                    failed.append(
                        (rel, HoraceError(ErrorCode.INVALID_PATH, f"{rel!r}: {exc.strerror or exc}"))
                    )

        try:
            await in_thread(stage_all)
            now = self.clock()
            records = []
            seen: set[str] = set()
            for rel, s in staged:
                if s.checksum in seen:
                    continue  # same content earlier in this batch: a duplicate
                seen.add(s.checksum)
                records.append(_new_record(rel, s, types[rel], now, correlation_id))
            keep = {r.checksum for r in records}
            with trio.CancelScope(shield=True):

                def keep_all() -> None:
                    for _, s in staged:
                        if s.checksum in keep:
                            keep.discard(s.checksum)
                            self.storage.keep(s, durable=False)
                    self.storage.sync()

                await in_thread(keep_all)
                inserted = await self.backend.insert_files(records)
        finally:
            for _, s in staged:
                self.storage.discard(s)
        done = {f.file_path for f in inserted}
        return NewFiles(tuple(inserted), tuple(rel for rel, _ in staged if rel not in done), tuple(failed))

    async def move(self, file_id: str, new_client_path: str, correlation_id: str | None = None) -> FileRecord:
        """A rename seen on disk: the file keeps its id and history under its new path."""
        new_rel = self.relative(new_client_path)
        old = await self._file(file_id)
        async with self.writing(old.file_path) as db:
            moved = await db.move_file(file_id, new_rel, self.clock())
        if moved is None:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"{new_rel!r} is catalogued already")
        log.info(
            "moved %s -> %s",
            old.file_path,
            new_rel,
            extra={"correlation_id": correlation_id, "file_id": file_id},
        )
        # The content may have changed along with the name: version it if so.
        return (await self.register(new_rel, correlation_id=correlation_id)).file

    async def reconcile(
        self, correlation_id: str | None = None, progress: Progress | None = None
    ) -> ReconcileReport:
        """Catch up with what changed while nobody watched: renames (by content),
        new and changed files (a scan), and missing ones (soft-deleted)."""
        missing = [
            f
            for f in await self.backend.all_files()
            if f.status is Status.ACTIVE and not await in_thread(self.storage.working_exists, f.file_path)
        ]
        moved = 0
        if missing:
            by_checksum = {f.checksum: f for f in missing}
            known = {f.file_path for f in await self.backend.all_files()}
            for rel in await in_thread(lambda: sorted(self.storage.walk_working())):
                if rel in known or not by_checksum:
                    continue
                try:
                    digest = await in_thread(self.storage.hash_working, rel, _check_cancelled)
                except HoraceError:
                    continue
                if digest in by_checksum:
                    await self.move(by_checksum.pop(digest).id, rel, correlation_id)
                    moved += 1
            missing = list(by_checksum.values())
        scanned = await self.scan(None, correlation_id, progress)
        for file in missing:
            await self.delete(file.id, correlation_id)
        return ReconcileReport(scanned, moved, len(missing))

    async def purge(self) -> PurgeReport:
        """Remove files deleted longer ago than the retention: rows, then objects; then
        collect any other object no version refers to (once past the grace period)."""
        cutoff = self.clock() - self.policy.deleted_retention
        purged, orphans = await self.backend.purge_deleted(cutoff)
        deleted = await self.collect(orphans, grace_seconds=0.0) if orphans else []
        deleted += await self.collect_orphans()
        return PurgeReport(purged, len(deleted))

    async def collect_orphans(self) -> list[str]:
        """Collect the objects no version row refers to and older than the grace period.

        Only a catalog that owns its store (``horace.binding``) ever gets here.
        """
        grace = self.policy.gc_grace_seconds
        now = time.time()
        on_disk = [
            name
            for name, st in await in_thread(lambda: list(self.storage.walk_objects()))
            if now - st.st_mtime >= grace
        ]
        collected: list[str] = []
        for start in range(0, len(on_disk), SCAN_BATCH):
            chunk = on_disk[start : start + SCAN_BATCH]
            collected += await self.collect(await self.backend.unreferenced(chunk))
        return collected

    async def collect(self, checksums: Sequence[str], grace_seconds: float | None = None) -> list[str]:
        """Delete the objects among *checksums* that no version row refers to.

        Each is moved aside first and put back if it is fresh (a writer may be about to
        commit a row for it) or if a row refers to it by the time we look.
        """
        grace = self.policy.gc_grace_seconds if grace_seconds is None else grace_seconds
        with trio.CancelScope(shield=True):
            aside = []
            for checksum in checksums:
                moved = await in_thread(self.storage.quarantine, checksum, grace)
                if moved is not None:
                    aside.append((checksum, moved))
            if not aside:
                return []
            free = set(await self.backend.unreferenced([c for c, _ in aside]))
            for checksum, moved in aside:
                if checksum in free:
                    moved.unlink(missing_ok=True)
                else:
                    await in_thread(self.storage.unquarantine, moved, checksum)
        return sorted(free)


# -- small helpers -----------------------------------------------------------------------


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
        id=str(uuid.uuid4()),
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
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "tags must be non-empty strings")
        cleaned.append(tag.strip())
    return tuple(dict.fromkeys(cleaned))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "a collection name is 1 to 200 characters, no NUL")


def _bounded(limit: int, what: str, top: int = 1000) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"{what} must be a positive integer")
    return min(limit, top)


def _offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "offset must be a non-negative integer")
    return offset


def _query_fingerprint(query: SearchQuery) -> str:
    filters = attrs.asdict(attrs.evolve(query, limit=0, offset=0, after=None), value_serializer=_jsonable)
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


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


def _encode_cursor(query: SearchQuery, last: FileRecord) -> str:
    payload = {"q": _query_fingerprint(query), "v": _sort_value(query, last), "id": last.id}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, query: SearchQuery) -> tuple[Any, str]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        fingerprint, value, last_id = payload["q"], payload["v"], payload["id"]
    except (ValueError, KeyError, TypeError):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "the cursor is not one this server issued") from None
    if fingerprint != _query_fingerprint(query):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "the cursor belongs to a different search")
    if query.sort_by in (SortKey.CREATED_AT, SortKey.UPDATED_AT):
        value = datetime.fromisoformat(value)
    return value, str(last_id)
