"""Property-based fuzzing of the message handler over a real WebSocket connection.

One Horace per module (thread-hosted, SQLite, throwaway storage) and one synchronous
``websockets`` connection shared by every example, so a crash anywhere shows up as a
closed connection. After each example a sentinel ``ping`` with a unique id tells the
client when the server has read everything; answers to tool calls may come later and in
any order, so the client keeps reading until every expected id has been answered.

Properties:
- the connection stays open, a later ``ping`` is answered, ``/health`` stays 200;
- every request with a valid id gets exactly one answer (matched by id; invalid requests
  are answered with id null), notifications get none, a batch gets one array;
- no answer is an internal error (JSON-RPC -32603 or a tool error INTERNAL), and a tool's
  successful structuredContent matches its outputSchema;
- nothing outside the storage root is touched, and nothing reached through a symlink out
  of the root is catalogued, whatever the (hostile) paths sent.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from helpers import fresh_database, tool_body, write
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from websockets.sync.client import ClientConnection, connect

from horace.server.tools import TOOLS
from horace.testing import RunningHorace, run_horace_in_thread, throwaway_settings

FUZZ = settings(
    max_examples=int(os.environ.get("HORACE_FUZZ_EXAMPLES", "500")),
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# The server thread's own use of `random` (backoff jitter) shows up in Hypothesis' check.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
    pytest.mark.slow,
]
ANSWER_TIMEOUT = float(os.environ.get("HORACE_FUZZ_TIMEOUT", "10"))  # for everything due
LATE_ANSWER_TIMEOUT = 3.0  # for answers still missing once the sentinel ping came back
ERROR_CODES = {
    "INVALID_PATH",
    "FILE_NOT_FOUND",
    "NOT_CATALOGED",
    "VERSION_NOT_FOUND",
    "COLLECTION_NOT_FOUND",
    "CHECKSUM_MISMATCH",
    "INVALID_ARGUMENT",
    "FILE_LOCKED",
    "BACKEND_UNAVAILABLE",
}  # INTERNAL is deliberately absent: hostile input must never reach an unhandled exception
TOOL_NAMES = sorted(TOOLS)
METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "resources/list",
    "prompts/list",
    "logging/setLevel",
    "completion/complete",
    "shutdown",
]


# -- the world: a server, a connection, files inside and a canary outside ------------------------


@attrs.define(repr=False)
class World:
    running: RunningHorace
    ws: ClientConnection
    base: Path
    outside: Path
    file_ids: list[str]
    paths: list[str]
    snapshot: dict[str, tuple[int, int, str]]
    sentinels: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    late: Counter[Any] = attrs.field(factory=Counter)  # cancelled calls whose answer may still come
    late_arrays: int = 0  # batch replies that may still come (all their members cancellable)

    def __repr__(self) -> str:  # keeps Hypothesis' falsifying examples readable
        return f"World({self.running.url})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _snapshot(base: Path) -> dict[str, tuple[int, int, str]]:
    """Everything under *base* but Horace's own files/, .horace/ and catalog database:
    (size, mtime, link)."""
    skip = {base / "root" / "files", base / "root" / ".horace", base / "db"}
    found: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            st_ = path.lstat()
            found[str(path)] = (st_.st_size, st_.st_mtime_ns, os.readlink(path) if path.is_symlink() else "")
    return found


def _hostile_paths(world_base: Path, outside: Path) -> list[str]:
    return [
        "../outside/canary.txt",
        "../../outside/canary.txt",
        "../../../outside/canary.txt",
        str(outside / "canary.txt"),
        str(outside),
        "/etc/passwd",
        "/",
        "/tmp",
        "..",
        "../..",
        "user/escape/canary.txt",
        "user/escape",
        "user/escape/",
        "user/link.txt",
        "user/../../outside",
        "user/../../outside/canary.txt",
        ".horace/catalog.db",
        ".horace",
        ".horace/objects",
        "../.horace/catalog.db",
        "user/../../.horace/catalog.db",
        str(world_base / "root/.horace/catalog.db"),
        str(world_base / "root/files_evil/x.txt"),
        "../files_evil/x.txt",
        "user/\x00.txt",
        "\x00",
        "user/seed-0.txt\x00../../outside/canary.txt",
        "~/.ssh/id_rsa",
        "\\..\\..\\outside\\canary.txt",
        "user/\ud800.txt",
        "\udcff",
        "file:///etc/passwd",
        str(world_base / "root/files/../../outside/canary.txt"),
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("fuzz")
    with fresh_database(base / "db") as database_url:  # the backend under test
        yield from _world(base, database_url)


def _world(base: Path, database_url: str) -> Iterator[World]:
    outside = base / "outside"
    write(outside / "canary.txt", "do not touch\n")
    write(outside / "sub/secret.txt", "secret\n")
    write(base / "root/files_evil/x.txt", "a sibling whose name starts like files/\n")
    root = base / "root"
    with run_horace_in_thread(
        throwaway_settings(root, call_deadline=20.0, database_url=database_url)
    ) as running:
        files = running.files
        (files / "user/escape").symlink_to(outside, target_is_directory=True)
        (files / "user/link.txt").symlink_to(outside / "canary.txt")
        paths = []
        for n in range(4):
            write(files / f"user/seed-{n}.txt", f"seed {n}\n")
            paths.append(f"user/seed-{n}.txt")
        write(files / "shared/deep/er/doc.md", "# doc\n")
        paths.append("shared/deep/er/doc.md")
        with connect(running.url, subprotocols=["mcp"], max_size=None, open_timeout=10) as ws:
            ids = []
            for n, path in enumerate(paths):
                ws.send(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": n,
                            "method": "tools/call",
                            "params": {
                                "name": "horace_register_file",
                                "arguments": {"file_path": path, "metadata": {"tags": ["seed"]}},
                            },
                        }
                    )
                )
                reply = json.loads(ws.recv(timeout=ANSWER_TIMEOUT))
                ids.append(reply["result"]["structuredContent"]["file_id"])
            ws.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": "c",
                        "method": "tools/call",
                        "params": {
                            "name": "horace_create_collection",
                            "arguments": {"name": "seeds", "file_ids": ids[:2]},
                        },
                    }
                )
            )
            assert "result" in json.loads(ws.recv(timeout=ANSWER_TIMEOUT))
            world = World(running, ws, base, outside, ids, paths, _snapshot(base))
            yield world
            # Afterwards: still alive, and nothing outside the root was touched or catalogued.
            _exchange(world, [], Expected())
            assert _health(running) == 200
            assert _snapshot(base) == world.snapshot
            assert (outside / "canary.txt").read_text() == "do not touch\n"
            assert os.readlink(files / "user/escape") == str(outside)
            ws.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": "final",
                        "method": "tools/call",
                        "params": {
                            "name": "horace_search_files",
                            "arguments": {"status": "all", "limit": 1000},
                        },
                    }
                )
            )
            while (reply := json.loads(ws.recv(timeout=ANSWER_TIMEOUT))).get("id") != "final":
                pass
            catalogued = [f["file_path"] for f in reply["result"]["structuredContent"]["results"]]
            assert not [p for p in catalogued if p.startswith(("user/escape", "user/link.txt", ".horace"))]


def _health(running: RunningHorace) -> int:
    with urllib.request.urlopen(running.health_url, timeout=10) as response:
        return int(response.status)


# -- the model: which answers a message must get ---------------------------------------------


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


def _answered_as(value: Any) -> Any:
    """The id an answer to a request with this id carries: its own, or null for one that
    cannot be sent back (past 64 bits, a NUL, a lone surrogate)."""
    if not _valid_id(value) or value is None:
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return None if "\x00" in value else value


def _is_response(message: Any) -> bool:
    """JSON-RPC's response object, which a server never answers."""
    return (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and "method" not in message
        and "id" in message
        and _valid_id(message["id"])
        and ("result" in message) != ("error" in message)
    )


