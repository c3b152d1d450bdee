"""No write is lost to a concurrent writer: an operation that replaces or removes a working
file acts only on the file it examined, and keeps anything else as a version first.

The other writer is a real process (tests/workers/replacer.py) saving the file the way
editors and services do: a temp file renamed over it, or a rewrite in place. It is told
to write at the worst moment: inside the operation, after Horace versioned the working
file and before Horace swaps the restored content in (or versions what it took out), by
a hook at exactly that step; and at random moments in a second, unhooked sweep.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import write
from soundness import assert_sound, temps_left

from horace.assemble import open_catalog
from horace.backends.records import FileChanges, Retention
from horace.catalog import Catalog
from horace.config import Settings
from horace.model import ErrorCode, HoraceError
from horace.storage import Storage

WORKER = Path(__file__).parent / "workers" / "replacer.py"
BIG = 8 * 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@attrs.define
class Replacer:
    """The other program: ``await save(path)`` and it has written a new content there."""

    process: trio.Process
    buffer: bytes = b""

    async def _line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some(4096)
            assert chunk, "the replacer process ended"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    async def save(self, path: Path, size: int = 1_000_000, how: str = "replace") -> str | None:
        """The sha256 of what it wrote, or None when the file's folder was gone."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(f"{how} {path} {size}\n".encode())
        answer = await self._line()
        return None if answer == "gone" else answer.split()[1]


@pytest.fixture
async def replacer() -> AsyncIterator[Replacer]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    other = Replacer(process)
    try:
        assert await other._line() == "ready"
        yield other
    finally:
        process.kill()
        await process.wait()


@pytest.fixture
async def catalog(settings: Settings) -> AsyncIterator[Catalog]:
    # Retention high, so that no version the test looks for is pruned.
    async with open_catalog(attrs.evolve(settings, version_count=1000), create=True) as opened:
        yield opened


async def _checksums(catalog: Catalog, file_id: str) -> list[str]:
    return [v.checksum for v in reversed(await catalog.backend.versions(file_id))]


def _at_step(monkeypatch: pytest.MonkeyPatch, name: str, before: Callable[[], Any]) -> None:
    """Run *before* (in the worker thread) just before ``Storage.<name>`` does its work."""
    real = getattr(Storage, name)

    def hooked(self: Storage, *args: Any, **kwargs: Any) -> Any:
        before()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Storage, name, hooked)


@pytest.mark.parametrize("keep", [1000, 2, 1])
@pytest.mark.parametrize("how", ["replace", "rewrite"])
async def test_a_save_just_before_restore_swaps_is_kept_as_a_version(
    catalog: Catalog, files: Path, replacer: Replacer, monkeypatch: pytest.MonkeyPatch, how: str, keep: int
) -> None:
    """Under a count of 1 or 2 too: the restored version's retention spares what the restore
    kept of the working file (the edit and the save), until the file's next version."""
    catalog.policy = attrs.evolve(catalog.policy, retention=Retention(keep=keep))
    path = files / "user/big.bin"
    first = write(path, os.urandom(BIG)).read_bytes()
    file = (await catalog.register("user/big.bin")).file
    edit = write(path, os.urandom(BIG)).read_bytes()  # not versioned yet
    saved: list[str | None] = []
    token = trio.lowlevel.current_trio_token()
    _at_step(  # (the last step before the swap, the working file's lease not yet taken)
        monkeypatch,
        "_no_writer_comes",
        lambda: saved.append(trio.from_thread.run(replacer.save, path, 2_000_000, how, trio_token=token)),
    )
    done = await catalog.restore(file.id, 1)
    assert saved and saved[0] is not None, "the other program never saved"
    assert path.read_bytes() == first
    history = await _checksums(catalog, file.id)
    # v1, the unsaved edit (preserved), the other program's save (displaced), the restore.
    assert history == [sha(first), sha(edit), saved[0], sha(first)][-3 if keep <= 2 else 0 :], history
    assert done.version.restored_from_version == 1 and done.file.checksum == sha(first)
    await assert_sound(catalog)


PEER = (
    "import os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY); print('opened', flush=True); "
    "time.sleep(float(sys.argv[2])); os.ftruncate(fd, 0); os.write(fd, b'PEER WRITE'); os.close(fd)"
)


