"""Watch mode end to end: real writes on a real directory, a running Horace watching it.

Each test writes the way programs write (in place, temp-then-rename, appends, slow large
writes, bursts of saves, renames, deletes, new folders, symlinks, editor temps) and then
polls the catalog until it has caught up, asserting the files and their versions: only
states a writer declared complete are ever versioned. A task hammers the server over MCP
throughout (``watched``), and every one of its calls must succeed.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import mmap
import os
import shutil
import stat
import sys
import threading
import time
import types
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import inotify_simple
import pytest
import trio
from helpers import sha256, write
from mcp_client import McpClient, connect

import horace.storage
import horace.tasks
import horace.watch
from horace.assemble import open_catalog
from horace.backends.protocol import BackendUnavailable
from horace.backends.records import FileChanges, Status, VersionRecord
from horace.binding import StoreRefused
from horace.catalog import Catalog
from horace.changefeed import Batch, InotifyFeed, WatchFailed, open_change_feed
from horace.config import Settings
from horace.fsck import fsck
from horace.model import ErrorCode, HoraceError
from horace.server.serving import serve
from horace.storage import Storage
from horace.supervise import supervise, the_failure
from horace.testing import RunningHorace, run_horace
from horace.watch import HELD_OPEN_SETTLES, Watcher

SETTLE = 0.2
TIMEOUT = 20.0
WORKERS = Path(__file__).parent / "workers"
T = TypeVar("T")


def watching(settings: Settings, **changes: Any) -> Settings:
    return attrs.evolve(
        settings,
        host="127.0.0.1",
        port=0,
        watch=True,
        watch_settle=SETTLE,
        conversations=False,
        **changes,
    )


async def eventually(check: Callable[[], Awaitable[T]], what: str, within: float = TIMEOUT) -> T:
    """Poll *check* until it returns something truthy; fail with *what* after *within* s."""
    last: Any = None
    with trio.move_on_after(within):
        while True:
            last = await check()
            if last:
                return last  # type: ignore[no-any-return]
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")


async def health(running: RunningHorace) -> dict[str, Any]:
    return (await running.server.health())[1]


async def wait_watching(running: RunningHorace) -> None:
    async def ready() -> bool:
        return bool((await health(running))["watcher"]["watching"])

    await eventually(ready, "the watch to be in place")


async def quiet(running: RunningHorace, periods: int = 4) -> None:
    """Wait until the watcher has nothing pending for a few settle periods in a row."""
    streak = 0
    with trio.fail_after(TIMEOUT):
        while streak < periods:
            await trio.sleep(SETTLE)
            streak = streak + 1 if (await health(running))["watcher"]["pending"] == 0 else 0


@attrs.define
class Hammer:
    """Clients calling read tools in a loop while the files change; all calls must succeed."""

    client: McpClient
    file_id: str
    calls: int = 0
    failures: list[Any] = attrs.field(factory=list)

    async def run(self) -> None:
        while True:
            for name, arguments in (
                ("horace_search_files", {"limit": 20}),
                ("horace_search_files", {"path": "user/*", "status": "active", "limit": 5}),
                ("horace_get_file_info", {"file_id": self.file_id, "include_versions": True}),
            ):
                reply = await self.client.request("tools/call", {"name": name, "arguments": arguments})
                self.calls += 1
                if "result" not in reply or reply["result"].get("isError"):
                    self.failures.append((name, reply))
            await trio.sleep(0.01)


@attrs.frozen
class Watched:
    running: RunningHorace
    catalog: Catalog
    client: McpClient

    @property
    def files(self) -> Path:
        return self.running.files

    async def record(self, rel: str) -> Any:
        return await self.catalog.backend.file_by_path(rel)

    async def versions(self, rel: str) -> list[VersionRecord]:
        """Oldest first."""
        found = await self.record(rel)
        assert found is not None, rel
        return sorted(await self.catalog.backend.versions(found.id), key=lambda v: v.version)

    async def wait_checksum(self, rel: str, checksum: str, status: Status = Status.ACTIVE) -> Any:
        async def matches() -> Any:
            found = await self.record(rel)
            return found if found and found.checksum == checksum and found.status is status else None

        return await eventually(matches, f"{rel} catalogued with {checksum[:12]} ({status.value})")

    async def two_versions(self, rel: str, first: str, second: str) -> Any:
        """*rel* written with *first*, then *second*, each waited for: its record."""
        write(self.files / rel, first)
        await self.wait_checksum(rel, sha256(first))
        write(self.files / rel, second)
        return await self.wait_checksum(rel, sha256(second))

    def object_bytes(self, checksum: str) -> bytes:
        return self.catalog.storage.object_path(checksum).read_bytes()

    async def catalogued_paths(self) -> set[str]:
        return {f.file_path for f in await self.catalog.backend.all_files()}


@pytest.fixture
async def watched(settings: Settings) -> AsyncIterator[Watched]:
    """A Horace in watch mode, its watch in place, a client hammering it throughout."""
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        catalog = running.server.catalog
        write(running.files / "shared/pinned.txt", "pinned for the hammer")
        pinned = await eventually(
            partial(catalog.backend.file_by_path, "shared/pinned.txt"), "the pinned file"
        )
        async with (
            connect(running.url) as client,
            connect(running.url) as other,
            trio.open_nursery() as nursery,
        ):
            hammers = [Hammer(client, pinned.id), Hammer(other, pinned.id)]
            for hammer in hammers:
                nursery.start_soon(hammer.run)
            yield Watched(running, catalog, client)
            nursery.cancel_scope.cancel()
        for hammer in hammers:
            assert hammer.calls > 0
            assert hammer.failures == []


async def run_writer(*args: str) -> list[str]:
    done = await trio.run_process(
        [sys.executable, str(WORKERS / "writer_files.py"), *args],
        capture_stdout=True,
        capture_stderr=True,
    )
    return done.stdout.decode().split()


def overwrite_in_place(path: Path, content: bytes) -> None:
    """Same inode, truncated and rewritten (as many programs save)."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(content)


# -- writes ---------------------------------------------------------------------------------------


async def test_in_place_overwrite_makes_a_new_version(watched: Watched) -> None:
    path = watched.files / "user/report.txt"
    write(path, "first draft")
    first = await watched.wait_checksum("user/report.txt", sha256("first draft"))
    overwrite_in_place(path, b"second draft, longer than the first")
    final = await watched.wait_checksum("user/report.txt", sha256("second draft, longer than the first"))
    assert final.id == first.id and final.current_version == 2
    versions = await watched.versions("user/report.txt")
    assert [v.checksum for v in versions] == [
        sha256("first draft"),
        sha256("second draft, longer than the first"),
    ]
    assert watched.object_bytes(final.checksum) == b"second draft, longer than the first"


@pytest.mark.parametrize("poll", [False, True])
@pytest.mark.parametrize("stepped_back", [False, True], ids=["dated-ahead", "clock-stepped-back"])
async def test_a_file_whose_times_are_ahead_of_the_clock_is_versioned_once_left_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, poll: bool, stepped_back: bool
) -> None:
    """Unpacked with the times of a host whose clock is ahead (its ctime is this host's:
    settled by it), or written before this clock was stepped back (its ctime ahead too):
    settled once its stat identity stays the same for the settle time, not when the clock
    catches up, so that the next write cannot lose it."""
    if stepped_back:  # (the watcher's clock a day behind the filesystem's)
        monkeypatch.setattr(horace.watch, "time", types.SimpleNamespace(time=lambda: time.time() - 86400))
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        path = write(running.files / "user/ahead.txt", "one")
        await eventually(lambda: _has_checksum(running, "user/ahead.txt", sha256("one")), "the first content")
        write(path, "two, dated next year")
        ahead = time.time_ns() + 365 * 86400 * 10**9
        os.utime(path, ns=(ahead, ahead))
        await eventually(
            lambda: _has_checksum(running, "user/ahead.txt", sha256("two, dated next year")),
            "the content dated ahead",
            within=10 * SETTLE + 5,
        )
        write(path, "three")
        await eventually(lambda: _has_checksum(running, "user/ahead.txt", sha256("three")), "the next write")
        versions = await running.server.catalog.backend.versions(
            (await running.server.catalog.backend.file_by_path("user/ahead.txt")).id
        )
        assert [v.checksum for v in versions] == [sha256(c) for c in ("three", "two, dated next year", "one")]


async def test_a_file_dated_ahead_by_hand_is_settled_by_its_ctime(catalog: Catalog, files: Path) -> None:
    """``touch -d '+1 hour'`` sets the mtime ahead, never the ctime (every write moves it,
    and nobody can set it): such a file is settled once its ctime is a settle time old.
    Settled by its stat identity staying the same instead, it needed two settle times, and
    a content left alone for less than that was never versioned."""
    path = write(files / "user/ahead.txt", "dated next year")
    ahead = time.time_ns() + 3600 * 10**9
    os.utime(path, ns=(ahead, ahead))
    assert not Watcher(catalog, settle=0.3)._settled("user/ahead.txt", path.stat(), 0.3)  # (just written)
    await trio.sleep(0.4)
    assert Watcher(catalog, settle=0.3)._settled("user/ahead.txt", path.stat(), 0.3)  # at a first look


@pytest.mark.parametrize(("how", "poll"), [("kept-open", False), ("kept-open", True), ("shared-map", True)])
async def test_a_file_held_open_for_writing_is_versioned_once_left_alone_long_enough(
    settings: Settings, how: str, poll: bool
) -> None:
    """The watcher waits for a writer to close (what is written so far may be half of what
    is coming), and /health says which files wait so; but a log kept open, or a file written
    through a shared map, is taken once left alone for HELD_OPEN_SETTLES settle times.
    (Writes through a map are seen by polling: inotify reports none until the file closes.)"""
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        path = write(running.files / "user/held.log", "opened\n")
        await eventually(lambda: _has_checksum(running, "user/held.log", sha256("opened\n")), "the file")
        with open(path, "r+b") as held:  # noqa: ASYNC230 (a writer of the test's own)
            if how == "kept-open":
                held.seek(0, os.SEEK_END)
                held.write(b"line 1\n")
                held.flush()
            else:
                with mmap.mmap(held.fileno(), 0) as shared:
                    shared[:6] = b"OPENED"
                    shared.flush()
            content = path.read_bytes()

            async def waiting() -> bool:
                return bool((await health(running))["watcher"]["held_open"] == 1)

            await eventually(waiting, "the file said to wait for its writer")
            status = (await health(running))["watcher"]
            assert status["held_open_paths"][0].startswith("'user/held.log': ")
            checksum = hashlib.sha256(content).hexdigest()
            assert not await _has_checksum(running, "user/held.log", checksum)
            await eventually(
                lambda: _has_checksum(running, "user/held.log", checksum),
                "the content written while it was held open",
                within=HELD_OPEN_SETTLES * SETTLE + TIMEOUT,
            )
        assert (await health(running))["watcher"]["held_open"] == 0


