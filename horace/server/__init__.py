"""The MCP server, by job:

- ``front``: the port's HTTP front: each connection's requests (keep-alive), health,
  WebSocket upgrades, the rest of / and /mcp to Streamable HTTP;
- ``httpio``: one HTTP/1.1 connection read and written with h11;
- ``admission``: counts of connections and sessions against the limits, token and Origin;
- ``websocket``: MCP over a WebSocket connection (reading, sending, idle and send timeouts);
- ``stdio``: MCP over stdin/stdout, one session for the process (``horace mcp``);
- ``http``: MCP over Streamable HTTP (POST, GET, DELETE; JSON or SSE answers);
  ``httpsession``: one Streamable HTTP session (its calls, its answers, its end);
  ``sse``: server-sent events and the answers kept for a client that resumes;
- ``mcp``: one MCP session whatever the transport (methods, limits, cancellation);
- ``jsonrpc``: JSON-RPC 2.0 checks and texts; ``runner``: one tool call under its scope;
- ``observer``: what the logs and the conversation sink learn of a call;
- ``tools``: the tool table; ``resources``: history as MCP resources;
- ``lifecycle``: listen, sessions, health, graceful shutdown.

:func:`serve` puts them together with the log sinks (:func:`log_sinks`), which run as
supervised children of the same nursery, and the background tasks; :func:`serve_stdio`
does the same for one stdio session, without the background tasks and the port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from horace.assemble import StartCheck, open_catalog
from horace.backends import Backend, open_backend
from horace.catalog import Catalog, Progress
from horace.config import Settings
from horace.redact import redact_url
from horace.server.lifecycle import HealthPart, HoraceServer, watch_signals
from horace.server.mcp import McpSession
from horace.server.observer import Observer, Observers
from horace.server.stdio import StdioFds, StdioSession, end_on_signals, open_stdio
from horace.sinks.conversations import ConversationRecorder, ConversationTransport
from horace.sinks.godot import GodotCallLog, GodotLogHandler, GodotTransport
from horace.sinks.supervisor import SinkRunner
from horace.tasks import start_background
from horace.watch import reconcile_logged

__all__ = ["HoraceServer", "LogSinks", "log_sinks", "serve", "serve_stdio"]

log = logging.getLogger("horace.server")


@attrs.frozen
class LogSinks:
    """What the running sinks give the sessions: the observer of their calls (None when
    no sink wants them) and the sinks' part of /health."""

    observer: Observer | None
    health_parts: dict[str, HealthPart]


@asynccontextmanager
async def _conversation_backend(settings: Settings, catalog_backend: Backend) -> AsyncIterator[Backend]:
    if settings.conversations_url:
        async with open_backend(settings.conversations_url) as separate:
            yield separate
    else:
        yield catalog_backend


@asynccontextmanager
async def log_sinks(settings: Settings, catalog: Catalog) -> AsyncIterator[LogSinks]:
    """Run the Godot and conversation sinks (as configured) as supervised children while
    the body runs, Horace's own log forwarded to Godot; on exit they flush what they hold
    and spill the rest to the store's spool."""
    async with _conversation_backend(settings, catalog.backend) as talks:
        sink_options: dict[str, Any] = {
            "spool_dir": catalog.storage.private / "spool",
            "capacity": settings.sink_queue,
            "capacity_bytes": settings.sink_queue_bytes,
            "flush_seconds": settings.sink_flush,
            "linger": settings.sink_linger,
            "backoff_base": settings.sink_backoff_base,
            "backoff_cap": settings.sink_backoff_cap,
        }
        godot = (
            SinkRunner(GodotTransport(settings.godot_url, settings.godot_tool), **sink_options)
            if settings.godot_url
            else None
        )
        conversations = (
            SinkRunner(ConversationTransport(talks), **sink_options) if settings.conversations else None
        )
        runners = [runner for runner in (godot, conversations) if runner is not None]
        forward = godot if settings.conversations_to_godot else None
        observers: list[Observer] = []
        if conversations or forward:
            observers.append(ConversationRecorder(conversations, forward))
        horace_log = logging.getLogger("horace")
        handler = GodotLogHandler(godot, settings.godot_level) if godot else None
        if godot is not None and handler is not None and handler.level <= logging.INFO:
            observers.append(GodotCallLog(godot))  # each call's line (an INFO line)
            handler.observes_calls = True
        observer = observers[0] if len(observers) == 1 else Observers(*observers) if observers else None
        async with trio.open_nursery() as nursery:
            for runner in runners:
                await nursery.start(runner.run)
            if handler is not None:
                horace_log.addHandler(handler)
                if horace_log.getEffectiveLevel() > handler.level:
                    horace_log.setLevel(handler.level)
            try:
                yield LogSinks(
                    observer, {"sinks": lambda: {runner.name: runner.status() for runner in runners}}
                )
            finally:
                if handler is not None:
                    horace_log.removeHandler(handler)
                nursery.cancel_scope.cancel()  # the sinks flush what they hold, then spill


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = True,
    progress: Progress | None = None,
    task_status: trio.TaskStatus[HoraceServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Horace until shut down (a signal, or ``server.shutdown()``).

    In watch mode the start-up reconcile runs first (its *progress* reported, and logged).
    """
    async with open_catalog(settings, create=True) as catalog:
        if settings.watch:
            await reconcile_logged(catalog, progress)
        async with log_sinks(settings, catalog) as sinks, trio.open_nursery() as nursery:
            server = HoraceServer(settings, catalog, sinks.observer)
            server.health_parts.update(sinks.health_parts)
            for name, state in start_background(nursery, catalog, settings).items():
                server.health_parts[name] = state
            if handle_signals:
                nursery.start_soon(watch_signals, server, nursery.cancel_scope.cancel)
            await server.run(task_status=task_status)
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
    async with (
        open_catalog(settings, create=True, check=StartCheck.LEFTOVERS) as catalog,
        log_sinks(settings, catalog) as sinks,
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
                nursery.start_soon(end_on_signals, session)
            await session.run()
            nursery.cancel_scope.cancel()
