"""A supervised log sink: a bounded queue in front, a child task that delivers it.

``emit`` never blocks and never raises into its caller: when the queue is full (in
entries, or in bytes: a conversation turn holds a whole request or reply) the oldest
entries are dropped and counted. The delivery task opens the transport, hands it
batches, and on any failure waits (about 1 s doubling to 30 s, with jitter) and starts
over; entries are only taken off the queue once delivered. A batch is gathered for up
to ``linger`` seconds (until it is full) before it goes: many entries a write and a
transaction, rather than one each, when calls come fast. On shutdown what is queued
gets ``flush_seconds`` to go out, and the rest is spilled to
``<root>/.horace/spool/<name>.jsonl``, replayed the next time the sink starts.

Several processes may share one spool (a server and ``horace mcp`` sessions on one
store): spilling and replaying take ``<name>.lock`` (``flock``), so that a spill never
lands in a spool another process is taking in and about to remove.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import trio

from horace.redact import redact, redact_text
from horace.storage import PRIVATE_FOLDER_MODE
from horace.supervise import backoff

# The sinks' own log never feeds a sink (see horace.sinks.godot.GodotLogHandler).
log = logging.getLogger("horace.sinks")

POISON_STRIKES = 3
# Entries waiting this long with nothing delivered: the sink is not ok (/health degraded),
# connected or not (a destination that takes the connection and never answers).
STALLED_SECONDS = 15.0
SPOOL_LOCK_POLL = 0.02  # seconds between tries of a spool lock another process holds
# A batch carries at most this much (but always one entry): a driver encodes a batch
# whole, and turns can be megabytes each.
BATCH_BYTES = 1024 * 1024

# Delivers a batch or raises; says how many of its entries the destination refused (an
# answer that retrying would not change: counted, not sent again).
# Delivers a batch, and says how many of its entries the destination refused (not to be
# retried); or raises. An empty batch, given when nothing was queued for IDLE_EVERY seconds,
# delivers nothing: the transport keeps its connection alive (answers what the destination
# sent meanwhile: a WebSocket's pings).
Deliver = Callable[[list[dict[str, Any]]], Awaitable[int]]
IDLE_EVERY = 5.0
DROPS_SAID_EVERY = 10.0  # seconds: a queue that overflows on and on says so this often at most


class DropsSaid:
    """The entries a full queue dropped, said in a warning with their count at most every
    DROPS_SAID_EVERY seconds: the log losing entries (conversation turns, say, when many
    large replies come at once) must not pass in silence, nor flood the log in turn."""

    def __init__(self, whose: str) -> None:
        self.whose = whose
        self._unsaid = 0
        self._capacity = (0, 0)  # (entries, bytes): the queue's, as the last drop said
        self._next_at = float("-inf")

    def dropped(self, count: int, capacity: int, capacity_bytes: int) -> None:
        self._unsaid += count
        self._capacity = (capacity, capacity_bytes)
        self.say_due()

    def say_due(self) -> None:
        """Say the drops not yet said, if the time has come (the queue's owner calls this
        as it goes on, so that the drops after a warning are said too)."""
        if time.monotonic() >= self._next_at:
            self.say()

    def say(self) -> None:
        """Say the drops not yet said, now (as the queue stops)."""
        if not self._unsaid:
            return
        log.warning(
            "%s: its queue is full (at most %d entries and %d bytes: HORACE_SINK_QUEUE, "
            "HORACE_SINK_QUEUE_BYTES): dropped %d, the oldest first",
            self.whose,
            *self._capacity,
            self._unsaid,
        )
        self._unsaid = 0
        self._next_at = time.monotonic() + DROPS_SAID_EVERY


_SCALARS = frozenset({int, float, bool, type(None)})


def entry_size(entry: Any) -> int:
    """About how many bytes *entry* holds: its strings' lengths, plus a little for
    everything else. Entries are small dicts; what makes one big is a long string."""
    size = 0
    stack = [entry]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            size += 8 * len(item)
            for key, value in item.items():
                size += len(key) if type(key) is str else 8
                inner = type(value)
                if inner is str:
                    size += len(value)
                elif inner in _SCALARS:
                    size += 8
                else:
                    stack.append(value)
        elif kind is str or isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            size += 8 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            size += 8 * len(item)
            stack.extend(item)
        else:
            size += 8
    return size


ID_BYTES = 48  # a file id in a list, as entry_size counts it, and a little more


def size_of(*texts: str, ids: int = 0, fixed: int) -> int:
    """About what :func:`entry_size` counts of an entry whose growing parts are *texts*
    and a list of *ids* ids, *fixed* bytes for the rest: for a caller that knows its
    entry's shape (entry_size walks all of it)."""
    return sum(map(len, texts)) + ID_BYTES * ids + fixed


