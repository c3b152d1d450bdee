"""Checking, and repairing, the invariants between the catalog and the object store.

- every version row has a complete object with the right content;
- the file row agrees with its newest version (current_version, checksum, size);
- every active file has its working copy;
- no object without a version row (once older than the grace period);
- no temp file left behind by a process that is gone.

Run at start (quick: sizes, not hashes) and by ``horace fsck`` (``--deep`` re-hashes).
The automatic runs (at start, periodic) repair what a crash leaves behind but do not
write missing working copies back: a file deleted or renamed while Horace was down is
the reconcile's business (soft delete, rename), not a crash's.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from attrs import frozen

from horace.catalog import Catalog, in_thread
from horace.model import HoraceError, Status, VersionRecord
from horace.storage import temp_owner_alive

log = logging.getLogger("horace.fsck")
STALE_TEMP_SECONDS = 3600.0


@frozen
class Finding:
    kind: str
    detail: str
    repaired: bool
    file_id: str | None = None
    file_path: str | None = None


@frozen
class FsckReport:
    findings: tuple[Finding, ...]
    files: int
    versions: int
    objects: int

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        """As e2fsck: 0 clean, 1 everything found was repaired, 4 problems remain."""
        if any(not f.repaired for f in self.findings):
            return 4
        return 1 if self.findings else 0


async def fsck(
    catalog: Catalog,
    *,
    repair: bool = False,
    deep: bool = False,
    restore_working: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FsckReport:
    storage, backend = catalog.storage, catalog.backend
    findings: list[Finding] = []

    def found(
        kind: str, detail: str, repaired: bool, file_id: str | None = None, path: str | None = None
    ) -> None:
        findings.append(Finding(kind, detail, repaired, file_id, path))

    # Temp files whose writer is gone.
    now = time.time()
    for temp in await in_thread(lambda: list(storage.walk_temps())):
        try:
            age = now - temp.stat().st_mtime
        except FileNotFoundError:
            continue
        alive = temp_owner_alive(temp.name)
        if alive is False or (alive is None and age > STALE_TEMP_SECONDS):
            if repair:
                temp.unlink(missing_ok=True)
            found("temp_leftover", f"temp file {temp} left by a process that is gone", repair)

    files = {f.id: f for f in await backend.all_files()}
    versions = await backend.all_versions()
    by_file: dict[str, list[VersionRecord]] = defaultdict(list)
    for v in versions:
        by_file[v.file_id].append(v)

    # File rows against their newest version.
    for file in list(files.values()):
        rows = by_file.get(file.id)
        if not rows:
            found("no_versions", "the file has no version rows", False, file.id, file.file_path)
            continue
        newest = max(rows, key=lambda v: v.version)
        if (file.current_version, file.checksum, file.size) != (newest.version, newest.checksum, newest.size):
            if repair:
                fixed = await backend.repair_current(file.id)
                if fixed is not None:
                    files[file.id] = fixed
            found(
                "current_inconsistent",
                f"current_version {file.current_version} but newest version row is {newest.version}",
                repair,
                file.id,
                file.file_path,
            )

    # Version rows against objects.
    checked: dict[str, bool] = {}
    total = len(versions)
    for done, v in enumerate(versions, 1):
        if v.checksum not in checked:
            checked[v.checksum] = await _object_ok(catalog, v, deep)
        if progress:
            progress(done, total)
        if checked[v.checksum]:
            continue
        owner = files.get(v.file_id)
        path = owner.file_path if owner else None
        repaired = False
        if repair and owner is not None:
            repaired = await _recover_object(catalog, owner.file_path, v.checksum)
            if repaired:
                checked[v.checksum] = True
            elif v.version != owner.current_version:
                await backend.delete_version(v.file_id, v.version)
                repaired = True  # the row went: its content was already lost
        found(
            "missing_object",
            f"version {v.version}: object {v.checksum} is missing or damaged"
            + (" (recovered from the working copy)" if repaired and checked[v.checksum] else ""),
            repaired,
            v.file_id,
            path,
        )

    # Active files without their working copy.
    for file in files.values():
        if file.status is not Status.ACTIVE:
            continue
        if await in_thread(storage.working_exists, file.file_path):
            continue
        repaired = False
        if repair and restore_working and checked.get(file.checksum, False):
            await in_thread(storage.write_working, file.file_path, file.checksum)
            repaired = True
        found(
            "working_missing", "the active file's working copy is missing", repaired, file.id, file.file_path
        )

    # Objects nobody refers to, once past the grace period.
    referenced = {v.checksum for v in versions}
    grace = catalog.policy.gc_grace_seconds
    orphans = [
        name
        for name, st in await in_thread(lambda: list(storage.walk_objects()))
        if name not in referenced and now - st.st_mtime >= grace
    ]
    if orphans:
        collected = set(await catalog.collect(orphans)) if repair else set()
        for name in orphans:
            found("orphan_object", f"object {name} has no version row", name in collected)
    return FsckReport(tuple(findings), len(files), len(versions), len(referenced))


def log_findings(report: FsckReport, when: str) -> None:
    for finding in report.findings:
        log.warning(
            "fsck %s: %s: %s%s",
            when,
            finding.kind,
            finding.detail,
            " (repaired)" if finding.repaired else "",
            extra={"file_id": finding.file_id, "file_path": finding.file_path},
        )


async def _object_ok(catalog: Catalog, v: VersionRecord, deep: bool) -> bool:
    if deep:
        result = await in_thread(catalog.storage.hash_object, v.checksum)
        return result is not None and result == (v.checksum, v.size)
    try:
        size = (await in_thread(catalog.storage.object_path(v.checksum).stat)).st_size
    except FileNotFoundError:
        return False
    return size == v.size


async def _recover_object(catalog: Catalog, rel: str, checksum: str) -> bool:
    """Put an object back from the working copy when that still holds its content."""
    storage = catalog.storage
    try:
        staged = await in_thread(storage.stage, rel)
    except (HoraceError, OSError):
        return False
    try:
        if staged.checksum != checksum:
            return False
        await in_thread(storage.keep, staged)
        return True
    finally:
        storage.discard(staged)
