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


class StopSignals:
    """The stop signals of a service (:func:`stop_signals`), once it :meth:`watch` es them:
    the first calls its *stop* (a graceful stop); a second one cancels the service now
    (each commit whole, as ever) and, as this is no clean stop, it ends as a Ctrl-C does
    (130), not 0; any later one changes nothing. They are watched until the service has
    ended, its sinks flushed and its catalog closed: none meets its default meanwhile."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.scope = trio.CancelScope()  # the service's: what a second signal cancels
        self.signalled = False
        self.interrupted = False

    async def watch(self, stop: Callable[[str], object]) -> None:
        """Catch the stop signals from now on; *stop* is called with why."""
        await self._nursery.start(self._watch, stop)

    async def _watch(self, stop: Callable[[str], object], *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as received:
            task_status.started()
            async for signum in received:
                name = signal.Signals(signum).name
                if not self.signalled:
                    self.signalled = True
                    log.info("signal %s: shutting down", name)
                    stop(f"signal {name}")
                elif not self.interrupted:
                    self.interrupted = True
                    log.warning("second signal: stopping now")
                    self.scope.cancel()
                else:
                    log.info("signal %s: stopping now already", name)


@asynccontextmanager
async def stop_signals() -> AsyncIterator[StopSignals]:
    """Around a service (its catalog's opening and closing included): its
    :class:`StopSignals`, which it watches once it serves (before, a signal has its
    default: it stops the start where it is). A service the second signal cut short
    raises :class:`KeyboardInterrupt` once it has ended."""
    async with together() as nursery:
        signals = StopSignals(nursery)
        with signals.scope:
            yield signals
        nursery.cancel_scope.cancel()
    if signals.interrupted:
        raise KeyboardInterrupt


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
