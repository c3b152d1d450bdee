"""The object store and the working files: bytes on disk, nothing of SQL or JSON-RPC.

Every function here is synchronous and blocking; the catalog runs them in worker
threads. Long copies call ``check_cancelled`` between chunks so a cancelled tool call
stops promptly, and every function removes its own temp file on the way out.

Paths given here are already validated (``horace.paths``); each is still opened one
component at a time with ``O_NOFOLLOW`` relative to a directory descriptor, so a
symlink swapped in after validation is refused rather than followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import signal
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from attrs import frozen

from horace.model import ErrorCode, HoraceError
from horace.paths import HORACE_DIR

COMPONENT_FOLDERS = ("gates", "playfair", "fiedler", "user", "shared")
TMP_PREFIX = ".horace-tmp-"
CHUNK = 1 << 20
HEAD_BYTES = 4096  # kept from each ingest for MIME sniffing
_FICLONE = 0x40049409  # linux/fs.h: clone a whole file (btrfs, XFS, ZFS 2.2+)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HOST = socket.gethostname().replace("-", "_")

CheckCancelled = Callable[[], None]


def _never_cancelled() -> None:
    return None


@frozen
class Staged:
    """Content copied into ``.horace/tmp`` and hashed, not yet an object."""

    tmp_path: Path
    checksum: str
    size: int
    head: bytes


# Editor and writer temp files (swap files, backups, lock files) and our own temps:
# never catalogued by a scan, a reconcile or the watcher.
IGNORED_NAME = re.compile(
    r"(\.tmp$|~$|^\.#|\.sw[a-p]$|\.swx$|^4913$|^\.~lock\.|^" + re.escape(TMP_PREFIX) + ")"
)


def ignored_name(name: str) -> bool:
    return bool(IGNORED_NAME.search(name))


def temp_name() -> str:
    """A temp file name that says which host and process made it (for ``fsck``)."""
    return f"{TMP_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def temp_owner_alive(name: str) -> bool | None:
    """Whether the process that made temp file *name* still runs (None: unknown)."""
    try:
        host, pid, _ = name[len(TMP_PREFIX) :].rsplit("-", 2)
    except ValueError:
        return None
    if host != _HOST:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return int(pid) != os.getpid() or None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.files = self.root / "files"
        self.private = self.root / HORACE_DIR
        self.objects = self.private / "objects"
        self.tmp = self.private / "tmp"
        self.lock_file = self.private / "locks"
        self._reflink = True  # until the filesystem says otherwise

    # -- layout -------------------------------------------------------------------------

    def ensure_layout(self) -> None:
        for folder in COMPONENT_FOLDERS:
            (self.files / folder).mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.objects / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        self.lock_file.touch(exist_ok=True)

    def object_path(self, checksum: str) -> Path:
        return self.objects / checksum[:2] / checksum

    def working_path(self, rel: str) -> Path:
        return self.files / rel

    # -- safe access to working files ---------------------------------------------------

    @contextlib.contextmanager
    def _parent_fd(self, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """Open the folder holding *rel* without following any symlink on the way."""
        *dirs, name = rel.split("/")
        fd = os.open(self.files, _DIR_FLAGS)
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
                os.close(fd)
                fd = nxt
            yield fd, name
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise HoraceError(
                    ErrorCode.INVALID_PATH, f"invalid path {rel!r}: symlink or non-folder on the way"
                ) from None
            raise
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_working(self, rel: str) -> Iterator[int]:
        """A read-only descriptor of the regular file *rel* (never a symlink)."""
        # O_NONBLOCK: opening a FIFO for reading would otherwise block (uncancellably, in a
        # worker thread) until some writer opens it; it has no effect on regular files.
        try:
            with self._parent_fd(rel) as (dfd, name):
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            raise HoraceError(ErrorCode.FILE_NOT_FOUND, f"no file at {rel!r}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HoraceError(
                    ErrorCode.INVALID_PATH, f"invalid path {rel!r}: symlinks are not catalogued"
                ) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HoraceError(ErrorCode.INVALID_PATH, f"{rel!r} is not a regular file")
            yield fd
        finally:
            os.close(fd)

    def working_exists(self, rel: str) -> bool:
        try:
            with self._parent_fd(rel) as (dfd, name):
                return stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
        except (FileNotFoundError, NotADirectoryError, HoraceError):
            return False

    def hash_working(self, rel: str, check_cancelled: CheckCancelled = _never_cancelled) -> str:
        with self.open_working(rel) as fd:
            return _hash_fd(fd, check_cancelled)[0]

    # -- ingest: working file -> staged temp -> object ----------------------------------

    def stage(self, rel: str, check_cancelled: CheckCancelled = _never_cancelled) -> Staged:
        """Copy the working file into ``.horace/tmp`` and hash it, in one pass.

        With a reflink-capable filesystem the copy is a clone and the clone is hashed,
        so the checksum always describes exactly the bytes that were kept.
        """
        with self.open_working(rel) as src:
            before = os.fstat(src)
            staged = self._stage_fd(src, check_cancelled)
            after = os.fstat(src)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            # A writer was at work while we copied: what we have may be torn.
            self.discard(staged)
            raise HoraceError(ErrorCode.FILE_LOCKED, f"{rel!r} changed while it was being read; try again")
        return staged

    def is_being_written(self, rel: str) -> bool:
        """Whether some process has *rel* open for writing (local filesystems).

        A read lease is refused while any writer has the file open; where leases are not
        supported (NFS, another owner without CAP_LEASE) this answers False and callers
        rely on the file settling instead.
        """
        try:
            with self.open_working(rel) as fd:
                # Should a writer open the file while we hold the lease for this instant,
                # the kernel signals the holder: SIGURG (ignored by default) instead of
                # SIGIO (whose default ends the process).
                fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
                try:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                return False
        except HoraceError:
            return False

    def _stage_fd(self, src: int, check_cancelled: CheckCancelled) -> Staged:
        tmp_path = self.tmp / temp_name()
        dst = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            if self._reflink and self._try_clone(src, dst):
                clone = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    checksum, size, head = _hash_fd(clone, check_cancelled)
                finally:
                    os.close(clone)
            else:
                checksum, size, head = _copy_and_hash(src, dst, check_cancelled)
        except BaseException:
            os.close(dst)
            tmp_path.unlink(missing_ok=True)
            raise
        os.close(dst)
        return Staged(tmp_path=tmp_path, checksum=checksum, size=size, head=head)

    def _try_clone(self, src: int, dst: int) -> bool:
        try:
            fcntl.ioctl(dst, _FICLONE, src)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                self._reflink = False
                return False
            raise
        return True

    def keep(self, staged: Staged, *, durable: bool = True) -> None:
        """Make *staged* the object named by its checksum.

        The rename always happens, also over an identical existing object: it refreshes
        the object's mtime, which is what the collector's grace period looks at.
        ``durable=False`` leaves the fsync to a later :meth:`sync` of a whole batch.
        """
        target = self.object_path(staged.checksum)
        os.utime(staged.tmp_path)
        if durable:
            fd = os.open(staged.tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(staged.tmp_path, target)
        if durable:
            _fsync_dir(target.parent)

    def sync(self) -> None:
        """Flush everything written to the storage's filesystem (batch durability)."""
        fd = os.open(self.private, _DIR_FLAGS)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    @staticmethod
    def discard(staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    def has_object(self, checksum: str) -> bool:
        return self.object_path(checksum).is_file()

    def hash_object(
        self, checksum: str, check_cancelled: CheckCancelled = _never_cancelled
    ) -> tuple[str, int] | None:
        """(sha256, size) of the object's bytes as stored, or None when it is missing."""
        try:
            fd = os.open(self.object_path(checksum), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            sha, size, _ = _hash_fd(fd, check_cancelled)
        finally:
            os.close(fd)
        return sha, size

    # -- writing working files back -----------------------------------------------------

    def write_working(
        self, rel: str, checksum: str, check_cancelled: CheckCancelled = _never_cancelled
    ) -> None:
        """Atomically make the working file *rel* hold object *checksum*.

        Writes a temp file beside the target, fsyncs it and renames it over the target,
        so a reader sees the old content or the new one, never a torn file.
        """
        source = os.open(self.object_path(checksum), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._parent_fd(rel, create=True) as (dfd, name):
                tmp = temp_name()
                dst = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dfd,
                )
                try:
                    if not (self._reflink and self._try_clone(source, dst)):
                        _copy_and_hash(source, dst, check_cancelled)
                    os.fsync(dst)
                    os.close(dst)
                    dst = -1
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                    os.fsync(dfd)
                except BaseException:
                    if dst >= 0:
                        os.close(dst)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dfd)
                    raise
        finally:
            os.close(source)

    def remove_working(self, rel: str) -> bool:
        """Unlink the working file; False when it was already gone."""
        try:
            with self._parent_fd(rel) as (dfd, name):
                os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        return True

    # -- walking ------------------------------------------------------------------------

    def walk_working(self, under: str | None = None) -> Iterator[str]:
        """Relative paths of regular files under files/ (symlinks and temps skipped).

        Folders are opened like working files, one component at a time with O_NOFOLLOW,
        so a folder swapped for a symlink (*under* itself included) is never entered.
        """
        try:
            with self._parent_fd(f"{under}/." if under else ".") as (fd, _):
                yield from self._walk_fd(fd, f"{under}/" if under else "")
        except (FileNotFoundError, NotADirectoryError):
            return

    def _walk_fd(self, fd: int, prefix: str) -> Iterator[str]:
        with os.scandir(fd) as listing:
            entries = [
                (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in listing
            ]
        for name, is_dir, is_file in entries:
            if is_file and ignored_name(name):
                continue
            if is_dir:
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # gone, or swapped for a symlink since the listing
                try:
                    yield from self._walk_fd(sub, f"{prefix}{name}/")
                finally:
                    os.close(sub)
            elif is_file:
                yield f"{prefix}{name}"

    def walk_objects(self) -> Iterator[tuple[str, os.stat_result]]:
        for sub in sorted(self.objects.iterdir()):
            with os.scandir(sub) as entries:
                for entry in entries:
                    yield entry.name, entry.stat(follow_symlinks=False)

    def walk_temps(self) -> Iterator[Path]:
        """Temp files in ``.horace/tmp`` and beside working files."""
        yield from self.tmp.iterdir()
        for folder, dirs, names in os.walk(self.files):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
            for name in names:
                if name.startswith(TMP_PREFIX):
                    yield Path(folder) / name

    # -- object collection --------------------------------------------------------------

    def quarantine(self, checksum: str, grace_seconds: float) -> Path | None:
        """Move an object aside before deleting it; None when it is missing or fresh.

        Every writer renames a freshly written object into place, so an object whose
        mtime is within the grace period may be about to get a row: it is put back.
        Checked after the move, so a writer racing with us either lands after the
        move (its object stays in place) or before it (fresh mtime, put back).
        """
        target = self.object_path(checksum)
        aside = self.tmp / temp_name()
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return None
        if time.time() - aside.stat().st_mtime < grace_seconds:
            self.unquarantine(aside, checksum)
            return None
        return aside

    def unquarantine(self, aside: Path, checksum: str) -> None:
        target = self.object_path(checksum)
        if target.exists():  # a writer put an identical object back meanwhile
            aside.unlink(missing_ok=True)
        else:
            os.rename(aside, target)


def _copy_and_hash(src: int, dst: int | None, check_cancelled: CheckCancelled) -> tuple[str, int, bytes]:
    """One pass over *src*: hash it, keep its first bytes, and copy it to *dst* if given."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
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
    return digest.hexdigest(), size, head


def _hash_fd(fd: int, check_cancelled: CheckCancelled) -> tuple[str, int, bytes]:
    return _copy_and_hash(fd, None, check_cancelled)


def _syncfs(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
        os.sync()
