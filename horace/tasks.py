"""The server's background work, each a supervised child task: the watcher (after a
start-up reconcile), the purge of long-deleted files, the periodic fsck, the look at the
store, and the sweep of what dead processes left in ``.horace/tmp``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from horace.binding import StoreRefused
from horace.catalog import Catalog, in_thread
from horace.config import Settings
from horace.fsck import FsckReport, fsck, leftovers, log_findings
from horace.supervise import TaskState, every, stop_signals, supervise
from horace.watch import Watcher

log = logging.getLogger("horace.tasks")
STORE_CHECK_EVERY = 1.0  # seconds
# What another process sharing the store left in .horace/tmp when it died (a working file
# moved out for a delete it never committed, say) is dealt with this often, not only at
# the next start: with several servers on one store, the others may run for months.
LEFTOVERS_EVERY = 10.0  # seconds


async def purge_and_report(catalog: Catalog) -> dict[str, int]:
    report = await catalog.purge()
    if report.files_purged:
        log.info("purged %d deleted files, %d objects", report.files_purged, report.objects_deleted)
    return attrs.asdict(report)


# What an fsck finds that leaves a version without its content (lost, or damaged): a server
# serving such a catalog is degraded until a check finds none (a store restored with the
# wrong catalog, or an object store copied short).
CONTENT_LOST = frozenset({"missing_object", "checksum_mismatch"})


def _counts(report: FsckReport) -> dict[str, int]:
    return {
        "findings": len(report.findings),
        "unrepaired": sum(not f.repaired for f in report.findings),
        "content_lost": sum(not f.repaired and f.kind in CONTENT_LOST for f in report.findings),
    }


async def _fsck(catalog: Catalog) -> dict[str, Any]:
    report = await fsck(catalog, automatic=True)
    log_findings(report, "(periodic)")
    return _counts(report)


async def _sweep_leftovers(catalog: Catalog) -> dict[str, int] | None:
    report = await leftovers(catalog)
    if not report.findings:
        return None
    log_findings(report, "(what a process that died left)")
    return _counts(report)


async def _delayed(delay: float, state: TaskState, interval: float, work: Any) -> None:
    state.state = "idle"  # (until its first run: the one at start was open_catalog's)
    await trio.sleep(delay)
    await every(state, interval, work)


def _store_tampered(catalog: Catalog) -> str | None:
    """Why the store may not be written any more, if it may not: its lock file replaced,
    one of its own folders replaced by a link, or its catalog found damaged. (The store
    itself moved is the binding's to say: ensure_bound, at the next look.)"""
    storage = catalog.storage
    if not storage.in_place():
        return None
    why = _tampering(catalog)
    # (Looked at again: a store moved while it was looked at shows its lock file gone.)
    return why if why is None or storage.in_place() else None


def _tampering(catalog: Catalog) -> str | None:
    storage = catalog.storage
    if catalog.locks.replaced():
        return (
            f"the store's lock file {storage.lock_file} was removed or replaced while this "
            "process ran: its locks no longer keep other processes out (two watchers, two writers "
            "of a file); restart every process of this store"
        )
    problem = storage.private_layout_problem()
    if problem is not None:
        return f"{problem}; found while this process ran: nothing more is written"
    damage = catalog.backend.damaged()
    if damage is not None:  # (what it would record in a damaged file may be lost)
        return (
            f"{damage}. Found while this process ran (a backup copied into the open file?): nothing "
            "more is written"
        )
    return None


async def _look_at_store(catalog: Catalog, state: TaskState) -> None:
    try:
        # (Tampering first: a damaged catalog file fails the binding's read, which would
        # otherwise keep the look from ever getting to what says so.)
        tampered = await in_thread(_store_tampered, catalog)
        if tampered is not None:
            raise StoreRefused(tampered)
        await catalog.ensure_bound()
        writable = await in_thread(catalog.storage.writable)
        free_bytes, free_inodes = await in_thread(catalog.storage.room)
    except Exception:  # (a failing disk: EIO) not ok until a look gets through; logged by supervise
        state.details["looked"] = False
        raise
    if not state.details["looked"]:  # (its failures were said by supervise, each time)
        log.warning("the store's check gets through again: the store and its catalog answer")
    state.details["looked"] = True
    if writable != state.details["writable"]:
        if writable:
            log.warning("the store at %s can be written again", catalog.storage.root)
        else:
            log.error(
                "the store at %s cannot be written (read-only, or not ours to write)", catalog.storage.root
            )
    full = free_bytes == 0 or free_inodes == 0
    if full != state.details["full"]:
        if full:
            log.error(
                "the store's disk at %s is full (%d bytes, %s inodes left): every write is STORAGE_FULL",
                catalog.storage.root,
                free_bytes,
                free_inodes,
            )
        else:
            log.warning("the store's disk at %s has room again", catalog.storage.root)
    state.details.update(writable=writable, full=full, free_bytes=free_bytes, free_inodes=free_inodes)


def start_store_check(nursery: trio.Nursery, catalog: Catalog) -> Callable[[], dict[str, Any]]:
    """The store moved, removed or replaced under the process (its catalog file too), or
    bound to another catalog: looked at every STORE_CHECK_EVERY seconds, and the process
    stops (a supervisor's restart then finds the store as it is, and says what is wrong).
    Its status for /health: a store that cannot be written (gone read-only, or its disk
    full: no byte or no inode left), or not even looked at (a failing disk), degrades the
    server; reads may still work."""
    state = TaskState("store", details={"writable": True, "looked": True, "full": False})
    body = partial(every, state, STORE_CHECK_EVERY, partial(_look_at_store, catalog, state))
    nursery.start_soon(partial(supervise, state, body, fatal=(StoreRefused,)))
    return lambda: {
        **state.status(),
        "ok": state.details["writable"] and state.details["looked"] and not state.details["full"],
    }


def start_background(nursery: trio.Nursery, catalog: Catalog, settings: Settings) -> dict[str, Any]:
    """Start the supervised tasks; return name -> status function, for /health.

    With watch mode on, call :func:`horace.watch.reconcile_if_watching` first: the watcher sees only what
    happens from its start.
    """
    states = {name: TaskState(name) for name in ("purge", "fsck", "leftovers")}
    if catalog.checked_at_start is not None:
        states["fsck"].details["last_result"] = {**_counts(catalog.checked_at_start), "at_start": True}

    def periodic(name: str, interval: float, work: Any, *, first_after: float = 0.0) -> None:
        # A store bound to another catalog meanwhile (`horace init --adopt`) stops the
        # server: this catalog no longer opens it.
        if first_after:
            body = partial(_delayed, first_after, states[name], interval, work)
        else:
            body = partial(every, states[name], interval, work)
        nursery.start_soon(partial(supervise, states[name], body, fatal=(StoreRefused,)))

    periodic("purge", settings.purge_interval, partial(purge_and_report, catalog))
    # fsck already ran at start (open_catalog); the periodic one waits an interval first.
    periodic("fsck", settings.fsck_interval, partial(_fsck, catalog), first_after=settings.fsck_interval)
    # (What dead processes left was looked at at start too: open_catalog.)
    periodic("leftovers", LEFTOVERS_EVERY, partial(_sweep_leftovers, catalog), first_after=LEFTOVERS_EVERY)
    fsck_state = states["fsck"]
    status: dict[str, Any] = {
        "store": start_store_check(nursery, catalog),
        "fsck": lambda: {
            **fsck_state.status(),
            "ok": not fsck_state.details.get("last_result", {}).get("content_lost"),
        },
    }
    if settings.watch:
        watcher = Watcher(catalog, settle=settings.watch_settle, poll=settings.watch_poll)
        states["watcher"] = TaskState("watcher")
        nursery.start_soon(supervise, states["watcher"], watcher.run)
        # Not watching (crashed and waiting to restart, or its watch not in place yet), or
        # paths waiting to be taken again after a failure: writes go unversioned, so the
        # server is degraded (see HoraceServer.health).
        status["watcher"] = lambda: {
            **states["watcher"].status(),
            **watcher.status(),
            "ok": watcher.ok,
        }
    for name, state in states.items():
        status.setdefault(name, state.status)
    return status


async def run_watch(settings: Settings, *, progress: Any = None) -> None:
    """``horace watch``: reconcile, then watch, purge and fsck until a signal; Horace's
    log goes to Godot as a server's does (there are no calls to keep as conversations);
    stopped by the signals as a server is (:func:`horace.supervise.stop_signals`)."""
    from horace.assemble import open_catalog
    from horace.server.serving import held_for_godot, log_sinks
    from horace.watch import reconcile_if_watching

    godot_only = attrs.evolve(settings, conversations=False)
    async with stop_signals() as signals:
        with held_for_godot(godot_only) as held:
            async with open_catalog(settings, create=True) as catalog:
                await reconcile_if_watching(catalog, progress)
                async with log_sinks(godot_only, catalog, held), trio.open_nursery() as nursery:
                    await signals.watch(lambda _: nursery.cancel_scope.cancel())
                    log.info("watching %s until a stop signal", catalog.storage.files)
                    start_background(nursery, catalog, attrs.evolve(settings, watch=True))
