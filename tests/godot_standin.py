"""A Godot stand-in: a small MCP server on trio-websocket that takes ``logger_log`` calls.

It answers ``initialize`` and ``tools/call`` of its logger tool (other tools/methods get a
JSON-RPC error), keeps the arguments of every call it handled in :attr:`GodotStandIn.calls`,
and can misbehave on demand, also while running (the attributes are read per message):

- absent: ``await standin.stop()`` closes the listener and drops every connection;
  ``await standin.start()`` listens again on the same port. ``listening=False`` makes
  one that has a port but does not listen on it yet. While it does not listen, the port
  stays bound to a socket that does not listen either: connections to it are refused, and
  no other server (of a test running beside) and no outgoing connection can take it.
- slow: ``delay`` seconds before each reply (replies go out one after another, in order,
  while the reader keeps reading: :attr:`max_outstanding` is the largest number of requests
  received but not yet answered, i.e. how many calls the client had on the wire).
- erroring: ``erroring=True`` answers tools/call with a JSON-RPC error (nothing recorded).
- flapping: ``flap_every=N`` closes the connection on its N-th message (that message is
  not handled), every connection anew.

Use it as ``async with godot_standin(**options) as godot:`` in a pytest-trio test (or
``GodotStandIn(...).run(nursery)`` yourself). ``python tests/godot_standin.py`` serves one
from the command line (prints ``PORT <n>``, then a count of calls on SIGTERM/SIGINT).
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nobody listens on (at the time of asking)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def held_port(port: int = 0) -> socket.socket:
    """A socket bound to *port* (a free one for 0) that does not listen: it refuses
    connections and keeps the port from anyone else until closed (from a listener setting
    ``SO_REUSEADDR`` too, unless the port's TIME_WAIT made the hold set it)."""
    for shared in (False, True):
        hold = socket.socket()
        try:
            if shared:  # the port's last connections linger in TIME_WAIT: bind past them
                hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind((HOST, port))
        except OSError:
            hold.close()
            if shared or not port:
                raise
        else:
            return hold
    raise AssertionError("unreachable")


class GodotStandIn:
    def __init__(
        self,
        *,
        tool: str = "logger_log",
        delay: float = 0.0,
        erroring: bool = False,
        flap_every: int = 0,
        record: bool = True,
    ) -> None:
        self.tool = tool
        self.delay = delay
        self.erroring = erroring
        self.flap_every = flap_every
        self.record = record
        self.port: int | None = None
        self.calls: list[dict[str, Any]] = []  # arguments of each handled logger call, in order
        self.handled = 0  # logger calls answered with a result
        self.errors = 0  # logger calls answered with an error
        self.received = 0  # logger calls received (handled, errored, or lost with a connection)
        self.initialized = 0
        self.connections = 0  # accepted so far
        self.open_connections = 0
        self.sockets: list[WebSocketConnection] = []  # the open connections, to ping them
        self.max_outstanding = 0
        self.changed = trio.Condition()  # notified whenever a call was handled
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._stopped.set()
        self._hold: socket.socket | None = None  # the port, held while not listening

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port is not None, "the stand-in has no port yet"
        return f"ws://{HOST}:{self.port}"

    @property
    def listening(self) -> bool:
        return not self._stopped.is_set()

    def bind(self, nursery: trio.Nursery, *, reserve_port: bool = False) -> None:
        self._nursery = nursery
        if self.port is None and reserve_port:
            self._hold_port()

    def _hold_port(self) -> None:
        self._hold = held_port(self.port or 0)
        self.port = int(self._hold.getsockname()[1])

    def release_port(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    async def start(self) -> None:
        """Listen (on the same port as before, or a free one the first time)."""
        assert self._nursery is not None, "use godot_standin() or bind() first"
        if self.listening:
            return
        await self._nursery.start(self._serve)

    async def stop(self) -> None:
        """Stop listening and drop every connection (Godot gone)."""
        if self._scope is not None:
            self._scope.cancel()
        await self._stopped.wait()

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = trio.Event()
        self.release_port()  # (listened on at once: nothing else binds it in between)
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as handlers:
                    server = await handlers.start(
                        serve_websocket,
                        self._handle,
                        HOST,
                        self.port or 0,
                        None,
                    )
                    self.port = server.port
                    task_status.started()
        finally:
            self._scope = None
            if self.port is not None:
                self._hold_port()
            self._stopped.set()

    # -- waiting ----------------------------------------------------------------------------

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least *count* calls were handled; the calls so far."""
        with trio.fail_after(timeout):
            async with self.changed:
                while len(self.calls) < count:
                    await self.changed.wait()
        return self.calls

    async def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            async with self.changed:
                while not predicate():
                    await self.changed.wait()

    def messages(self) -> list[Any]:
        return [call.get("message") for call in self.calls]

    # -- a connection -----------------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        self.connections += 1
        self.open_connections += 1
        self.sockets.append(ws)
        send, receive = trio.open_memory_channel[Any](1_000_000)
        seen = 0
        outstanding = [0]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._replier, ws, receive, outstanding)
                while True:
                    try:
                        text = await ws.get_message()
                    except ConnectionClosed:
                        break
                    seen += 1
                    if self.flap_every and seen % self.flap_every == 0:
                        break  # this one is never answered
                    try:
                        message = json.loads(text)
                    except ValueError:
                        send.send_nowait(
                            {
                                "jsonrpc": "2.0",
                                "id": None,
                                "error": {"code": -32700, "message": "parse error"},
                            }
                        )
                        continue
                    requests = [
                        m
                        for m in (message if isinstance(message, list) else [message])
                        if isinstance(m, dict) and "id" in m
                    ]
                    for item in requests:
                        if item.get("method") == "tools/call":
                            self.received += 1
                    outstanding[0] += len(requests)
                    self.max_outstanding = max(self.max_outstanding, outstanding[0])
                    if requests:
                        send.send_nowait(requests if isinstance(message, list) else requests[0])
                nursery.cancel_scope.cancel()
            with trio.move_on_after(1):
                await ws.aclose()
        finally:
            self.open_connections -= 1
            self.sockets.remove(ws)

    async def _replier(
        self, ws: WebSocketConnection, receive: trio.MemoryReceiveChannel[Any], outstanding: list[int]
    ) -> None:
        async for message in receive:
            batch = message if isinstance(message, list) else [message]
            replies = []
            for item in batch:
                if self.delay:
                    await trio.sleep(self.delay)
                replies.append(await self._answer(item))
                outstanding[0] -= 1
            try:
                await ws.send_message(json.dumps(replies if isinstance(message, list) else replies[0]))
            except ConnectionClosed:
                return

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        method, params, request_id = request.get("method"), request.get("params") or {}, request.get("id")
        if method == "initialize":
            self.initialized += 1
            return {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": {
                    "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "godot-standin", "version": "0"},
                },
            }
        if method == "tools/call" and params.get("name") == self.tool:
            if self.erroring:
                self.errors += 1
                return {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": -32603, "message": "godot stand-in: failing on purpose"},
                }
            if self.record:
                self.calls.append(params.get("arguments") or {})
            self.handled += 1
            async with self.changed:
                self.changed.notify_all()
            return {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": {"content": [{"type": "text", "text": "logged"}], "isError": False},
            }
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": -32601, "message": f"godot stand-in: no {method} {params.get('name', '')}"},
        }

    # -- as a task --------------------------------------------------------------------------

    async def run(self, nursery: trio.Nursery, *, listening: bool = True) -> GodotStandIn:
        self.bind(nursery, reserve_port=not listening)
        if listening:
            await self.start()
        return self


@asynccontextmanager
async def godot_standin(*, listening: bool = True, **options: Any) -> AsyncIterator[GodotStandIn]:
    """A stand-in serving in its own nursery for the duration of the block."""
    standin = GodotStandIn(**options)
    async with trio.open_nursery() as nursery:
        await standin.run(nursery, listening=listening)
        try:
            yield standin
        finally:
            await standin.stop()
            standin.release_port()
            nursery.cancel_scope.cancel()


async def _main(argv: list[str]) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--no-record", action="store_true", help="count calls, keep no arguments")
    options = parser.parse_args(argv)
    standin = GodotStandIn(delay=options.delay, record=not options.no_record)
    standin.port = options.port or None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await standin.run(nursery)
            print(f"PORT {standin.port}", flush=True)
            async for _ in signals:
                break
            print(f"HANDLED {standin.handled}", flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(_main, sys.argv[1:])
