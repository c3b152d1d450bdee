"""JSON-RPC 2.0: what a message must look like, and the text of replies and errors.

Nothing here knows MCP or any transport: the MCP session (``horace.server.mcp``) checks
each message with these functions and answers with their texts, whatever carried it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from typing import Any

import attrs

from horace.backends.records import INT64_MAX, INT64_MIN
from horace.wire import json_kind

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_BUSY = -32000
REQUEST_TIMEOUT = -32001
REPLY_TOO_LARGE = -32003  # (-32002 is MCP's "resource not found")
RESOURCE_NOT_FOUND = -32002

MAX_PARAMS_DEPTH = 64  # levels of lists and objects in a request's params
# Parsed, each JSON value is a Python object of 30-80 bytes and a pointer to it: at the
# size limit, 4 MiB of "[[]]," were 125 MB. No request needs many: a batch at the cap of
# registers, each with an embedding of 1,536 numbers in its metadata, holds 160,000.
MAX_VALUES = 262_144  # in one message, counted as its commas, objects and arrays
MAX_WHERE_CHARS = 200  # of where an unusable value is, in its message

_END = object()


# Error messages quote what they refuse (a name, an id, a path): this much of it at most,
# so that an error is never larger than the request that caused it.
MAX_ERROR_MESSAGE_CHARS = 2000


def bounded(message: str) -> str:
    """*message*, cut to MAX_ERROR_MESSAGE_CHARS with the rest counted; a lone surrogate
    it quotes (a method name of a client's, say) written as its escape, which strict JSON
    parsers take (they refuse the surrogate itself)."""
    if not message.isascii():
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    cut = MAX_ERROR_MESSAGE_CHARS - 40
    return f"{message[:cut]}… ({len(message) - cut} characters more)"


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        message = bounded(message)
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _text_of(data: bytes) -> str:
    """A message's bytes as text, or :class:`RpcError` -32700 when they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: not UTF-8: {exc}") from None


def parse(message: str | bytes) -> Any:
    """*message* (text, or its UTF-8) as JSON, or :class:`RpcError`: -32700 saying in
    JSON's words what is wrong, -32600 when it holds more than :data:`MAX_VALUES` values
    (counted before parsing)."""
    text = message if isinstance(message, str) else _text_of(message)
    values = _values(text)
    if values > MAX_VALUES:
        batch = text.lstrip().startswith("[")
        raise RpcError(
            INVALID_REQUEST,
            f"the message holds too many JSON values ({values} commas, objects and arrays; at "
            f"most {MAX_VALUES} in one message)" + (": send fewer requests in a batch" if batch else ""),
        )
    try:
        return json.loads(text, parse_constant=_not_json)
    except _NotJson as exc:
        reason = str(exc)
    except RecursionError:
        reason = "nested too deeply"
    except json.JSONDecodeError as exc:
        reason = str(exc)
    except ValueError:  # (json.loads raises nothing else but for an integer's digits)
        reason = f"a number of more than {sys.get_int_max_str_digits()} digits"
    raise RpcError(PARSE_ERROR, f"parse error: {reason}")


# A string, or what is left of the text after an opening quote never closed: matched to
# the end at once, never tried again from each quote inside it (which a pattern that must
# find the closing quote does, in time quadratic in the text).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)


def _values(text: str) -> int:
    """How many values *text* holds, counted as its commas, objects and arrays outside
    strings (a list of *n* items holds *n - 1* commas; an empty one is a value, and those
    that hold something cost more than one). Counted at C speed, and outside strings
    only when a count of every such character says it could be over the limit."""
    if len(text) <= MAX_VALUES:  # (each is counted by a character of its own)
        return 0
    count = text.count(",") + text.count("{") + text.count("[")
    if count <= MAX_VALUES:
        return count
    outside = _STRING.sub("", text)
    return outside.count(",") + outside.count("{") + outside.count("[")


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> Any:
    # Python's parser takes NaN, Infinity and -Infinity, which JSON does not have.
    raise _NotJson(f"{constant} is not a JSON value")


def why_not_an_id(value: Any) -> str | None:
    """Why *value* is no request id, or None. An id is a string or an integer (MCP: never
    null, which JSON-RPC allows) that can be echoed in the reply and stored with the turn:
    within 64 bits, with no NUL or lone surrogate."""
    if value is None:
        return "id must be a string or an integer (never null)"
    if not isinstance(value, str | int) or isinstance(value, bool):
        return f"id must be a string or an integer (not {json_kind(value)})"
    odd = unusable(value)
    return None if odd is None else f"the id {odd.reason}"


def is_valid_id(value: Any) -> bool:
    """A request's id (see :func:`why_not_an_id`)."""
    return why_not_an_id(value) is None


def is_notification(message: Any) -> bool:
    """A well-formed notification (no id, a method, "jsonrpc": "2.0"): never answered.

    The one test for both single messages and batch members; anything else without an id
    is an invalid request, answered with id null.
    """
    return (
        isinstance(message, dict)
        and "id" not in message
        and isinstance(message.get("method"), str)
        and message.get("jsonrpc") == "2.0"
    )


def is_request(message: Any) -> bool:
    """A well-formed request: a method, "jsonrpc": "2.0" and a valid id (answered)."""
    return (
        isinstance(message, dict)
        and "id" in message
        and is_valid_id(message["id"])
        and isinstance(message.get("method"), str)
        and message.get("jsonrpc") == "2.0"
    )


# The id of a request refused unread (too large, too many values), so that its
# error answers it: a client waits for ever for an answer to a request it sent, and the
# official SDKs take no error with an id of null (MCP: "id" is a string or an integer).
# Read only where clients put it: first (after "jsonrpc"), as the Python SDK writes a
# request, or last, as the TypeScript SDK does; an id with escapes is not looked for.
_ID = r'"id"\s*:\s*(-?\d{1,19}|"[^"\\]{0,200}")(?=\s*[,}])'
_ID_FIRST = re.compile(r'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?' + _ID)
_ID_LAST = re.compile(r"[{,]\s*" + _ID + r"\s*\}\s*\Z")
ENDS = 512  # characters of a message's start and end looked at for its id


def id_of_unread(message: str | bytes, tail: str | bytes | None = None) -> str | int | None:
    """The request id that *message* (refused unread) gives first or last, or None. With
    *tail*, *message* is only the message's start, and *tail* its end."""
    end = message if tail is None else tail
    first, last = (_lenient(part) for part in (message[:ENDS], end[-ENDS:]))
    for found in (_ID_FIRST.match(first), _ID_LAST.search(last)):
        if found is not None:
            value = json.loads(found.group(1))
            return value if is_valid_id(value) else None
    return None


def _lenient(text: str | bytes) -> str:
    return text if isinstance(text, str) else text.decode("utf-8", "replace")


def too_large(size: int, limit: int) -> RpcError:
    """The error for a message of *size* bytes over ``max_message_bytes``."""
    return RpcError(
        INVALID_REQUEST, f"message of {size} bytes exceeds the limit of {limit} (HORACE_MAX_MESSAGE_BYTES)"
    )


def is_response(message: Any) -> bool:
    """A well-formed answer to a request of the server's (Horace sends none: it is
    dropped unanswered). Anything else without a method is an invalid request."""
    return (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and "method" not in message
        and "id" in message
        and (message["id"] is None or is_valid_id(message["id"]))  # (an error about no request)
        and ("result" in message) != ("error" in message)
    )


@attrs.frozen
class Unusable:
    """Why a request's params cannot be used, and where in them: *where* as
    ``arguments.tags[2]`` (``params`` for the whole)."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} {self.reason}"

    def within(self, key: str) -> bool:
        """Whether it is in the value of params' *key*."""
        return self.where == key or self.where.startswith((f"{key}.", f"{key}["))

    @property
    def holds_nul(self) -> bool:
        """A NUL in a string value (where a path holds one, the path is what is invalid)."""
        return self.reason.startswith(_NUL)


_NUL = "holds a NUL character"


def unusable(params: Any) -> Unusable | None:
    """Why *params* cannot be used whatever the method, or None.

    Values nested too deep would overflow the recursive code past this point (structuring,
    JSON for the catalog and the sinks) and, once stored, break every later read of the
    file. A lone surrogate (a ``\\udXXX`` escape without its pair) is valid JSON text but
    not Unicode, and a NUL character fits no database text: neither can be a path or a
    stored string (nor a key). Integers beyond 64 bits fit no database column, and a
    number too large for a float (``1e999``) is not finite and could not be sent back.
    Walked iteratively, with one iterator per level open (not one entry per value: a 4 MiB
    list of a million values stays a list); where it is found is spelled out only then.
    """
    levels: list[Iterator[tuple[Any, Any]]] = [iter(((None, params),))]
    keys: list[Any] = [None]  # at each level, the key (or index) of the value last taken
    while levels:
        entry: Any = next(levels[-1], _END)
        if entry is _END:
            levels.pop()
            keys.pop()
            continue
        key, item = entry
        keys[-1] = key
        reason: str | None = _text_unusable(key) if isinstance(key, str) else None
        if reason is not None:
            return Unusable(_where(keys), f"has a key that {reason}")
        if isinstance(item, str):
            reason = _text_unusable(item)
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                reason = f"is out of the 64-bit range: {item}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                reason = f"is not a finite number: {item}"
        elif isinstance(item, dict | list):
            if len(levels) > MAX_PARAMS_DEPTH:
                reason = f"nests deeper than {MAX_PARAMS_DEPTH} levels"
            else:
                levels.append(iter(item.items()) if isinstance(item, dict) else enumerate(item))
                keys.append(None)
        if reason is not None:
            return Unusable(_where(keys), reason)
    return None


def _text_unusable(text: str) -> str | None:
    if "\x00" in text:
        return f"{_NUL}, which no catalog can store"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return f"is not valid Unicode (a lone surrogate): {text[:40]!r}"
    return None


def _where(keys: list[Any]) -> str:
    where = "".join(f"[{key}]" if isinstance(key, int) else f".{_named(key)}" for key in keys[1:])
    where = where.lstrip(".") or "params"
    return where if len(where) <= MAX_WHERE_CHARS else f"{where[:MAX_WHERE_CHARS]}…"


def _named(key: str) -> str:
    # A key as a message can show it: printable (a NUL or a lone surrogate escaped), short.
    shown = key if key.isprintable() else ascii(key)[1:-1]
    return shown if len(shown) <= 40 else f"{shown[:40]}…"


def what_is_read(message: Any) -> Any:
    """*message* with only what the server reads of it: a call can last, and anything
    else sent along (unknown keys, params of methods that take none) would be held as
    long for nothing."""
    if not isinstance(message, dict):
        return message
    kept = {key: message[key] for key in ("jsonrpc", "id", "method", "params") if key in message}
    params, method = kept.get("params"), kept.get("method")
    if isinstance(params, dict | list) and isinstance(method, str) and method in TAKES_NO_PARAMS:
        # (A cursor is kept: sent to a list of one page, it is refused.)
        kept["params"] = (
            {"cursor": params["cursor"]} if "cursor" in params and type(params) is dict else type(params)()
        )
    elif isinstance(params, dict) and method == "tools/call":
        kept["params"] = {key: params[key] for key in ("name", "arguments", "_meta") if key in params}
    return kept


TAKES_NO_PARAMS = frozenset({"ping", "tools/list", "resources/templates/list"})


def error(request_id: Any, exc: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.body()}


def error_text(request_id: Any, exc: RpcError) -> str:
    return json.dumps(error(request_id, exc))


def result_text(request_id: Any, result: Any) -> str:
    """The reply's JSON text."""
    return reply_text(request_id, result_json(result))


def result_json(result: Any) -> str:
    """A result's JSON text, as a reply carries it. A tool result's structured content is
    encoded once and reused for its text content, instead of being serialised twice."""
    if isinstance(result, dict) and "structuredContent" in result and "content" in result:
        body = result["content"][0]["text"]
        return (
            f'{{"content": [{{"type": "text", "text": {json.dumps(body)}}}], "structuredContent": {body}, '
            f'"isError": {"true" if result["isError"] else "false"}}}'
        )
    return json.dumps(result)


def reply_text(request_id: Any, result: str) -> str:
    """The reply carrying a result already in JSON (:func:`result_json`)."""
    return f'{{"jsonrpc": "2.0", "id": {json.dumps(request_id)}, "result": {result}}}'


def notification_text(method: str, params: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params})


def json_size_at_least(value: Any) -> int:
    """A lower bound of the length of *value* as ``json.dumps`` writes it, without making
    the text: every string takes its characters and two quotes (escapes only add),
    everything else at least one character; members are separated by ", " and keys
    followed by ": "."""
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            size += 2 + (4 * len(item) - 2 if item else 0)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            size += 2 + (2 * len(item) - 2 if item else 0)
            stack.extend(item)
        else:
            size += 1
    return size


def message_size(message: str | bytes) -> int:
    """The bytes a message received takes on the wire (a frame's or a line's)."""
    return len(message) if isinstance(message, bytes) else utf8_size(message)


def utf8_size(text: str) -> int:
    """The UTF-8 length of *text*, without a copy when its length alone tells (ASCII, the
    usual case: a str of only ASCII characters takes one byte each)."""
    return len(text) if text.isascii() else len(text.encode())