class Emitter(Protocol):
    def emit(self, entry: dict[str, Any], size: int | None = None) -> None:
        """Queue *entry* for the sink; never blocks, never raises."""


class Transport(Protocol):
    name: str
    # The spool file's name (less .jsonl): what is spilled for one destination is replayed
    # only by a sink with the same one.
    spool_name: str
    # What the destination said of the first entry it refused in the last batch it refused
    # any of (read only then).
    refusal: str | None

    def open(self) -> AbstractAsyncContextManager[Deliver]:
        """Connect; yield a function that delivers one batch or raises."""


class SinkRunner:
    def __init__(
        self,
        transport: Transport,
        *,
        spool_dir: Path | None,
        capacity: int = 10_000,
        capacity_bytes: int = 32 * 1024 * 1024,
        batch_size: int = 200,
        linger: float = 0.0,
        flush_seconds: float = 5.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
    ) -> None:
        self.transport = transport
        self.name = transport.name
        self.spool_path = spool_dir / f"{transport.spool_name}.jsonl" if spool_dir else None
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self._queued_bytes = 0
        self.batch_size = batch_size
        # After a failed delivery the next batch is half as long (down to 1), then grows
        # back: a batch too long for one connection's life would otherwise never get out.
        self._batch_limit = batch_size
        self.linger = linger
        self._wake_at = 1  # queued entries that wake the delivery task (a full batch when lingering)
        self._in_flight = 0
        self._strikes = 0
        self.flush_seconds = flush_seconds
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self._queue: deque[tuple[int, dict[str, Any], int]] = deque()  # (sequence, entry, size)
        self._seq = 0
        self._progress_at = 0.0  # when the queue last got entries to an empty queue, or delivered
        # The replay file stays until the entries taken from it have left the queue (or a
        # spill holds them): a shutdown that cannot spill then still finds them there.
        self._replaying: Path | None = None
        self._replayed_through = 0  # the last sequence number they were given
        self._ready = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None  # (the run, for other threads)
        self.state = "starting"
        self.delivered = 0
        self.refused = 0  # of those delivered, refused by the destination
        self.dropped = 0
        self._drops_said = DropsSaid(f"sink {self.name}")
        self.spilled = 0
        self.replayed = 0
        self.restarts = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # (time.time(): when last_error was said)

    def _said(self, error: str) -> None:
        # (Shown in /health, which may be open to all: a sink's URL in it loses its password.)
        self.last_error, self.last_error_at = redact_text(error), time.time()

    # -- the caller's side ------------------------------------------------------------

    def emit(self, entry: dict[str, Any], size: int | None = None) -> None:
        """Queue *entry*; never blocks, never raises. The newest entry is always kept.
        *size*: about how many bytes it holds, from a caller that knows it for less than
        :func:`entry_size` costs (a walk of the whole entry, a good part of a call's log).
        From another thread (a log record made on a worker thread) it is queued by the
        Trio thread, soon: a Trio event may only be set there."""
        if not trio.lowlevel.in_trio_run():
            queue_from_thread(self._token, self.emit, entry, self)
            return
        if size is None:
            size = entry_size(entry)
        if not self._queue:
            self._progress_at = trio.current_time()
        dropped = 0
        while self._queue and (
            len(self._queue) >= self.capacity or self._queued_bytes + size > self.capacity_bytes
        ):
            self._take_oldest()
            dropped += 1
        if dropped:
            self.dropped += dropped
            self._drops_said.dropped(dropped, self.capacity, self.capacity_bytes)
        self._seq += 1
        self._queue.append((self._seq, entry, size))
        self._queued_bytes += size
        if len(self._queue) >= self._wake_at or self._queued_bytes >= BATCH_BYTES:
            self._ready.set()

    def _take_oldest(self) -> dict[str, Any]:
        _, entry, size = self._queue.popleft()
        self._queued_bytes -= size
        return entry

    def stalled(self) -> float:
        """Seconds the oldest queued entries have waited with nothing delivered (0: none wait)."""
        return trio.current_time() - self._progress_at if self._queue else 0.0

    def status(self) -> dict[str, Any]:
        stalled = self.stalled()
        return {
            # Not ok while it cannot deliver (retrying), its destination refuses all it is
            # given (refusing), or entries wait with nothing delivered (a destination hung).
            # (Entries gathered into a batch wait HORACE_SINK_LINGER on purpose.)
            "ok": self.state not in ("retrying", "refusing") and stalled < STALLED_SECONDS + self.linger,
            "state": self.state,
            "queued": len(self._queue),
            "queued_bytes": self._queued_bytes,
            "stalled_s": round(stalled, 1),
            "delivered": self.delivered,
            "refused": self.refused,
            "dropped": self.dropped,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": _moment(self.last_error_at),
        }

    # -- the child task ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; then flush within the deadline and spill the rest."""
        self._token = trio.lowlevel.current_trio_token()
        await self._replay()
        task_status.started()
        try:
            while True:
                try:
                    await self._connected()
                except Exception as exc:  # every failure: log it, back off, start again
                    self.failures += 1
                    if (
                        self._in_flight == 1
                        and self.state == "connected"
                        and not isinstance(exc, DestinationDown)
                    ):
                        self._strike_single_entry()
                    if self._in_flight:
                        self._batch_limit = max(1, self._in_flight // 2)
                        self._in_flight = 0
                    self.state = "retrying"
                    self._said(f"{type(exc).__name__}: {exc}")
                    unexpected = not isinstance(
                        exc, OSError | ConnectionError | TimeoutError | SinkUnavailable
                    )
                    if unexpected:
                        self.restarts += 1
                    log.warning(
                        "sink %s: %s; retrying (%d queued)",
                        self.name,
                        self.last_error,
                        len(self._queue),
                        exc_info=unexpected,
                        extra={"sink": self.name},
                    )
                    await trio.sleep(backoff(self.failures, self.backoff_base, self.backoff_cap))
                    self._drops_said.say_due()
        finally:
            with trio.move_on_after(self.flush_seconds) as flush:
                flush.shield = True
                await self._flush()
            with trio.CancelScope(shield=True):  # the spool lock is waited for, cancelled or not
                await self._spill()
            self._drops_said.say()
            self.state = "stopped"

    def _strike_single_entry(self) -> None:
        """A lone entry failed on a working connection: after a few strikes it is the
        entry (too large, unacceptable), not the destination. Drop it, loudly."""
        self._strikes += 1
        if self._strikes < POISON_STRIKES or not self._queue:
            return
        self._strikes = 0
        entry = self._take_oldest()
        self.dropped += 1
        log.error(
            "sink %s: dropped an entry refused %d times: %.200s",
            self.name,
            POISON_STRIKES,
            json.dumps(entry, default=str),
            extra={"sink": self.name},
        )

    async def _connected(self) -> None:
        async with self.transport.open() as deliver:
            self.state = "connected"
            self.failures = 0
            while True:
                await self._deliver_one(deliver, self.linger)

    async def _deliver_one(self, deliver: Deliver, linger: float = 0.0) -> None:
        self._drops_said.say_due()
        while not self._queue:
            self._ready = trio.Event()
            with trio.move_on_after(IDLE_EVERY) as idle:
                await self._ready.wait()
            if idle.cancelled_caught:
                self._drops_said.say_due()
                await deliver([])  # (see Deliver)
        if linger and len(self._queue) < self._batch_limit and self._queued_bytes < BATCH_BYTES:
            with trio.move_on_after(linger):  # gather a batch (emit wakes us when it is full)
                self._wake_at = self._batch_limit
                self._ready = trio.Event()
                try:
                    await self._ready.wait()
                finally:
                    self._wake_at = 1
        taken = [self._queue[0]]
        size = taken[0][2]
        for queued in itertools.islice(self._queue, 1, self._batch_limit):
            size += queued[2]
            if size > BATCH_BYTES:
                break
            taken.append(queued)
        batch = [entry for _, entry, _ in taken]
        last = taken[-1][0]
        self._in_flight = len(batch)
        refused = await deliver(batch)
        self._in_flight = 0
        self._progress_at = trio.current_time()
        self.refused += refused
        self.state = "refusing" if refused == len(batch) else "connected"
        if refused:
            self._said(f"refused {refused} of {len(batch)} entries: {self.transport.refusal}")
        self._strikes = 0
        self._batch_limit = min(self.batch_size, self._batch_limit * 2)
        # Entries dropped for overflow while the batch was out were the oldest, and are
        # counted as dropped: what is still queued up to the batch's last sequence number
        # is what this delivery took off the queue (delivered + dropped = emitted).
        while self._queue and self._queue[0][0] <= last:
            self._take_oldest()
            self.delivered += 1
        self._forget_replay_once_out()

    def _forget_replay_once_out(self) -> None:
        if self._replaying is not None and (not self._queue or self._queue[0][0] > self._replayed_through):
            self._replaying.unlink(missing_ok=True)  # (a few bytes of metadata: no thread)
            self._replaying = None

    async def _flush(self) -> None:
        if not self._queue:
            return
        try:
            async with self.transport.open() as deliver:
                while self._queue:
                    await self._deliver_one(deliver)
        except Exception as exc:  # what does not go out now is spilled by the caller
            log.warning("sink %s: flush at shutdown failed: %s", self.name, exc, extra={"sink": self.name})

    # -- spool ------------------------------------------------------------------------

    async def _spill(self) -> None:
        self._forget_replay_once_out()
        if not self._queue:
            return
        if self.spool_path is None:
            log.error("sink %s: %d entries lost at shutdown (no spool)", self.name, len(self._queue))
            return
        text = "".join(json.dumps(entry, default=str) + "\n" for _, entry, _ in self._queue)
        try:
            async with _spool_locked(self.spool_path):
                await trio.to_thread.run_sync(_append, self.spool_path, text)
        except OSError as exc:  # a full disk, say: the spool is as it was
            self.dropped += len(self._queue)
            log.error(
                "sink %s: %d entries lost at shutdown: the spool %s could not take them (%s)",
                self.name,
                len(self._queue),
                self.spool_path,
                exc,
            )
            return
        self.spilled += len(self._queue)
        log.warning("sink %s: spilled %d entries to %s", self.name, len(self._queue), self.spool_path)
        self._queue.clear()
        self._queued_bytes = 0
        self._forget_replay_once_out()  # (what was left of it is in the spool now)

    async def _replay(self) -> None:
        if self.spool_path is None:
            return
        replaying = self.spool_path.with_suffix(".replaying")
        if not await trio.Path(self.spool_path).exists() and not await trio.Path(replaying).exists():
            return  # nothing to take in (a spill landing now waits for the next start, as ever)
        try:
            async with _spool_locked(self.spool_path):
                lines = await trio.to_thread.run_sync(_take_in, self.spool_path, replaying)
                self._take_back(lines, replaying)
        except OSError as exc:  # (a spool folder gone read-only): the sink runs without it
            self._said(f"the spool {self.spool_path} could not be replayed: {exc}")
            log.error("sink %s: %s; it is left for the next start", self.name, self.last_error)

    def _take_back(self, lines: list[bytes], replaying: Path) -> None:
        """The spool's entries queued ahead of what was emitted meanwhile. A line that is
        no JSON object (damaged on disk, edited by hand) is skipped and counted as dropped:
        one bad line never costs the others, nor the sink."""
        entries = []
        skipped: list[int] = []
        for number, line in enumerate(lines, 1):
            try:
                # (NaN and Infinity are no JSON: a sink would send them on as they are.)
                entry = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
                # Redacted again: the spool is a file anyone with the store's rights may
                # have written to (what Horace spilled was redacted already, and stays so).
                entry = redact(entry) if isinstance(entry, dict) else None
            except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
                entry = None  # (nested too deep for the redaction, too)
            if entry is not None:
                entries.append(entry)
            elif line.strip():
                skipped.append(number)
        if skipped:
            self.dropped += len(skipped)
            log.error(
                "sink %s: %d spool lines are not JSON objects (line %s%s); skipped",
                self.name,
                len(skipped),
                ", ".join(map(str, skipped[:5])),
                ", ..." if len(skipped) > 5 else "",
            )
        queued = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        for entry in entries:
            self.emit(entry)
        self._replaying, self._replayed_through = replaying, self._seq
        for _, entry, _ in queued:
            self.emit(entry)
        self.replayed += len(entries)
        # Back in memory; the file goes once they are delivered, or spilled again.
        self._forget_replay_once_out()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON value")


@asynccontextmanager
async def _spool_locked(spool_path: Path) -> AsyncIterator[None]:
    """Hold a spool's lock against other processes. Its holders only read, append or
    rename a file under it: the wait is short. Polled (LOCK_NB), so that the Trio thread
    never blocks in flock."""
    fd = await trio.to_thread.run_sync(_open_lock, spool_path.with_suffix(".lock"))
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await trio.sleep(SPOOL_LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int:
    # The spool's folder alone is made, never the folders above it: gone, the store was
    # moved or removed, and what would be spilled there would be lost to it anyway (said).
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(PRIVATE_FOLDER_MODE)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)


def _append(path: Path, text: str) -> None:
    """Append *text* whole, or not at all (a write cut short is cut off again, so that no
    torn line is left for the next append to run into)."""
    data = memoryview(text.encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        before = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except BaseException:
            os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)


def _take_in(spool_path: Path, replaying: Path) -> list[bytes]:
    """The lines to replay: the spool moved into the replay file, which may already hold
    what a process that died while replaying left (a live one would hold the lock). A
    symlink in their place is none of Horace's making: removed, its target not read."""
    for path in (spool_path, replaying):
        if path.is_symlink():
            log.error("the spool file %s is a symlink: removed, not read", path)
            path.unlink()
    if spool_path.exists():
        held = _read(replaying)
        with replaying.open("ab") as merged:
            if held and not held.endswith(b"\n"):
                merged.write(b"\n")  # a torn last line stays one line, the next its own
            merged.write(_read(spool_path))
        spool_path.unlink()
    return _read(replaying).splitlines()


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    with os.fdopen(fd, "rb") as file:
        return file.read()


class _Dropping(Protocol):
    dropped: int


def queue_from_thread(
    token: trio.lowlevel.TrioToken | None,
    emit: Callable[[dict[str, Any]], None],
    entry: Any,
    queue: _Dropping,
) -> None:
    """Have the Trio thread of *token* run ``emit(entry)``; an entry with no run to take
    it (not started, or over) is counted as dropped by *queue*."""
    if token is not None:
        try:
            token.run_sync_soon(emit, entry)
            return
        except trio.RunFinishedError:
            pass
    queue.dropped += 1


class SinkUnavailable(Exception):
    """The destination refused or could not take a batch; retried with backoff."""


class DestinationDown(SinkUnavailable):
    """The destination can take nothing now (its disk full, read-only, unreachable): no
    entry is to blame, and none is dropped as refused, however often it is tried."""


def _moment(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
