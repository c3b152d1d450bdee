"""One MCP session, whatever carries it: WebSocket, Streamable HTTP or stdio.

A transport hands each message it receives to :meth:`McpSession.answer` together with a
way to send on the same channel, and sends the reply it gets back. Everything else is
here, the same for every transport: JSON-RPC checks, batches, the MCP methods, each
``tools/call`` in its own cancel scope (deadline, ``notifications/cancelled``) with its
progress, its conversation turns and its correlation id.

Limits that bound what one session can make the server hold:

- a batch has at most ``max_batch`` requests (past it: one error, nothing run);
- the messages whose requests are under way add up to ``max_inflight_bytes`` (past it,
  a message's requests are answered "busy", not run), and only what the server reads of
  a request is kept while it runs;
- a reply (single or batch) has at most ``max_reply_bytes``, past which it is replaced
  by a JSON-RPC error (in a batch, each reply that no longer fits is);
- replies in the making or not yet taken by the client add up to
  ``max_pending_reply_bytes`` (and those of every session to
  ``max_pending_reply_bytes_total``): a call whose result grows with a page
  (``large_result``) or with a file (``resources/read``) reserves ``max_reply_bytes``
  while it runs, and waits for that room before it starts; replies count from when the
  transport sends them until the client has taken them (:meth:`McpSession.sending`).
  Backpressure, not loss: no reply is dropped (:mod:`horace.server.replyroom`).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, nullcontext, suppress
from typing import Any, Protocol

import attrs
import trio

import horace
from horace.catalog import Catalog
from horace.config import Settings
from horace.logs import calling
from horace.model import CallRecord, ErrorCode, HoraceError
from horace.redact import redact_text
from horace.server import heap, jsonrpc
from horace.server.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    REPLY_TOO_LARGE,
    REQUEST_TIMEOUT,
    SERVER_BUSY,
    RpcError,
    Unusable,
    error_text,
    is_notification,
    is_valid_id,
    result_text,
)
from horace.server.observer import CallWatch, NoObserver, Observer
from horace.server.replyroom import ReplyRoom
from horace.server.resources import Resources
from horace.server.runner import (
    ASK_FOR_LESS,
    READ_TOO_LARGE,
    ProgressPump,
    error_body,
    reply_too_large,
    run_tool,
    tool_error,
)
from horace.server.tools import MAX_CORRELATION_ID, TOOLS, CallContext
from horace.sinks.conversations import request_content

log = logging.getLogger("horace.server")

PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first
ARGUMENT_ERRORS_AS_RESULTS = "2025-11-25"  # the version that made them tool errors
# A progress token is echoed in every progress notification (up to 10 a second for the
# life of a call): a long one would turn one request into a stream of copies of it.
MAX_PROGRESS_TOKEN_CHARS = 1024
# A message larger than this is read, parsed and answered one at a time in the server
# (one_large_request_at_a_time): a batch of registers with metadata at its limit is about
# 1.7 MB, a single call's arguments a few kilobytes.
LARGE_REQUEST_BYTES = 1024 * 1024
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
CAPABILITIES = {
    "tools": {"listChanged": False},
    "resources": {"subscribe": False, "listChanged": False},
    "completions": {},
    "logging": {},
}


class Send(Protocol):
    """How a session's messages go out on the channel a message came in on: the
    notifications that belong to a request (its progress), then its reply (*final*)."""

    async def __call__(self, text: str, *, final: bool = False) -> None: ...


class McpSession:
    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        observer: Observer | None = None,
        *,
        transport: str,
        server_room: ReplyRoom | None = None,
        large_requests: trio.CapacityLimiter | None = None,
    ) -> None:
        self.catalog = catalog
        self.large_requests = large_requests  # the server's: see LARGE_REQUEST_BYTES
        self.settings = settings
        self.observer = observer or NoObserver()
        self.transport = transport
        self.conversation_id = str(uuid.uuid4())
        self.protocol_version: str | None = None
        self.client_info: Any = None
        self.log_level: str | None = None  # none sent until the client asks (logging/setLevel)
        self.resources = Resources(catalog, settings.max_read_bytes)
        self._scopes: dict[Any, trio.CancelScope] = {}
        self._under_way: set[Any] = set()  # the ids of the requests being answered
        self._cancelled_by_client: set[Any] = set()
        self._running: set[trio.CancelScope] = set()  # every call's scope, for cancel_all()
        self.closing = False
        self.inflight = 0
        self._request_bytes = 0  # the messages whose requests are under way
        # Reserved by running large_result calls, plus what is being sent until it is taken.
        self.reply_room = ReplyRoom(settings.max_pending_reply_bytes, within=server_room)
        self.quiet_since = trio.current_time()  # when the last call finished or reply went out
        self._turns = 0

    # -- what the transport uses ------------------------------------------------------------

    def admit(self, size: int) -> int:
        """Count a message of *size* bytes just received among the requests under way,
        before anything is done with it (call it as the transport reads the message, with
        no checkpoint in between, so messages waiting for their turn count too); give the
        result to :meth:`answer`. Past ``max_inflight_bytes`` the message gets a "busy"
        answer."""
        if size > self.settings.max_message_bytes or not self._take_request_bytes(size):
            return -size  # not counted: answered without being run
        return size

    async def answer(
        self,
        message: str | bytes,
        admitted: int,
        send: Send,
        slot: Callable[[], None] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer one message received (as text, or as its UTF-8, decoded only when its turn
        comes), *admitted* as :meth:`admit` said: what belongs to it goes out through
        *send*, its reply last. The bytes the message was counted
        for are held until the reply has gone out: a client that sends many requests and
        reads no replies stops being read from, instead of piling them up. *slot*: the
        transport read the message in the server's large-request slot, which it holds
        still; this lets go of it, called once the message has been answered.

        Started with ``nursery.start`` (it says so at once), the transport reads its next
        message only once this one has run to its first checkpoint: a request is under way
        by then, its cancel scope set (unless it waits for the large-request slot), so a
        cancel read right behind it finds it (started side by side, Trio may run the cancel
        first)."""
        task_status.started()
        try:
            async with self._answering(admitted, send):
                async with one_large_request_at_a_time(self.large_requests, abs(admitted), slot):
                    slot = None  # (let go of by the context manager from here on)
                    reply = await self._message(message, abs(admitted), admitted > 0, send)
                    del message  # answered: what it held need not stay while the reply goes out
                if reply is not None:
                    await send(reply, final=True)
        finally:
            if slot is not None:  # (cancelled before its turn came)
                slot()

    async def answer_parsed(self, parsed: Any, admitted: int, send: Send) -> None:
        """As :meth:`answer`, for a message the transport has already parsed and checked
        against ``max_message_bytes`` (Streamable HTTP reads it to route it)."""
        async with self._answering(admitted, send):
            reply = await self._parsed(parsed, abs(admitted), admitted > 0, send)
            del parsed
            if reply is not None:
                await send(reply, final=True)

    @asynccontextmanager
    async def _answering(self, admitted: int, send: Send) -> AsyncIterator[None]:
        try:
            yield
        except Exception:
            # A bug met by one message costs that message an error, never the session.
            log.exception("message failed", extra={"conversation_id": self.conversation_id})
            await send(
                error_text(None, RpcError(INTERNAL_ERROR, "internal error: see the server's log")), final=True
            )
        finally:
            if admitted > 0:
                self._request_bytes -= admitted

    async def _message(self, message: str | bytes, size: int, admitted: bool, send: Send) -> str | None:
        limit = self.settings.max_message_bytes
        if size > limit:
            return error_text(jsonrpc.id_of_unread(message), jsonrpc.too_large(size, limit))
        try:
            parsed = jsonrpc.parse(message)
        except RpcError as exc:  # (not JSON: no id, as JSON-RPC says; too many values: its id)
            refused_id = jsonrpc.id_of_unread(message) if exc.code != jsonrpc.PARSE_ERROR else None
            return error_text(refused_id, exc)
        del message
        return await self._parsed(parsed, size, admitted, send)

    async def _parsed(self, parsed: Any, size: int, admitted: bool, send: Send) -> str | None:
        """Answer a parsed message of *size* bytes."""
        if isinstance(parsed, list):
            return await self._batch(parsed, size, admitted, send)
        if self.notification(parsed) or jsonrpc.is_response(parsed):
            return None
        if not admitted:
            return self._busy_with_requests(parsed)
        return await self._answer(jsonrpc.what_is_read(parsed), send, size)

    def notification(self, message: Any) -> bool:
        """Act on *message* if it is a well-formed notification; True if it was one."""
        if not is_notification(message):
            return False
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if message["method"] == "notifications/cancelled" and "requestId" in params:
            # (Without a requestId, .get() would give None: the call whose id is null.)
            request_id = params["requestId"]
            scope = self._scopes.get(request_id) if is_valid_id(request_id) else None
            if scope is not None:
                self._cancelled_by_client.add(request_id)
                scope.cancel()
        return True

    def cancel_all(self) -> None:
        """The session ends (its client is gone, or ended it): nobody is left to answer,
        stop the work. The calls answer nothing."""
        self.closing = True
        for scope in self._running:
            scope.cancel()

    @contextmanager
    def sending(self, size: int) -> Iterator[None]:
        """Count *size* bytes of reply among those not yet taken, while the transport
        sends them. Entered with no checkpoint since the call that made the reply gave
        back its reservation, so waiting calls cannot slip in between."""
        self.reply_room.count(size)
        try:
            yield
        finally:
            self.reply_room.give_back(size)
            self.quiet_since = trio.current_time()

    def held(self) -> dict[str, int]:
        """What the session holds now (for /health and the tests of the limits)."""
        return {
            "calls": self.inflight,
            "cancellable": len(self._scopes),
            "cancelled_by_client": len(self._cancelled_by_client),
            "request_bytes": self._request_bytes,
            "reply_bytes": self.reply_room.used,
        }

    def next_turn(self) -> int:
        # Trio runs one task at a time, so a plain counter is race-free across
        # concurrent calls and batch members.
        self._turns += 1
        return self._turns

    # -- limits ------------------------------------------------------------------------------

    def _take_request_bytes(self, size: int) -> bool:
        """Count a message's *size* among the requests under way, if within
        ``max_inflight_bytes`` (a message alone is always taken); False otherwise."""
        if self._request_bytes and self._request_bytes + size > self.settings.max_inflight_bytes:
            return False
        self._request_bytes += size
        return True

    @property
    def _carrier(self) -> str:
        """What the limits per connection are counted in, for messages: an HTTP session
        spans connections."""
        return "session" if self.transport == "http" else "connection"

    def _busy_with_requests(self, request: Any) -> str:
        request_id = request.get("id") if isinstance(request, dict) else None
        return error_text(
            request_id if is_valid_id(request_id) else None,
            RpcError(
                SERVER_BUSY,
                f"{self._request_bytes} bytes of requests are under way in this {self._carrier} (limit "
                f"{self.settings.max_inflight_bytes}, HORACE_MAX_INFLIGHT_BYTES): not run, send it again "
                "once some have been answered",
            ),
        )

    @asynccontextmanager
    async def _room_for_a_reply(self) -> AsyncIterator[None]:
        """Room for one reply of ``max_reply_bytes`` while the body runs (waiting for it
        first, cancellably): see :mod:`horace.server.replyroom`. Given back before the
        reply is encoded and handed to the transport, with no checkpoint in between
        (:meth:`sending` counts it at once), so waiting calls cannot slip in between."""
        size = self.settings.max_reply_bytes
        await self.reply_room.reserve(size)
        try:
            yield
        finally:
            self.reply_room.give_back(size)

    # -- messages ------------------------------------------------------------------------------

    async def _batch(self, items: list[Any], size: int, admitted: bool, send: Send) -> str | None:
        """Answer a batch with one array of at most ``max_reply_bytes``: replies are kept
        as they come; one that would not fit any more is replaced by a short error
        (REPLY_TOO_LARGE, with its id), so what is kept stays within the limit, give or
        take those errors."""
        if not items:
            return error_text(None, RpcError(INVALID_REQUEST, "empty batch"))
        if len(items) > self.settings.max_batch:
            # Refused whole, its notifications too: one answer, whatever the length.
            return error_text(
                None,
                RpcError(
                    INVALID_REQUEST,
                    f"a batch of {len(items)} requests exceeds the limit of {self.settings.max_batch} "
                    "(HORACE_MAX_BATCH): send fewer at a time",
                ),
            )
        for item in items:  # notifications act at once, in order, as outside a batch
            self.notification(item)
        requests = [
            jsonrpc.what_is_read(item)
            for item in items
            if not is_notification(item) and not jsonrpc.is_response(item)
        ]
        del items
        if not requests:
            return None
        if not admitted:
            return "[" + ", ".join(self._busy_with_requests(r) for r in requests) + "]"
        limit = self.settings.max_reply_bytes
        replies: list[str] = []
        total = 2  # the brackets
        kept = 0  # of the replies, what the server's room counts until the batch's goes out

        async def one(item: Any) -> None:
            nonlocal total, kept
            reply = await self._answer(item, send, size)  # (the batch's size: at most)
            if reply is None:
                return
            separator = 2 if replies else 0
            if total + separator + len(reply) > limit:
                why = f"the batch's reply, limited to {limit} bytes (HORACE_MAX_REPLY_BYTES)"
            elif not self.reply_room.keep_for_batch(len(reply)):
                why = "the server's room for batches' replies (HORACE_MAX_PENDING_REPLY_BYTES_TOTAL)"
            else:
                why = None
                kept += len(reply)
            if why is not None:
                request_id = item.get("id") if isinstance(item, dict) else None
                reply = error_text(
                    request_id if is_valid_id(request_id) else None,
                    RpcError(
                        REPLY_TOO_LARGE,
                        f"this reply ({len(reply)} bytes) did not fit in {why}; the request ran: send "
                        "it alone or ask for less",
                        {"reply_bytes": len(reply), "limit": limit},
                    ),
                )
            total += separator + len(reply)
            replies.append(reply)

        try:
            async with trio.open_nursery() as nursery:
                for item in requests:
                    nursery.start_soon(one, item)
        finally:
            # Let go with no checkpoint before the transport counts the batch's reply.
            self.reply_room.let_go_for_batch(kept)
        return "[" + ", ".join(replies) + "]" if replies else None

    async def _answer(self, message: Any, send: Send, size: int) -> str | None:
        """The reply's JSON text (never over ``max_reply_bytes``), or None; *size*: the
        bytes of the message it came in."""
        if not isinstance(message, dict):
            return error_text(None, RpcError(INVALID_REQUEST, "a request is a JSON object"))
        request_id = message.get("id")  # (none: a notification gone wrong, answered with id null)
        not_an_id = jsonrpc.why_not_an_id(request_id) if "id" in message else None
        if not_an_id is not None:
            return error_text(None, RpcError(INVALID_REQUEST, not_an_id))
        method, params = message.get("method"), message.get("params", {})

        def refused(exc: RpcError) -> str:
            if method == "tools/call" and exc.data is None:  # a tool call's errors all carry one
                exc.data = {"correlation_id": _call_correlation_id(params)}
            return error_text(request_id, exc)

        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return refused(RpcError(INVALID_REQUEST, 'need "jsonrpc": "2.0" and a method'))
        if not isinstance(params, dict | list):
            return refused(RpcError(INVALID_PARAMS, "params must be an object"))
        refusal = jsonrpc.unusable(params)
        if refusal is not None and not (method == "tools/call" and refusal.within("arguments")):
            return refused(RpcError(INVALID_PARAMS, str(refusal)))
        tracked = "id" in message
        turned_away: RpcError | None = None
        if self.inflight >= self.settings.max_calls_per_connection:
            turned_away = RpcError(
                SERVER_BUSY,
                f"too many calls under way in this {self._carrier} "
                f"(limit {self.settings.max_calls_per_connection}, HORACE_MAX_CALLS_PER_CONNECTION)",
            )
        elif tracked and request_id in self._under_way:
            # Its reply, and a cancel by that id, would be the other's too (MCP: an id is
            # never used twice by a session's requests).
            said = f"id {request_id!r} is already in use by a request under way on this session"
            turned_away = RpcError(INVALID_REQUEST, said)
        if turned_away is not None:
            if method == "tools/call" and isinstance(params, dict):
                try:  # (a tool call turned away is two turns as any other, though never run)
                    await self._call_tool(request_id, params, send, refusal, size, turned_away)
                except RpcError as exc:
                    turned_away = exc
            return refused(turned_away)
        self.inflight += 1
        if tracked:
            self._under_way.add(request_id)
        try:
            text = await self._dispatch(request_id, method, params, send, refusal, size)
        except RpcError as exc:
            return refused(exc)
        except Exception:
            # A bug met by one request costs it an error (with its id), never the session.
            log.exception("%s failed", method, extra={"conversation_id": self.conversation_id})
            return refused(RpcError(INTERNAL_ERROR, "internal error: see the server's log"))
        finally:
            self.inflight -= 1
            if tracked:
                self._under_way.discard(request_id)
            self.quiet_since = trio.current_time()
        if text is None:
            return None
        limit = self.settings.max_reply_bytes
        if len(text) > limit:  # ASCII (json.dumps escapes the rest): characters are bytes
            size = len(text)
            del text  # the error goes out; the big reply need not stay while it does
            advice = READ_TOO_LARGE if method == "resources/read" else ASK_FOR_LESS
            return error_text(
                request_id,
                RpcError(
                    REPLY_TOO_LARGE,
                    reply_too_large(size, limit, advice=advice),
                    {"reply_bytes": size, "limit": limit},
                ),
            )
        return text

    async def _dispatch(
        self, request_id: Any, method: str, params: Any, send: Send, refusal: Unusable | None, size: int
    ) -> str | None:
        if method == "tools/call":
            return await self._call_tool(request_id, params, send, refusal, size)
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, f"{method} takes an object as params")
        if method == "initialize":
            result: Any = self._initialize(params)
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            _one_page(params)
            result = {"tools": [tool.describe() for tool in TOOLS.values()]}
        elif method == "resources/list":
            result = await self.resources.listing(params)
        elif method == "resources/templates/list":
            _one_page(params)
            result = self.resources.templates()
        elif method == "resources/read":
            async with self._room_for_a_reply():  # a file's content: up to max_read_bytes
                result = await self.resources.read(params)
        elif method == "completion/complete":
            result = await self.resources.complete(params)
        elif method == "logging/setLevel":
            result = self._set_level(params)
        elif method.startswith("notifications/"):
            raise RpcError(METHOD_NOT_FOUND, f"{method} is a notification: send it without an id")
        else:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        return result_text(request_id, result)

    def _initialize(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if self.protocol_version is not None:
            raise RpcError(
                INVALID_REQUEST,
                f"this session is initialized already (protocol {self.protocol_version}); "
                "a new session is a new WebSocket or stdio process, or over HTTP an initialize "
                "without Mcp-Session-Id",
            )
        asked, client = params.get("protocolVersion"), params.get("clientInfo")
        if not (
            isinstance(asked, str)
            and isinstance(params.get("capabilities"), dict)
            and isinstance(client, dict)
            and isinstance(client.get("name"), str)
        ):
            raise RpcError(
                INVALID_PARAMS,
                "initialize needs params.protocolVersion (a string), params.capabilities (an object) "
                "and params.clientInfo (an object with a name)",
            )
        self.protocol_version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        self.client_info = params.get("clientInfo")
        return {
            "protocolVersion": self.protocol_version,
            "capabilities": CAPABILITIES,
            "serverInfo": {"name": "horace", "title": "Horace", "version": horace.__version__},
            "instructions": "Horace catalogs and versions files under its storage root's files/ folder: "
            "register, search, restore earlier versions; read any version as a resource.",
        }

    def _set_level(self, params: Mapping[str, Any]) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"level is one of {', '.join(LOG_LEVELS)}")
        self.log_level = level
        return {}

    def wants_log(self, level: str) -> bool:
        return self.log_level is not None and LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)

    # -- tools/call ----------------------------------------------------------------------------

    async def _call_tool(
        self,
        request_id: Any,
        params: Any,
        send: Send,
        refusal: Unusable | None,
        size: int,
        turned_away: RpcError | None = None,
    ) -> str | None:
        """A tool call; *refusal*: why its arguments cannot be used (answered as any
        argument the tool refuses, and logged in their stead: they may not be storable);
        *size*: the bytes of the message it came in; *turned_away*: the error it gets
        unrun (the session is busy), raised once its request turn is made."""
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "tools/call needs params.name")
        given = params.get("name")
        name = _name_recorded(params)  # (as its turns and log line say it)
        arguments = params.get("arguments") if refusal is None else {"unusable": str(refusal)}
        meta: dict[str, Any] = params["_meta"] if isinstance(params.get("_meta"), dict) else {}
        correlation_id = _correlation_id(arguments, meta)
        with calling(correlation_id):  # (what is logged as it runs carries the call's id)
            # Recorded from here, refused or not: a call to a tool there is not is a turn too.
            record = CallRecord(self.conversation_id, correlation_id, name, arguments, self.next_turn())
            if size > self.settings.turn_max_bytes and not isinstance(self.observer, NoObserver):
                # Its turn is made now, cut, rather than by the sink from the arguments queued
                # until the sink process takes them: parsed, a message's objects can take twenty
                # times its bytes (4 MiB of "[]," is 90 MB of lists). In a worker thread: encoding
                # and redacting megabytes of small objects takes seconds the event loop must not
                # stop for.
                made = await trio.to_thread.run_sync(
                    request_content, name, arguments, self.settings.turn_max_bytes
                )
                record = attrs.evolve(record, arguments=None, request_json=made)
            watch = CallWatch(self.observer, record)
            answered = False
            try:
                if turned_away is not None:
                    turned_away.data = {"correlation_id": correlation_id}
                    raise turned_away
                tool, token = _tool_asked(given, meta, correlation_id)
                try:
                    if refusal is not None:
                        in_path = refusal.holds_nul and refusal.where == "arguments.file_path"
                        code = ErrorCode.INVALID_PATH if in_path else ErrorCode.INVALID_ARGUMENT
                        raise HoraceError(code, str(refusal))
                    args = tool.structure(arguments)
                except HoraceError as exc:
                    if not self._argument_errors_are_results():
                        raise RpcError(
                            INVALID_PARAMS,
                            exc.message,
                            {"error_code": exc.code.value, "correlation_id": correlation_id},
                        ) from None
                    reply: dict[str, Any] | None = tool_error(exc.code, exc.message, correlation_id)
                else:
                    reply = await self._run(request_id, tool, args, correlation_id, token, send)
                if reply is None:
                    return None  # cancelled by the client: MCP says no response follows
                answered = True
                error = error_body(reply)
                error_code = error["error_code"] if error is not None else None
                result = jsonrpc.result_json(reply)  # encoded once: for the reply and the log
                watch.answered(reply, error_code, result)
                if error is not None:
                    await self._log_to_client(send, "error" if error_code == "INTERNAL" else "warning", error)
                limit = self.settings.max_reply_bytes
                text = jsonrpc.reply_text(request_id, result)
                del result
                if len(text) > limit:  # recorded as the error it is answered with, not as the result
                    raise RpcError(
                        REPLY_TOO_LARGE,
                        reply_too_large(len(text), limit),
                        {"reply_bytes": len(text), "limit": limit, "correlation_id": correlation_id},
                    )
                return text
            except RpcError as exc:
                answered = True
                watch.answered({"error": exc.body()}, str(exc.code))
                raise
            finally:
                watch.finish(self.next_turn() if answered else 0)

    def _argument_errors_are_results(self) -> bool:
        """Whether arguments the tool's inputSchema refuses are a tool error (isError, which
        a model reads and can correct) rather than JSON-RPC error -32602: so from MCP
        2025-11-25 on (SEP-1303); a client of an earlier version gets -32602."""
        return self.protocol_version is None or self.protocol_version >= ARGUMENT_ERRORS_AS_RESULTS

    async def _run(
        self, request_id: Any, tool: Any, args: Any, correlation_id: str, token: Any, send: Send
    ) -> dict[str, Any] | None:
        """The call's result, under its cancel scope; None when the client cancelled it."""
        pump = ProgressPump(send, token) if is_valid_id(token) and token is not None else None
        context = CallContext(
            self.catalog, correlation_id, pump.update if pump else None, self.settings.max_read_bytes
        )
        deadline = self.settings.call_deadline
        scope = trio.CancelScope(
            deadline=trio.current_time() + deadline if math.isfinite(deadline) else math.inf
        )
        self._scopes[request_id] = scope
        self._running.add(scope)
        reply: dict[str, Any] | None = None
        try:
            with scope:  # the wait for room is under the call's deadline, and cancellable
                async with self._room_for_a_reply() if tool.large_result else nullcontext():
                    reply = await run_tool(tool, args, context, pump, self.settings.max_reply_bytes)
        finally:
            self._scopes.pop(request_id, None)
            self._running.discard(scope)
        # Discarded whatever the outcome: a cancel that came as the call was finishing would
        # otherwise stay in the set for the life of the session.
        asked_to_stop = request_id in self._cancelled_by_client
        self._cancelled_by_client.discard(request_id)
        if asked_to_stop:
            # MCP: no response to a cancelled request, also when the cancel came as the
            # work finished (a shielded commit ran to its end meanwhile): the client that
            # sent it has stopped waiting.
            return None
        if reply is None:
            if self.closing:
                return None
            raise RpcError(
                REQUEST_TIMEOUT,
                f"the call ran past its deadline of {deadline:g} s",
                {"correlation_id": correlation_id},
            )
        return reply

    async def _log_to_client(self, send: Send, level: str, body: dict[str, Any]) -> None:
        """A failed call as a log message too, for clients that asked (logging/setLevel)."""
        if self.wants_log(level):
            await send(
                jsonrpc.notification_text(
                    "notifications/message", {"level": level, "logger": "horace", "data": body}
                )
            )


