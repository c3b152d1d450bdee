"""Another program saving a working file as editors and services do: write a temp file
beside it, then rename it over the file.

Reads commands from stdin, one a line:

    replace PATH SIZE       write SIZE random bytes to PATH.tmp-<pid>, fsync, rename over PATH
    rewrite PATH SIZE       write SIZE random bytes into PATH itself (same inode), in place

and answers each with ``done <sha256>`` once the content is in place (``gone`` when the
folder is gone). Prints ``ready`` first.
"""

from __future__ import annotations

import hashlib
import os
import sys


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    emit("ready")
    for line in sys.stdin:
        kind, path, size = line.split()
        data = os.urandom(int(size))
        try:
            if kind == "replace":
                temp = f"{path}.tmp-{os.getpid()}"
                with open(temp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(temp, path)
            else:
                with open(path, "r+b") as f:
                    f.write(data)
                    f.truncate()
        except FileNotFoundError:
            emit("gone")
            continue
        emit(f"done {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
