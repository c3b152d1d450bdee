import asyncio
import os

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    token = os.environ.get("HORACE_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client("http://127.0.0.1:18932/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool("horace_search_files", {"owner": "gates", "limit": 10})
        print(result.is_error, result.structured_content["total_count"])


asyncio.run(main())