@pytest.mark.parametrize(
    ("operation", "when"),
    [("restore", "after the look"), ("delete", "after the look"), ("restore", "during the swap")],
)
async def test_a_writer_that_opens_the_file_while_it_is_being_replaced_keeps_its_write(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch, operation: str, when: str
) -> None:
    """A writer opens the working file after the call looked at it (during a restore's
    copy, say), or while it is being swapped out: moved from under the writer, the file
    would take the write out of files/, and lose it. The call is refused (FILE_LOCKED),
    and the write lands in the working file (an open during the swap waits on Horace's
    lease, and then finds its file back in place)."""
    path = files / "user/big.bin"
    write(path, os.urandom(BIG))
    file = (await catalog.register("user/big.bin")).file
    write(path, b"v2")
    await catalog.update(file.id, FileChanges())
    peers: list[subprocess.Popen[str]] = []

    def peer_opens() -> None:
        pause = "0.3" if when == "after the look" else "0"
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER, str(path), pause], stdout=subprocess.PIPE, text=True
        )
        peers.append(peer)
        if when == "after the look":
            assert peer.stdout is not None and peer.stdout.readline() == "opened\n"
        else:
            time.sleep(1.0)  # its open is under way, waiting on the lease

    _at_step(monkeypatch, "_no_writer_comes" if when == "after the look" else "_swap_in", peer_opens)
    with pytest.raises(HoraceError) as refused:
        await (catalog.restore(file.id, 1) if operation == "restore" else catalog.delete(file.id))
    assert refused.value.code is ErrorCode.FILE_LOCKED, refused.value
    monkeypatch.undo()
    assert peers[0].wait(10) == 0
    assert path.read_bytes() == b"PEER WRITE"
    assert (await catalog.update(file.id, FileChanges())).version_created
    assert (await catalog.file(file.id)).checksum == sha(b"PEER WRITE")
    await assert_sound(catalog)


