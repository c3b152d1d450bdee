"""Horace's own structured log: one JSON object per line on stderr.

Fields passed with ``extra=`` (correlation_id, tool, file_ids, ...) become keys of the
line; the sinks (Godot, conversations) are fed separately, from ``horace.sinks``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from horace.model import CallRecord
from horace.redact import redact, redact_text

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object a record, secrets redacted (``horace.redact``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        extras = {
            k: v
            for k, v in record.__dict__.items()
            if k not in _STANDARD and v is not None and not k.startswith("_")  # (_: markers)
        }
        if extras:
            line.update(redact(extras))
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


# The correlation id of the tool call a task (or a worker thread it started) runs for.
CALL_CORRELATION: ContextVar[str | None] = ContextVar("horace_call_correlation", default=None)


def of_the_call(record: logging.LogRecord) -> bool:
    """A handler's filter: a record made while a tool call runs carries the call's
    correlation id (stderr's ``correlation_id``, Godot's ``trace_id``), unless it names one."""
    if getattr(record, "correlation_id", None) is None:
        called = CALL_CORRELATION.get()
        if called is not None:
            record.correlation_id = called
    return True


@contextmanager
def calling(correlation_id: str) -> Iterator[None]:
    """Within: the tool call *correlation_id* runs (see :func:`of_the_call`)."""
    token = CALL_CORRELATION.set(correlation_id)
    try:
        yield
    finally:
        CALL_CORRELATION.reset(token)


def one_line(record: logging.LogRecord) -> bool:
    """asyncpg's pool logs each retry of its connections during an outage with a whole
    traceback (every few seconds, on every process): the error's line is what matters."""
    if record.exc_info and record.exc_info[1] is not None and record.name.startswith("asyncpg"):
        error = record.exc_info[1]
        record.msg, record.args = f"{record.getMessage()}: {type(error).__name__}: {error}", None
        record.exc_info = record.exc_text = None
    return True


class ThrottledLog:
    """Warnings of one kind, at most *burst* of them an *interval*: the rest are counted,
    and the count is logged (*more*, formatted with ``count`` and ``seconds``) once the
    interval is over, before the next warning or at :meth:`flush`. A storm (refused
    connections, a tree whose files all gained a second link) must not become a storm of
    log lines, each of which also goes to the sinks. On the monotonic clock: any thread
    may log through it."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float,
        burst: int = 1,
        more: str = "{count} more like the last in {seconds:.0f} s, not logged one by one",
    ) -> None:
        self.logger, self.interval, self.burst, self.more = logger, interval, burst, more
        self.started = -math.inf  # (monotonic) when this interval began
        self.logged = self.held_back = 0  # in this interval

    def warning(self, message: str, *args: Any, **extra: Any) -> None:
        if time.monotonic() - self.started >= self.interval:
            self.flush()
        if self.logged < self.burst:
            self.logged += 1
            self.logger.warning(message, *args, extra=extra)
        else:
            self.held_back += 1

    def flush(self) -> None:
        """Say how many were held back; a new interval begins."""
        now = time.monotonic()
        if self.held_back:
            self.logger.warning(self.more.format(count=self.held_back, seconds=now - self.started))
        self.started, self.logged, self.held_back = now, 0, 0

    def seconds_left(self) -> float | None:
        """Until the count held back is due (None: nothing is held back)."""
        return self.started + self.interval - time.monotonic() if self.held_back else None


class OnceAWhile(logging.Filter):
    """A logger's records one per *interval* seconds, the first of each without its
    traceback and saying how many were left out before it. For trio's accept loop, which
    logs each failed accept with its traceback, ten times a second while the process is
    out of open files."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.last = -math.inf
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.left_out += 1
            return False
        self.last = now
        record.exc_info = record.exc_text = None
        if self.left_out:
            record.msg = f"{record.getMessage()} ({self.left_out} more like it left out)"
            record.args = None
            self.left_out = 0
        return True


ACCEPT_FAILURES_EVERY = 10.0  # seconds: see OnceAWhile


def warnings_to_the_log() -> None:
    """Python's warnings (a library's: asyncpg's of a password file others may read, say)
    as log records of one line, not as the two raw lines Python writes to stderr."""

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)

    warnings.showwarning = show


def configure(level: str = "INFO") -> None:
    warnings_to_the_log()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(one_line)
    handler.addFilter(of_the_call)
    handler.setLevel(level)  # a sink lowering the "horace" logger must not flood stderr
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    accepting = logging.getLogger("trio.serve_listeners")
    accepting.filters[:] = [OnceAWhile(ACCEPT_FAILURES_EVERY)]


# -- each tool call's line ---------------------------------------------------------------------

CALL_LINE = "tools/call %s %s in %.1f ms"  # each call's log line
OBSERVED = "_observed"  # on a call's log record: handlers that learn of calls otherwise skip it


def outcome_of(record: CallRecord) -> str:
    """What a finished call's log line says of it: ok, its error code, or cancelled."""
    return record.error_code or ("ok" if record.response_turn else "cancelled")


def call_line_data(record: CallRecord) -> dict[str, Any]:
    """The fields of a call's log line (``extra`` of its record), correlation id aside."""
    return {
        "tool": record.tool,
        "file_ids": list(record.file_ids),
        "conversation_id": record.conversation_id,
        "duration_ms": round(record.timing_ms, 3),
        "outcome": outcome_of(record),
    }
