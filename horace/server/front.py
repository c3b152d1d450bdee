"""The front door of the port: plain HTTP (health) and WebSocket upgrades (MCP).

trio-websocket answers plain HTTP with 400 before any handler runs, so the front reads
the request head with h11 first. Health checks are answered here; an upgrade that passes
the checks (path, token, Origin, connection limit) is handed to trio-websocket with the
bytes already read replayed in front of the stream.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
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

Health = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]
SessionRunner = Callable[[WebSocketConnection], Awaitable[None]]


class _Replayed(trio.abc.Stream):
    """A stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream, self._prefix = stream, prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
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


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), a listed one, or a loopback page: DNS-rebinding safe."""
    if origin is None or origin in allowed or "*" in allowed:
        return True
    host = urlsplit(origin).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


class Front:
    def __init__(
        self, settings: Settings, health: Health, run_session: SessionRunner, has_room: Callable[[], bool]
    ) -> None:
        self.settings = settings
        self.health = health
        self.run_session = run_session
        self.has_room = has_room

    async def handle(self, stream: trio.abc.Stream) -> None:
        try:
            await self._handle(stream)
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

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        raw = bytearray()
        event: Any = h11.NEED_DATA
        with trio.move_on_after(HEAD_TIMEOUT):
            while event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                raw += data
                conn.receive_data(bytes(data))
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    # h11 leaves our side able to answer after the peer's error.
                    await self._respond(stream, conn, exc.error_status_hint, {"error": str(exc)})
                    return
                if not data:
                    return
        if not isinstance(event, h11.Request):
            return
        headers = {name.lower(): value for name, value in event.headers}
        path = event.target.split(b"?", 1)[0]
        upgrade = headers.get(b"upgrade", b"").lower() == b"websocket"
        if path in HEALTH_PATHS and event.method in (b"GET", b"HEAD") and not upgrade:
            status, body = await self.health()
            await self._respond(stream, conn, status, body, head_only=event.method == b"HEAD")
            return
        if path not in MCP_PATHS:
            await self._respond(stream, conn, 404, {"error": "not found: MCP is served at / and /mcp"})
            return
        if not upgrade:
            await self._respond(
                stream,
                conn,
                426,
                {"error": "this endpoint speaks MCP over WebSocket"},
                extra=[(b"upgrade", b"websocket")],
            )
            return
        refusal = self._refusal(headers)
        if refusal is not None:
            status, message, extra = refusal
            log.warning("upgrade refused: %s", message, extra={"status": status})
            await self._respond(stream, conn, status, {"error": message}, extra=extra)
            return
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(
                nursery,
                _Replayed(stream, bytes(raw)),
                # Oversize messages up to 4x the limit are read and answered with a JSON-RPC
                # error; beyond that the WebSocket closes with 1009 (message too big).
                max_message_size=self.settings.max_message_bytes * 4,
            )
            subprotocol = "mcp" if "mcp" in request.proposed_subprotocols else None
            ws = await request.accept(subprotocol=subprotocol)
            try:
                await self.run_session(ws)
            finally:
                nursery.cancel_scope.cancel()

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        token = self.settings.auth_token
        if token:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + token.encode()):
                return (
                    401,
                    "a valid bearer token is required",
                    [(b"www-authenticate", b'Bearer realm="horace"')],
                )
        origin = headers.get(b"origin")
        if not origin_allowed(origin.decode("latin-1") if origin else None, self.settings.allowed_origins):
            return 403, f"origin {origin!r} is not allowed", []
        if not self.has_room():
            return (
                503,
                f"too many connections (limit {self.settings.max_connections})",
                [(b"retry-after", b"1")],
            )
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
