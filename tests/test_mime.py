"""A file's MIME type: by its name, else by its first bytes (filetype's magic numbers, then
"is it UTF-8 text")."""

from __future__ import annotations

import io
import random
import zipfile

import filetype
import pytest

from horace import mime


def by_every_matcher(head: bytes) -> str:
    """What detect answers for a name without a known extension, asking every one of
    filetype's matchers (as filetype.guess_mime does)."""
    sniffed = filetype.guess_mime(head)
    if sniffed:
        return str(sniffed)
    if not head or b"\x00" in head:
        return mime.OCTET_STREAM
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:
            return mime.OCTET_STREAM
    return "text/plain"


def zipped(names: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in names.items():
            archive.writestr(name, data)
    return buffer.getvalue()[:4096]


def heads() -> list[bytes]:
    rnd = random.Random(12)
    made = [rnd.randbytes(rnd.choice([1, 7, 300, 4096])) for _ in range(300)]
    made += [mime.ZIP_SIGNATURE + rnd.randbytes(4092) for _ in range(50)]
    made += [rnd.randbytes(2000) + mime.ZIP_SIGNATURE + rnd.randbytes(2000) for _ in range(20)]
    made += [
        b"",
        b"\x89PNG\r\n\x1a\n" + bytes(100),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
        b"plain words, nothing else\n" * 50,
        "déjà vu, encore ".encode() * 100,
        "cut in the middle: é".encode()[:-1],
        zipped({"readme.txt": b"hello"}),
        zipped({"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<x/>"}),
        zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>"}),
        zipped({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<w/>"}),
        zipped({"[Content_Types].xml": b"<Types/>", "ppt/presentation.xml": b"<p/>"}),
    ]
    return made


def test_a_known_extension_decides_before_the_content() -> None:
    assert mime.detect("notes/today.md", b"\x89PNG\r\n\x1a\n") == "text/markdown"
    assert mime.detect("chart.png", b"") == "image/png"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"", mime.OCTET_STREAM),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"),
        (b"plain words\n", "text/plain"),
        (bytes(range(256)), mime.OCTET_STREAM),
        (zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>"}), None),
        (zipped({"readme.txt": b"hello"}), "application/zip"),
    ],
)
def test_content_decides_for_a_name_without_a_known_extension(head: bytes, expected: str | None) -> None:
    found = mime.detect("blob", head)
    if expected is None:  # a Word document: whichever name filetype gives it, not a plain zip
        assert found.startswith("application/vnd.openxmlformats-officedocument.wordprocessingml")
    else:
        assert found == expected


def test_leaving_the_zipped_documents_out_of_a_head_that_is_not_a_zip_changes_no_answer() -> None:
    answers = [(mime.detect("blob", head), by_every_matcher(head)) for head in heads()]
    assert all(ours == theirs for ours, theirs in answers), [pair for pair in answers if pair[0] != pair[1]]
    assert {ours for ours, _ in answers} >= {
        "application/zip",
        "application/vnd.oasis.opendocument.text",
        "image/png",
        "text/plain",
        mime.OCTET_STREAM,
    }
