"""The front door of the port: plain HTTP (health) and WebSocket upgrades (MCP).

trio-websocket answers plain HTTP with 400 before any handler runs, so the front reads
the request head with h11 first. Health checks are answered here; an upgrade that passes
the checks (path, token, Origin, connection limit) is handed to trio-websocket with the
bytes already read replayed in front of the stream.

Admission: every TCP connection holds a slot from accept to close. Until it is a
session it is *pending* (``max_pending_connections``; past it a connection gets 503
without being read); an upgrade takes a *session* slot (``max_connections``) before the
handshake is answered, in the same step as the check, so a storm of upgrades cannot all
pass the check before any is counted. Everything before the session (head, health
answer, handshake) has ``HEAD_TIMEOUT`` in all.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import h11
import trio
from trio_websocket import WebSocketConnection, wrap_server_stream

from horace.config import Settings

log = logging.getLogger("horace.server")

MCP_PATHS = (b"/", b"/mcp")
HEALTH_PATHS = (b"/health", b"/healthz")
HEAD_TIMEOUT = 10.0
MAX_HEAD_BYTES = 64 * 1024

TURN_AWAY_TIMEOUT = 1.0  # for writing the 503 to a connection past max_pending_connections
REFUSAL_LOG_INTERVAL = 10.0  # at most one line per kind of refusal in this time

Health = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


class ClientStream(trio.abc.Stream):
    """One client's TCP stream: first gives back the bytes the front already read, and
    notes when the client last sent anything (a message, a ping: any frame)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._prefix = b""
        self.last_received = trio.current_time()

    def replay(self, prefix: bytes) -> None:
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = bytes(self._prefix[:size]), self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        data = await self._stream.receive_some(max_bytes)
        self.last_received = trio.current_time()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), a listed one, or a loopback page: DNS-rebinding safe."""
    if origin is None or origin in allowed or "*" in allowed:
        return True
    host = urlsplit(origin).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


SessionRunner = Callable[[WebSocketConnection, ClientStream], Awaitable[None]]


class Ticket:
    """One connection's place in the counts: pending until it becomes a session."""

    session = False


class Admission:
    """How many connections are pending and how many are sessions, against the limits.

    Trio switches tasks only at checkpoints, so a check and the reservation right after
    it (no ``await`` between) cannot be interleaved with another connection's.
    """

    def __init__(self, max_pending: int, max_sessions: int) -> None:
        self.max_pending, self.max_sessions = max_pending, max_sessions
        self.pending = 0
        self.sessions = 0
        self.turned_away = 0  # past max_pending, since start
        self.refused = 0  # upgrades refused for want of a session slot, since start

    @contextmanager
    def connection(self) -> Iterator[Ticket | None]:
        """A ticket for a new connection (None past ``max_pending``), given back on the
        way out whatever happened, from whichever count it is in by then."""
        if self.pending >= self.max_pending:
            self.turned_away += 1
            yield None
            return
        ticket = Ticket()
        self.pending += 1
        try:
            yield ticket
        finally:
            if ticket.session:
                self.sessions -= 1
            else:
                self.pending -= 1

    def take_session(self, ticket: Ticket) -> bool:
        """Move *ticket* from pending to a session slot; False when none is free."""
        if self.sessions >= self.max_sessions:
            self.refused += 1
            return False
        self.pending -= 1
        self.sessions += 1
        ticket.session = True
        return True


