"""Running one tool call: inside the cancel scope the session gives it (its deadline, the
client's cancel), in a nursery of its own (where its progress pump lives), with what it
raises turned into a tool error.

A call's work is the catalog's: lock, copy, checksum, shielded commit. Cancelled at any
point, it leaves the whole version or nothing; the runner only has to report it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio

from horace.backends.protocol import BackendUnavailable, CatalogUnwritable
from horace.catalog import outage_error
from horace.model import ErrorCode, HoraceError
from horace.server.jsonrpc import REPLY_TOO_LARGE, RpcError, bounded, json_size_at_least, notification_text
from horace.server.tools import CallContext, Tool
from horace.storage import STORAGE_ERRNOS, storage_refusal
from horace.wire import to_json

log = logging.getLogger("horace.server")

Send = Callable[[str], Awaitable[None]]


def tool_result(structured: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": json.dumps(structured)}],
        "structuredContent": structured,
        "isError": False,
    }


def tool_error(code: ErrorCode, message: str, correlation_id: str) -> dict[str, Any]:
    """A tool error: its body ``{error_code, message, correlation_id}`` as text content only.
    A tool's outputSchema describes its results, and clients that check structuredContent
    against it (the TypeScript SDK, the Inspector) do so for errors too."""
    body = {"error_code": code.value, "message": bounded(message), "correlation_id": correlation_id}
    return {"content": [{"type": "text", "text": json.dumps(body)}], "isError": True}


def error_body(reply: dict[str, Any]) -> dict[str, Any] | None:
    """The body of a tool error made by :func:`tool_error`; None for a result."""
    return json.loads(reply["content"][0]["text"]) if reply.get("isError") else None


# A change under way when the database's connection was lost: committed, or not.
IN_DOUBT = (
    "the change may or may not have been recorded before the connection was lost: look "
    "(horace_get_file_info) before calling again"
)

# What a client can do about a reply past the limit: ask for less, where it can.
ASK_FOR_LESS = "ask for less (e.g. a smaller limit) to see its result"
# resources/read has no smaller: a file's text, escaped as JSON (a control character takes
# six bytes), can pass the limit although the file is within HORACE_MAX_READ_BYTES.
READ_TOO_LARGE = "the text escaped as JSON is larger than the file; only a larger limit reads it whole"


def reply_too_large(size: int, limit: int, *, at_least: bool = False, advice: str = ASK_FOR_LESS) -> str:
    return (
        f"the reply would be {'at least ' if at_least else ''}{size} bytes, over the limit of {limit} "
        f"(HORACE_MAX_REPLY_BYTES); the call ran: {advice}"
    )


class ProgressPump:
    """Sends the latest progress of a call, at most every ``interval`` seconds.

    The catalog reports progress synchronously; the pump owns the sending, so a slow
    client never slows the work down and intermediate values are coalesced.
    """

    def __init__(self, send: Send, token: str | int, interval: float = 0.1) -> None:
        self.send, self.token, self.interval = send, token, interval
        self.latest: tuple[int, int] | None = None
        self.sent: tuple[int, int] | None = None
        self.changed = trio.Event()
        self.done = False

    def update(self, done: int, total: int) -> None:
        self.latest = (done, total)
        self.changed.set()

    def close(self) -> None:
        self.done = True
        self.changed.set()

    async def run(self) -> None:
        while True:
            await self.changed.wait()
            self.changed = trio.Event()
            if self.latest is not None and self.latest != self.sent:
                self.sent = self.latest
                done, total = self.latest
                await self.send(
                    notification_text(
                        "notifications/progress",
                        {"progressToken": self.token, "progress": done, "total": total},
                    )
                )
            if self.done and self.latest == self.sent:
                return  # (an update that came in during the send above goes out first)
            if not self.done:
                await trio.sleep(self.interval)


async def run_tool(
    tool: Tool, args: Any, context: CallContext, pump: ProgressPump | None, max_reply_bytes: int
) -> dict[str, Any]:
    """The tool's MCP result: its structured content, or a tool error. Cancellation
    (of the caller's scope) passes through; the caller tells a deadline from a cancel."""
    correlation_id = context.correlation_id
    try:
        if pump is None:
            done = await outcome.acapture(tool.handler, context, args)
        else:
            async with trio.open_nursery() as call:  # the call's own nursery, for its progress
                call.start_soon(pump.run)
                done = await outcome.acapture(tool.handler, context, args)
                pump.close()
        try:
            structured = to_json(done.unwrap())
        finally:
            # An error's traceback holds this frame, which holds `done`, which holds the
            # error: a cycle that would keep the call's arguments and everything its frames
            # saw alive until the cyclic GC happens to run.
            del done
    except HoraceError as exc:
        return tool_error(exc.code, exc.message, correlation_id)
    except Exception as exc:
        refused = outage_error(exc)
        if (
            refused is not None
            and isinstance(exc, BackendUnavailable)
            and exc.in_doubt
            and not tool.read_only
        ):
            refused = HoraceError(refused.code, f"{refused.message}; {IN_DOUBT}")
        if refused is not None:  # the database's or the disk's state, not a bug: one line
            level = logging.ERROR if isinstance(exc, CatalogUnwritable) else logging.WARNING
            log.log(
                level, "tool %s: %s", tool.name, refused.message, extra={"correlation_id": correlation_id}
            )
            return tool_error(refused.code, refused.message, correlation_id)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            # The storage's state (read-only, not ours to write, failing): the operator's
            # to mend, said in one line, not a bug.
            log.error(
                "tool %s: the storage refuses: %s", tool.name, exc, extra={"correlation_id": correlation_id}
            )
            return tool_error(
                ErrorCode.STORAGE_ERROR,
                f"the storage refuses: {storage_refusal(exc)}; the call did not complete",
                correlation_id,
            )
        private = context.catalog.storage.private
        if isinstance(exc, FileNotFoundError) and not private.is_dir():
            # The store taken from under the server: its check says so within a second, and
            # stops it; a call met it first.
            log.error(
                "tool %s: the store's folder %s is gone: %s",
                tool.name,
                private,
                exc,
                extra={"correlation_id": correlation_id},
            )
            return tool_error(
                ErrorCode.STORAGE_ERROR,
                f"the store's own folder {private} is gone (the store removed or replaced under the "
                "server?); the call did not complete",
                correlation_id,
            )
        log.exception("tool %s failed", tool.name, extra={"correlation_id": correlation_id})
        return tool_error(
            ErrorCode.INTERNAL, f"internal error (correlation id {correlation_id})", correlation_id
        )
    structured["correlation_id"] = correlation_id
    # The reply holds the result twice (as text and as structured content): when that alone
    # is sure to be too much, not even the JSON text is made.
    least = 2 * json_size_at_least(structured)
    if least > max_reply_bytes:
        raise RpcError(
            REPLY_TOO_LARGE,
            reply_too_large(least, max_reply_bytes, at_least=True),
            {"reply_bytes": least, "limit": max_reply_bytes, "correlation_id": correlation_id},
        )
    return tool_result(structured)
