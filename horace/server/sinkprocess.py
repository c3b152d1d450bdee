"""The log sinks in a child process (``HORACE_SINK_PROCESS``, on by default).

Beside the sessions, what the sinks do for each call (two conversation turns made,
encoded and stored; the call's line sent to Godot) took a fifth to a third of the one
core the server's event loop can use. Here the server only queues each call's record as
a tuple; a child task pickles what is queued, every 20 ms at most, onto the stdin of a
child process, which runs :func:`horace.server.sinks.run_sinks` on another core and
reports its sinks' status on its stdout (a JSON line at each change) for /health.

The child ends when its stdin closes (the server stopping, or dead): its sinks flush and
spill as they would in the server. It runs in a session of its own (a terminal's Ctrl-C
reaches the server only) and ignores SIGINT and SIGTERM (a service manager may signal every
process of the service): the server's end is its signal. A child
that dies is started again, with backoff; what it held and had not delivered is lost, as
a server that dies loses what its own sinks hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

import horace
from horace.backends import open_backend
from horace.backends.protocol import BackendUnavailable, CatalogMissing, CatalogUnwritable, UnusableURL
from horace.config import Settings
from horace.model import CallRecord
from horace.server.sinks import LocalSinks, SinkWiring, run_sinks
from horace.sinks.conversations import TURNS_APPLICATION, TURNS_CONNECTIONS
from horace.sinks.supervisor import (
    BATCH_BYTES,
    DROPS_SAID_EVERY,
    STALLED_SECONDS,
    DropsSaid,
    entry_size,
    queue_from_thread,
)
from horace.supervise import backoff, the_failure

log = logging.getLogger("horace.sinks")  # (the sinks' own log never feeds a sink)

FRAME = struct.Struct("!I")  # each frame: its length, then a pickled list of messages
# Seconds the writer waits after a first message for more to come: one frame for many
# calls. (What the server's own death can lose; the child lingers as the sinks do.)
GATHER = 0.02
PIPE_BYTES = 1024 * 1024
EXIT_GRACE = 5.0  # beyond the flush time, for the child to spill and end
STEADY = 30.0  # seconds a child must live for its restart to count as a first failure
REPORT_EVERY = 0.1  # seconds between the child's looks at its sinks' status
READ_BYTES = 1024 * 1024
# The child's program. Horace is imported as the server's interpreter finds it (the same
# environment and PYTHONPATH; -P: not from the working directory, where a ``horace``
# folder, such as another checkout, would shadow the server's own); the folder the
# server's came from is a last resort (a test runner's path), put last so that it shadows
# nothing.
_HORACE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(horace.__file__)))
CHILD_CODE = (
    f"import sys; sys.path.append({_HORACE_FOLDER!r}); from horace.server.sinkprocess import main; main()"
)


@attrs.frozen
class SinkPlan:
    """What the child is told, first thing on its stdin."""

    settings: Settings
    talks_url: str | None  # where conversation turns go (None: no conversation sink)
    spool_dir: Path
    log_level: str


def record_message(record: CallRecord) -> tuple[Any, ...]:
    """A call's record as the pipe carries it (the reply once: as JSON text when made)."""
    return (
        record.conversation_id,
        record.correlation_id,
        record.tool,
        record.arguments,
        record.request_turn,
        record.response_turn,
        None if record.result_json is not None else record.result,
        record.error_code,
        record.timing_ms,
        record.file_ids,
        record.result_json,
        record.at,
        record.request_json,
    )


class _ChildGone(Exception):
    """The child's stdin is closed: it died."""