class ThrottledLog:
    """A warning logged at most once per *interval* with how many were held back: a
    connect storm must not turn into a log storm (each line also goes to the sinks)."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.interval = interval
        self.last = -math.inf
        self.held_back = 0

    def warning(self, message: str, *args: Any, **extra: Any) -> None:
        now = trio.current_time()
        if now - self.last < self.interval:
            self.held_back += 1
            return
        if self.held_back:
            message += f" ({self.held_back} more like it in the last {now - self.last:.0f} s)"
        log.warning(message, *args, extra=extra)
        self.last, self.held_back = now, 0


class Front:
    def __init__(self, settings: Settings, health: Health, run_session: SessionRunner) -> None:
        self.settings = settings
        self.health = health
        self.run_session = run_session
        self.admission = Admission(settings.max_pending_connections, settings.max_connections)
        self._refusal_logs: dict[str, ThrottledLog] = {}  # by kind of refusal

    async def handle(self, stream: trio.abc.Stream) -> None:
        try:
            with self.admission.connection() as ticket:
                if ticket is None:
                    await self._turn_away(stream)
                else:
                    await self._handle(ClientStream(stream), ticket)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("connection dropped: %s", exc)
        except Exception:
            # A bug met by one connection ends that connection, never the whole server
            # (uncaught, it would cancel every other session through the handler nursery).
            log.exception("connection failed")
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()

    async def _turn_away(self, stream: trio.abc.Stream) -> None:
        """503 without reading the request: reading would hold the slot we lack. (A client
        whose request had arrived may see a reset instead, as the socket closes unread.)"""
        limit = self.settings.max_pending_connections
        body = json.dumps({"error": f"too many connections being opened (limit {limit})"}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
        )
        self._refusal_logs.setdefault("turned away", ThrottledLog()).warning(
            "connection turned away: %d opening already", self.admission.pending
        )
        with trio.move_on_after(TURN_AWAY_TIMEOUT):
            await stream.send_all(head.encode() + body)

    async def _handle(self, stream: ClientStream, ticket: Ticket) -> None:
        async with trio.open_nursery() as websocket_tasks:  # trio-websocket's reader lives here
            ws: WebSocketConnection | None = None
            with trio.move_on_after(HEAD_TIMEOUT) as opening:
                ws = await self._open(stream, ticket, websocket_tasks)
            if opening.cancelled_caught:
                log.debug("connection closed: no request and handshake within %.0f s", HEAD_TIMEOUT)
            try:
                if ws is not None:
                    await self.run_session(ws, stream)
            finally:
                websocket_tasks.cancel_scope.cancel()

    async def _open(
        self, stream: ClientStream, ticket: Ticket, websocket_tasks: trio.Nursery
    ) -> WebSocketConnection | None:
        """Read the request head; answer plain HTTP and refusals here, or complete the
        WebSocket handshake and return the connection."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        raw = bytearray()
        event: Any = h11.NEED_DATA
        while event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            raw += data
            conn.receive_data(bytes(data))
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 leaves our side able to answer after the peer's error.
                await self._respond(stream, conn, exc.error_status_hint, {"error": str(exc)})
                return None
            if not data:
                return None
        if not isinstance(event, h11.Request):
            return None
        headers = {name.lower(): value for name, value in event.headers}
        path = event.target.split(b"?", 1)[0]
        upgrade = headers.get(b"upgrade", b"").lower() == b"websocket"
        if path in HEALTH_PATHS and event.method in (b"GET", b"HEAD") and not upgrade:
            status, body = await self.health()
            if self.settings.auth_token and not self._authorized(headers):
                body = {"status": body["status"]}  # liveness only: nothing about the setup
            await self._respond(stream, conn, status, body, head_only=event.method == b"HEAD")
            return None
        if path not in MCP_PATHS:
            await self._respond(stream, conn, 404, {"error": "not found: MCP is served at / and /mcp"})
            return None
        if not upgrade:
            await self._respond(
                stream,
                conn,
                426,
                {"error": "this endpoint speaks MCP over WebSocket"},
                extra=[(b"upgrade", b"websocket")],
            )
            return None
        refusal = self._refusal(headers)
        if refusal is None and not self.admission.take_session(ticket):  # no checkpoint in between
            refusal = (
                503,
                f"too many connections (limit {self.settings.max_connections})",
                [(b"retry-after", b"1")],
            )
        if refusal is not None:
            status, message, extra = refusal
            self._refusal_logs.setdefault(f"upgrade {status}", ThrottledLog()).warning(
                "upgrade refused: %s", message, status=status
            )
            await self._respond(stream, conn, status, {"error": message}, extra=extra)
            return None
        stream.replay(bytes(raw))
        request = await wrap_server_stream(
            websocket_tasks,
            stream,
            # Oversize messages up to 4x the limit are read and answered with a JSON-RPC
            # error; beyond that the WebSocket closes with 1009 (message too big).
            max_message_size=self.settings.max_message_bytes * 4,
        )
        subprotocol = "mcp" if "mcp" in request.proposed_subprotocols else None
        return await request.accept(subprotocol=subprotocol)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        token = self.settings.auth_token
        given = headers.get(b"authorization", b"")
        return not token or hmac.compare_digest(given, b"Bearer " + token.encode())

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        if not self._authorized(headers):
            return (
                401,
                "a valid bearer token is required",
                [(b"www-authenticate", b'Bearer realm="horace"')],
            )
        origin = headers.get(b"origin")
        if not origin_allowed(origin.decode("latin-1") if origin else None, self.settings.allowed_origins):
            return 403, f"origin {origin!r} is not allowed", []
        return None

    async def _respond(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        status: int,
        body: dict[str, Any],
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
        head_only: bool = False,
    ) -> None:
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"connection", b"close"),
            *(extra or []),
        ]
        reason = HTTPStatus(status).phrase.encode()
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))
        if not head_only:
            await stream.send_all(conn.send(h11.Data(data=data)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
