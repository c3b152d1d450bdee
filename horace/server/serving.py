"""The server put together: the sessions, the log sinks and the background tasks."""

from __future__ import annotations

import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import attrs
import trio

from horace.assemble import StartCheck, open_catalog
from horace.backends import open_backend, place_problem
from horace.backends.protocol import UnusableURL
from horace.catalog import Catalog, Progress
from horace.config import Settings
from horace.logs import of_the_call
from horace.model import RepliesLost
from horace.redact import redact_url
from horace.server import heap
from horace.server.lifecycle import HealthPart, HoraceServer, listen
from horace.server.mcp import McpSession
from horace.server.observer import Observer
from horace.server.sinkprocess import SinkPlan, sink_process
from horace.server.sinks import SinkWiring, godot_level, run_sinks
from horace.server.stdio import StdioFds, StdioSession, open_stdio
from horace.sinks.conversations import TURNS_APPLICATION, TURNS_CONNECTIONS, talks_in
from horace.sinks.godot import GodotLogHandler
from horace.sinks.supervisor import Emitter
from horace.supervise import StopSignals, stop_signals, together
from horace.tasks import start_background, start_store_check
from horace.watch import reconcile_if_watching

log = logging.getLogger("horace.server")


@attrs.frozen
class LogSinks:
    """What the running sinks give the sessions: the observer of their calls (None when
    no sink wants them) and the sinks' part of /health."""

    observer: Observer | None
    health_parts: dict[str, HealthPart]


def refuse_a_conversations_url_typo(settings: Settings) -> None:
    """A SQLite conversation log whose folder does not exist is refused before anything
    starts, as the catalog's is: a typo in a path never heals, and the sink process would
    only fail, and be started again, for good (a server out of reach may come back)."""
    if SinkWiring.of(settings).conversations and settings.conversations_url:
        problem = place_problem(settings.conversations_url)
        if problem is not None:
            raise UnusableURL(f"HORACE_CONVERSATIONS_URL: {problem}")


START_RECORDS = 1000  # of the records before Godot's sink is up, the latest kept for it


