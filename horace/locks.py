"""One writer per working file: a Trio lock inside the process, an ``fcntl`` lock
across processes on this host. (Across hosts, the backend adds an advisory lock.)

The ``fcntl`` lock is a one-byte record lock in the shared ``.horace/locks`` file at an
offset derived from the path, so no lock file is created per path. It is an *open file
description* lock (``F_OFD_SETLK``): it belongs to this ``FileLocks``' descriptor, not to
the process, so another open-and-close of the lock file cannot drop it and two catalogs
in one process exclude each other too. The Trio lock comes first so that tasks of one
catalog queue in Trio rather than by polling.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from horace.model import ErrorCode, HoraceError
from horace.paths import quoted
from horace.storage import StorageUnusable, lock_file_refusal


def _flock(kind: int, offset: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks); fcntl()
    # copies it into a larger zeroed buffer, so the C struct's tail padding is covered.
    return struct.pack("hhqqi", kind, os.SEEK_SET, offset, 1, 0)


# The lock byte of the store's watch lease (see FileLocks.take_watch_lease): the last one
# a lock can take; a path's key is never it but once in 2**63.
WATCH_LEASE = (1 << 63) - 1
# What the lock file holds (its locks are on bytes past its end) once a holder of the watch
# lease has given a sign of life (see FileLocks.holders_beat).
HOLDERS_BEAT = b"holders of the watch lease give signs of life\n"


def lock_key(rel_path: str) -> int:
    """A stable signed 63-bit key for a path (fcntl offset, PostgreSQL advisory key)."""
    return int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") >> 1


@attrs.define
class _Entry:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    users: int = 0


def _open_lock_file(path: Path) -> int:
    """The store's lock file, opened to read and write: a regular file of one link, never
    through a symlink. Its holder writes to it (:meth:`FileLocks.beat`): a symlink or a
    hard link put in its place would have that written over a file outside the store."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise
        raise StorageUnusable(lock_file_refusal(path)) from None
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
        os.close(fd)
        raise StorageUnusable(lock_file_refusal(path))
    return fd


