"""Hostile paths are refused, and nothing outside <root>/files/ is read or written (SPEC §1).

Each path of the corpus must be refused with INVALID_PATH by register, by get_info(file_path=)
and by scan(path). Sentinel files are planted where the paths point (outside the root, in a
sibling folder whose name shares the prefix ``files``, in Horace's own ``.horace/``); after
every attempt they are unchanged, and no object or row holds their content. Two symlink
races are staged too: a parent folder swapped for a symlink after the path was checked
(the O_NOFOLLOW walk of the storage must refuse it), on the reading side (register, scan)
and on the writing side (restore, undelete, delete).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import write
from soundness import assert_sound, digest, objects_on_disk

import horace.paths
import horace.storage
from horace.backends.records import FileChanges, Status
from horace.catalog import Catalog
from horace.fsck import fsck
from horace.model import ErrorCode, HoraceError
from horace.paths import MAX_PATH_BYTES, too_long


@attrs.define
class Sentinels:
    """Files planted outside files/: their bytes, mode and mtime must never change, and
    their content must never reach the object store or the catalog."""

    paths: list[Path] = attrs.field(factory=list)
    snapshot: dict[Path, tuple[bytes, int, int]] = attrs.field(factory=dict)

    def plant(self, path: Path, content: bytes) -> Path:
        write(path, content)
        self.paths.append(path)
        st = path.stat()
        self.snapshot[path] = (content, st.st_mode, st.st_mtime_ns)
        return path

    def assert_untouched(self, catalog: Catalog) -> None:
        stored = objects_on_disk(catalog)
        for path, (content, mode, mtime) in self.snapshot.items():
            assert path.is_file() and not path.is_symlink(), f"{path} was removed or replaced"
            st = path.stat()
            assert (path.read_bytes(), st.st_mode, st.st_mtime_ns) == (content, mode, mtime), (
                f"{path} modified"
            )
            assert digest(content) not in stored, f"the content of {path} was read into the object store"
        for name in stored:
            data = catalog.storage.object_path(name).read_bytes()
            for content, _, _ in self.snapshot.values():
                assert content not in data, "sentinel bytes inside an object"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return tmp_path / "outside"


@pytest.fixture
def sentinels(tmp_path: Path, outside: Path, files: Path) -> Sentinels:
    planted = Sentinels()
    root = files.parent
    planted.plant(outside / "secret.txt", b"SENTINEL outside the root\n")
    planted.plant(root / "x", b"SENTINEL in the storage root, beside files/\n")
    planted.plant(root / "files_evil" / "x", b"SENTINEL in the sibling-prefix folder files_evil\n")
    return planted


async def refused_everywhere(catalog: Catalog, path: str) -> None:
    """register and scan(path) say INVALID_PATH; get_info(file_path=) too, but for a path
    that is well formed and refused only by what is on disk (a symlink on its way): a
    look-up by name, it names no catalogued file there (NOT_CATALOGED)."""
    calls: dict[str, Callable[[], object]] = {
        "register": lambda: catalog.register(path),
        "get_info": lambda: catalog.get_info(file_path=path),
    }
    if path not in files_itself(catalog.storage.files):
        calls["scan"] = lambda: catalog.scan(path)
    for name, call in calls.items():
        with pytest.raises(HoraceError) as refused:
            await call()  # type: ignore[misc]
        said = f"{name}({path!r}): {refused.value!r}"
        if name == "get_info" and refused.value.code is ErrorCode.NOT_CATALOGED:
            assert _refused_by_the_disk(catalog.storage.files, path), said
            continue
        assert refused.value.code is ErrorCode.INVALID_PATH, said


def _refused_by_the_disk(files: Path, path: str) -> bool:
    """Whether *path*, relative to *files* and inside it, meets on disk a symlink, or a
    file where a folder would be: well formed, refused only by what is there."""
    rel = posixpath.normpath(path)
    if os.path.isabs(rel) and Path(rel).is_relative_to(files):
        rel = Path(rel).relative_to(files).as_posix()
    if os.path.isabs(rel) or rel.startswith(".."):
        return False
    here = files
    parts = rel.split("/")
    for n, part in enumerate(parts, 1):
        here = here / part
        if here.is_symlink() or (n < len(parts) and here.exists() and not here.is_dir()):
            return True
    return False


def files_itself(files: Path) -> tuple[str, ...]:
    """Names of files/ itself: no file's path; a folder's, the folder of every file."""
    return (str(files), str(files) + "/", ".", "./", "user/..", "user/../.", str(files / "user" / ".."))


def hostile_paths(files: Path, outside: Path, object_checksum: str) -> Iterator[str]:
    root = files.parent
    sub = f"{object_checksum[:2]}/{object_checksum}"
    yield from (
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "user/../../x",
        "user/../../../outside/secret.txt",
    )
    yield str(outside / "secret.txt")
    # The sibling whose name shares the prefix: compared as strings it would pass.
    yield from (str(root / "files_evil" / "x"), "../files_evil/x", str(files) + "_evil/x")
    # Horace's own data, reached by .. and by absolute path, and a .horace under files/.
    yield from (
        f"../.horace/objects/{sub}",
        str(root / ".horace" / "objects" / sub),
        "../.horace/tmp",
    )
    yield from (
        str(root / ".horace"),
        f"user/../../.horace/objects/{sub}",
        ".horace/objects/x",
        "user/.horace/x",
    )
    # NUL bytes, empty and blank.
    yield from ("user/a\x00b", "\x00", f"{files}/user/a\x00", "", "   ")
    # Symlinks: to a file outside, dangling, a folder outside, a folder inside, a file inside.
    yield from ("user/link-out", "user/dangling", "user/dir-out/secret.txt", "user/dir-out")
    yield from (
        "user/dir-in/inner.txt",
        "user/dir-in",
        "user/link-in",
        str(files / "user" / "link-out"),
    )
    # A file used as a folder.
    yield "shared/inner.txt/x"


@pytest.fixture
def symlinks(catalog: Catalog, files: Path, outside: Path, sentinels: Sentinels) -> None:
    write(files / "shared" / "inner.txt", b"inside content, catalogued only by its real path\n")
    (files / "user" / "link-out").symlink_to(outside / "secret.txt")
    (files / "user" / "dangling").symlink_to(outside / "does-not-exist")
    (files / "user" / "dir-out").symlink_to(outside, target_is_directory=True)
    (files / "user" / "dir-in").symlink_to(files / "shared", target_is_directory=True)
    (files / "user" / "link-in").symlink_to(files / "shared" / "inner.txt")


async def test_hostile_paths_are_refused_and_touch_nothing(
    catalog: Catalog, files: Path, outside: Path, sentinels: Sentinels, symlinks: None
) -> None:
    # One real object, so that the .horace/objects paths name something that exists.
    registered = await catalog.register("shared/inner.txt")
    object_path = catalog.storage.object_path(registered.file.checksum)
    sentinels.snapshot[object_path] = (
        object_path.read_bytes(),
        object_path.stat().st_mode,
        object_path.stat().st_mtime_ns,
    )
    before = objects_on_disk(catalog)
    corpus = [*hostile_paths(files, outside, registered.file.checksum), *files_itself(files)]
    assert len(corpus) > 30
    for path in corpus:
        await refused_everywhere(catalog, path)
    sentinels.snapshot.pop(object_path)
    sentinels.assert_untouched(catalog)
    assert objects_on_disk(catalog) == before
    assert [f.file_path for f in await catalog.backend.all_files()] == ["shared/inner.txt"]
    # Symlinks are left alone by a whole scan too: nothing new is catalogued.
    report = await catalog.scan()
    assert report.registered == 0
    sentinels.assert_untouched(catalog)
    assert [f.file_path for f in await catalog.backend.all_files()] == ["shared/inner.txt"]
    await assert_sound(catalog)


async def test_paths_that_normalise_inside_are_accepted(catalog: Catalog, files: Path) -> None:
    write(files / "user" / "sub" / "a.txt", b"a")
    write(files / "user" / "b.txt", b"b")
    a = await catalog.register("user//./sub/./a.txt")
    assert a.file.file_path == "user/sub/a.txt" and a.version_created
    b = await catalog.register(f"{files}//user/./b.txt")
    assert b.file.file_path == "user/b.txt"
    assert (await catalog.register("./user/sub/../sub//a.txt")).file.id == a.file.id
    assert (await catalog.get_info(file_path=f"{files}/user/sub/../b.txt")).file.id == b.file.id
    with pytest.raises(HoraceError) as folder:
        await catalog.register("user/sub")
    assert folder.value.code is ErrorCode.INVALID_PATH  # a folder is not a regular file
    write(files / "user" / "sub" / "c.txt", b"c")
    report = await catalog.scan("user//sub/.")
    assert (report.scanned, report.registered) == (2, 1)
    await assert_sound(catalog)


async def test_files_itself_names_no_file_and_the_folder_of_every_file(catalog: Catalog, files: Path) -> None:
    """files/ itself, however spelt, is no file's path; as a folder (a scan's, a folder
    undelete's), it holds every file: `horace scan .` in files/ scans it all."""
    write(files / "user/sub/a.txt", b"a")
    write(files / "b.txt", b"b")
    for n, path in enumerate(files_itself(files)):
        with pytest.raises(HoraceError) as refused:
            await catalog.register(path)
        assert refused.value.code is ErrorCode.INVALID_PATH, path
        write(files / f"user/new-{n}.txt", f"new {n}")
        report = await catalog.scan(path)
        assert (report.scanned, report.registered) == (n + 3, 1 if n else 3), path
    before = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(HoraceError) as nothing_deleted:
        await catalog.undelete_folder(".", deleted_after=before)
    assert (nothing_deleted.value.code, nothing_deleted.value.message) == (
        ErrorCode.NOT_CATALOGED,
        "no file was deleted under files/",
    )
    on_purpose = await catalog.get_info(file_path="user/new-0.txt")
    await catalog.delete(on_purpose.file.id)
    await trio.sleep(0.01)
    accident = datetime.now(UTC)
    top = await catalog.get_info(file_path="b.txt")
    below = await catalog.get_info(file_path="user/sub/a.txt")
    for info in (top, below):
        await catalog.delete(info.file.id)
    with pytest.raises(HoraceError) as every_deletion:  # (the one on purpose too)
        await catalog.undelete_folder(".")
    assert every_deletion.value.code is ErrorCode.INVALID_ARGUMENT
    assert "--deleted-after" in every_deletion.value.message
    done = await catalog.undelete_folder(str(files) + "/", deleted_after=accident)
    assert sorted(f.file_path for f in done.undeleted) == ["b.txt", "user/sub/a.txt"]
    assert (files / "b.txt").read_bytes() == b"b" and (files / "user/sub/a.txt").read_bytes() == b"a"
    assert (await catalog.file(on_purpose.file.id)).status is Status.DELETED
    await assert_sound(catalog)


