"""A scan commits its changed files together: under the locks that are free, in one unit of
work, and only for files still as the scan saw them. Everything else goes the way of one
file, waiting for its lock and looking again (SPEC §2 "Locks"). Each test runs on the
backend the suite runs on."""

from __future__ import annotations

import itertools
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
from helpers import sha256, write
from soundness import assert_sound

from horace.assemble import open_catalog
from horace.backends.records import FileChanges, IndexEntry, NewVersion, Retention, Status
from horace.catalog import Catalog
from horace.config import Settings
from horace.locks import lock_key
from horace.model import ErrorCode, HoraceError


async def _versions(catalog: Catalog, rel: str) -> list[tuple[int, str]]:
    file = await catalog.backend.file_by_path(rel)
    assert file is not None
    return sorted((v.version, v.checksum) for v in await catalog.backend.versions(file.id))


async def _entries(catalog: Catalog) -> dict[str, IndexEntry]:
    return {e.file_path: e for e in await catalog.backend.working_index()}


async def test_add_versions_records_only_files_still_as_seen(catalog: Catalog, files: Path) -> None:
    for name in ("seen", "moved_on", "deleted", "renamed"):
        write(files / f"user/{name}.txt", name)
        await catalog.register(f"user/{name}.txt")
    entries = await _entries(catalog)
    deleted = entries["user/deleted.txt"]
    await catalog.delete(deleted.file_id)
    renamed = entries["user/renamed.txt"]  # moved since: its old path holds another file
    (files / "user/renamed.txt").rename(files / "user/renamed-away.txt")
    await catalog.move(renamed.file_id, "user/renamed-away.txt")
    write(files / "user/moved_on.txt", "moved on")
    await catalog.register("user/moved_on.txt")  # version 2: the entry's version 1 is stale
    stale = attrs.evolve(entries["user/seen.txt"], file_id="00000000-0000-4000-8000-000000000000")

    def new(text: str) -> NewVersion:
        return NewVersion(sha256(text), len(text), "text/plain")

    done = await catalog.backend.add_versions(
        [
            (entries["user/seen.txt"], new("seen 2")),
            (entries["user/moved_on.txt"], new("moved on 3")),
            (deleted, new("deleted 2")),
            (stale, new("nobody")),
            (attrs.evolve(stale, file_id="not an id"), new("nobody")),
            (renamed, new("another file at its old path")),
        ],
        datetime.now(UTC),
        "corr-1",
        Retention(),
    )
    assert [outcome is not None for outcome in done] == [True, False, False, False, False, False]
    assert await _versions(catalog, "user/renamed-away.txt") == [(1, sha256("renamed"))]
    assert renamed.working is not None
    assert await catalog.backend.refresh_working([renamed]) == 0  # (nor its identity)
    assert done[0] is not None
    record, version, orphans = done[0]
    assert (record.current_version, record.checksum, version.version) == (2, sha256("seen 2"), 2)
    assert (version.correlation_id, orphans) == ("corr-1", [])
    # What was not as seen is untouched.
    assert await _versions(catalog, "user/moved_on.txt") == [(1, sha256("moved_on")), (2, sha256("moved on"))]
    assert await _versions(catalog, "user/deleted.txt") == [(1, sha256("deleted"))]
    file = await catalog.backend.file_by_id(deleted.file_id)
    assert file is not None and file.status is Status.DELETED