async def test_a_file_moved_where_the_watcher_may_not_look_keeps_its_history(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moved into a folder then made unreadable before the watcher followed it: its old path
    is not recorded deleted while the new one cannot be read (its history would be cut off,
    and purged a retention later); once it can be, the rename is followed, id and history
    whole."""
    blocked = True
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if blocked and "/user/shut/" in os.fspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_lstat(path, *args, **kwargs)

    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        backend = running.server.catalog.backend
        path = write(running.files / "user/a.txt", "one")
        await eventually(lambda: _has_checksum(running, "user/a.txt", sha256("one")), "v1")
        write(path, "two")
        first = await eventually(lambda: _has_checksum(running, "user/a.txt", sha256("two")), "v2")
        assert first
        record = await backend.file_by_path("user/a.txt")
        (running.files / "user/shut").mkdir()
        monkeypatch.setattr(horace.watch.os, "lstat", lstat)
        path.rename(running.files / "user/shut/a.txt")
        await trio.sleep(20 * SETTLE)  # (long past the settle time a vanished file waits)
        assert (await backend.file_by_id(record.id)).status is Status.ACTIVE
        blocked = False
        moved = await eventually(
            lambda: backend.file_by_path("user/shut/a.txt"),
            "the rename followed",
            within=horace.watch.RETRY_CAP + TIMEOUT,
        )
        assert moved.id == record.id and moved.current_version == 2 and moved.status is Status.ACTIVE
        assert [v.checksum for v in await backend.versions(record.id)] == [sha256("two"), sha256("one")]


async def test_write_temp_then_rename_catalogues_only_the_target(watched: Watched) -> None:
    target = watched.files / "user/data.json"
    temp = watched.files / "user/data.json.tmp"
    for i, body in enumerate(['{"v": 1}', '{"v": 2, "more": true}']):
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, body[:5].encode())
        await trio.sleep(SETTLE * 1.5)  # a temp that lingers still is never catalogued
        os.write(fd, body[5:].encode())
        os.close(fd)
        os.replace(temp, target)
        found = await watched.wait_checksum("user/data.json", sha256(body))
        assert found.current_version == i + 1
    assert "user/data.json.tmp" not in await watched.catalogued_paths()
    assert [v.checksum for v in await watched.versions("user/data.json")] == [
        sha256('{"v": 1}'),
        sha256('{"v": 2, "more": true}'),
    ]


async def test_many_appends_make_one_version_of_the_final_content(watched: Watched) -> None:
    path = watched.files / "fiedler/session.log"
    write(path, "header\n")
    await watched.wait_checksum("fiedler/session.log", sha256("header\n"))
    out = await run_writer("append", str(path), "--count", "200", "--interval", "0.006")
    assert out[0] == "started" and out[1] == "done"
    final = out[2]
    assert final == sha256(path.read_bytes())
    await watched.wait_checksum("fiedler/session.log", final)
    await quiet(watched.running)
    versions = await watched.versions("fiedler/session.log")
    assert [v.checksum for v in versions] == [sha256("header\n"), final]
    assert watched.object_bytes(final).count(b"\n") == 201


async def test_a_large_file_written_slowly_is_versioned_only_when_complete(
    watched: Watched,
) -> None:
    path = watched.files / "playfair/big.bin"
    out = await run_writer(
        "chunks",
        str(path),
        "--total",
        str(20 << 20),
        "--chunk",
        str(20 << 17),
        "--pause",
        str(SETTLE * 1.5),
    )
    assert out[1] == "done"
    final, size = out[2], int(out[3])
    found = await watched.wait_checksum("playfair/big.bin", final)
    await quiet(watched.running)
    assert found.size == size == 20 << 20
    assert [v.checksum for v in await watched.versions("playfair/big.bin")] == [final]
    assert hashlib.sha256(watched.object_bytes(final)).hexdigest() == final
    assert (await health(watched.running))["watcher"]["retried"] > 0  # it saw the file mid-write


async def test_rapid_saves_version_only_settled_states(watched: Watched) -> None:
    path = watched.files / "gates/draft.md"
    write(path, "v0")
    await watched.wait_checksum("gates/draft.md", sha256("v0"))
    contents = [f"save {i} ".encode() * (20_000 + 1000 * i) for i in range(10)]

    def save_all() -> None:
        for body in contents:
            with open(path, "wb") as f:  # open, truncate, write, close: as editors save
                f.write(body)

    await trio.to_thread.run_sync(save_all)
    await watched.wait_checksum("gates/draft.md", sha256(contents[-1]))
    await quiet(watched.running)
    complete = {sha256("v0")} | {sha256(c) for c in contents}
    versions = await watched.versions("gates/draft.md")
    assert all(v.checksum in complete for v in versions), "a torn state was versioned"
    assert versions[-1].checksum == sha256(contents[-1])
    assert len(versions) <= 3  # the burst settles once (a version mid-burst at most)

    # Saves further apart than the settle time: each settled state is a version.
    spaced = [f"spaced {i}" for i in range(3)]
    for body in spaced:
        write(path, body)
        await watched.wait_checksum("gates/draft.md", sha256(body))
    after = await watched.versions("gates/draft.md")
    assert [v.checksum for v in after[-3:]] == [sha256(b) for b in spaced]


# -- renames, deletes, folders ------------------------------------------------------------------


async def test_rename_keeps_id_and_history(watched: Watched) -> None:
    a = watched.files / "user/a.txt"
    original = await watched.two_versions("user/a.txt", "a one", "a two")
    os.rename(a, watched.files / "user/b.txt")
    moved = await watched.wait_checksum("user/b.txt", sha256("a two"))
    assert moved.id == original.id and moved.current_version == 2
    assert [v.checksum for v in await watched.versions("user/b.txt")] == [
        sha256("a one"),
        sha256("a two"),
    ]
    await quiet(watched.running)
    assert await watched.record("user/a.txt") is None  # the old path is no longer catalogued
    assert (await watched.catalog.backend.file_by_id(original.id)).status is Status.ACTIVE


async def test_rename_of_a_folder_keeps_every_files_id(watched: Watched) -> None:
    folder = watched.files / "user/project"
    for name in ("one.txt", "sub/two.txt"):
        write(folder / name, f"content of {name}")
    before = {
        name: await watched.wait_checksum(f"user/project/{name}", sha256(f"content of {name}"))
        for name in ("one.txt", "sub/two.txt")
    }
    os.rename(folder, watched.files / "user/renamed")
    for name, record in before.items():
        moved = await watched.wait_checksum(f"user/renamed/{name}", record.checksum)
        assert moved.id == record.id
    await quiet(watched.running)
    assert not any(p.startswith("user/project/") for p in await watched.catalogued_paths())


async def test_a_folder_renamed_again_while_its_first_rename_is_taken_keeps_every_files_id(
    watched: Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second rename comes while the files of the first are still being taken (slowed
    here): those not yet reached vanish from their first new path too. Every file is
    followed to its last path, none deleted and registered anew."""
    folder = watched.files / "user/mv/a"
    names = [f"{i % 5}/m{i}.txt" for i in range(60)]
    for name in names:
        write(folder / name, f"content of {name}")
    before = {
        name: await watched.wait_checksum(f"user/mv/a/{name}", sha256(f"content of {name}")) for name in names
    }
    real_take = Watcher._take

    async def slow_take(self: Watcher, rel: str, correlation_id: str) -> bool:
        await trio.sleep(0.03)
        return await real_take(self, rel, correlation_id)

    monkeypatch.setattr(Watcher, "_take", slow_take)
    os.rename(folder, watched.files / "user/mv/b")
    await trio.sleep(SETTLE + 0.5)  # the first rename's files being taken, one by one
    os.rename(watched.files / "user/mv/b", watched.files / "shared/c")
    for name, record in before.items():
        moved = await watched.wait_checksum(f"shared/c/{name}", record.checksum)
        assert moved.id == record.id, name
    await quiet(watched.running)
    moved = [
        f for f in await watched.catalog.backend.all_files() if "/mv/" in f.file_path or "/c/" in f.file_path
    ]
    assert len(moved) == len(names) and all(f.status is Status.ACTIVE for f in moved), moved


async def test_a_folder_renamed_as_a_file_of_its_content_is_deleted_keeps_each_history(
    watched: Watched,
) -> None:
    """s.txt and sub/t.txt hold the same bytes; s.txt is deleted and sub/ renamed at once:
    sub_real/t.txt is t.txt moved, not s.txt."""
    user = watched.files / "user"
    write(user / "s.txt", "AAA")
    write(user / "sub/t.txt", "BBB")  # (the same content at once would be a duplicate)
    await watched.wait_checksum("user/s.txt", sha256("AAA"))
    await watched.wait_checksum("user/sub/t.txt", sha256("BBB"))
    write(user / "s.txt", "SAME")
    write(user / "sub/t.txt", "SAME")
    s_file = await watched.wait_checksum("user/s.txt", sha256("SAME"))
    t_file = await watched.wait_checksum("user/sub/t.txt", sha256("SAME"))
    (user / "s.txt").unlink()
    (user / "sub").rename(user / "sub_real")
    moved = await watched.wait_checksum("user/sub_real/t.txt", sha256("SAME"))
    assert moved.id == t_file.id
    await watched.wait_checksum("user/s.txt", sha256("SAME"), Status.DELETED)
    assert (await watched.catalog.backend.file_by_id(s_file.id)).status is Status.DELETED


@pytest.mark.parametrize("appended", [False, True])
async def test_a_folder_moved_aside_and_made_again_at_once_leaves_no_file_without_its_copy(
    watched: Watched, appended: bool
) -> None:
    """Log rotation: `mv logs logs.1; mkdir logs` before the watcher looks, the writer still
    appending to logs.1/app.log. The file follows its content to the new path (or, written
    to meanwhile, is a new file there and the old one deleted); the old path is never left
    an active file with no working copy."""
    files = watched.files
    write(files / "user/logs/app.log", "line 1\n")
    first = await watched.wait_checksum("user/logs/app.log", sha256("line 1\n"))
    (files / "user/logs").rename(files / "user/logs.1")
    (files / "user/logs").mkdir()
    write(files / "user/logs/other.txt", "a new log")
    text = "line 1\n"
    if appended:
        text += "line 2\n"
        overwrite_in_place(files / "user/logs.1/app.log", text.encode())  # (the writer's next line)
    moved = await watched.wait_checksum("user/logs.1/app.log", sha256(text))
    assert (moved.id == first.id) is not appended

    async def old_path_settled() -> bool:
        record = await watched.record("user/logs/app.log")
        return record is None or record.status is Status.DELETED

    await eventually(old_path_settled, "user/logs/app.log no longer an active file")
    await watched.wait_checksum("user/logs/other.txt", sha256("a new log"))


async def test_a_folder_moved_out_soft_deletes_its_files(watched: Watched, tmp_path: Path) -> None:
    folder = watched.files / "shared/leaving"
    for name in ("one.txt", "deep/two.txt"):
        write(folder / name, f"leaving {name}")
    records = [
        await watched.wait_checksum(f"shared/leaving/{name}", sha256(f"leaving {name}"))
        for name in ("one.txt", "deep/two.txt")
    ]
    os.rename(folder, tmp_path / "elsewhere")  # one event for the folder, none for its files
    for record in records:
        await watched.wait_checksum(record.file_path, record.checksum, Status.DELETED)


@pytest.mark.parametrize("left", ["nothing", "a copy", "nothing, its own catalog moved with it"])
async def test_a_store_taken_from_under_the_server_stops_it_and_no_file_is_recorded_deleted(
    settings: Settings, tmp_path: Path, left: str
) -> None:
    """The store moved away (removed, a volume unmounted) or replaced by a copy while the
    server runs: its paths lead elsewhere, where every file looks gone (or is not the
    catalog's to write). The server stops (STORE_REFUSED), saying the store moved (its
    SQLite catalog inside moved with it: not "removed"), and no file is recorded deleted;
    the store put back opens as it was."""
    if left.endswith("moved with it"):
        settings = attrs.evolve(settings, database_url=None)
    served = watching(settings)
    write(served.storage_path / "files/user/a.txt", "a")
    away = tmp_path / "away"
    failure: BaseException | None = None
    with trio.fail_after(TIMEOUT):
        try:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, served, handle_signals=False))
                await eventually(
                    partial(server.catalog.backend.file_by_path, "user/a.txt"), "user/a.txt catalogued"
                )
                served.storage_path.rename(away)
                if left == "a copy":
                    shutil.copytree(away, served.storage_path, symlinks=True)
                await trio.sleep_forever()
        except BaseException as exc:
            failure = the_failure(exc)
    assert isinstance(failure, StoreRefused) and "not the one this process opened" in str(failure), failure
    if left == "a copy":
        shutil.rmtree(served.storage_path)
    away.rename(served.storage_path)
    async with open_catalog(settings) as catalog:
        found = await catalog.backend.file_by_path("user/a.txt")
        assert found is not None and found.status is Status.ACTIVE


@pytest.mark.parametrize("how", ["removed", "replaced", "tmp linked"])
async def test_a_lock_file_removed_under_the_server_stops_it(settings: Settings, how: str) -> None:
    """.horace/locks removed (or another put in its place) while a server runs: the next
    process would lock another file, and two watchers, or two writers of a file, would
    run at once. The server stops (STORE_REFUSED); started again, it locks the new file.
    So does one whose .horace/tmp is made a symlink: what it writes and removes there
    would be written and removed wherever the link leads."""
    served = watching(settings)
    failure: BaseException | None = None
    elsewhere = settings.storage_path.parent / "elsewhere"
    with trio.fail_after(TIMEOUT):
        try:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, served, handle_signals=False))
                storage = server.catalog.storage
                if how == "tmp linked":
                    storage.tmp.rename(elsewhere)
                    storage.tmp.symlink_to(elsewhere)
                else:
                    storage.lock_file.unlink()
                if how == "replaced":
                    storage.lock_file.touch()
                await trio.sleep_forever()
        except BaseException as exc:
            failure = the_failure(exc)
    said = "is a symlink" if how == "tmp linked" else "lock file"
    assert isinstance(failure, StoreRefused) and said in str(failure), failure
    if how == "tmp linked":
        storage.tmp.unlink()
        elsewhere.rename(storage.tmp)
    async with run_horace(served) as running:
        await wait_watching(running)
        assert not running.server.catalog.locks.replaced()


async def test_a_folder_replaced_by_a_file_of_its_name_deletes_its_files(watched: Watched) -> None:
    """The folder's files are gone (their path can name nothing now): deleted, the file
    catalogued in its place; nothing left to retry, the watcher healthy."""
    folder = watched.files / "user/thing"
    write(folder / "i1.txt", "in one")
    inner = await watched.wait_checksum("user/thing/i1.txt", sha256("in one"))
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    write(folder, "now a file")
    await watched.wait_checksum("user/thing", sha256("now a file"))
    await watched.wait_checksum("user/thing/i1.txt", inner.checksum, Status.DELETED)
    await quiet(watched.running)
    state = (await health(watched.running))["watcher"]
    assert state["ok"] and not state.get("failing_paths"), state


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
async def test_a_catalogued_file_replaced_by_a_folder_or_special_file_is_deleted(
    watched: Watched, kind: str
) -> None:
    path = watched.files / "user/x"
    write(path, "one")
    record = await watched.wait_checksum("user/x", sha256("one"))
    path.unlink()
    if kind == "folder":
        write(path / "i.txt", "inside")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("elsewhere")
    await watched.wait_checksum("user/x", record.checksum, Status.DELETED)
    if kind == "folder":
        await watched.wait_checksum("user/x/i.txt", sha256("inside"))
    await quiet(watched.running)
    state = (await health(watched.running))["watcher"]
    assert state["ok"] and not state.get("failing_paths"), state


