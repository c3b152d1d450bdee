"""Many writers at once: one writer per file at a time, and nothing lost (SPEC §2 "Locks").

Inside one process: 200 concurrent updates of ONE file, 200 concurrent registrations of
one new path, and 200 concurrent updates of 200 different files. Across processes: two
OS processes on the same storage root and database updating a shared file and files of
their own at once.

The invariants: each file's versions are dense 1..N and unique; two consecutive versions
never have the same content (a version is made only when the content differs from the
current one, which two unserialised writers would both get wrong); every version a call
reported is there with its checksum; every version's object holds exactly the bytes of
some content that was written; and fsck(deep) is clean. Retention is set high
(version_count=1000) so that pruning hides nothing.
"""

from __future__ import annotations

import os
import random
from itertools import pairwise
from pathlib import Path

import attrs
import pytest
import trio
from helpers import write
from processes import parse, start_worker, worker_command
from soundness import assert_sound, check_file_versions, digest

from horace.assemble import open_catalog
from horace.backends.records import FileChanges, FileRecord
from horace.catalog import Catalog, Updated
from horace.config import Settings

TASKS = 200


@pytest.fixture
async def big_catalog(settings: Settings) -> Catalog:
    async with open_catalog(attrs.evolve(settings, version_count=1000), create=True) as catalog:
        yield catalog  # type: ignore[misc]


class Writer:
    """Writes contents atomically (temp outside files/, then rename), so every read of the
    working file sees one whole content; remembers every content it wrote."""

    def __init__(self, root: Path) -> None:
        self.scratch = root / "scratch"
        self.scratch.mkdir(exist_ok=True)
        self.contents: dict[str, bytes] = {}
        self.n = 0

    def write(self, target: Path, content: bytes) -> None:
        self.contents[digest(content)] = content
        self.n += 1
        temp = self.scratch / f"c{self.n}"
        temp.write_bytes(content)
        os.replace(temp, target)


