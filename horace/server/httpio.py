"""One HTTP/1.1 connection, read and written with h11: requests one after another
(keep-alive), answers whole or streamed.

The front reads every request through :class:`HttpConnection`; the Streamable HTTP
transport answers through it. Nothing here knows MCP.

- A request head is at most ``MAX_HEAD_BYTES`` (past it h11 refuses it: 431); a request
  that is not HTTP is answered 400 and the connection closes.
- A body is read only when asked for, up to a limit in bytes: past it nothing more is
  read (the caller answers 413; the connection then closes, the rest of the body unread).
  A client waiting for ``100 Continue`` (curl, for large bodies) gets it then. A body
  that breaks HTTP's framing (a chunk size that is not hex) is :class:`MalformedBody`.
- Every write has ``send_timeout``: a client that takes nothing for that long is gone
  (:class:`ClientGone`), as is one whose connection broke. A write cut by a timeout or a
  cancel leaves the connection unusable: it is closed, never reused.
- After an answer the connection serves the next request (keep-alive) when both sides
  finished their messages and neither asked to close.
- While a long answer streams, :meth:`HttpConnection.wait_closed` notices a client that
  closes its end (a pipelined request read meanwhile is kept for the next cycle).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from http import HTTPStatus

import h11
import trio
from attrs import frozen

from horace.server import jsonrpc
from horace.server.jsonrpc import INVALID_REQUEST, RpcError

MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = f"the request's head is over {MAX_HEAD_BYTES} bytes"
# For a request to come (on a kept-alive connection too), and for its body once its
# head is in; for an upgrade, for the head and the handshake together.
HEAD_TIMEOUT = 10.0
# A process stopped past such a deadline (SIGSTOP, a paused VM) wakes with it spent before
# it looked at the socket again: epoll_wait says EINTR, and Python does not poll again once
# its timeout has passed. What the client sent meanwhile is in the socket; one short look
# more, once, reads it instead of failing the client for the server's pause.
LAST_LOOK = 0.05
RECEIVE_BYTES = 65536

Headers = Iterable[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The client closed the connection, it broke, or the client stopped reading."""


class MalformedBody(Exception):
    """The request's body breaks HTTP's framing (answered 400; the connection closes)."""


class BodyTooSlow(Exception):
    """The request's body did not come within HEAD_TIMEOUT (answered 408; the connection
    closes)."""


@frozen
class Request:
    """A request head. Header names are lower case; a header sent several times is one
    value, joined with ", " (HTTP's list syntax)."""

    method: bytes
    target: bytes
    headers: dict[bytes, bytes]

    @property
    def path(self) -> bytes:
        target = self.target
        if target[:1] != b"/" and b"://" in target:
            # The absolute form (RFC 9112 3.2.2: a server takes it, as a proxy sends it):
            # its path is what follows the authority.
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        return target.split(b"?", 1)[0]

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


def _joined(headers: Headers) -> dict[bytes, bytes]:
    joined: dict[bytes, bytes] = {}
    for name, value in headers:
        name = name.lower()
        joined[name] = joined[name] + b", " + value if name in joined else value
    return joined


FRAMED_TWICE = "the request gives both Content-Length and Transfer-Encoding: frame its body one way"