def _is_notification(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and "id" not in message
        and isinstance(message.get("method"), str)
        and message.get("jsonrpc") == "2.0"
    )


def _hashable(value: Any) -> Any:
    return value if _valid_id(value) else ("<invalid>", json.dumps(value, default=str))


@attrs.define
class Expected:
    required: Counter[Any] = attrs.field(factory=Counter)  # id -> answers due
    optional: Counter[Any] = attrs.field(factory=Counter)  # ids a cancellation may silence
    batches: int = 0  # array replies due
    cancels: set[Any] = attrs.field(factory=set)
    tool_calls: dict[Any, list[str]] = attrs.field(factory=dict)  # id -> tool names
    late_ids: set[Any] = attrs.field(factory=set)  # ids an earlier example's late answer may carry

    def note(self, message: Any) -> None:
        if _is_notification(message):
            params = message.get("params")
            cancel = message["method"] == "notifications/cancelled"
            if cancel and isinstance(params, dict) and "requestId" in params:
                self.cancels.add(_hashable(params["requestId"]))
            return
        if _is_response(message):
            return
        answer_id = _answered_as(message.get("id")) if isinstance(message, dict) else None
        self.required[answer_id] += 1
        if not (isinstance(message, dict) and message.get("method") == "tools/call"):
            return
        params = message.get("params")
        if isinstance(params, dict) and isinstance(params.get("name"), str):
            self.tool_calls.setdefault(answer_id, []).append(params["name"])

    def add(self, message: Any, raw_invalid: bool = False) -> None:
        if raw_invalid:
            self.required[None] += 1
        elif isinstance(message, list) and message:
            before = sum(self.required.values())
            for item in message:
                self.note(item)
            if sum(self.required.values()) > before:
                self.batches += 1
        elif isinstance(message, list):
            self.required[None] += 1  # an empty batch is one invalid request
        else:
            self.note(message)

    def settle(self) -> None:
        """Requests whose id a cancellation named may go unanswered (MCP: no reply follows)."""
        for cid in self.cancels:
            if cid in self.required:
                self.optional[cid] = self.required.pop(cid)