async def test_a_file_renamed_away_as_soon_as_a_restore_swapped_it_in_keeps_its_history(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process renames the working file away right after the restore put the
    version back, before the restore looked at what landed: the restore is done (the
    version is in the file, wherever it went), and the next scan follows the rename."""
    path = write(files / "user/moved.txt", "v1")
    file = (await catalog.register("user/moved.txt")).file
    write(path, "v2")
    await catalog.update(file.id, FileChanges())
    real = Storage._swap_in

    def swap_then_move(self: Storage, *args: Any, **kwargs: Any) -> Any:
        swapped = real(self, *args, **kwargs)
        path.rename(files / "user/moved-away.txt")
        return swapped

    monkeypatch.setattr(Storage, "_swap_in", swap_then_move)
    done = await catalog.restore(file.id, 1)
    monkeypatch.undo()
    assert done.version.restored_from_version == 1
    assert (files / "user/moved-away.txt").read_text() == "v1" and not path.exists()
    assert (await catalog.scan()).moved == ("user/moved.txt -> user/moved-away.txt",)
    assert (await catalog.file(file.id)).file_path == "user/moved-away.txt"
    await assert_sound(catalog)


@pytest.mark.parametrize("operation", ["restore", "update", "move"])
async def test_a_call_that_waited_for_a_file_moved_meanwhile_locks_its_new_path(
    catalog: Catalog, files: Path, operation: str
) -> None:
    """A call by id waits on the lock of the file's path while the file is moved (a
    rename followed by a watcher, which holds the old path's lock): it then works on the
    new path under the new path's lock, never under the old one's alone, beside another
    writer of the new path."""
    old = write(files / "user/a.txt", "one")
    file = (await catalog.register("user/a.txt")).file
    write(old, "two")
    await catalog.update(file.id, FileChanges())
    new = files / "user/b.txt"
    holding_old, moved, done = trio.Event(), trio.Event(), trio.Event()
    beside: list[tuple[bool, str]] = []  # what the other writer of the new path saw

    async def follows_the_rename() -> None:
        async with catalog.writing("user/a.txt") as db:
            holding_old.set()
            await trio.sleep(0.2)  # (the call waits for this lock meanwhile)
            old.rename(new)
            await db.move_files([(file.id, "user/b.txt", None)], catalog.clock())
            moved.set()
            await trio.sleep(0.1)  # (the other writer takes the new path's lock)

    async def writes_the_new_path() -> None:
        await moved.wait()
        async with catalog.writing("user/b.txt"):
            await trio.sleep(0.5)  # (the call, given the old path's lock, would run now)
            beside.append((done.is_set(), new.read_text()))

    async def call() -> None:
        if operation == "restore":
            await catalog.restore(file.id, 1)
        elif operation == "update":
            await catalog.update(file.id, FileChanges(purpose="described"))
        else:
            await catalog.move(file.id, "user/c.txt")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follows_the_rename)
        await holding_old.wait()
        nursery.start_soon(call)
        nursery.start_soon(writes_the_new_path)
    assert beside == [(False, "two")]  # the call waited for the new path's lock
    after = await catalog.file(file.id)
    if operation == "restore":
        assert new.read_text() == "one" and after.current_version == 3
    elif operation == "update":
        assert after.purpose == "described" and after.file_path == "user/b.txt"
    else:
        assert after.file_path == "user/c.txt"


async def test_a_write_as_a_failed_restore_is_undone_stays_at_its_path(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore's record fails, and its write is undone (the working file put back to
    the current version); a writer appends to the restored file just before that swap:
    the writer's file stays at its path, and nothing lands beside it."""
    path = write(files / "user/doc.txt", "v1\n")
    file = (await catalog.register("user/doc.txt")).file
    write(path, "v2\n")
    await catalog.update(file.id, FileChanges())
    commit = Catalog._commit_version

    async def fails_for_the_restore(
        self: Catalog, db: Any, f: Any, new: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if new.restored_from_version is not None:
            raise OSError(errno.EIO, "the record of the restore fails (as a test)")
        return await commit(self, db, f, new, *args, **kwargs)

    holds = Storage.holds_file

    def holds_then_a_writer_appends(self: Storage, rel: str, expected: Any) -> bool:
        held = holds(self, rel, expected)
        with open(self.files / rel, "a") as f:  # (between the look and the swap)
            f.write("the writer's line\n")
        return held

    monkeypatch.setattr(Catalog, "_commit_version", fails_for_the_restore)
    monkeypatch.setattr(Storage, "holds_file", holds_then_a_writer_appends)
    with pytest.raises(OSError):
        await catalog.restore(file.id, 1)
    monkeypatch.undo()
    assert path.read_text() == "v1\nthe writer's line\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["doc.txt"]
    assert temps_left(catalog) == []
    assert (await catalog.scan()).versioned == 1  # (the writer's, taken in)
    await assert_sound(catalog)


async def test_a_save_while_delete_versions_what_it_took_is_not_lost(
    catalog: Catalog, files: Path, replacer: Replacer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = files / "user/big.bin"
    write(path, os.urandom(BIG))
    file = (await catalog.register("user/big.bin")).file
    edit = write(path, os.urandom(BIG)).read_bytes()
    saved: list[str | None] = []
    token = trio.lowlevel.current_trio_token()
    _at_step(
        monkeypatch,
        "stage_held",
        lambda: saved.append(trio.from_thread.run(replacer.save, path, trio_token=token)),
    )
    deleted = await catalog.delete(file.id)
    assert saved and saved[0] is not None
    # What delete took out of files/ is a version; what the other program saved after that
    # is the working file it wrote, untouched.
    assert sha(edit) in await _checksums(catalog, file.id) and deleted.version_created
    assert sha(path.read_bytes()) == saved[0]
    report = await catalog.scan()  # and it comes back into the catalog as the file
    assert report.versioned == 1
    assert (await catalog.get_info(file_id=file.id)).file.checksum == saved[0]
    await assert_sound(catalog)


@pytest.mark.parametrize("operation", ["restore", "delete", "archive"])
async def test_saves_at_random_moments_are_never_lost(
    catalog: Catalog, files: Path, replacer: Replacer, operation: str
) -> None:
    """Unhooked: the other program saves at a random moment while the operation runs."""
    rng = random.Random()
    path = files / "user/big.bin"
    write(path, os.urandom(BIG))
    file = (await catalog.register("user/big.bin")).file
    refused = 0
    for trial in range(6):
        write(path, os.urandom(BIG))  # an unsaved edit to keep, each time
        saved: list[str | None] = []

        async def other_program(delay: float, saved: list[str | None] = saved) -> None:
            await trio.sleep(delay)
            saved.append(await replacer.save(path, 1_000_000, rng.choice(["replace", "rewrite"])))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_program, rng.uniform(0, 0.15))
            try:
                if operation == "restore":
                    await catalog.restore(file.id, 1)
                else:
                    status = "deleted" if operation == "delete" else "archived"
                    await catalog.update(file.id, attrs_changes(status))
            except HoraceError as exc:
                # A save in place while Horace copied the file: the operation is refused as
                # a whole (nothing changed), which is also a way of losing nothing.
                assert exc.code is ErrorCode.FILE_LOCKED, exc
                refused += 1
        kept = set(await _checksums(catalog, file.id))
        on_disk = sha(path.read_bytes()) if path.exists() else None
        if saved[0] is not None:
            assert saved[0] in kept | {on_disk}, f"trial {trial}: the other program's save was lost"
        if operation != "restore":
            await catalog.scan()  # whatever the other program left in files/ comes back
            if not path.exists():
                await catalog.undelete(file.id) if operation == "delete" else await catalog.update(
                    file.id, attrs_changes("active")
                )
    assert refused < 6, "every trial was refused: nothing was shown"
    await assert_sound(catalog)


def attrs_changes(status: str) -> Any:
    from horace.backends.records import FileChanges, Status

    return FileChanges(status=Status(status))
