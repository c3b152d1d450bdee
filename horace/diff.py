"""What changed between two versions of a file, so an agent need not read both.

Text (UTF-8 without NUL bytes) gets a unified diff, cut at a size an agent can take;
anything else a summary: sizes, checksums, and whether the two are the same. Versions
over the read limit (``HORACE_MAX_READ_BYTES``) are not read: their summary is the
catalog's, which is all a line diff of them could add to anyway.

difflib's matching takes time that grows with the product of the line counts (minutes
for two 4 MiB texts of shuffled lines, in a thread no deadline can stop), so only the
part between the common first and last lines is matched, and when that part is still
too large (over ``MAX_MATCHED_LINE_PAIRS``) it is given as one hunk that replaces all of
it: a correct diff, if not the shortest.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from contextlib import nullcontext

import trio
from attrs import frozen

from horace.backends.records import FileRecord, VersionRecord
from horace.catalog import Catalog, Content
from horace.schema import param

CONTEXT_LINES = 3
DIFF_LIMIT = 256 * 1024  # bytes of a unified diff in one result
MAX_MATCHED_LINE_PAIRS = 4_000_000  # about 0.2 s of difflib at worst
# A diff holds each line of both versions as a string of its own, some 60 bytes more than
# the line: two texts at the read limit made of short lines, 2 million lines each, hold
# about 350 MB while compared. Diffs of versions of more lines than this run one at a
# time, server-wide, so that the calls the reply room lets run at once (8) cannot hold
# that eight times over.
MANY_LINES = 100_000
_ONE_DIFF_OF_MANY_LINES = trio.CapacityLimiter(1)


@frozen(kw_only=True)
class Diff:
    file_id: str
    file_path: str
    from_version: int
    to_version: int
    identical: bool
    kind: str = param(
        doc="text: a unified diff follows; binary, or large (over the read limit): only the summary"
    )
    diff: str | None = param(doc="the unified diff of the two (text only)")
    truncated: bool = param(doc="the diff was cut at the size limit")
    from_size: int
    to_size: int
    from_checksum: str
    to_checksum: str


def _text(data: bytes) -> str | None:
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


async def between(
    catalog: Catalog, file: FileRecord, from_version: int, to_version: int | None, read_limit: int
) -> Diff:
    """Version *from_version* of *file* against *to_version* (None: the current one).
    Versions of up to *read_limit* bytes are read back, checked and compared line by
    line (in a worker thread); larger ones by their sizes and checksums."""
    old = await catalog.kept_version(file, from_version)
    new = await catalog.kept_version(file, to_version)
    if max(old.size, new.size) > read_limit:
        return _summary(file, old, new, "large")
    before = await catalog.content_of(file, old, read_limit)
    after = await catalog.content_of(file, new, read_limit)
    many = max(before.data.count(b"\n"), after.data.count(b"\n")) > MANY_LINES
    async with _ONE_DIFF_OF_MANY_LINES if many else nullcontext():
        return await trio.to_thread.run_sync(compare, before, after, DIFF_LIMIT)


def _summary(
    file: FileRecord,
    old: VersionRecord,
    new: VersionRecord,
    kind: str,
    diff: str | None = None,
    truncated: bool = False,
) -> Diff:
    return Diff(
        file_id=file.id,
        file_path=file.file_path,
        from_version=old.version,
        to_version=new.version,
        identical=old.checksum == new.checksum,
        kind=kind,
        diff=diff,
        truncated=truncated,
        from_size=old.size,
        to_size=new.size,
        from_checksum=old.checksum,
        to_checksum=new.checksum,
    )


def compare(old: Content, new: Content, max_diff_bytes: int) -> Diff:
    """The change from *old* to *new* (two versions of one file). Blocking: CPU work for
    a worker thread when the contents are large."""
    before, after = _text(old.data), _text(new.data)
    diff: str | None = None
    truncated = False
    if before is not None and after is not None:
        lines = _unified(
            _lines(before),
            _lines(after),
            _header_name(f"{old.file.file_path}@v{old.version.version}"),
            _header_name(f"{new.file.file_path}@v{new.version.version}"),
        )
        kept: list[str] = []
        size = 0
        for line in lines:
            line = line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            encoded = line.encode()
            if size + len(encoded) > max_diff_bytes:
                # The line that crosses the limit is given as far as it fits: a text of
                # one long line would otherwise show nothing but the headers.
                head = encoded[: max_diff_bytes - size - 1].decode("utf-8", "ignore")
                if head:
                    kept.append(head + "\n")
                truncated = True
                break
            size += len(encoded)
            kept.append(line)
        diff = "".join(kept)
    kind = "text" if diff is not None else "binary"
    return _summary(new.file, old.version, new.version, kind, diff=diff, truncated=truncated)


def _lines(text: str) -> list[str]:
    """*text*'s lines as a unified diff counts them: ended by a newline only, each with its
    own (str.splitlines also ends one at a form feed, U+2028 and others, which would give a
    patch that counts lines the file does not have); the last one without, if so written."""
    lines = text.split("\n")
    last = lines.pop()
    return [line + "\n" for line in lines] + ([last] if last else [])


# What may not stand bare in a ---/+++ line: what could end it and forge the lines after it
# (a newline; U+2028, which a reader's splitlines() ends a line at), take over a terminal
# (escapes), or make the name read as another (bidirectional overrides, characters of no
# width); and the quote and backslash that quoting itself uses.
_NEEDS_QUOTING = re.compile(
    '["\\\\\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff]'
)
_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _header_name(label: str) -> str:
    """*label* (a path and its version) for a diff's header line: as it is, or quoted as
    git quotes a name (C escapes, any other such character's UTF-8 bytes in octal)."""
    if _NEEDS_QUOTING.search(label) is None:
        return label

    def escaped(match: re.Match[str]) -> str:
        char = match.group()
        return _C_ESCAPES.get(char) or "".join(f"\\{byte:03o}" for byte in char.encode("utf-8"))

    return '"' + _NEEDS_QUOTING.sub(escaped, label) + '"'


def _unified(a: list[str], b: list[str], fromfile: str, tofile: str) -> Iterator[str]:
    """difflib's unified diff of *a* and *b*, or, when the part between their common
    first and last lines is too large to match, one hunk replacing that part."""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    changed_a, changed_b = len(a) - head - tail, len(b) - head - tail
    if changed_a * changed_b <= MAX_MATCHED_LINE_PAIRS:
        yield from difflib.unified_diff(a, b, fromfile=fromfile, tofile=tofile, n=CONTEXT_LINES)
        return
    before, after = min(CONTEXT_LINES, head), min(CONTEXT_LINES, tail)
    start = head - before
    yield f"--- {fromfile}\n"
    yield f"+++ {tofile}\n"
    span = before + after
    yield f"@@ -{_range(start, span + changed_a)} +{_range(start, span + changed_b)} @@\n"
    yield from (" " + line for line in a[start:head])
    yield from ("-" + line for line in a[head : len(a) - tail])
    yield from ("+" + line for line in b[head : len(b) - tail])
    yield from (" " + line for line in a[len(a) - tail : len(a) - tail + after])


def _range(start: int, length: int) -> str:
    """A hunk's range as unified diffs write it (*start* counted from 0)."""
    if length == 1:
        return str(start + 1)
    return f"{start if length == 0 else start + 1},{length}"
