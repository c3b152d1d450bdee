"""Checks shared by the stress tests: is the catalog whole, down to the bytes?

``assert_sound`` is the strong form used after every cancelled or killed operation:
``fsck(deep=True)`` must be clean, and the same invariants are re-checked directly
(so a bug in fsck cannot hide one in the catalog): every version row has an object
whose bytes hash to its checksum, every file row agrees with its newest version, no
object lies around without a row, and no temp file is left anywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

from horace.backends.records import FileRecord, VersionRecord
from horace.catalog import Catalog
from horace.fsck import fsck
from horace.storage import TempName


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_bytes(catalog: Catalog, checksum: str) -> bytes:
    """An object's bytes, of its own or in a pack."""
    found = catalog.storage.read_object(checksum)
    assert found is not None, f"object {checksum} missing"
    return found


def temps_left(catalog: Catalog) -> list[Path]:
    """Temp files in .horace/tmp, and any file in the form of Horace's own temp names
    anywhere under files/ (where Horace never writes one)."""
    found = list(catalog.storage.tmp.iterdir())
    for folder, _dirs, names in os.walk(catalog.storage.files):
        found += [Path(folder) / n for n in names if TempName.parse(n) is not None]
    return found


def objects_on_disk(catalog: Catalog) -> set[str]:
    """Every object, of its own or in a pack."""
    found = {name for name, _ in catalog.storage.walk_objects()}
    for name, _, entries in catalog.storage.walk_packs():
        assert entries is not None, f"pack {name} damaged"
        found.update(entries)
    return found


_hashed: dict[Path, tuple[int, int, int, str]] = {}


def object_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of an object; an unchanged object (same inode, mtime and size)
    is not hashed twice, which keeps checking after every one of many attempts cheap."""
    st = path.stat()
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _hashed.get(path)
    if cached is None or cached[:3] != key:
        cached = (*key, digest(path.read_bytes()))
        _hashed[path] = cached
    return cached[3], cached[2]


def check_file_versions(
    catalog: Catalog, file: FileRecord, versions: list[VersionRecord], *, dense: bool = False
) -> None:
    """One file's rows against its objects: the direct form of fsck's row checks."""
    assert versions, f"{file.file_path}: no version rows"
    numbers = sorted(v.version for v in versions)
    assert len(numbers) == len(set(numbers)), f"{file.file_path}: duplicate version numbers {numbers}"
    if dense:
        assert numbers == list(range(1, numbers[-1] + 1)), f"{file.file_path}: gaps in {numbers}"
    newest = max(versions, key=lambda v: v.version)
    assert (file.current_version, file.checksum, file.size) == (
        newest.version,
        newest.checksum,
        newest.size,
    ), f"{file.file_path}: file row {file.current_version}/{file.checksum[:12]} vs newest {newest}"
    for v in versions:
        path = catalog.storage.object_path(v.checksum)
        if path.is_file():
            found = object_digest(path)
        else:  # in a pack, then
            content = catalog.storage.read_object(v.checksum)
            assert content is not None, f"{file.file_path} v{v.version}: object {v.checksum} missing"
            found = (digest(content), len(content))
        assert found == (v.checksum, v.size), (
            f"{file.file_path} v{v.version}: object {v.checksum} holds other bytes"
        )


async def assert_sound(catalog: Catalog, *, deep: bool = True, temps_allowed: bool = False) -> None:
    """fsck clean, and the same invariants checked directly.

    The direct check hashes every object it has not seen unchanged before, so even with
    ``deep=False`` (fsck comparing sizes only) every object's bytes are verified.
    """
    report = await fsck(catalog, deep=deep)
    assert report.clean, [f"{f.kind}: {f.detail}" for f in report.findings]
    if not temps_allowed:
        assert temps_left(catalog) == [], "temp files left behind"
    files = await catalog.backend.all_files()
    versions = await catalog.backend.all_versions()
    by_file: dict[str, list[VersionRecord]] = defaultdict(list)
    for v in versions:
        by_file[v.file_id].append(v)
    assert set(by_file) <= {f.id for f in files}, "version rows of unknown files"
    for f in files:
        check_file_versions(catalog, f, by_file[f.id])
    # Objects and rows agree both ways (the fixtures use gc_grace=0: nothing is "fresh"),
    # but for the content of pruned versions, marked released until the next purge, and
    # the objects written before the catalog was adopted (a lost catalog's history).
    referenced = {v.checksum for v in versions}
    on_disk = objects_on_disk(catalog)
    assert referenced <= on_disk
    before_adoption = {n for n, st in catalog.storage.walk_objects() if catalog.predates_binding(st.st_mtime)}
    for _, st, entries in catalog.storage.walk_packs():
        if catalog.predates_binding(st.st_mtime):
            before_adoption.update(entries or ())
    unreferenced = on_disk - referenced - before_adoption
    assert unreferenced <= catalog.storage.released_marks().keys(), (
        "objects no version refers to, not released"
    )
