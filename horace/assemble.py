"""Assembling a catalog from settings: the store, its catalog database, the check that
the two belong together (``horace.binding``), the locks, and the start-up fsck."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path

import trio

from horace.backends import Backend, BackendUnavailable, CatalogDamaged, CatalogMissing, open_backend
from horace.backends.protocol import NotHoraces, UnusableURL
from horace.binding import StoreRefused, Verdict, bound_elsewhere, check_adoption, decide
from horace.catalog import Catalog, CatalogPolicy, in_thread, utcnow
from horace.config import Settings
from horace.fsck import fsck, leftovers, log_findings
from horace.locks import FileLocks
from horace.paths import quoted
from horace.redact import redact_url
from horace.storage import AtPath, Storage, StorageUnusable, StoreState

log = logging.getLogger("horace")


class StartCheck(enum.Enum):
    """What is checked when a catalog is opened."""

    FULL = "full"  # the automatic fsck: the server's start (and the periodic task)
    LEFTOVERS = "leftovers"  # only what dead processes left in .horace/tmp: the CLI's, bounded
    NONE = "none"


def policy_of(settings: Settings) -> CatalogPolicy:
    return CatalogPolicy(
        retention=settings.retention,
        gc_grace_seconds=settings.gc_grace,
        deleted_retention=settings.deleted_retention_delta,
        max_metadata_bytes=settings.max_metadata_bytes,
    )


@asynccontextmanager
async def open_catalog(
    settings: Settings,
    *,
    create: bool = False,
    read_only: bool = False,
    check: StartCheck | bool = StartCheck.FULL,
    adopt: bool = False,
) -> AsyncIterator[Catalog]:
    """Open the store and its catalog, refusing a pair that does not belong together.

    With *create* a missing store is created (with the SQLite catalog inside it unless
    another database is configured); otherwise a missing store is
    :class:`~horace.binding.StoreRefused`, and nothing is created. *read_only* writes
    nothing to the store (a pair from before identities is used unbound). *check* says
    what is checked first (:class:`StartCheck`; True is FULL, False NONE): the automatic
    fsck, which repairs only what a crash leaves, or only the leftovers in .horace/tmp.
    *adopt* binds an empty catalog to a store whose own catalog is lost.
    """
    storage = Storage(settings.storage_path)
    state = await in_thread(storage.state)
    if state.exists:
        await in_thread(storage.check_one_file_system)
    if not state.exists and not create:
        # Run inside a store (its folder, or a folder under files/): that store is meant.
        outer = await in_thread(storage.enclosing_store)
        if outer is None and await in_thread(Storage(storage.root.absolute().parent).looks_like_a_store):
            outer = storage.root.absolute().parent
        advice = (
            f"this folder is in the store at {outer}: to use that store, run with --storage {outer} "
            "(HORACE_STORAGE_PATH), or from its parent folder"
            if outer is not None
            else "create one with `horace init` or `horace serve`, or point --storage "
            "(HORACE_STORAGE_PATH) at a store"
        )
        where = quoted(str(storage.root))
        raise StoreRefused(f"no Horace store at {where} (no .horace folder there): {advice}")
    if create and not state.exists:
        outer = await in_thread(storage.enclosing_store)
        if outer is not None:
            raise StorageUnusable(
                f"{storage.root} is inside the store at {outer}: to use that store, run with "
                f"--storage {outer} (HORACE_STORAGE_PATH); a new store there would be catalogued "
                "as that store's files: choose a folder outside it for one"
            )
        beside = storage.root.absolute().parent
        if await in_thread(Storage(beside).looks_like_a_store):
            # (`horace serve` run in a store's own folder: ./horace-data there is a slip.)
            raise StorageUnusable(
                f"{storage.root.absolute()} would be a new store in the folder of the store at "
                f"{beside}: to use that store, run with --storage {beside} (HORACE_STORAGE_PATH), "
                "or from its parent folder"
            )
    made = create and not state.exists
    present = await in_thread(storage.layout_present) if made else set()
    async with AsyncExitStack() as stack:
        try:
            backend, store_id, bound_at = await _bound_backend(
                stack, storage, state, settings, create=create, read_only=read_only, adopt=adopt
            )
        except BaseException:
            if made:  # nothing may be left to look like a store (its catalog refused it, say)
                with trio.CancelScope(shield=True):
                    await in_thread(storage.undo_layout, present)
            raise
        if made and storage.files in present and await in_thread(storage.holds_files):
            # (A store whose .horace was removed, or a copy or backup that left dot-folders
            # out, looks just like this: its history is not here.)
            log.warning(
                "a new store is made at %s, whose files/ holds files already: they will be "
                "catalogued as new files, with no history. If this store had a catalog (its .horace "
                "folder removed, a copy or a backup that left dot-folders out), stop now and bring "
                "it back: their history is in it",
                storage.root,
            )
        await in_thread(storage.pin)  # (Catalog.ensure_bound looks whether it is still there)
        locks = FileLocks(None if read_only else storage.lock_file, wait_seconds=settings.lock_wait)
        try:
            catalog = Catalog(
                storage, backend, locks, policy_of(settings), store_id=store_id, bound_at=bound_at
            )
            start_check = _start_check(check)
            if start_check is StartCheck.FULL and not read_only:
                catalog.checked_at_start = await fsck(catalog, automatic=True, watching=settings.watch)
                log_findings(catalog.checked_at_start, "at start")
            elif start_check is StartCheck.LEFTOVERS and not read_only:
                log_findings(await leftovers(catalog), "at start")
            yield catalog
        finally:
            locks.close()


async def _bound_backend(
    stack: AsyncExitStack,
    storage: Storage,
    state: StoreState,
    settings: Settings,
    *,
    create: bool,
    read_only: bool,
    adopt: bool,
) -> tuple[Backend, str | None, datetime | None]:
    """The catalog's backend, opened on *stack*, its schema brought up to date (unless
    *read_only*), and bound to the store when it was not (:func:`horace.binding.decide`);
    the identity they are bound under, and since when."""
    url = settings.catalog_url
    if adopt:
        check_adoption(state, str(storage.root), named=settings.database_url is not None)
    if create and not state.exists and settings.database_url is None:
        await in_thread(storage.ensure_layout)  # the default catalog lives inside the new store
    # A catalog for a store that has an identity must exist already; only a new (or
    # legacy) store may bring a new SQLite file into being.
    try:
        backend = await stack.enter_async_context(
            open_backend(url, migrate=False, create=create and (state.store_id is None or adopt))
        )
    except CatalogMissing as exc:
        if state.store_id is None and not state.has_objects:
            raise _unfinished(storage, str(exc)) from None
        owner = (
            f"belongs to catalog {state.store_id}"
            + (f" (created with {state.catalog_url})" if state.catalog_url else "")
            if state.store_id
            else "has no record of its catalog"
        )
        if settings.database_url is None and bound_elsewhere(state):
            # The default catalog, missing, of a store made with another: the variable was
            # forgotten. Its own catalog is named, and adopting is not offered in passing.
            advice = "point HORACE_DATABASE_URL (or --database) at that catalog"
        else:
            advice = (
                "point --database at that catalog (or bring its file back), or, if it is lost "
                "for good, `horace init --adopt` makes a new one"
            )
        raise StoreRefused(f"{exc}, and the store at {storage.root} {owner}: {advice}") from None
    identity = await backend.identity()
    if not (identity.tables or create or state.store_id is not None or state.has_objects):
        # Made and never migrated: a first start cut short (a Ctrl-C). Only a command that
        # creates a store finishes one; the others would read tables there are not.
        raise _unfinished(storage, f"the catalog {redact_url(url)} holds no tables yet")
    recorded = identity.storage_path
    at_recorded = AtPath.ITSELF  # (what of the store is at the path the catalog recorded)
    if state.store_id is not None and recorded is not None and recorded != str(storage.root):
        at_recorded = await in_thread(storage.found_at, recorded, state.store_id)
    twin = at_recorded is AtPath.TWIN
    decision = decide(state, identity, str(storage.root), url, adopt=adopt, twin_at_recorded_path=twin)
    if adopt and decision.verdict is Verdict.BIND:
        await _refuse_adopting_beside_the_own_catalog(storage, state, url)
    if read_only:
        # Read-only commands leave the schema as it is: they read only what every schema
        # step has had (files, versions, collections); and they bind nothing.
        return backend, state.store_id, identity.bound_at
    await in_thread(storage.ensure_layout)
    await backend.migrate()
    if decision.verdict is Verdict.MATCH:
        if state.catalog_place is None and identity.place is not None and state.store_id is not None:
            # A store from before places were recorded: the catalog it meets first is its own.
            with trio.CancelScope(shield=True):
                await in_thread(storage.write_identity, state.store_id, redact_url(url), identity.place)
        if at_recorded is AtPath.NOTHING and identity.bound_at is not None and state.store_id is not None:
            # Moved: the new path recorded, so that a copy left at the old one is the one
            # refused. The same identity and time: only the path moves.
            await backend.rebind(state.store_id, state.store_id, str(storage.root), identity.bound_at)
            log.info("the store moved from %s to %s: recorded", recorded, storage.root)
        return backend, state.store_id, identity.bound_at
    store_id = decision.store_id or str(uuid.uuid4())
    if decision.verdict is Verdict.BIND:
        proposed = store_id
        store_id = await backend.bind(proposed, str(storage.root), utcnow())
        if store_id != proposed:  # another process bound it first: this store, or another?
            bound = await backend.identity()
            if bound.storage_path != str(storage.root):
                raise StoreRefused(
                    f"the catalog {redact_url(url)} was bound to the store at {bound.storage_path} "
                    f"by another process as this one started the store at {storage.root}: a catalog "
                    "serves one store; give this one a catalog of its own (--database)"
                )
    if decision.verdict is Verdict.REBIND:
        old_id, store_id = store_id, str(uuid.uuid4())
        if not await backend.rebind(old_id, store_id, str(storage.root), utcnow()):
            raise StoreRefused(f"the catalog {redact_url(url)} was bound anew meanwhile: try again")
    with trio.CancelScope(shield=True):
        await in_thread(storage.write_identity, store_id, redact_url(url), identity.place)
    if decision.verdict is Verdict.COMPLETE:
        ago = (utcnow() - identity.bound_at).total_seconds() if identity.bound_at else None
        if ago is not None and ago < JUST_BOUND_SECONDS:  # (instances started together: no damage)
            log.info(
                "the store at %s was bound to its catalog %.1f s ago by another process; its record written",
                storage.root,
                ago,
                extra={"store_id": store_id},
            )
        else:
            log.warning(
                "the store at %s had no record of its catalog; written again from the catalog's",
                storage.root,
                extra={"store_id": store_id},
            )
    log.info(
        "store %s bound to its catalog",
        storage.root,
        extra={"store_id": store_id, "catalog": redact_url(url)},
    )
    # Read again: a BIND that lost a race to another process is bound at that one's time.
    return backend, store_id, (await backend.identity()).bound_at


async def _refuse_adopting_beside_the_own_catalog(storage: Storage, state: StoreState, url: str) -> None:
    """An empty catalog is adopted in place of a lost one. The store's own SQLite catalog,
    there and still bound to it, is not lost: adopting another beside it (a mistyped
    ``--database``) would start every file's history anew, and stop each process that
    serves the store. An own catalog that does not open (damaged) may be replaced."""
    own = storage.own_catalog
    if state.store_id is None or bound_elsewhere(state) or not await in_thread(_holds_bytes, own):
        return  # (an empty file is no catalog, and opening it would make it one)
    try:
        async with open_backend(f"sqlite://{own}", migrate=False, create=False) as backend:
            bound_to = (await backend.identity()).store_id
    except (CatalogMissing, CatalogDamaged, BackendUnavailable, NotHoraces, UnusableURL) as exc:
        log.warning("adopting %s: the store's own catalog %s does not open (%s)", redact_url(url), own, exc)
        return
    if bound_to == state.store_id:
        raise StoreRefused(
            f"the store at {storage.root} has its catalog, {own}, and it is bound to it: it is not "
            f"lost. Adopting {redact_url(url)} would start the history of every file anew and stop "
            "every process serving the store. To go on with that catalog, leave out --adopt and "
            "--database; if it is to be retired for good, move its file out of .horace first"
        )


def _holds_bytes(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except FileNotFoundError:  # (removed between the two looks)
        return False


def _unfinished(storage: Storage, why: str) -> StoreRefused:
    return StoreRefused(
        f"{why}, and the store at {storage.root} was never bound to a catalog and holds no "
        "versions (a first start that did not finish?): `horace init` finishes it, with "
        "--database when its catalog is to be PostgreSQL"
    )


# A catalog bound this recently to a store without its record: another process binding it
# (instances or `horace init` started together) has not written the store's record yet.
JUST_BOUND_SECONDS = 60.0


def _start_check(check: StartCheck | bool) -> StartCheck:
    if isinstance(check, StartCheck):
        return check
    return StartCheck.FULL if check else StartCheck.NONE


__all__ = ["StartCheck", "StoreRefused", "open_catalog", "policy_of"]
