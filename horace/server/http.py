"""MCP over Streamable HTTP (MCP 2025-11-25; clients of 2025-06-18 and 2025-03-26 too),
at / and /mcp beside the WebSocket upgrade: the front hands over every request there
that is not an upgrade.

| request | answer |
|---|---|
| POST ``initialize`` without ``Mcp-Session-Id`` | a new session: 200 JSON, its id in ``Mcp-Session-Id`` |
| POST a request (or a batch) with the session | 200: JSON, or SSE (below) |
| POST notifications or responses only | 202, no body (``notifications/cancelled`` stops the call) |
| GET with the session | the session's SSE stream: keep-alive comments only (Horace sends nothing unasked) |
| GET with the session and ``Last-Event-ID`` | SSE: the rest of that answer (if none, it ends at once) |
| DELETE with the session | 204: the session ends, its calls are cancelled (a JSON POST waiting on one: 404) |
| OPTIONS (a browser's CORS preflight) | 204: the methods and headers a page may use |

Refusals, each with a JSON-RPC error (id null) as body: 400 no ``Mcp-Session-Id`` (but
for ``initialize``), an unsupported ``MCP-Protocol-Version``, a body that is not JSON,
or not a message; 401 no token (with
``WWW-Authenticate``); 403 an Origin not allowed; 404 an unknown or ended session (the
client initializes again); 405 another method (``Allow: GET, POST, DELETE, OPTIONS``); 406 a POST
that does not accept both ``application/json`` and ``text/event-stream``, a GET that does
not accept ``text/event-stream``; 408 a body not in within ``HEAD_TIMEOUT``; 409 a GET
stream past ``MAX_GET_STREAMS`` open on the session; 413 a body over
``max_message_bytes``; 415 a POST that is not ``application/json``, or is compressed
(``Content-Encoding``); 503 no session slot left (``max_connections``, shared with
WebSocket sessions) or the server shutting down.

Every answer to a request from a page of an allowed ``Origin`` (``HORACE_ALLOWED_ORIGINS``,
or a loopback page) says that page may read it (``Access-Control-Allow-Origin``, and
``Mcp-Session-Id`` among the headers it may read), refusals included.

``MCP-Protocol-Version`` may name any version Horace speaks, whatever the session
negotiated (clients send 2025-03-26 on 2025-11-25 sessions). ``initialize`` is always
answered with JSON, so that the session id goes out with a known outcome (a failed
``initialize`` leaves no session). Any other request is answered with SSE when the
client prefers it (``text/event-stream`` first in ``Accept``, or with a higher q) or when
the call may send something before its reply: a ``progressToken``, or a ``tools/call``
after ``logging/setLevel``. Otherwise JSON, unless the reply is not ready within
``KEEPALIVE_INTERVAL``: a long call's answer then goes as SSE, its keep-alive comments
keeping a proxy in front (nginx: 60 s without a byte) from cutting it; a client that
accepts JSON accepts SSE too (MCP, and the 406 above). SSE events, their ids and resumption:
``horace.server.sse``; the session and its end: ``horace.server.httpsession``.

One session layer for both transports: each HTTP session has an :class:`McpSession`
(``transport="http"``) whose calls, cancel scopes, progress, conversation turns,
correlation ids and limits are those of a WebSocket session.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, Protocol

import trio

from horace.config import Settings
from horace.server import jsonrpc, sse
from horace.server.admission import Admission, RefusalLogs, Ticket, access_refusal, origin_allowed, who
from horace.server.httpio import (
    BodyTooSlow,
    ClientGone,
    Headers,
    HttpConnection,
    MalformedBody,
    Request,
)
from horace.server.httpsession import HttpSession
from horace.server.jsonrpc import INVALID_REQUEST, SERVER_BUSY, RpcError
from horace.server.mcp import LARGE_REQUEST_BYTES, PROTOCOL_VERSIONS, McpSession, one_large_request_at_a_time
from horace.server.sse import AnswerStream

__all__ = ["Accept", "SessionHost", "StreamableHttp"]

log = logging.getLogger("horace.server")

JSON = "application/json"
SSE = "text/event-stream"
ALLOWED = b"GET, POST, DELETE, OPTIONS"  # the methods of the MCP path (405's Allow)
# CORS: what a page may send, and may read of an answer.
CORS_REQUEST_HEADERS = (
    b"authorization, content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id"
)
CORS_EXPOSED = b"mcp-session-id, mcp-protocol-version, www-authenticate, retry-after"
KEEPALIVE_INTERVAL = 15.0  # a comment on an open GET stream this often
# GET streams one session may hold open: MCP lets a client hold several (the TypeScript SDK
# opens one beside another when a resumed answer has ended); each holds a connection.
MAX_GET_STREAMS = 4
WATCH_AFTER = 0.05  # an answer under way this long has its connection watched for a close
SSE_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


class SessionHost(Protocol):
    """What the server provides the transport: sessions, and somewhere to run them."""

    large_requests: trio.CapacityLimiter  # see one_large_request_at_a_time

    def new_session(self, transport: str) -> McpSession: ...

    async def start(self, session: HttpSession) -> None:
        """Run *session* among the server's sessions; return once it is running."""
        ...