class HeldForGodot(logging.Handler):
    """Horace's records from before the Godot sink is up (the start's fsck and what it
    repaired, the watcher's reconcile): handed to the sink once it is."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: deque[logging.LogRecord] = deque(maxlen=START_RECORDS)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def held_for_godot(settings: Settings) -> Iterator[HeldForGodot | None]:
    """While the store is opened (and checked), before the sinks start: Horace's records,
    kept for Godot (None: no Godot)."""
    if not SinkWiring.of(settings).godot:
        yield None
        return
    held = HeldForGodot(godot_level(settings))
    horace_log = logging.getLogger("horace")
    horace_log.addHandler(held)
    try:
        yield held
    finally:
        horace_log.removeHandler(held)


@asynccontextmanager
async def log_sinks(
    settings: Settings, catalog: Catalog, held: HeldForGodot | None = None
) -> AsyncIterator[LogSinks]:
    """Run the Godot and conversation sinks (as configured) while the body runs, in a
    child process (:mod:`horace.server.sinkprocess`) or as supervised children here,
    Horace's own log forwarded to Godot (after the records *held* for it since the start);
    on exit they flush what they hold and spill the rest to the store's spool."""
    wiring = SinkWiring.of(settings)
    if not wiring.any:
        yield LogSinks(None, {"sinks": dict})
        return
    spool_dir = catalog.storage.spool
    godot: Emitter | None
    async with AsyncExitStack() as running:
        if settings.sink_process:
            talks_url = (settings.conversations_url or catalog.backend.url) if wiring.conversations else None
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
            child = await running.enter_async_context(
                sink_process(SinkPlan(settings, talks_url, spool_dir, level))
            )
            observer: Observer | None = child if wiring.observes_calls else None
            godot = child if wiring.godot else None
            parts: dict[str, HealthPart] = {"sinks": lambda: child.sink_status, "sink_process": child.status}
        else:
            talks = None
            if wiring.conversations:
                url = settings.conversations_url
                talks = (
                    functools.partial(
                        open_backend, url, connections=TURNS_CONNECTIONS, application_name=TURNS_APPLICATION
                    )
                    if url
                    else talks_in(catalog.backend)
                )
            here = await running.enter_async_context(run_sinks(settings, talks, spool_dir))
            observer, godot, parts = here.observer, here.godot, {"sinks": here.status}
        horace_log = logging.getLogger("horace")
        handler = GodotLogHandler(godot, godot_level(settings)) if godot else None
        if handler is not None:
            handler.observes_calls = wiring.call_lines_to_godot  # (each call's line comes from its record)
            handler.addFilter(of_the_call)
            if held is not None:
                horace_log.removeHandler(held)
                for record in held.records:
                    handler.handle(record)
            horace_log.addHandler(handler)
            if horace_log.getEffectiveLevel() > handler.level:
                horace_log.setLevel(handler.level)
        try:
            yield LogSinks(observer, parts)
        finally:
            if handler is not None:
                horace_log.removeHandler(handler)


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = True,
    progress: Progress | None = None,
    task_status: trio.TaskStatus[HoraceServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Horace until shut down (a signal, or ``server.shutdown()``).

    The port is taken first (a port in use leaves no new store behind); in watch mode
    the start-up reconcile runs before serving (its *progress* reported, and logged).
    """
    refuse_a_conversations_url_typo(settings)
    heap.hold_large_blocks_apart()
    listeners = await listen(settings)
    started = trio.CancelScope()
    async with stop_signals() as signals:
        try:
            async with together() as starting:
                starting.start_soon(say_while_starting, started, redact_url(settings.catalog_url))
                with held_for_godot(settings) as held:
                    async with open_catalog(settings, create=True) as catalog:
                        started.cancel()
                        await _serve_catalog(
                            settings,
                            catalog,
                            listeners,
                            signals if handle_signals else None,
                            progress,
                            held,
                            task_status,
                        )
        finally:
            with trio.CancelScope(shield=True):  # (closed already when served; not when failed)
                for listener in listeners:
                    await listener.aclose()


START_NOTICE_SECONDS = (10.0, 60.0)  # the first notice of a start still going on, then each next


async def say_while_starting(started: trio.CancelScope, catalog_url: str) -> None:
    """Until *started* is cancelled, say now and then that the start goes on: before it
    listens, a server waiting on its database (a lock another session holds on the
    catalog's tables waits as long as that session) is otherwise silent."""
    with started:
        waited = 0.0
        for pause in itertools.chain(START_NOTICE_SECONDS[:1], itertools.repeat(START_NOTICE_SECONDS[1])):
            await trio.sleep(pause)
            waited += pause
            log.warning(
                "still starting after %.0f s: opening the catalog %s and checking the store (fsck at "
                "start); is another session holding a lock on the catalog's tables, or is the store large?",
                waited,
                catalog_url,
            )


async def _serve_catalog(
    settings: Settings,
    catalog: Catalog,
    listeners: list[trio.SocketListener],
    signals: StopSignals | None,
    progress: Progress | None,
    held: HeldForGodot | None,
    task_status: trio.TaskStatus[HoraceServer],
) -> None:
    if settings.watch:
        await reconcile_if_watching(catalog, progress)
    async with log_sinks(settings, catalog, held) as sinks, trio.open_nursery() as nursery:
        server = HoraceServer(settings, catalog, sinks.observer)
        server.health_parts.update(sinks.health_parts)
        for name, state in start_background(nursery, catalog, settings).items():
            server.health_parts[name] = state
        if signals is not None:
            await signals.watch(lambda _: server.shutdown())
        await server.run(listeners, task_status=task_status)
        nursery.cancel_scope.cancel()  # the background tasks stop; then the sinks


async def serve_stdio(settings: Settings, fds: StdioFds, *, handle_signals: bool = True) -> None:
    """One MCP session over *fds* (the process's stdin and stdout, taken by
    :func:`horace.server.stdio.claim_stdio`) until the client closes stdin, stops reading
    stdout, or a signal comes. The store is created when there is none, as by ``serve``.

    Only what dead processes left is checked at start (a bounded look, as the CLI's
    commands do): a desktop client starts a process per session and waits for it, and
    the full fsck, the watcher, the purge and the periodic fsck are the long-running
    server's. The store and catalog are shared with any server through the per-file locks.
    """
    refuse_a_conversations_url_typo(settings)
    with held_for_godot(settings) as held:
        await _serve_stdio(settings, fds, handle_signals, held)


async def _serve_stdio(
    settings: Settings, fds: StdioFds, handle_signals: bool, held: HeldForGodot | None
) -> None:
    async with (
        stop_signals() as signals,
        open_catalog(settings, create=True, check=StartCheck.LEFTOVERS) as catalog,
        log_sinks(settings, catalog, held) as sinks,
        open_stdio(fds) as (reading, writing),
    ):
        session = StdioSession(
            reading, writing, McpSession(catalog, settings, sinks.observer, transport="stdio")
        )
        log.info(
            "serving MCP over stdio",
            extra={"storage": str(catalog.storage.root), "backend": redact_url(catalog.backend.url)},
        )
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await signals.watch(session.end)
            # A desktop client keeps this process for its whole session: a catalog
            # restored (or a store moved) under it stops it, as it stops a server.
            start_store_check(nursery, catalog)
            nursery.start_soon(session.end_when_stdout_closes, fds.stdout)
            await session.run()
            nursery.cancel_scope.cancel()
        if session.lost is not None:
            raise RepliesLost(f"replies could not be written to stdout: {session.lost}")
