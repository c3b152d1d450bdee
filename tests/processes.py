"""Running tests/workers/version_loop.py as separate OS processes from a trio test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
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
