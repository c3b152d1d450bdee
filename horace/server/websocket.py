"""MCP over one WebSocket: one message per text frame, both ways.

The reader hands each frame to the session in a task of its own, so calls on one
connection run concurrently; replies and progress go back on the same socket. A client
that goes away cancels its calls; a draining server stops reading but lets the calls
finish. Two timeouts keep a connection from holding its slot for nothing:

- ``idle_timeout``: nothing from the client (any frame counts, pings included) and no call
  running for that long closes the session (1001). A client that wants to stay connected
  while idle pings, or calls.

Every ``HEARTBEAT_SECONDS`` the server sends an unsolicited pong (RFC 6455 5.5.3: a
one-way heartbeat, answered by nothing): a proxy in front that closes a connection
silent for a minute (nginx's ``proxy_read_timeout``) would otherwise cut a long call.
- ``send_timeout``: a reply the client does not take in that time drops the connection
  (a blocked send would hold the session, and everything queued behind it, for as long
  as the client cares to, and half a frame is left on the wire anyway).

trio-websocket holds a message whole before handing it over; the stream under it
(:class:`horace.server.wsintake.MessageIntake`) bounds what messages still coming hold,
and hands the server's large-request slot a large message came in with to its answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from horace.server import jsonrpc
from horace.server.mcp import McpSession

log = logging.getLogger("horace.server")

IDLE_CLOSE_CODE = 1001  # going away: a client may simply reconnect
HEARTBEAT_SECONDS = 15.0  # as often as the keep-alives of Streamable HTTP's event streams
BINARY_FRAME_REFUSED = jsonrpc.error_text(
    None, jsonrpc.RpcError(jsonrpc.INVALID_REQUEST, "binary frames are not JSON-RPC")
)


class Peer(Protocol):
    """The connection under the WebSocket, as the session needs it."""

    @property
    def last_received(self) -> float:
        """``trio.current_time()`` when the client last sent anything (any frame)."""
        ...

    async def aclose(self) -> None:
        """Drop the connection: the way out of a send the client does not take."""
        ...

    def take_slot(self) -> Callable[[], None] | None:
        """For the message just handed over: what lets go of the large-request slot it
        came in with (its answer calls it), or None."""
        ...


class WebSocketSession:
    def __init__(self, ws: WebSocketConnection, peer: Peer, session: McpSession) -> None:
        self.ws = ws
        self.peer = peer
        self.session = session
        self.settings = session.settings
        self._send_lock = trio.Lock()
        self._reading = trio.CancelScope()
        self.gone = False

    @property
    def conversation_id(self) -> str:
        return self.session.conversation_id

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            if not self.gone:
                # Also when the server cancels calls still running after its shutdown's
                # grace: the client is told the server is going away (1001), not left to
                # guess at a dropped connection. Shielded, and bounded: a client that
                # does not read does not hold the stop.
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await self.ws.aclose(code=1001, reason="server shutting down")

    async def _serve(self) -> None:
        async with trio.open_nursery() as watching:
            watching.start_soon(self._close_when_idle)
            watching.start_soon(self._beat)
            try:
                async with trio.open_nursery() as calls:
                    with self._reading:
                        while True:
                            try:
                                message = await self.ws.get_message()
                            except ConnectionClosed:
                                self.gone = True
                                break
                            slot = self.peer.take_slot()  # (every message: they pair in order)
                            if isinstance(message, bytes):
                                if slot is not None:
                                    slot()
                                calls.start_soon(self.send, BINARY_FRAME_REFUSED)
                                continue
                            if not message.isascii():
                                # Held as UTF-8 until its turn: a str with one character past
                                # ASCII takes up to four bytes for every character.
                                message = message.encode()
                            # Counted as it is read:
                            admitted = self.session.admit(jsonrpc.message_size(message))
                            await calls.start(self.session.answer, message, admitted, self.send, slot)
                            del message
                    if self.gone:
                        calls.cancel_scope.cancel()  # nobody is left to answer: stop the work
            finally:
                watching.cancel_scope.cancel()

    def drain(self) -> None:
        """Stop reading new messages; calls under way finish (the server bounds the wait)."""
        self._reading.cancel()

    async def send(self, text: str, *, final: bool = False) -> None:
        """Send one message; a client that does not take it in ``send_timeout`` loses the
        connection (the reader then sees it closed and cancels the calls still running)."""
        with self.session.sending(len(text)):
            async with self._send_lock:
                if self.gone:
                    return
                with trio.move_on_after(self.settings.send_timeout) as sending:
                    try:
                        await self.ws.send_message(text)
                    except ConnectionClosed:
                        self.gone = True
                if sending.cancelled_caught:
                    self.gone = True
                    log.warning(
                        "client took no reply for %.0f s: dropping the connection",
                        self.settings.send_timeout,
                        extra={"conversation_id": self.conversation_id},
                    )
                    await self.peer.aclose()

    async def _beat(self) -> None:
        while True:
            await trio.sleep(HEARTBEAT_SECONDS)
            async with self._send_lock:
                if self.gone:
                    return
                with trio.move_on_after(self.settings.send_timeout):  # (a client stuck: send() says so)
                    try:
                        await self.ws.pong()
                    except ConnectionClosed:
                        return

    async def _close_when_idle(self) -> None:
        timeout = self.settings.idle_timeout
        while True:
            quiet_since = max(self.peer.last_received, self.session.quiet_since)
            if self.session.inflight:  # busy: look again once the calls could have finished
                await trio.sleep(timeout)
            elif trio.current_time() < quiet_since + timeout:
                await trio.sleep_until(quiet_since + timeout)
            else:
                break
        log.info("session idle for %.0f s: closing", timeout, extra={"conversation_id": self.conversation_id})
        with trio.move_on_after(2):  # the client may not answer the close
            await self.ws.aclose(code=IDLE_CLOSE_CODE, reason=f"idle for {timeout:g} s")
        # Closed by us, the reader's next get_message() raises ConnectionClosed: it ends.
