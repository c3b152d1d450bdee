"""A store and its catalog belong to each other (SPEC §1).

When a store is created, one identity (a UUID) is recorded in both: in
``<root>/.horace/store.json`` and in the catalog's ``horace_store`` table. Every opening
compares the two before anything is read or repaired; a pair that does not match is
refused with one line that names both sides. Without this, a command run with the wrong
``HORACE_DATABASE_URL`` (or none) would open an empty catalog over a full store, and
everything in it would look like an orphan.

:func:`decide` is the whole rule, a pure function of what the two sides say.
"""

from __future__ import annotations

import enum

from attrs import frozen

from horace.backends.records import CatalogIdentity
from horace.redact import redact_url
from horace.storage import StoreState


class StoreRefused(Exception):
    """The store and the catalog do not belong together, or there is no store."""


class Verdict(enum.Enum):
    MATCH = "match"  # the pair is bound: go on
    BIND = "bind"  # a new pair, or one from before identities: record a new identity
    COMPLETE = "complete"  # the catalog is bound to this store, the store file was not written
    REBIND = "rebind"  # an operator chose this copy of the store's catalog: a new identity


@frozen
class Decision:
    verdict: Verdict
    store_id: str | None = None  # for COMPLETE: the catalog's id


def decide(
    store: StoreState,
    catalog: CatalogIdentity,
    root: str,
    url: str,
    *,
    adopt: bool = False,
    twin_at_recorded_path: bool = False,
) -> Decision:
    """What to do with this pair; :class:`StoreRefused` when it is not one.

    *twin_at_recorded_path*: a store of this identity, not this one, is at the path the
    catalog recorded for its store (:meth:`Storage.found_at`). One of the two is a copy of
    the other (``cp -a``, a backup restored elsewhere); a copy carries its SQLite catalog
    along, and keeps it, but a catalog elsewhere (PostgreSQL, a file outside the store) it
    would share with the store it was copied from, and each would record the other's
    files as deleted or changed. The one at another path than the recorded one is refused.

    *adopt* (an operator's explicit ``horace init --adopt``) binds an empty, unbound
    catalog to a store whose own catalog is lost, under a new identity: should the lost
    catalog turn up again, it no longer opens the store (its collector would delete what
    the new catalog refers to). It also binds a copy of the store's catalog (the same
    identity, in another database or file: a restored dump) under a new identity; without
    it such a copy is refused, as two catalogs serving one store would each collect what
    only the other refers to. And it binds again a catalog that was the store's before an
    adoption (bound to another identity at this very path), found again.
    """
    shown = redact_url(url)
    if adopt and catalog.empty and catalog.store_id is None:
        return Decision(Verdict.BIND)
    if store.store_id is not None and catalog.store_id is not None:
        if store.store_id == catalog.store_id:
            if _same_place(store, catalog.place):
                if twin_at_recorded_path and catalog.place != store.own_catalog_place:
                    raise StoreRefused(
                        f"the store at {root} is a copy of the store at {catalog.storage_path} (the "
                        f"same identity, {store.store_id}), which is still there and bound to the "
                        f"catalog {shown}: two stores writing one catalog each record the other's files "
                        f"as deleted or changed. Use the store at {catalog.storage_path}; if this copy "
                        "is to take its place (a move), remove or rename that one first; to keep this "
                        "copy apart, give it a copy of the catalog (a restored dump) with `horace init "
                        "--adopt --database URL`"
                    )
                return Decision(Verdict.MATCH)
            if adopt:
                return Decision(Verdict.REBIND, store.store_id)
            recorded = store.catalog_url or store.catalog_place
            raise StoreRefused(
                f"the catalog {shown} carries the identity of the store at {root} ({store.store_id}), "
                f"but the store is bound to the catalog {recorded}: this one is a copy of it (a "
                "restored dump?) or that one under a new name (a renamed database), and two "
                "catalogs serving one store each collect what only the other refers to. Point "
                f"--database at {recorded}; if this one is to be the store's catalog from now on "
                "(renamed, that one gone or retired, or this one restored beside it), `horace init "
                "--adopt` binds it to this store under a new identity; from then on that one no "
                "longer opens this store (it changes nothing of that catalog, nor of a store it "
                "serves elsewhere)"
            )
        if catalog.storage_path == root:
            if adopt:
                # The store's catalog before an adoption, found again, made its own once
                # more: the catalog adopted meanwhile is refused from then on, and what
                # was written before this adoption is kept (Catalog.predates_binding).
                return Decision(Verdict.REBIND, catalog.store_id)
            again = (
                ": this catalog was bound to the store at this path before (an adoption since?); "
                "if it is to be the store's again, `horace init --adopt` binds it"
            )
        elif catalog.place is not None and catalog.place == store.own_catalog_place:
            again = (
                f": this catalog, the file in the store's own folder, was bound to the store at "
                f"{catalog.storage_path} before (a catalog lost and found again, in a copy of that "
                f"store?). If this store is the one it served and nothing of that store is left at "
                f"{catalog.storage_path}, move this store there and run `horace init --adopt` "
                "there: it is bound again, its history whole"
            )
        else:
            again = _hint(store)
        raise StoreRefused(
            f"the store at {root} (id {store.store_id}) and the catalog {shown} "
            f"(bound to store {catalog.store_id} at {catalog.storage_path}) do not belong together" + again
        )
    if store.store_id is not None:
        raise StoreRefused(
            f"the catalog {shown} is {'empty' if catalog.empty else 'not bound to any store'}, "
            f"but the store at {root} belongs to catalog {store.store_id}"
            + _hint(store)
            + (
                ". If that catalog is lost for good, `horace init --adopt` binds this empty one "
                "(each file's history then starts anew at its current content)"
                if catalog.empty
                else ""
            )
        )
    if catalog.store_id is not None:
        if catalog.storage_path == root:
            if not catalog.empty and not store.has_objects:
                # Nothing of the store is here: the folder of a volume not mounted, say.
                # Bound to it, the catalog would see every file deleted (a watcher would
                # record it so, and a repair drop the versions it then finds missing).
                found = "no .horace/store.json and no versions" if store.exists else "no .horace folder"
                raise StoreRefused(
                    f"the catalog {shown} holds the files of the store at {root}, but no store is "
                    f"there ({found}): is the volume it lives on mounted? A catalog that has files "
                    "is not bound to an empty folder. If the store is lost for good, restore it "
                    "from a backup"
                )
            # The catalog was bound to this very root, and the store's own record was
            # never written (a crash between the two writes) or is lost: write it again.
            return Decision(Verdict.COMPLETE, catalog.store_id)
        moved = (
            f"; if it is this store's own (the file in its folder) and the store was moved here and "
            f"lost its .horace/store.json, move it back to {catalog.storage_path}, run any command "
            "there once (the record is written again), then move it here: the move is followed"
            if catalog.place is not None and catalog.place == store.own_catalog_place
            else ""
        )
        raise StoreRefused(
            f"the catalog {shown} belongs to the store at {catalog.storage_path} "
            f"(id {catalog.store_id}), not to {root}: give the storage path it was created with" + moved
        )
    if catalog.empty and store.has_objects:
        raise StoreRefused(
            f"the store at {root} holds versions, but the catalog {shown} is empty: it is not the "
            "store's catalog. Point HORACE_DATABASE_URL (or --database) at the catalog the store "
            "was used with; if that catalog is lost for good, `horace init --adopt` binds this "
            "empty one to the store"
        )
    return Decision(Verdict.BIND)