async def test_a_file_rotated_while_a_scan_reads_it_again_keeps_its_own_history(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log rotation (`mv app.log app.log.1`, a new app.log) followed by a watcher while a
    scan is about to read app.log again: what the scan reads there is the new file's,
    never a version of the file that is app.log.1 now."""
    log = write(files / "svc/app.log", "old day\n" * 50)
    file = (await catalog.register("svc/app.log")).file
    stamp = os.stat(log).st_mtime_ns + 10_000_000
    os.utime(log, ns=(stamp, stamp))  # (touched: the scan reads it again)
    look_again = Catalog._look_again

    async def rotated_first(self: Catalog, *args: object) -> None:
        log.rename(files / "svc/app.log.1")
        write(log, "new day\n" * 50)
        await self.move(file.id, "svc/app.log.1")  # the watcher follows the rename
        await look_again(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Catalog, "_look_again", rotated_first)
    await catalog.scan()
    monkeypatch.undo()
    assert await _versions(catalog, "svc/app.log.1") == [(1, sha256("old day\n" * 50))]
    await catalog.scan()  # (the new app.log, left for the next look)
    assert await _versions(catalog, "svc/app.log") == [(1, sha256("new day\n" * 50))]
    await assert_sound(catalog)


async def test_exclusive_free_never_waits_and_gives_back_what_it_took(catalog: Catalog) -> None:
    backend = catalog.backend
    busy, free = lock_key("user/busy.txt"), lock_key("user/free.txt")
    async with backend.exclusive(busy):
        with trio.fail_after(5):
            async with backend.exclusive_free([busy, free, free]) as (_, keys):
                if backend.url.startswith("sqlite"):
                    # One host's catalog: the caller's fcntl locks are what exclude.
                    assert keys == {busy, free}
                else:
                    assert keys == {free}
    async with backend.exclusive_free([busy, free]) as (_, keys):
        assert keys == {busy, free}
        if not backend.url.startswith("sqlite"):
            with trio.move_on_after(0.2) as waited:  # held now: exclusive() waits
                async with backend.exclusive(free):
                    pass
            assert waited.cancelled_caught
    with trio.fail_after(5):  # and free again once it is left
        async with backend.exclusive(free):
            pass


async def test_a_file_whose_lock_is_held_is_committed_after_its_holder(catalog: Catalog, files: Path) -> None:
    names = [f"user/{n}.txt" for n in ("a", "b", "c")]
    for rel in names:
        write(files / rel, f"{rel} 1")
    assert (await catalog.scan()).registered == 3
    for rel in names:
        write(files / rel, f"{rel} two")
    released = trio.Event()
    order: list[str] = []

    async def holder(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with catalog.writing("user/b.txt"):
            task_status.started()
            await trio.sleep(0.3)
            order.append("released")
            released.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        report = await catalog.scan()
        order.append("scanned")
    assert order == ["released", "scanned"]  # the scan waited for b's lock
    assert (report.versioned, report.errors) == (3, ())
    for rel in names:
        assert await _versions(catalog, rel) == [(1, sha256(f"{rel} 1")), (2, sha256(f"{rel} two"))]
    await assert_sound(catalog)


async def test_a_file_versioned_after_the_scan_looked_is_taken_again(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer versions the file between the scan's look at the catalog and its
    commit: the scan's copy is not recorded over it as a version of its own; the file is
    taken again, under its lock, and found as that writer left it."""
    for rel in ("user/a.txt", "user/b.txt"):
        write(files / rel, f"{rel} 1")
    await catalog.scan()
    write(files / "user/a.txt", "a two")
    write(files / "user/b.txt", "b two")
    real_index = catalog.backend.working_index

    async def index_then_a_writer() -> list[IndexEntry]:
        seen = await real_index()
        await catalog.register("user/a.txt")  # versions "a two" as version 2
        return seen  # a is still at version 1 here

    monkeypatch.setattr(catalog.backend, "working_index", index_then_a_writer)
    report = await catalog.scan()
    assert await _versions(catalog, "user/a.txt") == [(1, sha256("user/a.txt 1")), (2, sha256("a two"))]
    assert await _versions(catalog, "user/b.txt") == [(1, sha256("user/b.txt 1")), (2, sha256("b two"))]
    assert (report.versioned, report.unchanged, report.errors) == (1, 1, ())
    await assert_sound(catalog)


@pytest.mark.slow
async def test_two_instances_scanning_while_files_change_lose_nothing(
    settings: Settings, files: Path
) -> None:
    """Two catalogs on one store and database (two instances) scan the same tree over and
    over, while its files are rewritten (in place and by rename) and updated and restored
    through both. Afterwards every working file's content is its file's current version,
    no scan recorded a copy over another writer's version (no two equal versions in a row
    but by a restore), and the catalog is sound once the collector has run."""
    rng = random.Random()
    settings = attrs.evolve(settings, version_count=1000, gc_grace=0.0)
    names = [f"d{i % 5}/f{i}.bin" for i in range(120)]

    def rewrite(rel: str) -> None:
        data = os.urandom(rng.choice([100, 4096, 70_000]))
        if rng.random() < 0.5:
            write(files / rel, data)
        else:
            os.replace(write(files / f"{rel}.part~", data), files / rel)

    for rel in names:
        rewrite(rel)
    scans = 0
    async with open_catalog(settings, create=True) as one, open_catalog(settings) as two:
        await one.scan()
        end = trio.current_time() + 5

        async def scanning(catalog: Catalog) -> None:
            nonlocal scans
            while trio.current_time() < end:
                await catalog.scan()
                scans += 1

        async def writing() -> None:
            while trio.current_time() < end:
                await trio.to_thread.run_sync(lambda: [rewrite(rng.choice(names)) for _ in range(10)])
                await trio.sleep(0.01)

        async def editing(catalog: Catalog) -> None:
            while trio.current_time() < end:
                file = await catalog.backend.file_by_path(rng.choice(names))
                assert file is not None
                try:
                    if rng.random() < 0.7:
                        await catalog.update(file.id, FileChanges())
                    else:
                        version = rng.choice(await catalog.backend.versions(file.id)).version
                        await catalog.restore(file.id, version)
                except HoraceError as exc:  # a save while Horace read the file: try again
                    assert exc.code is ErrorCode.FILE_LOCKED, exc

        async with trio.open_nursery() as nursery:
            for catalog in (one, two):
                nursery.start_soon(scanning, catalog)
                nursery.start_soon(editing, catalog)
            nursery.start_soon(writing)
        assert scans >= 4, "the scans never overlapped the writers"
        await trio.sleep(1.1)  # past the racy margin: the last scan trusts nothing it should not
        assert not (await one.scan()).errors
        for rel in names:
            file = await one.backend.file_by_path(rel)
            assert file is not None and file.checksum == sha256((files / rel).read_bytes()), rel
            versions = sorted(await one.backend.versions(file.id), key=lambda v: v.version)
            assert not [
                (a.version, b.version)
                for a, b in itertools.pairwise(versions)
                if a.checksum == b.checksum and b.restored_from_version is None
            ], f"{rel}: a version equal to the one before it"
        # Copies a scan kept for a file another writer took first (kept a retention long)
        one.policy = attrs.evolve(one.policy, gc_grace_seconds=0.0, deleted_retention=timedelta(0))
        await one.collect_orphans()
        await assert_sound(one)