async def test_a_tree_as_deep_as_paths_allow_is_walked_with_few_folders_open(
    catalog: Catalog, files: Path
) -> None:
    """A thousand folders of one letter (a path within the catalog's 2,000 bytes): a scan
    walks them (no recursion to run out of), finds a file at every hundredth level, and
    the walk holds at most HELD_FOLDERS folders open, the ones above opened again on its
    way back up."""
    depth = 990
    levels = [1, *range(100, depth + 1, 100), depth]
    for level in levels:
        write(files / ("d/" * level + f"f{level}.txt"), f"at level {level}")
    try:
        await _walk_deep(catalog, depth, levels)
    finally:  # (shutil.rmtree and os.walk recurse before Python 3.12: they run out of stack here)
        subprocess.run(["rm", "-rf", str(files / "d")], check=True)


async def _walk_deep(catalog: Catalog, depth: int, levels: list[int]) -> None:
    open_fds = []
    walked = []
    for rel in catalog.storage.walk_working():
        walked.append(rel)
        open_fds.append(len(os.listdir("/proc/self/fd")))
    assert sorted(walked) == sorted("d/" * level + f"f{level}.txt" for level in levels)
    assert max(open_fds) - min(open_fds) <= horace.storage.HELD_FOLDERS
    report = await catalog.scan()
    assert (report.registered, report.errors, report.skipped) == (len(levels), (), ())
    deep = "d/" * depth + f"f{depth}.txt"
    assert (await catalog.get_info(file_path=deep)).file.current_version == 1
    assert (await fsck(catalog)).clean


