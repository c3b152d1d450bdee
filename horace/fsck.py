"""Checking, and repairing, the invariants between the catalog and the object store.

- every version row has a complete object with the right content;
- the file row agrees with its newest version (current_version, checksum, size);
- every active file has its working copy;
- no object without a version row (kept, and listed, until the deleted files' retention
  has passed: it may be the only copy of a version the catalog lost);
- nothing left in ``.horace/tmp`` by a process that is gone;
- (``horace fsck`` only) the catalog database's own file is whole: SQLite's integrity
  check, every index against its table.

Four strengths, from the CLI's start-up check to the operator's repair:

- every CLI command that writes first runs :func:`leftovers`: only what dead processes
  left in ``.horace/tmp`` (one listing of that folder when there is nothing, whatever
  the size of the store), dealt with as below.
- every other run (at the server's start, periodic, and ``horace fsck``) clears what a crash leaves
  behind in ``.horace/tmp``, judged by what each temp file's name says it holds
  (``storage.TempKind``): copies are removed, an object (or a pack) the collector had moved
  aside goes back, a pack's staged link puts its pack back should the collector have taken
  it before its batch's commit, and a working file caught outside ``files/`` goes back to
  ``files/`` unless its content is safe in a version. File rows are put back in step with their versions.
- nothing automatic deletes an object, a version row or a working file, nor writes a
  working copy back: orphan objects are counted (the collector reclaims them), a file
  gone from ``files/`` is the reconcile's business.
- ``repair=True`` (``horace fsck --repair``) also rebuilds a damaged catalog's indexes,
  writes missing working copies back,
  recovers lost objects from a damaged pack's entries that still read back, then from
  working copies (the file's own, then those of every active file whose current content
  it is), sets a damaged pack aside once no version lacks its content, and hands the
  collector orphan objects older than the deleted files' retention. An old version whose
  content is in none of them is kept and reported (the folder may be a stale copy of the
  store, whose live folder holds it); ``forget_missing=True`` (``--forget-missing``) drops
  its row. A file that cannot be reached (its path now runs through a symlink, say) is an
  ``unreachable`` finding; the others are still repaired.

A live server may be working while fsck runs. A finding about a file is therefore
checked again under the file's write lock (shared with every writer) before it is
reported or repaired, and a temp file whose writer still runs is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from attrs import frozen

from horace import packs
from horace.backends.protocol import Units
from horace.backends.records import FileRecord, NewVersion, Status, VersionRecord
from horace.catalog import Catalog, check_cancelled, in_thread
from horace.model import ErrorCode, HoraceError
from horace.paths import quoted
from horace.storage import (
    STORAGE_ERRNOS,
    Staged,
    Storage,
    TempKind,
    TempName,
    make_private_folder,
    released_since,
)

log = logging.getLogger("horace.fsck")
STALE_TEMP_SECONDS = 3600.0  # another host's temp file counts as dead after this long


@frozen
class Finding:
    kind: str
    detail: str
    repaired: bool
    file_id: str | None = None
    file_path: str | None = None
    subject: str | None = None  # the temp file or object the finding is about

    @property
    def pending(self) -> bool:
        return self.kind in PENDING


GARBAGE = frozenset({"orphan_object"})  # findings that are the collector's work, not damage
# Findings a watcher records in a moment (a working copy removed from a watched store): said,
# but neither damage nor a repair, so that a check run just after a user's `rm` is clean.
PENDING = frozenset({"removal_pending"})


@frozen
class FsckReport:
    findings: tuple[Finding, ...]
    files: int
    versions: int
    objects: int
    busy: int = 0  # files a writer held throughout: not checked this time
    # Objects no version refers to, past the grace period: not findings (a crash leaves
    # them, concurrent scans, and a write whose commit failed after its object was stored),
    # but kept until the deleted files' retention has passed (then the periodic purge or
    # --repair collects them): a catalog restored from an older backup than the store has
    # only them left of its newer versions. Not looked for at start.
    orphans: tuple[str, ...] = ()
    # Of the orphans, those written before the catalog was bound (adopted): the lost catalog's
    # history, kept for good (Catalog.predates_binding), released ones too.
    adopted: int = 0

    @property
    def clean(self) -> bool:
        return all(f.pending for f in self.findings)

    @property
    def exit_code(self) -> int:
        """As e2fsck: 0 clean, 1 everything found was repaired, 4 problems remain. Garbage
        collected (objects no version refers to) is no repair: it leaves the code alone, so
        that a nightly `fsck --repair` says 1 only when something was damaged."""
        if any(not f.repaired and not f.pending for f in self.findings):
            return 4
        return 1 if any(f.kind not in GARBAGE and not f.pending for f in self.findings) else 0


async def fsck(
    catalog: Catalog,
    *,
    repair: bool = False,
    deep: bool = False,
    automatic: bool = False,
    watching: bool = False,
    forget_missing: bool = False,
    forget_adopted: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> FsckReport:
    """Check the store against the catalog; see the module docstring for what is
    repaired. *automatic* (the start-up and periodic runs) leaves the objects nobody
    refers to alone: they are the collector's. *watching*: the process is about to watch
    the store, its watch lease not taken yet (a start with ``--watch``: a working copy
    missing is its catch-up's to follow or record). With *repair*, *forget_missing* drops
    the rows of old versions whose content is nowhere in the store, and *forget_adopted*
    collects the objects written before the catalog was bound (adopted). A store bound to another
    catalog since this one opened it is refused first (:meth:`Catalog.ensure_bound`)."""
    await catalog.ensure_bound()
    findings: list[Finding] = [] if automatic else await _catalog_damage(catalog, repair)
    files = {f.id: f for f in await catalog.backend.all_files()}
    versions = await catalog.backend.all_versions()
    referenced = {v.checksum for v in versions}
    findings += await _temps(catalog, referenced)
    damaged = [
        name
        for name, _, entries in await in_thread(lambda: list(catalog.storage.walk_packs()))
        if entries is None
    ]
    # Repair reads a damaged pack entry by entry first: what still reads back is kept as
    # objects of their own, before the versions are checked (and the rest looked for in
    # the working copies).
    salvaged = {}
    if repair:
        for name in damaged:
            salvaged[name] = await in_thread(catalog.storage.salvage_pack, name, referenced)
    by_file: dict[str, list[VersionRecord]] = defaultdict(list)
    for v in versions:
        by_file[v.file_id].append(v)

    objects_ok: dict[str, bool] = {}
    total = len(versions)
    for done, v in enumerate(versions, 1):
        if v.checksum not in objects_ok:
            objects_ok[v.checksum] = await _object_ok(catalog, v, deep)
        if progress:
            progress(done, total)

    active = [f for f in files.values() if f.status is Status.ACTIVE]
    missing = await in_thread(
        lambda: {f.id for f in active if _look_for_working(catalog.storage, f.file_path)[0]}
    )
    suspects = [
        f
        for f in files.values()
        if f.id in missing
        or _row_problem(f, by_file.get(f.id, []))
        or any(not objects_ok[v.checksum] for v in by_file.get(f.id, []))
    ]
    # Where a lost object may be found again: the working copies of the active files
    # whose current content it is (another file's, often: a copy, or content moved on).
    holders: dict[str, list[str]] = defaultdict(list)
    for f in active:
        holders[f.checksum].append(f.file_path)
    # Working files a process still seen running holds in .horace/tmp (a SIGKILLed delete
    # still ending): a repair does not write those back (see _file).
    held_by = await in_thread(_holders, catalog.storage) if repair and suspects else {}
    # A watcher records a removal as a deletion (after its settle time): a working copy
    # missing from a watched store is its to record, not one to write back.
    watched = bool(suspects) and (watching or await in_thread(catalog.locks.watch_lease_held))
    # Watched before, its watcher not running now (a crash, a stop): it will record what was
    # removed meanwhile once it starts again.
    watched_before = bool(suspects) and not watched and await in_thread(catalog.locks.holders_beat)
    busy = 0
    for file in suspects:
        try:
            async with catalog.writing(file.file_path) as db:
                current = await db.file_by_id(file.id)
                if current is None:
                    continue  # purged meanwhile
                rows = await db.versions(file.id)
                findings += await _file(
                    catalog,
                    db,
                    current,
                    rows,
                    objects_ok,
                    holders,
                    held_by,
                    repair=repair,
                    deep=deep,
                    forget_missing=forget_missing,
                    watched=watched,
                    watched_before=watched_before,
                    automatic=automatic,
                )
        except HoraceError as exc:
            if exc.code is not ErrorCode.FILE_LOCKED:
                # This file only (its path now runs through a symlink, say): the others
                # are still checked and repaired.
                findings.append(Finding("unreachable", exc.message, False, file.id, file.file_path))
                continue
            busy += 1
            log.info("fsck: %s is being written; not checked this time", file.file_path)

    findings += await _damaged_packs(catalog, damaged, salvaged)
    aged = [] if automatic else await _orphans(catalog, referenced)
    # Pruned or purged versions' objects (released) are the collector's; the others are
    # kept a retention long, and listed (those from before an adoption, for good).
    marks = await in_thread(catalog.storage.released_marks) if aged else {}
    released = {name for name, written in aged if released_since(marks, name, written)}
    now = time.time()
    expired = [
        name
        for name, written in aged
        if catalog.collectable(written, name in released, now, forget_adopted=forget_adopted)
    ]
    before = {name for name, written in aged if catalog.predates_binding(written)}
    orphans = sorted(name for name, _ in aged if name not in released or name in before)
    collected: set[str] = set()
    if repair and expired:
        collected = set(await catalog.collect(expired))
        findings += [
            Finding("orphan_object", f"object {name} had no version row: collected", True, subject=name)
            for name in sorted(collected)
        ]
        orphans = [name for name in orphans if name not in collected]
    adopted = len(before.intersection(orphans))
    return FsckReport(
        tuple(findings), len(files), len(versions), len(objects_ok), busy, tuple(orphans), adopted
    )


async def _damaged_packs(
    catalog: Catalog, damaged: list[str], salvaged: dict[str, tuple[int, str | None]]
) -> list[Finding]:
    """A finding for each pack that does not read back as written. After a repair that
    left no version without its content, the pack is set aside (``.horace/damaged/``):
    nothing needs it, and fsck is clean again; otherwise it stays where it is."""
    if not damaged:
        return []
    all_there = False
    if salvaged:
        checksums = {v.checksum for v in await catalog.backend.all_versions()}
        all_there = await in_thread(lambda: all(catalog.storage.has_object(c) for c in checksums))
    findings = []
    for name in damaged:
        said = "does not read back as written (its index or trailer)"
        if name not in salvaged:
            detail = (
                f"{said}: the versions whose content it held are listed missing; "
                "`horace fsck --repair` reads back what it can of it, entry by entry"
            )
            findings.append(Finding("pack_damaged", detail, False, subject=name))
            continue
        kept, stopped = salvaged[name]
        detail = f"{said}; {kept} of its entries read back and kept as objects of their own"
        if stopped:
            detail += f" (read no further: {stopped})"
        if all_there:
            aside = await in_thread(catalog.storage.set_aside_damaged_pack, name)
            detail += f"; no version needs it any more: moved to {aside} (delete it when you like)"
        else:
            detail += "; left in place: versions without their content are listed"
        findings.append(Finding("pack_damaged", detail, all_there, subject=name))
    return findings


async def leftovers(catalog: Catalog) -> FsckReport:
    """The bounded start-up check of the CLI: only what dead processes left in
    ``.horace/tmp`` (see :func:`_temps`), nothing per file or per object."""
    return FsckReport(tuple(await _temps(catalog, None)), 0, 0, 0)


def log_findings(report: FsckReport, when: str) -> None:
    """One warning per finding about a file; findings about no file (the temps a crash
    left, say: thousands after a killed scan) one per kind, with their count and a subject."""
    alike: dict[tuple[str, str, bool], list[Finding]] = {}
    for finding in report.findings:
        if finding.file_id is None and finding.file_path is None:
            alike.setdefault((finding.kind, finding.detail, finding.repaired), []).append(finding)
            continue
        log.warning(
            "fsck %s: %s: %s%s",
            when,
            finding.kind,
            finding.detail,
            " (repaired)" if finding.repaired else "",
            extra={"file_id": finding.file_id, "file_path": finding.file_path},
        )
    for (kind, detail, repaired), group in alike.items():
        subjects = [f.subject for f in group if f.subject]
        log.warning(
            "fsck %s: %s%s: %s%s%s",
            when,
            kind,
            f" x{len(group)}" if len(group) > 1 else "",
            detail,
            " (repaired)" if repaired else "",
            f" ({'e.g. ' if len(group) > 1 else ''}{subjects[0]})" if subjects else "",
        )


# -- temp files ------------------------------------------------------------------------------


async def _temps(catalog: Catalog, referenced: set[str] | None) -> list[Finding]:
    """What dead processes left in ``.horace/tmp``, each dealt with by its kind.
    *referenced* holds every checksum a version refers to; None: ask the catalog about
    each staged copy found (the bounded check)."""
    found: list[Finding] = []
    now = time.time()
    for path, name, st in await in_thread(_temps_with_stats, catalog.storage):
        # Since it last changed: a working file moved here keeps its own mtime (perhaps a
        # year old), while its rename moved its ctime.
        age = now - max(st.st_mtime, st.st_ctime)
        alive = name.owner_alive() if name is not None else None
        if alive or (alive is None and age < STALE_TEMP_SECONDS):
            continue  # a live writer's, or perhaps one on another host
        try:
            found.append(await _dead_temp(catalog, path, name, st, referenced))
        except FileNotFoundError:
            if await in_thread(os.path.lexists, path):
                raise
            # Dealt with meanwhile by another process sharing the store (each server
            # looks every LEFTOVERS_EVERY seconds, and so does each CLI command).
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise  # the store's own state (read-only, failing), not this temp's
            # This one leftover only: said, kept as it is, and the store still usable.
            detail = f"left by a process that is gone, and not dealt with ({exc}): kept where it is"
            found.append(Finding("temp_leftover", detail, False, subject=str(path)))
    return found


# What a dead process left of these kinds is its scratch, never a user's content: removed.
SCRATCH = frozenset({TempKind.STAGE, TempKind.PART, TempKind.META, TempKind.PACK, TempKind.CLOCK})


async def _dead_temp(
    catalog: Catalog, path: Path, name: TempName | None, st: os.stat_result, referenced: set[str] | None
) -> Finding:
    """One temp a dead process left, dealt with by its kind."""
    storage = catalog.storage
    if not stat.S_ISREG(st.st_mode):
        # Horace's temps are regular files: a folder, symlink or FIFO here is a user's
        # (a restore displaced it, or someone put it there). Never read, never removed.
        what = "something that is not a regular file"
        return await _put_back(catalog, path, what, await _held_for(catalog, name))
    if (
        name is not None
        and name.kind is TempKind.PACK
        and await _put_back_pack(catalog, path, name, referenced)
    ):
        return Finding(
            "pack_recovered",
            "a pack holding referenced content was missing; put back from its staged link",
            True,
            subject=str(path),
        )
    mended = None
    if name is not None and name.kind is TempKind.STAGE:
        mended = await _put_back_object(catalog, path, referenced)
    if mended is not None:
        return Finding(
            "object_recovered",
            f"a referenced object was {mended}; put back from a staged copy a process left",
            True,
            subject=str(path),
        )
    if name is None or name.kind in SCRATCH:
        await in_thread(path.unlink, True)
        return Finding("temp_leftover", "left by a process that is gone; removed", True, subject=str(path))
    if name.kind is TempKind.ASIDE:
        await in_thread(storage.unquarantine, path, name.extra)
        return Finding(
            "object_aside",
            f"object {name.extra} was moved aside by a collector that died; put back",
            True,
            subject=str(path),
        )
    if name.kind is TempKind.PACK_ASIDE:
        await in_thread(storage.unquarantine_pack, path, name.extra + packs.SUFFIX)
        return Finding(
            "pack_aside",
            f"pack {name.extra} was moved aside by a collector that died; put back",
            True,
            subject=str(path),
        )
    return await _held(catalog, path, name)


def _sha256_of(path: Path) -> str:
    # Never through a symlink, never blocking on a FIFO: _temps sent regular files only.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return hashlib.file_digest(f, "sha256").hexdigest()


def _temps_with_stats(storage: Storage) -> list[tuple[Path, TempName | None, os.stat_result]]:
    found = []
    for path, name in storage.walk_temps():
        try:
            found.append((path, name, path.lstat()))
        except FileNotFoundError:
            continue  # its writer removed it meanwhile
    return found


async def _put_back_pack(catalog: Catalog, path: Path, name: TempName, referenced: set[str] | None) -> bool:
    """A pack's staged link whose pack is missing while a version refers to one of its
    entries (a process died between its batch's commit and releasing the link, as the
    collector took the pack): it becomes the pack again. A pack only half written (its
    writer died before linking it) does not read back, and is garbage."""
    storage = catalog.storage
    if not name.extra:
        return False
    target = storage.packs / (name.extra + packs.SUFFIX)
    try:
        entries = await in_thread(_pack_entries, path)
    except packs.PackDamaged:
        return False
    if not entries or await in_thread(target.exists):
        return False
    if referenced is None:
        wanted = not await catalog.none_referenced(entries)
    else:
        wanted = not referenced.isdisjoint(entries)
    if not wanted:
        return False

    def put_back() -> None:
        make_private_folder(storage.packs)
        with contextlib.suppress(FileExistsError):  # (another fsck, at the same moment)
            os.link(path, target)
        path.unlink()

    await in_thread(put_back)
    return True


def _pack_entries(path: Path) -> list[str]:
    # Never through a symlink, never blocking on a FIFO: _temps sent regular files only.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return list(packs.read_index(fd))
    finally:
        os.close(fd)


async def _put_back_object(catalog: Catalog, path: Path, referenced: set[str] | None) -> str | None:
    """A staged copy whose content a version refers to while its object is missing (a
    process died between its commit and releasing the copy, as the collector took the
    object) or damaged: it becomes the object again. What the object was ("missing",
    "damaged"); None when it reads whole, or no version refers to the copy's content.
    (Read whole, not by its size: an object rotted at its size would leave this copy the
    last good one.)"""
    storage = catalog.storage
    checksum = await in_thread(_sha256_of, path)
    size = (await in_thread(path.stat)).st_size
    held = await in_thread(storage.hash_object, checksum)
    if held == (checksum, size):
        return None
    if referenced is None:
        is_referenced = not await catalog.backend.unreferenced([checksum])
    else:
        is_referenced = checksum in referenced
    if not is_referenced:
        return None
    staged = Staged(tmp_path=path, checksum=checksum, size=size, head=b"")
    await in_thread(storage.keep, staged)  # (renamed over a damaged object)
    await in_thread(storage.release, staged)
    return "missing" if held is None else "damaged"


async def _catalog_damage(catalog: Catalog, repair: bool) -> list[Finding]:
    """The catalog database's own damage (an index missing rows makes searches miss files;
    a broken page fails whatever reads it); a repair rebuilds the indexes from their tables."""
    found, mended = await catalog.backend.check_integrity(repair=repair)
    if not found:
        return []
    shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
    advice = (
        " (its indexes were rebuilt from their tables)"
        if mended
        else " (`horace fsck --repair` rebuilds its indexes, which mends the most common damage)"
        if not repair
        else " (rebuilding its indexes did not mend it: put back a backup copy of the catalog, after "
        "removing the catalog.db-wal and catalog.db-shm beside it, then run `horace fsck`; files/ "
        "and .horace/objects/ need nothing)"
    )
    detail = f"the catalog database is damaged: {shown}{advice}"
    return [Finding("catalog_damaged", detail, mended, subject=catalog.backend.url)]


async def _held(catalog: Catalog, path: Path, name: TempName) -> Finding:
    """A working file caught in ``.horace/tmp`` by a crash (between moving it out of
    files/ and committing what moved it): put back into files/ while its file is still
    active with nothing at its path (the delete or move never committed), else removed if
    its content is safe in a version, else put back."""
    storage = catalog.storage
    checksum = await in_thread(_sha256_of, path)
    file = await _held_for(catalog, name)
    if (
        file is not None
        and file.status is Status.ACTIVE
        and not await in_thread(storage.working_exists, file.file_path)
    ):
        return await _put_back(catalog, path, "a working file caught outside files/ by a crash", file)
    versioned = file is not None and any(
        v.checksum == checksum for v in await catalog.backend.versions(file.id)
    )
    # Read whole, not by its size: an object rotted at its size would leave this the last
    # good copy of that version (put back, then, for a scan to mend the object from).
    if versioned and await in_thread(
        lambda: storage.hash_object(checksum) == (checksum, path.stat().st_size)
    ):
        await in_thread(path.unlink, True)
        return Finding(
            "temp_leftover",
            "a working file held by a process that is gone; its content is a version: removed",
            True,
            file.id if file is not None else None,
            subject=str(path),
        )
    return await _put_back(catalog, path, "a working file caught outside files/ by a crash", file)


def _holders(storage: Storage) -> dict[str, int]:
    """The processes, still running, that hold a working file in ``.horace/tmp`` (moved
    out to be versioned, for a delete or a restore), by the file's id."""
    found = {}
    for _, name in storage.walk_temps():
        file_id = name.held_file_id() if name is not None else None
        if name is not None and file_id is not None and name.owner_alive() is not False:
            found[file_id] = name.pid
    return found