async def test_a_catalogued_file_that_gains_a_hard_link_is_listed_as_skipped(
    watched: Watched, tmp_path: Path
) -> None:
    """Its changes are no longer versioned (another link could change it from outside):
    said once, and listed among the skipped names of /health, not passed over in silence."""
    path = watched.files / "user/linked.txt"
    write(path, "one link")
    await watched.wait_checksum("user/linked.txt", sha256("one link"))
    (tmp_path / "backup").mkdir()
    os.link(path, tmp_path / "backup/linked.txt")
    write(path, "two links")  # (in place: both names see it)

    async def listed() -> list[str] | None:
        names = (await health(watched.running))["watcher"]["skipped_names"]
        return names if any("user/linked.txt" in n and "hard links" in n for n in names) else None

    await eventually(listed, "the hard-linked file listed as skipped")
    (tmp_path / "backup/linked.txt").unlink()
    write(path, "one link again")
    await watched.wait_checksum("user/linked.txt", sha256("one link again"))

    async def unlisted() -> bool | None:  # (once the take that recorded it is done)
        names = (await health(watched.running))["watcher"]["skipped_names"]
        return True if not [n for n in names if "user/linked.txt" in n] else None

    await eventually(unlisted, "the file taken again, no longer listed as skipped")


@pytest.mark.parametrize("written_through", ["kept", "removed", "other link"])
async def test_a_file_back_to_one_link_inside_the_store_is_taken_with_no_write(
    watched: Watched, written_through: str
) -> None:
    """The second link removed inside files/ gives an event for that link's path only: the
    file written while linked is taken once it has one link again, untouched since (a
    delete of it then would lose what it held)."""
    first, second = watched.files / "user/a.txt", watched.files / "user/b.txt"
    write(first, "one link")
    await watched.wait_checksum("user/a.txt", sha256("one link"))
    os.link(first, second)
    kept, removed = (second, first) if written_through == "removed" else (first, second)
    with (second if written_through == "other link" else kept).open("a") as f:  # (both names see it)
        f.write(", then written while linked")

    async def listed() -> bool:
        names = (await health(watched.running))["watcher"]["skipped_names"]
        return any("hard links" in n for n in names)

    await eventually(listed, "the linked file refused")
    removed.unlink()
    rel = kept.relative_to(watched.files).as_posix()
    await watched.wait_checksum(rel, sha256("one link, then written while linked"))


