"""Observing tool calls: what the log sinks and Horace's own log learn of each.

The session tells an :class:`Observer` when a call starts and when it ends (the
conversation log turns them into turns, the Godot sink logs each call); :class:`CallWatch`
does that bookkeeping for one call and writes its log line, so that the session itself
only answers.

A sink that observes calls (:attr:`Observer.logs_calls`) gets each call's log line from
the observer, made straight from the call's record: the line goes to Horace's own log
(a ``logging`` record) only when a handler there other than such a sink's takes it. A
record costs more than the rest of the bookkeeping together, and the sink would only
take it apart again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from horace.logs import CALL_LINE, OBSERVED, call_line_data
from horace.model import CallRecord

log = logging.getLogger("horace.server")


class Observer(Protocol):
    def call_started(self, record: CallRecord) -> None: ...
    def call_finished(self, record: CallRecord) -> None: ...


class NoObserver:
    def call_started(self, record: CallRecord) -> None:
        return None

    def call_finished(self, record: CallRecord) -> None:
        return None


class Observers:
    """Several observers, told in turn."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def call_started(self, record: CallRecord) -> None:
        for observer in self.observers:
            observer.call_started(record)

    def call_finished(self, record: CallRecord) -> None:
        for observer in self.observers:
            observer.call_finished(record)


def logged_elsewhere(logger: logging.Logger, level: int) -> bool:
    """Would a handler that does not observe calls take a record of *level* from
    *logger*? (Walks the handlers as ``Logger.callHandlers`` would.)"""
    if not logger.isEnabledFor(level):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level >= handler.level and not getattr(handler, "observes_calls", False):
                return True
        current = current.parent if current.propagate else None
    return False


class CallWatch:
    """One tools/call, from its request turn to its response turn (none when the client
    cancelled it): the observer is told both, and the outcome is logged once."""

    def __init__(self, observer: Observer, record: CallRecord) -> None:
        self.observer = observer
        self.record = record
        self.started = time.perf_counter()
        self.reply: Any = None
        self.reply_json: str | None = None
        self.error_code: str | None = None
        observer.call_started(record)

    def answered(self, reply: Any, error_code: str | None = None, reply_json: str | None = None) -> None:
        """The reply (a tool result, or {"error": ...}), for a failure its code, and the
        reply's JSON text when it has been made (so that nobody makes it again)."""
        self.reply, self.error_code, self.reply_json = reply, error_code, reply_json

    def finish(self, response_turn: int) -> None:
        """*response_turn*: 0 when no response goes out (cancelled by the client)."""
        timing = (time.perf_counter() - self.started) * 1000
        observed = not isinstance(self.observer, NoObserver)
        logged = logged_elsewhere(log, logging.INFO)
        file_ids: tuple[str, ...] = ()
        if isinstance(self.reply, dict) and (observed or logged):
            file_ids = tuple(file_ids_of(self.reply.get("structuredContent")))
        answered = response_turn != 0
        given = self.record
        record = CallRecord(
            given.conversation_id,
            given.correlation_id,
            given.tool,
            None,  # (the request turn had them: the end needs none, and they may be big)
            given.request_turn,
            response_turn=response_turn,
            result=self.reply if answered else None,
            error_code=self.error_code,
            timing_ms=timing,
            file_ids=file_ids,
            result_json=self.reply_json if answered else None,
        )
        if observed:
            self.observer.call_finished(record)
        if logged:
            data = call_line_data(record)
            log.info(
                CALL_LINE,
                record.tool,
                data["outcome"],
                timing,
                extra={"correlation_id": record.correlation_id, **data, OBSERVED: True},
            )


def file_ids_of(structured: Any) -> list[str]:
    """The ids of the files a result speaks of (for the logs and conversation turns)."""
    found: list[str] = []
    if isinstance(structured, dict):
        if isinstance(structured.get("file_id"), str):
            found.append(structured["file_id"])
        if isinstance(structured.get("file"), dict) and isinstance(structured["file"].get("id"), str):
            found.append(structured["file"]["id"])
        for key in ("results", "files"):
            for item in structured.get(key) or ():
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    found.append(item["id"])
        for group in structured.get("groups") or ():
            found += file_ids_of(group)
    return list(dict.fromkeys(found))
