"""The stream under one WebSocket: it follows the frames that come in (their heads only)
to bound what a message not yet whole can hold. trio-websocket joins a message's frames
before handing it over, so without this a client could make the server hold a message of
up to the size limit on every connection, for as long as it cared to send it.

- Once UNHURRIED_BYTES of a message have come, the rest must come within
  MESSAGE_TIMEOUT (as an HTTP request's body must), or the connection is dropped; what
  came while the server was stopped past the deadline is taken in one last look
  (:data:`horace.server.httpio.LAST_LOOK`), once a message.
- Past LARGE_REQUEST_BYTES, the reading waits for the server's large-request slot
  (:func:`horace.server.mcp.one_large_request_at_a_time`) and the message keeps it until
  it has been answered, as an HTTP body that large is read and answered: many clients
  sending large messages at once hold 1 MiB each and one message whole. The slot passes
  from the reading to the answer (:meth:`MessageIntake.take_slot`): were it let go when
  the message is whole, the readings queued for it would each take it before the
  answers, and every message would be held whole before the first was answered. The
  timeout starts again when the slot is taken: the wait was the server's.

Control frames (pings, pongs, close) are part of no message and count for nothing. The
payload is never unmasked or looked at: trio-websocket does that.

A connection failed for a frame wsproto cannot take (unmasked, a reserved opcode, text that
is not UTF-8) is closed with a Close frame that says why (1002, 1007: RFC 6455 7.1.7) before
its TCP connection: trio-websocket closes the TCP connection without one.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from functools import partial

import trio
from trio_websocket import WebSocketConnection
from wsproto.frame_protocol import CloseReason, FrameProtocol

from horace.server.httpio import HEAD_TIMEOUT, LAST_LOOK
from horace.server.mcp import LARGE_REQUEST_BYTES

log = logging.getLogger("horace.server")

# A message of which this much has come must be whole within MESSAGE_TIMEOUT. Less may
# take as long as the client likes (the idle timeout does not count a trickle as quiet):
# it holds little.
UNHURRIED_BYTES = 64 * 1024
MESSAGE_TIMEOUT = HEAD_TIMEOUT  # as an HTTP request's body has, from its head
_CONTROL = 0x8  # opcodes from here on are control frames (close, ping, pong)
_EXTENDED = {126: struct.Struct("!H"), 127: struct.Struct("!Q")}
_LONGEST_HEAD = 14  # 2 bytes, an 8-byte length, a 4-byte mask
_CLOSE = 0x8
CLOSE_SEND_TIMEOUT = 1.0  # for the Close frame of a failed connection: the client may read nothing


class MessageTooSlow(trio.BrokenResourceError):
    """A message not whole in time: the connection is dropped as if broken."""


class MessageTooBig(trio.BrokenResourceError):
    """A frame's head announced a message past the cap: the connection is closed (1009)."""


class _Slot:
    """One holding of the large-request slot (its borrower: a connection may hold it for
    a message being answered and wait for it for the next)."""


