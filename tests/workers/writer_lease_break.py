"""A writer that breaks the watcher's read lease, for test_watch.py.

    writer_lease_break.py ROOT SECONDS

Runs a Watcher over a catalog at ROOT (so the process is set up as a watching Horace is),
then for SECONDS probes a working file with ``Storage.is_being_written`` in a tight loop
while a child process keeps opening the same file for writing. A writer's open that
lands while the probe holds its lease breaks the lease, and the kernel signals the
holder (SIGIO, whose default action ends the process). Prints ``survived <probes>
<busy>`` and exits 0 when the process lives through it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio

from horace.assemble import open_catalog
from horace.config import Settings
from horace.watch import Watcher

OPENER = """
import os, sys, time
end = time.time() + float(sys.argv[2])
while time.time() < end:
    fd = os.open(sys.argv[1], os.O_WRONLY)
    os.write(fd, b"x")
    os.close(fd)
"""


async def main() -> None:
    root, seconds = Path(sys.argv[1]), float(sys.argv[2])
    async with (
        open_catalog(Settings(storage_path=root), create=True) as catalog,
        trio.open_nursery() as nursery,
    ):
        watcher = Watcher(catalog, settle=0.2)
        nursery.start_soon(watcher.run)
        with trio.fail_after(20):
            while not watcher.status().get("watching"):
                await trio.sleep(0.01)
        target = catalog.storage.files / "user/contended.bin"
        target.write_bytes(b"x")
        child = await trio.lowlevel.open_process([sys.executable, "-c", OPENER, str(target), str(seconds)])

        def probe() -> tuple[int, int]:
            probes = busy = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                busy += catalog.storage.is_being_written("user/contended.bin")
                probes += 1
            return probes, busy

        probes, busy = await trio.to_thread.run_sync(probe)
        await child.wait()
        print(f"survived {probes} {busy}", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
