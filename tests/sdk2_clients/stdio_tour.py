"""mcp 2.x's stdio client drives a Horace it starts (run by tests/sdk2.py).

    stdio_tour.py '{"command": [...], "env": {...}, "files": "...", "checks": [...]}'

starts ``command`` with ``env`` (the whole environment of the server), initializes, and
runs each of ``checks`` (names of ``tests/tour.py`` functions: tool_list, every_tool,
scan_progress, tool_errors) in one session; ``files`` is the store's working-file
folder. Prints one JSON line: the SDK's version, what initialize answered, the checks run.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tour, helpers

import anyio
import tour
from adapter import Sdk2Client
from mcp import ClientSession, StdioServerParameters, stdio_client


async def main(config: dict[str, Any]) -> dict[str, Any]:
    command, *args = config["command"]
    server = StdioServerParameters(command=command, args=args, env=config["env"])
    files = Path(config["files"])
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        client = Sdk2Client(session)
        for check in config["checks"]:
            body = getattr(tour, check)
            with anyio.fail_after(240):
                await (body(client, files) if check in ("every_tool", "scan_progress") else body(client))
    return {
        "sdk": importlib.metadata.version("mcp"),
        "server": init.server_info.name,
        "server_version": init.server_info.version,
        "protocol_version": init.protocol_version,
        "checks": config["checks"],
    }


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, json.loads(sys.argv[1]))))
