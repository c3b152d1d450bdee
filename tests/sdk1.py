"""The official MCP Python SDK 1.x (the test extra's ``mcp``) as a :class:`tour.Client`,
whatever transport its session runs on."""

from __future__ import annotations

from typing import Any

from mcp import ClientSession
from mcp.shared.exceptions import McpError
from tour import Called, OnProgress, Refused


class Sdk1Client:
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
        except McpError as exc:
            raise Refused(exc.error.code, exc.error.message, exc.error.data) from None
        return Called(
            result.isError,
            result.structuredContent,
            [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in result.content],
        )

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        try:
            result = await self.session.read_resource(uri)  # type: ignore[arg-type]  # a str does
        except McpError as exc:
            raise Refused(exc.error.code, exc.error.message, exc.error.data) from None
        return [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in result.contents]

    async def list_tools(self) -> list[dict[str, Any]]:
        listed = await self.session.list_tools()
        return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed.tools]

    async def ping(self) -> None:
        await self.session.send_ping()