async def _held_for(catalog: Catalog, name: TempName | None) -> FileRecord | None:
    """The file a held temp's name says it was moved out for, if it is catalogued."""
    file_id = name.held_file_id() if name is not None else None
    return await catalog.backend.file_by_id(file_id) if file_id is not None else None


async def _put_back(catalog: Catalog, path: Path, what: str, file: FileRecord | None) -> Finding:
    """Return *path* from ``.horace/tmp`` to files/: at *file*'s path when there is one,
    else under ``user/recovered/``."""
    where = file.file_path if file is not None else f"user/recovered/{path.name[-12:]}"
    placed = await in_thread(catalog.storage.put_back, path, where)
    if placed is None:
        detail = (
            f"{what} could not be put back at {where} (a folder on its way is no folder now, or "
            f"cannot be reached): it is kept where it is, and holds "
            + ("the file's content at the crash" if file is not None else "what was at that path")
            + "; the next fsck tries again (make the way a folder again, or move it out by hand)"
        )
    else:
        detail = f"{what} was put back as {placed}" + (" (its name was taken)" if placed != where else "")
    return Finding(
        "working_recovered",
        detail,
        placed is not None,
        file.id if file is not None else None,
        placed,
        str(path),
    )


# -- one file --------------------------------------------------------------------------------


