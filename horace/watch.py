"""Watch mode: catalog and version every finished write under files/ as it happens.

watchfiles (inotify, or polling for NFS) reports paths that changed. Each path then
waits until it has *settled*: nobody has it open for writing (a read lease is refused
while a writer has it open) and it has not changed for ``settle`` seconds. Only then is
it registered or versioned, and the copy itself is checked for changes under it, so a
half-written state is never kept, and a burst of writes gives one version per settled
state. A path that vanishes waits the same time for a new path with its content (a
rename keeps the file's id and history); if none comes, the file is soft-deleted.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from watchfiles import Change, awatch

from horace.catalog import Catalog, in_thread
from horace.model import ErrorCode, FileRecord, HoraceError, Status
from horace.storage import TMP_PREFIX

log = logging.getLogger("horace.watch")

# Editor and writer temp files: swap files, backups, lock files, our own temps.
IGNORED_NAME = re.compile(r"(\.tmp$|~$|^\.#|\.sw[a-p]$|\.swx$|^4913$|^\.~lock\.|" + re.escape(TMP_PREFIX) + ")")


def ignored(name: str) -> bool:
    return bool(IGNORED_NAME.search(name))


@attrs.define
class WatchCounts:
    events: int = 0
    registered: int = 0
    versioned: int = 0
    moved: int = 0
    deleted: int = 0
    retried: int = 0
    errors: int = 0


class Watcher:
    def __init__(
        self,
        catalog: Catalog,
        *,
        settle: float = 0.5,
        debounce_ms: int = 100,
        poll: bool = False,
        poll_ms: int = 300,
    ) -> None:
        self.catalog = catalog
        self.files = catalog.storage.files
        self.settle = settle
        self.debounce_ms = debounce_ms
        self.poll = poll
        self.poll_ms = poll_ms
        self.counts = WatchCounts()
        self._due: dict[str, float] = {}  # path -> when to look at it again
        self._vanished: dict[str, tuple[FileRecord, float]] = {}  # checksum -> (file, since)
        self._wakeup = trio.Event()

    def status(self) -> dict[str, Any]:
        return {"pending": len(self._due), "mode": "poll" if self.poll else "inotify", **attrs.asdict(self.counts)}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._settle_loop)
            started = False
            async for changes in awatch(
                self.files,
                watch_filter=self._wanted,
                debounce=self.debounce_ms,
                step=20,
                rust_timeout=200,
                yield_on_timeout=True,  # the first (empty) yield says the watch is in place
                force_polling=self.poll,
                poll_delay_ms=self.poll_ms,
                ignore_permission_denied=True,
            ):
                if not started:
                    started = True
                    task_status.started()
                for change, raw in changes:
                    self.counts.events += 1
                    self._noticed(change, Path(raw))

    def _wanted(self, change: Change, raw: str) -> bool:
        return not ignored(os.path.basename(raw))

    def _noticed(self, change: Change, path: Path) -> None:
        try:
            rel = path.relative_to(self.files).as_posix()
        except ValueError:
            return
        if change is not Change.deleted and path.is_dir() and not path.is_symlink():
            # A new folder: its files may have been written before the watch saw it.
            for found in self.catalog.storage.walk_working(rel):
                self.schedule(found)
            return
        self.schedule(rel)

    def schedule(self, rel: str, delay: float | None = None) -> None:
        self._due[rel] = trio.current_time() + (self.settle if delay is None else delay)
        self._wakeup.set()

    async def _settle_loop(self) -> None:
        while True:
            now = trio.current_time()
            ready = [rel for rel, due in self._due.items() if due <= now]
            # Vanished paths first: the other half of a rename must find them waiting.
            ready.sort(key=lambda rel: os.path.lexists(self.files / rel))
            for rel in ready:
                del self._due[rel]
                await self._settle(rel)
            await self._expire_vanished()
            upcoming = [*self._due.values(), *(since + self.settle for _, since in self._vanished.values())]
            self._wakeup = trio.Event()
            with trio.move_on_at(min(upcoming) if upcoming else now + 3600):
                await self._wakeup.wait()

    async def _settle(self, rel: str) -> None:
        correlation_id = f"watch-{uuid.uuid4()}"
        try:
            await self._take(rel, correlation_id)
        except HoraceError as exc:
            if exc.code is ErrorCode.FILE_LOCKED:  # written to while we read it: later
                self.counts.retried += 1
                self.schedule(rel)
            elif exc.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.INVALID_PATH):
                log.debug("watch: skipped %s: %s", rel, exc.message, extra={"correlation_id": correlation_id})
            else:
                self.counts.errors += 1
                log.warning("watch: %s: %s", rel, exc.message, extra={"correlation_id": correlation_id})

    async def _take(self, rel: str, correlation_id: str) -> None:
        storage = self.catalog.storage
        try:
            st = await in_thread(os.lstat, self.files / rel)
        except (FileNotFoundError, NotADirectoryError):
            await self._vanish(rel)
            return
        if not stat.S_ISREG(st.st_mode):
            return  # symlinks and special files are never catalogued
        if await in_thread(storage.is_being_written, rel) or _age(st) < self.settle:
            self.counts.retried += 1
            self.schedule(rel)
            return
        record = await self.catalog.backend.file_by_path(rel)
        if record is None and self._vanished:
            digest = await in_thread(storage.hash_working, rel)
            if digest in self._vanished:
                old, _ = self._vanished.pop(digest)
                await self.catalog.move(old.id, rel, correlation_id)
                self.counts.moved += 1
                return
        done = await self.catalog.register(rel, correlation_id=correlation_id)
        if record is None and not done.duplicate:
            self.counts.registered += 1
        elif done.version_created:
            self.counts.versioned += 1

    async def _vanish(self, rel: str) -> None:
        record = await self.catalog.backend.file_by_path(rel)
        if record is not None and record.status is Status.ACTIVE:
            self._vanished[record.checksum] = (record, trio.current_time())
            self._wakeup.set()

    async def _expire_vanished(self) -> None:
        now = trio.current_time()
        for checksum, (record, since) in list(self._vanished.items()):
            if now - since < self.settle:
                continue
            del self._vanished[checksum]
            if await in_thread(self.catalog.storage.working_exists, record.file_path):
                continue  # it came back
            correlation_id = f"watch-{uuid.uuid4()}"
            try:
                await self.catalog.delete(record.id, correlation_id)
                self.counts.deleted += 1
            except HoraceError as exc:
                self.counts.errors += 1
                log.warning("watch: delete of %s: %s", record.file_path, exc.message,
                            extra={"correlation_id": correlation_id})


def _age(st: os.stat_result) -> float:
    return time.time() - max(st.st_mtime, st.st_ctime)


async def reconcile_logged(catalog: Catalog, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The start-up reconcile, with its progress in the log."""
    last_logged = [0.0]

    def report(done: int, total: int) -> None:
        if progress:
            progress(done, total)
        now = trio.current_time()
        if now - last_logged[0] >= 5 or done == total:
            last_logged[0] = now
            log.info("reconcile: %d of %d files", done, total, extra={"done": done, "total": total})

    result = await catalog.reconcile("reconcile", progress=report)
    summary = {**attrs.asdict(result.scan), "moved": result.moved, "deleted": result.deleted}
    log.info("reconcile done", extra=summary)
    return summary
