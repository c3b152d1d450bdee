"""Another local process that writes into the store (its files/, and .horace/ too)
never makes Horace read, write or remove outside the store, wait forever, or record
what is not the store's: links and special files where Horace's own files, folders and
objects go are refused, and a swap between a look and a rename is put back."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import sha256, write

import horace.storage
from horace.assemble import open_catalog
from horace.catalog import Catalog
from horace.config import Settings
from horace.fsck import verify
from horace.locks import FileLocks
from horace.model import ErrorCode, HoraceError
from horace.storage import StorageUnusable, TempKind, temp_name
from horace.tasks import _store_tampered

OUTSIDE = b"root:x:0:0:root:/root:/bin/bash\nsomeone else's file\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the store, which nothing Horace does may change."""
    return write(tmp_path / "outside" / "victim.txt", OUTSIDE)


@pytest.mark.parametrize("link", ["symlink", "dangling symlink", "hard link"])
async def test_a_lock_file_put_in_place_as_a_link_is_refused_and_nothing_outside_is_written(
    catalog: Catalog, settings: Settings, outside: Path, link: str
) -> None:
    """The watch lease's holder writes its signs of life into the lock file: a link put
    in its place would have them written over the file it leads to (or make that file)."""
    lock_file = catalog.storage.lock_file
    lock_file.unlink()
    target = outside.with_name("made-by-horace.txt") if link == "dangling symlink" else outside
    if link == "hard link":
        os.link(outside, lock_file)
    else:
        lock_file.symlink_to(target)
    with pytest.raises(StorageUnusable, match=r"lock file .* not a regular file of one link"):
        async with open_catalog(settings):
            pass
    with pytest.raises(StorageUnusable, match="lock file"):  # (put there after the look)
        FileLocks(lock_file)
    assert outside.read_bytes() == OUTSIDE
    assert not outside.with_name("made-by-horace.txt").exists()


@pytest.mark.parametrize("folder", ["tmp", "objects/ab", "released", "spool"])
async def test_horaces_own_folders_put_in_place_as_links_are_refused_and_nothing_outside_is_touched(
    catalog: Catalog, settings: Settings, tmp_path: Path, folder: str
) -> None:
    """Horace writes, renames and removes in .horace's folders by their paths: through a
    symlink in their place it would do so outside the store (a start's fsck removing
    files there whose names look like its temp files, say)."""
    linked = catalog.storage.private / folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    decoy = write(elsewhere / temp_name(TempKind.PART).replace(str(os.getpid()), "99998"), "decoy")
    if linked.exists():
        shutil.rmtree(linked)
    linked.symlink_to(elsewhere)
    with pytest.raises(StorageUnusable, match=f"{folder}' is a symlink"):
        async with open_catalog(settings):
            pass
    assert catalog.storage.private_layout_problem() is not None
    assert sorted(p.name for p in elsewhere.iterdir()) == [decoy.name]


@pytest.mark.parametrize("what", ["fifo", "folder", "symlink"])
async def test_an_object_replaced_by_what_is_no_file_is_missing_and_never_waited_on(
    catalog: Catalog, files: Path, outside: Path, fifo_rescue: list[Path], what: str
) -> None:
    """What takes an object's place that is not a regular file is no object: never
    followed (a symlink to a file of the same size is not the content), never opened to
    wait (a FIFO), never read as one (a folder). Every reader says it is missing."""
    content = b"x" * len(OUTSIDE)
    write(files / "user/a.txt", content)
    file = (await catalog.register("user/a.txt")).file
    storage = catalog.storage
    path = storage.object_path(file.checksum)
    assert path.is_file(), "a registered file's object is loose"
    path.chmod(0o644)
    path.unlink()
    if what == "fifo":
        os.mkfifo(path)
        fifo_rescue.append(path)
    elif what == "folder":
        path.mkdir()
    else:
        path.symlink_to(outside)
    assert not storage.has_object(file.checksum)
    assert storage.object_size(file.checksum) is None
    assert storage.hash_object(file.checksum) is None
    assert storage.read_object(file.checksum) is None
    report = await verify(catalog, file.id)
    assert [p.kind for p in report.problems] == ["missing_object"], report
    write(files / "user/a.txt", "changed since")
    await catalog.register("user/a.txt")
    with pytest.raises(HoraceError) as refused:
        await catalog.restore(file.id, 1)
    assert refused.value.code is not ErrorCode.INTERNAL
    assert outside.read_bytes() == OUTSIDE


