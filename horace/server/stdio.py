"""MCP over stdin and stdout (MCP's stdio transport), for clients that start Horace
themselves: one JSON-RPC message per line both ways, one session for the process.

Each line is handed to the session in a task of its own, so calls run concurrently;
replies and progress go out under a lock, each as one line (``json.dumps`` never writes
a newline). The session ends when

- stdin ends: the client closed it, which is how a client stops a stdio server. The
  messages read before the end are answered: the calls still running get
  ``shutdown_grace`` to finish (so ``echo '{...}' | horace mcp`` gets its reply), then
  what is left is cancelled (each leaves the whole version or nothing), and the process
  exits 0;
- SIGTERM or SIGINT comes: the same (a second SIGINT stops at once);
- stdout is closed by the client, or not read for ``send_timeout``: nobody is left to
  answer, and the calls are cancelled at once.

A line longer than ``max_message_bytes`` gets one JSON-RPC error, and the rest of it is
read and dropped up to its newline: an endless line is never held. Nothing but
JSON-RPC reaches stdout: :func:`claim_stdio` gives the protocol descriptors of its own
and points fd 1 at stderr, where the log goes, so a stray print cannot corrupt a reply.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from horace.server.jsonrpc import ENDS, INVALID_REQUEST, RpcError, error_text, id_of_unread
from horace.server.mcp import McpSession

log = logging.getLogger("horace.server")

CHUNK = 64 * 1024  # bytes read from stdin at a time


# Write errors that mean the client closed its end of stdout (the session's normal end).
_CLIENT_GONE = (errno.EPIPE, errno.ECONNRESET)


@attrs.frozen
class StdioFds:
    """The descriptors the protocol reads and writes (see :func:`claim_stdio`)."""

    stdin: int
    stdout: int


def claim_stdio() -> StdioFds:
    """Take stdin and stdout for the protocol, before anything can print: the protocol
    gets descriptors of its own, fd 1 then points at stderr and fd 0 at /dev/null, so
    that nothing else in the process can write into the protocol or read from it."""
    fds = StdioFds(_own_descriptor(0, os.O_RDONLY), _own_descriptor(1, os.O_WRONLY))
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return fds


def _own_descriptor(fd: int, flags: int) -> int:
    """A descriptor for *fd*'s file that the protocol alone uses. A terminal (a person
    trying ``horace mcp`` by hand) is opened anew: the stream makes its descriptor
    non-blocking, which on the open file a terminal's stdin, stdout and stderr usually
    share with the shell would make their writes fail."""
    if os.isatty(fd):
        return os.open(os.ttyname(fd), flags | os.O_NOCTTY | os.O_CLOEXEC)
    return os.dup(fd)  # not inheritable


@asynccontextmanager
async def open_stdio(fds: StdioFds) -> AsyncIterator[tuple[trio.abc.ReceiveStream, trio.abc.SendStream]]:
    """Streams on *fds* that wait in Trio, not in a thread (closed, and made blocking
    again, on exit)."""
    async with trio.lowlevel.FdStream(fds.stdin) as reading, trio.lowlevel.FdStream(fds.stdout) as writing:
        yield reading, writing


@attrs.frozen
class TooLong:
    """A line over the limit (of at least *size* bytes), dropped up to its newline; the id
    of the request it holds, where its start or end says it (``jsonrpc.id_of_unread``)."""

    size: int
    request_id: str | int | None = None


class LineReader:
    """Lines of at most *limit* bytes from a byte stream. What it holds is bounded by
    ``limit + CHUNK``, however long a line is."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self._buffer = bytearray()
        self._searched = 0  # no newline before this offset of the buffer
        self._dropping = False  # inside an over-long line: drop up to its newline
        # An over-long line whose start gives no id: answered at its end, which may (the
        # TypeScript SDK writes the id last); its start, its size so far, its last bytes.
        self._unanswered: tuple[bytes, int, bytes] | None = None

    async def receive_line(self) -> bytes | TooLong | None:
        """The next line without its newline (the last one may have none), :class:`TooLong`
        for one over the limit (once per line), or None at the end of the stream."""
        while True:
            newline = self._buffer.find(b"\n", self._searched)
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                self._searched = 0
                if self._dropping:
                    self._dropping = False  # the over-long line's tail
                    unanswered = self._end_of_dropped(line)
                    if unanswered is None:
                        continue  # already answered
                    return unanswered
                return TooLong(len(line), id_of_unread(line)) if len(line) > self.limit else line
            self._searched = len(self._buffer)
            if len(self._buffer) > self.limit:
                size = len(self._buffer)
                start, end = bytes(self._buffer[:ENDS]), bytes(self._buffer[-ENDS:])
                self._buffer.clear()
                self._searched = 0
                if self._unanswered is not None:
                    head, before, _ = self._unanswered
                    self._unanswered = (head, before + size, end)
                elif not self._dropping:
                    self._dropping = True
                    request_id = id_of_unread(start, b"")
                    if request_id is not None:
                        return TooLong(size, request_id)
                    self._unanswered = (start, size, end)
            chunk = await self.stream.receive_some(CHUNK)
            if not chunk:
                # A last line without its newline (`printf '{...}' | horace mcp`) is a line.
                line = bytes(self._buffer)
                self._buffer.clear()
                self._searched = 0
                if self._dropping:
                    self._dropping = False
                    return self._end_of_dropped(line)
                return None if not line.strip() else line
            self._buffer += chunk

    def _end_of_dropped(self, rest: bytes) -> TooLong | None:
        """The answer to an over-long line not answered at its start, now that its *rest*
        has come: None when it was answered then."""
        if self._unanswered is None:
            return None
        head, size, end = self._unanswered
        self._unanswered = None
        return TooLong(size + len(rest), id_of_unread(head, (end + rest)[-ENDS:]))


