"""The per-file write lock: Trio inside a catalog, an OFD record lock across them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from horace.locks import FileLocks
from horace.model import ErrorCode, HoraceError


async def test_two_lock_tables_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    lock_file = tmp_path / "locks"
    lock_file.touch()
    first, second = FileLocks(lock_file, wait_seconds=0.2), FileLocks(lock_file, wait_seconds=0.2)
    async with first.hold("user/a.txt"):
        lock_file.touch()  # another open and close of the file must not drop the lock
        with pytest.raises(HoraceError) as refused:
            async with second.hold("user/a.txt"):
                pass
        assert refused.value.code is ErrorCode.FILE_LOCKED
        async with second.hold("user/b.txt"):  # another path is free
            pass
    async with second.hold("user/a.txt"):  # and the first path once released
        pass


async def test_no_wait_takes_a_free_lock_and_refuses_a_held_one(tmp_path: Path) -> None:
    """HORACE_LOCK_WAIT=0: no waiting for a lock, but a free one is still taken."""
    lock_file = tmp_path / "locks"
    lock_file.touch()
    here, there = FileLocks(lock_file, wait_seconds=0), FileLocks(lock_file, wait_seconds=0)
    refusals: list[ErrorCode] = []

    async def write_a(locks: FileLocks) -> None:
        try:
            async with locks.hold("user/a.txt"):
                pass
        except HoraceError as exc:
            refusals.append(exc.code)

    async with here.hold("user/a.txt"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_a, here)  # another task of this table
            nursery.start_soon(write_a, there)  # another process's table
        assert refusals == [ErrorCode.FILE_LOCKED] * 2
        async with there.hold("user/b.txt"):
            pass
    async with there.hold("user/a.txt"):
        pass


async def test_waiting_is_cancellable_and_every_waiter_gets_its_turn(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path / "locks", wait_seconds=10)
    inside = 0
    turns: list[int] = []

    async def writer(n: int) -> None:
        nonlocal inside
        async with locks.hold("same"):
            inside += 1
            assert inside == 1, "two holders at once"
            turns.append(n)
            await trio.sleep(0.005)
            inside -= 1

    waited = []

    async def impatient() -> None:
        with trio.move_on_after(0.05) as scope:
            async with locks.hold("same"):
                pytest.fail("got a lock that is held")
        waited.append(scope.cancelled_caught)

    async with locks.hold("same"), trio.open_nursery() as nursery:
        nursery.start_soon(impatient)
    assert waited == [True]
    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(writer, n)
    assert sorted(turns) == list(range(10))


async def test_hold_free_takes_what_is_free_and_waits_for_nothing(tmp_path: Path) -> None:
    lock_file = tmp_path / "locks"
    here, there = FileLocks(lock_file, wait_seconds=0.2), FileLocks(lock_file, wait_seconds=0.2)
    async with here.hold("a"), there.hold("b"):  # one held in this table, one in another
        with trio.fail_after(1):  # never waits for either
            async with here.hold_free(["a", "b", "c", "d", "c"]) as held:
                assert held == ["c", "d"]
                for path in held:  # really held, against both tables
                    with pytest.raises(HoraceError):
                        async with there.hold(path):
                            pass
    # Every lock it took is given back, in this table and in the file.
    async with there.hold("c"), there.hold("d"):
        pass
    async with here.hold_free(["a", "b", "c"]) as held:
        assert held == ["a", "b", "c"]
    assert not here._entries and not there._entries  # no entry outlives its holders
