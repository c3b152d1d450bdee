"""Packs: the small files of a long batch kept as one file (horace.packs), read back,
checked, collected and repaired like objects of their own."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import write
from soundness import assert_sound, digest, objects_on_disk, temps_left
from test_invariants import _dead_pid, storage_temp_name
from test_storage_full import small_tmpfs  # noqa: F401 (a fixture)

from horace import packs
from horace.assemble import open_catalog
from horace.backends.records import FileChanges
from horace.catalog import PACK_BATCH_BYTES, PACK_MIN_FILES, Catalog
from horace.config import Settings
from horace.fsck import fsck, leftovers
from horace.storage import TMP_PREFIX, Storage

N = PACK_MIN_FILES + 6


def many(files: Path, n: int = N, folder: str = "user/many", seed: int = 0) -> dict[str, bytes]:
    """*n* small files of distinct content (sizes 0 to 64 KiB), by path under files/."""
    rng = random.Random(seed)
    made = {}
    for i in range(n):
        rel = f"{folder}/{i:03d}.bin"
        head = f"{folder} {i}\n".encode()
        size = rng.choice([0, 1, 100, 4096, packs.OBJECT_MAX - len(head)])
        made[rel] = write(files / rel, head + rng.randbytes(size)).read_bytes()
    made[f"{folder}/000.bin"] = write(files / f"{folder}/000.bin", b"").read_bytes()  # (one empty)
    return made


def pack_names(storage: Storage) -> list[str]:
    return sorted(name for name, _, _ in storage.walk_packs())


# -- the format ------------------------------------------------------------------------------


def test_a_pack_reads_back_what_was_written_and_refuses_damage(tmp_path: Path) -> None:
    rng = random.Random(1)
    contents = [rng.randbytes(rng.randrange(0, 5000)) for _ in range(200)] + [b"x" * (3 << 20)]
    entries = {digest(c): c for c in contents}
    path = tmp_path / packs.new_name()
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        index = packs.write(fd, list(entries.items()))
        assert packs.read_index(fd) == index
        assert {c: packs.read_entry(fd, *index[c]) for c in index} == entries
    finally:
        os.close(fd)
    data = path.read_bytes()
    for damaged in (
        data[:-1],  # cut short
        data[:10] + b"X" + data[11:],  # header
        data[:-60] + bytes([data[-60] ^ 1]) + data[-59:],  # an index row
        data[:-20] + bytes([data[-20] ^ 1]) + data[-19:],  # the trailer's sha256
        b"",
    ):
        path.write_bytes(damaged)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(packs.PackDamaged):
                packs.read_index(fd)
        finally:
            os.close(fd)
    assert packs.is_pack_name(packs.new_name()) and not packs.is_pack_name("0" * 24 + ".pack.tmp")


# -- kept, read, restored --------------------------------------------------------------------


async def test_a_long_batch_keeps_its_small_files_in_one_pack(catalog: Catalog, files: Path) -> None:
    made = many(files)
    big = write(files / "user/many/big.bin", os.urandom(packs.OBJECT_MAX + 1)).read_bytes()
    known = write(files / "user/known.txt", "already an object").read_bytes()
    await catalog.register("user/known.txt")
    write(files / "user/many/copy-of-known.txt", known)
    report = await catalog.scan()
    assert (report.registered, report.duplicates, report.errors) == (N + 2, 0, ())  # the copy, a file too
    assert len(pack_names(catalog.storage)) == 1
    loose = {name for name, _ in catalog.storage.walk_objects()}
    assert loose == {digest(big), digest(known)}  # the big one, and the one there already
    for rel, data in made.items():
        file = (await catalog.get_info(file_path=rel)).file
        assert catalog.storage.read_object(file.checksum) == data
        assert (await catalog.content(file, None, 1 << 20)).data == data
    await assert_sound(catalog)


async def test_a_batch_stages_a_bounded_amount_in_memory(catalog: Catalog, files: Path) -> None:
    """Past PACK_BATCH_BYTES of small files, a batch's files are staged as temp copies and
    kept as objects of their own: the pack, and the memory, stay bounded."""
    n = PACK_BATCH_BYTES // packs.OBJECT_MAX + 20
    made = {f"user/big/{i:03d}.bin": os.urandom(packs.OBJECT_MAX) for i in range(n)}
    for rel, data in made.items():
        write(files / rel, data)
    assert (await catalog.scan()).registered == n
    ((_, st, entries),) = list(catalog.storage.walk_packs())
    assert entries is not None and len(entries) == PACK_BATCH_BYTES // packs.OBJECT_MAX
    assert st.st_size <= PACK_BATCH_BYTES + 88 * len(entries) + 64  # (an entry: 40 + 48 bytes)
    assert len({name for name, _ in catalog.storage.walk_objects()}) == n - len(entries)
    await assert_sound(catalog)


async def test_a_short_batch_makes_no_pack(catalog: Catalog, files: Path) -> None:
    many(files, PACK_MIN_FILES - 1)
    assert (await catalog.scan()).registered == PACK_MIN_FILES - 1
    assert pack_names(catalog.storage) == []
    await assert_sound(catalog)


async def test_a_packed_version_is_restored_and_read_after_changes(catalog: Catalog, files: Path) -> None:
    made = many(files)
    await catalog.scan()
    rel = "user/many/007.bin"
    write(files / rel, b"changed since")
    file = (await catalog.get_info(file_path=rel)).file
    assert (await catalog.update(file.id, FileChanges())).version_created
    restored = await catalog.restore(file.id, 1)
    assert restored.file.checksum == digest(made[rel])
    assert (files / rel).read_bytes() == made[rel]
    # Deleted and brought back: the working copy is written from the pack again.
    await catalog.delete(file.id)
    assert not (files / rel).exists()
    await catalog.undelete(file.id)
    assert (files / rel).read_bytes() == made[rel]
    await assert_sound(catalog)


async def test_another_process_s_pack_is_found(catalog: Catalog, files: Path) -> None:
    """A pack written by another process (another Storage) is found when a lookup misses."""
    other = Storage(catalog.storage.root)
    assert catalog.storage.read_object(digest(b"nowhere yet")) is None  # (looked at the packs)
    made = many(files)
    staged = other.stage_many(list(made), in_memory=1 << 20)
    kept: list[Any] = []
    other.keep_batch([s for s in staged if not isinstance(s, Exception)], kept)
    for data in made.values():
        assert catalog.storage.read_object(digest(data)) == data
        assert catalog.storage.object_intact(digest(data), len(data))
    other.release_batch(kept, [])


# -- collected -------------------------------------------------------------------------------


async def test_a_pack_goes_once_none_of_its_files_is_left(catalog: Catalog, files: Path) -> None:
    made = many(files)
    await catalog.scan()
    catalog.policy = attrs.evolve(catalog.policy, deleted_retention=timedelta(0))
    ids = [(await catalog.get_info(file_path=rel)).file.id for rel in made]
    for file_id in ids[:-1]:
        await catalog.delete(file_id)
    await catalog.purge()
    assert len(pack_names(catalog.storage)) == 1, "a pack holding a file's content was taken"
    last = (await catalog.get_info(file_path=list(made)[-1])).file
    assert catalog.storage.read_object(last.checksum) == made[list(made)[-1]]
    await assert_sound(catalog)
    await catalog.delete(ids[-1])
    await catalog.purge()
    assert pack_names(catalog.storage) == []
    assert objects_on_disk(catalog) == set()
    await assert_sound(catalog)


async def test_a_pack_whose_content_a_file_still_holds_stays(
    catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    """Every file of a pack is gone, but the content of one is in an uncatalogued copy
    that cannot be catalogued (a second hard link): the pack stays, as an object would."""
    made = many(files)
    await catalog.scan()
    catalog.policy = attrs.evolve(catalog.policy, deleted_retention=timedelta(0))
    for rel in made:
        await catalog.delete((await catalog.get_info(file_path=rel)).file.id)
    linked = made["user/many/011.bin"]
    os.link(write(files / "user/other/linked.bin", linked), tmp_path / "second-link")
    for _ in range(2):
        await catalog.purge()
        assert catalog.storage.read_object(digest(linked)) == linked
        assert len(pack_names(catalog.storage)) == 1
    os.unlink(tmp_path / "second-link")  # catalogable now: catalogued
    await catalog.purge()
    kept = (await catalog.get_info(file_path="user/other/linked.bin")).file
    assert catalog.storage.read_object(kept.checksum) == linked
    await assert_sound(catalog)


async def test_a_pack_referred_to_by_the_time_it_is_moved_aside_goes_back(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector looks at the rows again once the pack is aside: a row that came
    meanwhile (here: rows the first look did not see) puts it back."""
    made = many(files)
    await catalog.scan()
    catalog.policy = attrs.evolve(catalog.policy, deleted_retention=timedelta(0))
    storage, backend = catalog.storage, catalog.backend
    unreferenced, quarantine_pack = backend.unreferenced, storage.quarantine_pack
    aside: list[str] = []

    async def blind_until_aside(checksums: Any) -> Any:
        return list(checksums) if not aside else await unreferenced(checksums)

    def moving(name: str, grace: float) -> Any:
        aside.append(name)
        return quarantine_pack(name, grace)

    monkeypatch.setattr(backend, "unreferenced", blind_until_aside)
    monkeypatch.setattr(storage, "quarantine_pack", moving)
    await catalog.collect_orphans()
    assert len(aside) == 1 and pack_names(storage) == aside
    for data in made.values():
        assert storage.read_object(digest(data)) == data
    await assert_sound(catalog)