class SinkProcess:
    """The server's side: the observer of calls and the stand-in for the Godot runner
    (Horace's own log records), both of which only queue; and the supervised child task
    that hands the queue to the child process (:meth:`run`)."""

    def __init__(self, plan: SinkPlan) -> None:
        settings = plan.settings
        self.plan = plan
        self.wiring = SinkWiring.of(settings)
        self.capacity, self.capacity_bytes = settings.sink_queue, settings.sink_queue_bytes
        self._queue: deque[tuple[tuple[str, Any], int]] = deque()  # (message, size)
        self._queued_bytes = 0
        self._ready = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None  # (the run, for other threads)
        # What the child last said of its sinks; until it speaks, each is starting.
        self.sink_status: dict[str, dict[str, Any]] = {n: {"state": "starting"} for n in self.wiring.names}
        self.state = "starting"
        # A child failed, and none since has said that its sinks are connected: a child that
        # dies at every start (its database down) is running for a moment each time.
        self.recovering = False
        self.pid: int | None = None
        self.starts = 0
        self.dropped = 0
        self._drops_said = DropsSaid("sink process")
        self.lost = 0
        self.handed = 0  # messages written to the children
        self.received = 0  # of them, taken in by the child that runs now (as it last said)
        self._handed_before = 0  # handed to the children before this one
        self._took_at = time.monotonic()  # when the child last took what was handed to it
        self._in_pipe: list[tuple[tuple[str, Any], int]] = []  # the frame being written
        self._in_pipe_kept = 0  # of its messages, those that could be pickled
        self.last_error: str | None = None
        self._child_error: str | None = None  # what the child said of its failure, if it did

    # -- the sessions' side: never blocks, never raises -----------------------------------

    def call_started(self, record: CallRecord) -> None:
        if self.wiring.turns:  # (a call's log line needs only its end)
            made = record.request_json
            size = len(made) if made is not None else entry_size(record.arguments)
            self._put(("started", record_message(record)), 256 + size)

    def call_finished(self, record: CallRecord) -> None:
        reply = len(record.result_json) if record.result_json is not None else entry_size(record.result)
        self._put(("finished", record_message(record)), 256 + reply)

    def emit(self, entry: dict[str, Any], size: int | None = None) -> None:
        """An entry for the Godot sink (one of Horace's own log records; from another
        thread, queued by the Trio thread)."""
        if not trio.lowlevel.in_trio_run():
            queue_from_thread(self._token, self.emit, entry, self)
            return
        self._put(("godot", entry), entry_size(entry) if size is None else size)

    def _put(self, message: tuple[str, Any], size: int) -> None:
        self._drop_oldest(1, size)
        self._queue.append((message, size))
        self._queued_bytes += size
        self._ready.set()

    def status(self) -> dict[str, Any]:
        # Not ok (the server "degraded" in /health) while the child is retrying, or one of
        # its sinks is not ok (its database down, Godot gone, refusing or hung).
        failing = sorted(name for name, sink in self.sink_status.items() if sink.get("ok") is False)
        waiting = self.handed - self.received
        why = None
        if self.state == "retrying":
            why = self.last_error
        elif waiting and time.monotonic() - self._took_at >= STALLED_SECONDS:
            # Its last report would still say all is well: a child hung (SIGSTOP, a blocked
            # disk) says nothing more, and takes nothing.
            why = (
                f"the sink process has taken none of the {waiting} log entries handed to it for "
                f"{time.monotonic() - self._took_at:.0f} s (hung?)"
            )
        elif failing:  # (its own last_error, if any, is an older story)
            why = f"not ok in the child: {', '.join(failing)} (see sinks)"
        elif self.recovering:
            why = "a new child: not every sink has connected yet"
        return {
            "ok": why is None,
            "why": why,
            "state": self.state,
            "pid": self.pid,
            "starts": self.starts,
            "queued": len(self._queue),
            "handed": self.handed,
            "received": self.received,
            "dropped": self.dropped,
            "lost": self.lost,
            "last_error": self.last_error,
        }

    # -- the child task -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a child running until cancelled; then hand it what is queued and wait for
        it to deliver (or spill) everything and end. Started once the first child is
        spawned (or has failed to be): a fork made later, in a worker thread, would hold
        for a moment every file the server has open, a working file being written
        included, and a register of that file would be ``FILE_LOCKED`` meanwhile."""
        self._token = trio.lowlevel.current_trio_token()
        failures = 0
        try:
            while True:
                started = trio.current_time()
                unexpected = False
                self._child_error = None
                try:
                    code = await self._run_child(task_status)
                    said = f": {self._child_error}" if self._child_error else ""
                    self.last_error = f"the sink process ended with exit code {code}{said}"
                except Exception as exc:  # every failure: log it, back off, start another
                    failure = the_failure(exc)  # (the child's tasks' nursery wraps it)
                    unexpected = not isinstance(failure, OSError | _ChildGone)
                    self.last_error = f"the sink process failed: {type(failure).__name__}: {failure}"
                    if self._child_error:
                        self.last_error += f" (it said: {self._child_error})"
                self.state, self.recovering = "retrying", True
                if not self.starts:  # the first child could not be spawned: the server starts degraded
                    task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                failures = 1 if trio.current_time() - started > STEADY else failures + 1
                settings = self.plan.settings
                delay = backoff(failures, settings.sink_backoff_base, settings.sink_backoff_cap)
                log.error("%s; starting another in %.1f s", self.last_error, delay, exc_info=unexpected)
                await trio.sleep(delay)
                self._drops_said.say_due()
        finally:
            self._drops_said.say()
            if self._queue:  # stopping with no child to take them
                self.lost += len(self._queue)
                log.error("sink process: %d log entries lost at shutdown (no sink process)", len(self._queue))

    def _count_lost_with_the_child(self, signal_number: int) -> None:
        """A child that ends by itself spills what its sinks hold; one killed cannot: its
        sinks' queues, and what was handed to it and not yet taken (in the pipe, read
        by nobody now), as it last said them, are counted as lost."""
        held = sum(int(sink.get("queued", 0)) for sink in self.sink_status.values())
        unread = self.handed - self.received
        if held or unread:
            self.lost += held + unread
            log.error(
                "sink process killed by %s: the %d log entries its sinks held, and the %d handed to it "
                "and not yet taken, are lost",
                signal.Signals(signal_number).name,
                held,
                unread,
            )
        self.received = self.handed
        self.sink_status = {name: {"state": "starting"} for name in self.sink_status}

    async def _run_child(self, task_status: trio.TaskStatus[None]) -> int:
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # (Linux: room for bursts)
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-P", "-c", CHILD_CODE],
                stdin=read_end,
                stdout=subprocess.PIPE,
                start_new_session=True,  # out of the terminal's group: Ctrl-C is the server's
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        assert process.stdout is not None
        pipe = _FramePipe(write_end)
        pipe.add(_frame(pickle.dumps(self.plan)))
        self.pid, self.state = process.pid, "running"
        self.starts += 1
        self._handed_before = self.handed
        self._took_at = time.monotonic()
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_status, process.stdout)
                nursery.start_soon(self._write, pipe)
                await process.wait()
                nursery.cancel_scope.cancel()
            return await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._end_child(process, pipe)

    async def _end_child(self, process: trio.Process, pipe: _FramePipe) -> None:
        """Hand over what is queued (the server stopping), close the child's stdin, wait
        for it to deliver or spill it and end."""
        flush = self.plan.settings.sink_flush
        gone = False
        with trio.move_on_after(flush):
            try:
                while process.returncode is None and (pipe.unsent or self._queue):
                    await self._hand_over(pipe)
            except _ChildGone as exc:
                log.warning("sink process: %s", exc)
                gone = True
        if gone or process.returncode is not None:
            self._requeue()  # a frame the dead child did not take whole: for the next one
        elif self._queue or self._in_pipe:
            lost = len(self._queue) + len(self._in_pipe)
            self.lost += lost
            log.error("sink process: %d log entries not handed over in %.0f s; lost", lost, flush)
            self._queue.clear()
            self._queued_bytes = 0
            self._in_pipe = []
        pipe.close()  # the child's end of input: it flushes, spills and ends
        with trio.move_on_after(flush + EXIT_GRACE):
            await process.wait()
        if process.returncode is None:
            log.error("sink process %d did not end in %.0f s; killed", process.pid, flush + EXIT_GRACE)
            process.kill()
            await process.wait()
        code = process.returncode
        if code is not None and code < 0:  # killed by a signal: what its sinks held went with it
            self._count_lost_with_the_child(-code)
        self.state = "stopped"

    async def _write(self, pipe: _FramePipe) -> None:
        while True:
            await self._hand_over(pipe)
            while not self._queue:
                self._drops_said.say_due()
                self._ready = trio.Event()
                with trio.move_on_after(DROPS_SAID_EVERY):
                    await self._ready.wait()
            await trio.sleep(GATHER)

    async def _hand_over(self, pipe: _FramePipe) -> None:
        """Write the frame under way, or one of what is queued. A cancelled write leaves
        the rest of its frame to the next call: frames reach the child whole."""
        if not pipe.unsent and self._queue:
            size = 0
            while self._queue and (not self._in_pipe or size + self._queue[0][1] <= BATCH_BYTES):
                item = self._queue.popleft()
                self._in_pipe.append(item)
                size += item[1]
            self._queued_bytes -= size
            kept, data = _pickled([message for message, _ in self._in_pipe])
            pipe.add(_frame(data))
            self._in_pipe_kept = kept
        try:
            await pipe.drain()
        except _ChildGone:
            self._requeue()
            pipe.unsent = memoryview(b"")
            raise
        if self.handed == self.received:  # (the child's wait for these starts now)
            self._took_at = time.monotonic()
        self.handed += self._in_pipe_kept
        self._in_pipe, self._in_pipe_kept = [], 0

    def _requeue(self) -> None:
        """The messages of a frame the child did not take whole, back at the queue's head
        for the next child (as far as room allows; the oldest are dropped)."""
        for message, size in reversed(self._in_pipe):
            self._queue.appendleft((message, size))
            self._queued_bytes += size
        self._in_pipe, self._in_pipe_kept = [], 0
        self._drop_oldest()

    def _drop_oldest(self, count: int = 0, size: int = 0) -> None:
        """Drop the oldest messages, counted (and said), until *count* more of *size* bytes fit."""
        dropped = 0
        while self._queue and (
            len(self._queue) + count > self.capacity or self._queued_bytes + size > self.capacity_bytes
        ):
            self._queued_bytes -= self._queue.popleft()[1]
            dropped += 1
        if dropped:
            self.dropped += dropped
            self._drops_said.dropped(dropped, self.capacity, self.capacity_bytes)

    async def _read_status(self, stdout: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in stdout:
            *lines, pending = (pending + chunk).split(b"\n")
            if lines and lines[-1]:
                try:
                    report = json.loads(lines[-1])
                    if isinstance(report, dict) and isinstance(report.get("error"), str):
                        self._child_error = report["error"]  # why it is about to end
                        continue
                    sinks, received = dict(report["sinks"]), int(report["received"])
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("sink process: a status line that is not one (%s): %.200r", exc, lines[-1])
                    continue
                self.sink_status = sinks
                if self._handed_before + received != self.received:
                    self._took_at = time.monotonic()
                self.received = self._handed_before + received
                if all(sink.get("state") == "connected" for sink in sinks.values()):
                    self.recovering = False


def _frame(data: bytes) -> bytes:
    return FRAME.pack(len(data)) + data


def _pickled(messages: list[tuple[str, Any]]) -> tuple[int, bytes]:
    """How many of *messages* are kept, and they pickled: one that cannot be (a reply
    holding something odd) is logged and left out rather than costing the others."""
    try:
        return len(messages), pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        kept = []
        for message in messages:
            try:
                pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                body = message[1]
                log.error(
                    "sink process: a %s message left out: %s",
                    message[0],
                    exc,
                    extra={"correlation_id": body[1] if isinstance(body, tuple) else None},
                )
            else:
                kept.append(message)
        return len(kept), pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)


class _FramePipe:
    """The write end of the child's stdin. A frame is written in as many writes as the
    pipe takes; what a cancellation leaves unwritten stays here, for the next
    :meth:`drain`. A child that reads slowly only makes the writer wait (the sessions
    never do: they queue, and the queue drops its oldest)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.unsent = memoryview(b"")

    def add(self, frame: bytes) -> None:
        assert not self.unsent
        self.unsent = memoryview(frame)

    async def drain(self) -> None:
        while self.unsent:
            try:
                written = os.write(self.fd, self.unsent)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            except OSError as exc:  # EPIPE: the child is gone
                raise _ChildGone(f"its stdin is closed ({exc.strerror})") from exc
            self.unsent = self.unsent[written:]

    def close(self) -> None:
        os.close(self.fd)