@asynccontextmanager
async def one_large_request_at_a_time(
    large_requests: trio.CapacityLimiter | None, size: int, held: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Hold one of the server's *large_requests* slots while a message of more than
    :data:`LARGE_REQUEST_BYTES` is read, parsed and answered (a checkpoint only when it
    waits): parsed, 4 MiB of ``[{},{},…]`` are 90 MB of objects, and sessions parsing such
    messages side by side would add them up. No real request comes near that size. What
    it freed is then given back to the system (horace.server.heap). *held*: the slot was
    taken as the message was read (horace.server.wsintake); this lets go of it."""
    if held is not None:
        try:
            yield
        finally:
            held()
            heap.give_back()
    elif large_requests is None or size <= LARGE_REQUEST_BYTES:
        yield
    else:
        async with large_requests:
            try:
                yield
            finally:
                heap.give_back()


# A tool name as a call's turns and log line record it, at most: one far longer (no tool's
# is) is cut, so that a hostile call's log line is not kilobytes long.
RECORDED_NAME_CHARS = 200


def _name_recorded(params: Mapping[str, Any]) -> str:
    """The tool a call names, as its turns and log line record it: the name; what was
    sent instead of a string, as JSON ("" when nothing was); cut to RECORDED_NAME_CHARS.
    A name no tool has is the client's text, redacted as any (Godot's call line and the
    turns take it as it is, a name of Horace's own)."""
    if "name" not in params:
        return ""
    given = params["name"]
    if isinstance(given, str) and given in TOOLS:
        return given
    name = redact_text(given if isinstance(given, str) else json.dumps(given, default=str))
    return name if len(name) <= RECORDED_NAME_CHARS else name[:RECORDED_NAME_CHARS] + "…"


def _tool_asked(name: Any, meta: Mapping[str, Any], correlation_id: str) -> tuple[Any, Any]:
    """The tool a ``tools/call`` names, and its progress token (None: none asked for)."""
    if not isinstance(name, str):
        raise RpcError(INVALID_PARAMS, "tools/call needs params.name", {"correlation_id": correlation_id})
    tool = TOOLS.get(name)
    if tool is None:
        raise RpcError(INVALID_PARAMS, f"unknown tool: {name}", {"correlation_id": correlation_id})
    token = meta.get("progressToken")
    if token is not None and (type(token) is not int and not isinstance(token, str)):
        raise RpcError(  # (MCP: a string or an integer; what notifications echo)
            INVALID_PARAMS,
            "progressToken must be a string or an integer",
            {"correlation_id": correlation_id},
        )
    if isinstance(token, str) and len(token) > MAX_PROGRESS_TOKEN_CHARS:
        raise RpcError(
            INVALID_PARAMS,
            f"progressToken longer than {MAX_PROGRESS_TOKEN_CHARS} characters",
            {"correlation_id": correlation_id},
        )
    return tool, token


def _correlation_id(arguments: Any, meta: Mapping[str, Any]) -> str:
    """The call's correlation id: the one its arguments' metadata gives, or its ``_meta``,
    or a new one. One too long in the arguments is passed over here (the tool refuses
    it); in ``_meta`` it is refused, the refusal under a new id."""
    if isinstance(arguments, Mapping):
        metadata = arguments.get("metadata")
        if isinstance(metadata, Mapping):
            given = metadata.get("correlation_id")
            if isinstance(given, str) and len(given) <= MAX_CORRELATION_ID:
                return given
    for key in ("correlation_id", "correlationId"):
        given = meta.get(key)
        if isinstance(given, str) and len(given) > MAX_CORRELATION_ID:
            raise RpcError(
                INVALID_PARAMS,
                f"_meta.{key} longer than {MAX_CORRELATION_ID} characters",
                {"correlation_id": str(uuid.uuid4())},
            )
        if isinstance(given, str) and given:
            return given
    return str(uuid.uuid4())


def _call_correlation_id(params: Any) -> str:
    """The correlation id of a tool call refused before it was taken apart: its own when
    it gives a usable one, else a new one."""
    if isinstance(params, Mapping):
        meta = params.get("_meta")
        with suppress(RpcError):  # (one too long: the refusal is under a new id)
            return _correlation_id(params.get("arguments"), meta if isinstance(meta, Mapping) else {})
    return str(uuid.uuid4())


def _one_page(params: Mapping[str, Any]) -> None:
    """A list that is one page gives no cursor: any cursor sent for it is not one of ours
    (MCP: an invalid cursor is -32602)."""
    if params.get("cursor") is not None:
        raise RpcError(INVALID_PARAMS, "cursor: this list is one page, and gives no cursors")