class Refused(Exception):
    """An HTTP refusal: a status, a message (sent as a JSON-RPC error), headers."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: Headers = (),
        *,
        code: int = INVALID_REQUEST,
        close: bool = False,
        request_id: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.code, self.close = status, message, headers, code, close
        self.request_id = request_id  # (the error's id: of a request refused unread, when it is seen)


NO_SUCH_SESSION = "no such session (ended, expired or never opened): initialize a new one"

# Seconds a Streamable HTTP session must have been quiet for its slot to be taken back
# when a new session finds none free (StreamableHttp.reclaim).
RECLAIM_AFTER = 5.0


class StreamableHttp:
    def __init__(
        self, settings: Settings, admission: Admission, refusals: RefusalLogs, host: SessionHost
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.refusals = refusals
        self.host = host
        self.sessions: dict[str, HttpSession] = {}  # by id

    async def handle(self, conn: HttpConnection, request: Request, ticket: Ticket) -> None:
        """Answer one request on the MCP path that is not a WebSocket upgrade."""
        try:
            await self._handle(conn, request, ticket)
        except Refused as refused:
            if refused.status in (401, 403, 413, 503):
                self.refusals.warning(
                    f"http {refused.status}",
                    "request refused: %s",
                    refused.message,
                    status=refused.status,
                    **who(conn.stream, request.headers),
                )
            else:
                log.debug("request refused: %d %s", refused.status, refused.message)
            body = jsonrpc.error(refused.request_id, RpcError(refused.code, refused.message))
            conn.finish_empty_body()  # (a request with a body not read: the connection closes)
            await conn.respond_json(refused.status, body, headers=refused.headers, close=refused.close)

    async def _handle(self, conn: HttpConnection, request: Request, ticket: Ticket) -> None:
        settings = self.settings
        origin = request.header(b"origin")
        if origin is not None and origin_allowed(origin, settings.allowed_origins):
            # A page of an allowed origin may read the answers, refusals included, and the
            # session's id (CORS).
            conn.answer_headers = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", CORS_EXPOSED),
                (b"vary", b"origin"),
            ]
        if request.method == b"OPTIONS":
            await self._options(conn, request)
            return
        refusal = access_refusal(request.headers, settings.auth_token, settings.allowed_origins)
        if refusal is not None:
            raise Refused(refusal.status, refusal.message, refusal.headers)
        if request.method not in (b"POST", b"GET", b"DELETE"):
            method = request.method.decode("latin-1")
            raise Refused(
                405, f"{method} is not served here: POST, GET, DELETE or OPTIONS", [(b"allow", ALLOWED)]
            )
        version = request.header(b"mcp-protocol-version")
        if version is not None and version not in PROTOCOL_VERSIONS:
            raise Refused(
                400,
                f"unsupported MCP-Protocol-Version {version!r}: Horace speaks {', '.join(PROTOCOL_VERSIONS)}",
            )
        if request.method == b"POST":
            await self._post(conn, request, ticket)
        elif request.method == b"GET":
            await self._get(conn, request, ticket)
        else:
            await self._delete(conn, request)

    async def _options(self, conn: HttpConnection, request: Request) -> None:
        """A browser's preflight (before a POST with a JSON body, or a request with
        ``Mcp-Session-Id``): the methods and headers a page of an allowed origin may use.
        It carries no token (browsers send none with it), so none is asked for."""
        origin = request.header(b"origin")
        if not origin_allowed(origin, self.settings.allowed_origins):
            raise Refused(403, f"origin {origin!r} is not allowed (HORACE_ALLOWED_ORIGINS)")
        conn.finish_empty_body()
        headers = [(b"allow", ALLOWED)]
        if origin is not None:
            headers += [
                (b"access-control-allow-methods", b"GET, POST, DELETE"),
                (b"access-control-allow-headers", CORS_REQUEST_HEADERS),
                (b"access-control-max-age", b"600"),
            ]
        await conn.respond(204, headers=headers)

    # -- POST ------------------------------------------------------------------------------------

    async def _post(self, conn: HttpConnection, request: Request, ticket: Ticket) -> None:
        accept = Accept(request.header(b"accept"))
        if not (accept.allows(JSON) and accept.allows(SSE)):
            raise Refused(406, f"a POST must accept both {JSON} and {SSE}")
        if _media_type(request.header(b"content-type")) != JSON:
            raise Refused(415, f"a POST's body must be {JSON}")
        encoding = (request.header(b"content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise Refused(415, f"Content-Encoding {encoding!r} is not taken: send the body uncompressed")
        # A draining session still takes notifications (a cancel); requests get 503 below.
        session = self._session(request, required=False, draining_ok=True)
        declared = request.header(b"content-length")
        size = int(declared) if declared is not None else LARGE_REQUEST_BYTES + 1  # (chunked: any size)
        async with AsyncExitStack() as slot:
            await slot.enter_async_context(one_large_request_at_a_time(self.host.large_requests, size))
            await self._post_body(conn, slot, ticket, accept, session)

    async def _post_body(
        self,
        conn: HttpConnection,
        slot: AsyncExitStack,
        ticket: Ticket,
        accept: Accept,
        session: HttpSession | None,
    ) -> None:
        """The POST's body read and answered; *slot* holds the large-request slot a body
        that may be large is read in, let go of once it is read small (sent chunked, its
        size was not said), so that its call holds up no large message."""
        body = await self._body(conn)
        size = len(body)
        if size <= LARGE_REQUEST_BYTES:
            await slot.aclose()
        try:
            message = jsonrpc.parse(body)
        except RpcError as exc:  # (not JSON: no id, as JSON-RPC says; too many values: its id)
            refused_id = jsonrpc.id_of_unread(body) if exc.code != jsonrpc.PARSE_ERROR else None
            raise Refused(400, exc.message, code=exc.code, request_id=refused_id) from None
        del body
        if session is not None and session.ending:
            # Ended while its body came (a DELETE, its slot taken back, idle too long).
            asked = message.get("id") if isinstance(message, dict) else None
            raise Refused(404, NO_SUCH_SESSION, request_id=asked if jsonrpc.is_valid_id(asked) else None)
        opened = session is None
        if session is None:
            if not (jsonrpc.is_request(message) and message["method"] == "initialize"):
                if isinstance(message, list) and any(
                    isinstance(item, dict) and item.get("method") == "initialize" for item in message
                ):
                    raise Refused(400, "initialize must be sent alone, not in a batch")
                if isinstance(message, dict) and message.get("method") == "initialize":
                    raise Refused(400, "initialize must be a request: a string or integer id (never null)")
                raise Refused(400, "Mcp-Session-Id header missing: a session starts with initialize")
            session = await self._open()
        session.touch()
        with self.admission.serving_session(ticket):
            if not _asks(message):  # notifications, responses, or what is neither
                replies: list[str] = []

                async def keep(text: str, *, final: bool = False) -> None:
                    replies.append(text)

                admitted = session.session.admit(size)
                await session.session.answer_parsed(message, admitted, keep)
                if not replies:
                    await conn.respond(202)
                else:  # not a message: the session's error says why
                    await conn.respond(400, replies[-1].encode())
                return
            initialize = jsonrpc.is_request(message) and message["method"] == "initialize"
            events = not initialize and (
                accept.prefers(SSE, over=JSON) or _may_notify(message, session.session)
            )
            if not session.accepting:  # (no checkpoint between this and answer())
                raise Refused(503, "the server is shutting down", [(b"retry-after", b"1")], code=SERVER_BUSY)
            asked = _ids_asked(message)
            stream = session.answer(message, size, events=events)
            del message
            if events:
                await self._write_events(conn, session, stream, after=None)
            else:
                await self._write_json(conn, session, stream, opened=opened, asked=asked)
                if opened and not stream.delivered:  # the client never learnt the session's id
                    session.end("its initialize was not delivered")

    async def _body(self, conn: HttpConnection) -> bytes:
        limit = self.settings.max_message_bytes
        # Up to 4x the limit is read (and thrown away) past it, as over WebSocket: the
        # answer comes on a connection that can go on.
        try:
            body = await conn.read_body(limit, discard_up_to=4 * limit)
        except MalformedBody as exc:  # (h11's words, without the bytes it quotes)
            reason = str(exc).partition(":")[0]
            raise Refused(400, f"the request's body is not valid HTTP: {reason}", close=True) from None
        except BodyTooSlow as exc:
            raise Refused(408, str(exc), close=True) from None
        if body is None:
            raise Refused(413, f"the message exceeds the limit of {limit} bytes (HORACE_MAX_MESSAGE_BYTES)")
        return body

    def reclaim(self) -> bool:
        """Every session slot taken: end the least recently active HTTP session that asks
        nothing now (see :meth:`HttpSession.reclaimable`), quiet RECLAIM_AFTER seconds at
        least, and give its slot back at once. Clients that leave without DELETE (most
        command-line ones) would otherwise hold their slots for ``idle_timeout``; MCP has
        a client whose session is gone (404) start a new one."""
        quiet_before = trio.current_time() - RECLAIM_AFTER
        idle = [session for session in self.sessions.values() if session.reclaimable(quiet_before)]
        if not idle:
            return False
        oldest = min(idle, key=lambda session: session.quiet_since)
        self._forget(oldest)
        oldest.end("its slot was taken back for a new session (all HORACE_MAX_CONNECTIONS in use)")
        return True

    async def _open(self) -> HttpSession:
        """A new session, in a session slot (taken back from an idle session when none is
        free; 503 when none can be)."""
        if self.admission.full:
            self.reclaim()
        if not self.admission.take_http_session():
            limit = self.settings.max_connections
            raise Refused(
                503, f"too many sessions (limit {limit})", [(b"retry-after", b"1")], code=SERVER_BUSY
            )
        session = HttpSession(secrets.token_urlsafe(24), self.host.new_session("http"), self._forget)
        self.sessions[session.id] = session
        try:
            await self.host.start(session)
        except BaseException:
            self._forget(session)  # (it never ran: nothing else gives its slot back)
            raise
        if not session.accepting:  # opened as the server shuts down: it ends at once
            raise Refused(503, "the server is shutting down", [(b"retry-after", b"1")], code=SERVER_BUSY)
        return session

    def _forget(self, session: HttpSession) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.admission.give_back_http_session()

    def _session(
        self, request: Request, *, required: bool = True, draining_ok: bool = False
    ) -> HttpSession | None:
        session_id = request.header(b"mcp-session-id")
        if session_id is None:
            if required and request.header(b"sec-websocket-key") is not None:
                raise Refused(
                    400,
                    "a WebSocket handshake without 'Upgrade: websocket' (a proxy in front that does not "
                    "pass the Upgrade and Connection headers on?)",
                )
            if required:
                raise Refused(400, "Mcp-Session-Id header missing: a session starts with initialize")
            return None
        session = self.sessions.get(session_id)
        if session is None or session.ending:
            raise Refused(404, NO_SUCH_SESSION)
        if not session.accepting and not draining_ok:
            raise Refused(503, "the server is shutting down", [(b"retry-after", b"1")], code=SERVER_BUSY)
        return session

    # -- GET and DELETE ---------------------------------------------------------------------------

    async def _get(self, conn: HttpConnection, request: Request, ticket: Ticket) -> None:
        if not Accept(request.header(b"accept")).allows(SSE):
            raise Refused(406, f"a GET must accept {SSE}")
        session = self._session(request)
        assert session is not None
        conn.finish_empty_body()
        session.touch()
        last_event_id = request.header(b"last-event-id")
        with self.admission.serving_session(ticket):
            if last_event_id is None:
                await self._listen(conn, session)
                return
            found = sse.parse_event_id(last_event_id)
            stream = session.streams.get(found[0]) if found else None
            if found is None or stream is None or not stream.resumable or found[1] > stream.last:
                # Nothing left to send after that event (its answer was delivered or
                # dropped, or the id is not one of ours: past what the stream sent, too,
                # which must not take the answer for delivered): an SSE stream that ends at
                # once, as MCP asks of a GET (a stream or 405), and as a delivered answer ended.
                async with _answering(conn):
                    await conn.start_stream(200, SSE.encode(), SSE_HEADERS)
                    await conn.end_stream()
                return
            await self._write_events(conn, session, stream, after=found[1])

    async def _listen(self, conn: HttpConnection, session: HttpSession) -> None:
        """The session's standalone stream, until the session ends or the client goes:
        Horace has nothing to say unasked, so only keep-alive comments."""
        if session.listening >= MAX_GET_STREAMS:
            raise Refused(409, f"this session has {MAX_GET_STREAMS} GET streams open already")
        session.listening += 1
        try:
            async with _answering(conn):
                await conn.start_stream(200, SSE.encode(), SSE_HEADERS)
                while not session.ended.is_set():
                    with trio.move_on_after(KEEPALIVE_INTERVAL):
                        await session.ended.wait()
                    if not session.ended.is_set():
                        await conn.send(sse.KEEPALIVE)
                await conn.end_stream()
        finally:
            session.listening -= 1
            session.touch()  # (its idle time runs from the stream's end)

    async def _delete(self, conn: HttpConnection, request: Request) -> None:
        session = self._session(request, draining_ok=True)
        assert session is not None
        conn.finish_empty_body()
        session.end("deleted by the client")
        await conn.respond(204)

    # -- writing answers ---------------------------------------------------------------------------

    async def _write_json(
        self,
        conn: HttpConnection,
        session: HttpSession,
        stream: AnswerStream,
        opened: bool,
        asked: Any,
    ) -> None:
        """The reply as one JSON body, once the call is done: 202 when it gives none (the
        client cancelled it). A client gone meanwhile: the call runs on, its reply is
        dropped. *asked*: the id of the request posted (a batch: its requests' ids)."""
        with _writing(session, stream):
            async with _answering(conn):
                with trio.move_on_after(math.inf if opened else KEEPALIVE_INTERVAL) as waiting:
                    while not stream.finished:
                        await stream.changed.wait()
                if waiting.cancelled_caught:  # a long call: an event stream, kept for a resume
                    stream.resumable = True
                    await _send_events(conn, stream, after=None)
                    return
                if not stream.replied and session.ending:
                    # Cut short by the session's end (a DELETE while it ran): said, as to a
                    # request on an ended session, so that the client stops waiting for it.
                    why = (
                        f"the session ended ({session.ended_why}) before this call answered; it was cancelled"
                    )
                    ended = RpcError(INVALID_REQUEST, why)
                    if isinstance(asked, list):
                        await conn.respond_json(404, [jsonrpc.error(id_, ended) for id_ in asked])
                    else:
                        await conn.respond_json(404, jsonrpc.error(asked, ended))
                elif not stream.replied:
                    await conn.respond(202)
                else:
                    reply = stream.after(0)[-1][1]
                    headers: list[tuple[bytes, bytes]] = []
                    if opened:
                        if "error" in json.loads(reply):
                            session.end("initialize failed")  # nothing for the client to come back to
                        else:
                            headers.append((b"mcp-session-id", session.id.encode()))
                    await conn.respond(200, reply.encode(), headers=headers)
                stream.delivered = True

    async def _write_events(
        self, conn: HttpConnection, session: HttpSession, stream: AnswerStream, after: int | None
    ) -> None:
        """*stream* as SSE, from after event *after* (None: a new answer, primed first),
        until its end. A client gone, or another connection resuming it: the events stay
        for a resume."""
        with _writing(session, stream):
            async with _answering(conn):
                await _send_events(conn, stream, after)


async def _send_events(conn: HttpConnection, stream: AnswerStream, after: int | None) -> None:
    """*stream* as SSE from after event *after* (None: a new answer, primed first), to
    its end; a keep-alive comment where it is quiet for KEEPALIVE_INTERVAL."""
    await conn.start_stream(200, SSE.encode(), SSE_HEADERS)
    if after is None:
        await conn.send(sse.event("", stream.event_id(0), retry_ms=sse.RETRY_MS))
        after = 0
    while True:
        changed = stream.changed
        for number, text in stream.after(after):
            await conn.send(sse.event(text, stream.event_id(number)))
            after = number
        if stream.finished and after >= stream.last:
            break
        with trio.move_on_after(KEEPALIVE_INTERVAL) as quiet:
            await changed.wait()
        if quiet.cancelled_caught:
            await conn.send(sse.KEEPALIVE)  # a quiet call: nothing to send, but we are here
    await conn.end_stream()
    stream.delivered = True


@contextmanager
def _writing(session: HttpSession, stream: AnswerStream) -> Iterator[None]:
    """*stream* is written by this connection (a newer one takes over from an older
    one, cancelled); once it is no longer, kept for a resume or dropped."""
    scope = trio.CancelScope()
    if stream.writer is not None:
        stream.writer.cancel()
    stream.writer = scope
    try:
        with session.writing(), scope:
            yield
    finally:
        if stream.writer is scope:
            stream.writer = None
            if stream.delivered:
                session.forget(stream)
            else:
                session.unclaimed(stream)


@asynccontextmanager
async def _answering(conn: HttpConnection) -> AsyncIterator[None]:
    """Run the body (an answer being written, or waited for) while a task watches the
    connection (once the body has run WATCH_AFTER): a client that closes its end cancels
    the body. A client gone mid-write ends it too. Either way the connection closes after
    (the answer is not complete)."""
    async with trio.open_nursery() as watching:
        watching.start_soon(_cancel_when_closed, conn, watching.cancel_scope)
        try:
            yield
        except ClientGone as exc:  # (caught here: out of the nursery it would be a group)
            log.debug("client gone during its answer: %s", exc)
        watching.cancel_scope.cancel()


async def _cancel_when_closed(conn: HttpConnection, scope: trio.CancelScope) -> None:
    # Most answers are written sooner: watching the socket (a read, and its epoll
    # registration made and undone) cost those a tenth of their time, for nothing.
    await trio.sleep(WATCH_AFTER)
    await conn.wait_closed()
    log.debug("client closed the connection while its answer was under way")
    scope.cancel()


def _asks(message: Any) -> bool:
    """Whether *message* holds a request (an answer is due): a request, or a batch with
    one. Notifications, responses and what is none of these get no stream."""
    items = message if isinstance(message, list) else [message]
    return any(jsonrpc.is_request(item) for item in items)


def _ids_asked(message: Any) -> Any:
    """The id of the request *message*, or the ids of a batch's requests, in order: what
    an answer that is not the call's own (the session ended under it) is addressed to."""
    if isinstance(message, list):
        return [item["id"] for item in message if jsonrpc.is_request(item)]
    return message["id"]


def _may_notify(message: Any, session: McpSession) -> bool:
    """Whether answering *message* may send something before the reply: progress (a
    progressToken), or a tool's failure as a log message (the client asked for logs)."""
    for item in message if isinstance(message, list) else [message]:
        if not isinstance(item, dict):
            continue
        params = item.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and meta.get("progressToken") is not None:
            return True
        if item.get("method") == "tools/call" and session.log_level is not None:
            return True
    return False


def _media_type(value: str | None) -> str | None:
    return None if value is None else value.split(";", 1)[0].strip().lower()


class Accept:
    """An ``Accept`` header: which media types it allows, and in what preference. The
    most specific range naming a type decides its q (``text/*;q=0, */*``: no text);
    between equal q, the one listed first wins. No header allows anything."""

    def __init__(self, header: str | None) -> None:
        self.ranges: list[tuple[str, float]] = []
        for item in (header or "*/*").split(","):
            media, *params = (part.strip() for part in item.split(";"))
            if not media:
                continue
            quality = 1.0
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        quality = float(value)
                    except ValueError:
                        quality = 0.0
            self.ranges.append((media.lower(), quality))

    def _rank(self, media_type: str) -> tuple[float, int]:
        """(q, -position) of the most specific range matching *media_type*."""
        kind = media_type.split("/", 1)[0]
        best: tuple[int, float, int] | None = None
        for position, (media, quality) in enumerate(self.ranges):
            specificity = (
                2 if media == media_type else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
            )
            if specificity >= 0 and (best is None or specificity > best[0]):
                best = (specificity, quality, position)
        return (0.0, 0) if best is None else (best[1], -best[2])

    def allows(self, media_type: str) -> bool:
        return self._rank(media_type)[0] > 0

    def prefers(self, media_type: str, *, over: str) -> bool:
        return self._rank(media_type) > self._rank(over)
