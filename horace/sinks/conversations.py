"""The conversation log in the Fiedler format: each MCP session a conversation, each
``tools/call`` request and response a turn, stored in the ``conversations`` table."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from horace.backends.protocol import (
    OUTAGES,
    Backend,
    BackendUnavailable,
    CatalogMissing,
    CatalogUnwritable,
    UnusableURL,
)
from horace.backends.records import Turn
from horace.model import CallRecord, HoraceError
from horace.redact import redact, redact_json_text
from horace.sinks.supervisor import Deliver, DestinationDown, SinkRunner, log, size_of
from horace.wire import structure

MODEL = "horace"
# The most connections the turns' own pool holds (a database of their own, or the catalog's
# opened again by the sink process): one batch at a time, the prune between batches. Each
# more would come out of the catalog's budget (a role's CONNECTION LIMIT), held for as long
# as turns keep coming.
TURNS_CONNECTIONS = 1
TURNS_APPLICATION = "horace conversations"  # (its connections, as pg_stat_activity names them)
TURN_BYTES = 512  # a turn's fields but its content, correlation id and file ids, and more
_ENCODER = json.JSONEncoder(default=str)  # json.dumps(..., default=str), without a new encoder a call


# Where turns go: the catalog's own backend (open already), or a database of their own,
# opened with each connection of the sink, so that one out of reach (at start, too) is
# retried as any destination is, not a failure of the sinks (and of Godot's beside them).
Talks = Callable[[], AbstractAsyncContextManager[Backend]]
# What opening a database of its own can meet that time may heal (a server down or being
# made, a database or role not created yet); retried with backoff.
_NOT_OPEN = (BackendUnavailable, CatalogMissing, CatalogUnwritable, UnusableURL, OSError)


def talks_in(backend: Backend) -> Talks:
    """Turns stored in *backend*, which its owner keeps open."""
    return lambda: nullcontext(backend)


class ConversationTransport:
    name = "conversations"

    def __init__(self, talks: Talks, own_url: str | None = None) -> None:
        """*own_url*: the database of the turns' own (``HORACE_CONVERSATIONS_URL``), or None
        for the catalog's. The spool is shared by every process of a store, which may not
        all log to one database: turns spilled for a database of their own wait in a spool
        named after it, for a process that logs there."""
        self.talks = talks
        self.own = own_url is not None
        self.refusal: str | None = None
        self.spool_name = (
            self.name
            if own_url is None
            else f"{self.name}-{hashlib.sha256(own_url.encode()).hexdigest()[:16]}"
        )

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        async with AsyncExitStack() as opened:
            try:
                backend = await opened.enter_async_context(self.talks())
                await backend.ping()
            except _NOT_OPEN as exc:
                raise DestinationDown(str(exc)) from exc
            yield self._deliverer(backend)

    def _deliverer(self, backend: Backend) -> Deliver:
        async def deliver(batch: list[dict[str, Any]]) -> int:
            if not batch:
                return 0  # (the catalog's connection needs no keeping alive)
            turns = []
            malformed = 0
            for entry in batch:  # (a spool line edited by hand, or of another release)
                try:
                    turns.append(turn_of(entry))
                except HoraceError as exc:  # no turn: refused, never retried
                    if not malformed:
                        self.refusal = f"an entry that is no turn ({exc.message})"
                    malformed += 1
                    log.error(
                        "conversations: an entry that is no turn is refused (%s): %.200s",
                        exc.message,
                        _ENCODER.encode(entry),
                        extra={"sink": self.name},
                    )
            replaced = backend.replaced() if self.own else None
            if replaced is not None:
                # (Removed, its turns would go into a deleted file, counted as stored; the
                # catalog's own is the server's to look after: it stops.)
                raise DestinationDown(f"{replaced}: it is opened again")
            try:
                conflicts = await backend.insert_turns(turns) if turns else []
            except OUTAGES as exc:  # the database's state, never a reason to drop a turn
                raise DestinationDown(str(exc)) from exc
            if conflicts and not malformed:
                first = conflicts[0]
                self.refusal = (
                    f"turn {first.conversation_id} #{first.turn_number} stored already, with other content"
                )
            for turn in conflicts:  # a bug to surface: said, and counted by the sink as refused
                log.error(
                    "conversation turn %s #%d is already stored with other content: "
                    "UNIQUE(conversation_id, turn_number) violated",
                    turn.conversation_id,
                    turn.turn_number,
                    extra={"correlation_id": turn.metadata.get("correlation_id"), "sink": self.name},
                )
            return malformed + len(conflicts)

        return deliver


PRUNE_BATCH = 10_000  # turns a statement: short transactions beside the sink's inserts


async def prune_conversations(talks: Talks, retention: float, every: float) -> None:
    """Every *every* seconds, delete the turns older than *retention* seconds
    (``HORACE_CONVERSATION_RETENTION``), a batch at a time. A database that cannot be
    reached now is tried again at the next round."""
    while True:
        before = datetime.now(UTC) - timedelta(seconds=retention)
        pruned = 0
        try:
            async with talks() as backend:
                while (batch := await backend.prune_turns(before, PRUNE_BATCH)) > 0:
                    pruned += batch
        except (*OUTAGES, *_NOT_OPEN) as exc:
            log.warning("conversations: turns older than %s not pruned now: %s", before.isoformat(), exc)
        if pruned:
            log.info("conversations: %d turns older than %s pruned", pruned, before.isoformat())
        await trio.sleep(every)


_TURN_FIELDS = frozenset(attrs.fields_dict(Turn))


def turn_of(entry: Any) -> Turn:
    """A queued (or replayed) entry as a :class:`Turn`. Entries of this module's making
    are taken as they are, their types checked; anything else (a spool line edited by
    hand, say) goes through the strict converter, which says what is wrong with it."""
    if isinstance(entry, dict) and entry.keys() == _TURN_FIELDS:
        created, timing = entry["created_at"], entry["timing_ms"]
        if (
            type(entry["conversation_id"]) is str
            and type(entry["turn_number"]) is int
            and type(entry["role"]) is str
            and type(entry["content"]) is str
            and (entry["model"] is None or type(entry["model"]) is str)
            and entry["input_tokens"] is None
            and entry["output_tokens"] is None
            and (timing is None or type(timing) is float)
            and type(entry["metadata"]) is dict
            and all(type(key) is str for key in entry["metadata"])
            and type(created) is str
        ):
            try:
                at = datetime.fromisoformat(created)
            except ValueError:
                at = None
            if at is not None and at.tzinfo is not None:
                return Turn(
                    entry["conversation_id"],
                    entry["turn_number"],
                    entry["role"],
                    entry["content"],
                    entry["model"],
                    None,
                    None,
                    timing,
                    entry["metadata"],
                    at,
                )
    return structure(entry, Turn)


def _turn(
    record: CallRecord, turn_number: int, role: str, content: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """A turn as the sink queues it (what ``to_json(Turn(...))`` gives, made directly)."""
    return {
        "conversation_id": record.conversation_id,
        "turn_number": turn_number,
        "role": role,
        "content": content,
        "model": MODEL if role == "assistant" else None,
        "input_tokens": None,
        "output_tokens": None,
        "timing_ms": record.timing_ms if role == "assistant" else None,
        "metadata": metadata,
        "created_at": datetime.fromtimestamp(record.at, UTC).isoformat(),
    }


def within(content: str, limit: int) -> str:
    """*content*, or, when its UTF-8 is longer than *limit* bytes, a JSON object that says
    so, with as much of its start as fits: ``{"cut": {"bytes": N, "limit": L}, "head":
    "..."}``. (A search of 1,000 files replies with a megabyte: stored whole for every
    call, the log would outgrow the catalog it sits beside.)"""
    if len(content) * 4 <= limit:  # (4 bytes a character at most)
        return content
    data = content.encode()
    if len(data) <= limit:
        return content
    head = limit // 2  # room for the JSON escapes of the head
    while True:
        cut = _ENCODER.encode(
            {"cut": {"bytes": len(data), "limit": limit}, "head": data[:head].decode("utf-8", "ignore")}
        )
        if len(cut) <= limit or head == 0:
            return cut
        head //= 2


def request_content(tool: str, arguments: Any, max_bytes: int) -> str:
    """A request turn's content: the tool and its arguments as JSON, secrets redacted, cut
    to *max_bytes*."""
    return within(redact_json_text(_ENCODER.encode({"tool": tool, "arguments": arguments})), max_bytes)


class ConversationRecorder:
    """The session observer that turns calls into conversation turns (and optionally
    forwards them to Godot); a turn's content is cut to *max_bytes* (:func:`within`)."""

    def __init__(
        self, conversations: SinkRunner | None, godot: SinkRunner | None = None, max_bytes: int = 65536
    ) -> None:
        self.conversations = conversations
        self.godot = godot
        self.max_bytes = max_bytes

    def _emit(self, entry: dict[str, Any]) -> None:
        # What entry_size() would say, give or take, for a fraction of its walk: the
        # content and the ids are all that grow.
        metadata = entry["metadata"]
        size = size_of(
            entry["content"], metadata["correlation_id"], ids=len(metadata["file_ids"]), fixed=TURN_BYTES
        )
        if self.conversations is not None:
            self.conversations.emit(entry, size)
        if self.godot is not None:  # (redacted, its content may be longer: measured)
            self.godot.emit(
                {
                    "level": "DEBUG",
                    "message": f"conversation turn {entry['turn_number']} ({entry['role']})",
                    "trace_id": metadata.get("correlation_id"),
                    "data": redact(entry),
                }
            )

    def call_started(self, record: CallRecord) -> None:
        content = record.request_json
        if content is None:
            content = request_content(record.tool, record.arguments, self.max_bytes)
        metadata: dict[str, Any] = {
            "correlation_id": record.correlation_id,
            "tool": record.tool,
            "file_ids": [],
            "error_code": None,
        }
        self._emit(_turn(record, record.request_turn, "user", content, metadata))

    def call_finished(self, record: CallRecord) -> None:
        if not record.response_turn:
            return  # cancelled by the client: no response, no turn
        content = record.result_json
        if content is None:
            content = _ENCODER.encode(record.result)
        content = within(redact_json_text(content), self.max_bytes)  # (redacted whole, then cut)
        metadata = {
            "correlation_id": record.correlation_id,
            "tool": record.tool,
            "file_ids": list(record.file_ids),
            "error_code": record.error_code,
        }
        self._emit(_turn(record, record.response_turn, "assistant", content, metadata))
