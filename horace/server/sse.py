"""Server-sent events for Streamable HTTP: how an event is written, and the events of
one POST's answer, kept for a client whose connection is cut before its reply.

An answer streamed as SSE starts with a *priming* event (an id, empty data and a
``retry:`` field, whatever protocol version the request names): from then on the
client has an id to resume from. Then come the notifications the call sends (progress,
log messages), then its reply, and the stream ends. Event ids are ``<stream>-<n>``:
the stream's number in its session and the event's number in the stream (0 for the
priming event), so they are unique across a session's streams and say which stream a
``Last-Event-ID`` resumes. A stream keeps its events until a connection has written its
reply; a call cancelled by the client ends its stream without one.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

import trio

# Sent in the priming event: how long a client whose connection is cut waits before it
# resumes with GET and Last-Event-ID.
RETRY_MS = 1000
KEEPALIVE = b": keep-alive\n\n"  # a comment: keeps proxies from closing a quiet stream
# Notifications a stream keeps for a resume; past it the oldest go (progress is
# cumulative: the latest says it all). The reply is always kept.
MAX_KEPT_NOTIFICATIONS = 64

_EVENT_ID = re.compile(r"^([0-9]{1,18})-([0-9]{1,18})$")


def event(data: str, event_id: str | None = None, *, retry_ms: int | None = None) -> bytes:
    """One SSE event of type ``message``; *data* may span lines."""
    lines = [] if event_id is None else [f"id: {event_id}"]
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    lines.append("event: message")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def parse_event_id(text: str) -> tuple[int, int] | None:
    """(stream, n) from an event id of ours; None for anything else."""
    found = _EVENT_ID.match(text.strip())
    return (int(found[1]), int(found[2])) if found else None


class AnswerStream:
    """The events of one POST's answer: notifications as the call sends them, then its
    reply (none when the client cancelled the call), then the end.

    A connection writes them as they come (one at a time: a newer writer, a client that
    resumed, takes over from an older one). Counted among the session's replies not yet
    taken (``release`` gives that back) until a connection has written the reply, or the
    stream is dropped.
    """

    def __init__(self, number: int, *, resumable: bool) -> None:
        self.number = number
        self.resumable = resumable  # SSE: the client has its event ids (JSON: it has not)
        self._events: deque[tuple[int, str]] = deque()  # (n, JSON text), n from 1
        self._notifications = 0
        self.size = 0  # bytes of the events kept
        self._next = 1
        self.finished = False  # nothing more comes (the reply, if any, is in)
        self.replied = False
        self.delivered = False  # a connection wrote every event, the reply included
        self.writer: trio.CancelScope | None = None  # the connection writing it now
        self.release: Callable[[], None] = _nothing  # gives back the reply's bytes
        self._changed = trio.Event()

    def event_id(self, n: int) -> str:
        return f"{self.number}-{n}"

    @property
    def changed(self) -> trio.Event:
        """Set at the next change (an event added, the end): take it before looking."""
        return self._changed

    def add(self, message: str, *, reply: bool = False) -> None:
        self._events.append((self._next, message))
        self.size += len(message)
        self._next += 1
        if reply:
            self.replied = True
        else:
            self._notifications += 1
            if self._notifications > MAX_KEPT_NOTIFICATIONS:
                self._drop_oldest_notification()
        self._wake()

    def finish(self) -> None:
        self.finished = True
        self._wake()

    def after(self, n: int) -> list[tuple[int, str]]:
        """The events kept after event *n*, in order."""
        return [(number, text) for number, text in self._events if number > n]

    @property
    def last(self) -> int:
        """The number of the last event added (0: none yet)."""
        return self._next - 1

    def drop(self) -> None:
        """Nothing of it is kept any more: delivered, or given up."""
        self._events.clear()
        self.size = 0
        self.finished = True
        self.release()
        self.release = _nothing
        self._wake()

    def _drop_oldest_notification(self) -> None:
        # The reply is the last event added, never among the ones dropped.
        _, text = self._events.popleft()
        self.size -= len(text)
        self._notifications -= 1

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _nothing() -> None:
    return None