def _row_problem(file: FileRecord, rows: list[VersionRecord]) -> str | None:
    if not rows:
        return "the file has no version rows"
    newest = max(rows, key=lambda v: v.version)
    if (file.current_version, file.checksum, file.size) != (newest.version, newest.checksum, newest.size):
        return f"current_version {file.current_version} but the newest version row is {newest.version}"
    return None


async def _file(
    catalog: Catalog,
    db: Units,
    file: FileRecord,
    rows: list[VersionRecord],
    objects_ok: dict[str, bool],
    holders: Mapping[str, list[str]],
    held_by: Mapping[str, int],
    *,
    repair: bool,
    deep: bool,
    forget_missing: bool,
    watched: bool,
    watched_before: bool,
    automatic: bool,
) -> list[Finding]:
    """The findings about one file, looked at under its write lock; a lost object is
    looked for in its working copy, then in those of *holders* (paths by checksum).
    *held_by*: the processes still running that hold working files, by file id.
    *watched*: a watcher watches the store (and records what is removed): a working copy
    missing is said by a check asked for, not by the *automatic* ones (every removal
    would be a warning of each instance's periodic check, just before the watcher's
    record of it). *watched_before*: a watcher has watched it, none does now."""
    storage = catalog.storage
    found: list[Finding] = []

    def finding(kind: str, detail: str, repaired: bool) -> None:
        found.append(Finding(kind, detail, repaired, file.id, file.file_path))

    problem = _row_problem(file, rows)
    if problem is not None and rows:
        # Always safe: the row is put back in step with the versions it has.
        fixed = await db.repair_current(file.id)
        file = fixed or file
        finding("current_inconsistent", problem, True)
    elif problem is not None:
        fixed, outcome = await _version_again(catalog, db, file, holders, deep) if repair else (None, "")
        if fixed is not None:
            objects_ok[fixed.checksum] = True  # (so a missing working copy is written back too)
        file = fixed or file
        finding("no_versions", problem + outcome, fixed is not None)

    for v in rows:
        ok = objects_ok[v.checksum] = await _object_ok(catalog, v, deep)
        if ok:
            continue
        repaired, outcome = False, ""
        if repair:
            source, unread = await _recover_object(
                catalog, [file.file_path, *holders.get(v.checksum, ())], v.checksum
            )
            objects_ok[v.checksum] = repaired = source is not None and await _object_ok(catalog, v, deep)
            if repaired and source is not None:
                outcome = f" (recovered from the working copy of {quoted(source)})"
            elif source is not None:
                # The object holds the content its checksum names: the version's recorded
                # size is what is wrong (a hand-edited row), and no copy mends that.
                outcome = (
                    f" (the object holds the content of its checksum, but not the size version "
                    f"{v.version} records, {v.size} bytes: the catalog's row is wrong, and left as it is)"
                )
            elif unread:  # it may be there: nothing is dropped on a guess
                outcome = f" (the working copy of {quoted(unread[0])} may hold it, but cannot be read now)"
            elif v.version != file.current_version and forget_missing:
                await db.delete_version(v.file_id, v.version)
                repaired = True
                outcome = " (its content is nowhere in the store: the version was dropped)"
            elif v.version != file.current_version:
                # Kept: this folder may be a stale copy of the store (an old snapshot, a
                # mount of the wrong host) whose live folder holds the content.
                outcome = (
                    " (its content is nowhere in this store: the version is kept. Is this the "
                    "store's live folder, not an old copy of it? If so, and the content is lost "
                    "for good, `horace fsck --repair --forget-missing` drops the version)"
                )
            else:  # the current version: kept while the file is catalogued by it
                outcome = (
                    " (no working copy holds it. The current version is kept while the file is "
                    "catalogued by it, even by --forget-missing: if the file changed since, "
                    "`horace scan` first versions what it holds now; should this content be lost "
                    "for good, `horace fsck --repair --forget-missing` then drops this version)"
                )
        finding(
            "missing_object",
            f"version {v.version}: object {v.checksum} is missing or damaged{outcome}",
            repaired,
        )

    gone, unreachable = (
        await in_thread(_look_for_working, storage, file.file_path)
        if file.status is Status.ACTIVE
        else (False, None)
    )
    if unreachable is not None:
        finding("unreachable", unreachable, False)  # never written through, nor "missing"
    elif gone:
        repaired = False
        detail = "the active file's working copy is missing"
        holder = held_by.get(file.id)
        if holder is not None:
            # Moved out by a process still seen running (a SIGKILL's exit not done yet): its
            # content, newer than the current version maybe, goes back once it has ended,
            # by the next fsck (or start); written back now, it would land beside the
            # current version, as name.recovered-N.
            detail += (
                f": held in .horace/tmp by process {holder}, still running; not written back "
                "(the next fsck puts the held content back once that process has ended)"
            )
        elif watched and automatic:
            return found
        elif watched:
            detail += (
                ": the store is watched, and its watcher records the removal as a deletion "
                "(`horace undelete` brings the file back); not written back"
            )
            finding("removal_pending", detail, False)
            return found
        elif repair and objects_ok.get(file.checksum, False):
            mode = await catalog.backend.working_mode(file.id)  # (the mode it was last seen with)
            try:
                written = await in_thread(
                    storage.create_working, file.file_path, file.checksum, file.id, check_cancelled, mode
                )
            except HoraceError as exc:
                if exc.code is not ErrorCode.CHECKSUM_MISMATCH:
                    raise
                # (Its size was right; its bytes are not: `fsck --deep` says so of the version.)
                detail += f": not written back: {exc.message}"
            else:
                # A file that appeared there meanwhile stays, untouched: it is back, after all.
                # Anything else (a folder) is not the working copy, and stays found.
                repaired = await in_thread(storage.working_exists, file.file_path)
                if not repaired:
                    detail += ": something that is not a file is at its path (move it away, then repair)"
                elif written:
                    detail += ": written back from its current version"
                else:
                    detail += ": a file appeared at its path meanwhile, left as it is (a scan versions it)"
        elif not repair and await in_thread(os.path.lexists, storage.files / file.file_path):
            detail += (
                ": something that is not a file is at its path (a folder, a link, a FIFO: move "
                "it away, then `fsck --repair` writes the file back from its current version)"
            )
        elif not repair and watched_before:
            detail += (
                " (removed while its watcher was not running, or deleted after the catalog copy of "
                "a backup restored here? Started again, the watcher records the removal as a "
                "deletion; `fsck --repair` would write the file back from its current version)"
            )
        elif not repair:
            # Most often removed by its user while no watcher ran: a repair would bring it back.
            detail += (
                " (removed on purpose, or deleted after the catalog copy of a backup restored "
                "here? `horace delete` records that; `fsck --repair` writes it back from its "
                "current version)"
            )
        finding("working_missing", detail, repaired)
    return found


