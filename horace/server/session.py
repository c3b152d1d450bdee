"""One MCP session: JSON-RPC 2.0 over one WebSocket.

The reader parses each text frame and starts a task per request in the session's
nursery, so calls on one connection run concurrently. Each ``tools/call`` gets its own
cancel scope (deadline, ``notifications/cancelled``) and its own nursery (the progress
pump lives there). A client that goes away cancels its calls; a draining server stops
reading but lets the calls finish.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import outcome
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import horace
from horace.backends.protocol import BackendUnavailable, DatabaseFull
from horace.catalog import Catalog
from horace.config import Settings
from horace.model import CallRecord, ErrorCode, HoraceError
from horace.server.tools import TOOLS, CallContext
from horace.wire import to_json

log = logging.getLogger("horace.server")

PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_BUSY = -32000
REQUEST_TIMEOUT = -32001

MAX_PARAMS_DEPTH = 64  # levels of lists and objects in a request's params
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_NO_REPLY = object()


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class Observer(Protocol):
    def call_started(self, record: CallRecord) -> None: ...
    def call_finished(self, record: CallRecord) -> None: ...


class _NoObserver:
    def call_started(self, record: CallRecord) -> None:
        return None

    def call_finished(self, record: CallRecord) -> None:
        return None


def _is_valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


def _unusable(params: Any) -> str | None:
    """Why *params* cannot be used whatever the method, or None.

    Values nested too deep would overflow the recursive code past this point (structuring,
    JSON for the catalog and the sinks) and, once stored, break every later read of the
    file. A lone surrogate (a ``\\udXXX`` escape without its pair) is valid JSON text but
    not Unicode: it can be neither a path nor a database string. Integers beyond 64 bits
    fit no database column, and NaN or Infinity (which Python's parser lets through) are
    not JSON and could not be sent back. Walked iteratively.
    """
    stack = [(params, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return f"a string in params is not valid Unicode (lone surrogate): {item[:40]!r}"
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return f"an integer in params is out of the 64-bit range: {item}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"a number in params is not finite: {item}"
        elif isinstance(item, dict | list):
            if depth > MAX_PARAMS_DEPTH:
                return f"params nested deeper than {MAX_PARAMS_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _is_notification(message: Any) -> bool:
    """A well-formed notification (no id, a method, "jsonrpc": "2.0"): never answered.

    The one test for both single messages and batch members; anything else without an id
    is an invalid request, answered with id null.
    """
    return (
        isinstance(message, dict)
        and "id" not in message
        and isinstance(message.get("method"), str)
        and message.get("jsonrpc") == "2.0"
    )


def _correlation_id(arguments: Any, meta: Mapping[str, Any]) -> str:
    if isinstance(arguments, Mapping):
        metadata = arguments.get("metadata")
        if isinstance(metadata, Mapping) and isinstance(metadata.get("correlation_id"), str):
            return str(metadata["correlation_id"])
    for key in ("correlation_id", "correlationId"):
        if isinstance(meta.get(key), str) and meta[key]:
            return str(meta[key])
    return str(uuid.uuid4())


def tool_result(structured: dict[str, Any], *, is_error: bool = False) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": json.dumps(structured)}],
        "structuredContent": structured,
        "isError": is_error,
    }


def encode_reply(request_id: Any, result: Any) -> str:
    """The reply's JSON text. A tool result's structured content is encoded once and
    reused for its text content, instead of being serialised twice."""
    if isinstance(result, dict) and "structuredContent" in result and "content" in result:
        body = result["content"][0]["text"]
        return (
            f'{{"jsonrpc": "2.0", "id": {json.dumps(request_id)}, "result": {{"content": '
            f'[{{"type": "text", "text": {json.dumps(body)}}}], "structuredContent": {body}, '
            f'"isError": {json.dumps(result["isError"])}}}}}'
        )
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def tool_error(code: ErrorCode, message: str, correlation_id: str) -> dict[str, Any]:
    return tool_result(
        {"error_code": code.value, "message": message, "correlation_id": correlation_id}, is_error=True
    )


class _ProgressPump:
    """Sends the latest progress of a call, at most every ``interval`` seconds.

    The catalog reports progress synchronously; the pump owns the sending, so a slow
    client never slows the work down and intermediate values are coalesced.
    """

    def __init__(self, session: Session, token: str | int, interval: float = 0.1) -> None:
        self.session, self.token, self.interval = session, token, interval
        self.latest: tuple[int, int] | None = None
        self.sent: tuple[int, int] | None = None
        self.changed = trio.Event()
        self.done = False

    def update(self, done: int, total: int) -> None:
        self.latest = (done, total)
        self.changed.set()

    def close(self) -> None:
        self.done = True
        self.changed.set()

    async def run(self) -> None:
        while True:
            await self.changed.wait()
            self.changed = trio.Event()
            if self.latest is not None and self.latest != self.sent:
                self.sent = self.latest
                done, total = self.latest
                await self.session.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": self.token, "progress": done, "total": total},
                    }
                )
            if self.done and self.latest == self.sent:
                return  # (an update that came in during the send above goes out first)
            if not self.done:
                await trio.sleep(self.interval)


class Session:
    def __init__(
        self, ws: WebSocketConnection, catalog: Catalog, settings: Settings, observer: Observer | None = None
    ) -> None:
        self.ws = ws
        self.catalog = catalog
        self.settings = settings
        self.observer = observer or _NoObserver()
        self.conversation_id = str(uuid.uuid4())
        self.protocol_version: str | None = None
        self.client_info: Any = None
        self._send_lock = trio.Lock()
        self._scopes: dict[Any, trio.CancelScope] = {}
        self._cancelled_by_client: set[Any] = set()
        self._inflight = 0
        self._turns = 0
        self._reading = trio.CancelScope()
        self.gone = False

    # -- the connection ---------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as calls:
            with self._reading:
                while True:
                    try:
                        message = await self.ws.get_message()
                    except ConnectionClosed:
                        self.gone = True
                        break
                    self._receive(message, calls)
            if self.gone:
                calls.cancel_scope.cancel()  # nobody is left to answer: stop the work
        if not self.gone:
            with trio.move_on_after(2):
                await self.ws.aclose(code=1001, reason="server shutting down")

    def drain(self) -> None:
        """Stop reading new messages; calls under way finish (the server bounds the wait)."""
        self._reading.cancel()

    def next_turn(self) -> int:
        # Trio runs one task at a time, so a plain counter is race-free across
        # concurrent calls and batch members.
        self._turns += 1
        return self._turns

    async def send(self, message: Any) -> None:
        """Send one message: an object, or JSON text already encoded."""
        text = message if isinstance(message, str) else json.dumps(message)
        async with self._send_lock:
            try:
                await self.ws.send_message(text)
            except ConnectionClosed:
                self.gone = True

    # -- messages ---------------------------------------------------------------------------

    def _receive(self, message: str | bytes, calls: trio.Nursery) -> None:
        if isinstance(message, bytes):
            calls.start_soon(
                self.send, _error(None, RpcError(INVALID_REQUEST, "binary frames are not JSON-RPC"))
            )
            return
        if len(message.encode()) > self.settings.max_message_bytes:
            calls.start_soon(
                self.send,
                _error(
                    None,
                    RpcError(
                        INVALID_REQUEST,
                        f"message of {len(message.encode())} bytes exceeds the limit of "
                        f"{self.settings.max_message_bytes}",
                    ),
                ),
            )
            return
        try:
            parsed = json.loads(message)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            calls.start_soon(self.send, _error(None, RpcError(PARSE_ERROR, f"parse error: {exc}")))
            return
        if isinstance(parsed, list):
            if not parsed:
                calls.start_soon(self.send, _error(None, RpcError(INVALID_REQUEST, "empty batch")))
                return
            for item in parsed:  # notifications act at once, in order, as outside a batch
                self._notification(item)
            calls.start_soon(self._batch, parsed)
        elif not self._notification(parsed):
            calls.start_soon(self._reply, parsed)

    def _notification(self, message: Any) -> bool:
        """Handle *message* if it is a well-formed notification; True if it was one."""
        if not _is_notification(message):
            return False
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if message["method"] == "notifications/cancelled" and "requestId" in params:
            # (Without a requestId, .get() would give None: the call whose id is null.)
            request_id = params["requestId"]
            scope = self._scopes.get(request_id) if _is_valid_id(request_id) else None
            if scope is not None:
                self._cancelled_by_client.add(request_id)
                scope.cancel()
        return True

    async def _batch(self, items: list[Any]) -> None:
        replies: list[Any] = []

        async def one(item: Any) -> None:
            if _is_notification(item):
                return  # a notification, handled on arrival
            reply = await self._answer(item)
            if reply is not _NO_REPLY:
                replies.append(reply)

        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(one, item)
        if replies:
            await self.send(
                "[" + ", ".join(r if isinstance(r, str) else json.dumps(r) for r in replies) + "]"
            )

    async def _reply(self, message: Any) -> None:
        reply = await self._answer(message)
        if reply is not _NO_REPLY:
            await self.send(reply)

    async def _answer(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return _error(None, RpcError(INVALID_REQUEST, "a request is a JSON object"))
        request_id = message.get("id")
        if not _is_valid_id(request_id):
            return _error(None, RpcError(INVALID_REQUEST, "id must be a string, an integer or null"))
        method, params = message.get("method"), message.get("params", {})
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _error(request_id, RpcError(INVALID_REQUEST, 'need "jsonrpc": "2.0" and a method'))
        if not isinstance(params, dict | list):
            return _error(request_id, RpcError(INVALID_PARAMS, "params must be an object"))
        refusal = _unusable(params)
        if refusal is not None:
            return _error(request_id, RpcError(INVALID_PARAMS, refusal))
        if self._inflight >= self.settings.max_calls_per_connection:
            return _error(
                request_id,
                RpcError(
                    SERVER_BUSY,
                    "too many calls under way on this connection "
                    f"(limit {self.settings.max_calls_per_connection})",
                ),
            )
        self._inflight += 1
        try:
            result = await self._dispatch(request_id, method, params)
        except RpcError as exc:
            return _error(request_id, exc)
        finally:
            self._inflight -= 1
        if result is _NO_REPLY:
            return _NO_REPLY
        return encode_reply(request_id, result)

    async def _dispatch(self, request_id: Any, method: str, params: Any) -> Any:
        if method == "initialize":
            return self._initialize(params)
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": [tool.describe() for tool in TOOLS.values()]}
        if method == "tools/call":
            return await self._call_tool(request_id, params)
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    def _initialize(self, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "initialize takes an object")
        asked = params.get("protocolVersion")
        self.protocol_version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        self.client_info = params.get("clientInfo")
        return {
            "protocolVersion": self.protocol_version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "horace", "version": horace.__version__},
            "instructions": "Horace catalogs and versions files under its storage root's files/ folder.",
        }

    # -- tools/call -------------------------------------------------------------------------

    async def _call_tool(self, request_id: Any, params: Any) -> Any:
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            raise RpcError(INVALID_PARAMS, "tools/call needs params.name")
        name = params["name"]
        arguments = params.get("arguments")
        meta: dict[str, Any] = params["_meta"] if isinstance(params.get("_meta"), dict) else {}
        correlation_id = _correlation_id(arguments, meta)
        tool = TOOLS.get(name)
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"unknown tool: {name}", {"correlation_id": correlation_id})
        started = time.perf_counter()
        record = CallRecord(self.conversation_id, correlation_id, name, arguments, self.next_turn())
        self.observer.call_started(record)
        reply: Any = _NO_REPLY
        error_code: str | None = None
        try:
            try:
                args = tool.structure(arguments)
            except HoraceError as exc:
                raise RpcError(
                    INVALID_PARAMS,
                    exc.message,
                    {
                        "error_code": exc.code.value,
                        "correlation_id": correlation_id,
                    },
                ) from None
            reply = await self._run_tool(request_id, tool, args, correlation_id, meta.get("progressToken"))
            if isinstance(reply, dict) and reply.get("isError"):
                error_code = reply["structuredContent"]["error_code"]
            return reply
        except RpcError as exc:
            error_code = str(exc.code)
            reply = {"error": exc.body()}
            raise
        finally:
            timing = (time.perf_counter() - started) * 1000
            answered = reply is not _NO_REPLY
            observed = not isinstance(self.observer, _NoObserver)
            logged = log.isEnabledFor(logging.INFO)
            file_ids: tuple[str, ...] = ()
            if isinstance(reply, dict) and (observed or logged):
                file_ids = tuple(_file_ids(reply.get("structuredContent")))
            self.observer.call_finished(
                attrs.evolve(
                    record,
                    response_turn=self.next_turn() if answered else 0,
                    result=reply if answered else None,
                    error_code=error_code,
                    timing_ms=timing,
                    file_ids=file_ids,
                )
            )
            if logged:
                outcome_name = error_code or ("ok" if answered else "cancelled")
                log.info(
                    "tools/call %s %s in %.1f ms",
                    name,
                    outcome_name,
                    timing,
                    extra={
                        "correlation_id": correlation_id,
                        "tool": name,
                        "file_ids": list(file_ids),
                        "conversation_id": self.conversation_id,
                        "duration_ms": round(timing, 3),
                        "outcome": outcome_name,
                    },
                )

    async def _run_tool(self, request_id: Any, tool: Any, args: Any, correlation_id: str, token: Any) -> Any:
        pump = _ProgressPump(self, token) if _is_valid_id(token) and token is not None else None
        context = CallContext(self.catalog, correlation_id, pump.update if pump else None)
        deadline = self.settings.call_deadline
        scope = trio.CancelScope(
            deadline=trio.current_time() + deadline if math.isfinite(deadline) else math.inf
        )
        self._scopes[request_id] = scope
        try:
            with scope:
                async with trio.open_nursery() as call:  # the call's own nursery
                    if pump is not None:
                        call.start_soon(pump.run)
                    done = await outcome.acapture(tool.handler, context, args)
                    if pump is not None:
                        pump.close()
                structured = to_json(done.unwrap())
        except HoraceError as exc:
            return tool_error(exc.code, exc.message, correlation_id)
        except BackendUnavailable as exc:
            log.warning("backend unavailable: %s", exc, extra={"correlation_id": correlation_id})
            return tool_error(
                ErrorCode.BACKEND_UNAVAILABLE, f"the catalog database is unavailable: {exc}", correlation_id
            )
        except DatabaseFull as exc:
            log.warning("%s", exc, extra={"correlation_id": correlation_id})
            return tool_error(ErrorCode.STORAGE_FULL, str(exc), correlation_id)
        except Exception:
            log.exception("tool %s failed", tool.name, extra={"correlation_id": correlation_id})
            return tool_error(
                ErrorCode.INTERNAL, f"internal error (correlation id {correlation_id})", correlation_id
            )
        finally:
            self._scopes.pop(request_id, None)
        if scope.cancelled_caught:
            if request_id in self._cancelled_by_client:
                self._cancelled_by_client.discard(request_id)
                return _NO_REPLY  # the client asked; MCP says no response follows
            raise RpcError(
                REQUEST_TIMEOUT,
                f"the call ran past its deadline of {deadline:g} s",
                {"correlation_id": correlation_id},
            )
        structured["correlation_id"] = correlation_id
        return tool_result(structured)


def _file_ids(structured: Any) -> list[str]:
    """The ids of the files a result speaks of (for the logs and conversation turns)."""
    found: list[str] = []
    if isinstance(structured, dict):
        if isinstance(structured.get("file_id"), str):
            found.append(structured["file_id"])
        for key in ("file",):
            if isinstance(structured.get(key), dict) and isinstance(structured[key].get("id"), str):
                found.append(structured[key]["id"])
        for key in ("results", "files"):
            for item in structured.get(key) or ():
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    found.append(item["id"])
        for group in structured.get("groups") or ():
            found += _file_ids(group)
    return list(dict.fromkeys(found))


def _error(request_id: Any, exc: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.body()}
