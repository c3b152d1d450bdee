"""The Godot sink: Horace's log, as ``logger_log`` tool calls over one WebSocket.

Calls of a batch are pipelined: their frames are written together, with one send, then
the answers are read as they come. The client is a small one of its own
(:class:`_Socket`, RFC 6455 for a client that sends and receives text): a log entry
costs an encoding and a decoding of a few microseconds, where a general WebSocket
library would spend several times that on each message and write each with a send of
its own. Secrets are redacted at any depth before an entry is queued, so they never
reach the spool either.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio

from horace.logs import CALL_LINE, OBSERVED, call_line_data
from horace.model import CallRecord
from horace.redact import redact
from horace.sinks.supervisor import Deliver, SinkRunner, SinkUnavailable, log

LEVELS = {"CRITICAL": "ERROR", "ERROR": "ERROR", "WARNING": "WARN", "INFO": "INFO", "DEBUG": "DEBUG"}
TRACE = 5  # below DEBUG
RECEIVE_BYTES = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # an answer longer than this is not Godot's
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x0, 0x8, 0x9, 0xA


class _Closed(Exception):
    """The WebSocket is closed (by Godot, or the connection dropped), or Godot broke
    the protocol."""


def _frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final frame, masked with *mask* (4 bytes) as a client's must be."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")
    return head + mask + masked


class _Socket:
    """A WebSocket client as the sink needs it: text messages out, several with one send,
    and text messages in; pings answered; no task of its own."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._received: deque[str] = deque()
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0

    @classmethod
    async def connect(cls, url: str) -> _Socket:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise SinkUnavailable(f"not a WebSocket URL: {url}")
        secure = parts.scheme == "wss"
        stream: trio.abc.Stream = await trio.open_tcp_stream(
            parts.hostname, parts.port or (443 if secure else 80)
        )
        if secure:
            tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=parts.hostname)
            await tls.do_handshake()
            stream = tls
        socket = cls(stream)
        try:
            await socket._handshake(parts.netloc.rpartition("@")[2], parts.path or "/", parts.query)
        except BaseException:
            await stream.aclose()
            raise
        return socket

    async def _handshake(self, host: str, path: str, query: str) -> None:
        key = base64.b64encode(os.urandom(16))
        target = path + (f"?{query}" if query else "")
        await self._stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise _Closed("the upgrade's answer has no end")
            await self._read()
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)  # (frames Godot sent right after its answer)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "101":
            raise SinkUnavailable(f"the WebSocket upgrade was refused: {lines[0]}")
        expected = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest()).decode()
        if (
            headers.get("sec-websocket-accept") != expected
            or headers.get("upgrade", "").lower() != "websocket"
        ):
            raise SinkUnavailable("the WebSocket upgrade was answered wrongly")

    async def _read(self) -> None:
        data = await self._stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise _Closed("the connection was closed")
        self._buffer += data

    async def send(self, texts: list[str]) -> None:
        masks = os.urandom(4 * len(texts))
        await self._stream.send_all(
            b"".join(_frame(_TEXT, text.encode(), masks[4 * i : 4 * i + 4]) for i, text in enumerate(texts))
        )

    async def receive(self) -> str:
        while not self._received:
            if not await self._parse():
                await self._read()
        return self._received.popleft()

    async def _parse(self) -> bool:
        """Take one frame off the buffer; False when it holds no whole frame."""
        buffer = self._buffer
        if len(buffer) < 2:
            return False
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise _Closed("a frame with reserved bits (no extension was agreed)")
        opcode, length, at = first & 0x0F, second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return False
            length, at = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return False
            length, at = int.from_bytes(buffer[2:10], "big"), 10
        mask = b""
        if second & 0x80:  # (a server must not mask; taken anyway)
            if len(buffer) < at + 4:
                return False
            mask, at = bytes(buffer[at : at + 4]), at + 4
        if length > MAX_MESSAGE_BYTES:
            raise _Closed(f"a frame of {length} bytes")
        if len(buffer) < at + length:
            return False
        payload = bytes(buffer[at : at + length])
        del buffer[: at + length]
        if mask:
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
                length, "little"
            )
        final = first & 0x80
        if opcode in (_TEXT, _CONTINUATION):
            self._fragments.append(payload)
            self._fragment_bytes += length
            if self._fragment_bytes > MAX_MESSAGE_BYTES:
                raise _Closed(f"a message of over {MAX_MESSAGE_BYTES} bytes")
            if final:
                whole = b"".join(self._fragments)
                self._fragments.clear()
                self._fragment_bytes = 0
                try:
                    self._received.append(whole.decode())
                except UnicodeDecodeError as exc:
                    raise _Closed(f"a text message that is not UTF-8: {exc}") from exc
        elif opcode == _PING:
            await self._stream.send_all(_frame(_PONG, payload, os.urandom(4)))
        elif opcode == _CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            raise _Closed(f"closed by Godot ({code} {payload[2:].decode(errors='replace')})")
        elif opcode != _PONG:
            raise _Closed(f"a frame of opcode {opcode} (only text is spoken here)")
        return True

    async def aclose(self) -> None:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            try:
                await self._stream.send_all(_frame(_CLOSE, (1000).to_bytes(2, "big"), os.urandom(4)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("godot: no close frame sent (%s); closing anyway", exc)
            await self._stream.aclose()


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
            with trio.fail_after(self.reply_timeout):
                ws = await _Socket.connect(self.url)
            try:
                ids = itertools.count(1)

                async def rpc_batch(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    pending = {}
                    texts = []
                    for message in messages:
                        message["id"] = next(ids)
                        pending[message["id"]] = message
                        texts.append(json.dumps(message))
                    await ws.send(texts)
                    del texts
                    replies = []
                    # Godot silent for reply_timeout: gone (a long batch is fine). One scope
                    # for the batch, its deadline moved on at each answer.
                    with trio.CancelScope() as silent:
                        while pending:
                            silent.deadline = trio.current_time() + self.reply_timeout
                            answer = json.loads(await ws.receive())
                            for item in answer if isinstance(answer, list) else [answer]:
                                if isinstance(item, dict) and pending.pop(item.get("id"), None) is not None:
                                    replies.append(item)
                    if silent.cancelled_caught:
                        raise trio.TooSlowError(f"no answer from Godot in {self.reply_timeout:g} s")
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
                await ws.send([json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})])

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
            finally:
                await ws.aclose()
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            raise SinkUnavailable(f"godot at {self.url}: {type(exc).__name__} {exc}") from exc


class GodotLogHandler(logging.Handler):
    """Forwards Horace's log records to the Godot sink (the sinks' own log excepted).

    With ``observes_calls``, each tool call's log line reaches Godot from
    :class:`GodotCallLog` instead, and the call's record (if one is made for another
    handler) is skipped here."""

    def __init__(self, runner: SinkRunner, level: int | str = logging.INFO) -> None:
        super().__init__(level)
        self.runner = runner
        self.observes_calls = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("horace.sinks"):
            return  # never feed a sink its own complaints
        if self.observes_calls and getattr(record, OBSERVED, False):
            return  # the call's line came from GodotCallLog
        try:
            extras = {
                k: v
                for k, v in record.__dict__.items()
                if k not in _STANDARD and v is not None and not k.startswith("_")
            }
            entry = {
                "level": LEVELS.get(record.levelname, "TRACE" if record.levelno < logging.DEBUG else "INFO"),
                "message": record.getMessage(),
                "trace_id": extras.pop("correlation_id", None),
                "data": redact(_json_ready({"logger": record.name, **extras})),
            }
            self.runner.emit(entry)
        except Exception:
            self.handleError(record)


class GodotCallLog:
    """The call observer that sends each tool call's log line to Godot, as
    :class:`GodotLogHandler` would send the line's record: the same entry, made straight
    from the call (its fields are the server's own and the caller's correlation id,
    which is the trace id as given, as for any record)."""

    def __init__(self, runner: SinkRunner, logger: str = "horace.server") -> None:
        self.runner = runner
        self.logger = logger

    def call_started(self, record: CallRecord) -> None:
        return None

    def call_finished(self, record: CallRecord) -> None:
        data = call_line_data(record)
        self.runner.emit(
            {
                "level": "INFO",
                "message": CALL_LINE % (record.tool, data["outcome"], record.timing_ms),
                "trace_id": record.correlation_id,
                "data": redact({"logger": self.logger, **data}),  # (as the handler redacts)
            }
        )


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_PLAIN = (str, int, float, bool, type(None))


def _json_ready(value: Any) -> Any:
    """*value* as JSON would give it back: plain values as they are (a log record's
    fields usually are), anything else through JSON (``str()`` of what JSON cannot hold)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict and all(type(key) is str for key in value):
        return {key: _json_ready(inner) for key, inner in value.items()}
    if kind is list or kind is tuple:
        return [_json_ready(inner) for inner in value]
    return json.loads(json.dumps(value, default=str))
