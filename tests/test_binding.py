"""A store and its catalog belong to each other (SPEC §1): a wrong pair is refused before
anything is read or repaired, and every version stays restorable.

The backend under test (``HORACE_TEST_BACKEND``) is paired against the default SQLite
catalog inside the store, in both directions: on the postgres run that is PostgreSQL
against SQLite and SQLite against PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs
import pytest
import trio
from conftest import BACKEND
from helpers import pg_execute, sha256, write
from processes import serve_process
from soundness import assert_sound, objects_on_disk

from horace.assemble import open_catalog
from horace.backends import CatalogUnwritable, open_backend
from horace.backends.records import CatalogIdentity, Status
from horace.binding import StoreRefused, Verdict, decide
from horace.cli import Exit
from horace.config import Settings
from horace.fsck import fsck
from horace.storage import TMP_PREFIX, Storage, StoreState


def run(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A CLI command in a process of its own, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "horace", *args], env=environment, capture_output=True, text=True, timeout=60
    )


async def _history(settings: Settings, files: Path) -> tuple[str, set[str]]:
    """A file with three versions in a new store; its id and the objects on disk."""
    async with open_catalog(settings, create=True) as catalog:
        for text in ("one", "two", "three"):
            write(files / "user/report.md", text)
            file = (await catalog.register("user/report.md")).file
        assert file.current_version == 3
        return file.id, objects_on_disk(catalog)


async def _lost_history(
    tmp_path: Path, database_url: str, other_database_url: str
) -> tuple[str, set[str], Settings, Settings]:
    """A store with a history (:func:`_history`) in the catalog at *database_url*, with no
    retention and no grace (its collector would take any orphan at once); and settings of
    the same store with the catalog at *other_database_url*, to be adopted in its place."""
    original = Settings(
        storage_path=tmp_path / "root", database_url=database_url, gc_grace=0.0, deleted_retention=0.0
    )
    file_id, history = await _history(original, original.storage_path / "files")
    return file_id, history, original, attrs.evolve(original, database_url=other_database_url)


async def _restorable(settings: Settings, file_id: str, files: Path) -> None:
    async with open_catalog(settings) as catalog:
        for version, text in ((1, "one"), (2, "two")):
            await catalog.restore(file_id, version)
            assert (files / "user/report.md").read_text() == text
        await assert_sound(catalog)


@pytest.mark.parametrize("served_by", ["test_backend", "default_sqlite"])
async def test_a_store_opened_by_the_wrong_catalog_is_refused_and_loses_nothing(
    tmp_path: Path, database_url: str, served_by: str
) -> None:
    served = Settings(
        storage_path=tmp_path / "root",
        database_url=database_url if served_by == "test_backend" else None,
        gc_grace=0.0,  # every orphan counts at once: the harshest case for a wrong catalog
    )
    wrong = attrs.evolve(served, database_url=None if served_by == "test_backend" else database_url)
    files = served.storage_path / "files"
    file_id, objects = await _history(served, files)
    before = {p: p.stat().st_mtime_ns for p in served.storage_path.rglob("*") if p.is_file()}

    for read_only in (False, True):
        with pytest.raises(StoreRefused) as refused:
            async with open_catalog(wrong, read_only=read_only):
                pytest.fail("a wrong pair was opened")
        message = str(refused.value)
        assert str(served.storage_path) in message
        assert ("catalog.db" in message) or ("postgresql://" in message)
    with pytest.raises(StoreRefused):  # creating is no excuse either
        async with open_catalog(wrong, create=True):
            pytest.fail("a wrong pair was opened")

    after = {p: p.stat().st_mtime_ns for p in served.storage_path.rglob("*") if p.is_file()}
    assert after == before, "the refused opening touched the store"
    await _restorable(served, file_id, files)
    async with open_catalog(served) as catalog:
        assert objects <= objects_on_disk(catalog)


async def test_a_new_store_without_files_is_refused_by_another_catalog(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    """No versions to betray it yet: only the identity tells the pair apart."""
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url)
    async with open_catalog(settings, create=True):
        pass
    identity = (settings.storage_path / ".horace/store.json").read_text()
    async with open_backend(other_database_url):  # an existing catalog, empty and unbound
        pass
    for other in (other_database_url, None):
        with pytest.raises(StoreRefused, match="belongs to catalog"):
            async with open_catalog(attrs.evolve(settings, database_url=other), create=True):
                pytest.fail("an empty store was taken over by another catalog")
    assert (settings.storage_path / ".horace/store.json").read_text() == identity


@pytest.mark.parametrize("bound_long_ago", [False, True])
async def test_a_store_record_written_again_is_a_warning_only_when_not_just_bound(
    settings: Settings,
    bound_long_ago: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store's record missing beside a catalog bound to it: a moment after the binding
    it is another process's start that has not written it yet (instances or `horace init`
    started together), said at INFO; later it was lost, a WARNING. Written again either way."""
    import horace.assemble

    async with open_catalog(settings, create=True):
        pass
    record = settings.storage_path / ".horace/store.json"
    store_id = json.loads(record.read_text())["store_id"]
    record.unlink()
    if bound_long_ago:
        monkeypatch.setattr(horace.assemble, "JUST_BOUND_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="horace"):
        async with open_catalog(settings):
            pass
    assert json.loads(record.read_text())["store_id"] == store_id
    said = [(r.levelno, r.getMessage().partition(" its catalog")[2]) for r in caplog.records]
    if bound_long_ago:
        assert (logging.WARNING, "; written again from the catalog's") in said, said
    else:
        assert (logging.WARNING, "; written again from the catalog's") not in said, said
        assert any(level == logging.INFO and "by another process" in what for level, what in said), said


async def test_a_catalog_bound_elsewhere_is_refused(tmp_path: Path, database_url: str) -> None:
    first = Settings(storage_path=tmp_path / "first", database_url=database_url)
    file_id, _ = await _history(first, first.storage_path / "files")
    second = attrs.evolve(first, storage_path=tmp_path / "second")
    with pytest.raises(StoreRefused, match="belongs to the store at"):
        async with open_catalog(second, create=True):
            pytest.fail("a catalog was shared by two stores")
    await _restorable(first, file_id, first.storage_path / "files")


async def test_a_copy_of_a_store_is_refused_by_the_catalog_it_would_share(
    tmp_path: Path, database_url: str
) -> None:
    """A store copied (`cp -a`, a backup restored elsewhere) has the original's identity.
    With the catalog outside the store (PostgreSQL, a file elsewhere), the two would share
    it, each recording the other's files as deleted or changed: the copy is refused, for
    reading too, while the original is at the path the catalog recorded; the original
    moved away (the copy was its move), the copy opens. The store reached another way (a
    symlink) is itself, and a copy with the SQLite catalog inside it has its own."""
    live = Settings(storage_path=tmp_path / "live", database_url=database_url)
    file_id, history = await _history(live, live.storage_path / "files")
    copy = tmp_path / "copy"
    shutil.copytree(live.storage_path, copy, symlinks=True)
    (copy / "files/user/report.md").write_text("the copy's own draft")
    (copy / "files/user/report.md").with_name("new.md").write_text("only in the copy")
    copied = attrs.evolve(live, storage_path=copy)
    for read_only in (False, True):
        with pytest.raises(StoreRefused, match=f"is a copy of the store at {live.storage_path}"):
            async with open_catalog(copied, read_only=read_only):
                pytest.fail("a copy of the store opened the catalog it shares with the original")
    async with open_catalog(live) as catalog:
        assert [f.file_path for f in await catalog.backend.all_files()] == ["user/report.md"]
        assert (await catalog.file(file_id)).current_version == 3
        assert (await catalog.scan()).unchanged == 1
    (tmp_path / "alias").symlink_to(live.storage_path, target_is_directory=True)
    async with open_catalog(attrs.evolve(live, storage_path=tmp_path / "alias")):
        pass
    own = Settings(storage_path=tmp_path / "own")
    await _history(own, own.storage_path / "files")
    shutil.copytree(own.storage_path, tmp_path / "own-copy", symlinks=True)
    async with open_catalog(attrs.evolve(own, storage_path=tmp_path / "own-copy")):
        pass
    live.storage_path.rename(tmp_path / "retired")
    async with open_catalog(copied) as catalog:
        assert (await catalog.file(file_id)).current_version == 3
        assert objects_on_disk(catalog) == history
        assert (await catalog.backend.identity()).storage_path == str(copy)  # its new place
    await _restorable(copied, file_id, copy / "files")
    # The old folder back where it was: now it is the copy, refused.
    (tmp_path / "retired").rename(live.storage_path)
    with pytest.raises(StoreRefused, match=f"is a copy of the store at {copy}"):
        async with open_catalog(live):
            pytest.fail("the store's old folder opened the catalog of the store that moved")


async def test_two_catalogs_of_two_stores_do_not_mix(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    a = Settings(storage_path=tmp_path / "a", database_url=database_url)
    b = Settings(storage_path=tmp_path / "b", database_url=other_database_url)
    await _history(a, a.storage_path / "files")
    await _history(b, b.storage_path / "files")
    with pytest.raises(StoreRefused, match="do not belong together"):
        async with open_catalog(attrs.evolve(a, database_url=other_database_url)):
            pytest.fail("opened")


async def test_a_store_from_before_identities_is_bound_on_first_opening(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url)
    file_id, _ = await _history(settings, settings.storage_path / "files")
    identity = settings.storage_path / ".horace/store.json"
    store_id = json.loads(identity.read_text())["store_id"]
    # Make it a pair from before identities: no store.json, no horace_store row.
    identity.unlink()
    await _forget_binding(settings.catalog_url)
    # Read-only commands use it as it is; the first writing opening binds it anew.
    async with open_catalog(settings, read_only=True) as catalog:
        assert (await catalog.get_info(file_id=file_id)).file.current_version == 3
    assert not identity.exists()
    async with open_catalog(settings):
        pass
    assert json.loads(identity.read_text())["store_id"] not in (None, store_id)
    # ...and after that, the default catalog is refused as before.
    with pytest.raises(StoreRefused):
        async with open_catalog(attrs.evolve(settings, database_url=None)):
            pass


async def _forget_binding(url: str) -> None:
    """Remove the catalog's record of its store, as in a catalog from before identities."""
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        conn.execute("DELETE FROM horace_store")
        conn.commit()
        conn.close()
        return
    import asyncpg
    import trio_asyncio

    async def forget() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DELETE FROM horace_store")
        finally:
            await conn.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(forget)()


async def test_an_empty_catalog_never_adopts_a_store_with_versions_unasked(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url, gc_grace=0.0)
    _, objects = await _history(settings, settings.storage_path / "files")
    (settings.storage_path / ".horace/store.json").unlink()  # as a store from before identities
    lost = attrs.evolve(settings, database_url=other_database_url)
    with pytest.raises(StoreRefused, match="holds versions"):
        async with open_catalog(lost, create=True):  # as `horace serve` would
            pass
    # Asked to (`horace init --adopt`), it binds, and deletes nothing on the way.
    async with open_catalog(lost, create=True, adopt=True) as catalog:
        assert objects <= objects_on_disk(catalog)
        report = await fsck(catalog)
        assert report.findings == () and set(report.orphans) == objects
        assert objects <= objects_on_disk(catalog)
    # The adopted store has a new identity: the old catalog, should it turn up, is refused
    # (its collector would delete what the new catalog refers to).
    with pytest.raises(StoreRefused, match="do not belong together"):
        async with open_catalog(settings):
            pass


async def test_the_history_a_lost_catalog_leaves_is_never_collected_unasked(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    """Adopted in place of a lost catalog, a new one refers to none of the store's
    objects: they are the lost catalog's history, and the catalog records when it was
    bound. The collector (purge, fsck --repair) never takes what was written before, with
    no retention and no grace left, also once the store's own record is lost and written
    again from the catalog's; what the new catalog lets go of later goes as ever;
    `--forget-adopted` collects the rest."""
    _, history, _, adopted = await _lost_history(tmp_path, database_url, other_database_url)
    files = adopted.storage_path / "files"
    async with open_catalog(adopted, create=True, adopt=True) as catalog:
        write(files / "user/extra.txt", "after")
        extra = (await catalog.register("user/extra.txt")).file
        await catalog.delete(extra.id)
        await catalog.purge()  # the deleted file's rows and content go, the history stays
        report = await fsck(catalog, repair=True)
        assert report.adopted == len(history) == len(report.orphans), report
        assert history <= objects_on_disk(catalog) and sha256("after") not in objects_on_disk(catalog)
    (adopted.storage_path / ".horace/store.json").unlink()  # lost: written again from the catalog's
    async with open_catalog(adopted) as catalog:
        await catalog.purge()
        report = await fsck(catalog, repair=True)
        assert report.adopted == len(history) == len(report.orphans), report
        assert history <= objects_on_disk(catalog)
        forgotten = await fsck(catalog, repair=True, forget_adopted=True)
        assert {f.subject for f in forgotten.findings if f.kind == "orphan_object"} == history
        assert not history & objects_on_disk(catalog) and forgotten.adopted == 0


async def test_a_lost_catalog_found_again_is_adopted_back_with_its_history(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    """The catalog an adoption replaced, found again (bound to the store's old identity,
    at this path), is refused as before, saying that `--adopt` binds it; adopted, its
    versions restore from the objects the meantime's collector kept, and the catalog of
    the meantime is refused, what it wrote kept on disk."""
    file_id, history, original, meantime = await _lost_history(tmp_path, database_url, other_database_url)
    files = original.storage_path / "files"
    async with open_catalog(meantime, create=True, adopt=True) as catalog:
        write(files / "user/meantime.md", "written meanwhile")
        await catalog.register("user/meantime.md")
        await catalog.purge()  # no retention, no grace: the old history is kept all the same
    with pytest.raises(StoreRefused, match=r"bound to the store at this path before .* --adopt` binds it"):
        async with open_catalog(original):
            pass
    async with open_catalog(original, create=True, adopt=True) as catalog:
        await catalog.purge()
        assert history | {sha256("written meanwhile")} <= objects_on_disk(catalog)
    await _restorable(original, file_id, files)
    with pytest.raises(StoreRefused, match="do not belong together"):
        async with open_catalog(meantime):
            pass


@pytest.mark.parametrize("with_versions", [False, True])
async def test_a_lost_store_record_is_written_again_from_its_catalog(
    tmp_path: Path, database_url: str, with_versions: bool
) -> None:
    """Cut between the two writes of a binding, or lost later: the catalog bound to this
    very path gives the store its record back."""
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url)
    if with_versions:
        await _history(settings, settings.storage_path / "files")
    async with open_catalog(settings, create=True):
        pass
    identity = settings.storage_path / ".horace/store.json"
    store_id = json.loads(identity.read_text())["store_id"]
    identity.unlink()  # the catalog row was written, the store's file never was
    async with open_catalog(settings):
        pass
    assert json.loads(identity.read_text())["store_id"] == store_id


async def test_names_in_horaces_temp_form_are_never_touched(tmp_path: Path, database_url: str) -> None:
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url, gc_grace=0.0)
    files = settings.storage_path / "files"
    # A user's file that looks like a temp file of a dead process, beside a normal one.
    dead = f"{TMP_PREFIX}stage.{os.uname().nodename.replace('.', '_')}.1.abcdef123456"
    lookalikes = [write(files / "user" / name, f"mine: {name}") for name in (dead, ".horace-tmp-report.md")]
    write(files / "user/real.md", "real")
    async with open_catalog(settings, create=True) as catalog:
        with pytest.raises(Exception) as refused:
            await catalog.register("user/.horace-tmp-report.md")
        assert getattr(refused.value, "code", None) is not None and refused.value.code.value == "INVALID_PATH"
        report = await catalog.scan()
        assert report.registered == 1 and len(report.skipped) == 2, report
        assert all("reserved" in why for why in report.skipped)
        await fsck(catalog, repair=True, deep=True)
    async with open_catalog(settings):  # the start-up fsck too
        pass
    for path in lookalikes:
        assert path.read_text() == f"mine: {path.name}"


def test_the_cli_refuses_the_wrong_catalog_and_history_survives(tmp_path: Path, database_url: str) -> None:
    """The scenario as an operator met it: a store served with HORACE_DATABASE_URL, then a
    CLI command without it."""
    root = tmp_path / "horace-data"
    write(root / "files/user/notes.md", "first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    right = {
        **env,
        "HORACE_STORAGE_PATH": str(root),
        "HORACE_DATABASE_URL": database_url,
        "HORACE_GC_GRACE": "0",
    }
    wrong = {**env, "HORACE_STORAGE_PATH": str(root), "HORACE_GC_GRACE": "0"}

    assert run(right, "init").returncode == 0
    assert run(right, "register", "user/notes.md").returncode == 0
    write(root / "files/user/notes.md", "second")
    assert run(right, "update", "user/notes.md").returncode == 0
    for args in (["search"], ["fsck", "--repair"], ["scan"], ["register", "user/notes.md"]):
        done = run(wrong, *args)
        assert done.returncode == Exit.STORE, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and str(root) in done.stderr
        # The catalog it was made with is named; adopting a new one is not offered in passing.
        assert "point HORACE_DATABASE_URL (or --database) at that catalog" in done.stderr, done.stderr
        assert "adopt" not in done.stderr
    # Nor taken: the default catalog is not adopted in place of the one the store names.
    adopted = run(wrong, "init", "--adopt")
    assert adopted.returncode == Exit.STORE, adopted.stderr
    assert "no catalog was named" in adopted.stderr and "--adopt --database URL" in adopted.stderr
    assert not (root / ".horace/catalog.db").exists()
    done = run(right, "restore", "user/notes.md", "v1")  # as `info --versions` shows it
    assert done.returncode == 0, done.stderr
    assert (root / "files/user/notes.md").read_text() == "first"
    assert sha256("first") in {p.name for p in (root / ".horace/objects").rglob("*")}


@pytest.mark.parametrize("left", ["nothing", "an empty .horace"])
async def test_a_catalog_with_files_is_not_bound_to_an_empty_folder_at_its_path(
    tmp_path: Path, database_url: str, left: str
) -> None:
    """The store's volume not mounted: its mount point, an empty folder at the path the
    catalog was bound to. Bound to it, every file would look deleted (a watcher records
    them so). It is refused, and left as it was; the store, back in place, opens whole."""
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url)
    file_id, objects = await _history(settings, settings.storage_path / "files")
    mounted = tmp_path / "volume"
    settings.storage_path.rename(mounted)
    settings.storage_path.mkdir()  # the mount point
    if left == "an empty .horace":
        (settings.storage_path / ".horace/objects").mkdir(parents=True)
    before = sorted(p.relative_to(settings.storage_path) for p in settings.storage_path.rglob("*"))
    with pytest.raises(StoreRefused, match="is the volume it lives on mounted"):
        async with open_catalog(settings, create=True):  # as `horace serve` would
            pass
    assert sorted(p.relative_to(settings.storage_path) for p in settings.storage_path.rglob("*")) == before
    shutil.rmtree(settings.storage_path)
    mounted.rename(settings.storage_path)
    async with open_catalog(settings) as catalog:
        assert (await catalog.get_info(file_id=file_id)).file.status is Status.ACTIVE
        assert objects <= objects_on_disk(catalog)


async def test_a_copy_of_the_catalog_is_refused_until_adopted(tmp_path: Path) -> None:
    """A catalog restored beside its original (another file, another database) carries the
    store's identity: served both, each would collect what only the other refers to. The
    copy is refused, and once adopted the original is."""
    original = Settings(
        storage_path=tmp_path / "root", database_url=f"sqlite://{tmp_path}/a.db", gc_grace=0.0
    )
    file_id, objects = await _history(original, original.storage_path / "files")
    copy = attrs.evolve(original, database_url=f"sqlite://{tmp_path}/b.db")
    with sqlite3.connect(tmp_path / "a.db") as source, sqlite3.connect(tmp_path / "b.db") as target:
        source.backup(target)  # as a restored backup would be
    for read_only in (False, True):
        with pytest.raises(StoreRefused, match="is a copy of it"):
            async with open_catalog(copy, read_only=read_only):
                pass
    async with open_catalog(original) as catalog:  # the original still opens
        assert objects <= objects_on_disk(catalog)
    async with open_catalog(copy, create=True, adopt=True) as catalog:  # `horace init --adopt`
        assert (await catalog.get_info(file_id=file_id)).file.current_version == 3
        # (What was written before it is kept from its collector: versions newer than the
        # copy are the original's alone.)
        assert catalog.bound_at is not None and catalog.bound_at <= time.time()
    with pytest.raises(StoreRefused, match="do not belong together"):
        async with open_catalog(original):
            pass
    await _restorable(copy, file_id, copy.storage_path / "files")


async def test_a_catalog_still_open_when_another_is_adopted_deletes_nothing(tmp_path: Path) -> None:
    """A server still running on the original catalog while a copy of it is adopted
    (`horace init --adopt`): its purge, collector and repair would delete what only the
    adopted catalog refers to. Each is refused before it deletes anything, and every
    version stays restorable through the adopted catalog."""
    original = Settings(
        storage_path=tmp_path / "root",
        database_url=f"sqlite://{tmp_path}/a.db",
        gc_grace=0.0,
        deleted_retention=0.0,
    )
    files = original.storage_path / "files"
    file_id, objects = await _history(original, files)
    copy = attrs.evolve(original, database_url=f"sqlite://{tmp_path}/b.db")
    with sqlite3.connect(tmp_path / "a.db") as source, sqlite3.connect(tmp_path / "b.db") as target:
        source.backup(target)
    async with open_catalog(original) as running:  # the server that was not stopped
        async with open_catalog(copy, create=True, adopt=True):
            pass
        await running.delete(file_id)  # through the server that was not stopped: its purge
        for work in (running.purge, running.collect_orphans, partial(fsck, running, repair=True)):
            with pytest.raises(StoreRefused, match="no longer to this one"):
                await work()
        with pytest.raises(StoreRefused, match="no longer to this one"):
            await running.collect(sorted(objects))
        assert objects <= objects_on_disk(running)
    write(files / "user/report.md", "three")  # (the running catalog's delete took it away)
    await _restorable(copy, file_id, files)


@pytest.mark.parametrize("now", ["unbound", "bound elsewhere"])
async def test_a_catalog_whose_binding_changed_under_a_running_process_deletes_nothing(
    settings: Settings, now: str
) -> None:
    """The other side of the binding: the catalog's record of its store removed, or made
    another store's, while a process runs on it (another database put in its place). Its
    purge, collector and repair are refused before they delete anything, as is the store
    check's look every second (which stops a server)."""
    settings = attrs.evolve(settings, deleted_retention=0.0)
    files = settings.storage_path / "files"
    file_id, objects = await _history(settings, files)
    async with open_catalog(settings) as running:
        await running.ensure_bound()
        await running.delete(file_id)
        assert running.store_id is not None
        if now == "unbound":
            await _forget_binding(settings.catalog_url)
        else:
            assert await running.backend.rebind(running.store_id, str(uuid.uuid4()), "/else", datetime.now())
        for work in (
            running.ensure_bound,
            running.purge,
            running.collect_orphans,
            partial(fsck, running, repair=True),
        ):
            with pytest.raises(StoreRefused, match="that this process opened it with"):
                await work()
        with pytest.raises(StoreRefused, match="that this process opened it with"):
            await running.collect(sorted(objects))
        assert objects <= objects_on_disk(running)


@pytest.mark.skipif(BACKEND != "postgres", reason="a database (schema) put in place of another: PostgreSQL's")
async def test_an_empty_catalog_put_in_place_of_a_running_ones_database_is_refused(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    """The operator's case: the catalog's database renamed away under running servers, an
    empty one made under its name and given Horace's tables (`horace migrate`). The running
    process's connections now find the empty one: were it served, every file would be
    NOT_CATALOGED, new versions recorded there, and the collector would find no object
    referred to. Its looks refuse it instead, and nothing is deleted."""
    settings = Settings(
        storage_path=tmp_path / "root", database_url=database_url, gc_grace=0.0, deleted_retention=0.0
    )
    file_id, objects = await _history(settings, settings.storage_path / "files")
    async with open_backend(other_database_url):  # (migrated: Horace's tables, no binding)
        pass
    old = dict(parse_qsl(urlsplit(database_url).query))["search_path"]
    new = dict(parse_qsl(urlsplit(other_database_url).query))["search_path"]
    async with open_catalog(settings) as running:
        await running.delete(file_id)
        swap = [f"ALTER SCHEMA {old} RENAME TO {old}_moved", f"ALTER SCHEMA {new} RENAME TO {old}"]
        await trio.to_thread.run_sync(pg_execute, *swap)
        try:
            for work in (running.ensure_bound, running.purge, running.collect_orphans):
                with pytest.raises(StoreRefused, match="bound to no store now"):
                    await work()
            assert objects <= objects_on_disk(running)
        finally:  # (each fixture drops the schema of its name)
            back = [f"ALTER SCHEMA {old} RENAME TO {new}", f"ALTER SCHEMA {old}_moved RENAME TO {old}"]
            await trio.to_thread.run_sync(pg_execute, *back)


@pytest.mark.parametrize(
    ("recorded", "found", "same"),
    [
        ("postgresql:horace/public", "postgresql:horace/public", True),  # any host, port or role
        ("postgresql:horace/public", "postgresql:horace_restored/public", False),
        ("postgresql:horace/public", "postgresql:horace/s2", False),  # a schema, however named
        ("sqlite:/old/root/.horace/catalog.db", "sqlite:/srv/root/.horace/catalog.db", True),  # moved
        ("sqlite:/srv/root/.horace/catalog.db", "sqlite:/x/copy.db", False),  # its own file, copied
        ("sqlite:/srv/root/.horace/catalog.db", "sqlite:/srv/other/.horace/catalog.db", False),
        ("sqlite:/var/lib/a.db", "sqlite:/var/lib/b.db", False),
        ("sqlite:/var/lib/a.db", "sqlite:/srv/root/.horace/catalog.db", False),
        (None, "postgresql:horace/public", True),  # recorded before places were: the first met
    ],
)
def test_what_makes_a_catalog_a_copy(recorded: str | None, found: str, same: bool) -> None:
    url = "postgresql://h@db/x"  # (only shown: the places decide)
    store = StoreState(True, "id-1", url, None, recorded, "sqlite:/srv/root/.horace/catalog.db")
    catalog = CatalogIdentity("id-1", "/srv/root", empty=False, place=found)
    if same:
        assert decide(store, catalog, "/srv/root", url).verdict is Verdict.MATCH
    else:
        with pytest.raises(StoreRefused, match="is a copy of it"):
            decide(store, catalog, "/srv/root", url)
        assert decide(store, catalog, "/srv/root", url, adopt=True).verdict is Verdict.REBIND


async def test_the_catalog_under_another_spelling_is_itself(tmp_path: Path) -> None:
    """Another spelling of the same catalog (.., //, a symlinked folder) is no copy."""
    (tmp_path / "ext").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "ext", target_is_directory=True)
    settings = Settings(storage_path=tmp_path / "root", database_url=f"sqlite://{tmp_path}/ext/cat.db")
    async with open_catalog(settings, create=True):
        pass
    for spelling in (f"{tmp_path}/ext/../ext/cat.db", f"{tmp_path}//ext/cat.db", f"{tmp_path}/link/cat.db"):
        async with open_catalog(attrs.evolve(settings, database_url=f"sqlite://{spelling}")):
            pass


async def test_a_copy_of_the_stores_own_catalog_is_refused(tmp_path: Path) -> None:
    settings = Settings(storage_path=tmp_path / "root")
    async with open_catalog(settings, create=True):
        pass
    copy = tmp_path / "copy.db"
    with (
        sqlite3.connect(settings.storage_path / ".horace/catalog.db") as source,
        sqlite3.connect(copy) as target,
    ):
        source.backup(target)
    with pytest.raises(StoreRefused, match="is a copy of it"):
        async with open_catalog(attrs.evolve(settings, database_url=f"sqlite://{copy}")):
            pass
    moved = tmp_path / "moved"
    settings.storage_path.rename(moved)  # the store with its own catalog: still its own
    async with open_catalog(attrs.evolve(settings, storage_path=moved)):
        pass


async def test_a_store_whose_catalog_refuses_it_is_not_left_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`horace init` with a catalog that refuses the schema (a role without the right to
    make tables): no .horace folder may be left, or the next command would take it for a
    store whose catalog is lost, and point to --adopt."""
    from horace.backends.sqlite import SqliteBackend

    async def refused(self: SqliteBackend) -> int:
        raise CatalogUnwritable("permission denied for schema public")

    monkeypatch.setattr(SqliteBackend, "migrate", refused)
    root = tmp_path / "root"
    write(root / "files/user/mine.txt", "the user's")  # a folder with files in it already
    (root / "files/gates").mkdir()  # and an empty one of the layout's, the user's too
    settings = Settings(storage_path=root, database_url=f"sqlite://{tmp_path}/catalog.db")
    with pytest.raises(CatalogUnwritable):
        async with open_catalog(settings, create=True):
            pass
    assert not (root / ".horace").exists()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "files",
        "files/gates",
        "files/user",
        "files/user/mine.txt",
    ]
    nowhere = attrs.evolve(settings, storage_path=tmp_path / "new" / "root")  # no folder there yet
    with pytest.raises(CatalogUnwritable):
        async with open_catalog(nowhere, create=True):
            pass
    assert not (tmp_path / "new" / "root").exists()
    (root / ".horace").mkdir()  # as an init of an earlier Horace, or another one, left it
    with pytest.raises(StoreRefused, match=r"never bound to a catalog .*`horace init` finishes it"):
        async with open_catalog(attrs.evolve(settings, database_url=None)):  # `horace search`
            pass
    (root / ".horace").rmdir()
    monkeypatch.undo()
    async with open_catalog(settings, create=True) as catalog:  # a plain init then works
        assert (await catalog.register("user/mine.txt")).file.current_version == 1


async def test_a_first_start_cut_short_before_its_catalog_had_tables_is_finished_by_init_only(
    settings: Settings,
) -> None:
    """A Ctrl-C as a first start made the catalog (a SQLite file, an empty PostgreSQL
    schema) but no table yet: a command that reads would meet tables there are not, and
    one that does not create a store would make one. Both refuse, saying what finishes it."""
    root = settings.storage_path
    (root / ".horace").mkdir(parents=True)
    unfinished = settings
    if settings.database_url.startswith("sqlite:"):
        unfinished = attrs.evolve(settings, database_url=None)  # the store's own file, made
        sqlite3.connect(unfinished.default_catalog_path).close()
    for read_only in (True, False):  # (`horace info`, `horace scan`)
        with pytest.raises(StoreRefused, match=r"holds no tables yet, .*`horace init` finishes it"):
            async with open_catalog(unfinished, read_only=read_only):
                pass
    assert sorted(p.name for p in (root / ".horace").iterdir()) in ([], ["catalog.db"])
    async with open_catalog(unfinished, create=True) as catalog:  # `horace init`, `serve`
        write(root / "files/user/a.txt", "a")
        assert (await catalog.register("user/a.txt")).file.current_version == 1
    async with open_catalog(unfinished, read_only=True) as catalog:
        assert (await catalog.get_info(file_path="user/a.txt")).file.current_version == 1


@pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL schemas and URL spellings")
async def test_a_copy_of_a_postgresql_catalog_in_another_schema_is_refused(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    """The place is what the database says (database and schema), whatever the URL's
    spelling: a copy in another schema is refused, however its search_path is given; the
    same schema under another spelling is the same catalog."""
    settings = Settings(storage_path=tmp_path / "root", database_url=database_url)
    async with open_catalog(settings, create=True):
        pass
    source = dict(parse_qsl(urlsplit(database_url).query))["search_path"]
    target = dict(parse_qsl(urlsplit(other_database_url).query))["search_path"]
    copying = [f"CREATE TABLE {target}.{t} AS TABLE {source}.{t}" for t in ("horace_files", "horace_store")]
    await trio.to_thread.run_sync(pg_execute, *copying)  # what identity() reads: copy enough
    base = urlunsplit(urlsplit(database_url)._replace(query=""))
    for copy in (
        other_database_url,
        f"{base}?SEARCH_PATH={target}",
        f"{base}?options=-csearch_path%3D{target}",
    ):
        with pytest.raises(StoreRefused, match="is a copy of it"):
            async with open_catalog(attrs.evolve(settings, database_url=copy)):
                pass
    async with open_catalog(attrs.evolve(settings, database_url=f"{base}?SEARCH_PATH={source}")):
        pass


def test_an_empty_catalog_is_not_adopted_beside_the_stores_own(tmp_path: Path) -> None:
    """`horace init --adopt --database OTHER` (a mistyped database) on a store whose own
    SQLite catalog is there, bound to it and served: refused (exit 5), the server goes on
    and the history stays whole. Once that catalog's file is moved out (retired, or lost),
    the same command adopts the empty one."""
    root = tmp_path / "horace-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    own = {**env, "HORACE_STORAGE_PATH": str(root)}
    other = f"sqlite://{tmp_path}/other.db"
    assert run(own, "init").returncode == 0
    for text in ("first", "second"):
        write(root / "files/user/notes.md", text)
        assert run(own, "register", "user/notes.md").returncode == 0
    with serve_process(own) as (server, _):
        done = run(own, "init", "--adopt", "--database", other)
        assert done.returncode == Exit.STORE, done.stderr
        assert "STORE_REFUSED" in done.stderr and "it is not lost" in done.stderr, done.stderr
        time.sleep(1.5)  # (the store check looks every second)
        assert server.poll() is None, "the server stopped"
    info = run(own, "--json", "info", "user/notes.md", "--versions")
    assert info.returncode == 0, info.stderr
    assert [v["version"] for v in json.loads(info.stdout)["versions"]] == [2, 1]
    (root / ".horace/catalog.db").rename(tmp_path / "retired.db")
    done = run(own, "init", "--adopt", "--database", other)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("own", [b"", b"not a database " * 100], ids=["empty", "garbage"])
def test_an_empty_catalog_is_adopted_beside_an_own_catalog_that_is_none(tmp_path: Path, own: bytes) -> None:
    """The store's own catalog file made empty, or garbage: it is no catalog, and adopting
    another in its place goes through, leaving that file as it is."""
    root = tmp_path / "horace-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    store = {**env, "HORACE_STORAGE_PATH": str(root)}
    assert run(store, "init").returncode == 0
    catalog = root / ".horace/catalog.db"
    for leftover in (catalog, *root.glob(".horace/catalog.db-*")):
        leftover.unlink()
    catalog.write_bytes(own)
    done = run(store, "init", "--adopt", "--database", f"sqlite://{tmp_path}/other.db")
    assert done.returncode == 0, done.stderr
    assert catalog.read_bytes() == own


def test_a_server_whose_store_another_catalog_adopted_stops(tmp_path: Path) -> None:
    """`horace serve` on the original catalog, left running while a copy of it is adopted:
    at its next purge it stops with STORE_REFUSED (exit 5), having deleted nothing, and the
    adopted catalog keeps every version."""
    root = tmp_path / "horace-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}
    original = {**env, "HORACE_STORAGE_PATH": str(root), "HORACE_DATABASE_URL": f"sqlite://{tmp_path}/a.db"}
    adopted = {**original, "HORACE_DATABASE_URL": f"sqlite://{tmp_path}/b.db"}

    assert run(original, "init").returncode == 0
    for text in ("first", "second"):
        write(root / "files/user/notes.md", text)
        assert run(original, "register", "user/notes.md").returncode == 0
    purging = {
        **original,
        "HORACE_PURGE_INTERVAL": "1s",
        "HORACE_GC_GRACE": "0",
        "HORACE_DELETED_RETENTION": "0s",
    }
    with serve_process(purging, stderr=subprocess.PIPE) as (server, _):
        with sqlite3.connect(tmp_path / "a.db") as source, sqlite3.connect(tmp_path / "b.db") as target:
            source.backup(target)
        done = run(adopted, "init", "--adopt")
        assert done.returncode == 0, done.stderr
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == Exit.STORE, stderr
    assert "STORE_REFUSED" in stderr and "no longer to this one" in stderr, stderr
    info = run(adopted, "--json", "info", "user/notes.md", "--versions")
    assert info.returncode == 0, info.stderr
    versions = json.loads(info.stdout)["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert {sha256("first"), sha256("second")} <= {p.name for p in (root / ".horace/objects").rglob("*")}


async def test_a_new_catalog_bound_meanwhile_to_another_store_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two new stores started at once on one new catalog: the one whose binding comes
    second finds the other's there, and is refused (it bound the catalog too, and each
    recorded the other's files as missing); the folders it made are taken back."""
    from horace.backends.postgres import PostgresBackend
    from horace.backends.sqlite import SqliteBackend

    backend_class: Any = PostgresBackend if BACKEND == "postgres" else SqliteBackend
    real_bind = backend_class.bind

    async def beaten(self: Any, store_id: str, storage_path: str, at: datetime) -> str:
        await real_bind(self, str(uuid.uuid4()), "/the/other/store", at)  # another process's, first
        return await real_bind(self, store_id, storage_path, at)

    monkeypatch.setattr(backend_class, "bind", beaten)
    with pytest.raises(StoreRefused, match="bound to the store at /the/other/store by another process"):
        async with open_catalog(settings, create=True):
            pass
    assert not settings.storage_path.exists()


def test_a_failed_first_start_leaves_a_store_another_instance_bound(tmp_path: Path) -> None:
    """Two instances create one store at once; one's catalog fails before it binds (its
    connection cut) and it takes back the folders it made: not once the other has bound
    the store, whose folders it is using."""
    storage = Storage(tmp_path / "root")
    present = storage.layout_present()
    storage.ensure_layout()
    storage.write_identity("5e1f", "sqlite:///elsewhere.db", None)  # the other instance
    storage.undo_layout(present)
    assert storage.tmp.is_dir() and storage.files.is_dir() and (storage.objects / "00").is_dir()
    storage.identity_file.unlink()  # nobody bound it: taken back, as before
    storage.undo_layout(present)
    assert not storage.private.exists() and not storage.root.exists()


async def test_a_sqlite_catalog_replaced_under_a_running_process_stops_it(tmp_path: Path) -> None:
    """A backup restored over the catalog while Horace runs (a new file put in its place):
    the process holds the file it opened, and what it would record there would be lost;
    it writes nothing more, and says so. Started again, the catalog in place is used."""
    settings = Settings(storage_path=tmp_path / "root", database_url=None)
    files = settings.storage_path / "files"
    async with open_catalog(settings, create=True) as catalog:
        write(files / "user/a.txt", "one")
        await catalog.register("user/a.txt")
        catalog_file = settings.storage_path / ".horace/catalog.db"
        backup = tmp_path / "backup.db"
        with (
            contextlib.closing(sqlite3.connect(catalog_file)) as live,
            contextlib.closing(sqlite3.connect(backup)) as copy,
        ):
            live.backup(copy)
        os.replace(backup, catalog_file)
        with pytest.raises(StoreRefused, match="another file was put in place of the catalog"):
            await catalog.ensure_bound()
        write(files / "user/b.txt", "two")
        with pytest.raises(StoreRefused):  # (each write that could lose anything looks first)
            await catalog.purge()
    async with open_catalog(settings) as catalog:
        await catalog.ensure_bound()
        assert (await catalog.register("user/b.txt")).version_created
