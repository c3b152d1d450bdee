import asyncio
import os

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    token = os.environ.get("HORACE_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as http,
        streamable_http_client("http://127.0.0.1:8070/mcp".replace("8070", "18932"), http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("horace_search_files", {"owner": "gates", "limit": 10})
        print(result.isError, result.structuredContent["total_count"])
        version = await session.read_resource("horace://files/00000000-0000-0000-0000-000000000000/versions/1")


asyncio.run(main())