def check_adoption(store: StoreState, root: str, named: bool) -> None:
    """Refuse an adoption that falls back on the default catalog (no ``--database``, no
    ``HORACE_DATABASE_URL``) of a store whose catalog is another one: the operator who
    forgot the variable would bind an empty catalog, and the history, in the catalog not
    named, would be orphaned and collected. A catalog that takes the lost one's place
    is named."""
    if named or not bound_elsewhere(store):
        return
    recorded = store.catalog_url or store.catalog_place
    raise StoreRefused(
        f"the store at {root} is bound to the catalog {recorded}, and no catalog was named: "
        "point HORACE_DATABASE_URL (or --database) at it. If it is lost for good, "
        "`horace init --adopt --database URL` binds the empty catalog at URL in its place "
        "(the default one too, named: sqlite:///<storage>/.horace/catalog.db)"
    )


def bound_elsewhere(store: StoreState) -> bool:
    """Is the store bound to a catalog other than the SQLite one inside it?"""
    return store.store_id is not None and not _same_place(store, store.own_catalog_place)


def _same_place(store: StoreState, found: str | None) -> bool:
    """Whether the catalog found where its tables are (:attr:`CatalogIdentity.place`) is
    the one the store recorded. A store that recorded none (made before places were) takes
    the first it meets. The SQLite file inside a store moves with it: a store's own file
    recorded, and this store's own file found, is the same catalog. (A PostgreSQL host or
    port may change, as in a failover, and the role: the place is database and schema.)"""
    recorded = store.catalog_place
    if recorded is None or found is None or recorded == found:
        return True
    moved_with_the_store = recorded.startswith("sqlite:") and recorded.endswith("/.horace/catalog.db")
    return moved_with_the_store and found == store.own_catalog_place


def _hint(store: StoreState) -> str:
    if store.catalog_url:
        return f"; the store was created with the catalog {store.catalog_url}"
    return ""
