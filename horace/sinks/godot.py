"""The Godot sink: Horace's log, as ``logger_log`` tool calls over one WebSocket.

Calls of a batch are pipelined (all sent, then all answers read). Secrets are redacted
at any depth before an entry is queued, so they never reach the spool either.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from horace.redact import redact
from horace.sinks.supervisor import Deliver, SinkRunner, SinkUnavailable, log

LEVELS = {"CRITICAL": "ERROR", "ERROR": "ERROR", "WARNING": "WARN", "INFO": "INFO", "DEBUG": "DEBUG"}
TRACE = 5  # below DEBUG


class GodotTransport:
    name = "godot"

    def __init__(self, url: str, tool: str = "logger_log", reply_timeout: float = 10.0) -> None:
        self.url = url
        self.tool = tool
        self.reply_timeout = reply_timeout
        self.rejected = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        try:
            async with open_websocket_url(self.url, connect_timeout=self.reply_timeout) as ws:
                ids = itertools.count(1)

                async def rpc_batch(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    pending = {}
                    for message in messages:
                        message["id"] = next(ids)
                        pending[message["id"]] = message
                        await ws.send_message(json.dumps(message))
                    replies = []
                    while pending:  # Godot silent for reply_timeout: gone (a long batch is fine)
                        with trio.fail_after(self.reply_timeout):
                            answer = json.loads(await ws.get_message())
                        for item in answer if isinstance(answer, list) else [answer]:
                            if isinstance(item, dict) and pending.pop(item.get("id"), None) is not None:
                                replies.append(item)
                    return replies

                await rpc_batch(
                    [
                        {
                            "jsonrpc": "2.0",
                            "method": "initialize",
                            "params": {
                                "protocolVersion": "2025-06-18",
                                "capabilities": {},
                                "clientInfo": {"name": "horace", "version": "1"},
                            },
                        }
                    ]
                )
                await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))

                async def deliver(batch: list[dict[str, Any]]) -> None:
                    calls = [
                        {
                            "jsonrpc": "2.0",
                            "method": "tools/call",
                            "params": {"name": self.tool, "arguments": {"component": "horace", **entry}},
                        }
                        for entry in batch
                    ]
                    for reply in await rpc_batch(calls):
                        if "error" in reply or reply.get("result", {}).get("isError"):
                            self.rejected += 1  # retrying would not help: counted and logged
                            log.warning(
                                "godot rejected a log entry: %s", reply.get("error") or reply.get("result")
                            )

                yield deliver
        except (ConnectionClosed, HandshakeError, trio.TooSlowError) as exc:
            raise SinkUnavailable(f"godot at {self.url}: {type(exc).__name__} {exc}") from exc


class GodotLogHandler(logging.Handler):
    """Forwards Horace's log records to the Godot sink (the sinks' own log excepted)."""

    def __init__(self, runner: SinkRunner, level: int | str = logging.INFO) -> None:
        super().__init__(level)
        self.runner = runner

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("horace.sinks"):
            return  # never feed a sink its own complaints
        try:
            extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}
            entry = {
                "level": LEVELS.get(record.levelname, "TRACE" if record.levelno < logging.DEBUG else "INFO"),
                "message": record.getMessage(),
                "trace_id": extras.pop("correlation_id", None),
                "data": redact(json.loads(json.dumps({"logger": record.name, **extras}, default=str))),
            }
            self.runner.emit(entry)
        except Exception:
            self.handleError(record)


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