async def test_unicode_names_are_accepted(catalog: Catalog, files: Path) -> None:
    names = [
        "user/Ünïcödé/résumé.txt",
        "shared/日本語/ファイル.md",
        "user/emoji 🎉/ok ✓.bin",
        "gates/ελληνικά/αρχείο",
        "user/mixed/ä\u0301-combining.txt",
    ]
    for i, rel in enumerate(names):
        write(files / rel, f"unicode {i}".encode())
    ids = {}
    for rel in names:
        result = await catalog.register(rel)
        assert result.file.file_path == rel and result.version_created
        ids[rel] = result.file.id
        assert (await catalog.get_info(file_path=str(files / rel))).file.id == ids[rel]
    write(files / names[0], b"changed")
    assert (await catalog.update(ids[names[0]], FileChanges())).version_created
    write(files / "shared/日本語/二番目.txt", b"second")
    report = await catalog.scan("shared/日本語")
    assert (report.registered, report.unchanged) == (1, 1)
    await assert_sound(catalog)


async def test_a_fifo_is_refused_without_blocking(
    catalog: Catalog, files: Path, fifo_rescue: list[Path]
) -> None:
    # Opening a FIFO for reading blocks until a writer comes: the storage must not.
    fifo = files / "user" / "pipe"
    os.mkfifo(fifo)
    fifo_rescue.append(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(HoraceError) as refused:
        await catalog.register("user/pipe")
    report = await catalog.scan("user")
    assert refused.value.code is ErrorCode.INVALID_PATH
    assert report.registered == 0
    assert await catalog.backend.all_files() == []


# -- check-then-use races: a parent folder swapped for a symlink ----------------------------


def swap_for_symlink(folder: Path, target: Path) -> None:
    """What an attacker with write access to files/ does between check and use."""
    folder.rename(folder.with_name(folder.name + "-moved"))
    folder.symlink_to(target, target_is_directory=True)


@pytest.fixture
def outside_twin(outside: Path, sentinels: Sentinels) -> Path:
    """A folder outside the root holding a file of the same name as the one inside."""
    sentinels.plant(outside / "twin" / "f.txt", b"SENTINEL twin outside, same name as inside\n")
    return outside / "twin"


@pytest.mark.parametrize("operation", ["register", "scan"])
async def test_parent_swapped_after_the_check_is_not_followed_on_read(
    catalog: Catalog,
    files: Path,
    sentinels: Sentinels,
    outside_twin: Path,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    folder = files / "user" / "swap"
    write(folder / "f.txt", b"inside content\n")
    real = horace.paths.to_relative
    swapped = []

    def checked_then_swapped(root: Path, client_path: str, **options: bool) -> str:
        rel = real(root, client_path, **options)  # the check passes: no symlink yet
        swap_for_symlink(folder, outside_twin)
        swapped.append(rel)
        return rel

    monkeypatch.setattr(horace.paths, "to_relative", checked_then_swapped)
    if operation == "register":
        with pytest.raises(HoraceError) as refused:
            await catalog.register("user/swap/f.txt")
        assert refused.value.code is ErrorCode.INVALID_PATH
    else:
        try:
            report = await catalog.scan("user/swap")
        except HoraceError as refused:
            assert refused.code is ErrorCode.INVALID_PATH
        else:
            assert report.registered == 0 and report.scanned == 0 and not report.errors, report
    assert swapped
    monkeypatch.undo()
    sentinels.assert_untouched(catalog)
    assert await catalog.backend.all_files() == []
    await assert_sound(catalog)


@pytest.mark.parametrize("operation", ["restore", "undelete", "delete", "update"])
async def test_parent_swapped_for_a_symlink_is_not_followed_on_write(
    catalog: Catalog, files: Path, sentinels: Sentinels, outside_twin: Path, operation: str
) -> None:
    folder = files / "user" / "swap"
    path = write(folder / "f.txt", b"version 1\n")
    file = (await catalog.register("user/swap/f.txt")).file
    path.write_bytes(b"version 2\n")
    await catalog.update(file.id, FileChanges())
    if operation == "undelete":
        await catalog.delete(file.id)
    swap_for_symlink(folder, outside_twin)
    calls = {
        "restore": lambda: catalog.restore(file.id, 1),
        "undelete": lambda: catalog.undelete(file.id),
        "delete": lambda: catalog.delete(file.id),
        "update": lambda: catalog.update(file.id, FileChanges(status=Status.ARCHIVED)),
    }
    refused = None
    try:
        await calls[operation]()
    except HoraceError as exc:
        refused = exc
    if operation in ("restore", "undelete"):
        # These must write the working file, and the only way there is through the symlink.
        assert refused is not None and refused.code is ErrorCode.INVALID_PATH, refused
        after = (await catalog.get_info(file_id=file.id)).file
        assert after.current_version == 2
        assert after.status is (Status.DELETED if operation == "undelete" else Status.ACTIVE)
    else:
        # The row may change (archived, deleted), but the file behind the symlink stays.
        assert refused is None or refused.code is ErrorCode.INVALID_PATH, refused
    sentinels.assert_untouched(catalog)
    assert not any(p.startswith(".horace-tmp-") for p in os.listdir(outside_twin))
    # Horace's history is intact whatever happened to the working copy.
    versions = await catalog.backend.versions(file.id)
    contents = {catalog.storage.object_path(v.checksum).read_bytes() for v in versions}
    assert contents == {b"version 1\n", b"version 2\n"}


def test_too_long_says_which_limit_a_path_passes() -> None:
    root = Path("/srv/horace/files")
    assert too_long(root, "user/" + "a" * (MAX_PATH_BYTES - 5)) is None
    assert "catalog's limit of 2000" in (too_long(root, "user/" + "é" * 998) or "")  # 2,001 bytes
    deep_root = Path("/" + "r" * 3000)  # a store whose own path is long: PATH_MAX comes first
    assert "PATH_MAX" in (too_long(deep_root, "user/" + "a" * 1100) or "")


async def test_a_catalogued_file_is_found_by_its_path_whatever_is_there_now(
    catalog: Catalog, files: Path, outside: Path, sentinels: Sentinels
) -> None:
    """A look-up by path names a catalogued file, not what is on disk: with a symlink at its
    path, or a file where its folder was, the file is still found (its info, a delete that
    records it gone), and what is there now is left untouched."""
    write(files / "user/sy/f.txt", "v1")
    linked = (await catalog.register("user/sy/f.txt")).file
    (files / "user/sy/f.txt").unlink()
    (files / "user/sy/f.txt").symlink_to(outside / "secret.txt")
    write(files / "user/x/i1.txt", "inner")
    moved = (await catalog.register("user/x/i1.txt")).file
    await catalog.delete(moved.id)
    (files / "user/x").rmdir()
    write(files / "user/x", "a file where the folder was")

    assert (await catalog.get_info(file_path="user/sy/f.txt")).file.id == linked.id
    assert (await catalog.get_info(file_path="user/x/i1.txt")).file.id == moved.id
    deleted = await catalog.delete((await catalog.locate(file_path="user/sy/f.txt")).id)
    assert deleted.file.status is Status.DELETED
    assert (files / "user/sy/f.txt").is_symlink() and (files / "user/x").read_text().startswith("a file")
    sentinels.assert_untouched(catalog)
    with pytest.raises(HoraceError) as refused:  # writing through it is still refused
        await catalog.undelete(moved.id)
    assert refused.value.code is ErrorCode.INVALID_PATH


@pytest.mark.parametrize(("failing", "said"), [("a.txt", "files/user/x/a.txt"), ("x", "files/user/x")])
async def test_a_refusal_on_the_way_names_the_whole_path(
    catalog: Catalog, files: Path, failing: str, said: str
) -> None:
    """Opened step by step relative to a folder, an OSError names its last step only
    ("Permission denied: a.txt"): the storage says the path whole, from files/."""
    write(files / "user/x/a.txt", "x")
    real_open = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if path == failing:
            raise PermissionError(errno.EACCES, "Permission denied", failing)
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", refusing)
        with pytest.raises(PermissionError) as refused:
            catalog.storage.hash_working("user/x/a.txt")
    assert refused.value.filename == said
