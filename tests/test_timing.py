"""The time-based behaviour of the supervised tasks, exactly, on Trio's mock clock.

Backoff of a failing sink and of a crashing task (about 1 s doubling to 30 s, jittered over
the upper half of each delay, SPEC §6), and the period of the periodic work (purge, fsck):
each attempt's time is read off ``trio.current_time()``, which the autojump clock moves
straight to the next deadline, so a 30 s backoff costs no real time and is measured to the
microsecond.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise
from typing import Any

import pytest
import trio
import trio.testing

from horace.backends.protocol import BackendUnavailable
from horace.changefeed import WatchFailed
from horace.sinks.supervisor import STALLED_SECONDS, Deliver, SinkRunner, SinkUnavailable
from horace.supervise import TaskState, backoff, every, stop_signals, supervise

BASE, CAP = 1.0, 30.0


def expected_delays(failures: int) -> list[tuple[float, float]]:
    """The (lowest, highest) delay after each of *failures* consecutive failures."""
    bounds = []
    for n in range(1, failures + 1):
        delay = min(CAP, BASE * 2 ** (n - 1))
        bounds.append((delay / 2, delay))
    return bounds


async def test_a_second_stop_signal_cancels_the_service_now_and_is_a_ctrl_c() -> None:
    """The first stop signal calls the service's stop; a second one cancels the service,
    which would otherwise go on (a graceful stop waiting), and it ends as a Ctrl-C does;
    a third, while it winds down, is caught too: none reaches the handler from before,
    which here stands for the signal's default (the end of the process)."""
    escaped: list[int] = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: escaped.append(signum))
    stops: list[str] = []
    try:
        with trio.fail_after(10), pytest.raises(KeyboardInterrupt):
            async with stop_signals() as signals:
                await signals.watch(stops.append)
                os.kill(os.getpid(), signal.SIGHUP)
                while not stops:
                    await trio.sleep(0.01)
                os.kill(os.getpid(), signal.SIGHUP)
                try:
                    await trio.sleep_forever()  # (a graceful stop that would go on and on)
                finally:
                    with trio.CancelScope(shield=True):
                        os.kill(os.getpid(), signal.SIGHUP)  # a third, as it winds down
                        await trio.sleep(0.2)
    finally:
        signal.signal(signal.SIGHUP, before)
    assert stops == ["signal SIGHUP"]
    assert escaped == []


def test_backoff_doubles_to_its_cap_within_its_jitter() -> None:
    for n, (low, high) in enumerate(expected_delays(9), 1):
        seen = [backoff(n, BASE, CAP) for _ in range(200)]
        assert all(low <= d <= high for d in seen), (n, min(seen), max(seen))
        assert max(seen) - min(seen) > (high - low) / 4  # jittered, not fixed


@pytest.mark.parametrize("failures", [1025, 10**6])
def test_backoff_stays_at_its_cap_however_long_the_failures_go_on(failures: int) -> None:
    """A sink whose peer is down for hours (a failure every cap or so: 1,025 in 6.4 h at
    the defaults) still waits its cap; the delay once overflowed, and the sink's task died."""
    seen = [backoff(failures, 0.001, CAP) for _ in range(50)]
    assert all(CAP / 2 <= d <= CAP for d in seen), (min(seen), max(seen))


class FailingTransport:
    """Refuses to connect *failures* times (recording when), then takes everything."""

    name = "failing"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.stored: list[dict[str, Any]] = []

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.failures:
            raise SinkUnavailable("down")

        async def deliver(batch: list[dict[str, Any]]) -> int:
            self.stored.extend(batch)
            return 0

        yield deliver


class HungTransport:
    """Connects, and never answers a batch (a Godot that takes the connection and hangs)."""

    name = "hung"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        async def deliver(batch: list[dict[str, Any]]) -> int:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        yield deliver


