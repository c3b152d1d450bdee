"""The object store and the working files: bytes on disk, nothing of SQL or JSON-RPC.

Every function here is synchronous and blocking; the catalog runs them in worker
threads. Long copies call ``check_cancelled`` between chunks so a cancelled tool call
stops promptly, and every function removes its own temp file on the way out.

Paths given here are already validated (``horace.paths``); each is still opened one
component at a time with ``O_NOFOLLOW`` relative to a directory descriptor, so a
symlink swapped in after validation is refused rather than followed.

An object is a file of its own under ``objects/`` or, for the small files of a long batch
of new ones, an entry of a pack under ``objects/packs/`` (``horace.packs``); every reader
here looks for the first, then the second.

Horace writes its temp files only in ``.horace/tmp``, never under ``files/``, and names
each by what it holds (see :class:`TempKind`), so that ``fsck`` can tell garbage left by
a dead process from content that must be kept. A working file is never renamed over or
unlinked unless it is the very file that was versioned: :meth:`Storage.replace_working`
swaps atomically and hands back whatever else it displaced, and
:meth:`Storage.take_working` moves the file out before anyone looks at its content.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import signal
import socket
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import attrs
from attrs import frozen

from horace import packs
from horace.backends.records import INT64_MAX, INT64_MIN, WorkingStat
from horace.model import ErrorCode, HoraceError
from horace.paths import (
    COMPONENT_FOLDERS,
    HORACE_DIR,
    TMP_PREFIX,
    NoCurrentFolder,
    absolute_root,
    editor_temp,
    quoted,
    too_long,
    unusable_name,
)

CHUNK = 1 << 20
HEAD_BYTES = 4096  # kept from each ingest for MIME sniffing
IDENTITY_FILE = "store.json"
_FICLONE = 0x40049409  # linux/fs.h: clone a whole file (btrfs, XFS, ZFS 2.2+)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Folders a walk holds open on its way down (each a file descriptor); deeper, those above
# are closed and opened again by path on the way back up.
HELD_FOLDERS = 64
_HOST = socket.gethostname().replace(".", "_")
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h, for renameat2()

CheckCancelled = Callable[[], None]
log = logging.getLogger("horace.storage")
P = ParamSpec("P")
T = TypeVar("T")


def _never_cancelled() -> None:
    return None


class TempKind(enum.StrEnum):
    """What a file in ``.horace/tmp`` holds, and so what fsck does with it once its
    writer is gone."""

    STAGE = "stage"  # an ingest copy: garbage
    PART = "part"  # a working file being written: garbage
    ASIDE = "aside"  # an object the collector moved aside (named by checksum): put back
    HELD = "held"  # a working file moved out of files/ (named by file id): keep its content
    META = "meta"  # the store's identity being written: garbage
    PACK = "pack"  # a pack being written, or its staged link (named by the pack): see fsck
    PACK_ASIDE = "packaside"  # a pack the collector moved aside (named by its name): put back
    CLOCK = "clock"  # read for the filesystem's time, or linked to see it has hard links: garbage


@frozen
class TempName:
    kind: TempKind
    host: str
    pid: int
    extra: str  # the checksum of an ASIDE object, the file id of a HELD working file

    @classmethod
    def parse(cls, name: str) -> TempName | None:
        if not name.startswith(TMP_PREFIX):
            return None
        parts = name[len(TMP_PREFIX) :].split(".")
        try:
            kind, host, pid, _rand, *extra = parts
            return cls(TempKind(kind), host, int(pid), extra[0] if extra else "")
        except ValueError:
            return None

    def held_file_id(self) -> str | None:
        """The id of the file a HELD temp holds the working copy of (None: another kind)."""
        if self.kind is not TempKind.HELD:
            return None
        try:
            return str(uuid.UUID(self.extra))
        except ValueError:
            return None

    def owner_alive(self) -> bool | None:
        """Whether the process that made it still runs (None: another host's, unknown)."""
        if self.host != _HOST:
            return None
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def temp_name(kind: TempKind, extra: str = "") -> str:
    """A temp file name that says what it holds, and which host and process made it."""
    name = f"{TMP_PREFIX}{kind.value}.{_HOST}.{os.getpid()}.{os.urandom(6).hex()}"
    return f"{name}.{extra}" if extra else name


@frozen
class FileIdentity:
    """Which file a path named when it was read: a later look tells whether it is still
    the same file, unchanged (a rename puts another inode there; a write moves mtime)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    # Only for a file Horace wrote and did not rename since (a rename moves ctime): a
    # writer can set mtime back, not ctime.
    ctime_ns: int | None = None

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @classmethod
    def exact(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def working_stat(st: os.stat_result, recorded_ns: int) -> WorkingStat:
    """The stat identity a catalog records for a working file read after *recorded_ns*.

    A time past 2262 (or before 1677: ``touch -d``, an archive's bad header, a wrong
    clock) fits no 64-bit column: it is kept at the bound, which is never the file's own,
    so such a file is read again at each look rather than taken for unchanged."""
    return WorkingStat(
        st.st_size,
        _within_int64(st.st_mtime_ns),
        _within_int64(st.st_ctime_ns),
        st.st_ino,
        st.st_dev,
        recorded_ns,
        stat.S_IMODE(st.st_mode),
    )


@frozen
class Staged:
    """Content copied into ``.horace/tmp`` and hashed, not yet an object; or, for a
    small file of a batch (:meth:`Storage.stage_many`), read into memory (*content*, no
    temp file), to be kept in a pack."""

    tmp_path: Path | None
    checksum: str
    size: int
    head: bytes
    source: FileIdentity | None = None  # the working file it was read from
    working: WorkingStat | None = None  # the same, as the catalog records it
    content: bytes | None = None  # the bytes of a small file staged in memory

    @property
    def copy(self) -> Path:
        """The temp copy (of content not staged in memory)."""
        if self.tmp_path is None:
            raise ValueError("staged in memory: no temp copy")
        return self.tmp_path


PERMISSION_BITS = 0o777  # of a working file's mode, what a copy written back keeps
COARSE_TICK_NS = 2 * 10**9  # of file times in whole seconds: see stamp_tick_ns
FINE_TICK_NS = 50 * 10**6  # of finer ones: a few of the kernel's clock ticks
# Horace's own folders (.horace and those in it) are made as the umask says, but never
# writable by every user: under a umask of 000 any local user could unlink a version's
# object. Group writes stay the umask's to give (instances run as users of one group).
PRIVATE_FOLDER_MODE = 0o775


# What Linux takes: a name of at most NAME_MAX bytes, a path of at most PATH_MAX - 1; a
# store's own paths go a few names deeper (.horace/objects/xx/<sha256>), files/ deeper still.
_NAME_MAX = 255
_ROOT_PATH_MAX = 4095 - 256


def _root_path_problem(root: Path) -> str | None:
    """Why *root* (absolute: :func:`_root_of`) cannot be a store's path, if it cannot: the
    catalog records it as text (and messages show it), so it must be UTF-8; and the store's
    paths under it must fit."""
    try:
        data = str(root).encode()
    except UnicodeEncodeError:
        return "is not valid UTF-8: the catalog records a store's path as text; give the store a name that is"
    if any(len(part.encode()) > _NAME_MAX for part in root.parts):
        return f"has a name of more than {_NAME_MAX} bytes, more than a filesystem takes"
    if len(data) > _ROOT_PATH_MAX:
        return f"is {len(data)} bytes long: the store's own paths under it would be longer than a path may be"
    return None


def lock_file_refusal(path: Path) -> str:
    """Why a store whose lock file is not a regular file of one link is not used."""
    return (
        f"the store's lock file {quoted(str(path))} is not a regular file of one link (a symlink, "
        "a hard link, a folder or a FIFO was put in its place; or the store was copied with "
        "hard links, cp -al, and the copy shares it): Horace writes to it, and would write "
        "through it. Stop every process of the store, remove it (Horace makes it again), and "
        "look at what put it there"
    )


def make_private_folder(path: Path) -> None:
    """*path* made as one of Horace's own folders, or left as it is."""
    path.mkdir(PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)


def _not_writable_by_all(paths: Iterable[Path]) -> None:
    """Take every user's write permission off those of *paths* that have it (folders a
    store made under a umask of 000 has); one this user does not own is said in the log."""
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue  # (made when first needed)
        if stat.S_ISDIR(mode) and mode & stat.S_IWOTH:
            try:
                os.chmod(path, stat.S_IMODE(mode) & ~stat.S_IWOTH)
            except PermissionError:
                log.warning("%s is writable by every local user, and not this user's to change", path)


def _within_int64(value: int) -> int:
    return min(max(value, INT64_MIN), INT64_MAX)


@frozen
class Hashed:
    """A working file hashed where it is (nothing copied)."""

    checksum: str | None  # None: it was being written while it was read
    working: WorkingStat


@frozen
class StoreState:
    """What a storage root holds, read without creating anything."""

    exists: bool  # a .horace folder is there
    store_id: str | None
    catalog_url: str | None  # as recorded at creation (redacted)
    # Looked at only for a store without an identity (None otherwise): it is what tells a
    # store whose identity was lost from a new one, and looking costs 256 folder reads.
    has_objects: bool | None
    catalog_place: str | None = None  # where its catalog's tables are (CatalogIdentity.place)
    own_catalog_place: str | None = None  # that of the SQLite catalog inside it, if it were used


# What the storage says of itself (read-only, no permission, full, failing, a folder of it
# mounted apart), or the system's limits on this process: the operator's to mend, said in
# a line (STORAGE_ERROR), never a bug's INTERNAL.
STORAGE_ERRNOS = frozenset(
    {
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EXDEV,
        errno.EFBIG,
        errno.EMFILE,
        errno.ENFILE,
    }
)
# Why each refuses, for the operator (what a full disk says is STORAGE_FULL's own).
_REFUSED_FOR = {
    errno.EROFS: "a read-only file system",
    errno.EACCES: "a file or folder this process's user may not read or write",
    errno.EPERM: (
        "a file or folder this process's user may not read or write, or one marked immutable or "
        "append-only (chattr +i, +a: not even root may change it)"
    ),
    errno.EIO: "a failing disk",
    errno.EFBIG: "larger than this process may write: its file size limit (ulimit -f), or the file system's",
    errno.EMFILE: "this process's limit of open files (ulimit -n): raise it",
    errno.ENFILE: "the system's limit of open files (fs.file-max)",
}
ONE_FILE_SYSTEM = (
    "Horace moves files between files/, .horace/tmp and .horace/objects by renaming them, "
    "which works only within one file system: mount the disk at the store's folder (which "
    "holds both files/ and .horace/), not at a folder inside it"
)


def _mount_points() -> list[str]:
    """The mount points of this process's view (``/proc/self/mountinfo``); none where that
    cannot be read (not Linux): the device numbers alone are checked then."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
            lines = info.read().splitlines()
    except OSError:
        return []
    # The fifth field, with space, tab, newline and backslash as octal escapes.
    return [
        re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
        for line in lines
        if line.count(" ") >= 4
    ]


def _mount_of(path: str, mounts: list[str]) -> str | None:
    """The mount *path* is on: the longest mount point it is at or under."""
    found = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(found, key=len) if found else None


def storage_refusal(exc: OSError) -> str:
    """What an OSError of :data:`STORAGE_ERRNOS` says, in one line, with the file."""
    where = f": {exc.filename}" if exc.filename is not None else ""
    if exc.filename2 is not None:  # a rename's: where it was going says which folder refused
        where += f" -> {exc.filename2}"
    if exc.errno == errno.EXDEV:
        return f"a folder of the store is on another file system{where} ({ONE_FILE_SYSTEM})"
    why = _REFUSED_FOR.get(exc.errno or 0)
    return f"{exc.strerror or exc}{where}" + (f" ({why})" if why else "")


class AtPath(enum.Enum):
    """What :meth:`Storage.found_at` finds at a path."""

    ITSELF = "itself"
    TWIN = "twin"
    NOTHING = "nothing"


class StorageUnusable(Exception):
    """The storage root cannot be used: not a folder, not writable, not readable."""


def storage_full(exc: BaseException) -> HoraceError | None:
    """``STORAGE_FULL`` when *exc* says the disk (bytes or inodes) or a quota is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HoraceError(ErrorCode.STORAGE_FULL, f"the storage is full: {exc.strerror or exc}")
    return None


def _storage_full(fn: Callable[P, T]) -> Callable[P, T]:
    """A full disk (or quota) is ``STORAGE_FULL`` for the caller, not an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            full = storage_full(exc)
            if full is not None:
                raise full from None
            raise

    return wrapper


class _Folder:
    """A folder on a walk's way down: its path under files/, what is left of its listing
    (name, is a folder, is a file), and its descriptor (None: closed, for depth)."""

    def __init__(self, prefix: str, entries: Iterator[tuple[str, bool, bool]], fd: int) -> None:
        self.prefix, self.entries = prefix, entries
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _listing(fd: int, check_cancelled: CheckCancelled) -> Iterator[tuple[str, bool, bool]]:
    """The entries of the folder *fd*, read now: (name, is a folder, is a file)."""
    check_cancelled()
    with os.scandir(fd) as listing:
        return iter(
            [(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in listing]
        )


class _NoFolderThere(NotADirectoryError):
    """A file (not a symlink) where a folder of a path should be: the path names nothing."""


class SymlinkOnTheWay(HoraceError):
    """A symlink (or what is not a folder) where a folder of a path should be: what it
    leads to is out of Horace's reach, never read or written through."""

    def __init__(self, rel: str) -> None:
        super().__init__(
            ErrorCode.INVALID_PATH, f"invalid path {quoted(rel)}: symlink or non-folder on the way"
        )


class _Folders:
    """The folders of a batch of working files, opened component by component with
    ``O_NOFOLLOW`` from ``files/`` (so a folder swapped for a symlink is refused, as
    :meth:`Storage._parent_fd` refuses it) and kept open for the files that follow: the
    last HELD_FOLDERS used (a batch's files come in path order), the rest closed at the end.
    A folder's descriptor is good until the next :meth:`parent`."""

    def __init__(self, files: Path, objects: Path) -> None:
        self._files = files
        self._objects = objects
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._objects_fd: int | None = None

    def __enter__(self) -> _Folders:
        return self

    def __exit__(self, *_: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._objects_fd is not None:
            os.close(self._objects_fd)
            self._objects_fd = None

    def objects(self) -> int:
        """The descriptor of ``objects/`` (opened on first use), to look for objects by
        name without walking the store's path each time."""
        if self._objects_fd is None:
            self._objects_fd = os.open(self._objects, _DIR_FLAGS)
        return self._objects_fd

    def parent(self, rel: str) -> tuple[int, str]:
        """The descriptor of the folder holding *rel*, and *rel*'s name in it."""
        folder, _, name = rel.rpartition("/")
        try:
            return self._fd(folder), name
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SymlinkOnTheWay(rel) from None
            if exc.errno == errno.ENOENT:
                raise no_file_at(rel) from None
            raise

    def _fd(self, folder: str) -> int:
        """The folder *folder* (under files/; "": files/ itself), opened from the nearest
        folder above it that is open (in a loop: a thousand folders deep takes no stack)."""
        parts = folder.split("/") if folder else []
        held = len(parts)
        while held > 0 and "/".join(parts[:held]) not in self._fds:
            held -= 1
        key = "/".join(parts[:held])
        fd = self._fds.get(key)
        if fd is None:
            fd = self._hold(key, _open_files_folder(self._files))
        self._fds.move_to_end(key)
        for i in range(held, len(parts)):
            fd = self._hold("/".join(parts[: i + 1]), os.open(parts[i], _DIR_FLAGS, dir_fd=fd))
        return fd

    def _hold(self, folder: str, fd: int) -> int:
        self._fds[folder] = fd
        while len(self._fds) > HELD_FOLDERS:  # (the one just opened is the newest: kept)
            os.close(self._fds.popitem(last=False)[1])
        return fd


_FILES_A_SYMLINK = (
    "{files} is a symbolic link (to {to}): Horace follows none, so that nothing outside the "
    "store is ever read or written through one; to keep the files on another disk, make the "
    "whole store there, or mount that disk at the store's folder (files/ and .horace/ must be "
    "on one file system: no rename crosses a mount)"
)


def _files_a_symlink(files: Path) -> str:
    try:
        to = os.readlink(files)
    except OSError:  # (gone again meanwhile)
        to = "?"
    return _FILES_A_SYMLINK.format(files=files, to=to)


def _open_files_folder(files: Path) -> int:
    """A descriptor of ``files/`` itself, never through a symlink: one put in its place
    while Horace runs is a storage error that says so, not a path that names nothing."""
    try:
        return os.open(files, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if files.is_symlink():
            raise HoraceError(ErrorCode.STORAGE_ERROR, _files_a_symlink(files)) from None
        raise HoraceError(ErrorCode.STORAGE_ERROR, f"{files} is not a folder") from None


def no_file_at(rel: str) -> HoraceError:
    """FILE_NOT_FOUND for the path *rel* (under files/)."""
    return HoraceError(ErrorCode.FILE_NOT_FOUND, f"no file at {quoted(rel)}{files_prefix_hint(rel)}")


def not_catalogued(rel: str) -> HoraceError:
    """NOT_CATALOGED for the path *rel* (under files/)."""
    return HoraceError(ErrorCode.NOT_CATALOGED, f"{quoted(rel)} is not catalogued{files_prefix_hint(rel)}")


def files_prefix_hint(rel: str) -> str:
    """A path that begins with ``files/`` was most likely given from the store's root:
    what is meant, said after the error."""
    if not rel.startswith("files/"):
        return ""
    return f" (paths are under files/: {quoted(rel.removeprefix('files/'))}?)"


def a_folder_at(rel: str) -> HoraceError:
    """INVALID_PATH for a file's path *rel* that is a folder: what catalogs its files."""
    return HoraceError(
        ErrorCode.INVALID_PATH,
        f"{quoted(rel)} is a folder, not a file: a scan of it (horace_scan, `horace scan`) "
        "catalogs its files",
    )


def _open_regular(dfd: int, name: str, rel: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file *name* in *dfd* (never a symlink), and
    its stat; the refusals of :func:`_check_catalogable`."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise block (uncancellably, in a
    # worker thread) until some writer opens it; it has no effect on regular files.
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        raise no_file_at(rel) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HoraceError(
                ErrorCode.INVALID_PATH, f"invalid path {quoted(rel)}: symlinks are not catalogued"
            ) from None
        if exc.errno == errno.EISDIR:
            raise a_folder_at(rel) from None
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):  # a socket, a device
            raise HoraceError(ErrorCode.INVALID_PATH, f"{quoted(rel)} is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        _check_catalogable(rel, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class _StoreFolders:
    """``.horace/tmp`` and ``objects/``, opened once for a batch of keeps or releases: each
    file's links are made relative to them, with no path built or walked per file."""

    def __init__(self, storage: Storage) -> None:
        self._tmp = os.open(storage.tmp, _DIR_FLAGS)
        try:
            self._objects = os.open(storage.objects, _DIR_FLAGS)
        except BaseException:
            os.close(self._tmp)
            raise

    def __enter__(self) -> _StoreFolders:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self._objects)
        os.close(self._tmp)

    def keep(self, staged: Staged) -> None:
        """:meth:`Storage.keep` without its syncs (the caller makes it durable)."""
        name, target = staged.copy.name, _object_name(staged.checksum)
        os.utime(name, dir_fd=self._tmp)
        try:
            os.link(name, target, src_dir_fd=self._tmp, dst_dir_fd=self._objects)  # a new object
        except FileExistsError:
            # There already: renamed over, to refresh its mtime and replace a damaged copy.
            second = temp_name(TempKind.STAGE)
            os.link(name, second, src_dir_fd=self._tmp, dst_dir_fd=self._tmp)
            os.rename(second, target, src_dir_fd=self._tmp, dst_dir_fd=self._objects)

    def release(self, staged: Staged) -> None:
        """:meth:`Storage.release`."""
        name, target = staged.copy.name, _object_name(staged.checksum)
        try:
            os.stat(target, dir_fd=self._objects)
        except FileNotFoundError:  # the collector took it meanwhile: put back
            os.link(name, target, src_dir_fd=self._tmp, dst_dir_fd=self._objects)
            self.sync_object_folder(staged.checksum)
        try:
            os.unlink(name, dir_fd=self._tmp)
        except FileNotFoundError:
            pass

    def sync_object_folder(self, checksum: str) -> None:
        fd = os.open(checksum[:2], _DIR_FLAGS, dir_fd=self._objects)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def released_since(marks: Mapping[str, float], checksum: str, written: float) -> bool:
    """Did the catalog let go of *checksum* (its mark in *marks*) since its object, or the
    pack holding it, was *written*? A mark older than that is stale: the content was kept
    again since, for a newer version (which renames its object over, or packs it anew),
    and a catalog restored from a backup may have no row of that version."""
    at = marks.get(checksum)
    return at is not None and at >= written


def _object_name(checksum: str) -> str:
    """An object's path under ``objects/`` (as :meth:`Storage.object_path` spells it)."""
    return f"{checksum[:2]}/{checksum}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _root_of(root: Path) -> Path:
    try:
        return absolute_root(root)
    except NoCurrentFolder as exc:
        raise StorageUnusable(str(exc)) from None


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = _root_of(root)
        self.files = self.root / "files"
        self.private = self.root / HORACE_DIR
        self.objects = self.private / "objects"
        self.packs = self.objects / "packs"
        self.tmp = self.private / "tmp"
        self.spool = self.private / "spool"  # the log sinks' entries kept over a restart
        self.own_catalog = self.private / "catalog.db"  # the SQLite catalog, when it is the default
        self.lock_file = self.private / "locks"
        # One empty file per object the catalog let go of (a pruned or purged version's)
        # that was too fresh to collect then: the sweep collects it past the grace period,
        # not the retention an object without a row is otherwise kept.
        self.released = self.private / "released"
        self.damaged = self.private / "damaged"  # damaged packs nothing needs, kept for a look
        self.identity_file = self.private / IDENTITY_FILE
        self._reflink = True  # until the filesystem says otherwise
        self._renameat2 = True  # until the filesystem says otherwise
        # What the packs hold, read when a lookup misses (another process may have
        # written a pack since): checksum -> (pack, offset, length).
        self._packs_lock = threading.Lock()
        self._packed_at = packs.Locations()
        self._pinned: tuple[int, int] | None = None  # .horace's device and inode: see pin()
        # Told of each working file Horace itself puts in files/ (see observe_writes).
        self._write_observers: list[Callable[[Path], None]] = []

    # -- layout and identity ------------------------------------------------------------

    def pin(self) -> None:
        """Remember which folder ``.horace`` is now (its device and inode), for
        :meth:`in_place` to tell whether the store is still the one opened."""
        found = os.stat(self.private)
        self._pinned = (found.st_dev, found.st_ino)

    def writable(self) -> bool:
        """Whether Horace may write to the store (``.horace/tmp``, where every write
        begins): false on a filesystem gone read-only, or one not this user's to write.
        Tried by making a file there (:meth:`clock_ns`'s): ext4 gone read-only after an
        error keeps its mount read-write, and an access check says yes."""
        try:
            self.clock_ns()
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return False
            # (A full disk, say: whether a write is refused is asked.)
            return os.access(self.tmp, os.W_OK)
        return True

    def room(self) -> tuple[int, int | None]:
        """The bytes and inodes left on the store's file system (inodes None where it
        counts none: btrfs makes them as it goes)."""
        st = os.statvfs(self.tmp)
        # What an ordinary user may take: root may take more (the blocks kept for it), but
        # not all of that (ext4 keeps some from root too): full by this, the disk is full
        # for any practical use.
        return st.f_bavail * st.f_frsize, (st.f_favail if st.f_files else None)

    def in_place(self) -> bool:
        """Whether the store is still the one :meth:`pin` saw: not moved away, removed,
        replaced by a copy, or hidden by a volume unmounted (or mounted) over it. The
        paths would lead elsewhere while the catalog and open folders stay the old ones."""
        if self._pinned is None:
            return True
        try:
            found = os.stat(self.private)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return (found.st_dev, found.st_ino) == self._pinned

    def state(self) -> StoreState:
        """What is at the root, creating nothing; :class:`StorageUnusable` when the root
        is something that cannot be a store."""
        problem = _root_path_problem(self.root)
        if problem is not None:
            raise StorageUnusable(f"the storage path {quoted(str(self.root))} {problem}")
        if self.root.exists() and not self.root.is_dir():
            raise StorageUnusable(f"the storage path {self.root} is not a folder")
        if self.files.is_symlink():
            raise StorageUnusable(_files_a_symlink(self.files))
        if not self.private.is_dir():
            return StoreState(False, None, None, False)
        try:
            recorded = json.loads(self.identity_file.read_text(encoding="utf-8"))
            store_id, catalog_url = str(recorded["store_id"]), recorded.get("catalog")
            place = recorded.get("catalog_place")
        except FileNotFoundError:
            store_id, catalog_url, place = None, None, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageUnusable(f"cannot read the store's identity {self.identity_file}: {exc}") from None
        has_objects = self._has_objects() if store_id is None else None
        own = f"sqlite:{os.path.realpath(self.own_catalog)}"
        return StoreState(
            True,
            store_id,
            catalog_url,
            has_objects,
            place if isinstance(place, str) else None,
            own,
        )

    def found_at(self, path: str, store_id: str) -> AtPath:
        """What of the store of identity *store_id* is at *path*: this root (under another
        name: a symlink, a bind mount), another store of that identity (a copy of one
        store is the other's twin: its store.json says so), or nothing readable of it."""
        try:
            if os.path.samefile(path, self.root):
                return AtPath.ITSELF
            recorded = json.loads((Path(path) / HORACE_DIR / IDENTITY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return AtPath.NOTHING
        twin = isinstance(recorded, dict) and recorded.get("store_id") == store_id
        return AtPath.TWIN if twin else AtPath.NOTHING

    def check_one_file_system(self) -> None:
        """Refuse (:class:`StorageUnusable`) a store whose folders are not one mount (no
        rename crosses mounts, not even a bind mount of the same disk, which the device
        numbers do not tell). Looked at when the store is opened, not at every
        :meth:`state` (which a running catalog reads every second)."""
        device = os.stat(self.private).st_dev
        mounts = _mount_points()
        home = _mount_of(os.path.realpath(self.private), mounts)
        for folder in (self.files, self.tmp, self.objects):
            try:
                apart = os.stat(folder).st_dev != device
            except FileNotFoundError:
                continue
            if apart or _mount_of(os.path.realpath(folder), mounts) != home:
                raise StorageUnusable(
                    f"{folder} is on another file system (or mount) than {self.private}: {ONE_FILE_SYSTEM}"
                )

    def looks_like_a_store(self) -> bool:
        """Whether the root holds a store's two folders (``.horace/`` and ``files/``)."""
        return self.private.is_dir() and self.files.is_dir()

    def enclosing_store(self) -> Path | None:
        """The store whose ``files/`` (or ``.horace/``) folder holds this root, if any: a
        store made there would be catalogued, object by object, as that store's files."""
        root = self.root.resolve()
        for above in root.parents:
            if (above / HORACE_DIR).is_dir() and root.is_relative_to(above / "files"):
                return above
            if above.name == HORACE_DIR and (above.parent / "files").is_dir():
                return above.parent
        return None

    def _has_objects(self) -> bool:
        try:
            with os.scandir(self.objects) as subs:
                for sub in subs:
                    if sub.is_dir(follow_symlinks=False) and any(os.scandir(sub.path)):
                        return True
        except FileNotFoundError:
            return False
        return False

    def ensure_layout(self) -> None:
        problem = self.private_layout_problem()  # (before anything is made through a link)
        if problem is not None:
            raise StorageUnusable(problem)
        try:
            make_private_folder(self.root)  # (whoever may rename in it may rename .horace away)
            for folder in COMPONENT_FOLDERS:
                (self.files / folder).mkdir(parents=True, exist_ok=True)
            for private in (self.private, self.tmp, self.objects, self.spool):
                make_private_folder(private)
            subs = (*(f"{i:02x}" for i in range(256)), self.packs.name)
            present = set(os.listdir(self.objects))  # one read, not 257 mkdir calls
            for sub in subs:
                if sub not in present:
                    make_private_folder(self.objects / sub)
            _not_writable_by_all(
                [
                    *(self.private, self.tmp, self.objects, self.spool, self.released, self.damaged),
                    *(self.objects / sub for sub in subs),
                ]
            )
            if os.stat(self.root).st_mode & (stat.S_IWOTH | stat.S_ISVTX) == stat.S_IWOTH:
                log.warning(
                    "the store's folder %s is writable by every local user (without the sticky "
                    "bit), who may rename .horace away: chmod o-w it",
                    self.root,
                )
            # Made, not touched: its mtime is the watch lease holder's sign of life.
            os.close(os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:  # (a storage error, as for a store made already)
                raise
            # A file where a folder of the layout goes: named, not the folder in it that
            # could not be made.
            where = str(exc.filename) if exc.filename else ""
            if exc.errno in (errno.ENOTDIR, errno.EEXIST):
                in_the_way = [
                    p for p in (self.files, self.private, self.objects) if p.exists() and not p.is_dir()
                ]
                if in_the_way:
                    raise StorageUnusable(
                        f"cannot create the store at {self.root}: {in_the_way[0]} is a file, not a folder"
                    ) from None
            raise StorageUnusable(
                f"cannot create the store at {self.root}: {exc.strerror or exc}"
                + (f" ({where})" if where else "")
            ) from None
        for writable in (self.tmp, self.files):
            if not os.access(writable, os.W_OK):
                raise PermissionError(errno.EACCES, "the store is not writable", str(writable))
        self._check_hard_links()

    def _check_hard_links(self) -> None:
        """Refuse a filesystem without hard links (vfat, exFAT): a version's content is
        kept by linking its staged copy into place, so every write would fail."""
        first, second = self.tmp / temp_name(TempKind.CLOCK), self.tmp / temp_name(TempKind.CLOCK)
        os.close(os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            os.link(first, second)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            raise StorageUnusable(
                f"the store's filesystem at {self.root} has no hard links ({exc.strerror}): Horace "
                "keeps each version's content by linking it into place; put the store on a "
                "filesystem that has them (ext4, XFS, btrfs, tmpfs, NFS), not vfat or exFAT"
            ) from None
        finally:
            first.unlink()
        second.unlink()

    def layout_present(self) -> set[Path]:
        """The root and the layout's folders outside ``.horace`` that exist now (see
        :meth:`undo_layout`)."""
        return {
            p for p in (self.root, self.files, *(self.files / f for f in COMPONENT_FOLDERS)) if p.is_dir()
        }

    def holds_files(self) -> bool:
        """Whether any file is under ``files/`` (the walk stops at the first)."""
        return any(names for _, _, names in os.walk(self.files))

    def undo_layout(self, present: set[Path]) -> None:
        """Take back what :meth:`ensure_layout` made for a store whose creation failed
        before it was bound (its catalog refused it, say), so that nothing is left to look
        like a store: the empty folders of ``.horace`` and its empty lock file, and those of
        the layout's folders under ``files/`` and the root that were not *present* before,
        if empty. Nothing, once the store has an identity: another process (an instance
        started at the same time) has bound it meanwhile and is using its folders."""
        if self.identity_file.exists():
            return
        if self.lock_file.is_file() and self.lock_file.stat().st_size == 0:
            self.lock_file.unlink()
        made = [p for p in (*(self.files / f for f in COMPONENT_FOLDERS), self.files) if p not in present]
        made += [self.root] if self.root not in present else []  # (last: after .horace)
        if self.private.is_dir() and not self.private.is_symlink():
            made = [Path(folder) for folder, _, _ in os.walk(self.private)][::-1] + made
        for folder in made:
            with contextlib.suppress(OSError):  # not empty (or gone): kept
                folder.rmdir()

    def _held_path(self, file_id: str) -> Path:
        """Where a working file moved out of files/ waits (its name says whose: see
        :meth:`TempName.held_file_id`)."""
        return self.tmp / temp_name(TempKind.HELD, file_id.replace("-", ""))

    @_storage_full
    def write_identity(self, store_id: str, catalog_url: str, catalog_place: str | None) -> None:
        record: dict[str, object] = {
            "store_id": store_id,
            "catalog": catalog_url,
            "catalog_place": catalog_place,
            "created_at": time.time(),
        }
        tmp = self.tmp / temp_name(TempKind.META)
        _write_new(tmp, (json.dumps(record) + "\n").encode(), 0o644, sync=True)
        os.rename(tmp, self.identity_file)
        _fsync_dir(self.private)

    def private_layout_problem(self) -> str | None:
        """What is wrong with ``.horace``'s own folders and lock file, if anything: each
        must be what Horace made (a folder, a regular file of one link), never a symlink.
        Horace writes, renames and removes in them by their paths: through a link put in
        their place it would do so outside the store. (A look, a stat each: at every start
        and at the store's periodic check.)"""
        folders = (self.tmp, self.objects, self.spool, self.released, self.damaged, self.packs)
        subs = (self.objects / f"{i:02x}" for i in range(256))
        for folder in (*folders, *subs):
            try:
                mode = os.lstat(folder).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue  # (made when first needed; a file where .horace goes is said elsewhere)
            if not stat.S_ISDIR(mode):
                what = "a symlink" if stat.S_ISLNK(mode) else "not a folder"
                return (
                    f"{quoted(str(folder))} is {what}: Horace's own folders in .horace must be folders, "
                    "never links (what Horace writes and removes there would go through it, outside "
                    "the store); put the folder back, with what it held"
                )
        try:
            lock = os.lstat(self.lock_file)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(lock.st_mode) or lock.st_nlink != 1:
            return lock_file_refusal(self.lock_file)
        return None

    def object_path(self, checksum: str) -> Path:
        return self.objects / _object_name(checksum)

    @contextlib.contextmanager
    def observe_writes(self, observer: Callable[[Path], None]) -> Iterator[None]:
        """While in the block, *observer* is told (from whichever thread wrote it) the path
        of each working file Horace itself writes into files/: a restore, an undelete, a
        working copy put back. A poller needs this: a file written and removed again
        between two of its looks is otherwise never seen."""
        self._write_observers.append(observer)
        try:
            yield
        finally:
            self._write_observers.remove(observer)

    def _wrote(self, rel: str) -> None:
        for observer in list(self._write_observers):
            observer(self.files / rel)

    def working_path(self, rel: str) -> Path:
        return self.files / rel

    # -- safe access to working files ---------------------------------------------------

    @contextlib.contextmanager
    def _parent_fd(self, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """Open the folder holding *rel* without following any symlink on the way.

        A symlink on the way is refused (``INVALID_PATH``: what it leads to is out of
        reach, not gone). A file where a folder should be means *rel* names nothing:
        ``NotADirectoryError``, as for a missing folder ``FileNotFoundError`` (with
        *create*, when a folder cannot be made there, ``INVALID_PATH``)."""
        *dirs, name = rel.split("/")
        fd = _open_files_folder(self.files)
        try:
            for part in dirs:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    if create or stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise
                    raise _NoFolderThere(
                        errno.ENOTDIR, f"{quoted(part)} on the way is not a folder"
                    ) from None
                os.close(fd)
                fd = nxt
            yield fd, name
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and not isinstance(exc, _NoFolderThere):
                raise SymlinkOnTheWay(rel) from None
            # Opened relative to a folder, the error names the last step only: said whole
            # ("Permission denied: files/user/a.txt", not "a.txt").
            if exc.filename == name:
                exc.filename = f"files/{rel}"
            elif exc.filename in dirs:
                exc.filename = "files/" + "/".join(dirs[: dirs.index(exc.filename) + 1])
            raise
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_working(self, rel: str) -> Iterator[tuple[int, os.stat_result]]:
        """A read-only descriptor of the regular file *rel* (never a symlink), and its stat."""
        try:
            with self._parent_fd(rel) as (dfd, name):
                fd, st = _open_regular(dfd, name, rel)
        except (FileNotFoundError, NotADirectoryError):
            raise no_file_at(rel) from None
        try:
            yield fd, st
        finally:
            os.close(fd)

    def working_identity(self, rel: str) -> tuple[int, int, int] | None:
        """(inode, device, mtime_ns) of the regular file at *rel*, what a rename keeps of
        it (see ``horace.catalog.rename_identity``); None when there is none."""
        try:
            with self._parent_fd(rel) as (dfd, name):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, HoraceError):
            return None
        return (st.st_ino, st.st_dev, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None

    def working_exists(self, rel: str) -> bool:
        try:
            with self._parent_fd(rel) as (dfd, name):
                return stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
        except (FileNotFoundError, NotADirectoryError, HoraceError):
            return False

    def surely_gone(self, rel: str) -> bool:
        """No working copy at *rel*, as far as can be seen: False also when it cannot be
        looked at (a folder on its way unreadable), which is not taken for gone."""
        try:
            return not self.working_exists(rel)
        except OSError:
            return False

    def too_long(self, rel: str) -> str | None:
        """Why *rel* is too long to be catalogued (:func:`horace.paths.too_long`), or None."""
        return too_long(self._resolved_files, rel)

    def unreachable(self, rel: str) -> str | None:
        """Why *rel* cannot be reached (a symlink, or a file, where a folder of its path
        should be); None when it can, or its folder is merely missing."""
        try:
            with self._parent_fd(rel):
                return None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except HoraceError as exc:
            return exc.message

    def hash_working(self, rel: str, check_cancelled: CheckCancelled = _never_cancelled) -> str:
        with self.open_working(rel) as (fd, _):
            return _hash_fd(fd, check_cancelled)[0]

    def clock_ns(self) -> int:
        """The filesystem's own time now (the mtime it gives a file it creates), in ns.

        Working files get their mtime and ctime from this clock, not the host's: where
        ``files/`` is a network mount, the two may differ. ``files/`` and ``.horace`` are
        one filesystem (Horace renames between them).
        """
        try:
            fd = os.open(self.tmp, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (*_UNSUPPORTED, errno.EISDIR):
                raise
            return self._clock_ns_named()
        try:
            return os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)

    def _clock_ns_named(self) -> int:
        path = self.tmp / temp_name(TempKind.CLOCK)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            return os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    def hash_many(
        self, rels: list[str], check_cancelled: CheckCancelled = _never_cancelled
    ) -> list[Hashed | HoraceError]:
        """Hash working files where they are, each with its stat identity; one outcome per
        path, in order (a file that cannot be read is a :class:`HoraceError` of its own)."""
        recorded_ns = self.clock_ns()  # before any of them is read: see WorkingStat
        found: list[Hashed | HoraceError] = []
        with _Folders(self.files, self.objects) as folders:
            for rel in rels:
                check_cancelled()
                try:
                    found.append(self._hash_in(folders, rel, recorded_ns, check_cancelled))
                except HoraceError as exc:
                    found.append(exc)
                except OSError as exc:  # unreadable, say: this file only
                    found.append(_unreadable(rel, exc))
        return found

    def checksum_of_any(self, rel: str) -> str | None:
        """The checksum of the regular file at *rel*, catalogable or not (hard linked,
        say): for telling whether it holds a content; None when it cannot be read whole
        (gone, unreadable, being written)."""
        try:
            with _Folders(self.files, self.objects) as folders:
                dfd, name = folders.parent(rel)
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        return None
                    checksum = _hash_fd(fd, _never_cancelled, before.st_size)[0]
                    return None if _stat_moved(before, os.fstat(fd)) else checksum
                finally:
                    os.close(fd)
        except (OSError, HoraceError):
            return None

    def _hash_in(
        self, folders: _Folders, rel: str, recorded_ns: int, check_cancelled: CheckCancelled
    ) -> Hashed:
        dfd, name = folders.parent(rel)
        fd, before = _open_regular(dfd, name, rel)
        try:
            checksum = _hash_fd(fd, check_cancelled, before.st_size)[0]
            after = os.fstat(fd)
        finally:
            os.close(fd)
        written = _stat_moved(before, after)
        return Hashed(None if written else checksum, working_stat(after, recorded_ns))

    # -- ingest: working file -> staged temp -> object ----------------------------------

    @_storage_full
    def stage(
        self, rel: str, check_cancelled: CheckCancelled = _never_cancelled, *, as_it_is: bool = False
    ) -> Staged:
        """Copy the working file into ``.horace/tmp`` and hash it, in one pass.

        With a reflink-capable filesystem the copy is a clone and the clone is hashed,
        so the checksum always describes exactly the bytes that were kept.

        A read lease is held on the file through the copy: a writer that opens it meanwhile
        (truncating it, say) waits until the copy is made, so the copy is never of half
        its work. A file some process has open for writing already is ``FILE_LOCKED``,
        unless *as_it_is* (the watcher's take of a file written on and on): then it is
        copied as it is, and refused only if it changed while being read. Where leases are
        not supported (NFS), only that check is made.
        """
        recorded_ns = self.clock_ns()  # before the file is read: see WorkingStat
        with self.open_working(rel) as (src, before):
            try:
                if _read_lease(src):  # (released as src is closed)
                    before = os.fstat(src)  # (as the lease found it)
            except BlockingIOError:
                if not as_it_is:
                    raise HoraceError(
                        ErrorCode.FILE_LOCKED,
                        f"{quoted(rel)} is open for writing by another process (what it holds may be "
                        "half written): try again once it is closed",
                    ) from None
            return self._stage_fd(src, before, rel, check_cancelled, recorded_ns)

    def stage_many(
        self, rels: list[str], check_cancelled: CheckCancelled = _never_cancelled, in_memory: int = 0
    ) -> list[Staged | HoraceError]:
        """:meth:`stage` for a batch of working files, their folders opened once; one
        outcome per path, in order (a file that cannot be taken is a :class:`HoraceError`
        of its own). Files of at most ``packs.OBJECT_MAX`` bytes whose content is not an
        object yet are read into memory instead, *in_memory* bytes at most, for
        :meth:`keep_batch` to write as one pack. Cancelled, it removes what it staged."""
        recorded_ns = self.clock_ns()  # before any of them is read: see WorkingStat
        found: list[Staged | HoraceError] = []
        try:
            with _Folders(self.files, self.objects) as folders:
                for rel in rels:
                    check_cancelled()  # between files, as between the chunks of one
                    try:
                        one = self._stage_in(folders, rel, recorded_ns, check_cancelled, in_memory)
                        if one.content is not None:
                            in_memory -= one.size
                        found.append(one)
                    except HoraceError as exc:
                        found.append(exc)
                    except OSError as exc:  # unreadable, say: this file only, never the batch
                        found.append(_unreadable(rel, exc))
        except BaseException:
            for staged in found:
                if isinstance(staged, Staged):
                    self.discard(staged)
            raise
        return found

    @_storage_full
    def _stage_in(
        self, folders: _Folders, rel: str, recorded_ns: int, check_cancelled: CheckCancelled, in_memory: int
    ) -> Staged:
        dfd, name = folders.parent(rel)
        src, before = _open_regular(dfd, name, rel)
        try:
            if in_memory > 0 and before.st_size <= min(packs.OBJECT_MAX, in_memory):
                return self._stage_small(src, before, rel, recorded_ns, folders.objects())
            return self._stage_fd(src, before, rel, check_cancelled, recorded_ns)
        finally:
            os.close(src)

    def _stage_small(
        self, src: int, before: os.stat_result, what: str, recorded_ns: int, objects: int
    ) -> Staged:
        """A small file read into memory and hashed; copied into ``.horace/tmp`` as any
        other when its content is an object already (so that keeping it refreshes that
        object: see :meth:`keep`)."""
        content = _read_small(src, before.st_size)
        after = os.fstat(src)
        checksum = hashlib.sha256(content).hexdigest()
        whole = len(content) == after.st_size
        if not (whole and _whole_as_read(src, before, after, checksum, _never_cancelled, recorded_ns)):
            raise HoraceError(
                ErrorCode.FILE_LOCKED, f"{quoted(what)} changed while it was being read; try again"
            )
        tmp_path = None
        try:
            os.stat(_object_name(checksum), dir_fd=objects)
        except FileNotFoundError:
            pass
        else:
            tmp_path = self._staged_copy(content)
        return Staged(
            tmp_path,
            checksum,
            len(content),
            content[:HEAD_BYTES],
            FileIdentity.of(after),
            working_stat(after, recorded_ns),
            content if tmp_path is None else None,
        )

    @_storage_full
    def stage_held(self, held: Path, check_cancelled: CheckCancelled = _never_cancelled) -> Staged:
        """Stage a working file that :meth:`take_working` or :meth:`replace_working` moved
        into ``.horace/tmp``."""
        src = os.open(held, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            before = os.fstat(src)
            return self._stage_fd(src, before, held.name, check_cancelled, self.clock_ns(), working=False)
        finally:
            os.close(src)

    def _stage_fd(
        self,
        src: int,
        before: os.stat_result,
        what: str,
        check_cancelled: CheckCancelled,
        recorded_ns: int,
        *,
        working: bool = True,
    ) -> Staged:
        """Stage the open file *src*, whose stat was *before*, read after *recorded_ns* (on
        the filesystem's clock); a *working* file is staged with its stat identity."""
        try:
            staged = self._copy_to_temp(src, check_cancelled, before.st_size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and before.st_blocks * 512 < before.st_size:
                raise self._sparse_does_not_fit(what, before) from None
            raise
        try:
            after = os.fstat(src)
            whole = _whole_as_read(src, before, after, staged.checksum, check_cancelled, recorded_ns)
        except BaseException:  # (cancelled while it was read again, say)
            self.discard(staged)
            raise
        if not whole:
            # A writer was at work while we copied: what we have may be torn.
            self.discard(staged)
            raise HoraceError(
                ErrorCode.FILE_LOCKED, f"{quoted(what)} changed while it was being read; try again"
            )
        return Staged(
            staged.tmp_path,
            staged.checksum,
            staged.size,
            staged.head,
            FileIdentity.of(after),
            working_stat(after, recorded_ns) if working else None,
        )

    def _sparse_does_not_fit(self, what: str, st: os.stat_result) -> HoraceError:
        """A full disk met copying a sparse file: its holes are kept as the zeros they read
        as, which is what did not fit (the disk may be nearly empty)."""
        try:
            room = os.statvfs(self.tmp)
            free = f"the {_size(room.f_bavail * room.f_frsize)} free"
        except OSError:
            free = "the room left"
        return HoraceError(
            ErrorCode.STORAGE_FULL,
            f"the storage is full: {quoted(what)} reads as {_size(st.st_size)}, {_size(st.st_blocks * 512)} "
            f"of it on disk (sparse, or compressed by its filesystem); Horace keeps its content "
            f"whole, and that does not fit in {free}",
        )

    def is_being_written(self, rel: str) -> bool:
        """Whether some process has *rel* open for writing (local filesystems).

        A read lease is refused while any writer has the file open; where leases are not
        supported (NFS, another owner without CAP_LEASE) this answers False and callers
        rely on the file settling instead.
        """
        try:
            with self.open_working(rel) as (fd, _):
                try:
                    if _read_lease(fd):
                        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                except BlockingIOError:
                    return True
                return False
        except HoraceError:
            return False

    @contextlib.contextmanager
    def _no_writer_comes(self, dfd: int, name: str, rel: str) -> Iterator[Callable[[], bool]]:
        """Hold a read lease on the file at *name* (*rel*, for messages) while it is moved
        or swapped away:
        ``FILE_LOCKED`` when a process has it open for writing already; the function
        yielded says afterwards whether one tried to open it meanwhile. (Its open waits
        for the lease, on the file it found at *name*: the caller puts that file back,
        and the writer's write lands where it meant it to.) Where leases are not
        supported, or nothing is at *name*, nobody is seen coming."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError:
            yield lambda: False  # nothing there (or nothing a writer could open as a file)
            return
        try:
            leased = False
            if stat.S_ISREG(os.fstat(fd).st_mode):
                try:
                    leased = _read_lease(fd)
                except BlockingIOError:
                    raise HoraceError(
                        ErrorCode.FILE_LOCKED,
                        f"{quoted(rel)} is open for writing by another process: try again once it is closed",
                    ) from None

            def writer_came() -> bool:
                return leased and fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK

            yield writer_came
        finally:
            os.close(fd)  # (releases the lease: the waiting open goes on)

    def _copy_to_temp(self, src: int, check_cancelled: CheckCancelled, size_hint: int) -> Staged:
        tmp_path = self.tmp / temp_name(TempKind.STAGE)
        dst = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            if self._reflink and self._try_clone(src, dst):
                clone = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    checksum, copied, head = _hash_fd(clone, check_cancelled, size_hint)
                finally:
                    os.close(clone)
            else:
                checksum, copied, head = _copy_and_hash(src, dst, check_cancelled, size_hint)
        except BaseException:
            os.close(dst)
            tmp_path.unlink(missing_ok=True)
            raise
        os.close(dst)
        return Staged(tmp_path=tmp_path, checksum=checksum, size=copied, head=head)

    def _try_clone(self, src: int, dst: int) -> bool:
        try:
            fcntl.ioctl(dst, _FICLONE, src)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                self._reflink = False
                return False
            raise
        return True

    @_storage_full
    def keep(self, staged: Staged) -> None:
        """Make *staged* the object named by its checksum, durably, keeping the staged file
        as a second link until :meth:`release` (after the catalog commit).

        The object is renamed into place, also over an identical existing object: that
        refreshes the object's mtime, which the collector's grace period looks at, and
        replaces a damaged copy. Should the collector take the object between this keep
        and the commit (a grace period of 0), :meth:`release` puts it back from the
        staged link. (A batch is kept with one sync for all: :meth:`keep_batch`.)
        """
        fd = os.open(staged.copy, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with _StoreFolders(self) as folders:
            folders.keep(staged)
            folders.sync_object_folder(staged.checksum)

    @_storage_full
    def keep_batch(self, staged: Sequence[Staged], kept: list[Staged]) -> None:
        """:meth:`keep` each of *staged* (adding it to *kept*), those staged in memory
        written as one pack, then one :meth:`sync` for all: a batch's objects made
        durable together. Each of the pack's is added to *kept* with the pack's staged
        link (its second link in ``.horace/tmp``, kept until :meth:`release_batch`, as a
        staged copy is kept beside its object)."""
        with _StoreFolders(self) as folders:
            for one in staged:
                if one.content is None:
                    folders.keep(one)
                    kept.append(one)
        small = {one.checksum: one.content for one in staged if one.content is not None}
        if small:
            link = self._write_pack(list(small.items()))
            kept.extend(attrs.evolve(one, tmp_path=link) for one in staged if one.content is not None)
        self.sync()

    def _write_pack(self, entries: Sequence[tuple[str, bytes]]) -> Path:
        """Write a pack of *entries* in ``.horace/tmp`` and link it into ``objects/packs/``;
        its link in ``.horace/tmp`` (named after the pack) stays, and is returned."""
        name = packs.new_name()
        tmp_path = self.tmp / temp_name(TempKind.PACK, name.removesuffix(packs.SUFFIX))
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            try:
                index = packs.write(fd, entries)
            finally:
                os.close(fd)
            make_private_folder(self.packs)  # (made with the store; a store of before, too)
            os.link(tmp_path, self.packs / name)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        with self._packs_lock:
            self._packed_at.add(name, index)
        return tmp_path

    @_storage_full
    def release(self, staged: Staged) -> None:
        """After the commit that refers to it: make sure the object is in place, then drop
        the staged link."""
        with _StoreFolders(self) as folders:
            folders.release(staged)

    @_storage_full
    def release_batch(self, kept: Sequence[Staged], released: list[Staged]) -> None:
        """:meth:`release` each of *kept* (adding it to *released*); a pack's staged link
        once for all of its entries."""
        packed: set[Path] = set()
        with _StoreFolders(self) as folders:
            for one in kept:
                if one.content is None:
                    folders.release(one)
                elif one.copy not in packed:
                    packed.add(one.copy)
                    self.release_pack(one.copy)
                released.append(one)

    def release_pack(self, link: Path) -> None:
        """After the commit that refers to a pack's entries: make sure the pack is in
        place (the collector may have taken it meanwhile: it goes back from its staged
        link), then drop that link."""
        name = _pack_linked(link)
        target = self.packs / name
        if not target.exists():
            with contextlib.suppress(FileExistsError):
                os.link(link, target)
            _fsync_dir(self.packs)
        link.unlink(missing_ok=True)

    @_storage_full
    def sync(self) -> None:
        """Flush everything written to the storage's filesystem (batch durability)."""
        fd = os.open(self.private, _DIR_FLAGS)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    @staticmethod
    def discard(staged: Staged) -> None:
        if staged.tmp_path is not None:
            staged.tmp_path.unlink(missing_ok=True)

    def has_object(self, checksum: str) -> bool:
        return self._loose_object_stat(checksum) is not None or self._packed(checksum) is not None

    def object_holds(
        self, checksum: str, size: int, deep: bool, check_cancelled: CheckCancelled = _never_cancelled
    ) -> bool:
        """Does the object hold its content: read whole and hashed (*deep*), else by size."""
        if deep:
            return self.hash_object(checksum, check_cancelled) == (checksum, size)
        return self.object_intact(checksum, size)

    def object_intact(self, checksum: str, size: int) -> bool:
        """Is the object there, at its size? (Its bytes are not read: see :meth:`hash_object`.)"""
        return self.object_size(checksum) == size

    def object_size(self, checksum: str) -> int | None:
        """The object's size as stored (None: missing)."""
        loose = self._loose_object_stat(checksum)
        if loose is not None:
            return loose.st_size
        found = self._packed(checksum)
        return found[2] if found is not None else None

    def _loose_object_stat(self, checksum: str) -> os.stat_result | None:
        """The stat of the loose object *checksum*; None when no regular file is there."""
        try:
            found = os.lstat(self.object_path(checksum))
        except FileNotFoundError:
            return None
        return found if stat.S_ISREG(found.st_mode) else None

    def _open_object(self, checksum: str) -> int:
        """A read-only descriptor of the loose object *checksum*; FileNotFoundError when no
        regular file is there. A symlink, a FIFO, a folder or a device put in its place is
        no object: never followed, waited on (a FIFO's open would wait for a writer, and no
        cancellation reaches a thread blocked there) or read; the object is missing."""
        path = self.object_path(checksum)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO):
                raise
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        return fd

    def read_object(self, checksum: str, check_cancelled: CheckCancelled = _never_cancelled) -> bytes | None:
        """The object's bytes as stored, or None when it is missing."""
        try:
            fd = self._open_object(checksum)
        except FileNotFoundError:
            return self._read_packed(checksum)
        try:
            chunks = []
            while chunk := os.read(fd, CHUNK):
                chunks.append(chunk)
                check_cancelled()
            return b"".join(chunks)
        finally:
            os.close(fd)

    def copy_object_out(
        self,
        checksum: str,
        write: Callable[[bytes], None],
        check_cancelled: CheckCancelled = _never_cancelled,
    ) -> tuple[str, int] | None:
        """The object's bytes as stored handed to *write*, a chunk at a time, and their
        (sha256, size); None when it is missing (nothing written)."""
        try:
            fd = self._open_object(checksum)
        except FileNotFoundError:
            content = self._read_packed(checksum)
            if content is None:
                return None
            write(content)
            return hashlib.sha256(content).hexdigest(), len(content)
        digest, size = hashlib.sha256(), 0
        try:
            while chunk := os.read(fd, CHUNK):
                digest.update(chunk)
                size += len(chunk)
                write(chunk)
                check_cancelled()
        finally:
            os.close(fd)
        return digest.hexdigest(), size

    def hash_object(
        self, checksum: str, check_cancelled: CheckCancelled = _never_cancelled
    ) -> tuple[str, int] | None:
        """(sha256, size) of the object's bytes as stored, or None when it is missing."""
        try:
            fd = self._open_object(checksum)
        except FileNotFoundError:
            content = self._read_packed(checksum)
            return None if content is None else (hashlib.sha256(content).hexdigest(), len(content))
        try:
            sha, size, _ = _hash_fd(fd, check_cancelled)
        finally:
            os.close(fd)
        return sha, size

    # -- writing and removing working files ---------------------------------------------

    def _prepare(
        self,
        checksum: str,
        file_id: str,
        check_cancelled: CheckCancelled,
        mode: int | None = None,
        owner: tuple[int, int] | None = None,
    ) -> Path:
        """Object *checksum* copied into ``.horace/tmp`` and fsynced, named HELD: from
        here a crash leaves nothing fsck would throw away unlooked-at. Its permission
        bits: *mode*'s read, write and execute bits, or 0o644 less the umask; its *owner*
        (uid, gid) as far as this process may give it (see :func:`_give_owner`). Never
        setuid, setgid or sticky: the file is written as Horace's user (root, maybe), not
        as the one who wrote it, so those bits would run a user's bytes as Horace's (``cp``
        and ``tar`` without ownership drop them for the same reason)."""
        part = self.tmp / temp_name(TempKind.PART)
        try:
            source = self._open_object(checksum)
        except FileNotFoundError:
            content = self._read_packed(checksum)
            if content is None:
                raise
            _check_copied(checksum, hashlib.sha256(content).hexdigest())
            _write_new(part, content, 0o644, sync=True)
        else:
            try:
                dst = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    if self._reflink and self._try_clone(source, dst):
                        copied = _hash_fd(dst, check_cancelled)[0]  # (the clone's blocks are the object's)
                    else:
                        copied = _copy_and_hash(source, dst, check_cancelled)[0]
                    _check_copied(checksum, copied)
                    os.fsync(dst)
                finally:
                    os.close(dst)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            finally:
                os.close(source)
        try:
            if mode is not None:
                os.chmod(part, mode & PERMISSION_BITS)
            if owner is not None:
                _give_owner(part, *owner)
            held = self._held_path(file_id)
            os.rename(part, held)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return held

    @_storage_full
    def create_working(
        self,
        rel: str,
        checksum: str,
        file_id: str,
        check_cancelled: CheckCancelled = _never_cancelled,
        mode: int | None = None,
    ) -> FileIdentity | None:
        """Write object *checksum* to *rel* only if nothing is there: the file written (as
        :meth:`replace_working` says it), or None (and nothing written) when a file
        appeared at *rel* meanwhile. Its permission bits: *mode*, or those of a new file."""
        held = self._prepare(checksum, file_id, check_cancelled, mode)
        tmp_fd = os.open(self.tmp, _DIR_FLAGS)
        try:
            with self._parent_fd(rel, create=True) as (dfd, name):
                folder = os.fstat(dfd)
                if folder.st_mode & stat.S_ISGID:  # its group, as a file made in it would have
                    _give_owner(held, -1, folder.st_gid)
                written = FileIdentity.of(os.stat(held, follow_symlinks=False))
                try:
                    _rename_noreplace(tmp_fd, held.name, dfd, name)
                except FileExistsError:
                    return None
                written = _as_landed(dfd, name, written)
                os.fsync(dfd)
                self._wrote(rel)
            return written
        finally:
            os.close(tmp_fd)
            held.unlink(missing_ok=True)

    @_storage_full
    def replace_working(
        self,
        rel: str,
        checksum: str,
        file_id: str,
        expected: FileIdentity | None,
        check_cancelled: CheckCancelled = _never_cancelled,
        mode_if_none: int | None = None,
    ) -> tuple[FileIdentity, Path | None]:
        """Atomically make the working file *rel* hold object *checksum*.

        The content is written and fsynced in ``.horace/tmp``, then swapped in with one
        ``renameat2`` (``RENAME_EXCHANGE``), so a reader sees the old content or the new,
        never a torn file. *expected* is the file the caller examined (and versioned), or
        None when there was none. Whatever the swap displaced is looked at afterwards: the
        examined file, unchanged, is removed; anything else (a writer renamed another file
        over it, or rewrote it, after the caller looked) is returned, held in
        ``.horace/tmp``, for the caller to version and then :meth:`release_held`. Also
        returned, first: the file written (to tell later whether it is still there as it was).
        """
        # Before the copy: nothing changes for a folder. The content that goes in keeps the
        # mode of the file it replaces (a script stays executable, a private file private),
        # and its owner and group as far as this process may give them; where none is, the
        # mode *mode_if_none* (the one the file was last seen with) and a setgid folder's group.
        replaced = self._regular_stat(rel)
        mode: int | None
        owner: tuple[int, int] | None
        if replaced is not None:
            mode, owner = stat.S_IMODE(replaced.st_mode), (replaced.st_uid, replaced.st_gid)
        else:
            group = self._setgid_group(rel)
            mode, owner = mode_if_none, (None if group is None else (-1, group))
        held = self._prepare(checksum, file_id, check_cancelled, mode, owner)
        written = FileIdentity.of(os.stat(held, follow_symlinks=False))
        tmp_fd = os.open(self.tmp, _DIR_FLAGS)
        try:
            with (
                self._parent_fd(rel, create=True) as (dfd, name),
                self._no_writer_comes(dfd, name, rel) as came,
            ):
                swapped = self._swap_in(tmp_fd, held.name, dfd, name, expected)
                if swapped and came():
                    # A writer opened the file being swapped out: it goes back, with the
                    # writer's write to come, and the restore is to be tried again.
                    _renameat2(tmp_fd, held.name, dfd, name, _RENAME_EXCHANGE)
                    raise HoraceError(
                        ErrorCode.FILE_LOCKED,
                        f"{quoted(rel)} was opened for writing by another process meanwhile: try again",
                    )
                written = _as_landed(dfd, name, written)
                os.fsync(dfd)
                self._wrote(rel)
            os.fsync(tmp_fd)
        except BaseException:
            if not held.exists() or self._same_content_as(held, checksum):
                held.unlink(missing_ok=True)
            raise
        finally:
            os.close(tmp_fd)
        if not swapped:
            return written, None  # nothing was there: the new content simply went in
        if expected is not None and _is_file(held, expected):
            held.unlink()
            return written, None
        return written, held

    @_storage_full
    def swap_back(self, held: Path, rel: str, ours: FileIdentity) -> Path | None:
        """Put *held* (a writer's file a :meth:`replace_working` displaced) back at *rel*
        in one exchange with what is there now: removed when that is *ours* (the file the
        swap wrote) unchanged, else returned, held in ``.horace/tmp``, for the caller to
        put back beside."""
        tmp_fd = os.open(self.tmp, _DIR_FLAGS)
        try:
            with self._parent_fd(rel) as (dfd, name):
                _renameat2(tmp_fd, held.name, dfd, name, _RENAME_EXCHANGE)
                os.fsync(dfd)
                self._wrote(rel)
        finally:
            os.close(tmp_fd)
        # (An exchange moves ctime: the file is told by the rest of its identity.)
        if _is_file(held, attrs.evolve(ours, ctime_ns=None)):
            held.unlink()
            return None
        return held

    def holds_file(self, rel: str, expected: FileIdentity) -> bool:
        """Whether *rel* is still the file *expected* names, unchanged (its ctime too,
        when *expected* has one)."""
        try:
            with self._parent_fd(rel) as (dfd, name):
                return _is_file(name, expected, dfd)
        except (FileNotFoundError, NotADirectoryError, HoraceError):
            return False

    def _swap_in(self, tmp_fd: int, held: str, dfd: int, name: str, expected: FileIdentity | None) -> bool:
        """Put ``tmp/held`` at *name*; True when something was displaced into ``held``."""
        try:
            _rename_noreplace(tmp_fd, held, dfd, name)
            return False
        except FileExistsError:
            pass
        if self._renameat2:
            try:
                _renameat2(tmp_fd, held, dfd, name, _RENAME_EXCHANGE)
            except FileNotFoundError:  # removed since the first try: try again
                return self._swap_in(tmp_fd, held, dfd, name, expected)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self._renameat2 = False  # e.g. NFS: fall back below
            else:
                displaced = os.stat(held, dir_fd=tmp_fd, follow_symlinks=False)
                if stat.S_ISREG(displaced.st_mode) and displaced.st_nlink == 1:
                    return True
                # A folder, symlink or FIFO took the path after the check, or a hard link of
                # a file elsewhere (whose content is not the store's to version): given back.
                _renameat2(tmp_fd, held, dfd, name, _RENAME_EXCHANGE)
                _check_catalogable(name, displaced)  # (raises: what it is, said)
        # Without an atomic exchange the check and the rename are two steps; the window
        # between them is a few microseconds instead of none.
        try:
            current: FileIdentity | None = FileIdentity.of(os.stat(name, dir_fd=dfd, follow_symlinks=False))
        except FileNotFoundError:
            current = None
        if current != expected:
            raise HoraceError(ErrorCode.FILE_LOCKED, f"{quoted(name)} changed while it was being replaced")
        os.rename(held, name, src_dir_fd=tmp_fd, dst_dir_fd=dfd)
        return False

    def _setgid_group(self, rel: str) -> int | None:
        """The group a file made at *rel* takes from its folder, when that is setgid."""
        try:
            with self._parent_fd(rel) as (dfd, _):
                folder = os.fstat(dfd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return folder.st_gid if folder.st_mode & stat.S_ISGID else None

    def _regular_stat(self, rel: str) -> os.stat_result | None:
        """The stat of the regular file at *rel*, None when nothing is there; INVALID_PATH
        when something other than a regular file is."""
        try:
            with self._parent_fd(rel) as (dfd, name):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            raise HoraceError(ErrorCode.INVALID_PATH, f"{quoted(rel)} is not a regular file")
        return st

    @_storage_full
    def take_working(self, rel: str, file_id: str, *, catalogable: bool = True) -> Path | None:
        """Move the working file out of ``files/`` into ``.horace/tmp`` (one rename), so
        that what is versioned next is exactly what was removed; None when it is gone.

        The caller versions the held file (:meth:`stage_held`) and then releases it;
        should the process die in between, fsck puts the content back.

        What holds the path now, when it is no regular file (a folder, a symlink, a FIFO
        put there since), or a path through a symlink where a folder was (a git checkout
        of a branch where the folder is a link), is not the catalogued file and is never
        moved or looked through: the file is gone from ``files/``.
        A file that may not be catalogued as it is (a second hard link) is refused, as
        every tool that versions a working copy refuses it, unless *catalogable* is False
        (a copy Horace wrote, taken back).
        """
        held = self._held_path(file_id)
        tmp_fd = os.open(self.tmp, _DIR_FLAGS)
        try:
            with self._parent_fd(rel) as (dfd, name):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    return None
                if catalogable:
                    _check_catalogable(rel, st)
                with self._no_writer_comes(dfd, name, rel) as came:
                    os.rename(name, held.name, src_dir_fd=dfd, dst_dir_fd=tmp_fd)
                    taken = os.stat(held.name, dir_fd=tmp_fd, follow_symlinks=False)
                    why = None
                    if (taken.st_dev, taken.st_ino) != (st.st_dev, st.st_ino):
                        # Something else took the path between the look and the rename (a
                        # symlink, a FIFO, a folder, a hard link of a file elsewhere).
                        why = "was replaced by another process meanwhile"
                    elif came():
                        why = "was opened for writing by another process meanwhile"
                    if why is not None:  # back it goes
                        try:
                            _rename_noreplace(tmp_fd, held.name, dfd, name)
                        except FileExistsError:  # (a file made there meanwhile: beside it)
                            self.put_back(held, rel)
                        raise HoraceError(ErrorCode.FILE_LOCKED, f"{quoted(rel)} {why}: try again")
                os.fsync(dfd)
            os.fsync(tmp_fd)
        except (FileNotFoundError, NotADirectoryError, SymlinkOnTheWay):
            return None
        finally:
            os.close(tmp_fd)
        return held

    def withdraw_working(self, rel: str, file_id: str, checksum: str) -> bool:
        """Take back a working copy written from the object *checksum*: removed when it
        still holds that content (kept in the object store), else left where it is (a
        writer's since; put back beside it should its place be taken meanwhile). Whether
        it was removed."""
        held = self.take_working(rel, file_id, catalogable=False)
        if held is None:
            return False
        fd = os.open(held, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            found = _hash_fd(fd, _never_cancelled)[0]
        finally:
            os.close(fd)
        if found == checksum:
            self.release_held(held)
            return True
        self.put_back(held, rel)
        return False

    @staticmethod
    def release_held(held: Path) -> None:
        held.unlink(missing_ok=True)

    @staticmethod
    def held_mode(held: Path) -> int:
        """The permission bits of a working file held in ``.horace/tmp``."""
        return stat.S_IMODE(os.stat(held, follow_symlinks=False).st_mode)

    @_storage_full
    def put_back(self, held: Path, rel: str, *, beside: bool = True) -> str | None:
        """Return a held working file to ``files/``: at *rel* when that is free, else
        (*beside*) beside it under a name that says what it is. The path used, or None
        when the file's folder can no longer be reached (or *rel* is taken, not *beside*).
        A rename: it needs no room on a full disk."""
        tmp_fd = os.open(self.tmp, _DIR_FLAGS)
        try:
            with self._parent_fd(rel, create=True) as (dfd, name):
                candidates = [name, *(_recovered_name(name, n) for n in range(1, 1000))] if beside else [name]
                for candidate in candidates:
                    try:
                        _rename_noreplace(tmp_fd, held.name, dfd, candidate)
                    except FileExistsError:
                        continue
                    placed = rel.rsplit("/", 1)[0] + "/" + candidate if "/" in rel else candidate
                    os.fsync(dfd)
                    self._wrote(placed)
                    return placed
        except HoraceError:
            return None
        finally:
            os.close(tmp_fd)
        return None

    # -- walking ------------------------------------------------------------------------

    def walk_working(self, under: str | None = None, skipped: list[str] | None = None) -> Iterator[str]:
        """Relative paths of the files under files/ that may be catalogued.

        Folders are opened like working files, one component at a time with O_NOFOLLOW,
        so a folder swapped for a symlink (*under* itself included) is never entered.
        Symlinks and special files are passed over; names that can never be catalogued
        (not UTF-8, Horace's reserved temp form) are added to *skipped*, with why.
        """
        for rel, _ in self._walk(under, skipped, with_stat=False, check_cancelled=_never_cancelled):
            yield rel

    def walk_stats(
        self,
        under: str | None = None,
        skipped: list[str] | None = None,
        check_cancelled: CheckCancelled = _never_cancelled,
    ) -> list[tuple[str, os.stat_result]]:
        """:meth:`walk_working` with each file's ``lstat`` (one call a file, relative to its
        folder's descriptor); cancellation is noticed between folders."""
        found = []
        for rel, st in self._walk(under, skipped, with_stat=True, check_cancelled=check_cancelled):
            assert st is not None
            found.append((rel, st))
        return found

    def _walk(
        self, under: str | None, skipped: list[str] | None, with_stat: bool, check_cancelled: CheckCancelled
    ) -> Iterator[tuple[str, os.stat_result | None]]:
        try:
            with self._parent_fd(f"{under}/." if under else ".") as (fd, _):
                yield from self._walk_fd(
                    fd, f"{under}/" if under else "", skipped, with_stat, check_cancelled
                )
        except (FileNotFoundError, NotADirectoryError):
            return

    def _walk_fd(
        self,
        fd: int,
        prefix: str,
        skipped: list[str] | None,
        with_stat: bool,
        check_cancelled: CheckCancelled,
    ) -> Iterator[tuple[str, os.stat_result | None]]:
        """The files under the folder *fd* (whose path under files/ is *prefix*), depth
        first, in a loop, not by recursion: a tree as deep as the catalog's paths allow
        (a thousand folders of one letter) is walked like any other. At most
        HELD_FOLDERS folders on the way down are held open; those above are closed, and
        opened again by their path when the walk comes back up to them."""
        stack: list[_Folder] = []
        try:
            stack.append(_Folder(prefix, _listing(fd, check_cancelled), os.dup(fd)))  # (the caller's stays)
            while stack:
                top = stack[-1]
                entry = next(top.entries, None)
                if entry is None:
                    stack.pop()
                    top.close()
                    continue
                name, is_dir, is_file = entry
                if not (is_dir or is_file):
                    continue
                if is_file and editor_temp(name):
                    continue  # swap files, backups, lock files: never catalogued, nothing to report
                rel = top.prefix + name
                why = unusable_name(name) or self.too_long(rel)
                if why is not None:
                    if skipped is not None:
                        skipped.append(f"{quoted(rel)}: {why}")
                    continue
                if top.fd is None:
                    top.fd = self._reopen_folder(top.prefix)
                    if top.fd is None:  # gone, or swapped for a symlink, since: the rest with it
                        top.entries = iter(())
                        continue
                if not is_dir:
                    if not with_stat:
                        yield rel, None
                        continue
                    try:
                        st = os.stat(name, dir_fd=top.fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone since the listing
                    except PermissionError as exc:  # the folder may no longer be entered
                        if skipped is not None:
                            where = quoted(top.prefix[:-1] or ".")
                            skipped.append(f"{where}: the folder cannot be read ({exc.strerror})")
                        top.entries = iter(())
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield rel, st
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=top.fd)
                except OSError as exc:
                    # Gone, or swapped for a symlink, since the listing; else unreadable.
                    if skipped is not None and exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        skipped.append(f"{quoted(rel)}: the folder cannot be read ({exc.strerror})")
                    continue
                try:
                    # A folder that may be listed but not entered (mode 0600, say): nothing in
                    # it can be opened or looked at, so it is passed over as a whole.
                    os.stat(".", dir_fd=sub)
                except PermissionError as exc:
                    os.close(sub)
                    if skipped is not None:
                        skipped.append(f"{quoted(rel)}: the folder cannot be read ({exc.strerror})")
                    continue
                try:
                    stack.append(_Folder(rel + "/", _listing(sub, check_cancelled), sub))
                except BaseException:
                    os.close(sub)
                    raise
                if len(stack) > HELD_FOLDERS:
                    stack[-HELD_FOLDERS - 1].close()  # (opened again on the way back up)
        finally:
            for folder in stack:
                folder.close()

    def _reopen_folder(self, prefix: str) -> int | None:
        """The folder *prefix* (under files/, ending in "/") opened again, no symlink
        followed on the way; None when it is gone or not a folder any more."""
        try:
            with self._parent_fd(prefix + ".") as (fd, _):
                return os.dup(fd)
        except (OSError, HoraceError):
            return None

    @functools.cached_property
    def _resolved_files(self) -> Path:
        """files/ as the paths of tools are resolved against (``paths.to_relative``)."""
        return self.files.resolve()

    def walk_objects(self) -> Iterator[tuple[str, os.stat_result]]:
        """The objects of their own (not those in packs: see :meth:`walk_packs`); one
        another process's collector removes as they are walked is simply not there."""
        for sub in sorted(os.listdir(self.objects)):
            if sub == self.packs.name:
                continue
            try:
                with os.scandir(self.objects / sub) as entries:
                    for entry in entries:
                        try:
                            yield entry.name, entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # collected meanwhile
            except FileNotFoundError:
                continue

    def walk_temps(self) -> Iterator[tuple[Path, TempName | None]]:
        """Every file in ``.horace/tmp``, with what its name says of it."""
        for path in self.tmp.iterdir():
            yield path, TempName.parse(path.name)

    # -- object collection --------------------------------------------------------------

    def mark_released(self, checksums: Iterable[str]) -> None:
        make_private_folder(self.released)
        for checksum in checksums:
            (self.released / checksum).touch()

    def released_marks(self) -> dict[str, float]:
        """The objects the catalog let go of, each with when it did (its mark's mtime):
        see :func:`released_since`."""
        marks = {}
        try:
            with os.scandir(self.released) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):  # (unmarked meanwhile)
                        marks[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            pass
        return marks

    def unmark_released(self, checksums: Iterable[str]) -> None:
        for checksum in checksums:
            (self.released / checksum).unlink(missing_ok=True)

    def keep_as_stray(self, checksums: Iterable[str]) -> None:
        """Keep these objects a retention long from now: dated now, their released marks
        dropped (the collector keeps an object without a row that long since it was
        written, and a released one only a grace period)."""
        for checksum in checksums:
            try:
                os.utime(self.object_path(checksum), follow_symlinks=False)
            except FileNotFoundError:
                found = self._packed(checksum)  # (its whole pack, then)
                with contextlib.suppress(FileNotFoundError):
                    if found is not None:
                        os.utime(self.packs / found[0])
            (self.released / checksum).unlink(missing_ok=True)

    def discard_aside(self, aside: Path, checksum: str) -> None:
        """Delete for good an object :meth:`quarantine` moved aside, and its released mark."""
        aside.unlink(missing_ok=True)
        self.unmark_released([checksum])

    def quarantine(self, checksum: str, grace_seconds: float) -> Path | None:
        """Move an object aside before deleting it; None when it is missing or fresh.

        Every writer renames a freshly written object into place, so an object whose
        mtime is within the grace period may be about to get a row: it is put back.
        Checked after the move, so a writer racing with us either lands after the
        move (its object stays in place) or before it (fresh mtime, put back).
        """
        return _move_aside(
            self.object_path(checksum), self.tmp / temp_name(TempKind.ASIDE, checksum), grace_seconds
        )

    def unquarantine(self, aside: Path, checksum: str) -> None:
        _put_back(aside, self.object_path(checksum))

    # -- packs ---------------------------------------------------------------------------

    def _packed(self, checksum: str) -> tuple[str, int, int] | None:
        """Where a pack holds *checksum* (pack, offset, length), if one does; the packs
        are looked at again when none is known to (another process may have made one)."""
        with self._packs_lock:
            found = self._packed_at.get(checksum)
            if found is None or not (self.packs / found[0]).exists():  # (collected meanwhile)
                self._read_packs()
                found = self._packed_at.get(checksum)
            return found

    def only_in_a_pack(self, checksum: str) -> bool:
        return not os.path.lexists(self.object_path(checksum)) and self._packed(checksum) is not None

    def _read_packs(self) -> None:
        """Bring the index of every pack up to date (under ``_packs_lock``)."""
        try:
            names = {name for name in os.listdir(self.packs) if packs.is_pack_name(name)}
        except FileNotFoundError:
            names = set()
        if not names.issuperset(self._packed_at.packs):  # some are gone: start again
            self._packed_at = packs.Locations()
        for name in sorted(names.difference(self._packed_at.packs)):
            try:
                entries = self._pack_index(name)
            except FileNotFoundError:
                continue
            except packs.PackDamaged:
                entries = {}  # (fsck says so; nothing is read from it)
            self._packed_at.add(name, entries)

    def _pack_index(self, name: str) -> dict[str, tuple[int, int]]:
        """The index of the pack *name*; :class:`packs.PackDamaged` for anything there that
        is not a pack that reads back (a folder or a symlink by that name, say)."""
        fd = self._open_pack(name)
        try:
            return packs.read_index(fd)
        except OSError as exc:
            raise packs.PackDamaged(f"cannot be read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def _open_pack(self, name: str) -> int:
        """The pack *name* opened for reading; :class:`packs.PackDamaged` for anything by
        that name that is no regular file (FileNotFoundError: none)."""
        try:
            fd = os.open(self.packs / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise packs.PackDamaged(f"cannot be opened: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise packs.PackDamaged("not a regular file")
        return fd

    def _read_packed(self, checksum: str) -> bytes | None:
        """The bytes a pack holds for *checksum* as stored; None when no pack does."""
        for _ in range(2):  # (once more should the collector take the pack meanwhile)
            found = self._packed(checksum)
            if found is None:
                return None
            name, offset, length = found
            try:
                fd = self._open_pack(name)
            except FileNotFoundError:
                continue
            except packs.PackDamaged:  # (swapped for a FIFO, say, since its index was read)
                return b""
            try:
                return packs.read_entry(fd, offset, length)
            except (packs.PackDamaged, OSError):
                return b""  # cut short, unreadable: as damaged as an object of the wrong size
            finally:
                os.close(fd)
        return None

    def _same_content_as(self, path: Path, checksum: str) -> bool:
        """Does the file at *path* hold what the object *checksum* holds as stored?"""
        stored = self.hash_object(checksum)
        try:
            with open(path, "rb") as f:
                return stored is not None and _hash_fd(f.fileno(), _never_cancelled)[0] == stored[0]
        except OSError:
            return False

    def walk_packs(self) -> Iterator[tuple[str, os.stat_result, dict[str, int] | None]]:
        """Every pack, its stat, and its entries (checksum -> length; None: damaged)."""
        try:
            names = sorted(name for name in os.listdir(self.packs) if packs.is_pack_name(name))
        except FileNotFoundError:
            return
        for name in names:
            try:
                st = os.lstat(self.packs / name)  # (a symlink is no pack: damaged below)
                entries: dict[str, int] | None
                try:
                    entries = {c: length for c, (_, length) in self._pack_index(name).items()}
                except packs.PackDamaged:
                    entries = None
            except FileNotFoundError:
                continue  # collected meanwhile
            yield name, st, entries

    def salvage_pack(self, name: str, wanted: set[str]) -> tuple[int, str | None]:
        """Keep as objects of their own the entries of the damaged pack *name* that read
        back (their sha256 checked: :func:`packs.salvage`) whose content is *wanted* and
        not an intact object already: how many were kept, and why the pack could not be
        read to its end, if it could not."""
        try:
            fd = self._open_pack(name)
        except (OSError, packs.PackDamaged) as exc:  # a symlink, a folder, gone: nothing to read
            return 0, _why(exc)
        kept = 0
        try:
            for checksum, content in packs.salvage(fd):
                if checksum in wanted and not self.object_intact(checksum, len(content)):
                    staged = self._stage_content(checksum, content)
                    try:
                        self.keep(staged)
                        self.release(staged)
                    finally:
                        self.discard(staged)
                    kept += 1
        except (OSError, packs.PackDamaged) as exc:  # unreadable from here on: what was kept stays
            return kept, _why(exc)
        finally:
            os.close(fd)
        return kept, None

    @_storage_full
    def _stage_content(self, checksum: str, content: bytes) -> Staged:
        return Staged(self._staged_copy(content), checksum, len(content), content[:HEAD_BYTES])

    def _staged_copy(self, content: bytes) -> Path:
        """*content* (read into memory) as a staged copy in ``.horace/tmp``."""
        tmp_path = self.tmp / temp_name(TempKind.STAGE)
        _write_new(tmp_path, content, 0o444, sync=False)
        return tmp_path

    def set_aside_damaged_pack(self, name: str) -> Path:
        """Move the damaged pack *name* (nothing needs it any more) out of objects/, into
        ``.horace/damaged/``, where nothing reads it and nothing removes it."""
        make_private_folder(self.damaged)
        aside = self.damaged / name
        os.rename(self.packs / name, aside)
        return aside

    def quarantine_pack(self, name: str, grace_seconds: float) -> Path | None:
        """:meth:`quarantine` for a whole pack (named *name*)."""
        aside = self.tmp / temp_name(TempKind.PACK_ASIDE, name.removesuffix(packs.SUFFIX))
        return _move_aside(self.packs / name, aside, grace_seconds)

    def unquarantine_pack(self, aside: Path, name: str) -> None:
        _put_back(aside, self.packs / name)

    def discard_pack_aside(self, aside: Path, checksums: Iterable[str]) -> None:
        """Delete for good a pack :meth:`quarantine_pack` moved aside, and the released
        marks of its entries."""
        aside.unlink(missing_ok=True)
        self.unmark_released(checksums)


def _move_aside(target: Path, aside: Path, grace_seconds: float) -> Path | None:
    """Move *target* (an object, a pack) aside before deleting it: where it went, or None
    when it is missing, or fresh (then it is put back)."""
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return None
    if time.time() - aside.stat().st_mtime < grace_seconds:
        _put_back(aside, target)
        return None
    return aside


def _put_back(aside: Path, target: Path) -> None:
    """Return what :func:`_move_aside` moved, unless a writer put it back meanwhile. A
    link, not a rename: what was put back may be the very same file (a staged link's),
    and a rename onto it would do nothing and leave the aside name behind."""
    if not target.exists():
        with contextlib.suppress(FileExistsError):
            os.link(aside, target)
    aside.unlink(missing_ok=True)


def _check_copied(checksum: str, copied: str) -> None:
    """``CHECKSUM_MISMATCH`` unless what was read of object *checksum* (to be written into
    files/) hashed as it: damaged bytes never become a user's file, whoever asked (a
    restore checks first; a repair of a missing working copy looks at sizes only)."""
    if copied != checksum:
        raise HoraceError(
            ErrorCode.CHECKSUM_MISMATCH, f"the stored content {checksum} is damaged: nothing written from it"
        )


def _as_landed(dfd: int, name: str, written: FileIdentity) -> FileIdentity:
    """The file Horace wrote (*written*, as made in ``.horace/tmp``), now at *name* in
    *dfd*: its identity with its ctime as it landed; a file already written to is no
    longer ours (its ctime -1). One renamed away at once by another process is still
    ours: its inode and mtime tell where it went, and a ctime no file has (0) has it
    read again there."""
    try:
        in_place = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return attrs.evolve(written, ctime_ns=0)
    exact = FileIdentity.exact(in_place)
    return exact if FileIdentity.of(in_place) == written else attrs.evolve(exact, ctime_ns=-1)


def _read_lease(fd: int) -> bool:
    """Take a read lease on *fd*: True when taken, False where leases are not supported
    (NFS, a file of another owner without CAP_LEASE). ``BlockingIOError``: a process has
    the file open for writing."""
    # Should a writer open the file while the lease is held, the kernel signals the
    # holder: SIGURG (ignored by default) instead of SIGIO (whose default ends the process).
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except BlockingIOError:
        raise
    except OSError:
        return False
    return True


def _check_catalogable(rel: str, st: os.stat_result) -> None:
    """Refuse what no scan, watch or register may catalog, whichever found it."""
    if stat.S_ISDIR(st.st_mode):
        raise a_folder_at(rel)
    if not stat.S_ISREG(st.st_mode):
        raise HoraceError(ErrorCode.INVALID_PATH, f"{quoted(rel)} is not a regular file")
    if st.st_nlink > 1:
        raise HoraceError(
            ErrorCode.INVALID_PATH,
            f"{quoted(rel)} has {st.st_nlink} hard links: Horace catalogs only files with one link "
            "(another link could change it from outside files/)",
        )


def _stat_moved(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file may have been written between two looks at it (ctime moves with
    every write, and cannot be set back the way mtime can; it also moves with a rename)."""
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def _unreadable(rel: str, exc: OSError) -> HoraceError:
    full = storage_full(exc)
    if full is not None:
        return full
    if isinstance(exc, FileNotFoundError):
        return HoraceError(ErrorCode.FILE_NOT_FOUND, f"{quoted(rel)} vanished")
    return HoraceError(ErrorCode.INVALID_PATH, f"{quoted(rel)}: {exc.strerror or exc}")


def _is_file(path: Path | str, expected: FileIdentity, dir_fd: int | None = None) -> bool:
    """Whether *path* (in *dir_fd*) is the file *expected* names, unchanged (its ctime
    too, when *expected* has one)."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    found = FileIdentity.of(st) if expected.ctime_ns is None else FileIdentity.exact(st)
    return found == expected


def _pack_linked(link: Path) -> str:
    """The name of the pack whose staged link is *link* (see :meth:`Storage._write_pack`)."""
    found = TempName.parse(link.name)
    if found is None or found.kind is not TempKind.PACK or not found.extra:
        raise ValueError(f"not a pack's staged link: {link.name}")
    return found.extra + packs.SUFFIX


def coarse_stamps(st: os.stat_result) -> bool:
    """Whether the file's times are whole seconds (ext2 and ext3, ext4 with 128-byte inodes:
    1 s; FAT's mtime: 2 s), taken for the coarsest: a write within COARSE_TICK_NS of the
    last may leave them as they were."""
    return st.st_mtime_ns % 10**9 == 0 and st.st_ctime_ns % 10**9 == 0


def stamp_tick_ns(st: os.stat_result) -> int:
    """How long after a file's last change a write may leave its times as they were: a
    tick of their clock (finer ones move with the kernel's clock tick, a few ms)."""
    return COARSE_TICK_NS if coarse_stamps(st) else FINE_TICK_NS


def _whole_as_read(
    fd: int,
    before: os.stat_result,
    after: os.stat_result,
    checksum: str,
    check_cancelled: CheckCancelled,
    read_from_ns: int,
) -> bool:
    """Whether the bytes read from *fd* (hashed to *checksum*) between its stats *before*
    and *after*, after *read_from_ns* on the filesystem's clock, are one content it held,
    not the torn mix of two. A write moves mtime, unless the writer sets it back (``touch
    -r``, ``rsync --inplace -t``); ctime moves with any write, but also when the file is
    only renamed, unlinked or chmodded, leaving the bytes whole. Neither moves for a write
    in the tick of the file's last change (:func:`stamp_tick_ns`), which may be a second.
    So when ctime moved, or the last change was within a tick of the read, the file is
    read again: two reads one after the other that agree are what it held between them,
    whole, whatever a writer did before and after."""
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return False
    changed = (
        before.st_ctime_ns
        if before.st_mtime_ns > read_from_ns
        else max(before.st_mtime_ns, before.st_ctime_ns)
    )  # (an mtime ahead of the clock is no time of a change: ``touch -d``)
    if before.st_ctime_ns == after.st_ctime_ns and changed + stamp_tick_ns(before) <= read_from_ns:
        return True
    os.lseek(fd, 0, os.SEEK_SET)
    again, size, _ = _hash_fd(fd, check_cancelled, after.st_size)
    return (again, size) == (checksum, after.st_size)


def _size(count: int) -> str:
    """*count* bytes, as a person reads them (1.0 GiB)."""
    if count < 1024:
        return f"{count} bytes"
    amount = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def _read_small(fd: int, size: int) -> bytes:
    """A small file's bytes, in one read: one byte more than *size* asked for, so that a
    file that grew reads longer than its stat, and one that reads shorter (it shrank, or
    a filesystem gave a short read) is told by its length too (see _stage_small)."""
    return os.read(fd, size + 1)


def _why(exc: Exception) -> str:
    """What went wrong, in a few words: an OSError's strerror when it has one."""
    return str(exc.strerror) if isinstance(exc, OSError) and exc.strerror else str(exc)


def _give_owner(path: Path, uid: int, gid: int) -> None:
    """*path* (a file Horace is about to put in place) given the owner *uid* (-1: left as
    it is) and group *gid*, as far as this process may: root gives both, another user a
    group of its own. What it may not give is said in the log, and the file stays its."""
    st = os.stat(path, follow_symlinks=False)
    uid = uid if os.geteuid() == 0 and uid != st.st_uid else -1
    if uid == -1 and gid == st.st_gid:
        return
    try:
        os.chown(path, uid, gid, follow_symlinks=False)
    except PermissionError:
        log.warning(
            "the file written back cannot be given group %d (not one of this user's): it has %d",
            gid,
            st.st_gid,
        )


def _write_new(path: Path, content: bytes, mode: int, *, sync: bool) -> None:
    """A new file at *path* holding *content* (removed again should that fail)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _copy_and_hash(
    src: int, dst: int | None, check_cancelled: CheckCancelled, size_hint: int | None = None
) -> tuple[str, int, bytes]:
    """One pass over *src*: hash it, keep its first bytes, and copy it to *dst* if given.
    *size_hint*: the size the caller's own stat of *src* gave, if it has one."""
    digest = hashlib.sha256()
    # A buffer the file's size (one read and the end), CHUNK at most: zeroing 1 MiB for
    # each small file of a scan cost more than reading it.
    if size_hint is None:
        size_hint = os.fstat(src).st_size
    buf = bytearray(min(CHUNK, size_hint + 1))
    view = memoryview(buf)
    size = 0
    head = b""
    while n := os.readv(src, [buf]):
        chunk = view[:n]
        digest.update(chunk)
        written = 0
        while dst is not None and written < n:
            written += os.write(dst, chunk[written:])
        if size < HEAD_BYTES:
            head += bytes(chunk[: HEAD_BYTES - size])
        size += n
        if n == CHUNK:
            check_cancelled()
        elif n == len(buf) and len(buf) < CHUNK:  # it grew since: read on in chunks
            buf = bytearray(CHUNK)
            view = memoryview(buf)
    return digest.hexdigest(), size, head


def _hash_fd(
    fd: int, check_cancelled: CheckCancelled, size_hint: int | None = None
) -> tuple[str, int, bytes]:
    return _copy_and_hash(fd, None, check_cancelled, size_hint)


_libc: Any = ctypes.CDLL(None, use_errno=True)


_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


NAME_MAX = 255  # bytes of a name in a folder (Linux's filesystems)


def _recovered_name(name: str, n: int) -> str:
    """*name*, taken, with ``.recovered-N`` after it: its end cut (at a character) for the
    whole to fit in NAME_MAX bytes."""
    suffix = f".recovered-{n}"
    room = NAME_MAX - len(suffix)
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > room:
        name = encoded[:room].decode("utf-8", "ignore")
    return name + suffix


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename unless *dst* exists (FileExistsError); a hard link and an unlink where the
    filesystem has no RENAME_NOREPLACE."""
    try:
        _renameat2(src_dir, src, dst_dir, dst, _RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    os.unlink(src, dir_fd=src_dir)


def _renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    call = getattr(_libc, "renameat2", None)
    if call is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if call(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), dst)


def _syncfs(fd: int) -> None:
    if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
        os.sync()