async def test_a_file_whose_other_link_goes_elsewhere_is_taken_with_no_write(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link removed outside files/ gives no event here: the refused paths are looked at
    again every REFUSED_LOOK_EVERY seconds."""
    monkeypatch.setattr("horace.watch.REFUSED_LOOK_EVERY", 0.5)
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        catalog = running.server.catalog
        path = write(running.files / "user/linked.txt", "one link")
        await eventually(partial(catalog.backend.file_by_path, "user/linked.txt"), "the file")
        os.link(path, tmp_path / "elsewhere.txt")
        write(path, "written while linked")

        async def listed() -> bool:
            return any("hard links" in n for n in (await health(running))["watcher"]["skipped_names"])

        await eventually(listed, "the linked file refused")
        (tmp_path / "elsewhere.txt").unlink()

        async def taken() -> bool:
            found = await catalog.backend.file_by_path("user/linked.txt")
            return found is not None and found.checksum == sha256("written while linked")

        await eventually(taken, "the file taken again, one link, no write")


@pytest.mark.parametrize("how", ["removed", "moved out", "moved"])
async def test_a_folder_replaced_by_a_symlink_has_its_files_deleted_and_nothing_behind_touched(
    watched: Watched, how: str
) -> None:
    """A git checkout of a branch where lib/ is a symlink: the files that were in lib/ are
    gone from files/ (recorded deleted, their history kept), what the link leads to is
    neither read nor moved, and the watcher is not left retrying for ever."""
    write(watched.files / "sl/lib/m.py", "module")
    write(watched.files / "sl/conf/c.ini", "conf")
    await watched.wait_checksum("sl/lib/m.py", sha256("module"))
    await watched.wait_checksum("sl/conf/c.ini", sha256("conf"))
    write(watched.files / "sl/conf/m.py", "not lib's")  # (the same name behind the link)
    if how == "removed":
        shutil.rmtree(watched.files / "sl/lib")
    elif how == "moved out":
        (watched.files / "sl/lib").rename(watched.files.parent / "lib-moved-out")
    else:
        (watched.files / "sl/lib").rename(watched.files / "sl/lib-moved")
    (watched.files / "sl/lib").symlink_to("conf", target_is_directory=True)
    if how == "moved":
        await watched.wait_checksum("sl/lib-moved/m.py", sha256("module"))
    else:
        await watched.wait_checksum("sl/lib/m.py", sha256("module"), Status.DELETED)
    await quiet(watched.running)
    state = (await health(watched.running))["watcher"]
    assert state["ok"] and not state.get("failing_paths"), state
    assert (watched.files / "sl/conf/c.ini").read_text() == "conf"
    assert (watched.files / "sl/conf/m.py").read_text() == "not lib's"
    assert (await watched.record("sl/conf/c.ini")).status is Status.ACTIVE
    assert (await watched.record("sl/lib/c.ini")) is None  # (never catalogued through the link)
    at_link = await watched.record("sl/lib/m.py")  # (moved: the record went with the folder)
    assert at_link is None or at_link.status is not Status.ACTIVE


async def test_a_file_written_on_and_on_is_versioned_while_the_writes_go_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write within a settle time of the last, it never settles: taken as it is once
    it has waited WRITTEN_ON_TAKEN_AFTER, and /health says how long it has waited."""
    monkeypatch.setattr("horace.watch.WRITTEN_ON_TAKEN_AFTER", 1.0)
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        catalog, path = running.server.catalog, running.files / "logs/app.log"
        written: set[str] = set()
        waited = 0.0

        async def versions() -> list[str]:
            found = await catalog.backend.file_by_path("logs/app.log")
            return [] if found is None else [v.checksum for v in await catalog.backend.versions(found.id)]

        with trio.fail_after(TIMEOUT):
            for n in itertools.count():
                content = "line\n" * (n + 1)
                write(path, content)
                written.add(sha256(content))
                waited = max(waited, (await health(running))["watcher"]["unsettled_s"])
                if len(await versions()) >= 2:
                    break
                await trio.sleep(SETTLE / 4)
        assert set(await versions()) <= written  # (states the file held)
        assert waited >= 1.0 and waited < TIMEOUT
        await quiet(running)
        assert (await health(running))["watcher"]["unsettled_s"] == 0.0
        assert (await versions())[0] == sha256(path.read_text())  # (newest first: the last write)


async def test_a_file_written_on_faster_than_it_can_be_read_says_so_and_is_versioned_once_it_pauses(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each take as it is failing (the file changed as it was read: a big log appended to
    faster than it can be copied), the path keeps waiting in unsettled_s, is said once in
    the log, and is tried again a limit later, not at once; once its writes pause, it is
    versioned, and that is said too."""
    monkeypatch.setattr("horace.watch.WRITTEN_ON_TAKEN_AFTER", 0.5)
    caplog.set_level("INFO", logger="horace.watch")
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        catalog, path = running.server.catalog, running.files / "logs/big.log"
        write(path, "line\n")
        await eventually(lambda: _has_checksum(running, "logs/big.log", sha256("line\n")), "v1")
        register, writing, tries = catalog.register, True, [0]

        async def outpaced(rel: str, **kwargs: Any) -> Any:
            if rel == "logs/big.log" and writing:
                tries[0] += 1
                raise HoraceError(ErrorCode.FILE_LOCKED, "logs/big.log changed while it was being read")
            return await register(rel, **kwargs)

        monkeypatch.setattr(catalog, "register", outpaced)
        limit = max(0.5, SETTLE * HELD_OPEN_SETTLES)
        waited, content, started = 0.0, "line\n", trio.current_time()
        while trio.current_time() - started < 4 * limit:
            content += "line\n"
            write(path, content)
            waited = max(waited, (await health(running))["watcher"]["unsettled_s"])
            await trio.sleep(SETTLE / 4)
        assert waited >= 3 * limit  # (not back to 0 at each failed take)
        assert 2 <= tries[0] <= 5  # tried again each limit, not at each write
        said = [r.getMessage() for r in caplog.records if "faster than it can be read" in r.getMessage()]
        assert len(said) == 1 and "logs/big.log" in said[0]
        writing = False
        await eventually(lambda: _has_checksum(running, "logs/big.log", sha256(content)), "versioned")
        assert any("is versioned" in r.getMessage() for r in caplog.records)
        await quiet(running)
        assert (await health(running))["watcher"]["unsettled_s"] == 0.0


async def test_a_file_held_open_and_written_on_and_on_waits_for_its_writer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of a big file under way is not versioned half made past
    WRITTEN_ON_TAKEN_AFTER: its writer holds it open; taken once it is closed."""
    monkeypatch.setattr("horace.watch.WRITTEN_ON_TAKEN_AFTER", 0.5)
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        catalog, path = running.server.catalog, running.files / "big/copy.bin"
        path.parent.mkdir(parents=True)
        with path.open("wb") as copying:
            limit = max(0.5, SETTLE * HELD_OPEN_SETTLES)
            for _ in range(int(2 * limit / (SETTLE / 4))):  # (twice the limit)
                copying.write(b"chunk" * 100)
                copying.flush()
                await trio.sleep(SETTLE / 4)
            assert await catalog.backend.file_by_path("big/copy.bin") is None
            assert (await health(running))["watcher"]["held_open"] == 1
        whole = sha256(path.read_bytes())

        async def taken() -> bool:
            found = await catalog.backend.file_by_path("big/copy.bin")
            return found is not None and found.checksum == whole

        await eventually(taken, "the copy taken once closed")
        found = await catalog.backend.file_by_path("big/copy.bin")
        assert found is not None and found.current_version == 1


async def test_delete_soft_deletes_and_content_comes_back(watched: Watched) -> None:
    path = watched.files / "shared/notes.txt"
    write(path, "notes v1")
    await watched.wait_checksum("shared/notes.txt", sha256("notes v1"))
    write(path, "notes v2")
    record = await watched.wait_checksum("shared/notes.txt", sha256("notes v2"))
    path.unlink()
    deleted = await watched.wait_checksum("shared/notes.txt", sha256("notes v2"), Status.DELETED)
    assert deleted.id == record.id and deleted.deleted_at is not None
    assert all(
        watched.catalog.storage.has_object(v.checksum) for v in await watched.versions("shared/notes.txt")
    )

    undeleted = await watched.client.call("horace_undelete_file", file_id=record.id)
    assert undeleted["status"] == "active"
    assert path.read_bytes() == b"notes v2"
    restored = await watched.client.call("horace_restore_version", file_id=record.id, version=1)
    assert restored["new_version"] == 3 and path.read_bytes() == b"notes v1"
    await quiet(watched.running)
    final = await watched.record("shared/notes.txt")
    assert (final.status, final.current_version, final.checksum) == (
        Status.ACTIVE,
        3,
        sha256("notes v1"),
    )


async def test_a_copy_is_a_file_of_its_own_and_comes_back_when_its_folder_goes(settings: Settings) -> None:
    """A copy of a catalogued file (git branches pointing at one commit, a backup tool's
    identical segments) is catalogued as a file of its own, its content stored once: when
    its folder is removed whole, each of its files is deleted, and each can be undeleted
    by its path. A file renamed is still followed as a rename, not taken for a copy."""
    async with run_horace(watching(settings, version_count=1)) as running:
        await wait_watching(running)
        catalog = running.server.catalog
        watched = Watched(running, catalog, None)  # type: ignore[arg-type]
        refs = running.files / "user/repo/refs"
        for branch in ("feature", "main", "release"):
            write(refs / branch, "9f2c0e1 the same commit\n")
        for branch in ("feature", "main", "release"):
            await watched.wait_checksum(f"user/repo/refs/{branch}", sha256("9f2c0e1 the same commit\n"))
        ids = {
            branch: (await catalog.resolve(f"user/repo/refs/{branch}")).id for branch in ("feature", "main")
        }
        assert ids["feature"] != ids["main"]
        os.rename(refs / "feature", refs / "feature-renamed")
        moved = await watched.wait_checksum(
            "user/repo/refs/feature-renamed", sha256("9f2c0e1 the same commit\n")
        )
        assert moved.id == ids["feature"]  # followed, with its history
        shutil.rmtree(running.files / "user/repo")
        for branch in ("feature-renamed", "main", "release"):
            await watched.wait_checksum(
                f"user/repo/refs/{branch}", sha256("9f2c0e1 the same commit\n"), Status.DELETED
            )
        async with connect(running.url) as client:
            for branch in ("feature-renamed", "main", "release"):
                await client.call("horace_undelete_file", file_path=f"user/repo/refs/{branch}")
        assert sorted(p.name for p in refs.iterdir()) == ["feature-renamed", "main", "release"]
        assert {p.read_text() for p in refs.iterdir()} == {"9f2c0e1 the same commit\n"}


@pytest.mark.parametrize(
    "poll,before", [(False, "nothing"), (True, "nothing"), (False, "restore"), (False, "undelete")]
)
async def test_a_copy_made_before_a_rename_is_not_taken_for_the_renamed_file(
    settings: Settings, poll: bool, before: str
) -> None:
    """`cp a b; mv a c` before the watcher looks: c is a, renamed (its inode), and keeps
    a's id and history; b, the same bytes under another inode, is a copy, a new file. So
    too right after a restore or an undelete wrote a, before the watcher read it again:
    the identity of the file they wrote is recorded (content alone would not tell)."""
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        catalog = running.server.catalog
        watched = Watched(running, catalog, None)  # type: ignore[arg-type]
        a = running.files / "user/a.txt"
        original = await watched.two_versions("user/a.txt", "one", "two")
        content, versions = "two", 2
        if before == "restore":
            await catalog.restore(original.id, 1)
            content, versions = "one", 3
        elif before == "undelete":
            await catalog.delete(original.id)
            await catalog.undelete(original.id)
        shutil.copy(a, running.files / "user/b.txt")
        os.rename(a, running.files / "user/c.txt")
        renamed = await watched.wait_checksum("user/c.txt", sha256(content))
        copy = await watched.wait_checksum("user/b.txt", sha256(content))
        assert renamed.id == original.id and renamed.current_version == versions
        assert copy.id != original.id and copy.current_version == 1
        assert await watched.record("user/a.txt") is None


@pytest.mark.parametrize("poll", [False, True])
async def test_a_file_made_anew_in_a_removed_files_inode_is_not_taken_for_it(
    settings: Settings, poll: bool
) -> None:
    """`rm a; touch b`: a filesystem gives b the inode a had at once, and both are empty.
    A rename keeps the mtime, a file made anew has its own: b is a new file, and a is
    deleted, its history its own. (The kernel's state after such a reuse is made here by a
    rename and a new mtime: a tmpfs does not reuse inode numbers.)"""
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        catalog = running.server.catalog
        watched = Watched(running, catalog, None)  # type: ignore[arg-type]
        a = running.files / "user/a.log"
        original = await watched.two_versions("user/a.log", "draft", "")
        made_at = a.stat().st_mtime_ns + 5_000_000_000
        b = a.rename(running.files / "user/b.log")
        os.utime(b, ns=(made_at, made_at))
        new = await watched.wait_checksum("user/b.log", sha256(""))
        gone = await watched.wait_checksum("user/a.log", sha256(""), Status.DELETED)
        assert new.id != original.id and new.current_version == 1
        assert gone.id == original.id and gone.current_version == 2


async def test_a_copy_left_waiting_on_its_file_is_looked_at_again_once_that_file_moves_on(
    catalog: Catalog, files: Path
) -> None:
    """A copy the watcher could not take (left out, its file changing under it) waits on
    that file: once the file holds other content, or is gone, the copy is due again (and
    taken then), before retention can prune the version that held its content."""
    watcher = Watcher(catalog, settle=0.0)
    for rel, content in (("user/c1.txt", "old"), ("user/c2.txt", "new")):
        watcher._copies.setdefault("owner", {})[rel] = sha256(content)
        watcher._copy_of[rel] = "owner"
    watcher._look_again_at_copies("owner", sha256("new"))
    assert set(watcher._due) == {"user/c1.txt"} and set(watcher._copy_of) == {"user/c2.txt"}
    watcher._look_again_at_copies("owner", None)  # gone
    assert set(watcher._due) == {"user/c1.txt", "user/c2.txt"} and not watcher._copy_of


async def test_a_file_archived_through_horace_as_the_watcher_saw_it_go_stays_archived(
    catalog: Catalog, files: Path
) -> None:
    """The watcher may see a file leave files/ (an archive moving it out) before the
    archive is committed: when its time comes to delete the file, the catalog already
    says archived, and archived it stays."""
    write(files / "user/a.txt", "a")
    record = (await catalog.register("user/a.txt")).file
    watcher = Watcher(catalog, settle=0.0)
    watcher._vanished.add(record, trio.current_time() - 1)  # seen gone while still active
    await catalog.update(record.id, FileChanges(status=Status.ARCHIVED))
    await watcher._expire_vanished()
    assert (await catalog.file(record.id)).status is Status.ARCHIVED
    assert watcher.counts.deleted == 0


async def test_health_counts_vanished_files_until_they_are_deleted(catalog: Catalog, files: Path) -> None:
    """Files gone from their paths wait (for the other half of a rename), then are deleted
    one by one: /health counts them (`vanished`) until the last is done, so that a monitor
    can tell when the catalog has caught up with a removal."""
    records = []
    for name in ("a", "b"):
        write(files / f"user/{name}.txt", name)
        records.append((await catalog.register(f"user/{name}.txt")).file)
        (files / f"user/{name}.txt").unlink()
    watcher = Watcher(catalog, settle=0.0)
    for record in records:
        watcher._vanished.add(record, trio.current_time() - 1)
    assert watcher.status()["vanished"] == 2
    seen = []
    expire = watcher._expire

    async def expire_counted(record: Any) -> None:
        seen.append(watcher.status()["vanished"])
        await expire(record)

    watcher._expire = expire_counted  # type: ignore[method-assign]
    await watcher._expire_vanished()
    assert seen == [2, 1] and watcher.status()["vanished"] == 0
    assert [(await catalog.file(r.id)).status for r in records] == [Status.DELETED] * 2


async def test_thousands_of_skipped_names_log_twenty_lines_a_minute_and_a_count(
    catalog: Catalog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `cp -al` of a tree gives thousands of files a second link at once: each is counted
    and the latest listed, but the log says the first twenty of a minute and then how many
    more, not one line each."""
    watcher = Watcher(catalog, settle=0.0)
    caplog.set_level("WARNING", logger="horace.watch")
    for n in range(25):
        watcher._skip(f"'user/snap/{n}.txt' has 2 hard links")
    one_by_one = [r.getMessage() for r in caplog.records if "hard links" in r.getMessage()]
    assert len(one_by_one) == 20 and watcher.counts.skipped == 25
    assert len(watcher.status()["skipped_names"]) == 20
    watcher._skip_log.started -= 61  # a minute later
    watcher._skip("'user/snap/late.txt' has 2 hard links")
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 5 more names in the last minute" in m for m in messages), messages
    assert "watch: skipped 'user/snap/late.txt' has 2 hard links" in messages


async def test_a_new_folder_of_files_is_registered_with_its_owner(watched: Watched) -> None:
    names = ["a.md", "b.csv", "deep/er/c.txt", "deep/d.bin"]

    def make() -> None:  # as fast as possible: files may land before the folder is watched
        for name in [*names, "deep/scratch.tmp", "deep/.e.swp"]:
            path = watched.files / "gates/new-project" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{name} body".encode())

    await trio.to_thread.run_sync(make)
    for name in names:
        found = await watched.wait_checksum(f"gates/new-project/{name}", sha256(f"{name} body"))
        assert found.owner == "gates"
    await quiet(watched.running)
    paths = await watched.catalogued_paths()
    assert {p for p in paths if p.startswith("gates/new-project/")} == {
        f"gates/new-project/{n}" for n in names
    }


async def test_symlinks_are_never_catalogued(watched: Watched, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the root")
    real = write(watched.files / "user/real.txt", "real content")
    await watched.wait_checksum("user/real.txt", sha256("real content"))
    (watched.files / "user/link-in.txt").symlink_to(real)
    (watched.files / "user/link-out.txt").symlink_to(outside / "secret.txt")
    (watched.files / "user/dir-out").symlink_to(outside, target_is_directory=True)
    (outside / "later.txt").write_text("written through no watched path")
    write(watched.files / "user/sentinel.txt", "after the links")
    await watched.wait_checksum("user/sentinel.txt", sha256("after the links"))
    await quiet(watched.running)
    paths = await watched.catalogued_paths()
    assert not {p for p in paths if "link" in p or "dir-out" in p}, paths
    assert await watched.catalog.backend.file_by_checksum(sha256("outside the root")) is None
    assert await watched.catalog.backend.file_by_checksum(sha256("written through no watched path")) is None


async def test_editor_temp_files_are_ignored(watched: Watched) -> None:
    temps = ["user/notes.txt.tmp", "user/notes.txt~", "user/.#notes.txt", "user/.notes.txt.swp"]
    for rel in temps:
        write(watched.files / rel, f"temp {rel}")
    write(watched.files / "user/notes.txt", "the real notes")
    await watched.wait_checksum("user/notes.txt", sha256("the real notes"))
    await quiet(watched.running)
    assert not set(temps) & await watched.catalogued_paths()


async def test_polling_mode_catalogues_writes(settings: Settings) -> None:
    async with run_horace(watching(settings, watch_poll=True)) as running:
        await wait_watching(running)
        assert (await health(running))["watcher"]["mode"] == "poll"
        path = write(running.files / "shared/polled.txt", "seen by polling")
        await eventually(
            lambda: _has_checksum(running, "shared/polled.txt", sha256("seen by polling")),
            "the polled file",
        )
        # Polling compares mtimes to the second: a change within the same second as the
        # one it saw is not reported, and must be found all the same.
        first = path.stat().st_mtime_ns
        write(path, "changed within the same second of mtime")
        os.utime(path, ns=(first, first + 1))
        await eventually(
            lambda: _has_checksum(
                running, "shared/polled.txt", sha256("changed within the same second of mtime")
            ),
            "the change made within the same second",
        )
        record = await running.server.catalog.backend.file_by_path("shared/polled.txt")
        assert record.current_version == 2


async def test_a_file_written_again_before_it_settled_is_taken_once_settled(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on NFS: no leases, and a write is seen only at the next poll. A file due to be
    taken (its settle time since the change that was seen has passed) but written again
    since, unseen, is not taken until it has settled: no version of a state in between."""
    monkeypatch.setattr(Storage, "is_being_written", lambda self, rel: False)
    settle, poll = 2.0, 5.0  # wide: the test must write within a settle time of a poll, even when loaded
    watcher = horace.watch.Watcher(catalog, settle=settle, poll=True, poll_ms=int(poll * 1000))
    path = files / "user/nfs.txt"
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        write(path, "first")
        found = await eventually(
            lambda: catalog.backend.file_by_path("user/nfs.txt"), "the first write", within=4 * poll
        )
        seen = watcher.counts.events
        write(path, "second")
        # Seen and given its due time (after a thread hop of the watcher's): from here the
        # third write is younger than the settle time when the second falls due.
        await eventually(partial(_scheduled, watcher, seen), "the second write to be seen", within=2 * poll)
        retried = watcher.counts.retried
        # Half a settle time on: when the second falls due the third is half a settle time
        # old, whether the watcher wakes on time or late (written at once, it could be
        # old enough by a late wake-up, and rightly taken).
        await trio.sleep(settle / 2)
        write(path, "third, in between")  # not seen: the next poll is seconds away
        # The second write falls due with the third in its place, younger than the settle
        # time: it waits again. (A fixed sleep here let a loaded machine reach the next
        # look, when the third had settled and was rightly taken.)
        await eventually(partial(_retried, watcher, retried), "the second write to fall due", within=2 * poll)
        write(path, "fourth, and last")
        await eventually(
            partial(_has, catalog, found.id, "fourth, and last"), "the last write", within=3 * poll
        )
        await trio.sleep(poll + settle)  # anything else would have been taken by now
        nursery.cancel_scope.cancel()
    versions = await catalog.backend.versions(found.id)
    assert [v.checksum for v in versions] == [sha256("fourth, and last"), sha256("first")], versions


async def test_polling_sees_a_file_horace_wrote_back_go_before_its_next_look(
    catalog: Catalog, files: Path
) -> None:
    """An undelete writes the working copy back, and the user removes it again before the
    next poll: no look ever saw it, yet it is gone, and the file is deleted again."""
    poll = 0.5
    watcher = horace.watch.Watcher(catalog, settle=0.1, poll=True, poll_ms=int(poll * 1000))
    path = write(files / "user/back.txt", "brought back, then removed")
    file = (await catalog.register("user/back.txt")).file
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await catalog.delete(file.id)
        await trio.sleep(2 * poll)  # the poller has seen it go
        await catalog.undelete(file.id)
        path.unlink()  # long before the next look

        async def deleted() -> bool:
            return (await catalog.backend.file_by_id(file.id)).status is Status.DELETED

        await eventually(deleted, "the file deleted again", within=6 * poll)
        nursery.cancel_scope.cancel()
    assert not path.exists()
    versions = await catalog.backend.versions(file.id)
    assert [v.checksum for v in versions] == [sha256("brought back, then removed")]


async def test_one_watcher_a_store_the_other_stands_by_and_takes_over(
    catalog: Catalog, settings: Settings, files: Path
) -> None:
    """Two processes (here two catalogs) watching one store would each act on the same
    events. The second stands by, ok in /health, until the first's lease goes; then it
    reconciles (what came meanwhile) and watches."""
    async with trio.open_nursery() as nursery:
        async with open_catalog(settings, check=False) as first_catalog:
            first = horace.watch.Watcher(first_catalog, settle=0.1)
            first_scope = trio.CancelScope()

            async def run_first(task_status: trio.TaskStatus[None]) -> None:
                with first_scope:
                    await first.run(task_status=task_status)

            await nursery.start(run_first)
            second = horace.watch.Watcher(catalog, settle=0.1)
            nursery.start_soon(second.run)
            await eventually(lambda: _true(second.standby), "the second watcher standing by")
            assert second.ok and not second.watching and second.status()["standby"]
            write(files / "user/seen-by-first.txt", "first")
            await eventually(
                lambda: catalog.backend.file_by_path("user/seen-by-first.txt"), "the first's take"
            )
            first_scope.cancel()
        write(files / "user/while-none-watched.txt", "between")  # the reconcile's to take
        await eventually(lambda: _true(second.watching), "the second watcher taking over", within=10)
        assert not second.standby
        write(files / "user/seen-by-second.txt", "second")
        for rel in ("user/while-none-watched.txt", "user/seen-by-second.txt"):
            await eventually(partial(catalog.backend.file_by_path, rel), rel)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def standing_by(
    catalog: Catalog, settings: Settings, monkeypatch: pytest.MonkeyPatch, *, marked: bool
) -> AsyncIterator[tuple[Watcher, Catalog]]:
    """A watcher of *catalog* standing by behind a holder of the lease (another catalog of
    the store) whose last sign of life was a minute ago: one that gave signs (*marked*,
    as this release's holders do), or one of a release from before them."""
    monkeypatch.setattr(horace.watch, "BEAT_EVERY", 0.1)
    monkeypatch.setattr(horace.watch, "LEASE_LOOK_EVERY", 0.1)
    watcher = horace.watch.Watcher(catalog, settle=0.1)
    long_ago = time.time() - 2 * horace.watch.SILENT_HOLDER
    async with trio.open_nursery() as nursery, open_catalog(settings, check=False) as holder:
        assert holder.locks.take_watch_lease()
        if marked:
            holder.locks.beat()
        os.utime(holder.storage.lock_file, (long_ago, long_ago))
        nursery.start_soon(watcher.run)
        await eventually(lambda: _true(watcher.standby), "standing by")
        yield watcher, holder
        nursery.cancel_scope.cancel()


async def test_a_standby_says_when_the_lease_holder_gives_no_sign_of_life(
    catalog: Catalog,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A holder stopped (SIGSTOP) or hung on its disk keeps the lease, and nothing is
    versioned meanwhile: a standby that sees no sign of life from it for SILENT_HOLDER
    seconds is not ok in /health, and says so once in the log; signs of life again, it is.
    A holder never seen giving any (a release from before them) is not said silent, and
    another process's start (a CLI command) is no sign of life of the holder's."""
    long_ago = time.time() - 2 * horace.watch.SILENT_HOLDER
    async with standing_by(catalog, settings, monkeypatch, marked=False) as (watcher, holder):
        await trio.sleep(0.5)
        assert watcher.ok and watcher.status()["lease_holder_silent_s"] is None
        holder.locks.beat()
        await trio.sleep(0.5)
        os.utime(holder.storage.lock_file, (long_ago, long_ago))  # its last sign, a minute ago
        await eventually(lambda: _true(not watcher.ok), "the silence seen")
        assert watcher.status()["lease_holder_silent_s"] >= horace.watch.SILENT_HOLDER
        said = [r.getMessage() for r in caplog.records if "no sign of life" in r.getMessage()]
        assert len(said) == 1 and "nothing is being versioned" in said[0]
        async with open_catalog(settings):  # a writing command's start
            await trio.sleep(0.5)
        assert not watcher.ok
        holder.locks.beat()
        await eventually(lambda: _true(watcher.ok), "signs of life again")


async def test_a_standby_started_behind_a_holder_already_silent_says_so(
    catalog: Catalog, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a store whose lease holders have given signs of life, a holder stopped before a
    standby's first look is said silent by it, though the standby never saw it beat."""
    async with standing_by(catalog, settings, monkeypatch, marked=True) as (watcher, holder):
        await eventually(lambda: _true(not watcher.ok), "the silence seen")
        assert watcher.status()["lease_holder_silent_s"] >= horace.watch.SILENT_HOLDER
        holder.locks.beat()
        await eventually(lambda: _true(watcher.ok), "signs of life again")


async def test_fsck_leaves_a_removal_on_a_watched_store_to_the_watcher(
    catalog: Catalog, settings: Settings, files: Path
) -> None:
    """A working copy removed from a watched store is the watcher's to record as a
    deletion: `fsck --repair` does not undo the removal by writing it back, and the
    periodic (automatic) check of each instance does not warn of it. Unwatched, a repair
    writes it back, as ever."""
    path = write(files / "user/removed.txt", "removed by its user")
    await catalog.register("user/removed.txt")
    path.unlink()
    async with open_catalog(settings, check=False) as holder:
        assert holder.locks.take_watch_lease()  # (another process's watcher, not looking yet)
        asked = await fsck(catalog, repair=True)
        assert [(f.kind, f.repaired) for f in asked.findings] == [("removal_pending", False)]
        assert "watched" in asked.findings[0].detail and not path.exists()
        assert (asked.clean, asked.exit_code) == (True, 0)  # (a check run just after an `rm`)
        assert (await fsck(catalog, automatic=True)).findings == ()
        holder.locks.beat()  # (a sign of life: the store is marked as one watched)
    # Watched before, its watcher stopped now (a crash): the check says the watcher will
    # record the removal once started; a repair, asked for all the same, writes it back.
    said = await fsck(catalog)
    assert [f.kind for f in said.findings] == ["working_missing"]
    assert (
        "removed while its watcher was not running, or deleted after the catalog copy"
        in said.findings[0].detail
    )
    repaired = await fsck(catalog, repair=True)
    assert [(f.kind, f.repaired) for f in repaired.findings] == [("working_missing", True)]
    assert path.read_text() == "removed by its user"


async def test_a_watcher_that_holds_the_lease_gives_signs_of_life(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(horace.watch, "BEAT_EVERY", 0.1)
    long_ago = time.time() - 2 * horace.watch.SILENT_HOLDER
    os.utime(catalog.storage.lock_file, (long_ago, long_ago))
    watcher = horace.watch.Watcher(catalog, settle=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run)
        await eventually(lambda: _true(watcher.watching), "watching")
        await eventually(
            lambda: _true(catalog.storage.lock_file.stat().st_mtime > time.time() - 5), "a sign of life"
        )
        nursery.cancel_scope.cancel()


async def test_a_file_renamed_while_a_takeover_looks_keeps_its_history(
    catalog: Catalog, settings: Settings, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On taking the lease over, the new watcher looks at every file through its watch: a
    file renamed just after that look walked past both its paths is followed as a rename
    (a reconcile there had found it missing, deleted it, and the new path began anew)."""
    write(files / "user/x/before.txt", "renamed during the takeover")
    file = (await catalog.register("user/x/before.txt")).file
    walk = Storage.walk_stats
    renamed = []

    def walk_past_both_paths(self: Storage, *args: Any) -> Any:
        # As a walk that passed y/ before the file came and x/ after it went.
        if renamed:
            return walk(self, *args)
        renamed.append(True)
        (files / "user/y").mkdir()
        (files / "user/x/before.txt").rename(files / "user/y/after.txt")
        return [(rel, st) for rel, st in walk(self, *args) if rel != "user/y/after.txt"]

    watcher = horace.watch.Watcher(catalog, settle=0.1)
    async with trio.open_nursery() as nursery:
        async with open_catalog(settings, check=False) as first:
            assert first.locks.take_watch_lease()
            nursery.start_soon(watcher.run)
            await eventually(lambda: _true(watcher.standby), "standing by")
            monkeypatch.setattr(Storage, "walk_stats", walk_past_both_paths)
        await eventually(partial(_at, catalog, file.id, "user/y/after.txt"), "the rename followed", within=10)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert renamed
    after = await catalog.backend.file_by_id(file.id)
    assert after.status is Status.ACTIVE
    assert [f.file_path for f in await catalog.backend.all_files()] == ["user/y/after.txt"]


async def test_a_file_moved_out_of_a_folder_just_renamed_keeps_its_history(
    catalog: Catalog, files: Path
) -> None:
    """mv A B, then, once B has settled, mv B/f C/f: taking the new folder B must not set
    its files (present) waiting as vanished, or f, gone from B before C/f is due, would be
    deleted and C/f start a new history."""
    settle = 0.5
    watcher = horace.watch.Watcher(catalog, settle=settle)
    write(files / "user/A/f.txt", "moved twice")
    write(files / "user/C/other.txt", "C is there already")
    file = (await catalog.register("user/A/f.txt")).file
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        (files / "user/A").rename(files / "user/B")
        await eventually(partial(_at, catalog, file.id, "user/B/f.txt"), "the first move followed")
        await trio.sleep(settle * 0.6)
        (files / "user/B/f.txt").rename(files / "user/C/f.txt")
        await eventually(partial(_at, catalog, file.id, "user/C/f.txt"), "the second move followed")
        await trio.sleep(3 * settle)
        nursery.cancel_scope.cancel()
    after = await catalog.backend.file_by_id(file.id)
    assert (after.file_path, after.status) == ("user/C/f.txt", Status.ACTIVE)
    assert [f.id for f in await catalog.backend.all_files()].count(file.id) == 1
    assert len(await catalog.backend.all_files()) == 2


async def test_a_folder_looked_at_sets_only_its_gone_files_vanishing(catalog: Catalog, files: Path) -> None:
    """A folder's own event (made again, or moved away and back, before the watcher looked)
    sets waiting as vanished only the files catalogued under it that are gone: one still
    there is no rename's missing half, and is not reported as vanished."""
    watcher = horace.watch.Watcher(catalog, settle=SETTLE)
    write(files / "user/B/here.txt", "still here")
    write(files / "user/B/gone.txt", "gone")
    for name in ("here", "gone"):
        await catalog.register(f"user/B/{name}.txt")
    (files / "user/B/gone.txt").unlink()
    assert await watcher._take("user/B", "test-folder-looked-at")
    assert watcher.status()["vanished"] == 1


async def test_a_big_folder_moved_holds_up_a_file_written_elsewhere_by_a_pass_only(
    catalog: Catalog, files: Path
) -> None:
    """A folder of 6,000 files moved is a backlog of renames, taken a pass (PASS_SECONDS)
    at a time. A file written in another folder is taken a pass after it falls due at most,
    the folders in turn, not after every rename: written as the moved files fall due, it
    comes second in the first pass (nearly all of them still pending); written while they
    are being taken, in the next pass (some still pending). So each content is versioned
    though the next write replaces it before the backlog is done; /health's `behind_s`
    says how late the watcher is meanwhile."""
    backlog = 6000
    for i in range(backlog):
        write(files / f"user/big/f{i}.txt", f"file {i}")
    write(files / "user/other/a.txt", "before")
    await catalog.scan()
    other = await catalog.get_info(file_path="user/other/a.txt")
    watcher = horace.watch.Watcher(catalog, settle=SETTLE)
    pending_when_taken: list[int] = []
    behind: list[float] = []

    async def versioned(content: bytes) -> bool:
        behind.append(watcher.status()["behind_s"])
        if any(v.checksum == sha256(content) for v in await catalog.backend.versions(other.file.id)):
            pending_when_taken.append(watcher.status()["pending"])
            return True
        return False

    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        (files / "user/big").rename(files / "user/big2")
        await eventually(lambda: _true(watcher.status()["pending"] >= backlog), "the moved files due")
        for content in (b"due with the moved files", b"due as they are taken"):
            write(files / "user/other/a.txt", content)
            # (What counts is the backlog left when it is taken, not how long that took:
            # on a loaded machine the first pass alone may take 20 s.)
            await eventually(partial(versioned, content), f"{content!r} versioned", within=90)
        write(files / "user/other/a.txt", "the last")
        await eventually(lambda: _true(watcher.counts.moved == backlog), "every rename followed", within=120)
        nursery.cancel_scope.cancel()
    first, second = pending_when_taken
    assert first > backlog // 2, f"taken late in the backlog: {pending_when_taken}"
    assert second > 0, f"a content waited for the whole backlog: {pending_when_taken}"
    assert max(behind) > 0
    assert (await catalog.file(other.file.id)).file_path == "user/other/a.txt"


async def test_a_catch_up_never_puts_off_the_other_half_of_a_rename(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first catch-up, its walk slow (a big tree, a loaded machine), finishing while
    a moved folder's files wait to be taken: its look at them keeps the time they were
    due, so their files, vanished when they went, wait for them and are followed, not
    deleted (a catch-up that put them off by a settle time let those deletes through:
    nothing due then held them up)."""
    count, settle = 20, 2.0
    for i in range(count):
        write(files / f"user/box/f{i}.txt", f"file {i}")
    await catalog.scan()
    ids = {(await catalog.resolve(f"user/box/f{i}.txt")).id for i in range(count)}
    walk_may_go = threading.Event()
    walk_stats = horace.watch.Watcher._walk_stats

    def slow_walk(self: horace.watch.Watcher, under: str | None = None) -> list[tuple[str, os.stat_result]]:
        if under is None:  # the catch-up's whole walk, not a folder's an event brought
            walk_may_go.wait(30)
        return walk_stats(self, under)

    monkeypatch.setattr(horace.watch.Watcher, "_walk_stats", slow_walk)
    watcher = horace.watch.Watcher(catalog, settle=settle)
    outside = files.parent / "outside-box"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            (files / "user/box").rename(outside)
            await eventually(lambda: _true(watcher.status()["vanished"] == count), "the files vanished")
            gone = trio.current_time()
            await trio.sleep(settle / 4)
            outside.rename(files / "user/box2")  # due a settle time from now
            await eventually(lambda: _true(watcher.status()["pending"] >= count), "the moved files due")
            # The catch-up's look comes after the files' wait began, before they are due.
            await trio.sleep_until(gone + settle + settle / 10)
            walk_may_go.set()
            taken = lambda: _true(watcher.counts.moved + watcher.counts.deleted == count)  # noqa: E731
            await eventually(taken, "every file taken")
            nursery.cancel_scope.cancel()
    finally:
        walk_may_go.set()
    assert (watcher.counts.moved, watcher.counts.deleted) == (count, 0)
    moved = {(await catalog.resolve(f"user/box2/f{i}.txt")).id for i in range(count)}
    assert moved == ids


async def test_the_renames_of_a_folder_moved_are_followed_together(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's files moved are followed a pass at a time, read in one hop and recorded
    in one transaction, not one by one (which took 4-7 ms a file, mostly commits and
    thread hops), each with the stat identity its content was read under (what a scan
    compares to read a file again or not)."""
    for i in range(300):
        write(files / f"user/many/f{i}.txt", f"file {i}")
    await catalog.scan()
    ids = {f"f{i}.txt": (await catalog.resolve(f"user/many/f{i}.txt")).id for i in range(300)}
    batches: list[int] = []
    follow_renames = catalog.follow_renames

    async def counted(vanished: Any, rels: Any, correlation_id: Any) -> Any:
        batches.append(len(rels))
        return await follow_renames(vanished, rels, correlation_id)

    monkeypatch.setattr(catalog, "follow_renames", counted)
    watcher = horace.watch.Watcher(catalog, settle=SETTLE)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        (files / "user/many").rename(files / "user/moved")
        await eventually(lambda: _true(watcher.counts.moved == 300), "every rename followed")
        nursery.cancel_scope.cancel()
    assert sum(batches) == 300 and max(batches) >= 100, batches
    for name, file_id in ids.items():
        assert (await catalog.file(file_id)).file_path == f"user/moved/{name}"
        entry = await catalog.backend.index_entry(file_id)
        assert entry is not None and entry.working is not None  # its stat identity as read
    report = await catalog.scan()
    assert (report.unchanged, report.registered, report.versioned) == (300, 0, 0)


async def test_a_file_moved_three_times_within_a_settle_time_keeps_its_history(
    catalog: Catalog, files: Path
) -> None:
    """src/f -> A/f, A -> B, B/f -> C/f, the last a settle time after the first: the gone
    src/f must wait for C/f, whose event came after src/f was seen gone."""
    settle = 0.5
    watcher = horace.watch.Watcher(catalog, settle=settle)
    write(files / "user/src/f.txt", "moved three times")
    for folder in ("A", "C"):
        (files / "user" / folder).mkdir()
    file = (await catalog.register("user/src/f.txt")).file
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        (files / "user/src/f.txt").rename(files / "user/A/f.txt")
        await trio.sleep(0.1)
        (files / "user/A").rename(files / "user/B")
        await trio.sleep(settle)
        (files / "user/B/f.txt").rename(files / "user/C/f.txt")
        await eventually(partial(_at, catalog, file.id, "user/C/f.txt"), "the moves followed")
        await trio.sleep(3 * settle)
        nursery.cancel_scope.cancel()
    assert (await catalog.backend.file_by_id(file.id)).status is Status.ACTIVE
    assert [f.id for f in await catalog.backend.all_files()] == [file.id]


async def _at(catalog: Catalog, file_id: str, rel: str) -> bool:
    """Whether the file *file_id* is catalogued at *rel* now."""
    return (await catalog.backend.file_by_id(file_id)).file_path == rel


async def _true(value: bool) -> bool:
    return value


async def _scheduled(watcher: horace.watch.Watcher, events_before: int) -> bool:
    return watcher.counts.events > events_before and watcher.status()["pending"] > 0


async def _retried(watcher: horace.watch.Watcher, before: int) -> bool:
    return watcher.counts.retried > before


async def _has(catalog: Catalog, file_id: str, content: str) -> bool:
    found = await catalog.backend.file_by_id(file_id)
    return found is not None and found.checksum == sha256(content)


async def _has_checksum(running: RunningHorace, rel: str, checksum: str) -> bool:
    found = await running.server.catalog.backend.file_by_path(rel)
    return found is not None and found.checksum == checksum


# -- names that can never be catalogued ----------------------------------------------------------

# A bad name as the file system has it (bytes), and as the watcher and a scan report it:
# undecodable bytes shown as \xNN, only up to the bad name (nothing under it is looked at).
NOT_UTF8 = "the name is not valid UTF-8"
BAD_NAMES = {  # (each reported with its name quoted: a byte that is not UTF-8 as \xNN)
    "not-utf8-file": (b"user/bad\xff.txt", f"'user/bad\\xff.txt': {NOT_UTF8}"),
    "not-utf8-folder": (b"user/bad\xfe-dir/inner.txt", f"'user/bad\\xfe-dir': {NOT_UTF8}"),
    "reserved-temp": (
        b"user/.horace-tmp-x",
        "'user/.horace-tmp-x': names starting with .horace-tmp- are reserved for Horace's temp files",
    ),
    "horace-folder": (
        b"user/.horace/inner.txt",
        "'user/.horace': the name .horace is reserved for Horace's own data",
    ),
}


def write_raw(files: Path, raw: bytes, content: bytes) -> None:
    """Write *content* at *raw*, a path under *files* given as bytes (any bytes but / and NUL)."""
    path = os.path.join(os.fsencode(files), raw)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


@pytest.mark.parametrize("case", list(BAD_NAMES))
@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
async def test_a_name_that_cannot_be_catalogued_is_skipped_and_the_watch_goes_on(
    settings: Settings, poll: bool, case: str
) -> None:
    raw, reported = BAD_NAMES[case]
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        write(running.files / "user/before.txt", "written before the bad name")
        await eventually(
            lambda: _has_checksum(running, "user/before.txt", sha256("written before the bad name")),
            "the file written before",
        )
        write_raw(running.files, raw, b"never catalogued")

        async def listed() -> bool:
            return reported in (await health(running))["watcher"]["skipped_names"]

        await eventually(listed, f"{reported!r} in skipped_names")
        write_raw(running.files, raw, b"never catalogued, written again")  # reported once only
        write(running.files / "user/before.txt", "changed after the bad name")
        write(running.files / "user/after.txt", "written after the bad name")
        await eventually(
            lambda: _has_checksum(running, "user/before.txt", sha256("changed after the bad name")),
            "the file written before, changed after",
        )
        await eventually(
            lambda: _has_checksum(running, "user/after.txt", sha256("written after the bad name")),
            "the file written after",
        )
        await quiet(running)

        body = await _http_health(running)
        assert body["status"] == "ok"
        part = body["watcher"]
        assert (part["watching"], part["ok"], part["restarts"], part["errors"]) == (True, True, 0, 0)
        assert (part["skipped"], part["skipped_names"]) == (1, [reported])
        backend = running.server.catalog.backend
        assert {f.file_path for f in await backend.all_files()} == {"user/before.txt", "user/after.txt"}
        assert (await backend.file_by_path("user/before.txt")).current_version == 2
        for content in (b"never catalogued", b"never catalogued, written again"):
            assert await backend.file_by_checksum(sha256(content)) is None


def append_raw(path: bytes, content: bytes) -> None:
    with open(path, "ab") as f:
        f.write(content)


def read_raw(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_deep(files: Path, under: str, name: str, depth: int) -> bytes:
    """Folders *name* nested *depth* deep under files/*under* (made one at a time relative to
    the last, so past PATH_MAX too, as another service may); their path under files/."""
    fd = os.open(files / under, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    return os.fsencode(under) + (b"/" + os.fsencode(name)) * depth


@pytest.mark.parametrize("past", ["by-its-name", "by-its-folder"])
@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
async def test_a_file_renamed_past_the_path_limit_is_deleted_and_a_folder_past_path_max_is_no_degradation(
    settings: Settings, poll: bool, past: str
) -> None:
    """A catalogued file renamed by another service to a path too long to catalog (a long
    name in a folder that is watched, or any name in a folder too deep to be) has left the
    catalog's sight, as if moved out of files/: recorded deleted (its history kept), not
    followed to a path where no later write of it could be versioned. A folder too deep to
    be watched at all holds nothing to catalog: the watch is not degraded by it."""
    # (Written before the watch starts: polling sees it at its first look, so sees it go.)
    write(settings.storage_path / "files/user/a.txt", "first")
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        files = running.files
        await eventually(lambda: _has_checksum(running, "user/a.txt", sha256("first")), "user/a.txt")
        record = await running.server.catalog.backend.file_by_path("user/a.txt")
        if past == "by-its-name":  # user/ and 9 folders: 1,814 bytes, and the name past 2,000
            folder, name = make_deep(files, "user", "d" * 200, 9), b"a" * 200
        else:  # user/ and 10 folders: 2,015 bytes
            folder, name = make_deep(files, "user", "d" * 200, 10), b"a.txt"
        moved_to = os.path.join(os.fsencode(files), folder, name)
        os.rename(files / "user/a.txt", moved_to)

        async def deleted() -> bool:
            found = await running.server.catalog.backend.file_by_id(record.id)
            return found.status is Status.DELETED

        await eventually(deleted, "user/a.txt recorded deleted")
        found = await running.server.catalog.backend.file_by_id(record.id)
        assert (found.file_path, found.checksum) == ("user/a.txt", sha256("first"))
        append_raw(moved_to, b", then more")  # (nothing to version: its path is never catalogued)
        deep_folder = make_deep(files, "shared", "e" * 200, 22)  # past PATH_MAX from /
        write(files / "user/after.txt", "after")
        await eventually(lambda: _has_checksum(running, "user/after.txt", sha256("after")), "user/after.txt")
        await quiet(running)
        assert read_raw(moved_to) == b"first, then more"  # left where its writer put it
        body = await _http_health(running)
        part = body["watcher"]
        assert (body["status"], part["restarts"], part["errors"]) == ("ok", 0, 0)
        assert part["unwatched_folders"] == []
        assert part["skipped"] >= 1  # the long paths, reported
        paths = {f.file_path for f in await running.server.catalog.backend.all_files()}
        assert paths == {"user/a.txt", "user/after.txt"}
        assert len(os.path.join(os.fsencode(files), deep_folder)) > 4096


async def test_a_scan_registers_the_valid_files_beside_names_it_skips(catalog: Catalog, files: Path) -> None:
    valid = ["user/a.txt", "user/m.txt", "user/z.txt", "shared/deep/b.txt"]
    for rel in valid:
        write(files / rel, f"valid {rel}")
    for raw, _ in BAD_NAMES.values():
        write_raw(files, raw, b"content " + raw)  # each its own, so none is a mere duplicate
    report = await catalog.scan()
    assert (report.registered, report.errors) == (len(valid), ())
    assert sorted(report.skipped) == sorted(reported for _, reported in BAD_NAMES.values())
    assert {f.file_path for f in await catalog.backend.all_files()} == set(valid)
    again = await catalog.scan("user")  # a scan of the folder alone: nothing new, the same skips
    assert (again.registered, again.unchanged, len(again.skipped)) == (0, 3, len(BAD_NAMES))


# -- downtime, purge, supervision ----------------------------------------------------------------


async def _catalogue_then_stop(settings: Settings, names: list[str]) -> dict[str, str]:
    """Serve in watch mode until each user/<name>.txt is catalogued; their ids."""
    files = settings.storage_path / "files"
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        for name in names:
            write(files / f"user/{name}.txt", f"{name} before")
        backend = running.server.catalog.backend
        ids = {
            name: (await eventually(partial(backend.file_by_path, f"user/{name}.txt"), name)).id
            for name in names
        }
        await quiet(running)
    return ids


async def test_reconcile_after_downtime_registers_and_versions(settings: Settings) -> None:
    files = settings.storage_path / "files"
    ids = await _catalogue_then_stop(settings, ["keep", "change"])
    # The server is down: nobody watches.
    write(files / "user/added.txt", "added while down")
    write(files / "user/change.txt", "changed while down")
    async with run_horace(watching(settings)) as running:
        backend = running.server.catalog.backend  # reconciled before it listens
        added = await backend.file_by_path("user/added.txt")
        assert added is not None and added.checksum == sha256("added while down") and added.owner == "user"
        changed = await backend.file_by_path("user/change.txt")
        assert (changed.id, changed.current_version, changed.checksum) == (
            ids["change"],
            2,
            sha256("changed while down"),
        )
        kept = await backend.file_by_path("user/keep.txt")
        assert (kept.id, kept.current_version) == (ids["keep"], 1)


async def test_reconcile_after_downtime_soft_deletes_and_moves(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """What was removed or renamed while the server was down is the reconcile's: the
    check at start of a server that watches does not warn of it as missing."""
    files = settings.storage_path / "files"
    ids = await _catalogue_then_stop(settings, ["delete", "rename"])
    (files / "user/delete.txt").unlink()
    os.rename(files / "user/rename.txt", files / "shared/renamed.txt")
    caplog.clear()
    async with run_horace(watching(settings)) as running:
        catalog = running.server.catalog
        await wait_watching(running)
        await quiet(running)
        assert not [r for r in caplog.records if "working_missing" in r.getMessage()]
        assert catalog.checked_at_start is not None and catalog.checked_at_start.findings == ()
        assert not (files / "user/delete.txt").exists()  # not written back
        assert not (files / "user/rename.txt").exists()
        deleted = await catalog.backend.file_by_id(ids["delete"])
        assert deleted.status is Status.DELETED and catalog.storage.has_object(deleted.checksum)
        moved = await catalog.backend.file_by_id(ids["rename"])
        assert (moved.file_path, moved.status) == ("shared/renamed.txt", Status.ACTIVE)
        assert await catalog.backend.file_by_path("user/rename.txt") is None


async def test_a_catalogued_path_taken_by_a_folder_a_symlink_or_a_fifo_never_stops_the_start(
    settings: Settings,
) -> None:
    """While the server was down, another service put a folder, a symlink or a FIFO where a
    catalogued file was. The start's reconcile takes each file as gone (soft-deleted, its
    history kept) and never moves, opens or follows what is there now; the server starts."""
    files = settings.storage_path / "files"
    ids = await _catalogue_then_stop(settings, ["folder", "link", "fifo"])
    for name in ids:
        (files / f"user/{name}.txt").unlink()
    write(files / "user/folder.txt/inside.txt", "a file of the folder")
    os.symlink(files / "user/elsewhere.txt", files / "user/link.txt")
    os.mkfifo(files / "user/fifo.txt")
    async with run_horace(watching(settings)) as running:
        catalog = running.server.catalog
        await wait_watching(running)
        for name, file_id in ids.items():
            gone = await catalog.backend.file_by_id(file_id)
            assert gone is not None and gone.status is Status.DELETED, (name, gone)
            assert catalog.storage.has_object(gone.checksum)
        inside = await eventually(
            partial(catalog.backend.file_by_path, "user/folder.txt/inside.txt"), "the folder's file"
        )
        assert inside.checksum == sha256("a file of the folder")
    assert (files / "user/folder.txt").is_dir() and (files / "user/link.txt").is_symlink()
    assert stat.S_ISFIFO(os.lstat(files / "user/fifo.txt").st_mode)


async def test_purge_after_retention_with_injected_time(settings: Settings) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    async with run_horace(watching(settings, deleted_retention=30 * 86400.0)) as running:
        await wait_watching(running)
        catalog = running.server.catalog
        catalog.clock = lambda: now[0]
        assert catalog.policy.deleted_retention == timedelta(days=30)
        files = running.files
        write(files / "user/old.txt", "deleted long ago")
        write(files / "user/recent.txt", "deleted lately")
        old = await eventually(partial(catalog.backend.file_by_path, "user/old.txt"), "old.txt")
        recent = await eventually(partial(catalog.backend.file_by_path, "user/recent.txt"), "recent.txt")
        (files / "user/old.txt").unlink()  # the watcher soft-deletes it
        await eventually(lambda: _status_is(catalog, old.id, Status.DELETED), "old.txt soft-deleted")
        now[0] += timedelta(days=20)
        (files / "user/recent.txt").unlink()
        await eventually(lambda: _status_is(catalog, recent.id, Status.DELETED), "recent.txt soft-deleted")
        now[0] += timedelta(days=11)  # old deleted 31 days ago, recent 11

        report = await horace.tasks.purge_and_report(catalog)
        assert report == {"files_purged": 1, "objects_deleted": 1}
        assert await catalog.backend.file_by_id(old.id) is None
        assert not catalog.storage.has_object(old.checksum)
        assert (await catalog.backend.file_by_id(recent.id)).status is Status.DELETED
        assert catalog.storage.has_object(recent.checksum)
        assert await horace.tasks.purge_and_report(catalog) == {"files_purged": 0, "objects_deleted": 0}


async def _status_is(catalog: Catalog, file_id: str, status: Status) -> bool:
    found = await catalog.backend.file_by_id(file_id)
    return found is not None and found.status is status


async def test_the_supervised_purge_task_runs(settings: Settings) -> None:
    async with run_horace(watching(settings, purge_interval=0.05)) as running:

        async def runs() -> int:
            part = (await health(running))["purge"]
            return part["runs"] if part["runs"] >= 3 else 0

        await eventually(runs, "three purge runs")
        part = (await health(running))["purge"]
        assert part["restarts"] == 0 and part["last_error"] is None
        assert part["details"]["last_result"] == {"files_purged": 0, "objects_deleted": 0}


@attrs.define
class NeverInPlace:
    """A change feed whose watch never gets in place: entering it waits for *release*,
    then fails."""

    release: trio.Event

    async def __aenter__(self) -> NeverInPlace:
        await self.release.wait()
        raise RuntimeError("injected watcher failure")

    async def __aexit__(self, *_: object) -> None:
        pass


async def test_watcher_crash_restarts_and_catches_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_feed = horace.watch.open_change_feed
    release = trio.Event()
    feeds: list[Any] = [NeverInPlace(release)]

    def flaky_feed(*args: Any, **kwargs: Any) -> Any:
        return feeds.pop() if feeds else real_feed(*args, **kwargs)

    monkeypatch.setattr(horace.watch, "open_change_feed", flaky_feed)
    monkeypatch.setattr(horace.tasks, "supervise", partial(supervise, backoff_base=0.05, backoff_cap=0.1))
    async with run_horace(watching(settings)) as running:
        catalog = running.server.catalog
        write(running.files / "user/during-outage.txt", "written while nobody watched")
        body = await _http_health(running)
        assert (body["status"], body["degraded"]) == ("degraded", ["watcher"])
        assert body["watcher"]["watching"] is False and body["watcher"]["ok"] is False
        release.set()
        await wait_watching(running)
        body = await _http_health(running)
        assert body["status"] == "ok" and "degraded" not in body
        part = body["watcher"]
        assert part["restarts"] == 1 and part["state"] == "running" and part["ok"] is True
        assert "injected watcher failure" in part["last_error"]
        # What changed while the watcher was down is caught up once it is back ...
        await eventually(
            partial(catalog.backend.file_by_path, "user/during-outage.txt"), "the outage's write"
        )
        # ... and new writes are catalogued as before.
        write(running.files / "user/after.txt", "after the restart")
        await eventually(partial(catalog.backend.file_by_path, "user/after.txt"), "a write after the restart")
        assert (await _http_health(running))["watcher"]["restarts"] == 1


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
async def test_health_is_degraded_while_files_is_away(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, poll: bool
) -> None:
    monkeypatch.setattr(horace.tasks, "supervise", partial(supervise, backoff_base=0.05, backoff_cap=0.1))
    async with run_horace(watching(settings, watch_poll=poll)) as running:
        await wait_watching(running)
        assert (await _http_health(running))["status"] == "ok"
        away = running.files.with_name("files-away")
        os.rename(running.files, away)

        async def degraded() -> dict[str, Any] | None:
            body = await _http_health(running)
            return body if body["status"] == "degraded" else None

        body = await eventually(degraded, "/health to say degraded")
        assert body["degraded"] == ["watcher"] and body["backend"]["ok"] is True
        assert (body["watcher"]["watching"], body["watcher"]["ok"]) == (False, False)
        write(away / "user/while-away.txt", "written while files/ was away")
        os.rename(away, running.files)
        await wait_watching(running)
        body = await _http_health(running)
        assert body["status"] == "ok" and "degraded" not in body
        assert body["watcher"]["restarts"] >= 1 and "WatchFailed" in body["watcher"]["last_error"]
        await eventually(
            lambda: _has_checksum(running, "user/while-away.txt", sha256("written while files/ was away")),
            "the write made while files/ was away",
        )


async def test_a_write_that_failed_on_a_full_disk_is_taken_once_there_is_room(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else will write the file again: the watcher must take it again itself, and
    say it is behind (degraded) until then."""
    copy_and_hash = horace.storage._copy_and_hash
    full = True

    def no_space_while_full(src: int, dst: int | None, *rest: Any) -> Any:
        if full and dst is not None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return copy_and_hash(src, dst, *rest)

    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        write(running.files / "user/kept.txt", "first")
        await eventually(lambda: _has_checksum(running, "user/kept.txt", sha256("first")), "the first save")
        monkeypatch.setattr(horace.storage, "_copy_and_hash", no_space_while_full)
        write(running.files / "user/kept.txt", "second, written while the disk is full")
        write(running.files / "user/new.txt", "new, written while the disk is full")

        async def behind() -> dict[str, Any] | None:
            body = await _http_health(running)
            return body if body["watcher"]["failing"] == 2 else None

        body = await eventually(behind, "both writes to fail")
        assert (body["status"], body["degraded"], body["watcher"]["ok"]) == ("degraded", ["watcher"], False)
        assert sorted(body["watcher"]["failing_paths"]) == ["user/kept.txt", "user/new.txt"]
        await trio.sleep(SETTLE * 4)  # taken again, and failing again, while full
        full = False
        await eventually(
            lambda: _has_checksum(running, "user/kept.txt", sha256("second, written while the disk is full")),
            "the failed save taken again",
        )
        await eventually(
            lambda: _has_checksum(running, "user/new.txt", sha256("new, written while the disk is full")),
            "the failed new file taken again",
        )
        body = await _http_health(running)
        assert body["status"] == "ok" and body["watcher"]["failing"] == 0
        assert body["watcher"]["errors"] >= 4  # each failed at least twice
        versions = await running.server.catalog.backend.versions(
            (await running.server.catalog.backend.file_by_path("user/kept.txt")).id
        )
        assert [v.checksum for v in versions] == [  # newest first
            sha256("second, written while the disk is full"),
            sha256("first"),
        ]


async def test_a_store_gone_read_only_is_said_so_and_its_new_files_wait_in_failing_paths(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 after an error (errors=remount-ro): the mount still says read-write and the
    access check yes, but every write is EROFS. /health says the store is not writable, a
    new file waits in failing_paths (the watcher goes on, no restart), and is taken once
    the store is writable again."""
    tmpfile_open = os.open
    read_only = False

    def refused_while_read_only(path: Any, flags: int, *rest: Any, **named: Any) -> int:
        if read_only and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return tmpfile_open(path, flags, *rest, **named)

    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        monkeypatch.setattr(horace.storage.os, "open", refused_while_read_only)
        read_only = True
        write(running.files / "user/new.txt", "new, while read-only")

        async def refused() -> dict[str, Any] | None:
            body = await _http_health(running)
            failing = body["watcher"]["failing_paths"] == ["user/new.txt"]
            return body if failing and not body["store"]["details"]["writable"] else None

        body = await eventually(refused, "the store said read-only and the new file failing")
        assert body["watcher"]["restarts"] == 0 and body["store"]["ok"] is False, body
        read_only = False
        await eventually(
            lambda: _has_checksum(running, "user/new.txt", sha256("new, while read-only")),
            "the new file taken once the store is writable",
        )


@attrs.define
class Outage:
    """A database outage, made up: backend calls wrapped by :meth:`unless_down` fail as
    an unreachable database's do while :attr:`down`."""

    down: bool = True

    def unless_down(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call_unless_down(*args: Any) -> Any:
            if self.down:
                raise BackendUnavailable("the catalog database is down (test)")
            return await call(*args)

        return call_unless_down


async def test_changes_made_while_the_catalog_is_down_wait_in_failing_paths(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog down (a database outage): the watch goes on, each change it cannot take
    is listed in failing_paths and taken again once the catalog answers, without a write
    or a restart of the watcher."""
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        backend = running.server.catalog.backend
        by_path, by_id = backend.file_by_path, backend.file_by_id
        write(running.files / "user/kept.txt", "first")
        write(running.files / "user/going.txt", "soon gone")
        for rel, text in (("user/kept.txt", "first"), ("user/going.txt", "soon gone")):
            await eventually(partial(_has_checksum, running, rel, sha256(text)), f"{rel} catalogued")
        going = await by_path("user/going.txt")
        outage = Outage()
        monkeypatch.setattr(backend, "file_by_path", outage.unless_down(by_path))
        monkeypatch.setattr(backend, "file_by_id", outage.unless_down(by_id))
        write(running.files / "user/kept.txt", "second, written while the catalog is down")
        write(running.files / "user/new.txt", "new, written while the catalog is down")
        (running.files / "user/going.txt").unlink()

        async def behind() -> dict[str, Any] | None:
            body = await _http_health(running)
            return body if body["watcher"]["failing"] == 3 else None

        body = await eventually(behind, "the three changes to fail")
        assert body["watcher"]["watching"] and not body["watcher"]["ok"], body["watcher"]
        assert sorted(body["watcher"]["failing_paths"]) == ["user/going.txt", "user/kept.txt", "user/new.txt"]
        await trio.sleep(SETTLE * 4)  # taken again, and failing again, while down
        assert (await _http_health(running))["watcher"]["watching"]
        outage.down = False
        for rel, text in (
            ("user/kept.txt", "second, written while the catalog is down"),
            ("user/new.txt", "new, written while the catalog is down"),
        ):
            await eventually(partial(_has_checksum, running, rel, sha256(text)), f"{rel} taken again")

        async def deleted() -> bool:
            return (await by_id(going.id)).status is Status.DELETED

        await eventually(deleted, "the file gone while the catalog was down deleted")
        kept = await by_path("user/kept.txt")
        assert kept.current_version == 2
        body = await _http_health(running)
        assert body["status"] == "ok" and body["watcher"]["failing"] == 0, body["watcher"]


async def test_what_waited_for_the_catalog_is_taken_as_soon_as_it_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that failed for the catalog out of reach is taken once the catalog answers
    again, not at the end of its own wait (which grows to a minute: by then the file may
    have been written again, and the content that waited lost)."""
    monkeypatch.setattr(horace.watch, "CATALOG_LOOK_EVERY", 0.1)
    monkeypatch.setattr(Watcher, "_retry_wait", lambda self, failures: 3600.0)
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        backend = running.server.catalog.backend
        by_path, ping = backend.file_by_path, backend.ping
        write(running.files / "user/kept.txt", "first")
        await eventually(partial(_has_checksum, running, "user/kept.txt", sha256("first")), "catalogued")
        outage = Outage()
        monkeypatch.setattr(backend, "file_by_path", outage.unless_down(by_path))
        monkeypatch.setattr(backend, "ping", outage.unless_down(ping))
        write(running.files / "user/kept.txt", "second, written while the catalog is down")

        async def failing() -> bool:
            return (await health(running))["watcher"]["failing"] == 1

        await eventually(failing, "the change to fail")
        await trio.sleep(0.5)  # (the catalog looked for, and still out of reach)
        outage.down = False
        text = "second, written while the catalog is down"
        await eventually(
            partial(_has_checksum, running, "user/kept.txt", sha256(text)), "taken again", within=5
        )
        assert (await health(running))["watcher"]["failing"] == 0


async def test_a_catch_up_is_done_again_while_the_catalog_is_down(
    catalog: Catalog, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catch-up (at the watch's start, after lost events) that meets the catalog down
    waits and is done again, the watcher not ok meanwhile: it is not a crash."""
    write(files / "user/written-before.txt", "before the watch")
    working_index = catalog.backend.working_index
    refusals = 2

    async def down_twice() -> Any:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise BackendUnavailable("the catalog database is down (test)")
        return await working_index()

    monkeypatch.setattr(catalog.backend, "working_index", down_twice)
    watcher = Watcher(catalog, settle=0.01)
    seen: list[str | None] = []

    async def look() -> None:
        while True:
            seen.append(watcher.status()["catch_up_failing"])
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        await watcher._catch_up_until_done(0.0)
        nursery.cancel_scope.cancel()
    assert refusals == 0 and watcher._due.keys() == {"user/written-before.txt"}
    assert any(why and "down (test)" in why for why in seen), seen
    assert watcher.status()["catch_up_failing"] is None


async def test_a_folder_that_cannot_be_watched_is_watched_once_its_mode_changes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable folder (which root reads anyway: here the kernel's refusal is made
    up) is listed as unwatched, the watcher not ok; its chmod brings it under watch, with
    what was written in it meanwhile."""
    refused = {"locked"}
    add_watch = inotify_simple.INotify.add_watch

    def refusing(self: inotify_simple.INotify, path: str, mask: int) -> int:
        if os.path.basename(path) in refused:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return add_watch(self, path, mask)

    monkeypatch.setattr(inotify_simple.INotify, "add_watch", refusing)
    locked = settings.storage_path / "files/user/locked"
    write(locked / "before.txt", "written before the start")
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        body = await _http_health(running)
        assert (body["status"], body["watcher"]["ok"]) == ("degraded", False)
        assert body["watcher"]["unwatched_folders"] == ["'user/locked': Permission denied"]
        await eventually(
            lambda: _has_checksum(running, "user/locked/before.txt", sha256("written before the start")),
            "the catch-up of the folder it could list",
        )
        write(locked / "meanwhile.txt", "written while unwatched")
        refused.clear()
        locked.chmod(0o755)
        await eventually(
            lambda: _has_checksum(running, "user/locked/meanwhile.txt", sha256("written while unwatched")),
            "what was written while the folder was not watched",
        )
        write(locked / "after.txt", "written once watched")
        await eventually(
            lambda: _has_checksum(running, "user/locked/after.txt", sha256("written once watched")),
            "a write in the folder now watched",
        )
        body = await _http_health(running)
        assert (body["status"], body["watcher"]["unwatched_folders"]) == ("ok", [])


@attrs.define
class Lossy:
    """The real change feed, but the changes of files named *hidden* are dropped until
    *report* is set; the next batch then says events were lost (as an inotify queue
    overflow does)."""

    feed: Any
    hidden: str
    report: trio.Event = attrs.Factory(trio.Event)
    lost_since: float = attrs.Factory(time.time)

    async def __aenter__(self) -> Lossy:
        await self.feed.__aenter__()
        return self

    @property
    def unwatched(self) -> dict[str, str]:
        return self.feed.unwatched  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> None:
        await self.feed.__aexit__(*exc)

    def __aiter__(self) -> Lossy:
        return self

    def wrote(self, path: Path) -> None:
        self.feed.wrote(path)

    async def __anext__(self) -> Batch:
        batch = await self.feed.__anext__()
        kept = tuple(change for change in batch.changes if change.path.name != self.hidden)
        if not self.report.is_set():
            return Batch(kept)
        self.hidden = ""
        return Batch(batch.changes, self.lost_since)


async def test_lost_events_are_caught_up(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    feeds: list[Lossy] = []

    def lossy_feed(*args: Any, **kwargs: Any) -> Lossy:
        feeds.append(Lossy(open_change_feed(*args, **kwargs), "unseen.txt"))
        return feeds[-1]

    monkeypatch.setattr(horace.watch, "open_change_feed", lossy_feed)
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        write(running.files / "user/seen.txt", "seen")
        await eventually(lambda: _has_checksum(running, "user/seen.txt", sha256("seen")), "seen.txt")
        write(running.files / "user/unseen.txt", "its events are lost")
        write(running.files / "user/sentinel.txt", "after the lost events")
        await eventually(
            lambda: _has_checksum(running, "user/sentinel.txt", sha256("after the lost events")),
            "the sentinel",
        )
        await quiet(running)
        backend = running.server.catalog.backend
        assert await backend.file_by_path("user/unseen.txt") is None  # nothing but a catch-up finds it
        feeds[-1].report.set()
        write(running.files / "user/trigger.txt", "the batch that says events were lost")
        await eventually(
            lambda: _has_checksum(running, "user/unseen.txt", sha256("its events are lost")),
            "the file whose events were lost",
        )
        assert len(feeds) == 1 and (await health(running))["watcher"]["restarts"] == 0


class FailsLossy(Lossy):
    """:class:`Lossy`, but once *report* is set the feed fails instead of saying events
    were lost (an overflow whose watch of the tree anew fails: the watch limit reached),
    its failure telling when what it never handed over began."""

    async def __anext__(self) -> Batch:
        batch = await self.feed.__anext__()
        if not self.report.is_set():
            return Batch(tuple(change for change in batch.changes if change.path.name != self.hidden))
        self.report = trio.Event()
        self.hidden = ""
        failed = WatchFailed("cannot watch a folder: the inotify watch limit (as a test)")
        failed.lost_since = self.lost_since
        raise failed


async def test_events_lost_as_the_watch_fails_are_caught_up_by_the_next_watch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalogued file written while its events were lost, more than the catch-up's
    slack before the watch failed: the next watch's catch-up reaches back to the lost
    events, not only to a little before the failure."""
    feeds: list[FailsLossy] = []

    def lossy_feed(*args: Any, **kwargs: Any) -> FailsLossy:
        feeds.append(FailsLossy(open_change_feed(*args, **kwargs), "kept.txt"))
        return feeds[-1]

    monkeypatch.setattr(horace.watch, "CATCH_UP_SLACK", 0.2)
    monkeypatch.setattr(horace.watch, "open_change_feed", lossy_feed)
    async with run_horace(watching(settings)) as running:
        await wait_watching(running)
        write(running.files / "user/kept.txt", "version 1")
        await running.server.catalog.register("user/kept.txt")
        await quiet(running)
        feeds[-1].lost_since = time.time()
        write(running.files / "user/kept.txt", "version 2, its events lost")
        await trio.sleep(1.0)  # (past the slack)
        feeds[-1].report.set()
        write(running.files / "user/trigger.txt", "the batch the watch fails on")
        await eventually(
            lambda: _has_checksum(running, "user/kept.txt", sha256("version 2, its events lost")),
            "the version whose events were lost",
        )
        assert len(feeds) == 2 and (await health(running))["watcher"]["restarts"] == 1


async def test_a_failing_inotify_feed_says_since_when_changes_may_be_lost(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    async with InotifyFeed(root) as feed:
        write(root / "one.txt", "handed over")
        assert (f"{root}/one.txt", False) in await next_batch(feed)
        handed = time.time()
        write(root / "two.txt", "read, never handed over")
        os.rename(root, tmp_path / "files-away")
        with pytest.raises(WatchFailed) as failed:
            await next_batch(feed)
        assert failed.value.lost_since is not None and failed.value.lost_since <= handed


# -- the inotify feed itself ---------------------------------------------------------------------


async def next_batch(feed: InotifyFeed) -> set[tuple[str, bool]]:
    with trio.fail_after(TIMEOUT):
        batch = await feed.__anext__()
    return {(str(change.path), change.gone) for change in batch.changes}


async def test_the_inotify_feed_follows_folders_moved_and_stops_with_its_root(tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "a/sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    async with InotifyFeed(root) as feed:
        write(root / "a/sub/one.txt", "one")
        assert (f"{root}/a/sub/one.txt", False) in await next_batch(feed)
        os.rename(root / "a", root / "b")  # moved within: its watches follow it
        assert await next_batch(feed) == {(f"{root}/a", True), (f"{root}/b", False)}
        write(root / "b/sub/two.txt", "two")
        assert (f"{root}/b/sub/two.txt", False) in await next_batch(feed)
        os.rename(root / "b", outside)  # moved out: no longer watched
        assert await next_batch(feed) == {(f"{root}/b", True)}
        write(outside / "sub/three.txt", "written outside")
        write_raw(root, b"bad\xff.txt", b"a name that is not UTF-8")
        assert await next_batch(feed) == {(f"{root}/bad\udcff.txt", False)}  # nothing from outside
        (root / "c").mkdir()
        assert await next_batch(feed) == {(f"{root}/c", False)}
        write(root / "c/four.txt", "in a new folder")
        assert (f"{root}/c/four.txt", False) in await next_batch(feed)
        os.rename(root, tmp_path / "files-away")
        with pytest.raises(WatchFailed, match="moved, removed or unmounted"):
            await next_batch(feed)


async def test_an_inotify_queue_overflow_says_events_were_lost_and_watches_anew(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    async with InotifyFeed(root) as feed:
        inotify: Any = feed._inotify
        (root / "late").mkdir()
        with trio.fail_after(TIMEOUT):
            await trio.lowlevel.wait_readable(inotify.fd)
        inotify.read(timeout=0)  # the folder's creation is lost: it is not watched
        real_read = inotify.read

        def overflowed(timeout: int) -> list[Any]:
            inotify.read = real_read
            return [inotify_simple.Event(-1, inotify_simple.flags.Q_OVERFLOW, 0, ""), *real_read(timeout)]

        inotify.read = overflowed
        before = time.time()
        write(root / "trigger.txt", "makes the feed read")
        with trio.fail_after(TIMEOUT):
            batch = await feed.__anext__()
        assert batch.lost_since is not None and batch.lost_since <= before
        write(root / "late/inside.txt", "seen only if the folder is watched anew")
        assert (f"{root}/late/inside.txt", False) in await next_batch(feed)


async def test_the_inotify_feed_needs_its_root(tmp_path: Path) -> None:
    with pytest.raises(WatchFailed, match="cannot watch"):
        async with InotifyFeed(tmp_path / "missing"):
            pass


async def _http_health(running: RunningHorace) -> dict[str, Any]:
    """/health's body, read over HTTP; the answer must be 200 (degraded or not)."""

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(running.health_url, timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())  # type: ignore[no-any-return]

    return await trio.to_thread.run_sync(fetch)


async def test_a_lease_break_does_not_kill_the_watching_process(tmp_path: Path) -> None:
    """The watcher's probe takes a read lease; a writer opening the file at that instant
    breaks it, and the kernel signals the lease holder with SIGIO, whose default action
    ends the process. Run in a separate process, whose death would fail this test."""
    done = await trio.run_process(
        [sys.executable, str(WORKERS / "writer_lease_break.py"), str(tmp_path / "root"), "2.0"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr.decode()[-2000:])
    word, probes, busy = done.stdout.decode().split()
    assert word == "survived" and int(probes) > 0
    assert int(busy) > 0  # the writer did hold the file open during some probes
