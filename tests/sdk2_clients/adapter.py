"""The official MCP Python SDK 2.x as a :class:`tour.Client`, whatever transport its
session runs on (run from the 2.x venv, see ``tests/sdk2.py``)."""

from __future__ import annotations

from typing import Any

from mcp import ClientSession, MCPError
from tour import Called, OnProgress, Refused


class Sdk2Client:
    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        on_progress: OnProgress | None = None,
    ) -> Called:
        try:
            result = await self.session.call_tool(tool, arguments, progress_callback=on_progress, meta=meta)
        except MCPError as exc:
            raise Refused(exc.code, exc.message, exc.data) from None
        return Called(
            result.is_error,
            result.structured_content,
            [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in result.content],
        )

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        try:
            result = await self.session.read_resource(uri)
        except MCPError as exc:
            raise Refused(exc.code, exc.message, exc.data) from None
        return [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in result.contents]

    async def list_tools(self) -> list[dict[str, Any]]:
        listed = await self.session.list_tools()
        return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed.tools]

    async def ping(self) -> None:
        await self.session.send_ping()