class Pacer:
    """When each of the tasks writes its content: the even ones in a burst at the start
    (the most contention), the odd ones spread over the whole run by progress rather than
    by time (task i waits for i // 4 calls to finish), so that writes land between commits
    however slow the machine or the backend is."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.finished = 0
        self.progressed = trio.Event()

    async def wait_turn(self, i: int) -> None:
        if i % 2 == 0:
            await trio.sleep(self.rng.uniform(0, 0.1))
            return
        while self.finished < i // 4:
            await self.progressed.wait()

    def done(self) -> None:
        self.finished += 1
        self.progressed.set()
        self.progressed = trio.Event()


def content_for(rng: random.Random, tag: str) -> bytes:
    return f"{tag}\n".encode() + rng.randbytes(rng.randint(0, 48 * 1024))


async def check_history(
    catalog: Catalog, file: FileRecord, written: dict[str, bytes], reported: list[tuple[int, str]]
) -> list[int]:
    """The history of one file against what was written and what the calls reported."""
    file = await catalog.backend.file_by_id(file.id) or file
    versions = sorted(await catalog.backend.versions(file.id), key=lambda v: v.version)
    check_file_versions(catalog, file, versions, dense=True)
    by_number = {v.version: v.checksum for v in versions}
    for number, checksum in reported:
        assert by_number.get(number) == checksum, f"reported version {number} lost or changed"
    assert len({n for n, _ in reported}) == len(reported), "two calls reported the same version"
    ordered = [v.checksum for v in versions]
    assert all(a != b for a, b in pairwise(ordered)), "two consecutive versions of the same content"
    for v in versions:
        assert v.checksum in written, f"version {v.version} holds content nobody wrote"
        assert catalog.storage.object_path(v.checksum).read_bytes() == written[v.checksum]
    return [v.version for v in versions]


async def test_200_concurrent_updates_of_one_file(big_catalog: Catalog, files: Path, tmp_path: Path) -> None:
    catalog, rng, writer = big_catalog, random.Random(1), Writer(tmp_path)
    target = files / "shared/hot.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    writer.write(target, b"initial")
    file = (await catalog.register("shared/hot.bin")).file
    reported: list[tuple[int, str]] = []

    pacer = Pacer(rng)

    async def one(i: int) -> None:
        await pacer.wait_turn(i)
        writer.write(target, content_for(rng, f"task {i}"))
        result = await catalog.update(file.id, FileChanges(tags=(f"t{i}",)))
        if result.version_created:
            reported.append((result.file.current_version, result.file.checksum))
        pacer.done()

    async with trio.open_nursery() as nursery:
        for i in range(TASKS):
            nursery.start_soon(one, i)
    numbers = await check_history(catalog, file, writer.contents, reported)
    assert len(numbers) == 1 + len(reported), "a version appeared that no call reported"
    assert len(reported) >= 5, f"only {len(reported)} of {TASKS} updates saw new content"
    # The last write is versioned by one more update, and then the working file is current.
    print(f"one file: {len(reported)} versions from {TASKS} concurrent updates")
    final = await catalog.update(file.id, FileChanges())
    assert final.file.checksum == digest(target.read_bytes())
    await assert_sound(catalog)


async def test_200_concurrent_registrations_of_one_path(
    big_catalog: Catalog, files: Path, tmp_path: Path
) -> None:
    catalog, rng, writer = big_catalog, random.Random(2), Writer(tmp_path)
    rel = "user/contended/new.bin"
    target = files / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    reported: list[tuple[int, str]] = []
    ids: set[str] = set()

    pacer = Pacer(rng)

    async def one(i: int) -> None:
        await pacer.wait_turn(i)
        writer.write(target, content_for(rng, f"task {i}"))
        result = await catalog.register(rel)
        assert not result.duplicate and result.file.file_path == rel
        ids.add(result.file.id)
        if result.version_created:
            reported.append((result.file.current_version, result.file.checksum))
        pacer.done()

    async with trio.open_nursery() as nursery:
        for i in range(TASKS):
            nursery.start_soon(one, i)
    assert len(ids) == 1, "one path, registered as several files"
    files_at_path = [f for f in await catalog.backend.all_files() if f.file_path == rel]
    assert len(files_at_path) == 1
    numbers = await check_history(catalog, files_at_path[0], writer.contents, reported)
    assert numbers == sorted(n for n, _ in reported), "a version appeared that no call reported"
    assert 1 in numbers and len(numbers) >= 5
    print(f"one path: {len(numbers)} versions from {TASKS} concurrent registrations")
    await assert_sound(catalog)


async def test_200_concurrent_updates_of_200_files(big_catalog: Catalog, files: Path) -> None:
    catalog, rng = big_catalog, random.Random(3)
    rels = [
        f"{('gates', 'playfair', 'fiedler', 'user', 'shared')[i % 5]}/many/f{i:03}.bin" for i in range(TASKS)
    ]
    first = {rel: write(files / rel, content_for(rng, f"{rel} v1")).read_bytes() for rel in rels}
    # 200 concurrent registrations of different files, then 200 concurrent updates.
    registered: dict[str, FileRecord] = {}

    async def register(rel: str) -> None:
        result = await catalog.register(rel)
        assert result.version_created and not result.duplicate
        registered[rel] = result.file

    async with trio.open_nursery() as nursery:
        for rel in rels:
            nursery.start_soon(register, rel)
    second = {rel: write(files / rel, content_for(rng, f"{rel} v2")).read_bytes() for rel in rels}
    results = {}

    async def update(rel: str) -> None:
        results[rel] = await catalog.update(registered[rel].id, FileChanges(tags=(rel,)))

    async with trio.open_nursery() as nursery:
        for rel in rels:
            nursery.start_soon(update, rel)
    assert len({f.id for f in registered.values()}) == TASKS
    for rel in rels:
        done = results[rel]
        assert done.version_created and done.file.current_version == 2 and done.file.tags == (rel,)
        assert done.file.checksum == digest(second[rel])
        versions = sorted(await catalog.backend.versions(done.file.id), key=lambda v: v.version)
        assert [(v.version, v.checksum) for v in versions] == [
            (1, digest(first[rel])),
            (2, digest(second[rel])),
        ]
        for v, data in zip(versions, (first[rel], second[rel]), strict=True):
            assert catalog.storage.object_path(v.checksum).read_bytes() == data
    await assert_sound(catalog)


async def test_two_processes_on_one_root_and_database(settings: Settings, files: Path) -> None:
    shared = "shared/both.bin"
    own = {"p1": "user/p1/own.bin", "p2": "user/p2/own.bin"}
    initial = {}
    async with open_catalog(attrs.evolve(settings, version_count=1000), create=True) as catalog:
        for rel in (shared, *own.values()):
            initial[rel] = write(files / rel, f"initial {rel}".encode()).read_bytes()
            await catalog.register(rel)

    workers = {}
    async with trio.open_nursery() as nursery:
        for tag, mine in own.items():
            command = worker_command(
                settings.storage_path,
                settings.catalog_url,
                [shared, mine],
                "--count",
                "120",
                "--max-size",
                str(96 * 1024),
                "--wait-go",
                "--tag",
                tag,
            )
            workers[tag] = await start_worker(nursery, command)
        with trio.fail_after(60):
            for worker in workers.values():
                await worker.ready.wait()
        for worker in workers.values():  # both start at once
            await worker.go()
        with trio.fail_after(120):
            for worker in workers.values():
                await worker.process.wait()
                await worker.finished.wait()
    for tag, worker in workers.items():
        assert worker.process.returncode == 0 and worker.lines[-1] == "done", (
            tag,
            worker.lines[-3:],
        )

    reports = {tag: parse(w.lines) for tag, w in workers.items()}
    async with open_catalog(attrs.evolve(settings, version_count=1000), create=True, check=False) as catalog:
        for rel in (shared, *own.values()):
            file = (await catalog.get_info(file_path=rel)).file
            versions = await catalog.backend.versions(file.id)
            reported = [(n, c) for r in reports.values() for (p, n, c) in r.committed if p == rel]
            wrote = {c for r in reports.values() for (p, c) in r.wrote if p == rel} | {digest(initial[rel])}
            by_number = {v.version: v.checksum for v in versions}
            check_file_versions(catalog, file, versions, dense=True)
            assert len({n for n, _ in reported}) == len(reported), f"{rel}: two processes got one version"
            for number, checksum in reported:
                assert by_number.get(number) == checksum, f"{rel}: reported version {number} lost"
            assert sorted(by_number) == [1, *sorted(n for n, _ in reported)], f"{rel}: unreported versions"
            assert set(by_number.values()) <= wrote, f"{rel}: a version of content nobody wrote"
            ordered = [by_number[n] for n in sorted(by_number)]
            assert all(a != b for a, b in pairwise(ordered)), f"{rel}: consecutive equal versions"
        both = {tag for tag, r in reports.items() if any(p == shared for p, _, _ in r.committed)}
        assert both == set(own), "both processes should have versioned the shared file"
        order = [
            t for _, t in sorted((n, t) for t, r in reports.items() for p, n, _ in r.committed if p == shared)
        ]
        handovers = sum(a != b for a, b in pairwise(order))
        print(f"two processes: {len(order)} versions of the shared file, {handovers} handovers")
        await assert_sound(catalog)


async def test_an_update_reports_its_own_changes_not_those_made_while_it_waited(
    catalog: Catalog, files: Path
) -> None:
    """Two editors of one file: the second waits for the first's lock, and what it says it
    changed is told against the file as it found it then, not as it was when it asked."""
    write(files / "user/shared.md", "v1")
    file = (await catalog.register("user/shared.md")).file
    done: list[Updated] = []

    async def second_editor() -> None:
        done.append(await catalog.update(file.id, FileChanges(owner="bob")))

    async with trio.open_nursery() as nursery, catalog.writing(file.file_path) as db:
        nursery.start_soon(second_editor)
        await trio.sleep(0.2)
        assert not done  # waiting for the lock
        # the first editor's change, made under the lock the second waits for
        await db.update_file(file.id, FileChanges(purpose="the first editor's"), catalog.clock())
    (second,) = done
    assert second.changed_fields == ("owner",), second
    assert second.file.purpose == "the first editor's" and second.file.owner == "bob"