def _check_answer(item: Any, expected: Expected) -> None:
    assert isinstance(item, dict) and item.get("jsonrpc") == "2.0", item
    assert "id" in item and _valid_id(item["id"]), item
    assert ("result" in item) != ("error" in item), item
    if "error" in item:
        error = item["error"]
        assert isinstance(error, dict) and isinstance(error.get("code"), int), item
        assert isinstance(error.get("message"), str), item
        assert error["code"] != -32603, item  # internal error
        if item["id"] in expected.tool_calls:
            name = expected.tool_calls[item["id"]][0]
            _event(f"{name if name in TOOLS else '(unknown tool)'}: rpc error {error['code']}")
        return
    result = item["result"]
    assert isinstance(result, dict), item
    if item["id"] in expected.tool_calls and isinstance(result.get("content"), list):
        assert isinstance(result.get("isError"), bool), item
        structured = tool_body(result)
        names = [name for name in expected.tool_calls[item["id"]] if name in TOOLS]
        if result["isError"]:
            assert structured["error_code"] in ERROR_CODES, item
            assert isinstance(structured["correlation_id"], str), item
            _event(f"{names[0] if names else '?'}: {structured['error_code']}")
        else:
            _event(f"{names[0] if names else '?'}: ok")
            # With duplicate ids we do not know which tool answered; one schema must fit.
            errors = []
            for name in names or ["(a late answer of an earlier example: not checked)"]:
                if name not in TOOLS:
                    break
                try:
                    jsonschema.validate(structured, TOOLS[name].output_schema)
                    break
                except jsonschema.ValidationError as exc:
                    errors.append(exc)
            else:
                if item["id"] not in expected.late_ids:  # else perhaps another tool's late answer
                    raise AssertionError(f"{names}: structuredContent does not fit outputSchema: {errors[0]}")