async def _version_again(
    catalog: Catalog, db: Units, file: FileRecord, holders: Mapping[str, list[str]], deep: bool
) -> tuple[FileRecord | None, str]:
    """A file without version rows (removed by hand, say): its current content recorded
    as a version again, from its object or, that lost, from a working copy that holds it
    (else its object would be an orphan, collected in time). The file as it now is (None:
    not done), and what was done."""
    storage = catalog.storage
    if await in_thread(object_problem, storage, file.checksum, file.size, deep) is not None:
        source, unread = await _recover_object(
            catalog, [file.file_path, *holders.get(file.checksum, ())], file.checksum
        )
        if source is None:
            if unread:
                return (
                    None,
                    f" (the working copy of {quoted(unread[0])} may hold its content: cannot be read now)",
                )
            return None, " (its content is nowhere in the store; a scan versions what its working copy holds)"
    fixed, version, _ = await db.add_version(
        file.id,
        NewVersion(file.checksum, file.size, file.mime_type),
        catalog.clock(),
        f"fsck-{uuid.uuid4()}",
        catalog.policy.retention,
    )
    return fixed, f" (its content recorded again as version {version.version})"


def _look_for_working(storage: Storage, rel: str) -> tuple[bool, str | None]:
    """Whether *rel*'s working copy is not there, and why it cannot be looked at when
    that is so (a folder on its way unreadable, or listed but not entered; a symlink
    where a folder should be): such a file is unreachable, never "missing"."""
    try:
        if storage.working_exists(rel):
            return False, None
        return True, storage.unreachable(rel)
    except OSError as exc:
        return True, f"its folder cannot be read: {exc.strerror or exc}"


