"""Where the watcher learns what changed under files/: inotify, or polling (NFS).

Either feed is an async context manager: once entered, the watch is in place; iterating it
gives batches of changed paths. A path is a :class:`~pathlib.Path` built from the bytes
the kernel gave, decoded with :func:`os.fsdecode`, so a name that is not UTF-8 arrives
with surrogate escapes (``b"\\xff"`` as ``"\\udcff"``) and is never an error here: what
can be catalogued is the watcher's business. Folders that can never hold a catalogued file
(a name :func:`horace.paths.unusable_name` refuses, or a path already past
:func:`horace.paths.too_long`'s limits) are reported but not looked into.

A feed that can no longer watch raises :class:`WatchFailed` (files/ moved, removed or
unmounted; the inotify watch limit reached); the supervisor then restarts the watcher,
whose catch-up pass finds what happened meanwhile. Events the kernel had to drop (its
queue overflowed) come as a batch with ``lost_since`` set: look at everything changed
since then.

The inotify feed keeps one watch per folder itself, on inotify_simple (a thin wrapper of
the system calls), rather than on a watching library: watchfiles fails on any name that
is not UTF-8 (its Rust side cannot decode it, polling or not), and watchdog handles an
overflow out of its caller's sight and does not notice files/ moved away. No thread is
needed: Trio waits on the inotify descriptor.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import attrs
import trio
from inotify_simple import INotify, flags

from horace.paths import printable, too_long, unusable_name
from horace.supervise import Environmental

log = logging.getLogger("horace.watch")

# What a folder's watch reports: entries created, written, closed after writing, changed
# in their metadata, moved in or out, deleted; and the folder itself deleted or moved.
_EVENTS = (
    flags.CREATE
    | flags.MODIFY
    | flags.CLOSE_WRITE
    | flags.ATTRIB
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
)
_SUBFOLDER_MASK = _EVENTS | flags.ONLYDIR | flags.DONT_FOLLOW  # a symlink is never watched through
_ROOT_MASK = _EVENTS | flags.ONLYDIR  # files/ itself may be reached through a symlink
_ROOT_LOST = flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT | flags.IGNORED
QUIET = 0.02  # a batch ends after this long without events ...
DEBOUNCE = 0.1  # ... or this long after its first


def _looked_into(root: str, folder: str) -> bool:
    """Whether *folder* (a path under *root*) may hold a file to catalog: its name may be
    catalogued, and its path leaves room for a file's (one deeper than PATH_MAX cannot
    even be watched, and would leave the watch degraded for good over files nobody may
    catalog; a scan reports it as skipped)."""
    return (
        unusable_name(os.path.basename(folder)) is None
        and too_long(Path(root), folder[len(root) + 1 :]) is None
    )


class WatchFailed(Environmental):
    """The watch is not (or no longer) in place. *lost_since*: changes from this time
    (time.time()) on may be missing, read but not handed over (or dropped by the kernel)
    when a watch that was in place failed; None otherwise."""

    lost_since: float | None = None


@attrs.frozen
class Change:
    path: Path  # absolute; undecodable bytes as surrogate escapes
    gone: bool  # deleted or moved away (else created, written, or moved in)


@attrs.frozen
class Batch:
    changes: tuple[Change, ...] = ()
    # Set when events were dropped: changes from this time (time.time()) on may be missing.
    lost_since: float | None = None


class ChangeFeed(Protocol):
    # Folders under the root whose changes are not seen now (unreadable, say), with why.
    unwatched: dict[str, str]

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> Batch: ...

    def wrote(self, path: Path) -> None:
        """Horace itself wrote the file at *path* (from any thread)."""


def open_change_feed(root: Path, *, poll: bool, poll_interval: float) -> ChangeFeed:
    """The feed of changes under *root*: inotify, or polling every *poll_interval* s."""
    return PollFeed(root, poll_interval) if poll else InotifyFeed(root)


class _Collected:
    """A batch being gathered: the last word on each path wins."""

    def __init__(self) -> None:
        self.changes: dict[str, bool] = {}
        self.lost_since: float | None = None

    def add(self, path: str, gone: bool) -> None:
        self.changes.pop(path, None)  # keep the order of the latest events
        self.changes[path] = gone

    def batch(self) -> Batch:
        return Batch(tuple(Change(Path(p), gone) for p, gone in self.changes.items()), self.lost_since)


class InotifyFeed:
    """A recursive inotify watch: one watch per folder, added as folders appear.

    The kernel gives events as (watch, name); each watch's folder path is kept here and
    follows moves: a folder moved away loses its watches, a folder moved (back) in is
    watched anew. Watches are added before their folder is listed, so an entry made in
    between is either listed or reported. A folder that cannot be watched (unreadable) is
    kept in :attr:`unwatched` and watched again, with what is under it, when its
    attributes change (a chmod reported by its parent's watch).
    """

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.unwatched: dict[str, str] = {}
        self._inotify: INotify | None = None
        self._paths: dict[int, str] = {}  # watch descriptor -> its folder
        self._wds: dict[str, int] = {}  # folder -> its watch descriptor
        self._root_wd = -1
        self._drained_at = time.time()  # every event up to here has been read

    async def __aenter__(self) -> Self:
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as exc:  # EMFILE: fs.inotify.max_user_instances
            raise WatchFailed(f"cannot start inotify: {exc}") from exc
        try:
            self._remember_all(await trio.to_thread.run_sync(self._watch_tree, self.root))
        except BaseException:
            self._inotify.close()
            raise
        self._root_wd = self._wds[self.root]
        self._drained_at = time.time()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._inotify is not None:
            trio.lowlevel.notify_closing(self._inotify.fd)  # no task waits on a closed fd
            self._inotify.close()

    def wrote(self, path: Path) -> None:
        pass  # inotify reports Horace's own writes as any other

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        collected = _Collected()
        began = self._drained_at  # (what this batch collects happened after it)
        try:
            while not collected.changes and collected.lost_since is None:
                await self._readable_by(float("inf"))
                await self._drain(collected)
                # More events usually follow (a save is several): gather them into this batch.
                deadline = trio.current_time() + DEBOUNCE
                while await self._readable_by(min(deadline, trio.current_time() + QUIET)):
                    await self._drain(collected)
        except WatchFailed as exc:
            # What was collected (an overflow's lost window too) is never handed over, nor
            # what the kernel still queues: the next watch's catch-up must reach back to it.
            exc.lost_since = min(began, collected.lost_since or began)
            raise
        return collected.batch()

    async def _readable_by(self, deadline: float) -> bool:
        """Whether there are events to read before *deadline* (a checkpoint)."""
        assert self._inotify is not None
        # Only this wait is ever cut short: events read are always handled whole.
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_readable(self._inotify.fd)
            return True
        return False

    async def _drain(self, collected: _Collected) -> None:
        """Read the events waiting, into *collected*; watch the folders they bring."""
        assert self._inotify is not None
        new_folders: list[str] = []
        rewatch = False  # the whole tree, after an overflow
        for wd, mask, _, name in self._inotify.read(timeout=0):
            if mask & flags.Q_OVERFLOW:
                # Events were dropped since the last read: folders made meanwhile are not
                # watched, and their files not reported. Watch the whole tree again.
                log.warning("watch: the inotify queue overflowed; events were lost")
                if collected.lost_since is None:
                    collected.lost_since = self._drained_at
                rewatch = True
                continue
            if wd == self._root_wd and mask & _ROOT_LOST:
                raise WatchFailed(f"{printable(self.root)} was moved, removed or unmounted")
            folder = self._paths.get(wd)
            if mask & flags.IGNORED:  # the watch is gone (its folder deleted, or we removed it)
                if folder is not None:
                    del self._paths[wd]
                    if self._wds.get(folder) == wd:
                        del self._wds[folder]
                continue
            if folder is None:
                if not rewatch:
                    self._rm_watch(wd)  # its folder was moved away: not ours any more
                continue
            if not name:
                continue  # about the folder itself: its parent's watch reports it
            path = f"{folder}/{name}"
            gone = bool(mask & (flags.DELETE | flags.MOVED_FROM))
            if mask & flags.ISDIR:
                if mask & flags.MOVED_FROM:
                    self._forget(path)
                elif mask & flags.DELETE:
                    self._forget_unwatched(path)  # (its watches end on their own: IN_IGNORED)
                elif mask & (flags.CREATE | flags.MOVED_TO) and _looked_into(self.root, path):
                    new_folders.append(path)
                elif mask & flags.ATTRIB and self._holds_unwatched(path):
                    new_folders.append(path)  # readable again, perhaps: watched anew
            collected.add(path, gone)
        self._drained_at = time.time()
        if rewatch:
            # Watching a folder again gives its watch back; what left the tree is forgotten.
            self._paths.clear()
            self._wds.clear()
            new_folders = [self.root]
        if new_folders:
            added = await trio.to_thread.run_sync(self._watch_trees, new_folders)
            self._remember_all(added)
            self._root_wd = self._wds[self.root]

    def _remember_all(self, added: list[tuple[str, int]]) -> None:
        for folder, wd in added:
            self.unwatched.pop(folder, None)
            old = self._paths.get(wd)
            if old is not None and old != folder and self._wds.get(old) == wd:
                del self._wds[old]  # the same folder, found under its new path
            self._paths[wd] = folder
            self._wds[folder] = wd

    def _forget(self, top: str) -> None:
        """Stop watching *top* and the folders under it (moved away, perhaps out of files/)."""
        prefix = top + "/"
        for folder in [f for f in self._wds if f == top or f.startswith(prefix)]:
            wd = self._wds.pop(folder)
            self._paths.pop(wd, None)
            self._rm_watch(wd)
        self._forget_unwatched(top)

    def _forget_unwatched(self, top: str) -> None:
        prefix = top + "/"
        for folder in [f for f in self.unwatched if f == top or f.startswith(prefix)]:
            del self.unwatched[folder]

    def _holds_unwatched(self, top: str) -> bool:
        prefix = top + "/"
        return any(f == top or f.startswith(prefix) for f in self.unwatched)

    def _rm_watch(self, wd: int) -> None:
        assert self._inotify is not None
        try:
            self._inotify.rm_watch(wd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: removed already (its folder deleted)
                log.warning("watch: removing inotify watch %d: %s", wd, exc)

    # -- in a worker thread: listing folders and adding watches may take long ----------

    def _watch_trees(self, tops: list[str]) -> list[tuple[str, int]]:
        return [added for top in tops for added in self._watch_tree(top)]

    def _watch_tree(self, top: str) -> list[tuple[str, int]]:
        """Watch *top* and every folder under it; (folder, watch descriptor) for each.

        Symlinks are not followed, and folders that can never hold a catalogued file
        (:func:`_looked_into`) are not entered. A folder gone meanwhile is passed over;
        files/ itself that cannot be watched, or the watch limit reached, is fatal.
        """
        assert self._inotify is not None
        added = []
        pending = [top]
        while pending:
            folder = pending.pop()
            is_root = folder == self.root
            try:
                wd = self._inotify.add_watch(folder, _ROOT_MASK if is_root else _SUBFOLDER_MASK)
            except OSError as exc:
                if is_root:
                    raise WatchFailed(f"cannot watch {printable(folder)}: {exc.strerror}") from exc
                if exc.errno == errno.ENOSPC:
                    raise WatchFailed(
                        "the inotify watch limit is reached (fs.inotify.max_user_watches): "
                        "raise it, or watch by polling"
                    ) from exc
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # not gone: unreadable, say
                    if folder not in self.unwatched:
                        log.warning("watch: cannot watch %s: %s", printable(folder), exc.strerror)
                    self.unwatched[folder] = exc.strerror or type(exc).__name__
                continue
            added.append((folder, wd))
            try:
                with os.scandir(folder) as entries:
                    pending.extend(
                        entry.path
                        for entry in entries
                        if entry.is_dir(follow_symlinks=False) and _looked_into(self.root, entry.path)
                    )
            except OSError as exc:  # gone since, or unreadable: its events still come
                log.debug("watch: not listing %s: %s", printable(folder), exc)
        return added


_Signature = tuple[int, int, int, int]


class PollFeed:
    """Polling (NFS, where inotify sees only this machine's writes): every *interval*
    seconds, compare each file's inode, size, mtime and ctime (in ns) with the last look.

    Folders themselves are not compared (their files are), except those never entered
    (their names can never be catalogued), which are reported when they appear.
    """

    def __init__(self, root: Path, interval: float) -> None:
        self.root = str(root)
        self.unwatched: dict[str, str] = {}  # folders the last look could not list
        self.interval = interval
        self._identity: tuple[int, int] = (0, 0)
        self._seen: dict[str, _Signature] = {}
        self._written: collections.deque[str] = collections.deque()  # see wrote()

    async def __aenter__(self) -> Self:
        self._identity = self._root_identity()
        self._seen = await trio.to_thread.run_sync(self._look, self._seen)
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    def __aiter__(self) -> Self:
        return self

    def wrote(self, path: Path) -> None:
        self._written.append(str(path))

    async def __anext__(self) -> Batch:
        while True:
            await trio.sleep(self.interval)
            if self._root_identity() != self._identity:
                raise WatchFailed(f"{printable(self.root)} was moved or removed")
            seen = await trio.to_thread.run_sync(self._look, self._seen)
            collected = _Collected()
            for path, signature in seen.items():
                if self._seen.get(path) != signature:
                    collected.add(path, gone=False)
            for path in self._seen.keys() - seen.keys():
                collected.add(path, gone=True)
            while self._written:
                path = self._written.popleft()
                if path not in seen and path not in self._seen:
                    # Written by Horace and gone again between two looks: the gone
                    # file is told (a file that is there after all, the watcher keeps).
                    collected.add(path, gone=True)
            self._seen = seen
            if collected.changes:
                return collected.batch()

    def _root_identity(self) -> tuple[int, int]:
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise WatchFailed(f"cannot watch {printable(self.root)}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise WatchFailed(f"{printable(self.root)} is not a folder")
        return st.st_dev, st.st_ino

    def _look(self, before: dict[str, _Signature]) -> dict[str, _Signature]:
        """Every file's signature now (in a worker thread). A folder that cannot be listed
        keeps what it held at the last look, so that its files do not seem gone."""
        found: dict[str, _Signature] = {}
        unlisted: dict[str, str] = {}
        pending = [self.root]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except OSError as exc:
                if folder == self.root:
                    raise WatchFailed(f"cannot list {printable(folder)}: {exc.strerror}") from exc
                if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                    prefix = folder + "/"
                    found.update((p, s) for p, s in before.items() if p.startswith(prefix))
                    unlisted[folder] = exc.strerror or type(exc).__name__
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing
                if stat.S_ISDIR(st.st_mode) and _looked_into(self.root, entry.path):
                    pending.append(entry.path)
                else:
                    found[entry.path] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self.unwatched = unlisted
        return found
