"""The front door of the port: one task per TCP connection reads its requests with h11
(keep-alive) and sends each where it goes: health checks are answered here, a WebSocket
upgrade on / or /mcp is handed to trio-websocket (with the bytes already read replayed
in front of the stream), any other request on / or /mcp goes to the Streamable HTTP
transport (``horace.server.http``).

trio-websocket answers plain HTTP with 400 before any handler runs: that is why the
front reads the request head itself.

Admission (``horace.server.admission``): every connection holds a ticket from accept to
close, past ``max_pending_connections`` it gets 503 unread. An upgrade takes a session
slot (``max_connections``) before the handshake is answered, in the same step as the
check, so a storm of upgrades cannot all pass the check before any is counted. Waiting
for a request (head, and for an upgrade the handshake) has ``HEAD_TIMEOUT``; so has an
HTTP request's body, from its head.
"""

from __future__ import annotations

import base64
import json
import logging
import select
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from horace.config import Settings
from horace.server.admission import (
    Admission,
    Refusal,
    RefusalLogs,
    Ticket,
    access_refusal,
    authorized,
    host_refusal,
    hosts_served,
    origin_allowed,
    who,
)
from horace.server.http import SessionHost, StreamableHttp
from horace.server.httpio import HEAD_TIMEOUT, LAST_LOOK, MAX_HEAD_BYTES, ClientGone, HttpConnection, Request
from horace.server.jsonrpc import INVALID_REQUEST, SERVER_BUSY, RpcError, error
from horace.server.wsintake import MessageIntake

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD_BYTES", "ClientStream", "Front", "origin_allowed"]

log = logging.getLogger("horace.server")

MCP_PATHS = (b"/", b"/mcp")
HEALTH_PATHS = (b"/health", b"/healthz")

TURN_AWAY_TIMEOUT = 1.0  # for writing the 503 to a connection past max_pending_connections
# Closing a socket with bytes unread makes the kernel reset the connection, and the client
# may lose the answer just written (a 431 to a head that goes on): what comes is read and
# thrown away first, for so long and so much at most.
LINGER_SECONDS = 0.5
LINGER_BYTES = 1024 * 1024

Health = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


