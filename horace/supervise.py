"""Supervised child tasks: restarted with backoff when they crash, visible in /health."""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from horace.backends.protocol import OUTAGES
from horace.storage import STORAGE_ERRNOS

log = logging.getLogger("horace.supervise")
# What ends a server, a watcher or a stdio session gracefully: Ctrl-C, a service manager's
# stop, and the terminal or SSH session it ran in hanging up.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def stop_on_signals(
    stop: Callable[[str], object],
    stopping: Callable[[], bool],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A stop signal calls *stop* with why (a graceful stop); one that comes while
    *stopping* cuts it short: everything is cancelled now (each commit whole, as ever),
    and as this is not a clean stop the exit is a Ctrl-C's (130), not 0. Started
    (``nursery.start``) once the signals are caught; watch them until the stop is done
    (the sinks flushed), so that none meets its default meanwhile."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            if stopping():
                log.warning("second signal: stopping now")
                raise KeyboardInterrupt
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            stop(f"signal {signal.Signals(signum).name}")


class Environmental(Exception):
    """A failure of what a task works on, not of the task (a watch limit reached): logged
    in a line, as an outage is, not as a crash with its traceback."""


def _environmental(failure: BaseException) -> bool:
    """The database, the disk or the system's limits, not a bug."""
    if isinstance(failure, OSError):
        return failure.errno in STORAGE_ERRNOS
    return isinstance(failure, (*OUTAGES, Environmental))


def backoff(failures: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff (base doubling to cap), jittered over its upper half. (As a
    float: an int's 2**1024 does not convert, so hours of failures in a row would raise.)"""
    delay = min(cap, base * 2.0 ** min(max(0, failures - 1), 1023))
    return delay / 2 + random.random() * delay / 2


@attrs.define
class TaskState:
    name: str
    state: str = "starting"
    restarts: int = 0
    runs: int = 0
    last_error: str | None = None
    last_run: str | None = None
    details: dict[str, Any] = attrs.field(factory=dict)

    def status(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def supervise(
    state: TaskState,
    body: Callable[[], Awaitable[None]],
    *,
    backoff_base: float = 1.0,
    backoff_cap: float = 30.0,
    fatal: tuple[type[Exception], ...] = (),
) -> None:
    """Run *body* until it returns; when it raises, log, wait, and run it again. A *fatal*
    failure is not retried: it ends the task, and the nursery it runs in."""
    failures = 0
    while True:
        state.state = "running"
        try:
            await body()
        except Exception as exc:
            if isinstance(the_failure(exc), fatal):
                state.state, state.last_error = "failed", _describe(exc)
                raise
            failures += 1
            state.restarts += 1
            state.state = "restarting"
            state.last_error = _describe(exc)
            delay = backoff(failures, backoff_base, backoff_cap)
            if _environmental(the_failure(exc)):  # one line
                log.warning(
                    "task %s failed (%s); again in %.0f s",
                    state.name,
                    state.last_error,
                    delay,
                    extra={"task": state.name},
                )
            else:
                log.exception(
                    "task %s crashed; restarting (%d)", state.name, state.restarts, extra={"task": state.name}
                )
            await trio.sleep(delay)
        else:
            state.state = "done"
            return


@asynccontextmanager
async def together() -> AsyncIterator[trio.Nursery]:
    """A nursery whose one failure is raised as itself, as the same work done in one task
    would raise it (not in an exception group): for work split over threads, or a body
    with a helper task beside it."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        failure = the_failure(group)
        if failure is group:
            raise
        raise failure from None  # the others were cancelled because of it


def the_failure(exc: BaseException) -> BaseException:
    """The one exception inside nested groups (a nursery wraps what its tasks raised, and
    the tasks it cancelled because of it add their Cancelled; several tasks may meet the
    same failure, which counts once); *exc* itself when there are several."""
    leaves = [leaf for leaf in _leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    if leaves and all(type(leaf) is type(leaves[0]) and str(leaf) == str(leaves[0]) for leaf in leaves):
        return leaves[0]
    return exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _describe(exc: BaseException) -> str:
    inner = the_failure(exc)
    return f"{type(inner).__name__}: {inner}"


async def every(state: TaskState, interval: float, work: Callable[[], Awaitable[Any]]) -> None:
    """Do *work* now and then every *interval* seconds (the body of a periodic task)."""
    while True:
        result = await work()
        state.runs += 1
        state.last_run = datetime.now(UTC).isoformat(timespec="seconds")
        if result is not None:
            state.details["last_result"] = result
        state.state = "idle"
        await trio.sleep(interval)
