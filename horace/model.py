"""The values of the catalog's edges, and the errors with their codes.

Everything here is frozen. The rows a catalog stores and the queries it answers are the
backends' vocabulary and live with their protocol (``horace.backends.records``); what is
here belongs to Horace above them: the errors callers see, what a caller says of a file it
registers, a page of search results with its cursor, and what the MCP session tells the
log sinks of a call.
"""

import enum
import errno
import time
from collections.abc import Mapping
from typing import Any

import attrs
from attrs import frozen

from horace.backends.records import FileRecord


class ErrorCode(enum.StrEnum):
    INVALID_PATH = "INVALID_PATH"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    NOT_CATALOGED = "NOT_CATALOGED"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    COLLECTION_NOT_FOUND = "COLLECTION_NOT_FOUND"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FILE_LOCKED = "FILE_LOCKED"
    STORAGE_FULL = "STORAGE_FULL"
    STORAGE_ERROR = "STORAGE_ERROR"  # read-only, not Horace's to write, failing (I/O errors)
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    INTERNAL = "INTERNAL"


class HoraceError(Exception):
    """A failure that belongs to the operation (bad path, unknown id, ...), not a bug."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"HoraceError({self.code.value}, {self.message!r})"


class RepliesLost(Exception):
    """Replies could not be written to stdout (a full disk, an I/O error: not a client that
    closed its end, which ends a stdio session as it should)."""


class CannotListen(Exception):
    """The server cannot listen where it was told: the port is taken, the address is not
    this host's, or the host name does not resolve."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.in_use = cause.errno == errno.EADDRINUSE
        hint = " (another server is there: choose another --port)" if self.in_use else ""
        super().__init__(f"cannot listen on {host}:{port}: {cause.strerror or cause}{hint}")


@frozen
class NewFile:
    """What a caller says about a file it registers."""

    owner: str | None = None
    purpose: str | None = None
    tags: tuple[str, ...] = ()
    collection: str | None = None
    custom: Mapping[str, Any] = attrs.field(factory=dict)


@frozen
class SearchPage:
    total_count: int
    results: tuple[FileRecord, ...]
    limit: int
    offset: int
    next_cursor: str | None


@frozen
class CallRecord:
    """What the MCP session tells its observer about one tools/call (for the log sinks)."""

    conversation_id: str
    correlation_id: str
    tool: str
    arguments: Any
    request_turn: int
    response_turn: int = 0  # 0: no response (cancelled by the client)
    result: Any = None
    error_code: str | None = None
    timing_ms: float = 0.0
    file_ids: tuple[str, ...] = ()
    result_json: str | None = None  # the result as the reply carries it (JSON text), when made
    # When the call started (its request record) or ended (the record it ends with): the
    # turn's time, also when a sink in another process makes the turn later.
    at: float = attrs.field(factory=time.time)
    # The request turn's content, made (and cut) where the call ran instead of from
    # *arguments* in the sink: for a request too big to hand over as objects.
    request_json: str | None = None