class ClientStream(trio.abc.Stream):
    """One client's TCP stream, which first gives back the bytes the front already read."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._prefix = b""
        self._held = b""
        self._handed_over = trio.Event()

    @property
    def inner(self) -> trio.abc.Stream:
        """The TCP stream itself (its socket says who the client is)."""
        return self._stream

    def replay(self, prefix: bytes, held: bytes = b"") -> None:
        """Give back *prefix*, then *held* once :meth:`hand_over` is called. (wsproto's
        server drops what came after the upgrade's head before it accepted: a client's
        first frame sent with the head, say. Held back, it comes after the accept.)"""
        self._prefix, self._held = prefix, held
        if not held:
            self._handed_over.set()

    def hand_over(self) -> None:
        self._handed_over.set()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._prefix and self._held:
            await self._handed_over.wait()
            self._prefix, self._held = self._held, b""
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = bytes(self._prefix[:size]), self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


SessionRunner = Callable[[WebSocketConnection, MessageIntake], Awaitable[None]]


class Front:
    def __init__(
        self, settings: Settings, health: Health, run_session: SessionRunner, host: SessionHost
    ) -> None:
        self.settings = settings
        self.health = health
        self.run_session = run_session
        self.admission = Admission(settings.max_pending_connections, settings.max_connections)
        self.refusals = RefusalLogs()
        self.hosts = hosts_served(settings.host, settings.allowed_hosts)
        self.http = StreamableHttp(settings, self.admission, self.refusals, host)
        self.large_requests = host.large_requests

    async def handle(self, stream: trio.abc.Stream) -> None:
        try:
            async with self.admission.connection() as ticket:
                if ticket is None:
                    await self._turn_away(stream)
                else:
                    await self._handle(ClientStream(stream), ticket)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, ClientGone) as exc:
            log.debug("connection dropped: %s", exc)
        except Exception:
            # A bug met by one connection ends that connection, never the whole server
            # (uncaught, it would cancel every other session through the handler nursery).
            log.exception("connection failed")
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await _linger(stream)
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
        self.refusals.warning(
            "turned away", "connection turned away: %d opening already", self.admission.pending
        )
        with trio.move_on_after(TURN_AWAY_TIMEOUT):
            await stream.send_all(head.encode() + body)

    async def _handle(self, stream: ClientStream, ticket: Ticket) -> None:
        """The connection's requests, one after another, until one of them cannot be
        followed by another (the client asked to close, a body was left unread, an
        upgrade) or none comes within ``HEAD_TIMEOUT``."""
        conn = HttpConnection(stream, self.settings.send_timeout, lambda: self.admission.crowded)
        while True:
            deadline = trio.current_time() + HEAD_TIMEOUT
            with self.admission.awaiting_request(ticket, deadline, partial(_unread, stream)) as waiting:
                request = await conn.next_request()
            if waiting.cancelled_caught and ticket.state != "evicted":
                with trio.move_on_after(LAST_LOOK) as waiting:
                    request = await conn.next_request()
            if waiting.cancelled_caught:
                if ticket.state == "evicted":
                    log.debug("connection closed: its place went to a newer one, no request yet")
                else:
                    log.debug("connection closed: no request within %.0f s", HEAD_TIMEOUT)
                return
            if request is None:
                return
            refusal = host_refusal(request.headers, self.hosts)
            if refusal is not None:  # whatever the path: /health says much of the setup
                self.refusals.warning(
                    "host",
                    "request refused: %s",
                    refusal.message,
                    status=refusal.status,
                    **who(stream, request.headers),
                )
                conn.finish_empty_body()
                said: Any = {"error": refusal.message}  # as elsewhere outside MCP's paths
                if request.path in MCP_PATHS:
                    said = error(None, RpcError(INVALID_REQUEST, refusal.message))
                await conn.respond_json(refusal.status, said, close=True)
                return
            if request.path in MCP_PATHS and _is_upgrade(request):
                await self._upgrade(conn, stream, request, ticket, deadline)
                return
            if request.path in HEALTH_PATHS and request.method in (b"GET", b"HEAD"):
                await self._health(conn, request)
            elif request.path in HEALTH_PATHS:
                conn.finish_empty_body()
                await conn.respond_json(
                    405, {"error": "/health answers GET and HEAD"}, headers=((b"allow", b"GET, HEAD"),)
                )
            elif request.path in MCP_PATHS:
                await self.http.handle(conn, request, ticket)
            else:
                conn.finish_empty_body()
                where = "not found: MCP is served at / and /mcp, health at /health"
                await conn.respond_json(404, {"error": where})
            if not conn.next_cycle():
                return

    async def _health(self, conn: HttpConnection, request: Request) -> None:
        conn.finish_empty_body()
        status, body = await self.health()
        if self.settings.auth_token and not authorized(request.headers, self.settings.auth_token):
            body = {"status": body["status"]}  # liveness only: nothing about the setup
        await conn.respond_json(status, body)

    async def _upgrade(
        self, conn: HttpConnection, stream: ClientStream, request: Request, ticket: Ticket, deadline: float
    ) -> None:
        settings = self.settings
        refusal = _handshake_refusal(request) or access_refusal(
            request.headers, settings.auth_token, settings.allowed_origins, websocket=True
        )
        if refusal is None and self.admission.full:
            self.http.reclaim()
        if refusal is None and not self.admission.take_session(ticket):  # no checkpoint in between
            refusal = Refusal(
                503, f"too many connections (limit {settings.max_connections})", ((b"retry-after", b"1"),)
            )
        if refusal is not None:
            self.refusals.warning(
                f"upgrade {refusal.status}",
                "upgrade refused: %s",
                refusal.message,
                status=refusal.status,
                **who(stream, request.headers),
            )
            # (As each refusal at an MCP path is: a JSON-RPC error, a busy server's with its own code.)
            code = SERVER_BUSY if refusal.status == 503 else INVALID_REQUEST
            said = error(None, RpcError(code, refusal.message))
            await conn.respond_json(refusal.status, said, headers=refusal.headers, close=True)
            return
        after_head = len(conn.h11.trailing_data[0])
        head = len(conn.received) - after_head
        stream.replay(bytes(conn.received[:head]), bytes(conn.received[head:]))
        intake = MessageIntake(stream, self.large_requests, websocket_message_cap(settings.max_message_bytes))
        try:
            async with trio.open_nursery() as websocket_tasks:  # trio-websocket's reader lives here
                ws: WebSocketConnection | None = None
                with trio.move_on_at(deadline) as opening:
                    handshake = await wrap_server_stream(
                        websocket_tasks,
                        intake,
                        max_message_size=websocket_message_cap(settings.max_message_bytes),
                    )
                    # Never the token's subprotocol: what is answered is seen by proxies and logs.
                    subprotocol = "mcp" if "mcp" in handshake.proposed_subprotocols else None
                    try:
                        ws = intake.websocket = await handshake.accept(subprotocol=subprotocol)
                    except ConnectionClosed as exc:  # the client went during the handshake (1006)
                        log.debug("connection dropped during the WebSocket handshake: %s", exc)
                    stream.hand_over()
                if opening.cancelled_caught:
                    log.debug("connection closed: no request and handshake within %.0f s", HEAD_TIMEOUT)
                try:
                    if ws is not None:
                        await self.run_session(ws, intake)
                finally:
                    websocket_tasks.cancel_scope.cancel()
        finally:  # (after the reader has ended: it could take the slot as it is cancelled)
            intake.let_go()


def websocket_message_cap(limit: int) -> int:
    """The most characters of one WebSocket message read (and held: trio-websocket joins a
    message's frames before handing it over): a message a little over *limit* bytes is
    read and answered with a JSON-RPC error; past a sixteenth over, the WebSocket closes
    with 1009 (message too big) as it comes, so that a refused message costs no more
    memory than one admitted."""
    return limit + limit // 16


def _handshake_refusal(request: Request) -> Refusal | None:
    """What RFC 6455 (4.2.1) refuses in an upgrade's head, said as every refusal is (else
    wsproto answers a bare 400 or 426)."""
    if request.method != b"GET":
        method = request.method.decode("latin-1")
        return Refusal(400, f"a WebSocket handshake is a GET, not a {method} (RFC 6455 4.1)")
    version = request.headers.get(b"sec-websocket-version")
    if version != b"13":
        return Refusal(
            426,
            f"WebSocket version {version.decode('latin-1') if version else '(none)'}: "
            "this server speaks version 13",
            ((b"sec-websocket-version", b"13"),),
        )
    key = request.headers.get(b"sec-websocket-key", b"")
    try:
        whole = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        whole = False
    if not whole:
        return Refusal(400, "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 4.1)")
    return None


def _unread(stream: ClientStream) -> bool:
    """Whether bytes the client sent wait on the connection, unread (or its end: either is
    soon seen to): it is no silent one."""
    sock = getattr(stream.inner, "socket", None)
    if sock is None:
        return False
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    return bool(poll.poll(0))


def _is_upgrade(request: Request) -> bool:
    return request.headers.get(b"upgrade", b"").lower() == b"websocket"


async def _linger(stream: trio.abc.Stream) -> None:
    """Our side shut, read what the client still sends (see LINGER_SECONDS)."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            read = 0
            while read < LINGER_BYTES and (data := await stream.receive_some(65536)):
                read += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # gone already: nothing to wait for
