"""Watch mode: catalog and version every finished write under files/ as it happens.

A change feed (:mod:`horace.changefeed`: inotify, or polling for NFS) reports paths that
changed. Each path then waits until it has *settled*: nobody has it open for writing (a
read lease is refused while a writer has it open) and it has not changed for ``settle``
seconds. Only then is it registered or versioned, and the copy itself is checked for
changes under it, so a half-written state is never kept, and a burst of writes gives one
version per settled state. A path that vanishes waits the same time for a new path with
its content (a rename keeps the file's id and history); if none comes, the file is
soft-deleted. A vanished folder (moved or removed whole, one event for all its files)
does the same for every file catalogued under it.

Each time the watch is (re)established, a catch-up pass looks for what no event will
report: files changed since the watcher last saw events, files not catalogued, and
catalogued files gone; so does a pass after the kernel dropped events.

A name that can never be catalogued (not UTF-8, reserved for Horace) is counted, logged
once and listed in the status, and the watch goes on. A path that could not be taken for
another reason (the storage full, the catalog down, the file unreadable) is taken again,
after ``settle`` seconds doubled at each failure up to :data:`RETRY_CAP`, until it is taken
or gone; while any such path waits the watcher is not ok (the server is degraded in
/health), since a change it holds may be overwritten before it is versioned.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from horace.backends.protocol import BackendUnavailable, CatalogUnwritable, DatabaseFull
from horace.backends.records import FileRecord, Status
from horace.catalog import Catalog, Vanished, in_thread, unchanged_since
from horace.changefeed import Change, ChangeFeed, WatchFailed, open_change_feed
from horace.locks import FileLocks
from horace.logs import ThrottledLog
from horace.model import ErrorCode, HoraceError
from horace.paths import editor_temp, quoted, unusable_name

log = logging.getLogger("horace.watch")

# Changes up to this long before the watch was (last) in place are looked at again.
CATCH_UP_SLACK = 10.0
NEW_FILES_BATCH = 256
SKIPPED_SHOWN = 20  # the latest skipped names /health lists
# Skipped names logged one by one in a minute; past that, counted in one line at its end
# (a `cp -al` of a tree gives each of its files a second link: thousands of names at once).
SKIPS_LOGGED = 20
SKIP_LOG_WINDOW = 60.0  # seconds
FAILING_SHOWN = 20  # the latest paths /health lists that failed and wait to be taken again
RETRY_CAP = 60.0  # seconds: the longest wait before a failed path is taken again
# Seconds a pass over the paths due takes at most before it looks again at what fell due
# meanwhile: with a backlog, how long a file written elsewhere waits behind it.
PASS_SECONDS = 0.5
RETRY_FLOOR = 0.1  # seconds: the first wait's half, whatever the settle time (0 is allowed)
# The catalog failing (down, full, refusing): a path's change waits in failing_paths, as
# for a full storage; the watch goes on and takes it once the catalog is back.
CATALOG_FAILURES = (BackendUnavailable, CatalogUnwritable, DatabaseFull)
# While the catalog does not answer (the database down, or out of reach), the watcher asks
# it this often whether it does again; when it does, what waits for it is taken at once,
# not at the end of each path's own wait (up to RETRY_CAP), by when a file written again
# would have lost the content that waited.
CATALOG_LOOK_EVERY = 1.0
LEASE_LOOK_EVERY = 1.0  # seconds between a standing-by watcher's looks at the watch lease
# The lease's holder gives a sign of life this often; a standing-by watcher that sees none
# for SILENT_HOLDER seconds says so (/health, the log): a holder stopped or hung keeps the
# lease, and nothing is versioned until it goes.
BEAT_EVERY = 5.0
SILENT_HOLDER = 30.0
# A file another process holds open for writing waits for it to close (what is written so
# far may be half of what is coming), but not for ever: left alone this many settle times,
# it is taken as it is (a log kept open, a file written through a shared map).
HELD_OPEN_SETTLES = 10
# A file written on and on, each write within a settle time of the last (a log opened and
# appended to every 100 ms), never settles: it is taken as it is once it has waited this
# long (seconds; ten settle times if longer), else nothing of it is versioned while the
# writes go on. Not while a writer holds it open: see HELD_OPEN_SETTLES.
WRITTEN_ON_TAKEN_AFTER = 30.0
# A path the watcher may not look at (moved into a folder then made unreadable, say) may be
# the other half of a file's rename: files that vanished from about then on are not deleted
# while it stays so, for this long at most (seconds), so that the rename is followed once
# the path can be read, and the file keeps its id and history.
UNREADABLE_HOLDS_DELETES = 600.0
# A file refused for its hard links is taken again once it has one: a link removed inside
# files/ gives an event for that link's path only, and one removed elsewhere none. So the
# refused paths are looked at this often (seconds), and, a settle time after a refused
# path is gone, every file is looked at as at start (a catalogued file written through
# that link got no event of its own).
REFUSED_LOOK_EVERY = 60.0


@attrs.define
class WatchCounts:
    events: int = 0
    registered: int = 0
    versioned: int = 0
    moved: int = 0
    deleted: int = 0
    retried: int = 0
    errors: int = 0  # failures to take a path (each is taken again later)
    skipped: int = 0  # names that can never be catalogued


class Watcher:
    def __init__(
        self,
        catalog: Catalog,
        *,
        settle: float = 0.5,
        poll: bool = False,
        poll_ms: int = 300,
    ) -> None:
        self.catalog = catalog
        self.files = catalog.storage.files
        self.settle = settle
        self.poll = poll
        self.poll_ms = poll_ms
        self.counts = WatchCounts()
        self.watching = False  # the watch is in place
        self.standby = False  # another process watches the store: see run()
        self.holder_silent_s: float | None = None  # standing by: the holder gave no sign so long
        # Standing by: the holder's sign of life first seen, and whether one came since.
        self._first_beat: int | None = None
        self._holder_beats = False
        self._unreadable_beat = False  # standing by: said once that it cannot be read
        self._caught_up = False  # this run's first catch-up is done
        self._due: dict[str, float] = {}  # path -> when to look at it again
        self._vanished = Vanished()  # gone from their paths, since (Trio time)
        self._expiring = 0  # of them, taken off that list to be deleted, not yet done
        self._since = time.time() - CATCH_UP_SLACK  # the catch-up looks at changes since then
        # This run's catch-ups not done yet (the first, those of lost events), and the changes
        # its feed failed with unhanded: from when each looks. The next run reaches back to them.
        self._unfinished: list[float] = []
        self._wakeup = trio.Event()
        self._new: list[str] = []  # settled, not catalogued: registered together
        # Of them, those first looked at as renames, together (with what lstat said).
        self._maybe_moved: list[tuple[str, os.stat_result]] = []
        # Paths whose times are ahead of this host's clock: their stat identity, and when
        # it was first seen so (Trio time). See _settled.
        self._ahead: dict[str, tuple[tuple[int, int, int, int], float]] = {}
        # Paths another process holds open for writing, and since when (Trio time).
        self._held_open: dict[str, float] = {}
        # Paths waiting to settle (scheduled, not taken yet), and since when (Trio time).
        self._waiting: dict[str, float] = {}
        # Written on and on: when each was last taken as it is, and those such a take
        # failed for (changed as it was read: written faster than it can be read whole).
        self._forced_at: dict[str, float] = {}
        self._outpaced: set[str] = set()
        # Paths the watcher may not look at (a permission refused), and since when.
        self._unreadable: dict[str, float] = {}
        self._one_by_one: set[str] = set()  # skipped by a batch: taken alone next
        # Copies: paths not catalogued because their content is another file's (the
        # duplicate rule), by that file's id, with the content. Taken again once that file
        # no longer holds it, before its version of it can be pruned away.
        self._copies: dict[str, dict[str, str]] = {}
        self._copy_of: dict[str, str] = {}  # path -> the id of the file whose copy it is
        self.skipped: dict[str, None] = {}  # the latest names skipped, with why (for /health)
        self._skip_log = ThrottledLog(
            log,
            interval=SKIP_LOG_WINDOW,
            burst=SKIPS_LOGGED,
            more="watch: skipped {count} more names in the last minute, not logged one by one "
            "(/health: the watcher's skipped count and latest skipped_names)",
        )
        self._failing: dict[str, int] = {}  # path -> failures in a row (taken again later)
        self._refused: dict[str, str] = {}  # path -> why it may not be catalogued as it is
        # Since the refused paths were last looked at: a removal seen, and whether one of
        # them was what went.
        self._look_at_refused = trio.Event()
        self._refused_went = False
        self._catch_up_failing: str | None = None  # why a catch-up waits to be done again
        self._feed: ChangeFeed | None = None
        # The catalog out of reach: the paths that wait for it, and what says it answers.
        self._awaiting_catalog: dict[str, None] = {}
        self._catalog_lost = trio.Event()
        self._catalog_back = trio.Event()

    @property
    def ok(self) -> bool:
        """Watching every folder, and no path waits to be taken again after a failure (or
        standing by while another process watches)."""
        if self.standby:
            return self.holder_silent_s is None
        return (
            self.watching and not self._failing and not self._unwatched() and self._catch_up_failing is None
        )

    def _behind(self) -> float:
        """How long the path due the longest has waited past its time (0: none waits)."""
        oldest = min(self._due.values(), default=None)
        return 0.0 if oldest is None else round(max(0.0, trio.current_time() - oldest), 1)

    def _unsettled(self) -> float:
        """How long the path waiting the longest to settle has waited (0: none waits)."""
        oldest = min(self._waiting.values(), default=None)
        return 0.0 if oldest is None else round(trio.current_time() - oldest, 1)

    def _written_on_too_long(self, rel: str) -> bool:
        """Whether *rel*, written on and on, has waited long enough to be taken as it is:
        since it began to wait, and since it was last so taken (a take that failed, the
        file changed as it was read, is tried again that much later)."""
        limit = max(WRITTEN_ON_TAKEN_AFTER, self.settle * HELD_OPEN_SETTLES)
        now = trio.current_time()
        return (
            now - self._waiting.get(rel, math.inf) >= limit
            and now - self._forced_at.get(rel, -math.inf) >= limit
        )

    def _unwatched(self) -> dict[str, str]:
        return self._feed.unwatched if self._feed is not None and self.watching else {}

    def status(self) -> dict[str, Any]:
        return {
            "watching": self.watching,
            "standby": self.standby,
            "lease_holder_silent_s": self.holder_silent_s,
            "pending": len(self._due),
            "behind_s": self._behind(),
            "vanished": len(self._vanished) + self._expiring,
            "mode": "poll" if self.poll else "inotify",
            **attrs.asdict(self.counts),
            "skipped_names": list(self.skipped),
            "failing": len(self._failing),
            "failing_paths": list(self._failing)[-FAILING_SHOWN:],
            "held_open": len(self._held_open),
            # (A file written on and on: taken as it is past WRITTEN_ON_TAKEN_AFTER.)
            "unsettled_s": self._unsettled(),
            "held_open_paths": [
                f"{quoted(rel)}: {round(trio.current_time() - since, 1)} s"
                for rel, since in list(self._held_open.items())[:FAILING_SHOWN]
            ],
            "catch_up_failing": self._catch_up_failing,
            "unwatched_folders": [
                f"{quoted(os.path.relpath(folder, self.files))}: {why}"
                for folder, why in list(self._unwatched().items())[:FAILING_SHOWN]
            ],
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled, once this catalog holds the store's watch lease: while
        another process (or catalog) watches the store, stand by. On taking the lease
        over, the watch's catch-up looks at every file (what the watcher that stopped had
        not taken yet): through the watch, so that a file renamed meanwhile is followed as
        the watch follows a rename, where a reconcile racing the rename would delete it."""
        if not self.catalog.locks.take_watch_lease():
            self.standby = True
            log.info("watch: another process watches this store; standing by to take over")
            looked = trio.current_time()
            while True:  # (a lock across processes: nothing to wait on but time)
                await trio.sleep(LEASE_LOOK_EVERY)
                if self.catalog.locks.take_watch_lease():
                    break
                if trio.current_time() - looked >= BEAT_EVERY:
                    looked = trio.current_time()
                    await self._look_at_the_holder()
            log.info("watch: the store's watch lease taken over")
            self.standby, self.holder_silent_s = False, None
            self._first_beat, self._holder_beats = None, False
            self._since = 0.0  # a full catch-up
        self._caught_up = False
        self._unfinished = []
        try:
            await self._watch(task_status)
        finally:
            # Whatever the next run's watch misses from here on, its catch-up finds; one
            # that did not finish (lost events' too) is done again, from where it started.
            self.watching = False
            latest = time.time() - CATCH_UP_SLACK if self._caught_up else self._since
            self._since = min([latest, *self._unfinished])

    async def _look_at_the_holder(self) -> None:
        """Standing by: whether the lease's holder still gives signs of life (said once
        when it stops, and once when it gives them again)."""
        storage, locks = self.catalog.storage, self.catalog.locks
        try:
            beat = await in_thread(locks.last_beat_ns)
            silent = (await in_thread(storage.clock_ns) - beat) / 1e9
            marked = self._first_beat is None and await in_thread(locks.holders_beat)
        except OSError as exc:
            if not self._unreadable_beat:
                log.warning("watch: the watch lease holder's signs of life cannot be read: %s", exc)
            self._unreadable_beat = True
            return
        self._unreadable_beat = False
        if self._first_beat is None:
            self._first_beat = beat
        self._holder_beats = self._holder_beats or marked or beat != self._first_beat
        if not self._holder_beats:
            # Only a holder of a store whose holders give signs of life is said silent: one
            # of a release from before them (a rolling upgrade) never gives any, and is not
            # taken for stopped.
            return
        if silent < SILENT_HOLDER:
            if self.holder_silent_s is not None:
                log.info("watch: the process that holds the watch lease gives signs of life again")
            self.holder_silent_s = None
            return
        if self.holder_silent_s is None:
            log.warning(
                "watch: the process that holds this store's watch lease has given no sign of life for "
                "%.0f s (stopped, or hung on its disk?): nothing is being versioned; once it ends (stop "
                "it), this instance takes over",
                silent,
            )
        self.holder_silent_s = round(silent, 1)

    async def _watch(self, task_status: trio.TaskStatus[None]) -> None:
        async with (
            trio.open_nursery() as nursery,
            open_change_feed(self.files, poll=self.poll, poll_interval=self.poll_ms / 1000) as feed,
        ):
            # The feed is entered: the watch is in place.
            self._feed = feed
            self.watching = True
            nursery.start_soon(self._settle_loop)
            nursery.start_soon(give_signs_of_life, self.catalog.locks)
            nursery.start_soon(self._first_catch_up)
            nursery.start_soon(self._look_again_at_refused)
            nursery.start_soon(self._look_for_the_catalog)
            task_status.started()
            with self.catalog.storage.observe_writes(feed.wrote):
                try:
                    async for batch in feed:
                        if batch.lost_since is not None:
                            nursery.start_soon(self._catch_up_until_done, batch.lost_since - CATCH_UP_SLACK)
                        for change in batch.changes:
                            if editor_temp(change.path.name):
                                continue
                            self.counts.events += 1
                            await self._noticed(change)
                except WatchFailed as exc:
                    if exc.lost_since is not None:
                        self._unfinished.append(exc.lost_since - CATCH_UP_SLACK)
                    raise

    async def _noticed(self, change: Change) -> None:
        try:
            rel = change.path.relative_to(self.files).as_posix()
        except ValueError:
            return
        if change.gone and self._refused:
            self._look_at_refused.set()  # (another link of a refused file, maybe)
        parts = rel.split("/")
        for depth, part in enumerate(parts, 1):
            why = unusable_name(part)
            if why is not None:  # reported up to the bad name: what is under it is never looked at
                self._skip(f"{quoted('/'.join(parts[:depth]))}: {why}")
                return
        why = self.catalog.storage.too_long(rel)
        if why is not None:
            # Never catalogued, nor followed there: a catalogued file renamed to such a
            # path has gone from the catalog's sight (deleted, as when moved out of files/),
            # rather than kept at a path no later write of it could be versioned under.
            self._skip(f"{quoted(rel)}: {why}")
            return
        if not change.gone:
            inside = await in_thread(self._folder_files, change.path, rel)
            if inside is not None:
                # A new folder: its files may have been written before the watch saw it;
                # and it may have taken a catalogued file's place (then deleted).
                for found in [*inside, rel]:
                    self.schedule(found)
                return
        self.schedule(rel)

    async def _look_again_at_refused(self) -> None:
        """Take again the refused paths that now hold a file with one link, and what was
        written through a refused path now gone (see REFUSED_LOOK_EVERY); a path refused
        for another reason is refused again, unsaid."""
        while True:
            with trio.move_on_after(REFUSED_LOOK_EVERY):
                await self._look_at_refused.wait()
                await trio.sleep(self.settle)  # (the rest of an rm -r, together)
            self._look_at_refused = trio.Event()
            went, self._refused_went = self._refused_went, False
            if went:
                await self._catch_up_until_done(0.0)
            elif self._refused:
                for rel in await in_thread(self._single_linked, list(self._refused)):
                    self.look_again(rel)

    def _single_linked(self, paths: list[str]) -> list[str]:
        found = []
        for rel in paths:
            try:
                st = os.lstat(self.files / rel)
            except OSError:
                continue  # gone: its own event said so
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                found.append(rel)
        return found

    def _folder_files(self, path: Path, rel: str) -> list[str] | None:
        """The files in *path* when it is a folder (not a symlink to one), else None."""
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except OSError:
            return None
        return self._walk(rel)

    def _walk(self, under: str | None = None) -> list[str]:
        """The files under *under* that may be catalogued; the names that never may are
        counted and reported."""
        return [rel for rel, _ in self._walk_stats(under)]

    def _walk_stats(self, under: str | None = None) -> list[tuple[str, os.stat_result]]:
        """:meth:`_walk`, each file with its ``lstat``."""
        skipped: list[str] = []
        try:
            found = self.catalog.storage.walk_stats(under, skipped)
        except (HoraceError, OSError) as exc:  # swapped for a symlink, gone, unreadable
            log.debug("watch: not walking %s: %s", under, exc)
            found = []
        for why in skipped:
            self._skip(why)
        return found

    def _skip(self, why: str) -> None:
        """A name that can never be catalogued: reported once, counted, never fatal."""
        if why in self.skipped:
            return
        self.counts.skipped += 1
        self.skipped[why] = None
        while len(self.skipped) > SKIPPED_SHOWN:
            del self.skipped[next(iter(self.skipped))]
        self._skip_log.warning("watch: skipped %s", why)

    async def _first_catch_up(self) -> None:
        await self._catch_up_until_done(self._since)
        self._caught_up = True

    async def _catch_up_until_done(self, since: float) -> None:
        """:meth:`_catch_up`, done again while the catalog fails (each wait twice the
        last), the watch going on meanwhile; until done, the next run's catch-up reaches
        back to *since* should this run end first."""
        self._unfinished.append(since)
        failures = 0
        while True:
            try:
                await self._catch_up(since)
            except CATALOG_FAILURES as exc:
                failures += 1
                delay = self._retry_wait(failures)
                self._catch_up_failing = f"the catalog: {exc}"
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "watch: catch-up not done: %s (done again in %.1f s)", exc, delay)
                back = self._catalog_unreachable(exc)
                with trio.move_on_after(delay):
                    await back.wait()
            else:
                self._catch_up_failing = None
                self._unfinished.remove(since)
                return

    async def _catch_up(self, since: float) -> None:
        """What no event reports: changes from before the watch was in place (at start, or
        while a crashed watcher was down). Files not catalogued, or changed since *since*
        (unless their stat identity shows them as they were read), are taken; catalogued
        files that are gone vanish."""
        found = dict(await in_thread(self._walk_stats))
        known = {e.file_path: e for e in await self.catalog.backend.working_index()}
        margin = self.catalog.policy.racy_margin_ns
        for rel, st in found.items():
            entry = known.get(rel)
            as_read = (
                entry is not None
                and entry.status is Status.ACTIVE
                and unchanged_since(entry.working, st, margin)
            )
            if entry is None or (max(st.st_mtime, st.st_ctime) >= since and not as_read):
                self.look_again(rel)
        for rel, entry in known.items():
            if entry.status is Status.ACTIVE and rel not in found:
                self.look_again(rel)

    def schedule(self, rel: str, delay: float | None = None) -> None:
        now = trio.current_time()
        due = now + (self.settle if delay is None else delay)
        self._waiting.setdefault(rel, now)
        if rel in self._due and self._written_on_too_long(rel):
            due = min(due, self._due[rel])  # written on and on: no longer put off
        self._due[rel] = due
        self._wakeup.set()

    def look_again(self, rel: str) -> None:
        """:meth:`schedule` *rel*, which no event said changed (a catch-up's look, say),
        never putting off a look already due sooner: a path due is what holds up the
        delete of a file it may be the other half of the rename of (see
        :meth:`_expire_vanished`), and a later look would let that file be deleted."""
        due = self._due.get(rel)
        self.schedule(rel)
        if due is not None and due < self._due[rel]:
            self._due[rel] = due

    async def _settle_loop(self) -> None:
        while True:
            now = trio.current_time()
            ready = [rel for rel, due in self._due.items() if due <= now]
            # Vanished paths first: the other half of a rename must find them waiting. Then
            # the folders in turn, for a pass of PASS_SECONDS at most: the thousand files of
            # a folder just moved hold up a file written elsewhere by a pass, not by all of
            # them (what is left stays due, and the next pass takes what fell due meanwhile).
            present = await in_thread(self._present, ready)
            ready = [rel for rel in ready if rel not in present] + _folders_in_turn(
                [rel for rel in ready if rel in present]
            )
            pass_ends = trio.current_time() + PASS_SECONDS
            for rel in ready:
                del self._due[rel]
                await self._settle(rel)
                if trio.current_time() >= pass_ends:
                    break
            if self._maybe_moved:
                await self._follow_renames()
            if self._new:
                await self._register_new()
            # A vanished file is deleted only once every path due has been looked at: one
            # of them may be where it went (a folder renamed again while the files of its
            # first rename were still being taken). Under a steady overload that delays
            # deletes; it never loses a file's history.
            if not any(due <= trio.current_time() for due in self._due.values()):
                await self._expire_vanished()
            upcoming = [*self._due.values(), *(since + self.settle for since in self._vanished.times())]
            minute_left = self._skip_log.seconds_left()
            if minute_left is not None and minute_left <= 0:
                self._skip_log.flush()
            elif minute_left is not None:
                upcoming.append(trio.current_time() + minute_left)
            self._wakeup = trio.Event()
            with trio.move_on_at(min(upcoming) if upcoming else now + 3600):
                await self._wakeup.wait()

    def _present(self, paths: list[str]) -> set[str]:
        return {rel for rel in paths if os.path.lexists(self.files / rel)}

    def _in_files(self, paths: list[str]) -> set[str]:
        """Of *paths*, those where something is, reached without a symlink on the way (a
        folder made a link, as a git checkout does: what it leads to is not in files/)."""
        found = set()
        for rel in paths:
            try:
                self._lstat_in_files(rel)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.add(rel)
        return found

    def _lstat_in_files(self, rel: str) -> os.stat_result:
        """lstat of *rel*; FileNotFoundError when it is reached through a symlink."""
        st = os.lstat(self.files / rel)
        if "/" in rel and self.catalog.storage.unreachable(rel) is not None:
            raise FileNotFoundError(errno.ENOENT, "a symlink on the way", rel)
        return st

    async def _settle(self, rel: str) -> None:
        correlation_id = f"watch-{uuid.uuid4()}"
        try:
            done = await self._take(rel, correlation_id)
        except HoraceError as exc:
            self._not_taken(rel, exc, correlation_id)
        except OSError as exc:  # this file only (unreadable, say): the watch goes on
            if isinstance(exc, PermissionError):
                self._unreadable.setdefault(rel, trio.current_time())
            self._failed(rel, str(exc), correlation_id)
        except CATALOG_FAILURES as exc:
            self._catalog_failed([rel], exc, correlation_id)
        else:
            if done:
                self._taken(rel)

    def _stop_waiting(self, rel: str) -> bool:
        """*rel* taken, or gone: no longer waiting to settle. Whether it was written
        faster than it could be read."""
        self._waiting.pop(rel, None)
        self._forced_at.pop(rel, None)
        outpaced = rel in self._outpaced
        self._outpaced.discard(rel)
        return outpaced

    def _not_taken(self, rel: str, exc: HoraceError, correlation_id: str) -> None:
        if exc.code is ErrorCode.FILE_LOCKED:  # written to while we read it: later
            self.counts.retried += 1
            self.schedule(rel)
            if rel in self._forced_at and rel not in self._outpaced:
                self._outpaced.add(rel)
                log.warning(
                    "watch: %s is written on faster than it can be read whole: not versioned until its "
                    "writes pause (tried again every %.0f s; unsettled_s in /health says how long it waits)",
                    rel,
                    max(WRITTEN_ON_TAKEN_AFTER, self.settle * HELD_OPEN_SETTLES),
                    extra={"correlation_id": correlation_id},
                )
        elif exc.code is ErrorCode.FILE_NOT_FOUND:  # gone: an event brings it back if it comes
            self._failing.pop(rel, None)
            self._unreadable.pop(rel, None)
            self._no_longer_refused(rel)
            log.debug("watch: skipped %s: %s", rel, exc.message, extra={"correlation_id": correlation_id})
        elif exc.code is ErrorCode.INVALID_PATH:
            # Not to be catalogued as it is (hard linked, say): said once, listed among the
            # skipped names of /health until it is taken; an event about it takes it again.
            self._failing.pop(rel, None)
            self._unreadable.pop(rel, None)
            self._refused[rel] = exc.message
            self._skip(exc.message)
        else:
            self._failed(rel, exc.message, correlation_id)

    def _failed(self, rel: str, why: str, correlation_id: str) -> float:
        """*rel* could not be taken: taken again later, each wait twice the last (the
        wait, in seconds)."""
        self.counts.errors += 1
        failures = self._failing.pop(rel, 0) + 1
        self._failing[rel] = failures  # (re-inserted: the latest failures are listed last)
        delay = self._retry_wait(failures)
        self.schedule(rel, delay)
        level = logging.WARNING if failures == 1 else logging.DEBUG  # once, not at every retry
        log.log(
            level,
            "watch: %s: %s (taken again in %.1f s)",
            rel,
            why,
            delay,
            extra={"correlation_id": correlation_id},
        )
        return delay

    def _retry_wait(self, failures: int) -> float:
        """Seconds before what failed *failures* times in a row is tried again."""
        return min(max(self.settle, RETRY_FLOOR) * 2**failures, RETRY_CAP)

    def _no_longer_refused(self, rel: str) -> None:
        refused = self._refused.pop(rel, None)
        if refused is not None:
            self.skipped.pop(refused, None)

    def _taken(self, rel: str) -> None:
        self._no_longer_refused(rel)
        self._unreadable.pop(rel, None)
        if self._stop_waiting(rel):
            log.info("watch: %s, written on faster than it could be read, is versioned", rel)
        failures = self._failing.pop(rel, None)
        if failures is not None:
            log.info("watch: %s taken after %d failure%s", rel, failures, "s" * (failures > 1))

    def _settled(self, rel: str, st: os.stat_result, quiet: float) -> bool:
        """Left alone for *quiet* seconds, by its times (see :func:`_age`); or, when its
        ctime is ahead of this host's clock (a network filesystem whose server's clock is
        ahead; this clock stepped back), by what the watcher saw of it: the same stat
        identity that long. Else such a file would wait until the clock caught up, and an
        ordinary write meanwhile would lose its content unversioned."""
        age = _age(st)
        if age >= quiet:
            self._ahead.pop(rel, None)
            return True
        if age >= 0:
            return False
        now, seen = trio.current_time(), self._ahead.get(rel)
        if seen is None or seen[0] != _identity(st):
            self._ahead[rel] = (_identity(st), now)
            return False
        if now - seen[1] < quiet:
            return False
        del self._ahead[rel]
        return True

    async def _take(self, rel: str, correlation_id: str) -> bool:
        """Catalog, version, move or delete *rel* as it now is; False when it waits for
        the pass's batch of new files (or is looked at again later)."""
        storage = self.catalog.storage
        self._forget_copy(rel)  # looked at again: whatever it is now (gone, say)
        try:
            st = await in_thread(self._lstat_in_files, rel)
        except (FileNotFoundError, NotADirectoryError):
            self._ahead.pop(rel, None)
            self._held_open.pop(rel, None)
            self._unreadable.pop(rel, None)
            self._stop_waiting(rel)
            if rel in self._refused:  # (another link of a catalogued file, maybe)
                self._no_longer_refused(rel)
                self._refused_went = True
                self._look_at_refused.set()
            # A catalogued file is deleted later, unless a new path takes its content
            # (_expire_vanished says when it is done).
            return not await self._vanish(rel)
        if not stat.S_ISREG(st.st_mode):
            # Symlinks, folders and special files are never catalogued; one where a
            # catalogued file was means that file is gone.
            self._stop_waiting(rel)
            record = await self.catalog.backend.file_by_path(rel)
            if record is not None and record.status is Status.ACTIVE:
                return not self._file_vanished(record)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                # Perhaps made again where a folder was moved or removed whole, before the
                # watcher looked (or a link put there): the files catalogued under it that
                # are not there vanish.
                await self._folder_vanished(rel)
            return True
        if await in_thread(storage.is_being_written, rel):
            self._held_open.setdefault(rel, trio.current_time())
            quiet = self.settle * HELD_OPEN_SETTLES
        else:
            self._held_open.pop(rel, None)
            quiet = self.settle
        # (One held open waits for its writer whatever: a copy of a big file under way is
        # no content to version half made, every half minute.)
        written_on = rel not in self._held_open and self._written_on_too_long(rel)
        settled = self._settled(rel, st, quiet)
        if not settled and not written_on:
            self.counts.retried += 1
            self.schedule(rel)
            return False
        self._held_open.pop(rel, None)
        if settled:
            self._waiting.pop(rel, None)  # (should the copy fail, the retry waits anew)
        else:  # taken as it is: still waiting (unsettled_s) until taken
            self._forced_at[rel] = trio.current_time()
        record = await self.catalog.backend.file_by_path(rel)
        if record is None and self._vanished and rel not in self._one_by_one:
            self._maybe_moved.append((rel, st))  # followed with the others of this pass, together
            return False
        if (
            record is None
            and self._vanished
            and await self.catalog.follow_rename(self._vanished, rel, correlation_id)
        ):
            self.counts.moved += 1
            return True
        if record is None and rel not in self._one_by_one:
            self._new.append(rel)  # registered with the others of this pass, in one commit
            return False
        self._one_by_one.discard(rel)
        # (As it is: settled, or written on too long to wait for; see _settled.)
        done = await self.catalog.register(rel, correlation_id=correlation_id, as_it_is=True)
        if (
            done.duplicate
            and done.file.status is Status.ACTIVE
            and not await in_thread(storage.working_exists, done.file.file_path)
            and await self.catalog.may_have_moved_to(
                done.file.id, await in_thread(storage.working_identity, rel)
            )
        ):
            # Its content is catalogued under a path that is gone, and it is under that
            # file's inode: a rename whose other half has not been looked at yet.
            self._vanished.discard(done.file.id)
            await self.catalog.move(done.file.id, rel, correlation_id)
            self.counts.moved += 1
            return True
        if record is None and done.duplicate:
            # A copy of a file still at its path: catalogued as a file of its own, as the
            # batches catalog copies. Left out again (that file gone meanwhile), it waits
            # for that file to change or go.
            if await self.catalog.register_copy(rel, correlation_id) is not None:
                self.counts.registered += 1
                return True
            if not await in_thread(storage.working_exists, done.file.file_path):
                # That file is gone from its path, and not to here (another inode): renamed
                # elsewhere, or removed. Looked at again once its other half has been seen.
                self.counts.retried += 1
                self.schedule(rel)
                return False
            self._copies.setdefault(done.file.id, {})[rel] = done.file.checksum
            self._copy_of[rel] = done.file.id
        elif record is None:
            self.counts.registered += 1
        else:
            if done.version_created:
                self.counts.versioned += 1
            self._look_again_at_copies(record.id, done.file.checksum)
        return True

    def _forget_copy(self, rel: str) -> None:
        owner = self._copy_of.pop(rel, None)
        if owner is not None:
            self._copies.get(owner, {}).pop(rel, None)

    def _look_again_at_copies(self, owner: str, checksum: str | None) -> None:
        """*owner* now holds *checksum* (None: gone): its copies of other content are due
        again (registered then, their content being no other file's)."""
        copies = self._copies.pop(owner, {})
        for rel, content in copies.items():
            if content == checksum:
                self._copies.setdefault(owner, {})[rel] = content
            else:
                del self._copy_of[rel]
                self.schedule(rel, 0)

    async def _follow_renames(self) -> None:
        """The new paths of this pass that may be vanished files moved, followed together;
        the others go on to be registered with the pass's new files."""
        looked, self._maybe_moved = self._maybe_moved, []
        pending = [rel for rel, _ in looked]
        correlation_id = f"watch-{uuid.uuid4()}"
        try:
            followed = await self.catalog.follow_renames(self._vanished, looked, correlation_id)
        except CATALOG_FAILURES as failure:
            return self._catalog_failed(pending, failure, correlation_id)
        except OSError as refused:
            return self._all_failed(pending, str(refused), correlation_id)
        done = set()
        for rel, _ in followed.moved:
            self.counts.moved += 1
            self._taken(rel)
            done.add(rel)
        for rel, exc in followed.failed:
            self._not_taken(rel, exc, correlation_id)
            done.add(rel)
        self._new += [rel for rel in pending if rel not in done]

    def _all_failed(self, rels: list[str], why: str, correlation_id: str) -> None:
        """Work on *rels* together failed: each of them is taken again later."""
        for rel in rels:
            self._failed(rel, why, correlation_id)

    def _catalog_failed(self, rels: list[str], exc: Exception, correlation_id: str) -> None:
        """The catalog failed work on *rels*: each is taken again later, as for any failure;
        and, the catalog out of reach, all of them as soon as it answers again."""
        self._all_failed(rels, f"the catalog: {exc}", correlation_id)
        if isinstance(exc, BackendUnavailable):
            self._awaiting_catalog.update(dict.fromkeys(rels))
            self._catalog_unreachable(exc)

    def _catalog_unreachable(self, exc: Exception) -> trio.Event:
        """What is set once the catalog answers again, looked for while *exc* says it is
        out of reach (a catalog that answers but refuses writes is not looked for: each
        path's own wait says when to try again)."""
        if isinstance(exc, BackendUnavailable):
            self._catalog_lost.set()
        return self._catalog_back

    async def _look_for_the_catalog(self) -> None:
        """While the catalog is out of reach, ask it every CATALOG_LOOK_EVERY seconds
        whether it answers; once it does, take again at once what waited for it."""
        while True:
            await self._catalog_lost.wait()
            await trio.sleep(CATALOG_LOOK_EVERY)
            try:
                await self.catalog.backend.ping()
            except BackendUnavailable as exc:
                log.debug("watch: the catalog is still out of reach: %s", exc)
                continue
            except (CatalogUnwritable, DatabaseFull) as exc:  # (it answers: the paths' own waits)
                log.debug("watch: the catalog answers, and refuses writes: %s", exc)
            self._catalog_lost = trio.Event()
            self._catalog_back.set()
            self._catalog_back = trio.Event()
            waiting, self._awaiting_catalog = self._awaiting_catalog, {}
            due = [rel for rel in waiting if rel in self._failing]
            for rel in due:
                self.schedule(rel, 0.0)
            log.info("watch: the catalog answers again; %d paths that waited for it are taken now", len(due))

    async def _register_new(self) -> None:
        pending, self._new = self._new, []
        for start in range(0, len(pending), NEW_FILES_BATCH):
            await self._register_batch(pending[start : start + NEW_FILES_BATCH])

    async def _register_batch(self, batch: list[str]) -> None:
        correlation_id = f"watch-{uuid.uuid4()}"
        try:
            outcome = await self.catalog.register_new(batch, correlation_id, copies=True)
        except CATALOG_FAILURES as failure:
            return self._catalog_failed(batch, failure, correlation_id)
        except OSError as refused:  # the storage (gone read-only, say): each is failing
            return self._all_failed(batch, str(refused), correlation_id)
        self.counts.registered += len(outcome.registered)
        for file in outcome.registered:
            self._taken(file.file_path)
        for rel, _ in outcome.skipped:
            # The second half of a rename (or a path taken meanwhile): the one-by-one path
            # tells which.
            self._one_by_one.add(rel)
            await self._settle(rel)
        for rel, exc in outcome.failed:
            self._not_taken(rel, exc, correlation_id)

    async def _vanish(self, rel: str) -> bool:
        """*rel* is gone: True when it is an active catalogued file, now waiting to be
        deleted (or moved); a folder's files wait likewise."""
        record = await self.catalog.backend.file_by_path(rel)
        if record is not None:
            return self._file_vanished(record)
        await self._folder_vanished(rel)  # perhaps a folder, moved or removed whole
        return False

    async def _folder_vanished(self, rel: str) -> None:
        """Each active file catalogued under the folder *rel* and not at its path waits as
        vanished: deleted (or moved) once the settle time has passed, unless it is back
        then. (One still there is left alone: should it go later, its own event says so,
        and its wait starts then, not now, when the other half of its rename is not due.)"""
        now = trio.current_time()
        under = await self.catalog.files_under(rel, Status.ACTIVE)
        present = await in_thread(self._in_files, [found.file_path for found in under])
        for found in under:
            if found.file_path not in present:
                self._vanished.add(found, now)
        self._wakeup.set()

    def _file_vanished(self, record: FileRecord) -> bool:
        """*record*'s path no longer holds it: True when it is active, now waiting to be
        deleted (or moved)."""
        active = record.status is Status.ACTIVE
        if active:
            self._vanished.add(record, trio.current_time())
        else:  # deleted or archived through Horace (a tool, the CLI): its copies' turn
            self._look_again_at_copies(record.id, None)
        self._wakeup.set()
        return active

    async def _expire_vanished(self) -> None:
        # A file vanished a settle time ago is deleted, unless a path still settling was
        # changed about when it went (due by then and a settle time more): the other half
        # of its rename may be that path, its event come after the gone one (a file moved
        # again, out of a folder just renamed, say). A file written without end past that
        # holds no delete up.
        now = trio.current_time()
        before = now - self.settle
        if self._due:
            before = min(before, min(self._due.values()) - 2 * self.settle)
        unreadable = [since for since in self._unreadable.values() if now - since < UNREADABLE_HOLDS_DELETES]
        if unreadable:  # (see UNREADABLE_HOLDS_DELETES)
            before = min(before, min(unreadable) - 2 * self.settle)
        expired = self._vanished.expired(before=before)
        self._expiring = len(expired)
        try:
            for record in expired:
                try:
                    await self._expire(record)
                except CATALOG_FAILURES as exc:
                    # Still waiting as vanished (the other half of its rename may yet come),
                    # looked at again after the failed path's wait.
                    delay = self._failed(record.file_path, f"the catalog: {exc}", f"watch-{uuid.uuid4()}")
                    self._vanished.add(record, trio.current_time() + delay - self.settle)
                self._expiring -= 1
        finally:
            self._expiring = 0

    async def _expire(self, record: FileRecord) -> None:
        """*record* vanished a settle time ago and no rename took it: deleted, unless it
        came back or Horace changed it meanwhile."""
        if not await in_thread(self.catalog.storage.surely_gone, record.file_path):
            return  # it came back
        current = await self.catalog.backend.file_by_id(record.id)
        active = current is not None and current.status is Status.ACTIVE
        if current is None or not active or current.file_path != record.file_path:
            # Deleted, archived or moved through Horace since it went: not ours to delete.
            self._look_again_at_copies(record.id, current.checksum if current and active else None)
            self._taken(record.file_path)
            return
        correlation_id = f"watch-{uuid.uuid4()}"
        try:
            done = await self.catalog.delete(record.id, correlation_id, vanished=True)
        except HoraceError as exc:
            self._failed(record.file_path, f"delete: {exc.message}", correlation_id)
            return
        if "status" not in done.changed_fields:  # back at its path since the look above
            self.schedule(record.file_path)
            return
        log.info(
            "watch: %s is gone: deleted (soft; `horace_undelete_file` brings it back)",
            record.file_path,
            extra={"correlation_id": correlation_id, "file_id": record.id},
        )
        self.counts.deleted += 1
        self._look_again_at_copies(record.id, None)
        self._taken(record.file_path)