class StdioSession:
    def __init__(
        self, reading: trio.abc.ReceiveStream, writing: trio.abc.SendStream, session: McpSession
    ) -> None:
        self.lines = LineReader(reading, session.settings.max_message_bytes)
        self.writing = writing
        self.session = session
        self.settings = session.settings
        self._send_lock = trio.Lock()
        self._reading = trio.CancelScope()
        self.gone = False  # stdout can take nothing more
        self.lost: str | None = None  # why replies could not be written, when not the client's doing
        self._calls: trio.CancelScope | None = None  # once reading has ended
        self.ended_by: str | None = None

    @property
    def conversation_id(self) -> str:
        return self.session.conversation_id

    async def run(self) -> None:
        log.info("stdio session opened", extra={"conversation_id": self.conversation_id})
        async with trio.open_nursery() as calls:
            with self._reading:
                while True:
                    try:
                        line = await self.lines.receive_line()
                    except trio.BrokenResourceError as exc:
                        self.end(f"stdin failed: {exc.__cause__ or exc}")
                        break
                    if line is None:
                        self.end("stdin closed")
                        break
                    if isinstance(line, TooLong):
                        calls.start_soon(self.send, self._too_long(line))
                    elif line.strip():  # blank lines carry no message
                        admitted = self.session.admit(len(line))  # counted as it is read
                        await calls.start(self.session.answer, line, admitted, self.send)
                        del line
            # Ended: stdin closed or a signal (what was read is answered, within the
            # grace), or stdout gone (nobody is left to answer).
            self._calls = calls.cancel_scope
            if self.gone:
                calls.cancel_scope.cancel()
            else:
                calls.cancel_scope.deadline = trio.current_time() + self.settings.shutdown_grace
                running = len(calls.child_tasks)
                if running:  # (said now: a client that closes stdin may kill us before the end)
                    log.info(
                        "stdio session ending (%s): %d calls or replies still running get up to %g s "
                        "(HORACE_SHUTDOWN_GRACE)",
                        self.ended_by,
                        running,
                        self.settings.shutdown_grace,
                        extra={"conversation_id": self.conversation_id},
                    )
        log.info("stdio session closed: %s", self.ended_by, extra={"conversation_id": self.conversation_id})

    def end(self, reason: str) -> None:
        """Stop reading; the calls still running get their grace (see :meth:`run`), or
        none once stdout is gone."""
        if self.ended_by is None:
            self.ended_by = reason
        self._reading.cancel()
        if self.gone and self._calls is not None:
            self._calls.cancel()

    async def end_when_stdout_closes(self, fd: int) -> None:
        """End the session, its calls cancelled, as soon as the client closes the pipe it
        reads stdout from, not at the next write (a call that sends nothing before its
        reply would run on to its end for nobody). Only a pipe: its writing end is never
        readable, so a wakeup means the reader is gone; a socket or a file can be read."""
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        await trio.lowlevel.wait_readable(fd)
        self.gone = True
        self.end("stdout closed")

    def _too_long(self, line: TooLong) -> str:
        limit = self.settings.max_message_bytes
        return error_text(
            line.request_id,
            RpcError(
                INVALID_REQUEST,
                f"message of at least {line.size} bytes exceeds the limit of {limit} "
                "(HORACE_MAX_MESSAGE_BYTES): dropped up to its newline",
            ),
        )

    async def send(self, text: str, *, final: bool = False) -> None:
        """Write one message as one line. A client that does not take it in
        ``send_timeout`` (or closed stdout) ends the session: the calls' replies would
        otherwise wait for it for ever."""
        with self.session.sending(len(text)):
            async with self._send_lock:
                if self.gone:
                    return
                with trio.move_on_after(self.settings.send_timeout) as sending:
                    try:
                        await self.writing.send_all(text.encode() + b"\n")
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self.gone = True
                        cause = exc.__cause__
                        if isinstance(cause, OSError) and cause.errno not in _CLIENT_GONE:
                            # Not the client gone: its replies are lost (a full disk).
                            self.lost = cause.strerror or str(cause)
                            log.warning(
                                "a reply could not be written to stdout (%s): ending the session",
                                self.lost,
                                extra={"conversation_id": self.conversation_id},
                            )
                        self.end(f"stdout closed: {cause or exc}")
                if sending.cancelled_caught:
                    self.gone = True  # half a line may be out: nothing more can follow it
                    log.warning(
                        "client took no reply for %.0f s: ending the session",
                        self.settings.send_timeout,
                        extra={"conversation_id": self.conversation_id},
                    )
                    self.end("stdout not read")
