"""MIME type of a catalogued file: by its name first, by its first bytes otherwise."""

from __future__ import annotations

import mimetypes

OCTET_STREAM = "application/octet-stream"


def detect(file_path: str, head: bytes) -> str:
    guessed, _ = mimetypes.guess_type(file_path, strict=False)
    if guessed:
        return guessed
    if not head:
        return OCTET_STREAM
    import filetype  # here: most names are typed by their extension, and it is slow to import

    sniffed = filetype.guess_mime(head)  # magic numbers of common binary formats
    if sniffed:
        return str(sniffed)
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not merely a character cut at the end
                return OCTET_STREAM
        return "text/plain"
    return OCTET_STREAM