@pytest.mark.parametrize("swapped_in", ["symlink", "fifo", "folder", "hard link"])
async def test_a_delete_that_finds_the_file_swapped_after_its_look_puts_it_back(
    catalog: Catalog,
    files: Path,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    fifo_rescue: list[Path],
    swapped_in: str,
) -> None:
    """Between the look at the working file (a regular file of one link) and its rename
    out of files/, another process puts something else there. What was moved out is not
    the file: it goes back, the delete is FILE_LOCKED, and nothing of it is versioned (a
    hard link's content is a file's elsewhere)."""
    working = write(files / "user/a.txt", "catalogued")
    file = (await catalog.register("user/a.txt")).file
    aside = files.parent / "aside.txt"
    checked = horace.storage._check_catalogable

    def swap_after_the_look(rel: str, st: os.stat_result) -> None:
        checked(rel, st)
        if sys._getframe(1).f_code.co_name != "take_working" or aside.exists():
            return  # (the swap comes between take_working's look and its rename, once)
        working.rename(aside)
        if swapped_in == "symlink":
            working.symlink_to(outside)
        elif swapped_in == "fifo":
            os.mkfifo(working)
            fifo_rescue.append(working)
        elif swapped_in == "folder":
            write(working / "inner.txt", "a user's")
        else:
            os.link(outside, working)

    monkeypatch.setattr(horace.storage, "_check_catalogable", swap_after_the_look)
    with pytest.raises(HoraceError) as refused:
        await catalog.delete(file.id)
    assert refused.value.code is ErrorCode.FILE_LOCKED, refused.value
    assert "replaced by another process" in refused.value.message
    monkeypatch.undo()
    assert os.path.lexists(working) and not any(catalog.storage.tmp.iterdir())
    if swapped_in == "folder":
        assert (working / "inner.txt").read_text() == "a user's"
    after = await catalog.file(file.id)
    assert (after.status.value, after.current_version, after.checksum) == ("active", 1, file.checksum)
    assert outside.read_bytes() == OUTSIDE
    assert outside.stat().st_nlink == (2 if swapped_in == "hard link" else 1)


async def test_a_restore_that_would_displace_a_hard_link_made_meanwhile_gives_it_back(
    catalog: Catalog, files: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link of a file elsewhere put in the working file's place after the restore's
    look: its content is not versioned as the file's, and it is left where it was."""
    working = write(files / "user/a.txt", "one")
    file = (await catalog.register("user/a.txt")).file
    write(working, "two")
    await catalog.register("user/a.txt")
    prepare = horace.storage.Storage._prepare

    def link_meanwhile(self: horace.storage.Storage, *args: object, **kwargs: object) -> Path:
        held = prepare(self, *args, **kwargs)  # type: ignore[arg-type]
        working.unlink()
        os.link(outside, working)
        return held

    monkeypatch.setattr(horace.storage.Storage, "_prepare", link_meanwhile)
    with pytest.raises(HoraceError) as refused:
        await catalog.restore(file.id, 1)
    assert refused.value.code is ErrorCode.INVALID_PATH and "hard links" in refused.value.message
    monkeypatch.undo()
    assert os.path.samefile(working, outside) and outside.read_bytes() == OUTSIDE
    after = await catalog.file(file.id)
    assert (after.current_version, after.checksum) == (2, sha256("two"))
    assert not any(catalog.storage.tmp.iterdir())


def test_a_file_marked_immutable_is_said_to_be_maybe_so() -> None:
    """EPERM, unlike EACCES, is what root meets too, at a file marked immutable or
    append-only: the refusal says so rather than blame the user's permissions alone."""
    from horace.storage import storage_refusal

    refused = storage_refusal(PermissionError(errno.EPERM, "Operation not permitted", "files/user/a.txt"))
    assert refused.startswith("Operation not permitted: files/user/a.txt (") and "chattr +i" in refused
    forbidden = storage_refusal(PermissionError(errno.EACCES, "Permission denied", "files/user/a.txt"))
    assert "may not read or write" in forbidden and "chattr" not in forbidden


async def test_a_store_moved_while_it_is_looked_at_is_not_said_to_be_tampered_with(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store moved away between the look at its place and the look at its lock file:
    the lock file is gone from the path, but that is the move's to say (the binding's
    look: "not the one this process opened"), not a lock file removed under the server."""
    root = catalog.storage.root
    away = root.with_name(root.name + "-away")
    replaced = catalog.locks.replaced

    def moved_first() -> bool:
        root.rename(away)
        return replaced()

    monkeypatch.setattr(catalog.locks, "replaced", moved_first)
    try:
        assert _store_tampered(catalog) is None
    finally:
        away.rename(root)
