"""One Streamable HTTP session: an :class:`McpSession` that outlives the connections
its requests come on.

Its calls run in a nursery of the session's own (started in the server's, like every
session), not in the task of the connection that brought them: a POST whose connection
is cut is not cancelled (MCP says so), its call runs on and its answer stays in its
:class:`~horace.server.sse.AnswerStream` for a GET that resumes it. What a call sends
before its reply goes on its own answer, never on another request's.

How a session ends:

- ``DELETE`` from the client, or ``idle_timeout`` with no request, no call running and
  no GET stream open (a client that listens is there, as a WebSocket client that sends
  pings is; the stream's keep-alives find it gone): its calls are cancelled
  and answer nothing (:meth:`McpSession.cancel_all`), its id is forgotten (answered 404
  from then on), its session slot goes back;
- its slot taken back for a new session when every slot is taken (``reclaimable``: the
  least recently active of those that ask nothing now; see ``StreamableHttp.reclaim``);
- the server shutting down: :meth:`HttpSession.drain` refuses new requests (503) and
  lets the calls under way finish, within the server's ``shutdown_grace``.

Answers being written when the session ends are finished by the connections writing
them (the session waits for those, at most ``send_timeout``); the rest are dropped. An
SSE answer whose connection is gone is kept ``send_timeout`` after its call finished,
for the client to resume it, then dropped: a client that takes no reply in that time
loses it, as over WebSocket it loses its connection. The answers kept so add up to at
most ``max_pending_reply_bytes`` (the oldest go first past it), and are counted among
the session's replies not yet taken until they go: a call with a large result waits for
that room, as it waits for a slow reader over WebSocket.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import trio

from horace.server.mcp import McpSession
from horace.server.sse import AnswerStream

log = logging.getLogger("horace.server")


class HttpSession:
    def __init__(self, session_id: str, session: McpSession, on_end: Callable[[HttpSession], None]) -> None:
        self.id = session_id
        self.session = session
        self.settings = session.settings
        self._on_end = on_end
        self.last_request = trio.current_time()
        self.streams: dict[int, AnswerStream] = {}  # every answer under way or kept
        self._numbers = itertools.count(1)
        self._calls: trio.Nursery | None = None
        self.accepting = True  # false once draining or ending: new requests are refused
        self.ending = False
        self.ended_why = ""  # what ended it (end): said to the calls it cut short
        self.ended = trio.Event()  # the session is over (a GET stream on it ends)
        self._draining = trio.Event()
        self._writers = 0  # connections writing one of its answers now
        self._writers_gone = trio.Event()
        self.listening = 0  # standalone GET streams open

    @property
    def conversation_id(self) -> str:
        return self.session.conversation_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as calls:
                self._calls = calls
                calls.start_soon(self._end_when_idle)
                task_status.started()
            self._close_streams()
            # Answers being written get their last writes (each within send_timeout).
            with trio.move_on_after(self.settings.send_timeout):
                while self._writers:
                    await self._writers_gone.wait()
        finally:
            self._close_streams()  # (again, when cancelled with the server)
            self.ended.set()
            self._on_end(self)

    def _close_streams(self) -> None:
        self.accepting = False
        self.session.cancel_all()  # nothing should be left running; if it is, it answers nothing
        for stream in list(self.streams.values()):
            stream.finish()
            if stream.writer is None:
                self.forget(stream)

    def reclaimable(self, quiet_before: float) -> bool:
        """Whether the session asks nothing of the server now (no call running, no GET
        stream, no answer kept) and has been quiet since before *quiet_before*."""
        return (
            self._calls is not None
            and self.accepting
            and self.listening == 0
            and not self.streams
            and self.session.inflight == 0
            and self.quiet_since < quiet_before
        )

    @property
    def quiet_since(self) -> float:
        """When the session last asked for something, or a call of it ended."""
        return max(self.last_request, self.session.quiet_since)

    def touch(self) -> None:
        """A request came (whatever it asks): the session is not idle."""
        self.last_request = trio.current_time()

    def drain(self) -> None:
        """Take no more requests; the calls under way finish, then the session ends."""
        self.accepting = False
        self._draining.set()

    def end(self, why: str) -> None:
        """End now (DELETE, idle): the calls are cancelled and answer nothing."""
        if self._calls is None or self.ending:
            return
        self.ending, self.ended_why = True, why
        log.info("session ending: %s", why, extra={"conversation_id": self.conversation_id})
        self.accepting = False
        self.session.cancel_all()
        self._calls.cancel_scope.cancel()

    # -- answers -------------------------------------------------------------------------------

    def answer(self, message: Any, size: int, *, events: bool) -> AnswerStream:
        """Start answering *message* (parsed, *size* bytes) in a task of the session; its
        notifications (when *events*) and its reply go to the stream returned. Only
        while ``accepting``, checked by the caller with no checkpoint in between."""
        assert self._calls is not None and self.accepting
        stream = AnswerStream(next(self._numbers), resumable=events)
        self.streams[stream.number] = stream
        admitted = self.session.admit(size)  # counted as it is read
        self._calls.start_soon(self._answer, stream, message, admitted)
        return stream

    async def _answer(self, stream: AnswerStream, message: Any, admitted: int) -> None:
        async def send(text: str, *, final: bool = False) -> None:
            if final:
                # Counted from now (no checkpoint since the call gave back its reservation)
                # until a connection has written it, or it is dropped.
                held = ExitStack()
                held.enter_context(self.session.sending(len(text)))
                stream.release = held.close
                stream.add(text, reply=True)
            elif stream.resumable:
                stream.add(text)
            else:  # the transport answers with events whenever a call may send any
                log.warning("a notification for a JSON answer was dropped: %.80s", text)
            await trio.lowlevel.checkpoint()

        try:
            await self.session.answer_parsed(message, admitted, send)
            del message
        finally:
            stream.finish()
            if stream.writer is None:
                self.unclaimed(stream)

    def unclaimed(self, stream: AnswerStream) -> None:
        """No connection is writing *stream*: an SSE answer is kept ``send_timeout`` once
        finished, for a resume; anything else is dropped now."""
        if stream.delivered or not stream.resumable or not self.accepting or self._calls is None:
            self.forget(stream)
        elif stream.finished:
            self._calls.start_soon(self._drop_unless_claimed, stream)
            self._keep_within_room()

    def _keep_within_room(self) -> None:
        """The answers kept for a resume add up to ``max_pending_reply_bytes`` at most:
        past it, the oldest go (a client that cuts call after call cannot pile them up)."""
        kept = [s for s in self.streams.values() if s.finished and s.writer is None]
        total = sum(stream.size for stream in kept)
        for stream in kept[:-1]:  # oldest first (numbers grow); the newest always stays
            if total <= self.settings.max_pending_reply_bytes:
                break
            total -= stream.size
            log.info(
                "an answer not taken was dropped: answers kept for a resume are over %d bytes",
                self.settings.max_pending_reply_bytes,
                extra={"conversation_id": self.conversation_id},
            )
            self.forget(stream)

    async def _drop_unless_claimed(self, stream: AnswerStream) -> None:
        with trio.move_on_after(self.settings.send_timeout):
            await self._draining.wait()  # a draining session keeps nothing for later
        if stream.writer is None and self.streams.get(stream.number) is stream:
            if not self._draining.is_set():
                log.info(
                    "an answer not taken in %.0f s was dropped",
                    self.settings.send_timeout,
                    extra={"conversation_id": self.conversation_id},
                )
            self.forget(stream)

    def forget(self, stream: AnswerStream) -> None:
        self.streams.pop(stream.number, None)
        stream.drop()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Count a connection writing one of the session's answers, while it does."""
        self._writers += 1
        try:
            yield
        finally:
            self._writers -= 1
            if not self._writers:
                self._writers_gone.set()
                self._writers_gone = trio.Event()

    # -- idle ----------------------------------------------------------------------------------

    async def _end_when_idle(self) -> None:
        timeout = self.settings.idle_timeout
        while True:
            quiet_since = self.quiet_since
            busy = self.session.inflight > 0 or self.listening > 0
            if not busy and trio.current_time() >= quiet_since + timeout:
                break
            # Busy: look again once the calls (or the streams) could have finished.
            with trio.move_on_at(trio.current_time() + timeout if busy else quiet_since + timeout):
                await self._draining.wait()
            if self._draining.is_set():
                return  # the nursery ends with the last call
        log.info("session idle for %.0f s", timeout, extra={"conversation_id": self.conversation_id})
        self.end(f"idle for {timeout:g} s")
