"""mcp 2.x's Streamable HTTP client drives a running Horace (run by tests/sdk2.py).

    http_tour.py '{"url": "http://.../mcp", "files": "...", "checks": [...]}'

connects with the SDK's ``Client`` in its default mode (it asks ``server/discover``
first and falls back to ``initialize`` when refused), and runs each of ``checks`` (names
of ``tests/tour.py`` functions: tool_list, every_tool, scan_progress, tool_errors) in
one session; ``files`` is the store's working-file folder. Leaving ends the session
(DELETE). Prints one JSON line: the SDK's version, what initialize answered, the
resource templates listed, the checks run.
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
from mcp import Client


async def main(config: dict[str, Any]) -> dict[str, Any]:
    files = Path(config["files"])
    async with Client(config["url"]) as connected:
        client = Sdk2Client(connected.session)
        for check in config["checks"]:
            body = getattr(tour, check)
            with anyio.fail_after(240):
                await (body(client, files) if check in ("every_tool", "scan_progress") else body(client))
        templates = (await connected.list_resource_templates()).resource_templates
        return {
            "sdk": importlib.metadata.version("mcp"),
            "server": connected.server_info.name,
            "server_version": connected.server_info.version,
            "protocol_version": connected.protocol_version,
            "templates": [template.uri_template for template in templates],
            "checks": config["checks"],
        }


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, json.loads(sys.argv[1]))))