def _folders_in_turn(paths: list[str]) -> list[str]:
    """*paths* a folder at a time, each folder's in their order: the first of every
    folder, then the second of every folder, and so on."""
    rank: dict[str, int] = {}
    taken: dict[str, int] = {}
    keyed = []
    for rel in paths:
        folder = rel.rpartition("/")[0]
        rank.setdefault(folder, len(rank))
        taken[folder] = taken.get(folder, 0) + 1
        keyed.append((taken[folder], rank[folder], rel))
    return [rel for *_, rel in sorted(keyed)]


def _age(st: os.stat_result) -> float:
    """Seconds since the file last changed, by its mtime and ctime; by its ctime alone when
    its mtime is ahead of this host's clock (``touch -d``, an archive unpacked with a
    faster host's times): every write moves ctime, and nobody can set it."""
    now = time.time()
    return now - (st.st_ctime if st.st_mtime > now else max(st.st_mtime, st.st_ctime))


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


async def reconcile_if_watching(catalog: Catalog, progress: Callable[[int, int], None] | None = None) -> None:
    """The start of watch mode: with the store's watch lease (see
    :meth:`FileLocks.take_watch_lease`), the start-up reconcile; without it, nothing (the
    process that watches has reconciled, and this one's watcher stands by)."""
    if catalog.locks.take_watch_lease():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(give_signs_of_life, catalog.locks)  # (a reconcile may be long)
            await reconcile_logged(catalog, progress)
            nursery.cancel_scope.cancel()


async def give_signs_of_life(locks: FileLocks) -> None:
    """The watch lease holder's signs of life (see :data:`BEAT_EVERY`), until cancelled."""
    failed = False
    while True:
        try:
            await in_thread(locks.beat)
        except OSError as exc:
            if not failed:
                log.warning("watch: a sign of life could not be given (%s); standbys may say so", exc)
            failed = True
        else:
            failed = False
        await trio.sleep(BEAT_EVERY)


async def reconcile_logged(
    catalog: Catalog, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
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
