"""History as MCP resources: a file's current content, and any version's.

    horace://files/{file_id}                     the current version
    horace://files/{file_id}/versions/{version}  one version

Content is read from the object store (the bytes Horace keeps, checked against their
checksum as they are read), not from the working file: a resource is a version. Text
(UTF-8 without NUL bytes) is sent as text, anything else as a base64 blob, each at most
``HORACE_MAX_READ_BYTES``. ``resources/list`` pages the active files by path;
``completion/complete`` completes a template's ``file_id`` (from an id's start or a
path's words) and ``version``.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from typing import Any

from horace import mime
from horace.backends.protocol import BackendUnavailable
from horace.backends.records import INT64_MAX, FileRecord, Order, SearchQuery, SortKey, Status
from horace.catalog import Catalog
from horace.model import ErrorCode, HoraceError
from horace.server.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RESOURCE_NOT_FOUND, RpcError, bounded
from horace.server.tools import MAX_PATTERN
from horace.storage import HEAD_BYTES

FILE_URI = "horace://files/{file_id}"
VERSION_URI = "horace://files/{file_id}/versions/{version}"
# A version number is at most 19 digits (what a catalog column holds is checked below),
# written one way: versions/01 is no URI of Horace's (a reply echoes the URI it was asked).
_URI = re.compile(r"^horace://files/(?P<file_id>[^/?#]+)(?:/versions/(?P<version>[1-9][0-9]{0,18}))?$")
# Active files a resources/list page holds: clients stop after some number of pages
# (the MCP Inspector after 64), so pages are large (a page of 1000 is about 300 KB).
PAGE = 1000
COMPLETIONS = 100
TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-yaml")

TEMPLATES = [
    {
        "uriTemplate": FILE_URI,
        "name": "file",
        "title": "A file's current content",
        "description": "The current version of a catalogued file, from Horace's object store.",
    },
    {
        "uriTemplate": VERSION_URI,
        "name": "file-version",
        "title": "One version of a file",
        "description": "Any kept version of a catalogued file (listed by horace_get_file_info).",
    },
]


class Resources:
    def __init__(self, catalog: Catalog, max_read_bytes: int) -> None:
        self.catalog = catalog
        self.max_read_bytes = max_read_bytes

    def templates(self) -> dict[str, Any]:
        return {"resourceTemplates": TEMPLATES}

    async def listing(self, params: Mapping[str, Any]) -> dict[str, Any]:
        cursor = params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise RpcError(INVALID_PARAMS, "cursor must be a string")
        query = SearchQuery(status=Status.ACTIVE, limit=PAGE, sort_by=SortKey.PATH, order=Order.ASC)
        page = await self._catalog_call(self.catalog.search(query, cursor))
        listed: dict[str, Any] = {"resources": [_resource(f) for f in page.results]}
        if page.next_cursor:
            listed["nextCursor"] = page.next_cursor
        return listed

    async def read(self, params: Mapping[str, Any]) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "resources/read needs params.uri")
        found = _URI.match(uri)
        if found is None or (found["version"] and int(found["version"]) > INT64_MAX):
            raise RpcError(
                RESOURCE_NOT_FOUND,
                f"no resource {uri!r}: Horace serves {FILE_URI} and {VERSION_URI}",
                {"uri": bounded(uri)},  # (a URI that long is no resource of Horace's)
            )
        version = int(found["version"]) if found["version"] else None
        file = await self._catalog_call(self.catalog.file(found["file_id"]), uri)
        content = await self._catalog_call(self.catalog.content(file, version, self.max_read_bytes), uri)
        # A version's type is its own content's (the file's is its current version's): a file
        # of no extension typed by its first bytes may have been text once and PNG now.
        mime_type = (
            file.mime_type if version is None else mime.detect(file.file_path, content.data[:HEAD_BYTES])
        )
        item: dict[str, Any] = {"uri": uri, "mimeType": mime_type}
        text = _as_text(content.data, mime_type)
        if text is not None:
            item["text"] = text
        else:
            item["blob"] = base64.b64encode(content.data).decode("ascii")
        return {"contents": [item]}

    async def complete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, Mapping) or not isinstance(argument, Mapping):
            raise RpcError(INVALID_PARAMS, "completion/complete needs params.ref and params.argument")
        name, value = argument.get("name"), argument.get("value", "")
        if not isinstance(value, str):
            raise RpcError(INVALID_PARAMS, "argument.value must be a string")
        values: list[str] = []
        more = False  # matches beyond those in values (then their number is not known)
        if ref.get("type") == "ref/resource" and ref.get("uri") in (FILE_URI, VERSION_URI):
            if name == "file_id":
                values, more = await self._file_ids(value)
            elif name == "version":
                context = params.get("context")
                arguments = context.get("arguments") if isinstance(context, Mapping) else None
                file_id = arguments.get("file_id") if isinstance(arguments, Mapping) else None
                values = await self._versions(file_id, value) if isinstance(file_id, str) else []
        # Anything else (Horace has no prompts) completes to nothing.
        completion: dict[str, Any] = {
            "values": values[:COMPLETIONS],
            "hasMore": more or len(values) > COMPLETIONS,
        }
        if not more:
            completion["total"] = len(values)
        return {"completion": completion}

    async def _file_ids(self, typed: str) -> tuple[list[str], bool]:
        """Ids that start with *typed*, then those of files whose paths hold it; and
        whether there are more of either than those."""
        by_id, more = await self._ids_starting(typed)  # a whole id is its own prefix
        if len(by_id) == 1 and len(by_id[0]) == len(typed):
            return by_id, False
        if len(typed) > MAX_PATTERN // 3:  # escaped below, it would pass the pattern's bound
            return by_id, more
        pattern = "*" + "".join(f"[{ch}]" if ch in "*?[" else ch for ch in typed) + "*"
        page = await self._catalog_call(
            self.catalog.search(
                SearchQuery(path=pattern, limit=COMPLETIONS, sort_by=SortKey.PATH, order=Order.ASC)
            )
        )
        more = more or page.total_count > len(page.results)
        return by_id + [f.id for f in page.results if f.id not in by_id], more

    async def _ids_starting(self, typed: str) -> tuple[list[str], bool]:
        """Ids that start with *typed* (hex digits, dashes where an id has them), at most
        COMPLETIONS; and whether there are more."""
        digits = typed.replace("-", "").lower()
        if not digits or len(digits) > 32 or digits.strip("0123456789abcdef"):
            return [], False
        lowest = str(uuid.UUID(hex=digits.ljust(32, "0")))
        try:
            ids = await self.catalog.backend.file_ids_from(lowest, COMPLETIONS + 1)
        except BackendUnavailable:
            return [], False
        starting = [found for found in ids if found.replace("-", "").startswith(digits)]
        return starting[:COMPLETIONS], len(starting) > COMPLETIONS

    async def _versions(self, file_id: str, typed: str) -> list[str]:
        try:
            versions = await self.catalog.backend.versions(file_id)
        except BackendUnavailable:
            return []
        return [str(v.version) for v in versions if str(v.version).startswith(typed)]

    @staticmethod
    async def _catalog_call(work: Any, uri: str | None = None) -> Any:
        """The catalog's answer, its refusals as JSON-RPC errors (resources have no tool
        results to carry them)."""
        try:
            return await work
        except HoraceError as exc:
            if exc.code in (ErrorCode.NOT_CATALOGED, ErrorCode.VERSION_NOT_FOUND, ErrorCode.INVALID_PATH):
                raise RpcError(RESOURCE_NOT_FOUND, exc.message, {"uri": uri} if uri else None) from None
            if exc.code is ErrorCode.INVALID_ARGUMENT:
                raise RpcError(INVALID_PARAMS, exc.message) from None
            raise RpcError(INTERNAL_ERROR, exc.message, {"error_code": exc.code.value}) from None
        except BackendUnavailable as exc:
            raise RpcError(
                INTERNAL_ERROR,
                f"the catalog database is unavailable: {exc}",
                {"error_code": "BACKEND_UNAVAILABLE"},
            ) from None


def _resource(file: FileRecord) -> dict[str, Any]:
    return {
        "uri": f"horace://files/{file.id}",
        "name": file.file_path,
        "title": file.file_path,
        "mimeType": file.mime_type,
        "size": file.size,
        "annotations": {"lastModified": file.updated_at.isoformat()},
    }


def _as_text(data: bytes, mime_type: str) -> str | None:
    textual = (
        mime_type.startswith("text/") or mime_type in TEXT_TYPES or mime_type.endswith(("+json", "+xml"))
    )
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if textual or mime_type == "application/octet-stream" else None