def _event(text: str) -> None:
    try:
        event(text.encode("utf-8", "backslashreplace").decode())  # --hypothesis-show-statistics
    except InvalidArgument:
        pass  # outside a Hypothesis test (fixtures, hand-picked cases)


def _exchange(
    world: World, messages: list[str | bytes], expected: Expected, answers: dict[Any, Any] | None = None
) -> None:
    """Send *messages* and a sentinel ping; read until everything due has been answered."""
    try:
        _exchange_once(world, messages, expected, answers)
    except Exception:
        _drain(world)  # leave the connection clean for the next example (Hypothesis shrinks)
        raise


def _drain(world: World) -> None:
    """Read until a fresh sentinel is answered and nothing more comes for a moment."""
    sentinel = f"drain-{next(world.sentinels)}"
    world.ws.send(json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}))
    seen = False
    while True:
        try:
            raw = world.ws.recv(timeout=ANSWER_TIMEOUT if not seen else 0.5)
        except TimeoutError:
            break
        seen = seen or (isinstance(raw, str) and sentinel in raw)
    world.late.clear()
    world.late_arrays = 0


def _exchange_once(
    world: World, messages: list[str | bytes], expected: Expected, answers: dict[Any, Any] | None
) -> None:
    ws = world.ws
    expected.settle()
    expected.late_ids = set(+world.late)
    for message in messages:
        ws.send(message)
    sentinel = f"sentinel-{next(world.sentinels)}-{time.monotonic_ns()}"
    ws.send(json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}))
    got: Counter[Any] = Counter()
    arrays = 0
    sentinel_seen = False
    deadline = time.monotonic() + ANSWER_TIMEOUT

    def missing() -> Counter[Any]:
        return expected.required - got

    while not sentinel_seen or missing():
        remaining = deadline - time.monotonic()
        try:
            assert remaining > 0
            raw = ws.recv(timeout=remaining)  # ConnectionClosed here: the server dropped us
        except (AssertionError, TimeoutError):
            raise AssertionError(
                f"no answer for {dict(missing())} (got {dict(got)}, sentinel answered: {sentinel_seen})"
            ) from None
        assert isinstance(raw, str), "the server sent a binary frame"
        reply = json.loads(raw)
        if isinstance(reply, list):
            assert reply, "an empty array reply"
            arrays += 1
            items = reply
        else:
            items = [reply]
        for item in items:
            if isinstance(item, dict) and "method" in item and "id" not in item:
                assert item["method"] == "notifications/progress", item
                assert "progressToken" in item.get("params", {}), item
                continue
            _check_answer(item, expected)
            if item["id"] == sentinel:
                assert not isinstance(reply, list)
                assert not sentinel_seen and item["result"] == {}
                sentinel_seen = True
                deadline = min(deadline, time.monotonic() + LATE_ANSWER_TIMEOUT)
                continue
            got[item["id"]] += 1
            if answers is not None:
                answers[item["id"]] = item
    # Answers beyond those due: only a cancelled call's late answer, at most once each.
    extra = got - expected.required
    for key, count in extra.items():
        allowed = expected.optional[key] + world.late[key]
        assert count <= allowed, f"{count} answer(s) too many for id {key!r}"
        from_late = max(0, count - expected.optional[key])
        world.late[key] -= from_late
        expected.optional[key] -= count - from_late
    world.late += expected.optional  # may still arrive during a later example
    early = max(0, arrays - expected.batches)  # a batch reply of an earlier example, late
    assert early <= world.late_arrays, (arrays, expected.batches, world.late_arrays)
    world.late_arrays -= early
    if not +expected.optional:
        assert arrays - early == expected.batches, (arrays, expected.batches)
    else:
        world.late_arrays += expected.batches - (arrays - early)


