"""What changed between two versions of a file, so an agent need not read both.

Text (UTF-8 without NUL bytes) gets a unified diff, cut at a size an agent can take;
anything else a summary: sizes, checksums, and whether the two are the same.
"""

from __future__ import annotations

import difflib

from attrs import frozen

from horace.catalog import Content
from horace.schema import param

CONTEXT_LINES = 3


@frozen(kw_only=True)
class Diff:
    file_id: str
    file_path: str
    from_version: int
    to_version: int
    identical: bool
    kind: str = param(doc="text: a unified diff follows; binary: only the summary")
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


def compare(old: Content, new: Content, max_diff_bytes: int) -> Diff:
    """The change from *old* to *new* (two versions of one file). Blocking: CPU work for
    a worker thread when the contents are large."""
    before, after = _text(old.data), _text(new.data)
    diff: str | None = None
    truncated = False
    if before is not None and after is not None:
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{old.file.file_path}@v{old.version.version}",
            tofile=f"{new.file.file_path}@v{new.version.version}",
            n=CONTEXT_LINES,
        )
        kept: list[str] = []
        size = 0
        for line in lines:
            size += len(line.encode())
            if size > max_diff_bytes:
                truncated = True
                break
            kept.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        diff = "".join(kept)
    return Diff(
        file_id=new.file.id,
        file_path=new.file.file_path,
        from_version=old.version.version,
        to_version=new.version.version,
        identical=old.version.checksum == new.version.checksum,
        kind="text" if diff is not None else "binary",
        diff=diff,
        truncated=truncated,
        from_size=old.version.size,
        to_size=new.version.size,
        from_checksum=old.version.checksum,
        to_checksum=new.version.checksum,
    )