def object_problem(storage: Storage, checksum: str, size: int, deep: bool) -> str | None:
    """What is wrong with the object of a version (None: nothing): ``missing_object``, or
    ``checksum_mismatch`` (with *deep*, its bytes re-hashed; else its size compared).
    Blocking: for a worker thread. The one object check of fsck and verify."""
    if storage.object_holds(checksum, size, deep, check_cancelled):
        return None
    return "checksum_mismatch" if storage.has_object(checksum) else "missing_object"


async def _object_ok(catalog: Catalog, v: VersionRecord, deep: bool) -> bool:
    return await in_thread(object_problem, catalog.storage, v.checksum, v.size, deep) is None


async def _recover_object(
    catalog: Catalog, rels: Sequence[str], checksum: str
) -> tuple[str | None, list[str]]:
    """Put an object back from the first of the working copies *rels* that still holds
    its content: which one (None: none does); and those that could not be read (behind
    a symlink, being written, unreadable), which may."""
    storage = catalog.storage
    unread: list[str] = []
    for rel in dict.fromkeys(rels):
        try:
            staged = await in_thread(storage.stage, rel)
        except HoraceError as exc:
            if exc.code is ErrorCode.STORAGE_FULL:
                raise  # no room to copy it back: the file's finding says so
            if exc.code is not ErrorCode.FILE_NOT_FOUND:
                unread.append(rel)
            continue
        except OSError:
            unread.append(rel)
            continue
        try:
            if staged.checksum == checksum:
                await in_thread(storage.keep, staged)
                await in_thread(storage.release, staged)
                return rel, unread
        finally:
            await catalog.discard(staged)
    return None, unread


