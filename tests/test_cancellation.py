"""Cancellation at any point leaves the whole version or nothing (SPEC §2).

Two approaches, on register (new path and re-registration), update with a content change,
and restore (with and without unsaved changes in the working file); the second on delete
and archive too:

- random deadlines: hundreds of ``trio.move_on_after(random delay)`` trials per operation,
  the delays spread over the operation's measured duration, with file sizes up to a few
  MiB so that some cancellations land in the middle of a copy;
- a deterministic injection hook: every storage step (``horace.catalog.in_thread``), every
  backend unit and the file lock's ``exclusive`` are counted, and the caller's scope is
  cancelled right before or right after the N-th of them, for every N; and separately at
  the N-th in-thread cancellation check of a copy (between 1 MiB chunks).

After every attempt: ``fsck(deep=True)`` is clean and checked directly (see soundness.py),
no temp file is left anywhere, the working file holds the old or the new content (never a
mix, never new content without its version), versions only ever appear whole and in
order, and retrying the operation succeeds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import write
from soundness import assert_sound, digest, objects_on_disk, temps_left

import horace.catalog
import horace.storage
from horace.assemble import open_catalog
from horace.backends.records import FileChanges, FileRecord, Status, VersionRecord
from horace.catalog import Catalog
from horace.config import Settings

KiB, MiB = 1 << 10, 1 << 20
RANDOM_TRIALS = 250  # per operation, in the default run
SLOW_TRIALS = 3000
SLICE_TRIALS = 120  # of the slow sweep, in every run


def slow_selected(config: pytest.Config) -> bool:
    """Whether the run asked for the slow tests (``-m slow``), not only left them in."""
    expression = config.getoption("markexpr") or ""
    return "slow" in expression and "not slow" not in expression


# -- the content written by the scenarios --------------------------------------------------


def make_content(rng: random.Random, tag: str, size: int | None = None) -> bytes:
    if size is None:
        # Mostly small, a fifth over 1 MiB (a copy checks for cancellation once per MiB).
        size = rng.randint(8 * KiB, 256 * KiB) if rng.random() < 0.8 else rng.randint(MiB, 2 * MiB + KiB)
    header = f"{tag}\n".encode()
    return header + rng.randbytes(max(size - len(header), 0))


async def versions_of(catalog: Catalog, file_id: str) -> list[VersionRecord]:
    return sorted(await catalog.backend.versions(file_id), key=lambda v: v.version)


def purging_every(n: int, scenario: Scenario) -> Scenario:
    """Purge the finished files n at a time rather than after each attempt."""
    scenario.cleanup_every = n
    return scenario


def check_old_versions_kept(before: list[VersionRecord], after: list[VersionRecord]) -> None:
    """Rows that were there stay as they were; only the oldest may have been pruned."""
    old = {v.version: v for v in before}
    kept = [v for v in after if v.version in old]
    assert all(v == old[v.version] for v in kept), "an existing version row changed"
    numbers = [v.version for v in before]
    assert [v.version for v in kept] == numbers[len(numbers) - len(kept) :], "a non-oldest version vanished"


# -- scenarios: one operation, its preconditions, its checks ---------------------------------


class Scenario:
    """prepare() sets up one attempt; run() is the operation under test; verify() checks
    the state after an attempt (completed or cancelled) and says whether it committed;
    retry() runs the operation again uncancelled and checks that it succeeded."""

    name = "?"
    fresh = True  # a new file per attempt (else one file across attempts)
    fixed_size: int | None = None  # None: sizes at random

    def __init__(self, files: Path, rng: random.Random) -> None:
        self.files = files
        self.rng = rng
        self.known: dict[str, bytes] = {}  # every content written, by checksum
        self.subject: FileRecord | None = None
        self.counter = 0
        self.done: list[str] = []  # fresh subjects finished with, to purge
        self.cleanup_every = 1

    def write(self, rel: str, content: bytes) -> None:
        self.known[digest(content)] = content
        write(self.files / rel, content)

    def working(self, rel: str) -> bytes:
        return (self.files / rel).read_bytes()

    async def prepare(self, catalog: Catalog) -> None:
        raise NotImplementedError

    async def run(self, catalog: Catalog) -> Any:
        raise NotImplementedError

    async def verify(self, catalog: Catalog) -> bool:
        raise NotImplementedError

    async def retry(self, catalog: Catalog) -> None:
        raise NotImplementedError

    async def cleanup(self, catalog: Catalog) -> None:
        if self.fresh and self.subject is not None:
            self.done.append(self.subject.id)
            self.subject = None
        if len(self.done) >= self.cleanup_every:
            for file_id in self.done:
                await catalog.delete(file_id)
            await catalog.purge()
            assert await catalog.backend.all_files() == []
            self.done.clear()

    def next_tag(self) -> str:
        self.counter += 1
        return f"{self.name}-{self.counter}"


class RegisterNew(Scenario):
    name = "register"

    async def prepare(self, catalog: Catalog) -> None:
        tag = self.next_tag()
        self.rel = f"user/reg/{tag}.bin"
        self.content = make_content(self.rng, tag, self.size())
        self.write(self.rel, self.content)
        self.subject = None

    def size(self) -> int | None:
        return self.fixed_size

    async def run(self, catalog: Catalog) -> Any:
        return await catalog.register(self.rel)

    async def verify(self, catalog: Catalog) -> bool:
        assert self.working(self.rel) == self.content  # register never writes the working file
        row = await catalog.backend.file_by_path(self.rel)
        if row is None:
            assert digest(self.content) not in objects_on_disk(catalog), "object without a row"
            await assert_sound(catalog)
            return False
        self.subject = row
        versions = await versions_of(catalog, row.id)
        assert [(v.version, v.checksum) for v in versions] == [(1, digest(self.content))]
        await assert_sound(catalog)
        return True

    async def retry(self, catalog: Catalog) -> None:
        had_row = await catalog.backend.file_by_path(self.rel) is not None
        result = await catalog.register(self.rel)
        assert not result.duplicate and result.version_created is not had_row
        assert (result.file.current_version, result.file.checksum) == (1, digest(self.content))
        self.subject = result.file
        await assert_sound(catalog, deep=False)


class Update(Scenario):
    """Update with a content change (and a tag change); via_register: re-register the path;
    via_scan: scan the file's folder (a changed file, committed with the scan's others)."""

    name = "update"

    def __init__(
        self,
        files: Path,
        rng: random.Random,
        *,
        fresh: bool = True,
        via_register: bool = False,
        via_scan: bool = False,
        size: int | None = None,
        unchanged_share: float = 0.0,
    ) -> None:
        super().__init__(files, rng)
        self.fresh = fresh
        self.via_register = via_register
        self.via_scan = via_scan
        self.fixed_size = size
        self.unchanged_share = unchanged_share
        if via_register:
            self.name = "reregister"
        if via_scan:
            self.name = "rescan"

    async def ensure_subject(self, catalog: Catalog) -> FileRecord:
        if self.subject is None:
            tag = self.next_tag()
            self.rel = f"user/upd/{tag}/{tag}.bin"  # a folder of its own, for a scan
            self.write(self.rel, make_content(self.rng, tag, self.fixed_size))
            self.subject = (await catalog.register(self.rel)).file
        found = await catalog.backend.file_by_id(self.subject.id)
        assert found is not None
        self.subject = found
        return found

    async def prepare(self, catalog: Catalog) -> None:
        self.before = await self.ensure_subject(catalog)
        self.before_versions = await versions_of(catalog, self.before.id)
        self.tag = self.next_tag()
        if self.rng.random() < self.unchanged_share:
            self.content = self.working(self.rel)  # no change: no version may appear
        else:
            self.content = make_content(self.rng, self.tag, self.fixed_size)
        self.write(self.rel, self.content)

    async def run(self, catalog: Catalog) -> Any:
        if self.via_register:
            return await catalog.register(self.rel)
        if self.via_scan:
            return await catalog.scan(self.rel.rpartition("/")[0])
        return await catalog.update(self.before.id, FileChanges(tags=(self.tag,)))

    async def verify(self, catalog: Catalog) -> bool:
        assert self.working(self.rel) == self.content  # an active file's working copy is never written
        file = await catalog.backend.file_by_id(self.before.id)
        assert file is not None
        versions = await versions_of(catalog, file.id)
        check_old_versions_kept(self.before_versions, versions)
        new = [v for v in versions if v.version > self.before.current_version]
        if digest(self.content) == self.before.checksum:
            assert new == [], "a version of unchanged content"
        if new:
            assert [(v.version, v.checksum, v.restored_from_version) for v in new] == [
                (self.before.current_version + 1, digest(self.content), None)
            ]
        else:
            assert (file.current_version, file.checksum) == (
                self.before.current_version,
                self.before.checksum,
            )
        if not self.via_register:
            assert file.tags in (self.before.tags, (self.tag,))
        await assert_sound(catalog)
        return bool(new)

    async def retry(self, catalog: Catalog) -> None:
        result = await self.run(catalog)
        if self.via_scan:
            assert not result.errors and result.versioned + result.unchanged == 1, result
            result = await catalog.get_info(file_id=self.before.id)
        assert result.file.checksum == digest(self.content)
        if not (self.via_register or self.via_scan):
            assert result.file.tags == (self.tag,)
        assert self.working(self.rel) == self.content
        await assert_sound(catalog, deep=False)


class Restore(Scenario):
    """Restore one of the newest versions; unsaved: the working file holds unversioned content."""

    name = "restore"

    def __init__(
        self,
        files: Path,
        rng: random.Random,
        *,
        fresh: bool = True,
        unsaved: bool | None = None,
        size: int | None = None,
    ) -> None:
        super().__init__(files, rng)
        self.fresh = fresh
        self.unsaved = unsaved  # None: at random
        self.fixed_size = size
        if unsaved is not None:
            self.name = "restore-unsaved" if unsaved else "restore-clean"

    async def ensure_subject(self, catalog: Catalog) -> FileRecord:
        if self.subject is None:
            tag = self.next_tag()
            self.rel = f"user/res/{tag}.bin"
            for i in range(3):
                self.write(self.rel, make_content(self.rng, f"{tag}-v{i + 1}", self.fixed_size))
                if i == 0:
                    self.subject = (await catalog.register(self.rel)).file
                else:
                    assert (await catalog.update(self.subject.id, FileChanges())).version_created
        assert self.subject is not None
        found = await catalog.backend.file_by_id(self.subject.id)
        assert found is not None
        self.subject = found
        return found

    async def prepare(self, catalog: Catalog) -> None:
        before = await self.ensure_subject(catalog)
        unsaved = self.rng.random() < 0.5 if self.unsaved is None else self.unsaved
        if unsaved:
            self.write(self.rel, make_content(self.rng, self.next_tag(), self.fixed_size))
        self.before = before
        self.before_versions = await versions_of(catalog, before.id)
        candidates = self.before_versions[-3:]  # stay clear of pruning by this attempt
        self.wanted = self.rng.choice(candidates) if self.unsaved is None else candidates[0]
        self.start = self.working(self.rel)
        self.target = self.known[self.wanted.checksum]

    async def run(self, catalog: Catalog) -> Any:
        return await catalog.restore(self.before.id, self.wanted.version)

    async def verify(self, catalog: Catalog) -> bool:
        working = self.working(self.rel)
        assert working in (self.start, self.target), "the working file holds a mix"
        file = await catalog.backend.file_by_id(self.before.id)
        assert file is not None
        versions = await versions_of(catalog, file.id)
        check_old_versions_kept(self.before_versions, versions)
        new = [
            (v.checksum, v.restored_from_version) for v in versions if v.version > self.before.current_version
        ]
        numbers = [v.version for v in versions if v.version > self.before.current_version]
        assert numbers == list(
            range(self.before.current_version + 1, self.before.current_version + 1 + len(new))
        )
        preserve = (digest(self.start), None)
        restored = (self.wanted.checksum, self.wanted.version)
        dirty = digest(self.start) != self.before.checksum
        # Unsaved content is kept first, whole, and then the restore goes on to its end: a
        # cancel stops it before the first commit or not at all, never half made.
        assert new in ([], [preserve, restored]) if dirty else new in ([], [restored])
        committed = bool(new) and new[-1] == restored
        if committed:
            assert working == self.target
        else:
            assert working == self.start, "working file written without its version"
        await assert_sound(catalog)
        return committed

    async def retry(self, catalog: Catalog) -> None:
        result = await self.run(catalog)
        assert (result.version.checksum, result.version.restored_from_version) == (
            self.wanted.checksum,
            self.wanted.version,
        )
        assert self.working(self.rel) == self.target
        await assert_sound(catalog, deep=False)


class Leave(Scenario):
    """A delete or an archive of a file whose working copy holds unsaved content: the copy
    leaves files/, is versioned (shielded), then the status changes. Cancelled anywhere,
    the file is active with its working copy as it was (its content maybe a version now),
    or out of files/ as the catalog says; never active without it."""

    def __init__(self, files: Path, rng: random.Random, status: Status) -> None:
        super().__init__(files, rng)
        self.status = status
        self.name = "delete" if status is Status.DELETED else "archive"

    async def prepare(self, catalog: Catalog) -> None:
        tag = self.next_tag()
        self.rel = f"user/out/{tag}.bin"
        self.write(self.rel, make_content(self.rng, f"{tag}-v1", self.fixed_size))
        self.before = self.subject = (await catalog.register(self.rel)).file
        self.before_versions = await versions_of(catalog, self.before.id)
        self.content = make_content(self.rng, f"{tag}-unsaved", self.fixed_size)
        self.write(self.rel, self.content)

    async def run(self, catalog: Catalog) -> Any:
        return await catalog.update(self.before.id, FileChanges(status=self.status))

    async def verify(self, catalog: Catalog) -> bool:
        file = await catalog.backend.file_by_id(self.before.id)
        assert file is not None
        versions = await versions_of(catalog, file.id)
        check_old_versions_kept(self.before_versions, versions)
        new = [(v.version, v.checksum) for v in versions if v.version > self.before.current_version]
        assert new in ([], [(self.before.current_version + 1, digest(self.content))])
        if file.status is Status.ACTIVE:
            assert self.working(self.rel) == self.content, "an active file without its working copy"
        else:
            assert file.status is self.status and new, (file.status, new)
            assert not (self.files / self.rel).exists()
        await assert_sound(catalog)
        return file.status is self.status

    async def retry(self, catalog: Catalog) -> None:
        result = await self.run(catalog)
        assert result.file.status is self.status and result.file.checksum == digest(self.content)
        assert not (self.files / self.rel).exists()
        await assert_sound(catalog, deep=False)


# -- the deterministic injection hook -------------------------------------------------------


class Injector:
    """Counts the steps of an operation and cancels the caller's scope at one of them.

    Points: each storage step run through ``horace.catalog.in_thread``, each backend unit
    (also those of the units ``exclusive`` yields) and the entry into ``exclusive``. With
    ``mode="before"`` the scope is cancelled just before the target point runs (in a
    shielded section this only takes effect after it), with ``"after"`` right after it
    returned. ``copy_target`` instead cancels from inside the worker thread at the N-th
    cancellation check of a copy, and waits until the thread sees the cancellation.
    """

    def __init__(self) -> None:
        self.shielded_copies = 0  # copies the cancel did not reach, over all attempts
        self.reset()

    def reset(self, target: int | None = None, mode: str = "after", copy_target: int | None = None) -> None:
        self.target, self.mode, self.copy_target = target, mode, copy_target
        self.calls = 0
        self.copy_calls = 0
        self.labels: list[str] = []
        self.fired = False
        self.scope: trio.CancelScope | None = None

    def fire(self) -> None:
        assert self.scope is not None
        self.fired = True
        self.scope.cancel()

    async def around(self, label: str, call: Callable[[], Awaitable[Any]]) -> Any:
        index = self.calls
        self.calls += 1
        self.labels.append(label)
        if index == self.target and self.mode == "before":
            self.fire()
        try:
            return await call()
        finally:
            if index == self.target and self.mode == "after":
                self.fire()

    def copy_check(self, real: Callable[[], None]) -> None:
        """In the worker thread: horace.catalog.check_cancelled."""
        index = self.copy_calls
        self.copy_calls += 1
        if index == self.copy_target:
            trio.from_thread.run_sync(self.fire)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # until the task blocks again and gets it
                real()
                time.sleep(0.0002)
            # Not reached: the copy runs shielded (a restore past its first commit goes on).
            self.shielded_copies += 1
        real()


class CountingUnits:
    """A backend (or the units of a held lock) whose every unit is an injection point."""

    def __init__(self, inner: Any, injector: Injector) -> None:
        self._inner = inner
        self._injector = injector

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        injector = self._injector
        if name == "exclusive":

            @asynccontextmanager
            async def exclusive(key: int) -> Any:
                async with AsyncExitStack() as stack:
                    units = await injector.around(name, lambda: stack.enter_async_context(attr(key)))
                    yield CountingUnits(units, injector)

            return exclusive
        if name == "exclusive_free":

            @asynccontextmanager
            async def exclusive_free(keys: Any) -> Any:
                async with AsyncExitStack() as stack:
                    units, held = await injector.around(name, lambda: stack.enter_async_context(attr(keys)))
                    yield CountingUnits(units, injector), held

            return exclusive_free
        if not callable(attr) or name.startswith("_"):
            return attr

        async def unit(*args: Any, **kwargs: Any) -> Any:
            return await injector.around(name, lambda: attr(*args, **kwargs))

        return unit


@pytest.fixture
def injector(monkeypatch: pytest.MonkeyPatch) -> Injector:
    injector = Injector()
    real_in_thread = horace.catalog.in_thread
    real_check = horace.catalog.check_cancelled

    async def counted_in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        return await injector.around(getattr(fn, "__name__", "thread"), lambda: real_in_thread(fn, *args))

    monkeypatch.setattr(horace.catalog, "in_thread", counted_in_thread)
    monkeypatch.setattr(horace.catalog, "check_cancelled", lambda: injector.copy_check(real_check))
    # Every file read twice (as one read within a tick of its last change is): how many
    # cancellation checks a copy makes then never hangs on how soon after its write it is
    # read, so the dry run's count holds for each attempt, on a loaded machine too.
    for tick in ("FINE_TICK_NS", "COARSE_TICK_NS"):
        monkeypatch.setattr(horace.storage, tick, 10**18)
    return injector


async def attempt(
    catalog: Catalog, scenario: Scenario, injector: Injector, **target: Any
) -> tuple[bool, bool]:
    """One injected attempt: (cancelled, committed)."""
    await scenario.prepare(catalog)
    real = catalog.backend
    injector.reset(**target)
    catalog.backend = CountingUnits(real, injector)  # type: ignore[assignment]
    try:
        with trio.CancelScope() as scope:
            injector.scope = scope
            await scenario.run(catalog)
    finally:
        catalog.backend = real
        fired = injector.fired
        injector.reset()
    assert fired, f"{scenario.name}: injection point {target} was never reached"
    committed = await scenario.verify(catalog)
    if scope.cancelled_caught:
        await scenario.retry(catalog)
    await scenario.cleanup(catalog)
    return scope.cancelled_caught, committed


@pytest.fixture
async def cancel_catalog(settings: Settings) -> Any:
    async with open_catalog(attrs.evolve(settings, deleted_retention=0.0), create=True) as catalog:
        yield catalog


SCENARIOS: dict[str, Callable[[Path, random.Random], Scenario]] = {
    "register": lambda f, r: RegisterNew(f, r),
    "reregister": lambda f, r: Update(f, r, via_register=True),
    "update": lambda f, r: Update(f, r),
    "rescan": lambda f, r: Update(f, r, via_scan=True),
    "restore-clean": lambda f, r: Restore(f, r, unsaved=False),
    "restore-unsaved": lambda f, r: Restore(f, r, unsaved=True),
    "delete": lambda f, r: Leave(f, r, Status.DELETED),
    "archive": lambda f, r: Leave(f, r, Status.ARCHIVED),
}
# Their one copy, of a working file moved out of files/, is versioned whole: it never
# looks for a cancellation.
UNCANCELLED_COPIES = {"delete", "archive"}
STEP_SIZE = 64 * KiB  # the steps do not depend on the size: small files keep the sweep fast
COPY_SIZE = 2 * MiB + 1  # two full chunks: two cancellation checks in each copy


@pytest.mark.parametrize("which", list(SCENARIOS))
async def test_cancel_at_every_step(
    cancel_catalog: Catalog, files: Path, injector: Injector, which: str
) -> None:
    catalog = cancel_catalog
    scenario = SCENARIOS[which](files, random.Random(which))
    scenario.fixed_size = COPY_SIZE
    # A dry run counts the points (each attempt works on a fresh file, so counts are stable).
    await scenario.prepare(catalog)
    injector.reset()
    catalog.backend = CountingUnits(real := catalog.backend, injector)  # type: ignore[assignment]
    try:
        await scenario.run(catalog)
    finally:
        catalog.backend = real
    points, copy_points, labels = injector.calls, injector.copy_calls, injector.labels
    injector.reset()
    assert await scenario.verify(catalog)
    await scenario.cleanup(catalog)
    assert copy_points == 0 if which in UNCANCELLED_COPIES else copy_points >= 2, labels

    outcomes: Counter[tuple[str, bool, bool]] = Counter()
    for n in range(copy_points):
        shielded = injector.shielded_copies
        cancelled, committed = await attempt(catalog, scenario, injector, copy_target=n)
        if injector.shielded_copies > shielded:
            # Only a restore that has kept the unsaved content goes on; then to its end.
            assert which == "restore-unsaved" and committed, f"copy {n} not cancellable, yet not committed"
        else:
            assert cancelled and not committed, f"cancelled mid-copy {n} yet committed"
        outcomes[("copy", cancelled, committed)] += 1
    if which == "restore-unsaved":  # the copy of the unsaved content stops; the restore's goes on
        assert ("copy", True, False) in outcomes and ("copy", False, True) in outcomes, outcomes
    scenario.fixed_size = STEP_SIZE
    for mode in ("before", "after"):
        for n in range(points):
            cancelled, committed = await attempt(catalog, scenario, injector, target=n, mode=mode)
            outcomes[(f"{mode} {labels[n]}", cancelled, committed)] += 1
    # The sweep did reach both sides of the commit.
    assert any(c and not k for _, c, k in outcomes), outcomes
    assert any(k for _, _, k in outcomes), outcomes
    assert temps_left(catalog) == []


# -- random deadlines -----------------------------------------------------------------------


async def random_sweep(catalog: Catalog, scenario: Scenario, trials: int, rng: random.Random) -> Counter[str]:
    real_check = horace.catalog.check_cancelled
    counts: Counter[str] = Counter()

    def spying_check() -> None:
        try:
            real_check()
        except trio.Cancelled:
            counts["cancelled mid-copy"] += 1
            raise

    async def calibrated_span() -> float:
        # The delays spread over the operation's own duration on this machine.
        durations = []
        for _ in range(4):
            await scenario.prepare(catalog)
            start = time.perf_counter()
            await scenario.run(catalog)
            durations.append(time.perf_counter() - start)
            await scenario.verify(catalog)
            await scenario.cleanup(catalog)
        return max(statistics.median(durations) * 1.5, 0.001)

    async def trial(delay: float) -> None:
        await scenario.prepare(catalog)
        with trio.move_on_after(delay) as scope:
            await scenario.run(catalog)
        committed = await scenario.verify(catalog)
        if scope.cancelled_caught:
            counts["cancelled, committed" if committed else "cancelled, nothing"] += 1
            await scenario.retry(catalog)
        else:
            counts["completed"] += 1
        await scenario.cleanup(catalog)

    span = await calibrated_span()
    horace.catalog.check_cancelled = spying_check  # type: ignore[assignment]
    try:
        for i in range(trials):
            await trial(0.0 if i % 20 == 0 else rng.uniform(0, span))
        if not counts["cancelled mid-copy"]:
            # None landed inside a copy by chance: go on with contents of several chunks
            # and deadlines inside their copy, until one does.
            scenario.fixed_size = 4 * MiB
            horace.catalog.check_cancelled = real_check  # type: ignore[assignment]
            span = await calibrated_span()
            horace.catalog.check_cancelled = spying_check  # type: ignore[assignment]
            for _ in range(200):
                await trial(rng.uniform(span / 6, span / 1.5))
                if counts["cancelled mid-copy"]:
                    break
            scenario.fixed_size = None
    finally:
        horace.catalog.check_cancelled = real_check  # type: ignore[assignment]
    assert counts["cancelled, nothing"] > 0 and counts["completed"] > 0, counts
    assert counts["cancelled mid-copy"] > 0, f"no cancellation landed inside a copy: {counts}"
    return counts


RANDOM: dict[str, Callable[[Path, random.Random], Scenario]] = {
    "register": lambda f, r: purging_every(10, RegisterNew(f, r)),
    "update": lambda f, r: Update(f, r, fresh=False, unchanged_share=0.1),
    "restore": lambda f, r: Restore(f, r, fresh=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("which", list(RANDOM))
async def test_random_deadlines(cancel_catalog: Catalog, files: Path, which: str) -> None:
    rng = random.Random(f"deadlines-{which}")
    counts = await random_sweep(cancel_catalog, RANDOM[which](files, rng), RANDOM_TRIALS, rng)
    print(which, dict(counts))


@pytest.mark.slow
@pytest.mark.parametrize("which", list(RANDOM))
async def test_random_deadlines_long(
    cancel_catalog: Catalog, files: Path, which: str, request: pytest.FixtureRequest
) -> None:
    """A fresh seed each run: the long sweep with ``-m slow``, a bounded slice of it (with
    its own seed, so CI explores further over time) otherwise."""
    trials = SLOW_TRIALS if slow_selected(request.config) else SLICE_TRIALS
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    counts = await random_sweep(cancel_catalog, RANDOM[which](files, rng), trials, rng)
    print(which, f"seed {seed}", dict(counts))
