"""Packs: many small objects in one file, so that a first scan of many small files
makes a few files instead of one per file.

A pack is written whole in ``.horace/tmp``, linked into ``objects/packs/`` and made
durable with the rest of its batch (its link in ``.horace/tmp`` stays until the batch is
committed: see ``Storage.release_pack``); it is never changed afterwards. Its layout::

    HEADER
    entry*        32-byte sha256, 8-byte length (big-endian), the content
    index         one 48-byte row per entry, sorted by sha256: sha256, offset, length
    trailer       8-byte entry count, sha256 of the index rows, END

Each entry says what it holds, so a pack whose index is damaged can still be read entry
by entry; the index lets a reader find an entry without reading the others. A pack goes
as a whole: the collector takes it once no version refers to any of its entries.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator, Sequence

HEADER = b"HORACE-PACK-1\n\x00\x00"
END = b"HPACKEND"
_ENTRY = struct.Struct(">32sQ")  # sha256, length: before each entry's content
_ROW = struct.Struct(">32sQQ")  # sha256, offset of the content, length
_TRAILER = struct.Struct(">Q32s8s")  # entries, sha256 of the index rows, END
SUFFIX = ".pack"

# An object this small (and so a pack's largest entry) may be read into memory whole
# when a batch stages it, instead of being copied into a temp file of its own.
OBJECT_MAX = 64 << 10
_WRITE_BYTES = 1 << 20


class PackDamaged(Exception):
    """A pack whose header, trailer or index does not read back as written."""


def write(fd: int, entries: Sequence[tuple[str, bytes]]) -> dict[str, tuple[int, int]]:
    """Write a pack of *entries* (hex sha256, content; distinct) to the empty file *fd*;
    its index, as :func:`read_index` gives it. (Not synced: the caller makes it durable
    with its batch.)"""
    buffer = bytearray(HEADER)
    rows: list[tuple[bytes, int, int]] = []
    offset = len(HEADER)
    for checksum, content in entries:
        digest = bytes.fromhex(checksum)
        buffer += _ENTRY.pack(digest, len(content))
        buffer += content
        offset += _ENTRY.size
        rows.append((digest, offset, len(content)))
        offset += len(content)
        if len(buffer) >= _WRITE_BYTES:  # (few system calls, a bounded buffer)
            _write_all(fd, buffer)
            buffer.clear()
    index = b"".join(_ROW.pack(*row) for row in sorted(rows))
    buffer += index
    buffer += _TRAILER.pack(len(rows), hashlib.sha256(index).digest(), END)
    _write_all(fd, buffer)
    return {digest.hex(): (offset, length) for digest, offset, length in rows}


def read_index(fd: int) -> dict[str, tuple[int, int]]:
    """The entries of the pack open at *fd*: hex sha256 -> (offset, length).
    :class:`PackDamaged` when the pack does not read back as written."""
    size = os.fstat(fd).st_size
    if size < len(HEADER) + _TRAILER.size or os.pread(fd, len(HEADER), 0) != HEADER:
        raise PackDamaged("no pack header")
    count, index_sha, end = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))
    index_at = size - _TRAILER.size - count * _ROW.size
    if end != END or index_at < len(HEADER):
        raise PackDamaged("no pack trailer")
    index = _pread_all(fd, count * _ROW.size, index_at)
    if hashlib.sha256(index).digest() != index_sha:
        raise PackDamaged("the pack's index does not match its trailer")
    found: dict[str, tuple[int, int]] = {}
    for digest, offset, length in _ROW.iter_unpack(index):
        if offset < len(HEADER) + _ENTRY.size or offset + length > index_at:
            raise PackDamaged("an index row points outside the pack")
        found[digest.hex()] = (offset, length)
    return found


def read_entry(fd: int, offset: int, length: int) -> bytes:
    """An entry's content as stored (its bytes are not checked here)."""
    return _pread_all(fd, length, offset)


def salvage(fd: int) -> Iterator[tuple[str, bytes]]:
    """The entries of the pack open at *fd* read one after the other from its start,
    without its index or trailer (for a pack whose index does not read back): each
    whose content still has its sha256. An entry whose content does not is passed over
    by its length; the walk ends where a length runs past the end or past any entry's."""
    size = os.fstat(fd).st_size
    offset = len(HEADER)
    while offset + _ENTRY.size <= size:
        digest, length = _ENTRY.unpack(_pread_all(fd, _ENTRY.size, offset))
        start = offset + _ENTRY.size
        if length > OBJECT_MAX or start + length > size:
            return
        content = _pread_all(fd, length, start)
        if hashlib.sha256(content).digest() == digest:
            yield digest.hex(), content
        offset = start + length


class Locations:
    """Where the packs read so far hold each checksum, in about 150 bytes an entry (a
    digest and one int, not a hex string and a tuple): a store of a million small files
    keeps this in memory."""

    def __init__(self) -> None:
        self.packs: list[str] = []  # read so far, by number
        self._at: dict[bytes, int] = {}  # digest -> offset << 40 | length << 20 | pack number

    def add(self, name: str, index: dict[str, tuple[int, int]]) -> None:
        number = len(self.packs)
        self.packs.append(name)
        for checksum, (offset, length) in index.items():
            if length < 1 << 20 and number < 1 << 20:  # (never otherwise: OBJECT_MAX)
                self._at[bytes.fromhex(checksum)] = offset << 40 | length << 20 | number

    def get(self, checksum: str) -> tuple[str, int, int] | None:
        """(pack, offset, length) of *checksum*, if a pack read so far holds it."""
        try:
            found = self._at.get(bytes.fromhex(checksum))
        except ValueError:  # not a checksum at all
            return None
        if found is None:
            return None
        return self.packs[found & 0xFFFFF], found >> 40, (found >> 20) & 0xFFFFF


def is_pack_name(name: str) -> bool:
    stem = name.removesuffix(SUFFIX)
    return name.endswith(SUFFIX) and len(stem) == 24 and all(c in "0123456789abcdef" for c in stem)


def new_name() -> str:
    return os.urandom(12).hex() + SUFFIX


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)  # (its slices are gone by the time the caller clears *data*)
    while view:
        view = view[os.write(fd, view) :]


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise PackDamaged("the pack ends early")
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)