# -- verify: everything re-hashed, nothing repaired --------------------------------------------


@frozen
class Problem:
    kind: str  # missing_object, checksum_mismatch, working_modified, working_missing, deleted_present, ...
    file_id: str
    file_path: str
    version: int | None
    detail: str


@frozen
class VerifyReport:
    files_checked: int
    objects_checked: int
    problems: tuple[Problem, ...]


async def verify(
    catalog: Catalog, file_id: str | None = None, progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Re-hash the objects of every version (of one file, or all) and the working files;
    report what does not match. Reads only. All of them: one walk at a time (see
    :attr:`Catalog.walking`)."""
    if file_id:
        return await _verify(catalog, file_id, progress)
    async with catalog.walking:
        return await _verify(catalog, file_id, progress)


async def _verify(
    catalog: Catalog, file_id: str | None, progress: Callable[[int, int], None] | None
) -> VerifyReport:
    if file_id:
        files = [await catalog.file(file_id)]
        versions = list(await catalog.backend.versions(file_id))
    else:
        files = await catalog.backend.all_files()
        versions = await catalog.backend.all_versions()
    by_id = {f.id: f for f in files}
    problems: list[Problem] = []
    versioned = {v.file_id for v in versions}
    checked: dict[str, str | None] = {}
    total = len(versions) + len(files)
    for done, v in enumerate(versions, 1):
        if v.checksum not in checked:
            checked[v.checksum] = await in_thread(object_problem, catalog.storage, v.checksum, v.size, True)
        kind = checked[v.checksum]
        if kind is not None:
            path = by_id[v.file_id].file_path if v.file_id in by_id else "?"
            what = "is missing" if kind == "missing_object" else "holds other bytes"
            problems.append(Problem(kind, v.file_id, path, v.version, f"object {v.checksum} {what}"))
        if progress:
            progress(done, total)
    for done, f in enumerate(files, len(versions) + 1):
        if f.id not in versioned:
            detail = "the file has no version rows (horace fsck --repair records its content again)"
            problems.append(Problem("no_versions", f.id, f.file_path, None, detail))
        if f.status is Status.ACTIVE:
            found = await in_thread(_working_problem, catalog.storage, f)
            if found is not None:
                problems.append(Problem(found[0], f.id, f.file_path, None, found[1]))
        elif f.status is Status.DELETED and await in_thread(catalog.storage.working_exists, f.file_path):
            detail = (
                "deleted in the catalog, but a file is at its path (put back, or recorded deleted "
                "by mistake): `horace scan` catalogs it as the file's next version, its history kept "
                "(as the purge does before it would take that history)"
            )
            problems.append(Problem("deleted_present", f.id, f.file_path, None, detail))
        if progress:
            progress(done, total)
    return VerifyReport(len(files), len(checked), tuple(problems))


def _working_problem(storage: Storage, file: FileRecord) -> tuple[str, str] | None:
    """What is wrong with *file*'s working copy, and said how; None when nothing."""
    try:
        digest = storage.hash_working(file.file_path, check_cancelled)
    except HoraceError as exc:
        if exc.code is ErrorCode.FILE_NOT_FOUND:
            return "working_missing", "the working copy is missing"
        # There, but not to be catalogued as it is (hard linked, a FIFO, a symlink on the
        # way): its changes are not versioned until that changes.
        return "working_refused", f"the working copy is not catalogable: {exc.message}"
    except OSError:  # its folder, or itself, unreadable: not missing, not checked
        return "working_unreadable", "the working copy cannot be read (its folder, or itself)"
    if digest == file.checksum:
        return None
    return "working_modified", "the working copy differs from the current version (not yet versioned)"


# -- objects nobody refers to ----------------------------------------------------------------


async def _orphans(catalog: Catalog, referenced: set[str]) -> list[tuple[str, float]]:
    """The objects no version refers to, once past the grace period, with when they were
    written (a pack's entries: when the pack was)."""
    grace = catalog.policy.gc_grace_seconds
    now = time.time()

    def stored() -> dict[str, float]:
        found = {name: st.st_mtime for name, st in catalog.storage.walk_objects()}
        for _, st, entries in catalog.storage.walk_packs():
            for name in entries or ():  # (a pack's age; of a content in several, the newest)
                found[name] = max(found.get(name, st.st_mtime), st.st_mtime)
        return found

    return [
        (name, mtime)
        for name, mtime in (await in_thread(stored)).items()
        if name not in referenced and now - mtime >= grace
    ]
