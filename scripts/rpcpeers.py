"""The servers scripts/bench_rpc runs beside Horace, each in a process of its own.

    python scripts/rpcpeers.py sdk --transport http|ws|stdio --reply structured|text --db CATALOG.db
                                   [--port N] [--http-mode stateful|stateless]
    python scripts/rpcpeers.py godot --port N

``sdk``: the official MCP Python SDK's FastMCP (mcp 1.x) serving one tool,
``horace_get_file_info``, that reads one row by id from a SQLite file (a copy of a Horace
catalog) and answers with what Horace answers: ``{file: {...the record...}, versions:
null, correlation_id}``. ``--reply structured`` returns it as a dict (FastMCP sends it as
``structuredContent`` plus the same JSON as text); ``--reply text`` returns the JSON as a
string (text content only, ``structured_output=False``). Transports: Streamable HTTP
(``streamable_http_app()`` under uvicorn, JSON responses, ``--http-mode`` stateful with
``Mcp-Session-Id`` or stateless), the SDK's WebSocket server transport
(``mcp.server.websocket.websocket_server`` under uvicorn; deprecated in 1.x, gone in 2.x),
and stdio (``FastMCP.run("stdio")``). uvicorn runs as ``pip install mcp`` installs it:
asyncio's event loop, h11, and the ``websockets`` package for WebSocket.

``godot``: a stand-in for Godot that takes the log sink's calls as cheaply as it can
(asyncio and the C-accelerated ``websockets`` package): it answers ``initialize`` and
every ``tools/call`` with a short success, and on SIGTERM prints how many log entries it
took. Run with the interpreter that runs the benchmark.

This file imports neither Horace nor benchlib: the SDK server runs in the peer's own venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import sys
import uuid
from typing import Any

FILE_COLUMNS = (
    "id, file_path, owner, purpose, tags, size, mime_type, checksum, status, current_version, "
    "correlation_id, created_at, updated_at, deleted_at, metadata"
)


def sdk_server(options: argparse.Namespace) -> None:
    import warnings

    from mcp.server.fastmcp import FastMCP

    warnings.simplefilter("ignore", DeprecationWarning)  # its WebSocket transport, said in the doc

    # One connection, read only: a row by its primary key is a few microseconds, so the
    # tool is a plain function (FastMCP calls it on the event loop, no thread hop).
    db = sqlite3.connect(f"file:{options.db}?mode=ro", uri=True, check_same_thread=False)
    db.row_factory = sqlite3.Row

    def record(file_id: str | None, file_path: str | None) -> dict[str, Any]:
        column, value = ("id", file_id) if file_id else ("file_path", file_path)
        row = db.execute(f"SELECT {FILE_COLUMNS} FROM horace_files WHERE {column} = ?", (value,)).fetchone()
        if row is None:
            raise ValueError(f"{value!r} is not catalogued")
        found = dict(row)
        found["tags"] = json.loads(found["tags"])
        found["metadata"] = json.loads(found["metadata"])
        return found

    http_mode = options.http_mode
    server = FastMCP(
        "sdk-peer",
        host="127.0.0.1",
        port=options.port or 8000,
        log_level="WARNING",
        json_response=True,
        stateless_http=http_mode == "stateless",
    )
    description = "The whole record of a file and, with include_versions, its versions newest first."
    if options.reply == "structured":

        @server.tool(name="horace_get_file_info", description=description)
        def get_file_info_structured(
            file_id: str | None = None, file_path: str | None = None, include_versions: bool = False
        ) -> dict[str, Any]:
            return {"file": record(file_id, file_path), "versions": None, "correlation_id": str(uuid.uuid4())}

    else:

        @server.tool(name="horace_get_file_info", description=description, structured_output=False)
        def get_file_info_text(
            file_id: str | None = None, file_path: str | None = None, include_versions: bool = False
        ) -> str:
            found = {
                "file": record(file_id, file_path),
                "versions": None,
                "correlation_id": str(uuid.uuid4()),
            }
            return json.dumps(found)

    if options.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    if options.transport == "http":
        app: Any = server.streamable_http_app()
    else:
        from mcp.server.websocket import websocket_server
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute

        async def endpoint(websocket: Any) -> None:
            async with websocket_server(websocket.scope, websocket.receive, websocket.send) as (read, write):
                low = server._mcp_server
                await low.run(read, write, low.create_initialization_options())

        app = Starlette(routes=[WebSocketRoute("/mcp", endpoint)])
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning")


def godot_receiver(port: int) -> None:
    import asyncio

    import websockets

    taken = 0
    ok = json.dumps({"content": [{"type": "text", "text": "logged"}], "isError": False})

    async def handler(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await answer(ws)

    async def answer(ws: Any) -> None:
        nonlocal taken
        async for message in ws:
            request = json.loads(message)
            if "id" not in request:
                continue
            if request.get("method") == "tools/call":
                taken += 1
                result = ok
            else:
                result = json.dumps(
                    {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "godot-receiver", "version": "1"},
                    }
                )
            await ws.send(f'{{"jsonrpc": "2.0", "id": {json.dumps(request["id"])}, "result": {result}}}')

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with websockets.serve(handler, "127.0.0.1", port, compression=None, max_size=None):
            print("READY", flush=True)
            await stop.wait()
        print(json.dumps({"entries": taken}), flush=True)

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sdk = commands.add_parser("sdk")
    sdk.add_argument("--transport", choices=["http", "ws", "stdio"], required=True)
    sdk.add_argument("--reply", choices=["structured", "text"], default="structured")
    sdk.add_argument("--db", required=True)
    sdk.add_argument("--port", type=int, default=0)
    sdk.add_argument("--http-mode", choices=["stateful", "stateless"], default="stateful")
    godot = commands.add_parser("godot")
    godot.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    if options.command == "sdk":
        sdk_server(options)
    else:
        godot_receiver(options.port)


if __name__ == "__main__":
    sys.exit(main())