class HttpConnection:
    def __init__(
        self, stream: trio.abc.Stream, send_timeout: float, crowded: Callable[[], bool] = lambda: False
    ) -> None:
        """*crowded*: whether new connections wait for a place; an answer given then closes
        its connection (saying so), rather than leave it open for a next request that may
        find it closed to make room (see :mod:`horace.server.admission`)."""
        self.stream = stream
        self.send_timeout = send_timeout
        self.crowded = crowded
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        # The bytes of the current request as received, replayed to trio-websocket when
        # the request is a WebSocket upgrade (it reads the handshake itself).
        self.received = bytearray()
        self.broken = False
        self._declared_length: int | None = None
        self._no_body = False
        self._body = bytearray()  # of the current request, as far as read_body got
        self._body_size = 0  # (past the limit, the bytes read and thrown away count too)
        self._head = False  # the current request is a HEAD: its answer has a head only
        # Sent in the head of every answer to the current request (CORS headers, say).
        self.answer_headers: list[tuple[bytes, bytes]] = []

    async def next_request(self) -> Request | None:
        """The next request's head; None when the client closed the connection, or sent
        something that is not HTTP (answered 400 here)."""
        self.received = bytearray(self.h11.trailing_data[0])  # a pipelined request's start
        self.answer_headers = []
        self._body, self._body_size = bytearray(), 0
        blank = 0  # bytes of empty lines before the request line, ignored
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 leaves our side able to answer after the peer's error. Said as every
                # refusal is (a JSON-RPC error with id null), in words of ours: h11's
                # quote the bytes it choked on.
                status = exc.error_status_hint
                if status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
                    await self._refuse_head(status, HEAD_TOO_LARGE)
                else:
                    await self._refuse_head(
                        status, f"the request is not valid HTTP: {str(exc).partition(':')[0]}"
                    )
                return None
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return None
                if self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
                    # Empty lines before a request line are ignored (RFC 9112 2.2: a client
                    # may send CRLF after a POST's body); h11 takes the first for a head.
                    stripped = bytes(data).lstrip(b"\r\n")
                    blank += len(data) - len(stripped)
                    if blank > MAX_HEAD_BYTES:
                        await self._refuse_head(
                            HTTPStatus.BAD_REQUEST, "only empty lines, and no request line"
                        )
                        return None
                    data = stripped
                    if not data:
                        continue
                self.received += data
                self.h11.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete in its buffer: one that came
                # whole in a read is measured here.
                head = (
                    len(event.method) + len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                )
                if head > MAX_HEAD_BYTES:
                    await self._refuse_head(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, HEAD_TOO_LARGE)
                    return None
                if event.http_version != b"1.1" and (
                    event.http_version != b"1.0" or any(name == b"upgrade" for name, _ in event.headers)
                ):
                    # HTTP/2's preface read as a request, say; and a WebSocket handshake is
                    # HTTP/1.1's (RFC 6455 4.1).
                    version = event.http_version.decode("latin-1")
                    await self._refuse_head(
                        HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                        f"HTTP/{version} is not spoken here: HTTP/1.1, and WebSocket over it",
                    )
                    return None
                request = Request(event.method, event.target, _joined(event.headers))
                if b"content-length" in request.headers and b"transfer-encoding" in request.headers:
                    # Framed two ways: a proxy that went by the other would take what follows
                    # the body for a request of its own (smuggled past it). RFC 9112 6.1.
                    await self._refuse_head(HTTPStatus.BAD_REQUEST, FRAMED_TWICE)
                    return None
                self._head = event.method == b"HEAD"
                # h11 has checked it (digits only, one value) before giving the request.
                length = request.headers.get(b"content-length")
                self._declared_length = int(length) if length is not None else None
                # No length and no transfer-encoding: a request has no body (RFC 9112 6.3).
                self._no_body = self._declared_length == 0 or (
                    length is None and b"transfer-encoding" not in request.headers
                )
                return request
            else:  # ConnectionClosed (or PAUSED: a pipelined request after a close)
                return None

    async def _refuse_head(self, status: int, why: str) -> None:
        await self.respond_json(status, jsonrpc.error(None, RpcError(INVALID_REQUEST, why)), close=True)

    async def read_body(self, limit: int, *, discard_up_to: int = 0) -> bytes | None:
        """The request's body; None when it is over *limit* bytes. A body over the limit
        but within *discard_up_to* is read to its end and thrown away, so that the
        connection can serve another request (and the client, still sending, does not
        meet a reset); past that the rest is left unread and the connection must close.
        Raises BodyTooSlow when it is not in within HEAD_TIMEOUT (and a last look)."""
        for wait in (HEAD_TIMEOUT, LAST_LOOK):
            with trio.move_on_after(wait):
                return await self._read_body(limit, discard_up_to)
        raise BodyTooSlow(f"the request's body did not come within {HEAD_TIMEOUT:g} s")

    async def _read_body(self, limit: int, discard_up_to: int) -> bytes | None:
        """:meth:`read_body` with no deadline; cancelled, it keeps what it has read, and
        goes on from there when called again."""
        declared = self._declared_length
        if declared is not None and declared > max(limit, discard_up_to):
            return None
        if self.h11.they_are_waiting_for_100_continue:
            if declared is not None and declared > limit:
                return None  # refused before it is sent: no 100 Continue for it
            go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await self._write(self.h11.send(go_on))
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:  # a chunk size that is not one, say
                raise MalformedBody(str(exc)) from None
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_BYTES)  # (cancelled: nothing taken)
                self.h11.receive_data(bytes(data))  # b"": h11 raises at the next event
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > max(limit, discard_up_to):
                    return None
                if self._body_size <= limit:
                    self._body += event.data
                else:
                    self._body.clear()  # over the limit: only read on, to the end
            elif isinstance(event, h11.EndOfMessage):
                return bytes(self._body) if self._body_size <= limit else None
            else:
                raise ClientGone("the request ended before its body")

    def finish_empty_body(self) -> None:
        """Take the end of a request that has no body (nothing to wait for), so that the
        connection can serve another request after the answer. A request with a body is
        left as it is: the connection closes after the answer."""
        if self._no_body and self.h11.their_state is h11.SEND_BODY:
            self.h11.next_event()  # EndOfMessage, from what is already there

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: bytes = b"application/json",
        headers: Headers = (),
        close: bool = False,
    ) -> None:
        """A whole answer (its head alone to a HEAD). The connection closes after it
        when asked, or when the request's body was left unread."""
        close = close or self.h11.their_state is not h11.DONE or self.crowded()
        fields = [*headers, *self.answer_headers]
        if body:
            fields.append((b"content-type", content_type))
        if status != HTTPStatus.NO_CONTENT:
            fields.append((b"content-length", str(len(body)).encode()))
        if close:
            fields.append((b"connection", b"close"))
        # One write for the whole answer: one system call, and no head sent on its own to
        # wait for the body in a packet of its own.
        answer = [self.h11.send(h11.Response(status_code=status, headers=fields, reason=_reason(status)))]
        if body and not self._head:
            answer.append(self.h11.send(h11.Data(data=body)))
        answer.append(self.h11.send(h11.EndOfMessage()))
        await self._write(b"".join(part for part in answer if part))

    async def respond_json(
        self,
        status: int,
        body: object,
        *,
        headers: Headers = (),
        close: bool = False,
    ) -> None:
        await self.respond(status, json.dumps(body).encode(), headers=headers, close=close)

    async def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        """The head of an answer whose body follows in pieces (chunked)."""
        fields = [(b"content-type", content_type), *headers, *self.answer_headers]
        if self.crowded():
            fields.append((b"connection", b"close"))
        await self._write(
            self.h11.send(h11.Response(status_code=status, headers=fields, reason=_reason(status)))
        )

    async def send(self, data: bytes) -> None:
        await self._write(self.h11.send(h11.Data(data=data)))

    async def end_stream(self) -> None:
        await self._write(self.h11.send(h11.EndOfMessage()))

    async def wait_closed(self) -> None:
        """Return when the client closes its end or the connection breaks. Only while an
        answer is under way (the request was read whole): the front reads nothing then."""
        while len(self.h11.trailing_data[0]) <= MAX_HEAD_BYTES:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self.h11.receive_data(bytes(data))  # a pipelined request: kept for next_request()
            if not data:
                return
        await trio.sleep_forever()  # enough kept: read no more until this answer is done

    def next_cycle(self) -> bool:
        """Ready the connection for another request; False when it must close."""
        if not self.broken and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            pending, closed = self.h11.trailing_data
            if pending[:1] in (b"\r", b"\n"):
                # Empty lines after the last request (a CRLF after a POST's body, in the same
                # segment): ignored, as before a request line (RFC 9112 2.2). h11 keeps what
                # it received; a connection between requests holds no other state, so a new
                # one is given the rest.
                self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
                rest = bytes(pending).lstrip(b"\r\n")
                if rest:
                    self.h11.receive_data(rest)
                if closed:
                    self.h11.receive_data(b"")  # (b"": the end of what the client sends)
            return True
        return False

    async def _write(self, data: bytes | None) -> None:
        if not data:
            return
        if self.broken:
            raise ClientGone("the connection broke earlier")
        self.broken = True  # until the write is complete: a cancel would leave half of it
        with trio.move_on_after(self.send_timeout) as sending:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone(str(exc) or "connection broken") from None
        if sending.cancelled_caught:
            raise ClientGone(f"the client took nothing for {self.send_timeout:g} s")
        self.broken = False


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
