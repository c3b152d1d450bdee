"""Observing tool calls: what the log sinks and Horace's own log learn of each.

The session tells an :class:`Observer` when a call starts and when it ends (the
conversation log turns them into turns); :class:`CallWatch` does that bookkeeping for
one call and writes its log line, so that the session itself only answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import attrs

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


class CallWatch:
    """One tools/call, from its request turn to its response turn (none when the client
    cancelled it): the observer is told both, and the outcome is logged once."""

    def __init__(self, observer: Observer, record: CallRecord) -> None:
        self.observer = observer
        self.record = record
        self.started = time.perf_counter()
        self.reply: Any = None
        self.error_code: str | None = None
        observer.call_started(record)

    def answered(self, reply: Any, error_code: str | None = None) -> None:
        """The reply (a tool result, or {"error": ...}) and, for a failure, its code."""
        self.reply, self.error_code = reply, error_code

    def finish(self, response_turn: int) -> None:
        """*response_turn*: 0 when no response goes out (cancelled by the client)."""
        timing = (time.perf_counter() - self.started) * 1000
        observed = not isinstance(self.observer, NoObserver)
        logged = log.isEnabledFor(logging.INFO)
        file_ids: tuple[str, ...] = ()
        if isinstance(self.reply, dict) and (observed or logged):
            file_ids = tuple(file_ids_of(self.reply.get("structuredContent")))
        answered = response_turn != 0
        self.observer.call_finished(
            attrs.evolve(
                self.record,
                response_turn=response_turn,
                result=self.reply if answered else None,
                error_code=self.error_code,
                timing_ms=timing,
                file_ids=file_ids,
            )
        )
        if logged:
            outcome = self.error_code or ("ok" if answered else "cancelled")
            log.info(
                "tools/call %s %s in %.1f ms",
                self.record.tool,
                outcome,
                timing,
                extra={
                    "correlation_id": self.record.correlation_id,
                    "tool": self.record.tool,
                    "file_ids": list(file_ids),
                    "conversation_id": self.record.conversation_id,
                    "duration_ms": round(timing, 3),
                    "outcome": outcome,
                },
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