def collector_before_the_insert(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the collector (grace period 0) take the new pack of the next batch before its
    rows are inserted, as if none referred to it; the names of the packs it took."""
    storage, insert = catalog.storage, catalog.backend.insert_files
    taken: list[str] = []

    async def collector_first(*args: Any, **kwargs: Any) -> Any:
        taken.extend(pack_names(storage))
        aside = storage.quarantine_pack(taken[0], 0.0)
        assert aside is not None
        storage.discard_pack_aside(aside, [])  # nothing referred to it: gone for good
        return await insert(*args, **kwargs)

    monkeypatch.setattr(catalog.backend, "insert_files", collector_first)
    return taken


async def test_a_pack_the_collector_takes_before_the_commit_is_put_back(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector finds a new pack before its rows are committed and takes it: the
    release puts it back from its staged link."""
    made = many(files)
    storage = catalog.storage
    taken = collector_before_the_insert(catalog, monkeypatch)
    assert (await catalog.scan()).registered == N
    assert pack_names(storage) == taken
    for data in made.values():
        assert storage.read_object(digest(data)) == data
    await assert_sound(catalog)


async def test_a_pack_taken_before_a_commit_whose_process_then_died_is_put_back(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, and the process dies after the commit, before its release: the pack's
    staged link, left in .horace/tmp, puts it back at the next fsck (the start-up check
    of a command included)."""
    made = many(files)
    storage = catalog.storage
    collector_before_the_insert(catalog, monkeypatch)

    def died(*_: Any) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(storage, "release_batch", died)
    monkeypatch.setattr(storage, "discard", died)  # (nothing runs on the way out of a SIGKILL)
    with pytest.raises(SystemExit):
        await catalog.scan()
    monkeypatch.undo()
    (link,) = [p for p in storage.tmp.iterdir() if p.name.startswith(TMP_PREFIX + "pack.")]
    dead = storage.tmp / link.name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    os.rename(link, dead)  # as a dead process leaves it
    assert pack_names(storage) == []
    report = await leftovers(catalog)
    assert [(f.kind, f.repaired) for f in report.findings] == [("pack_recovered", True)]
    for data in made.values():
        assert storage.read_object(digest(data)) == data
    await assert_sound(catalog)


# -- checked and repaired --------------------------------------------------------------------


async def test_what_a_dead_process_left_of_packs_is_cleared(catalog: Catalog, files: Path) -> None:
    made = many(files)
    await catalog.scan()
    (name,) = pack_names(catalog.storage)
    # A collector died with the pack moved aside; a scan died writing another.
    aside = catalog.storage.tmp / storage_temp_name("packaside", _dead_pid(), name.removesuffix(".pack"))
    os.rename(catalog.storage.packs / name, aside)
    half = write(
        catalog.storage.tmp / storage_temp_name("pack", _dead_pid(), packs.new_name().removesuffix(".pack")),
        packs.HEADER + b"cut",
    )
    # And one died between linking its pack and releasing the link (the pack in place).
    link = catalog.storage.tmp / storage_temp_name("pack", _dead_pid(), name.removesuffix(".pack"))
    report = await fsck(catalog)
    assert {f.kind for f in report.findings} == {"pack_aside", "temp_leftover"}
    assert all(f.repaired for f in report.findings)
    assert pack_names(catalog.storage) == [name] and not half.exists()
    os.link(catalog.storage.packs / name, link)
    report = await fsck(catalog)
    assert [f.kind for f in report.findings] == ["temp_leftover"] and not link.exists()
    for data in made.values():
        assert catalog.storage.read_object(digest(data)) == data
    await assert_sound(catalog)


async def test_a_damaged_pack_is_reported_and_its_content_recovered_from_working_copies(
    catalog: Catalog, files: Path
) -> None:
    made = many(files)
    await catalog.scan()
    (name,) = pack_names(catalog.storage)
    path = catalog.storage.packs / name
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # its trailer
    fresh = await open_again(catalog)
    report = await fsck(fresh, deep=True)
    kinds = {f.kind for f in report.findings}
    assert "pack_damaged" in kinds and "missing_object" in kinds, kinds
    repaired = await fsck(fresh, repair=True, deep=True)
    assert all(f.repaired for f in repaired.findings), repaired.findings
    for rel, content in made.items():
        file = (await fresh.get_info(file_path=rel)).file
        assert fresh.storage.read_object(file.checksum) == content
    # Nothing needs the pack any more: set aside (never removed), and fsck is clean again.
    assert not path.exists() and (fresh.storage.damaged / name).read_bytes() == data[:-1] + bytes(
        [data[-1] ^ 1]
    )
    assert (await fsck(fresh, deep=True)).clean
    assert temps_left(fresh) == []


def test_a_damaged_pack_is_read_back_entry_by_entry(tmp_path: Path) -> None:
    rng = random.Random(2)
    contents = [rng.randbytes(rng.randrange(0, 5000)) for _ in range(50)]
    path = tmp_path / packs.new_name()
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        index = packs.write(fd, [(digest(c), c) for c in contents])
    finally:
        os.close(fd)
    data = bytearray(path.read_bytes())
    flipped = digest(contents[7])
    data[index[flipped][0]] ^= 1 if index[flipped][1] else 0  # one entry's content
    data[-30] ^= 1  # the trailer
    cut = bytes(data[: index[digest(contents[40])][0] + 3])  # and, again, cut inside entry 40
    for damaged, expected in (
        (bytes(data), [c for c in contents if digest(c) != flipped or not c]),
        (cut, [c for c in contents[:40] if digest(c) != flipped or not c]),
    ):
        path.write_bytes(damaged)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(packs.PackDamaged):
                packs.read_index(fd)
            assert list(packs.salvage(fd)) == [(digest(c), c) for c in expected]
        finally:
            os.close(fd)


async def test_a_damaged_pack_gives_back_old_versions_no_working_copy_holds(
    catalog: Catalog, files: Path
) -> None:
    made = many(files)
    await catalog.scan()
    for rel in made:
        write(files / rel, "rewritten " + rel)  # the first versions are in the pack only
    await catalog.scan()
    (name,) = pack_names(catalog.storage)
    path = catalog.storage.packs / name
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-5])  # its trailer cut short
    fresh = await open_again(catalog)
    first = await fsck(fresh)
    assert [f.kind for f in first.findings if f.kind == "pack_damaged"] == ["pack_damaged"]
    assert "fsck --repair" in next(f.detail for f in first.findings if f.kind == "pack_damaged")
    assert not all(f.repaired for f in first.findings)
    repaired = await fsck(fresh, repair=True)
    assert all(f.repaired for f in repaired.findings), repaired.findings
    assert f"{len(made)} of its entries read back" in repaired.findings[-1].detail
    for rel, content in made.items():
        file = (await fresh.get_info(file_path=rel)).file
        assert (await fresh.content(file, 1, 1 << 20)).data == content
    assert (await fsck(fresh, deep=True)).clean
    await assert_sound(fresh)


async def test_what_is_not_a_pack_in_the_packs_folder_is_reported_and_left_alone(
    catalog: Catalog, files: Path
) -> None:
    made = many(files)
    await catalog.scan()
    odd = catalog.storage.packs / packs.new_name()
    odd.mkdir()  # a folder by a pack's name
    (catalog.storage.packs / packs.new_name()).symlink_to("/etc/passwd")
    (catalog.storage.packs / packs.new_name()).symlink_to("/nowhere")
    (catalog.storage.packs / "notes.txt").write_text("not a pack's name: never read")
    fresh = await open_again(catalog)
    for data in made.values():
        assert fresh.storage.read_object(digest(data)) == data
    assert fresh.storage.read_object(digest(b"nowhere")) is None
    report = await fsck(fresh, deep=True)
    assert [f.kind for f in report.findings] == ["pack_damaged"] * 3, report.findings
    await fresh.purge()
    assert odd.is_dir() and (catalog.storage.packs / "notes.txt").exists()


async def test_a_damaged_packed_entry_is_found_by_a_deep_check_and_repaired(
    catalog: Catalog, files: Path
) -> None:
    made = many(files)
    await catalog.scan()
    (name,) = pack_names(catalog.storage)
    rel = "user/many/005.bin"
    checksum = digest(made[rel])
    fd = os.open(catalog.storage.packs / name, os.O_RDONLY)
    try:
        offset, length = packs.read_index(fd)[checksum]
    finally:
        os.close(fd)
    assert length > 0
    path = catalog.storage.packs / name
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert (await fsck(catalog)).clean  # sizes only: as for an object of its own
    report = await fsck(catalog, deep=True, repair=True)
    assert [(f.kind, f.repaired) for f in report.findings] == [("missing_object", True)], report.findings
    assert "damaged" in report.findings[0].detail
    assert catalog.storage.read_object(checksum) == made[rel]
    await assert_sound(catalog)


async def open_again(catalog: Catalog) -> Catalog:
    """The same catalog through a new Storage (nothing it read of the packs remembered)."""
    catalog.storage = Storage(catalog.storage.root)
    return catalog


@pytest.mark.slow
async def test_sigkilled_scans_of_many_small_files_lose_nothing(settings: Settings, files: Path) -> None:
    """`horace scan` killed again and again while it packs: afterwards every catalogued
    file's content reads back, fsck repairs what the kills left, and the store is sound.
    Each round gives its scan new files, and the kill comes once the scan is seen staging
    them (a new temp in .horace/tmp), so that it lands inside the scan whatever the
    machine's speed."""
    env = {
        **os.environ,
        "HORACE_STORAGE_PATH": str(settings.storage_path),
        "HORACE_DATABASE_URL": settings.catalog_url,
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    async with open_catalog(settings, create=True) as catalog:
        tmp = catalog.storage.tmp
    rng = random.Random(4)
    made: dict[str, bytes] = {}
    killed = 0
    for round_number in range(8):
        made |= many(files, 4 * PACK_MIN_FILES, folder=f"user/many{round_number}", seed=round_number)
        before = set(os.listdir(tmp))
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "horace", "scan"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.move_on_after(30):
            while (
                process.poll() is None
                and not {n for n in os.listdir(tmp) if n.startswith(TMP_PREFIX)} - before
            ):
                await trio.sleep(0.002)
        await trio.sleep(rng.uniform(0, 0.15))
        process.send_signal(signal.SIGKILL)
        killed += await process.wait() == -signal.SIGKILL
    assert killed >= 1, "no scan was killed before it ended"
    repairing = attrs.evolve(settings, deleted_retention=0.0)
    async with open_catalog(repairing, check=False) as catalog:
        await fsck(catalog, repair=True, deep=True)
        assert (await catalog.scan()).errors == ()
        paths: dict[bytes, list[str]] = {}  # (each round's empty 000.bin: one content, one file)
        for rel, content in made.items():
            paths.setdefault(content, []).append(rel)
        for content, rels in paths.items():
            found = [file for rel in rels if (file := await catalog.backend.file_by_path(rel))]
            assert found, f"no file of {rels} is catalogued"
            assert all(catalog.storage.read_object(file.checksum) == content for file in found)
        await assert_sound(catalog)


async def test_a_pack_that_does_not_fit_loses_nothing_and_what_fits_is_taken(
    small_tmpfs: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    """The working files fit, a pack of them does not: they are taken one by one, as
    objects of their own, until the disk is full; each left out is STORAGE_FULL in the
    report, nothing is left behind, and once they are smaller a scan takes them too."""
    settings = Settings(storage_path=small_tmpfs / "root", gc_grace=0.0)
    async with open_catalog(settings, create=True) as catalog:
        files = catalog.storage.files
        made = {f"user/many/{i:03d}.bin": os.urandom(20 << 10) for i in range(80)}
        for rel, data in made.items():
            write(files / rel, data)
        report = await catalog.scan()
        assert 0 < report.registered < 80 and report.registered + len(report.errors) == 80
        assert all("is full" in error for error in report.errors)  # the store's disk, or the catalog's
        assert all((files / rel).read_bytes() == data for rel, data in made.items())
        assert temps_left(catalog) == [] and pack_names(catalog.storage) == []
        await assert_sound(catalog)
        left_out = [error.split(": ", 1)[0].strip("'") for error in report.errors]  # (names quoted)
        for rel in left_out:
            write(files / rel, os.urandom(1 << 10))  # (smaller now)
        again = await catalog.scan()
        assert (again.registered, again.errors) == (len(left_out), ())
        await assert_sound(catalog)


async def test_a_pack_put_back_by_its_release_while_aside_is_not_left_aside(
    catalog: Catalog, files: Path
) -> None:
    """The collector moves a pack aside; the batch's release puts it back from its staged
    link (the same file); the collector, finding it referred to, puts it back too: one
    pack in place, nothing left in .horace/tmp."""
    many(files)
    await catalog.scan()
    (name,) = pack_names(catalog.storage)
    storage = catalog.storage
    link = storage.tmp / storage_temp_name("pack", os.getpid(), name.removesuffix(".pack"))
    os.link(storage.packs / name, link)  # as a batch's link before its release
    aside = storage.quarantine_pack(name, 0.0)
    assert aside is not None
    storage.release_pack(link)
    storage.unquarantine_pack(aside, name)
    assert pack_names(storage) == [name]
    assert temps_left(catalog) == []
    await assert_sound(catalog)
