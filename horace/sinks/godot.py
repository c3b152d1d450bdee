"""The Godot sink: Horace's log, as ``logger_log`` tool calls over one WebSocket.

Calls of a batch are pipelined: their frames are written together, with one send, then
the answers are read, several a read (see :data:`ANSWER_GATHER`). The WebSocket is spoken
with the Sans-I/O client of ``websockets`` straight on the TCP stream, without
trio-websocket's reader task and per-message send: a log entry costs its framing and
nothing more (websockets frames and parses a message in a fifth to half the time wsproto
takes: see ``scripts/bench_sinks``). Secrets are redacted at any depth before an entry is
queued, so they never reach the spool either.
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from horace.config import websocket_url_problem
from horace.logs import CALL_LINE, OBSERVED, call_line_data
from horace.model import CallRecord
from horace.redact import redact, redact_url
from horace.sinks.supervisor import (
    Deliver,
    DestinationDown,
    Emitter,
    SinkRunner,
    SinkUnavailable,
    log,
    size_of,
)

LEVELS = {"CRITICAL": "ERROR", "ERROR": "ERROR", "WARNING": "WARN", "INFO": "INFO", "DEBUG": "DEBUG"}
TRACE = 5  # below DEBUG
CALL_LINE_BYTES = 256  # a call line's fields but its message, trace id and file ids
RECEIVE_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # an answer longer than this is not Godot's
# Godot answers a batch's calls one by one. With many answers still to come, the sink
# waits this long before each read for more to arrive, so that a read takes many: at
# 2,000 entries a second, about 900 reads instead of 15,000 (and as many wakeups of the
# sink's process). A few answers are read at once: a small batch, such as the last one
# before a shutdown, is not held on the wire.
ANSWER_GATHER = 0.002
GATHER_FROM = 8  # answers outstanding
IDLE_READ = 0.05  # seconds an idle connection is read, every IDLE_EVERY (see answer_pings)
# The WebSocket library's own log: under the sinks' logger, which never feeds a sink.
_PROTOCOL_LOG = logging.getLogger("horace.sinks.godot.websocket")


class _Closed(Exception):
    """The WebSocket is closed (by Godot, or the connection dropped), or Godot broke
    the protocol."""


# What says Godot is gone (or was never there): the sink retries later.
_GONE = (_Closed, OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


class _Socket:
    """A WebSocket client as the sink needs it: text messages out, several with one send,
    and text messages in; pings answered; no task of its own."""

    def __init__(self, stream: trio.abc.Stream, uri: WebSocketURI) -> None:
        self._stream = stream
        self._ws = ClientProtocol(uri, max_size=MAX_MESSAGE_BYTES, logger=_PROTOCOL_LOG)
        self._received: deque[str] = deque()
        self._fragments: list[bytes | bytearray | memoryview] = []

    @classmethod
    async def connect(cls, url: str) -> _Socket:
        problem = websocket_url_problem(url)
        if problem is not None:
            raise SinkUnavailable(f"{redact_url(url)}: {problem}")
        uri = _uri(url)
        stream: trio.abc.Stream = await trio.open_tcp_stream(uri.host, uri.port)
        try:
            if uri.secure:
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=uri.host)
            return await cls.over(stream, uri)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    @classmethod
    async def over(cls, stream: trio.abc.Stream, uri: WebSocketURI) -> _Socket:
        """The WebSocket of *uri* opened on *stream* (the upgrade asked and accepted)."""
        socket = cls(stream, uri)
        socket._ws.send_request(socket._ws.connect())
        await socket._flush()
        while socket._ws.state is State.CONNECTING:
            await socket._read()
        return socket

    async def _flush(self) -> None:
        """Send what the protocol has to send (frames, a pong, a close)."""
        data = b"".join(self._ws.data_to_send())
        if data:
            await self._stream.send_all(data)

    async def send(self, texts: list[str]) -> None:
        try:
            for text in texts:
                self._ws.send_text(text.encode())
        except InvalidState as exc:  # (closed by Godot meanwhile)
            raise _Closed(str(exc)) from exc
        await self._flush()

    async def receive_all(self, pause: float = 0.0) -> list[str]:
        """The messages received so far, at least one. With none held yet, waits *pause*
        seconds before reading, so that several come with one read."""
        if pause and not self._received:
            await trio.sleep(pause)
        while not self._received:
            await self._read()
        messages = list(self._received)
        self._received.clear()
        return messages

    async def answer_pings(self) -> None:
        """Read what Godot sent while no batch was out, for IDLE_READ seconds: its pings
        are answered (a server that pings, as websockets' does every 20 s, closes a client
        that leaves them unanswered), and a close is seen now, not by the next batch. (A
        read cut short loses nothing, the TLS handshake being done.)"""
        while True:
            data = None
            with trio.move_on_after(IDLE_READ):  # (the wait only: never a pong half sent)
                data = await self._stream.receive_some(RECEIVE_BYTES)
            if data is None:
                return
            await self._took(data)
            self._received.clear()  # (no call is out: nothing that came is an answer)

    async def _read(self) -> None:
        await self._took(await self._stream.receive_some(RECEIVE_BYTES))

    async def _took(self, data: bytes | bytearray) -> None:
        """What was received: its frames taken, and what the protocol answers (a pong) sent."""
        if not data:
            raise _Closed("the connection was closed")
        self._ws.receive_data(bytes(data))
        for event in self._ws.events_received():
            if isinstance(event, Frame):  # (else the answer to the upgrade: checked below)
                self._frame(event)
        refused = self._ws.handshake_exc
        if isinstance(refused, InvalidStatus):
            raise SinkUnavailable(f"the WebSocket upgrade was refused {refused.response.status_code}")
        if refused is not None:  # (an answer that is not HTTP, or not an upgrade)
            raise SinkUnavailable(f"the WebSocket upgrade failed: {refused}")
        if self._ws.parser_exc is not None:  # (a message too long, a frame malformed)
            raise _Closed(f"Godot broke the WebSocket protocol: {self._ws.parser_exc}")
        await self._flush()  # (a pong)

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or (frame.opcode is Opcode.CONT and self._fragments):
            self._fragments.append(frame.data)
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments.clear()
                try:
                    self._received.append(data.decode())
                except UnicodeDecodeError as exc:
                    raise _Closed(f"Godot broke the WebSocket protocol: a text message {exc}") from exc
        elif frame.opcode is Opcode.CLOSE:
            close = self._ws.close_rcvd
            said = f"{close.code} {close.reason}".rstrip() if close is not None else "no status"
            raise _Closed(f"closed by Godot ({said})")
        elif frame.opcode is Opcode.BINARY or frame.opcode is Opcode.CONT:
            raise _Closed("a binary message (only text is spoken here)")
        # A ping is answered by the protocol (sent at the next flush); a pong needs nothing.

    async def aclose(self) -> None:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            try:
                self._ws.send_close(1000)
                await self._flush()
            except (InvalidState, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("godot: no close frame sent (%s); closing anyway", exc)
            await trio.aclose_forcefully(self._stream)


def _uri(url: str) -> WebSocketURI:
    """*url* as the protocol takes it, without a fragment (meaningless here) and without
    credentials (Horace sends none: a ``user@`` in GODOT_URL is ignored, not a failure)."""
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))
    try:
        return parse_uri(bare)
    except InvalidURI as exc:
        raise SinkUnavailable(f"{redact_url(url)}: {exc}") from None


class GodotTransport:
    name = spool_name = "godot"

    def __init__(self, url: str, tool: str = "logger_log", reply_timeout: float = 10.0) -> None:
        self.url = url
        self.refusal: str | None = None
        self.tool = tool
        self.reply_timeout = reply_timeout

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Deliver]:
        try:
            with trio.move_on_after(self.reply_timeout) as connecting:
                ws = await _Socket.connect(self.url)
            if connecting.cancelled_caught:
                raise trio.TooSlowError(f"no WebSocket handshake from Godot in {self.reply_timeout:g} s")
            try:
                ids = itertools.count(1)

                async def rpc_batch(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    pending: dict[int, dict[str, Any]] = {}
                    texts = []
                    for message in messages:
                        message["id"] = next(ids)
                        pending[message["id"]] = message
                        texts.append(json.dumps(message))
                    await ws.send(texts)
                    del texts
                    replies = []
                    # Godot silent for reply_timeout: gone (a long batch is fine). One scope
                    # for the batch, its deadline moved on at each read.
                    with trio.CancelScope() as silent:
                        while pending:
                            silent.deadline = trio.current_time() + self.reply_timeout
                            pause = ANSWER_GATHER if len(pending) >= GATHER_FROM else 0.0
                            for text in await ws.receive_all(pause):
                                replies += _answers(text, pending)
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

                async def deliver(batch: list[dict[str, Any]]) -> int:
                    if not batch:
                        await ws.answer_pings()
                        return 0
                    malformed = [entry for entry in batch if not is_log_entry(entry)]
                    if malformed:  # (a spool line edited by hand, or of another release)
                        self.refusal = f"no log entry: {json.dumps(malformed[0], default=str):.200}"
                        log.error(
                            "godot: %d entries that are no log entry are refused; the first: %.200s",
                            len(malformed),
                            json.dumps(malformed[0], default=str),
                        )
                    calls = [
                        {
                            "jsonrpc": "2.0",
                            "method": "tools/call",
                            "params": {"name": self.tool, "arguments": {"component": "horace", **entry}},
                        }
                        for entry in batch
                        if not malformed or is_log_entry(entry)
                    ]
                    refusals = [
                        reply.get("error") or reply.get("result")
                        for reply in (await rpc_batch(calls) if calls else ())
                        if "error" in reply or reply.get("result", {}).get("isError")
                    ]
                    if refusals:  # retrying would not help: counted, and said once a batch
                        self.refusal = f"{self.tool} said {json.dumps(refusals[0], default=str):.300}"
                        log.warning(
                            "godot refused %d of %d log entries (%s); the first said: %.300s",
                            len(refusals),
                            len(calls),
                            self.tool,
                            json.dumps(refusals[0], default=str),
                        )
                    return len(malformed) + len(refusals)

                yield deliver
            finally:
                await ws.aclose()
        except trio.TooSlowError as exc:
            # Silent: Godot hung, not the entry it was given (never dropped as refused).
            raise DestinationDown(f"godot at {self.url}: {type(exc).__name__} {exc}") from exc
        except (
            _Closed,
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as exc:
            raise SinkUnavailable(f"godot at {self.url}: {type(exc).__name__} {exc}") from exc


_ENTRY_KEYS = frozenset(("level", "message", "trace_id", "data"))
_LEVEL_NAMES = frozenset((*LEVELS.values(), "TRACE"))


def is_log_entry(entry: Any) -> bool:
    """Whether *entry* is a log entry as Horace makes one: what ``logger_log`` is called
    with (besides the component). One replayed from a spool may be anything."""
    return (
        type(entry) is dict
        and entry.keys() == _ENTRY_KEYS
        and type(entry["level"]) is str
        and entry["level"] in _LEVEL_NAMES
        and type(entry["message"]) is str
        and (entry["trace_id"] is None or type(entry["trace_id"]) is str)
        and type(entry["data"]) is dict
    )


def _answers(text: str, pending: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers in the message *text* to calls still *pending*, taken off it (anything
    else Godot sends is not an answer of ours, and is ignored)."""
    answer = json.loads(text)
    items = answer if isinstance(answer, list) else [answer]
    ours = []
    for item in items:
        ident = item.get("id") if isinstance(item, dict) else None
        if type(ident) is int and pending.pop(ident, None) is not None:
            ours.append(item)
    return ours


class GodotLogHandler(logging.Handler):
    """Forwards Horace's log records to the Godot sink (the sinks' own log excepted).

    With ``observes_calls``, each tool call's log line reaches Godot from
    :class:`GodotCallLog` instead, and the call's record (if one is made for another
    handler) is skipped here."""

    def __init__(self, runner: Emitter, level: int | str = logging.INFO) -> None:
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
            trace_id = extras.pop("correlation_id", None)
            entry = {
                "level": LEVELS.get(record.levelname, "TRACE" if record.levelno < logging.DEBUG else "INFO"),
                "message": record.getMessage(),
                "trace_id": None if trace_id is None else str(trace_id),
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
        message = CALL_LINE % (record.tool, data["outcome"], record.timing_ms)
        self.runner.emit(
            {
                "level": "INFO",
                "message": message,
                "trace_id": record.correlation_id,
                # Not redacted, unlike a record's fields: these keys are no secret's, and
                # their values Horace's own names, ids and numbers (redact() would give
                # them back unchanged, at a third of the line's cost).
                "data": {"logger": self.logger, **data},
            },
            size_of(message, record.correlation_id, ids=len(record.file_ids), fixed=CALL_LINE_BYTES),
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