@asynccontextmanager
async def sink_process(plan: SinkPlan) -> AsyncIterator[SinkProcess]:
    """A :class:`SinkProcess` with its child task running while the body runs."""
    sinks = SinkProcess(plan)
    async with trio.open_nursery() as nursery:
        await nursery.start(sinks.run)
        try:
            yield sinks
        finally:
            nursery.cancel_scope.cancel()


# -- the child ----------------------------------------------------------------------------


class _Frames:
    """Frames off a stream, one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def next(self) -> bytes | None:
        """The next frame; None at the end of the stream (a frame cut short is dropped)."""
        while True:
            if len(self.buffer) >= FRAME.size:
                (size,) = FRAME.unpack_from(self.buffer)
                if len(self.buffer) >= FRAME.size + size:
                    data = bytes(self.buffer[FRAME.size : FRAME.size + size])
                    del self.buffer[: FRAME.size + size]
                    return data
            chunk = await self.stream.receive_some(READ_BYTES)
            if not chunk:
                if self.buffer:
                    log.error(
                        "sink process: the last frame was cut short (%d bytes); dropped", len(self.buffer)
                    )
                return None
            self.buffer += chunk


async def _report(sinks: LocalSinks, taken: list[int], stdout: trio.abc.SendStream) -> None:
    """The sinks' status to the server at each change, until nobody reads it (a server
    killed outright: the child still delivers what it holds, then ends)."""
    last = None
    while True:
        status = json.dumps({"sinks": sinks.status(), "received": taken[0]})
        if status != last:
            try:
                await stdout.send_all(status.encode() + b"\n")
            except trio.BrokenResourceError:
                return
            last = status
        await trio.sleep(REPORT_EVERY)


def _deliver(sinks: LocalSinks, messages: list[tuple[str, Any]]) -> None:
    for kind, body in messages:
        if kind == "godot":
            if sinks.godot is not None:
                sinks.godot.emit(body)
        elif sinks.observer is not None:
            record = CallRecord(*body)
            if kind == "started":
                sinks.observer.call_started(record)
            else:
                sinks.observer.call_finished(record)


async def serve_sinks() -> None:
    """The child's life: the plan, then messages until stdin ends."""
    frames = _Frames(trio.lowlevel.FdStream(os.dup(0)))
    first = await frames.next()
    if first is None:
        return  # the server went before it said anything
    plan: SinkPlan = pickle.loads(first)
    from horace import logs

    logs.configure(plan.log_level)
    reports = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to the log, not into the status lines
    async with trio.lowlevel.FdStream(reports) as stdout:
        try:
            # A database of the turns' own is made and migrated as needed; the catalog's
            # never is from here (the server did that): were it replaced under the server
            # by an empty one, Horace's tables made there would make it look a catalog.
            own = plan.settings.conversations_url is not None
            talks = (
                None
                if plan.talks_url is None
                else functools.partial(
                    open_backend,
                    plan.talks_url,
                    migrate=own,
                    create=own,
                    connections=TURNS_CONNECTIONS,
                    application_name=TURNS_APPLICATION,
                )
            )
            async with (
                run_sinks(plan.settings, talks, plan.spool_dir) as sinks,
                trio.open_nursery() as nursery,
            ):
                taken = [0]  # messages taken in
                nursery.start_soon(_report, sinks, taken, stdout)
                while (data := await frames.next()) is not None:
                    messages = pickle.loads(data)
                    _deliver(sinks, messages)
                    taken[0] += len(messages)
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # said to the server too, for /health (and raised on)
            failure = the_failure(exc)
            line = json.dumps({"error": f"{type(failure).__name__}: {failure}"}) + "\n"
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stdout.send_all(line.encode())
            raise


# What keeps the sinks from starting, said in one line (the server starts another child).
_EXPECTED = (BackendUnavailable, CatalogMissing, CatalogUnwritable, UnusableURL, OSError)


def main() -> None:
    from horace import logs

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure("WARNING")  # until the plan gives the server's level
    try:
        trio.run(serve_sinks)
    except BaseException as exc:
        failure = the_failure(exc)
        expected = isinstance(failure, _EXPECTED)
        log.error("sink process: %s: %s", type(failure).__name__, failure, exc_info=not expected)
        sys.exit(1)
