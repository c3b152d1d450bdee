"""One writer per working file: a Trio lock inside the process, an ``fcntl`` lock
across processes on this host. (Across hosts, the backend adds an advisory lock.)

The ``fcntl`` lock is a one-byte record lock in the shared ``.horace/locks`` file at an
offset derived from the path, so no lock file is created per path. Record locks belong
to the process, which is why the Trio lock must be held first: it keeps two tasks of
this process from sharing (and then releasing) the same record lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from horace.model import ErrorCode, HoraceError


def lock_key(rel_path: str) -> int:
    """A stable signed 63-bit key for a path (fcntl offset, PostgreSQL advisory key)."""
    return int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") >> 1


@attrs.define
class _Entry:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    users: int = 0


class FileLocks:
    def __init__(self, lock_file: Path, wait_seconds: float = 30.0) -> None:
        self._fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._entries: dict[str, _Entry] = {}
        self.wait_seconds = wait_seconds

    def close(self) -> None:
        os.close(self._fd)

    @asynccontextmanager
    async def hold(self, rel_path: str) -> AsyncIterator[None]:
        """Hold the write lock of *rel_path*; ``FILE_LOCKED`` after ``wait_seconds``."""
        entry = self._entries.setdefault(rel_path, _Entry())
        entry.users += 1
        try:
            with trio.move_on_after(self.wait_seconds) as waited:
                await entry.lock.acquire()
            if waited.cancelled_caught:
                raise HoraceError(ErrorCode.FILE_LOCKED, f"{rel_path!r} is being written")
            try:
                await self._acquire_record(rel_path)
                try:
                    yield
                finally:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, lock_key(rel_path))
            finally:
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[rel_path]

    async def _acquire_record(self, rel_path: str) -> None:
        # Polling with LOCK_NB keeps the wait cancellable; a blocking F_SETLKW in a
        # worker thread could not be interrupted.
        offset = lock_key(rel_path)
        delay = 0.001
        with trio.move_on_after(self.wait_seconds):
            while True:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                    return
                except (BlockingIOError, PermissionError):
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        raise HoraceError(ErrorCode.FILE_LOCKED, f"{rel_path!r} is being written by another process")
