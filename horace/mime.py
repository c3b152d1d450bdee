"""MIME type of a catalogued file: by its name first, by its first bytes otherwise."""

from __future__ import annotations

import functools
import mimetypes
from typing import Any

OCTET_STREAM = "application/octet-stream"
ZIP_SIGNATURE = b"PK\x03\x04"


def detect(file_path: str, head: bytes) -> str:
    guessed, _ = mimetypes.guess_type(file_path, strict=False)
    if guessed:
        return guessed
    if not head:
        return OCTET_STREAM
    import filetype  # here: most names are typed by their extension, and it is slow to import

    every, without_zipped = _matchers()
    # Magic numbers of common binary formats.
    sniffed = filetype.match(head, every if head.startswith(ZIP_SIGNATURE) else without_zipped)
    if sniffed is not None:
        return str(sniffed.mime)
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not merely a character cut at the end
                return OCTET_STREAM
        return "text/plain"
    return OCTET_STREAM


@functools.cache
def _matchers() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """filetype's matchers, all of them and all but the zipped documents'. Those (docx,
    xlsx, odt, ...) match only content that starts with a zip's signature, but each looks
    for it through the whole head first: without them a head that is not a zip is typed
    in about half the time, with the same answer."""
    import filetype
    from filetype.types.document import ZippedDocumentBase

    every = tuple(filetype.types)
    return every, tuple(m for m in every if not isinstance(m, ZippedDocumentBase))