def _send_and_check(world: World, values: list[Any]) -> None:
    expected = Expected()
    messages: list[str | bytes] = []
    for value in values:
        if isinstance(value, Raw):
            messages.append(value.data)
            expected.add(None, raw_invalid=True)
        else:
            try:
                messages.append(json.dumps(value, allow_nan=False))
                expected.add(value)
            except ValueError:  # NaN or Infinity in it: not JSON, refused whole (-32700)
                messages.append(json.dumps(value))
                expected.add(None, raw_invalid=True)
    _exchange(world, messages, expected)
    assert _health(world.running) == 200


# -- strategies ----------------------------------------------------------------------------------


@attrs.frozen
class Raw:
    """Not JSON (or not text): answered by one error with id null."""

    data: str | bytes


ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\u202e",
    "null",
    "0",
    "-1",
    "1e400",
    "NaN",
    "%s%n",
    "' OR 1=1 --",
    "*",
    "**/*",
    "[",
    "\\",
    "../",
    "x" * 250,
]
# Names over NAME_MAX (255) are left to test_overlong_paths below (a known bug, reported).
text = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS))
big_ints = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30)])
ints = st.one_of(st.integers(min_value=-5, max_value=2000), st.integers(), big_ints)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, text)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(text, json_values, max_size=5)
valid_ids = st.one_of(st.integers(min_value=-3, max_value=50), ints, st.text(max_size=6), st.none())
any_ids = st.one_of(
    valid_ids,
    st.booleans(),
    floats,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
methods = st.one_of(st.sampled_from(METHODS), st.text(max_size=20))
jsonrpc_field = st.sampled_from(["2.0", "2.0", "2.0", "2.0", "1.0", "2", 2.0, None, ""])


def schema_values(schema: Any, refs: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Values shaped like *schema* (with hostile contents), or anything at all."""
    if not isinstance(schema, dict):
        return json_values
    if "enum" in schema:
        typed: st.SearchStrategy[Any] = st.sampled_from(schema["enum"]) | text
    else:
        kind = schema.get("type")
        kind = kind[0] if isinstance(kind, list) else kind
        if kind == "string":
            typed = refs | text
        elif kind == "integer":
            typed = ints
        elif kind == "boolean":
            typed = st.booleans()
        elif kind == "array":
            typed = st.lists(schema_values(schema.get("items"), refs), max_size=4) | refs
        elif kind == "object":
            typed = arguments_for(schema, refs) | json_objects
        else:
            typed = json_values
    return st.one_of(typed, typed, typed, json_values)  # mostly the declared type


def arguments_for(schema: Any, refs: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = schema.get("required", []) if isinstance(schema, dict) else []
    return st.fixed_dictionaries(
        {},
        optional={name: schema_values(sub, refs) for name, sub in props.items()},
    ).flatmap(
        lambda args: (
            st.just(args)
            if all(r in args for r in required) or not required
            else st.fixed_dictionaries({r: schema_values(props.get(r), refs) for r in required}).map(
                lambda req: {**args, **req}
            )
        )
    )


_refs_cache: dict[int, st.SearchStrategy[str]] = {}


def refs_for(world: World) -> st.SearchStrategy[str]:
    """Strings that mean something to this server: ids, paths (hostile ones too), names."""
    key = id(world)
    if key not in _refs_cache:
        _refs_cache[key] = st.sampled_from(
            world.file_ids
            + world.paths
            + _hostile_paths(world.base, world.outside)
            + ["seeds", "shared", "user", "00000000-0000-0000-0000-000000000000", "seed"]
        )
    return _refs_cache[key]


@st.composite
def envelopes(draw: st.DrawFn, world: World, method: st.SearchStrategy[str] = methods) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["jsonrpc"] = draw(jsonrpc_field)
    if draw(st.integers(0, 9)):
        message["method"] = draw(method)
    else:
        message["method"] = draw(json_values)
    if draw(st.integers(0, 3)):
        message["id"] = draw(any_ids if draw(st.booleans()) else valid_ids)
    if draw(st.booleans()):
        message["params"] = draw(st.one_of(json_objects, json_values))
    if message.get("method") == "notifications/cancelled" and draw(st.booleans()):
        message["params"] = {"requestId": draw(valid_ids), "reason": "fuzz"}
    return message


COLLECTIONS = ["seeds", "fuzz-a", "fuzz-b"]
_good_cache: dict[tuple[int, str], st.SearchStrategy[dict[str, Any]]] = {}


def good_arguments(world: World, tool: str) -> st.SearchStrategy[dict[str, Any]]:
    """Well-typed arguments that name things this server has: these reach the catalog and
    succeed often (register, update, restore, delete, archive, collections...)."""
    key = (id(world), tool)
    if key in _good_cache:
        return _good_cache[key]
    ids = st.sampled_from(world.file_ids)
    tags = st.lists(st.sampled_from(["seed", "a", "b", "Seed ", ""]), max_size=3)
    names = st.sampled_from(COLLECTIONS)
    custom = st.dictionaries(st.text(max_size=5), json_values, max_size=3)
    register_meta = st.fixed_dictionaries(
        {},
        optional={
            "tags": tags,
            "purpose": text,
            "owner": st.sampled_from(["user", "gates", "fuzz"]),
            "collection": names,
            "correlation_id": text,
            "project": json_values,
        },
    )
    update_meta = st.fixed_dictionaries(
        {},
        optional={
            "tags": tags,
            "purpose": text,
            "owner": text,
            "collection": names,
            "custom": custom,
            "status": st.sampled_from(["active", "archived", "deleted"]),
        },
    )
    filters = {
        "tags": tags,
        "any_tags": tags,
        "owner": st.sampled_from(["user", "shared", "fuzz"]),
        "path": st.sampled_from(["user/*", "*", "shared/**", "user/seed-[0-1].txt", "**/*.md"]),
        "collection": names,
        "status": st.sampled_from(["active", "archived", "deleted", "all"]),
        "limit": st.integers(1, 5),
        "offset": st.integers(0, 5),
        "sort_by": st.sampled_from(["created_at", "updated_at", "size", "path"]),
        "order": st.sampled_from(["asc", "desc"]),
        "min_size": st.integers(0, 10),
        "file_type": st.sampled_from(["text/plain", "text/*", "md", "txt"]),
    }
    table: dict[str, st.SearchStrategy[Any]] = {
        "file_id": ids,
        "file_ids": st.lists(ids, max_size=3),
        "file_path": st.sampled_from(world.paths),
        "name": names,
        "version": st.integers(1, 8),
        "limit": st.integers(1, 20),
        "offset": st.integers(0, 5),
        "include_versions": st.booleans(),
        "check_for_changes": st.booleans(),
        "description": text,
        "metadata": custom,
        "path": st.sampled_from(["user", "shared", "shared/deep", "user/"]),
    }
    if tool == "horace_register_file":
        table["metadata"] = register_meta
    elif tool == "horace_update_file":
        table["metadata"] = update_meta
    elif tool == "horace_search_files":
        table = {**filters, "query": st.fixed_dictionaries({}, optional=filters)}
    schema = TOOLS[tool].input_schema
    props = schema.get("properties", {})
    required = schema.get("required", [])
    strategy = st.fixed_dictionaries(
        {name: table.get(name, schema_values(props[name], refs_for(world))) for name in required},
        optional={name: table[name] for name in props if name not in required and name in table},
    )
    _good_cache[key] = strategy
    return strategy


@st.composite
def tool_calls(draw: st.DrawFn, world: World) -> dict[str, Any]:
    refs = refs_for(world)
    name = draw(st.one_of(st.sampled_from(TOOL_NAMES), st.sampled_from(TOOL_NAMES), text))
    schema = TOOLS[name].input_schema if name in TOOLS else {}
    shapes = [arguments_for(schema, refs), json_objects, json_values]
    if name in TOOLS:
        shapes = [good_arguments(world, name)] * 3 + shapes
    arguments = draw(st.one_of(*shapes))
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if draw(st.integers(0, 4)) == 0:
        params["_meta"] = draw(
            st.fixed_dictionaries(
                {}, optional={"progressToken": any_ids, "correlation_id": text, "correlationId": json_values}
            )
        )
    if draw(st.integers(0, 9)) == 0:
        del params["arguments"]
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call", "params": params}
    if draw(st.integers(0, 5)):
        request["id"] = draw(valid_ids)
    return request


# -- the properties ------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_arbitrary_json_messages(world: World, data: st.DataObject) -> None:
    values = data.draw(
        st.lists(
            st.one_of(
                json_values,
                json_values,
                st.builds(Raw, st.text(max_size=30)).filter(_not_json),
                st.builds(Raw, st.binary(max_size=30)),
            ),
            min_size=1,
            max_size=4,
        )
    )
    _send_and_check(world, values)


def _not_json(raw: Raw) -> bool:
    try:
        json.loads(raw.data)
    except ValueError:
        return True
    return False


@FUZZ
@given(st.data())
def test_json_rpc_envelopes(world: World, data: st.DataObject) -> None:
    values = data.draw(st.lists(envelopes(world), min_size=1, max_size=5))
    _send_and_check(world, values)


@FUZZ
@given(st.data())
def test_tool_calls(world: World, data: st.DataObject) -> None:
    # Sometimes a working file changes first (inside files/, as another service would
    # write it), so updates, scans, restores and verify find something to do.
    if data.draw(st.integers(0, 3)) == 0:
        path = world.running.files / data.draw(st.sampled_from(world.paths))
        path.parent.mkdir(parents=True, exist_ok=True)
        contents = ["seed 0\n", "seed 1\n", "changed\n", "changed again\n", ""]
        path.write_text(data.draw(st.sampled_from(contents)))
    values = data.draw(st.lists(tool_calls(world), min_size=1, max_size=4))
    _send_and_check(world, values)


@FUZZ
@given(st.data())
def test_batches(world: World, data: st.DataObject) -> None:
    item = st.one_of(
        tool_calls(world), envelopes(world), envelopes(world, st.sampled_from(METHODS)), json_values
    )
    values = data.draw(st.lists(st.one_of(st.lists(item, max_size=6), item), min_size=1, max_size=3))
    _send_and_check(world, values)


@FUZZ
@given(st.data())
def test_cancellations(world: World, data: st.DataObject) -> None:
    """Calls cancelled by id right after they are sent: answered at most once."""
    call = data.draw(tool_calls(world))
    call["id"] = data.draw(valid_ids)
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": call["id"] if data.draw(st.booleans()) else data.draw(valid_ids)},
    }
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
    _send_and_check(world, data.draw(st.permutations([call, cancel, ping])))


# -- hand-picked cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_deeply_nested_json(world: World, opener: str, closer: str) -> None:
    depth = 100_000
    inner = "1" if opener.startswith("{") else ""
    _send_and_check(world, [Raw(opener * depth + inner + closer * depth)])
    # Deep but parseable params: refused as such (stored, they would break every read of
    # the file later); reasonably nested custom metadata is kept.
    for depth, accepted in ((20, True), (80, False), (600, False)):
        deep = "[" * depth + '"x"' + "]" * depth
        text_ = (
            '{"jsonrpc": "2.0", "id": "deep", "method": "tools/call", "params": {"name": '
            f'"horace_update_file", "arguments": {{"file_id": "{world.file_ids[3]}", '
            f'"metadata": {{"custom": {{"x": {deep}}}}}}}}}}}'
        )
        answers: dict[Any, Any] = {}
        expected = Expected()
        expected.add(
            {"jsonrpc": "2.0", "id": "deep", "method": "tools/call", "params": {"name": "horace_update_file"}}
        )
        _exchange(world, [text_], expected, answers)
        if accepted:
            assert answers["deep"]["result"]["isError"] is False, answers
        else:  # arguments that cannot be used: a tool error (the session named no version)
            assert tool_body(answers["deep"]["result"])["error_code"] == "INVALID_ARGUMENT", answers
            assert "arguments.metadata.custom.x" in tool_body(answers["deep"]["result"])["message"]
    info = {
        "jsonrpc": "2.0",
        "id": "info",
        "method": "tools/call",
        "params": {"name": "horace_get_file_info", "arguments": {"file_id": world.file_ids[3]}},
    }
    answers = {}
    expected = Expected()
    expected.add(info)
    _exchange(world, [json.dumps(info)], expected, answers)
    # (Only the custom field x: other tests on the shared world may have set others.)
    kept = answers["info"]["result"]["structuredContent"]["file"]["metadata"]["x"]
    assert json.dumps(kept).count("[") == 20


def test_responses_are_never_answered(world: World) -> None:
    """A well-formed response (to a request Horace never sent) is dropped, alone or in a
    batch; what only looks like one ({"result": null}: no "jsonrpc", no id) is an invalid
    request; a request beside them is answered."""
    _send_and_check(
        world,
        [
            {"jsonrpc": "2.0", "id": 1, "result": {}},
            {"jsonrpc": "2.0", "id": "x", "error": {"code": -1, "message": "no"}},
            {"result": None},
            [{"result": None}],
            [{"jsonrpc": "2.0", "id": 2, "result": {}}, {"jsonrpc": "2.0", "id": 3, "method": "ping"}],
        ],
    )


def test_hostile_paths_are_refused(world: World) -> None:
    expected = Expected()
    messages: list[str | bytes] = []
    ids = itertools.count(1000)
    calls: dict[int, tuple[str, str]] = {}
    for path in _hostile_paths(world.base, world.outside):
        for tool, key in [
            ("horace_register_file", "file_path"),
            ("horace_get_file_info", "file_path"),
            ("horace_scan", "path"),
            ("horace_search_files", "path"),
        ]:
            request_id = next(ids)
            calls[request_id] = (tool, path)
            message = {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": tool, "arguments": {key: path}},
            }
            messages.append(json.dumps(message))
            expected.add(message)
    answers: dict[Any, Any] = {}
    _exchange(world, messages, expected, answers)
    for request_id, (tool, path) in calls.items():
        if "error" in answers[request_id]:  # refused before the tool: not even a string
            assert answers[request_id]["error"]["code"] == -32602, (tool, path, answers[request_id])
            continue
        result = answers[request_id]["result"]
        if tool == "horace_search_files":  # a glob is matched, never resolved: no error needed
            assert not result["isError"] or tool_body(result)["error_code"] == "INVALID_ARGUMENT"
            continue
        assert result["isError"], (tool, path, result["structuredContent"])
        assert tool_body(result)["error_code"] in (
            "INVALID_PATH",
            "FILE_NOT_FOUND",
            "NOT_CATALOGED",
            "INVALID_ARGUMENT",
        ), (tool, path, result)
    assert _snapshot(world.base) == world.snapshot


@pytest.mark.parametrize("path", ["x" * 300, "user/" + "y" * 256 + "/z.txt"], ids=["name", "folder"])
def test_overlong_paths(world: World, path: str) -> None:
    message = {
        "jsonrpc": "2.0",
        "id": "long",
        "method": "tools/call",
        "params": {"name": "horace_register_file", "arguments": {"file_path": path}},
    }
    expected = Expected()
    expected.add(message)
    answers: dict[Any, Any] = {}
    _exchange(world, [json.dumps(message)], expected, answers)
    assert tool_body(answers["long"]["result"])["error_code"] in ("INVALID_PATH", "FILE_NOT_FOUND")


def test_oversized_and_odd_frames(world: World) -> None:
    limit = world.running.settings.max_message_bytes
    _send_and_check(
        world,
        [
            Raw(" " * (limit + 1)),  # over the limit, under the close threshold: an error, id null
            Raw(b"\xff\xfe not utf-8"),
            Raw(""),
            {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1, 2]},
            [{"jsonrpc": "2.0", "method": "notifications/initialized"}],  # all notifications: no reply
            [[]],
            [1, "x", None],
        ],
    )