class MessageIntake(trio.abc.Stream):
    """*stream* (a client's connection, which starts with the upgrade request's head,
    replayed for trio-websocket to answer) as the WebSocket reads it; see the module."""

    def __init__(
        self, stream: trio.abc.Stream, large_requests: trio.CapacityLimiter | None, cap: int | None = None
    ) -> None:
        """*cap*: the most bytes of a message (trio-websocket's ``max_message_size``): a
        frame whose head says its message goes past it closes the connection with 1009 at
        once, rather than once that much has come (or the client stalls)."""
        self.stream = stream
        self.large_requests = large_requests
        self.cap = cap
        self._too_big = False
        self.last_received = trio.current_time()  # when the client last sent anything (any frame)
        self.unfinished = 0  # payload bytes of the message under way
        self._upgrade_head: bytearray | None = bytearray()  # its last bytes, until its end
        self._head = bytearray()  # of the frame whose head is coming
        self._payload_left = 0  # of the frame whose payload is coming
        self._in_message = False  # the frame coming (or last come) is part of a message...
        self._final = False  # ... and ends it
        self._deadline: float | None = None
        self._looked_again = False  # the message under way had its last look
        self._slot: _Slot | None = None  # held for the message under way
        # For each message that came whole and was not yet handed over: the slot it holds.
        self._whole: deque[_Slot | None] = deque()
        # The WebSocket, once its handshake is answered; and whether a Close frame went out.
        self.websocket: WebSocketConnection | None = None
        self._close_sent = False
        # trio-websocket's sends and the Close frames of our own, one at a time: the reader
        # sends one as it refuses a message, maybe while another task sends (the
        # handshake's answer, a reply, a ping), and the socket takes one sender at a time.
        self._sending = trio.Lock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.unfinished > LARGE_REQUEST_BYTES and self._slot is None and self.large_requests:
            slot = _Slot()
            await self.large_requests.acquire_on_behalf_of(slot)
            self._slot = slot  # (no checkpoint in between: never lost to a cancellation)
            self._deadline = trio.current_time() + MESSAGE_TIMEOUT
            self._looked_again = False
        if self._deadline is None:
            data = await self.stream.receive_some(max_bytes)
        else:
            data = await self._before_the_deadline(max_bytes)
        self._took(data)
        await self._unless_too_big()
        return data

    async def _before_the_deadline(self, max_bytes: int | None) -> bytes | bytearray:
        assert self._deadline is not None
        while True:
            with trio.move_on_at(self._deadline):
                return await self.stream.receive_some(max_bytes)
            if self._looked_again:
                break
            self._looked_again = True
            self._deadline = trio.current_time() + LAST_LOOK
        log.warning(
            "a WebSocket message not whole %g s after its first %d KiB: dropping the connection",
            MESSAGE_TIMEOUT,
            UNHURRIED_BYTES // 1024,
        )
        raise MessageTooSlow(f"a message not whole within {MESSAGE_TIMEOUT:g} s")

    async def _unless_too_big(self) -> None:
        if not self._too_big:
            return
        log.info(
            "a WebSocket frame announced a message over %d bytes: closing the connection (1009)", self.cap
        )
        await self._send_close(CloseReason.MESSAGE_TOO_BIG, f"a message is at most {self.cap} bytes")
        raise MessageTooBig(f"a message announced past {self.cap} bytes")

    async def _send_close(self, code: int, reason: str | None) -> None:
        """A Close frame of the server's own, sent past trio-websocket (the client may read
        nothing: bounded)."""
        self._close_sent = True
        frame = FrameProtocol(client=False, extensions=[]).close(code, reason)
        with trio.move_on_after(CLOSE_SEND_TIMEOUT):
            async with self._sending:
                await self.stream.send_all(frame)

    def _took(self, data: bytes | bytearray) -> None:
        self.last_received = trio.current_time()
        self._follow(memoryview(data))

    def take_slot(self) -> Callable[[], None] | None:
        """For the message trio-websocket has just handed over (messages come whole in the
        order they end): what lets go of the large-request slot it holds, for its answer
        to call once; None when it holds none."""
        slot = self._whole.popleft() if self._whole else None
        return None if slot is None else partial(self._let_go, slot)

    def let_go(self) -> None:
        """The connection is over: let go of the slot held by a message still coming, and
        by those whole but not handed over."""
        for slot in (self._slot, *self._whole):
            if slot is not None:
                self._let_go(slot)
        self._slot = None
        self._whole.clear()

    def _let_go(self, slot: _Slot) -> None:
        assert self.large_requests is not None
        self.large_requests.release_on_behalf_of(slot)

    # -- following the frames -------------------------------------------------------------

    def _follow(self, data: memoryview) -> None:
        """Follow the frames through *data*: their heads, and how much of each payload."""
        if self._upgrade_head is not None:  # (the blank line may be cut across reads)
            seen = self._upgrade_head + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self._upgrade_head = seen[-3:]
                return
            data = data[end + 4 - len(self._upgrade_head) :]
            self._upgrade_head = None
        while data:
            if self._payload_left:
                taken = min(self._payload_left, len(data))
                self._payload_left -= taken
                data = data[taken:]
                if self._in_message:
                    self._count(taken)
                if not self._payload_left:
                    self._frame_done()
                continue
            had = len(self._head)
            self._head += data[: _LONGEST_HEAD - had]
            size = self._head_size()
            if size is None or len(self._head) < size:
                return  # (all of data is in the head so far)
            data = data[size - had :]
            self._head_read()

    def _head_size(self) -> int | None:
        """The bytes of the head under way (None until its first two have come)."""
        head = self._head
        if len(head) < 2:
            return None
        extended = _EXTENDED.get(head[1] & 0x7F)
        return 2 + (extended.size if extended else 0) + (4 if head[1] & 0x80 else 0)

    def _head_read(self) -> None:
        """The frame's head has come: its opcode, flags and payload length."""
        head = self._head
        short = head[1] & 0x7F
        extended = _EXTENDED.get(short)
        self._in_message = head[0] & 0x0F < _CONTROL
        self._final = bool(head[0] & 0x80)
        self._payload_left = extended.unpack_from(head, 2)[0] if extended else short
        head.clear()
        if self._in_message and self.cap is not None and self.unfinished + self._payload_left > self.cap:
            self._too_big = True
        if not self._payload_left:
            self._frame_done()

    def _count(self, taken: int) -> None:
        self.unfinished += taken
        if self._deadline is None and self.unfinished > UNHURRIED_BYTES:
            self._deadline = trio.current_time() + MESSAGE_TIMEOUT

    def _frame_done(self) -> None:
        if self._in_message and self._final:  # a message is whole
            self._whole.append(self._slot)
            self._slot = None
            self.unfinished = 0
            self._deadline = None
            self._looked_again = False

    # -- the rest of a stream -------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # (Past the handshake, each of trio-websocket's sends is one whole frame.)
        if self.websocket is not None and data and data[0] & 0x0F == _CLOSE:
            self._close_sent = True
        async with self._sending:
            await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        try:
            failed = self.websocket.closed if self.websocket is not None else None
            if failed is not None and failed.code != CloseReason.ABNORMAL_CLOSURE and not self._close_sent:
                # Closed by trio-websocket for a frame it could not take, no Close frame sent.
                await self._send_close(failed.code, failed.reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # (the client is gone: nobody to tell)
        finally:
            await self.stream.aclose()
