"""Horace in OS processes of its own: tests/workers/version_loop.py from a trio test, and
`horace serve` as an operator starts it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import trio

WORKER = Path(__file__).parent / "workers" / "version_loop.py"


@attrs.define
class Worker:
    """One running worker; ``lines`` holds its complete output lines so far."""

    process: trio.Process
    lines: list[str] = attrs.field(factory=list)
    partial: bytes = b""
    ready: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)

    async def pump(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.receive_some(65536):
            self.partial += chunk
            *complete, self.partial = self.partial.split(b"\n")
            for raw in complete:
                line = raw.decode()
                self.lines.append(line)
                if line == "ready":
                    self.ready.set()
        self.finished.set()

    async def go(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")


def worker_command(storage: Path, database_url: str, paths: Sequence[str], *options: str) -> list[str]:
    command = [
        sys.executable,
        str(WORKER),
        "--storage",
        str(storage),
        "--database-url",
        database_url,
    ]
    for rel in paths:
        command += ["--path", rel]
    return [*command, *options]


async def start_worker(nursery: trio.Nursery, command: list[str]) -> Worker:
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    worker = Worker(process)
    nursery.start_soon(worker.pump)
    return worker


@attrs.frozen
class Reported:
    wrote: set[tuple[str, str]]  # (rel, checksum)
    committed: list[tuple[str, int, str]]  # (rel, version, checksum)


def parse(lines: Sequence[str]) -> Reported:
    wrote: set[tuple[str, str]] = set()
    committed: list[tuple[str, int, str]] = []
    for line in lines:
        kind, *rest = line.split(" ")
        if kind == "wrote":
            wrote.add((rest[0], rest[1]))
        elif kind == "committed":
            committed.append((rest[0], int(rest[1]), rest[2]))
    return Reported(wrote, committed)


@contextlib.contextmanager
def serve_process(
    environment: dict[str, str], **popen: object
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`horace serve` on a free port, once /health answers; killed on the way out."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "text": True, **popen}
    server = subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "horace", "serve", "--port", str(port), "--log-level", "WARNING"],
        env=environment,
        **options,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # serving: its catalog opened, the store bound to it
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield server, port
    finally:
        server.kill()
        server.wait()