async def test_a_sink_whose_entries_wait_with_nothing_delivered_is_not_ok(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = SinkRunner(HungTransport(), spool_dir=None, flush_seconds=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert runner.status()["ok"] and runner.status()["stalled_s"] == 0.0  # nothing waits
        runner.emit({"message": "m"})
        await trio.sleep(STALLED_SECONDS - 1)
        assert runner.status()["ok"] and runner.status()["state"] == "connected"
        await trio.sleep(2)
        status = runner.status()
        stalled = (status["ok"], status["state"], status["stalled_s"])
        assert stalled == (False, "connected", STALLED_SECONDS + 1)
        nursery.cancel_scope.cancel()


async def test_a_sink_retries_on_the_backoff_schedule(autojump_clock: trio.testing.MockClock) -> None:
    transport = FailingTransport(failures=8)
    runner = SinkRunner(transport, spool_dir=None, backoff_base=BASE, backoff_cap=CAP)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.emit({"message": "held back"})
        with trio.fail_after(600):
            while not transport.stored:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    waits = [b - a for a, b in pairwise(transport.attempts)]
    assert len(waits) == 8
    for wait, (low, high) in zip(waits, expected_delays(8), strict=True):
        assert low <= wait <= high + 1e-6, (waits, expected_delays(8))
    assert waits[-1] > 8  # capped at 30 s, doubling from 1 s: the last waits are long
    assert transport.stored == [{"message": "held back"}] and runner.failures == 0


async def test_what_the_environment_does_is_a_line_and_a_bug_is_a_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A watch limit reached or a store gone read-only is the operator's to mend, said in
    one line each time it is met; only what may be a bug is logged with its traceback."""
    failures = iter(
        [
            WatchFailed("the inotify watch limit is reached (fs.inotify.max_user_watches)"),
            OSError(errno.EROFS, "Read-only file system"),
            RuntimeError("a bug"),
        ]
    )

    async def body() -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure

    with caplog.at_level(logging.WARNING, logger="horace.supervise"):
        await supervise(TaskState("watcher"), body, backoff_base=BASE, backoff_cap=CAP)
    said = [(r.levelno, r.exc_info is not None) for r in caplog.records if r.name == "horace.supervise"]
    assert said == [(logging.WARNING, False), (logging.WARNING, False), (logging.ERROR, True)]


async def test_a_crashing_task_is_restarted_on_the_backoff_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def crashes_five_times() -> None:
        starts.append(trio.current_time())
        if len(starts) <= 5:
            raise RuntimeError("crash")

    state = TaskState("flaky")
    await supervise(state, crashes_five_times, backoff_base=BASE, backoff_cap=CAP)
    waits = [b - a for a, b in pairwise(starts)]
    for wait, (low, high) in zip(waits, expected_delays(5), strict=True):
        assert low <= wait <= high + 1e-6
    assert state.restarts == 5 and state.state == "done" and "RuntimeError: crash" in str(state.last_error)


async def test_a_task_failing_for_the_database_says_so_in_one_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The database down (or refusing Horace's role, or full) is not a bug: a warning with
    no traceback; anything else is logged with its traceback."""
    failures = [BackendUnavailable("PostgreSQL at db:5432/horace is unavailable"), RuntimeError("a bug")]

    async def fails_twice() -> None:
        if failures:
            raise failures.pop(0)

    await supervise(TaskState("purge"), fails_twice, backoff_base=BASE, backoff_cap=CAP)
    outage, bug = [r for r in caplog.records if r.name == "horace.supervise"]
    assert outage.levelname == "WARNING" and outage.exc_info is None
    assert "BackendUnavailable: PostgreSQL at db:5432/horace is unavailable" in outage.getMessage()
    assert bug.levelname == "ERROR" and bug.exc_info is not None


@pytest.mark.parametrize("interval", [60.0, 3600.0])
async def test_periodic_work_runs_on_its_interval(
    autojump_clock: trio.testing.MockClock, interval: float
) -> None:
    runs: list[float] = []

    async def work() -> dict[str, int]:
        runs.append(trio.current_time())
        await trio.sleep(interval / 10)  # the work itself takes a while
        return {"runs": len(runs)}

    state = TaskState("periodic")
    with trio.move_on_after(interval * 4.5):
        await every(state, interval, work)
    assert [round(b - a, 6) for a, b in pairwise(runs)] == [round(interval * 1.1, 6)] * 4
    assert state.runs == 4 and state.details["last_result"] == {"runs": 4}
