"""The conversation log in the Fiedler format: each MCP session a conversation, each
``tools/call`` request and response a turn, stored in the ``conversations`` table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from horace.backends.protocol import Backend, BackendUnavailable
from horace.backends.records import Turn
from horace.model import CallRecord
from horace.redact import redact
from horace.sinks.supervisor import Deliver, SinkRunner, SinkUnavailable, log
from horace.wire import structure, to_json

MODEL = "horace"


class ConversationTransport:
    name = "conversations"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.conflicts = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        try:
            await self.backend.ping()
        except BackendUnavailable as exc:
            raise SinkUnavailable(str(exc)) from exc

        async def deliver(batch: list[dict[str, Any]]) -> None:
            turns = [structure(entry, Turn) for entry in batch]
            try:
                conflicts = await self.backend.insert_turns(turns)
            except BackendUnavailable as exc:
                raise SinkUnavailable(str(exc)) from exc
            for turn in conflicts:
                self.conflicts += 1
                log.error(
                    "conversation turn %s #%d is already stored with other content: "
                    "UNIQUE(conversation_id, turn_number) violated",
                    turn.conversation_id,
                    turn.turn_number,
                    extra={"correlation_id": turn.metadata.get("correlation_id"), "sink": self.name},
                )

        yield deliver


class ConversationRecorder:
    """The session observer that turns calls into conversation turns (and optionally
    forwards them to Godot)."""

    def __init__(self, conversations: SinkRunner | None, godot: SinkRunner | None = None) -> None:
        self.conversations = conversations
        self.godot = godot

    def _emit(self, turn: Turn) -> None:
        entry = to_json(turn)
        if self.conversations is not None:
            self.conversations.emit(entry)
        if self.godot is not None:
            self.godot.emit(
                {
                    "level": "DEBUG",
                    "message": f"conversation turn {turn.turn_number} ({turn.role})",
                    "trace_id": turn.metadata.get("correlation_id"),
                    "data": redact(entry),
                }
            )

    def call_started(self, record: CallRecord) -> None:
        self._emit(
            Turn(
                conversation_id=record.conversation_id,
                turn_number=record.request_turn,
                role="user",
                content=json.dumps({"tool": record.tool, "arguments": record.arguments}, default=str),
                model=None,
                input_tokens=None,
                output_tokens=None,
                timing_ms=None,
                metadata={
                    "correlation_id": record.correlation_id,
                    "tool": record.tool,
                    "file_ids": [],
                    "error_code": None,
                },
                created_at=datetime.now(UTC),
            )
        )

    def call_finished(self, record: CallRecord) -> None:
        if not record.response_turn:
            return  # cancelled by the client: no response, no turn
        self._emit(
            Turn(
                conversation_id=record.conversation_id,
                turn_number=record.response_turn,
                role="assistant",
                content=json.dumps(record.result, default=str),
                model=MODEL,
                input_tokens=None,
                output_tokens=None,
                timing_ms=record.timing_ms,
                metadata={
                    "correlation_id": record.correlation_id,
                    "tool": record.tool,
                    "file_ids": list(record.file_ids),
                    "error_code": record.error_code,
                },
                created_at=datetime.now(UTC),
            )
        )