class FileLocks:
    def __init__(self, lock_file: Path | None, wait_seconds: float = 30.0) -> None:
        """*lock_file* None: the locks of a catalog opened only to read, which takes none
        (readers never wait for writers), so that a store gone read-only can be read."""
        self._path = lock_file
        self._fd = None if lock_file is None else _open_lock_file(lock_file)
        self._entries: dict[str, _Entry] = {}
        self.wait_seconds = wait_seconds
        self.holds_watch_lease = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # (and with it the watch lease, if held)

    def _file(self) -> int:
        if self._fd is None:
            raise RuntimeError("a catalog opened only to read takes no lock")
        return self._fd

    def beat(self) -> None:
        """A sign of life of the watch lease's holder: the lock file's mtime set to the
        filesystem's now (the lease outlives a process that is stopped or hung, but not
        its signs of life; see :meth:`last_beat_ns`); and the lock file's mark that this
        store's holders give them (:meth:`holders_beat`)."""
        fd = self._file()
        os.pwrite(fd, HOLDERS_BEAT, 0)  # (each time: a lock file emptied by hand is marked again)
        os.utime(fd)

    def replaced(self) -> bool:
        """Whether the store's lock file is no longer the one this catalog locks (removed,
        or another put in its place, by hand): the locks of processes that opened the other
        no longer keep this one out, nor this one's them (two watchers, two writers of a
        file)."""
        if self._fd is None or self._path is None:
            return False
        try:
            there = os.lstat(self._path)  # (a symlink to it is another file: the link's)
        except FileNotFoundError:
            return True
        own = os.fstat(self._fd)
        return (there.st_ino, there.st_dev) != (own.st_ino, own.st_dev)

    def holders_beat(self) -> bool:
        """Whether a holder of the watch lease has ever given signs of life here: a holder
        of a release from before them never does (a rolling upgrade), and is not to be
        taken for one stopped; once one has, a holder silent from a standby's first look
        (stopped before it started) is."""
        return os.fstat(self._file()).st_size > 0

    def last_beat_ns(self) -> int:
        """When the lease's holder last gave a sign of life, on the filesystem's clock."""
        return os.fstat(self._file()).st_mtime_ns

    def watch_lease_held(self) -> bool:
        """Whether some process (this one included) holds the store's watch lease: a
        look, that takes nothing."""
        if self.holds_watch_lease:
            return True
        found = fcntl.fcntl(self._file(), fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, WATCH_LEASE))
        return bool(struct.unpack_from("h", found)[0] != fcntl.F_UNLCK)

    def take_watch_lease(self) -> bool:
        """Whether this catalog now holds the store's watch lease: one watcher per store,
        whatever the processes and instances (two watchers would each act on the same
        events, and a rename one follows the other may take for a deletion). Held until
        :meth:`close`; never waits."""
        if self.holds_watch_lease:
            return True
        try:
            fcntl.fcntl(self._file(), fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, WATCH_LEASE))
        except (BlockingIOError, PermissionError):
            return False
        self.holds_watch_lease = True
        return True

    @asynccontextmanager
    async def hold(self, rel_path: str) -> AsyncIterator[None]:
        """Hold the write lock of *rel_path*; ``FILE_LOCKED`` after ``wait_seconds``. A
        free lock is taken whatever the wait (0 too: no wait, not no lock)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        entry = self._entries.setdefault(rel_path, _Entry())
        entry.users += 1
        try:
            try:
                entry.lock.acquire_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(self.wait_seconds) as waited:
                    await entry.lock.acquire()
                if waited.cancelled_caught:
                    raise HoraceError(ErrorCode.FILE_LOCKED, f"{quoted(rel_path)} is being written") from None
            try:
                await self._acquire_record(rel_path)
            except BaseException:
                entry.lock.release()
                raise
        except BaseException:
            self._leave(rel_path, entry)
            raise
        try:
            yield
        finally:
            self._release(rel_path)

    @asynccontextmanager
    async def hold_free(self, rel_paths: Sequence[str]) -> AsyncIterator[list[str]]:
        """Hold the write locks of those of *rel_paths* that no one holds, without waiting
        for the others; yield the paths held. It never waits while it holds a lock, so no
        order of taking locks, here or in other holders, can deadlock with it."""
        await trio.lowlevel.checkpoint()
        held: list[str] = []
        try:
            for rel_path in dict.fromkeys(rel_paths):
                if self._take_free(rel_path):
                    held.append(rel_path)
            yield held
        finally:
            for rel_path in reversed(held):
                self._release(rel_path)

    def _take_free(self, rel_path: str) -> bool:
        entry = self._entries.setdefault(rel_path, _Entry())
        entry.users += 1
        if entry.lock.locked():  # by another task, or by this one (not free either)
            self._leave(rel_path, entry)
            return False
        entry.lock.acquire_nowait()
        try:
            fcntl.fcntl(self._file(), fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, lock_key(rel_path)))
        except (BlockingIOError, PermissionError):
            entry.lock.release()
            self._leave(rel_path, entry)
            return False
        return True

    def _release(self, rel_path: str) -> None:
        entry = self._entries[rel_path]
        try:
            fcntl.fcntl(self._file(), fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, lock_key(rel_path)))
        finally:
            entry.lock.release()
            self._leave(rel_path, entry)

    def _leave(self, rel_path: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[rel_path]

    async def _acquire_record(self, rel_path: str) -> None:
        # Polling the non-blocking F_OFD_SETLK keeps the wait cancellable; a blocking
        # F_OFD_SETLKW in a worker thread could not be interrupted.
        offset = lock_key(rel_path)
        delay = 0.001
        with trio.move_on_after(self.wait_seconds):
            while True:  # (the first try is made before the wait can have ended)
                try:
                    fcntl.fcntl(self._file(), fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
                    return
                except (BlockingIOError, PermissionError):
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        raise HoraceError(ErrorCode.FILE_LOCKED, f"{quoted(rel_path)} is being written by another process")
