"""The MCP server: ``front`` (HTTP and upgrades), ``session`` (JSON-RPC/MCP), ``tools``
(the tool table) and ``app`` (lifecycle). :func:`serve` puts them together."""

from __future__ import annotations

import trio

from horace.app import open_catalog
from horace.config import Settings
from horace.server.app import HoraceServer, watch_signals

__all__ = ["HoraceServer", "serve"]


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[HoraceServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Horace until shut down (a signal, or ``server.shutdown()``)."""
    async with open_catalog(settings) as catalog:
        server = HoraceServer(settings, catalog)
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(watch_signals, server, nursery.cancel_scope.cancel)
            await server.run(task_status=task_status)
            nursery.cancel_scope.cancel()
