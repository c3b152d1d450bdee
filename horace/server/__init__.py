"""The MCP server, by job:

- ``front``: the port's HTTP front: each connection's requests (keep-alive), health,
  WebSocket upgrades, the rest of / and /mcp to Streamable HTTP;
- ``httpio``: one HTTP/1.1 connection read and written with h11;
- ``admission``: counts of connections and sessions against the limits, token and Origin;
- ``websocket``: MCP over a WebSocket connection (reading, sending, idle and send timeouts);
- ``http``: MCP over Streamable HTTP (POST, GET, DELETE; JSON or SSE answers);
  ``httpsession``: one Streamable HTTP session (its calls, its answers, its end);
  ``sse``: server-sent events and the answers kept for a client that resumes;
- ``mcp``: one MCP session whatever the transport (methods, limits, cancellation);
- ``jsonrpc``: JSON-RPC 2.0 checks and texts; ``runner``: one tool call under its scope;
- ``observer``: what the logs and the conversation sink learn of a call;
- ``tools``: the tool table; ``resources``: history as MCP resources;
- ``lifecycle``: listen, sessions, health, graceful shutdown.

:func:`serve` puts them together with the log sinks, which run as supervised children of
the same nursery."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from horace.assemble import open_catalog
from horace.backends import Backend, open_backend
from horace.catalog import Progress
from horace.config import Settings
from horace.server.lifecycle import HoraceServer, watch_signals
from horace.sinks.conversations import ConversationRecorder, ConversationTransport
from horace.sinks.godot import GodotLogHandler, GodotTransport
from horace.sinks.supervisor import SinkRunner
from horace.tasks import start_background
from horace.watch import reconcile_logged

__all__ = ["HoraceServer", "serve"]


@asynccontextmanager
async def _conversation_backend(settings: Settings, catalog_backend: Backend) -> AsyncIterator[Backend]:
    if settings.conversations_url:
        async with open_backend(settings.conversations_url) as separate:
            yield separate
    else:
        yield catalog_backend


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
    async with (
        open_catalog(settings, create=True) as catalog,
        _conversation_backend(settings, catalog.backend) as talks,
    ):
        if settings.watch:
            await reconcile_logged(catalog, progress)
        spool = catalog.storage.private / "spool"
        sink_options: dict[str, Any] = {
            "spool_dir": spool,
            "capacity": settings.sink_queue,
            "capacity_bytes": settings.sink_queue_bytes,
            "flush_seconds": settings.sink_flush,
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
        recorder = ConversationRecorder(conversations, forward) if conversations or forward else None
        server = HoraceServer(settings, catalog, recorder)
        server.health_parts["sinks"] = lambda: {runner.name: runner.status() for runner in runners}
        horace_log = logging.getLogger("horace")
        handler = GodotLogHandler(godot, settings.godot_level) if godot else None
        async with trio.open_nursery() as nursery:
            for runner in runners:
                await nursery.start(runner.run)
            for name, state in start_background(nursery, catalog, settings).items():
                server.health_parts[name] = state
            if handler is not None:
                horace_log.addHandler(handler)
                if horace_log.getEffectiveLevel() > handler.level:
                    horace_log.setLevel(handler.level)
            try:
                if handle_signals:
                    nursery.start_soon(watch_signals, server, nursery.cancel_scope.cancel)
                await server.run(task_status=task_status)
            finally:
                if handler is not None:
                    horace_log.removeHandler(handler)
            nursery.cancel_scope.cancel()  # the sinks flush what they hold, then spill
