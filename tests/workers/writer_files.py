"""An external writer for the watch-mode tests: another process writing working files the
way programs do, reporting each state it declares complete.

    writer_files.py append PATH --count 200 --interval 0.005
        open PATH for appending once, append --count lines (each flushed to the kernel at
        once, --interval apart), close.
    writer_files.py chunks PATH --total 20971520 --chunk 2621440 --pause 0.3
        create PATH, write it in chunks with --pause between them (longer than the watcher's
        settle time), keeping it open throughout, close.

Prints ``started`` once the file is open and written to, then ``done <sha256> <size>``
after the close: the only state of the file this writer declares complete.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def append(path: str, count: int, interval: float) -> bytes:
    with open(path, "ab", buffering=0) as f:
        for i in range(count):
            f.write(f"line {i:04d} {os.getpid()} {time.time():.6f}\n".encode())
            if i == 0:
                emit("started")
            time.sleep(interval)
    with open(path, "rb") as f:
        return f.read()


def chunks(path: str, total: int, chunk: int, pause: float) -> bytes:
    digest_input = bytearray()
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < total:
            data = os.urandom(min(chunk, total - written))
            f.write(data)
            digest_input += data
            written += len(data)
            if written == len(data):
                emit("started")
            if written < total:
                time.sleep(pause)
    return bytes(digest_input)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("append")
    a.add_argument("path")
    a.add_argument("--count", type=int, default=200)
    a.add_argument("--interval", type=float, default=0.005)
    c = sub.add_parser("chunks")
    c.add_argument("path")
    c.add_argument("--total", type=int, default=20 << 20)
    c.add_argument("--chunk", type=int, default=(20 << 20) // 8)
    c.add_argument("--pause", type=float, default=0.3)
    args = parser.parse_args()
    if args.mode == "append":
        content = append(args.path, args.count, args.interval)
    else:
        content = chunks(args.path, args.total, args.chunk, args.pause)
    emit(f"done {hashlib.sha256(content).hexdigest()} {len(content)}")


if __name__ == "__main__":
    main()
