"""A writer process for the crash and multi-process tests.

It opens the catalog through ``horace.assemble.open_catalog`` exactly as the server does,
prints ``ready``, optionally waits for a line on stdin (a start barrier), then loops:
write new content into a working file, call ``catalog.update``, and print a line per
version the update *returned*, flushed at once:

    wrote <rel> <sha256>                      (before the content lands in the working file)
    committed <rel> <version> <sha256>        (after update returned with a new version)
    unchanged <rel> <current_version>         (after update returned without one)

Content is written in place (``--inplace``: truncate and write, as an external writer
would) or atomically (a temp file outside files/ renamed over the working file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

import trio

from horace.assemble import open_catalog
from horace.backends.records import FileChanges
from horace.config import Settings


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True, type=Path)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--path", action="append", required=True, help="working file, relative to files/")
    parser.add_argument("--count", type=int, default=0, help="updates to make (0: until killed)")
    parser.add_argument("--min-size", type=int, default=1)
    parser.add_argument("--max-size", type=int, default=64 * 1024)
    parser.add_argument("--version-count", type=int, default=100_000)
    parser.add_argument("--check", action="store_true", help="run the start-up fsck (repair)")
    parser.add_argument("--inplace", action="store_true")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--tag", default="w")
    args = parser.parse_args()

    settings = Settings(
        storage_path=args.storage, database_url=args.database_url, version_count=args.version_count
    )
    rng = random.Random()
    scratch = args.storage / "scratch"
    scratch.mkdir(exist_ok=True)
    async with open_catalog(settings, check=args.check) as catalog:
        ids = {}
        for rel in args.path:
            ids[rel] = (await catalog.get_info(file_path=rel)).file.id
        emit("ready")
        if args.wait_go:
            await trio.to_thread.run_sync(sys.stdin.readline)
        i = 0
        while args.count == 0 or i < args.count:
            rel = rng.choice(args.path)
            size = rng.randint(args.min_size, args.max_size)
            header = f"{args.tag} {os.getpid()} {i}\n".encode()
            content = header + rng.randbytes(max(size - len(header), 0))
            emit(f"wrote {rel} {hashlib.sha256(content).hexdigest()}")
            target = catalog.storage.files / rel
            if args.inplace:
                target.write_bytes(content)
            else:
                temp = scratch / f"{args.tag}-{os.getpid()}"
                temp.write_bytes(content)
                os.replace(temp, target)
            updated = await catalog.update(ids[rel], FileChanges())
            if updated.version_created:
                emit(f"committed {rel} {updated.file.current_version} {updated.file.checksum}")
            else:
                emit(f"unchanged {rel} {updated.file.current_version}")
            i += 1
        emit("done")


if __name__ == "__main__":
    trio.run(main)
