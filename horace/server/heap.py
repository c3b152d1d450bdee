"""How the server's process keeps the memory of large messages from staying behind.

Parsed, a message near ``max_message_bytes`` can take 90 MB of small objects and lists
of a million pointers, and its turn in the conversation log a few megabytes of text.
glibc maps blocks that large on their own and unmaps them when freed, but after the
first such block is freed it raises that threshold to the block's size, and from then
on the next ones come from its heap, where what is freed stays resident. Measured with
20 connections each sending 4 MiB of ``[{},…]`` at once (before values were counted,
horace.server.jsonrpc.MAX_VALUES): the server's peak varied from 250 to 300 MiB, highest
on the second or third message; with the threshold held and the heap trimmed after each
large message, 236-258 MiB. Elsewhere than glibc neither is
there, and nothing is done.
"""

from __future__ import annotations

import ctypes
from typing import Any

_libc: Any = ctypes.CDLL(None)  # (the process's own symbols, libc's among them)
_mallopt = getattr(_libc, "mallopt", None)
_malloc_trim = getattr(_libc, "malloc_trim", None)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # (glibc's malloc.h)
# glibc's own defaults; set, they no longer move.
_MMAP_THRESHOLD = _TRIM_THRESHOLD = 128 * 1024


def hold_large_blocks_apart() -> None:
    """Have every block of more than 128 KiB mapped on its own, and given back when freed
    (for the whole process; once, at the server's start)."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        _mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def give_back() -> None:
    """Return the heap's free pages to the system (a few milliseconds; no checkpoint)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
