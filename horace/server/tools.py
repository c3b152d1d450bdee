"""The MCP tool table: for each tool its schemas, annotations, argument class and handler.

Arguments are structured (strictly, with cattrs) into a frozen attrs class at this edge;
the handler gets that instance and a :class:`CallContext`, calls the catalog, and
returns JSON-ready data for ``structuredContent``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from attrs import frozen

from horace import fsck
from horace.catalog import Catalog
from horace.model import ErrorCode, HoraceError
from horace.wire import file_changes, new_file, search_query, structure, to_json

Progress = Callable[[int, int], None]


@frozen
class CallContext:
    catalog: Catalog
    correlation_id: str
    progress: Progress | None = None


Handler = Callable[[CallContext, Any], Awaitable[dict[str, Any]]]


@frozen
class Tool:
    name: str
    description: str
    arguments: type | None  # attrs class; None when the handler takes the raw mapping
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    handler: Handler
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False

    def structure(self, raw: Any) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "arguments must be an object")
        if self.arguments is None:
            return dict(raw)
        return structure(raw, self.arguments)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": {
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": False,
            },
        }


# -- JSON Schema pieces ----------------------------------------------------------------------

STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STRS = {"type": "array", "items": STR}
NULLABLE_STR = {"type": ["string", "null"]}
OBJECT = {"type": "object"}


def obj(required: tuple[str, ...] = (), extra: bool = False, /, **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    return schema


FILE = obj(
    ("id", "file_path", "size", "checksum", "status", "current_version"),
    True,
    id=STR,
    file_path=STR,
    owner=NULLABLE_STR,
    purpose=NULLABLE_STR,
    tags=STRS,
    size=INT,
    mime_type=STR,
    checksum=STR,
    status={"enum": ["active", "archived", "deleted"]},
    current_version=INT,
    correlation_id=NULLABLE_STR,
    created_at=STR,
    updated_at=STR,
    deleted_at=NULLABLE_STR,
    metadata=OBJECT,
)
VERSION = obj(
    ("version", "checksum", "size", "created_at"),
    True,
    file_id=STR,
    version=INT,
    checksum=STR,
    size=INT,
    created_at=STR,
    restored_from_version={"type": ["integer", "null"]},
    correlation_id=NULLABLE_STR,
)
COLLECTION = obj(
    ("name", "member_count"),
    True,
    name=STR,
    description=NULLABLE_STR,
    metadata=OBJECT,
    created_at=STR,
    updated_at=STR,
    member_count=INT,
)
CID = {"correlation_id": STR}


def result(required: tuple[str, ...], **props: Any) -> dict[str, Any]:
    return obj((*required, "correlation_id"), True, **props, **CID)


def metadata_schema(description: str, **props: Any) -> dict[str, Any]:
    return {**obj((), True, **props), "description": description}


# -- argument classes ------------------------------------------------------------------------


@frozen
class RegisterArgs:
    file_path: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@frozen
class FileInfoArgs:
    file_id: str | None = None
    file_path: str | None = None
    include_versions: bool = False


@frozen
class UpdateArgs:
    file_id: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    check_for_changes: bool = True


@frozen
class RestoreArgs:
    file_id: str
    version: int


@frozen
class FileIdArgs:
    file_id: str


@frozen
class CreateCollectionArgs:
    name: str
    description: str | None = None
    file_ids: tuple[str, ...] = ()
    metadata: Mapping[str, Any] | None = None


@frozen
class PageArgs:
    limit: int = 50
    offset: int = 0


@frozen
class GetCollectionArgs:
    name: str
    limit: int = 50
    offset: int = 0


@frozen
class MembersArgs:
    name: str
    file_ids: tuple[str, ...]


@frozen
class NameArgs:
    name: str


@frozen
class LimitArgs:
    limit: int = 100


@frozen
class VerifyArgs:
    file_id: str | None = None


@frozen
class ScanArgs:
    path: str | None = None


# -- handlers --------------------------------------------------------------------------------


def _file(record: Any) -> dict[str, Any]:
    return to_json(record)


async def register(ctx: CallContext, args: RegisterArgs) -> dict[str, Any]:
    new, caller_cid = new_file(args.metadata)
    done = await ctx.catalog.register(args.file_path, new, caller_cid or ctx.correlation_id)
    return {
        "file_id": done.file.id,
        "duplicate": done.duplicate,
        "version_created": done.version_created,
        "current_version": done.file.current_version,
        "file": _file(done.file),
    }


async def search(ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
    query, cursor = search_query(args)
    page = await ctx.catalog.search(query, cursor)
    return to_json(page)


async def get_file_info(ctx: CallContext, args: FileInfoArgs) -> dict[str, Any]:
    info = await ctx.catalog.get_info(
        file_id=args.file_id, file_path=args.file_path, include_versions=args.include_versions
    )
    out: dict[str, Any] = {"file": _file(info.file)}
    if info.versions is not None:
        out["versions"] = to_json(list(info.versions))
    return out


async def update_file(ctx: CallContext, args: UpdateArgs) -> dict[str, Any]:
    changes = file_changes(args.metadata)
    done = await ctx.catalog.update(
        args.file_id, changes, check_for_changes=args.check_for_changes, correlation_id=ctx.correlation_id
    )
    return {
        "file_id": done.file.id,
        "changed_fields": list(done.changed_fields),
        "version_created": done.version_created,
        "current_version": done.file.current_version,
        "file": _file(done.file),
    }


async def restore_version(ctx: CallContext, args: RestoreArgs) -> dict[str, Any]:
    done = await ctx.catalog.restore(args.file_id, args.version, ctx.correlation_id)
    return {
        "file_id": done.file.id,
        "restored_from_version": args.version,
        "new_version": done.version.version,
        "preserved_version": done.preserved_version,
        "current_version": done.file.current_version,
        "file": _file(done.file),
    }


async def delete_file(ctx: CallContext, args: FileIdArgs) -> dict[str, Any]:
    done = await ctx.catalog.delete(args.file_id, ctx.correlation_id)
    return {"file_id": done.file.id, "status": done.file.status.value, "file": _file(done.file)}


async def undelete_file(ctx: CallContext, args: FileIdArgs) -> dict[str, Any]:
    done = await ctx.catalog.undelete(args.file_id, ctx.correlation_id)
    return {"file_id": done.file.id, "status": done.file.status.value, "file": _file(done.file)}


async def create_collection(ctx: CallContext, args: CreateCollectionArgs) -> dict[str, Any]:
    created = await ctx.catalog.create_collection(
        args.name, args.description, args.file_ids, dict(args.metadata) if args.metadata is not None else None
    )
    return {"collection": to_json(created)}


async def list_collections(ctx: CallContext, args: PageArgs) -> dict[str, Any]:
    total, found = await ctx.catalog.list_collections(args.limit, args.offset)
    return {"total_count": total, "collections": to_json(found), "limit": args.limit, "offset": args.offset}


async def get_collection(ctx: CallContext, args: GetCollectionArgs) -> dict[str, Any]:
    found, members = await ctx.catalog.get_collection(args.name, args.limit, args.offset)
    return {
        "collection": to_json(found),
        "files": to_json(members),
        "limit": args.limit,
        "offset": args.offset,
    }


async def add_to_collection(ctx: CallContext, args: MembersArgs) -> dict[str, Any]:
    return {"collection": to_json(await ctx.catalog.add_to_collection(args.name, args.file_ids))}


async def remove_from_collection(ctx: CallContext, args: MembersArgs) -> dict[str, Any]:
    return {"collection": to_json(await ctx.catalog.remove_from_collection(args.name, args.file_ids))}


async def delete_collection(ctx: CallContext, args: NameArgs) -> dict[str, Any]:
    await ctx.catalog.delete_collection(args.name)
    return {"name": args.name, "deleted": True}


async def find_duplicates(ctx: CallContext, args: LimitArgs) -> dict[str, Any]:
    groups = await ctx.catalog.find_duplicates(args.limit)
    return {"groups": to_json(groups), "group_count": len(groups)}


async def verify(ctx: CallContext, args: VerifyArgs) -> dict[str, Any]:
    report = await fsck.verify(ctx.catalog, args.file_id, progress=ctx.progress)
    return {**to_json(report), "ok": not report.problems}


async def scan(ctx: CallContext, args: ScanArgs) -> dict[str, Any]:
    report = await ctx.catalog.scan(args.path, ctx.correlation_id, progress=ctx.progress)
    return to_json(report)


# -- the table -------------------------------------------------------------------------------

_SEARCH_FILTERS = {
    "tags": {**STRS, "description": "files that have all of these tags"},
    "any_tags": {**STRS, "description": "files that have any of these tags"},
    "owner": STR,
    "purpose": {**STR, "description": "prefixes of words of the purpose or path (all; ASCII in any case)"},
    "path": {**STR, "description": "glob relative to files/, e.g. gates/*.md"},
    "collection": STR,
    "file_type": {**STR, "description": "MIME type (image/png, image/*) or extension (pdf)"},
    "min_size": {**INT, "minimum": 0},
    "max_size": {**INT, "minimum": 0},
    "created_after": {**STR, "format": "date-time"},
    "created_before": {**STR, "format": "date-time"},
    "checksum": STR,
    "correlation_id": STR,
    "status": {"enum": ["active", "archived", "deleted", "all"]},
    "limit": {**INT, "minimum": 1, "description": "default 50, at most 1000"},
    "offset": {**INT, "minimum": 0},
    "cursor": {**STR, "description": "next_cursor of the previous page"},
    "sort_by": {"enum": ["created_at", "updated_at", "size", "path"]},
    "order": {"enum": ["asc", "desc"]},
}
_PAGE = {"limit": {**INT, "minimum": 1}, "offset": {**INT, "minimum": 0}}
_FILE_REF = {"file_id": {**STR, "description": "the file's id (UUID)"}}
_FILE_RESULT = result(("file_id", "file"), file_id=STR, status=STR, file=FILE)

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool(
            "horace_register_file",
            "Catalog a file under the storage's files/ folder: checksum, size, MIME type and "
            "version 1. A path already catalogued returns its record (with a new version if the "
            "content changed); content already catalogued elsewhere returns that file with "
            "duplicate=true.",
            RegisterArgs,
            obj(
                ("file_path",),
                file_path={**STR, "description": "relative to files/, or absolute inside it"},
                metadata=metadata_schema(
                    "owner, purpose, tags, collection, correlation_id; "
                    "other keys are kept as custom metadata",
                    owner=STR,
                    purpose=STR,
                    tags=STRS,
                    collection=STR,
                    correlation_id=STR,
                ),
            ),
            result(
                ("file_id", "duplicate", "version_created", "file"),
                file_id=STR,
                duplicate=BOOL,
                version_created=BOOL,
                current_version=INT,
                file=FILE,
            ),
            register,
            idempotent=True,
        ),
        Tool(
            "horace_search_files",
            "Search the catalog. Filters may be given flat or nested in query{}; results are "
            "paged with limit/offset or the returned next_cursor.",
            None,
            obj(query=obj(**_SEARCH_FILTERS), **_SEARCH_FILTERS),
            result(
                ("total_count", "results", "limit", "offset"),
                total_count=INT,
                results={"type": "array", "items": FILE},
                limit=INT,
                offset=INT,
                next_cursor=NULLABLE_STR,
            ),
            search,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_get_file_info",
            "The whole record of a file (by file_id or file_path) and, with include_versions, "
            "its versions newest first.",
            FileInfoArgs,
            obj(**_FILE_REF, file_path=STR, include_versions=BOOL),
            result(("file",), file=FILE, versions={"type": "array", "items": VERSION}),
            get_file_info,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_update_file",
            "Change a file's allow-listed metadata (tags, purpose, owner, status, collection, "
            "custom). By default the working file is checked first and versioned if it changed.",
            UpdateArgs,
            obj(
                ("file_id",),
                **_FILE_REF,
                check_for_changes=BOOL,
                metadata=metadata_schema(
                    "only these fields may change",
                    tags=STRS,
                    purpose=STR,
                    owner=STR,
                    status={"enum": ["active", "archived", "deleted"]},
                    collection=STR,
                    custom=OBJECT,
                ),
            ),
            result(
                ("file_id", "changed_fields", "version_created", "current_version"),
                file_id=STR,
                changed_fields=STRS,
                version_created=BOOL,
                current_version=INT,
                file=FILE,
            ),
            update_file,
        ),
        Tool(
            "horace_restore_version",
            "Put an earlier version back: verified first, the working file's unsaved content kept "
            "as a version, then written back atomically as a new version.",
            RestoreArgs,
            obj(("file_id", "version"), **_FILE_REF, version={**INT, "minimum": 1}),
            result(
                ("file_id", "new_version", "current_version"),
                file_id=STR,
                restored_from_version=INT,
                new_version=INT,
                preserved_version={"type": ["integer", "null"]},
                current_version=INT,
                file=FILE,
            ),
            restore_version,
        ),
        Tool(
            "horace_delete_file",
            "Soft-delete a file: status deleted, working copy removed, history kept until purge.",
            FileIdArgs,
            obj(("file_id",), **_FILE_REF),
            _FILE_RESULT,
            delete_file,
            destructive=True,
            idempotent=False,
        ),
        Tool(
            "horace_undelete_file",
            "Make a deleted file active again; its working copy is written back if it is gone.",
            FileIdArgs,
            obj(("file_id",), **_FILE_REF),
            _FILE_RESULT,
            undelete_file,
        ),
        Tool(
            "horace_create_collection",
            "Create a collection, or update its description and metadata and add files to it.",
            CreateCollectionArgs,
            obj(("name",), name=STR, description=STR, file_ids=STRS, metadata=OBJECT),
            result(("collection",), collection=COLLECTION),
            create_collection,
            idempotent=True,
        ),
        Tool(
            "horace_list_collections",
            "The collections, with their member counts.",
            PageArgs,
            obj(**_PAGE),
            result(
                ("total_count", "collections"),
                total_count=INT,
                collections={"type": "array", "items": COLLECTION},
                limit=INT,
                offset=INT,
            ),
            list_collections,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_get_collection",
            "A collection and its files.",
            GetCollectionArgs,
            obj(("name",), name=STR, **_PAGE),
            result(
                ("collection", "files"),
                collection=COLLECTION,
                files={"type": "array", "items": FILE},
                limit=INT,
                offset=INT,
            ),
            get_collection,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_add_to_collection",
            "Add files to a collection (a file may belong to several).",
            MembersArgs,
            obj(("name", "file_ids"), name=STR, file_ids=STRS),
            result(("collection",), collection=COLLECTION),
            add_to_collection,
            idempotent=True,
        ),
        Tool(
            "horace_remove_from_collection",
            "Remove files from a collection; the files stay catalogued.",
            MembersArgs,
            obj(("name", "file_ids"), name=STR, file_ids=STRS),
            result(("collection",), collection=COLLECTION),
            remove_from_collection,
            idempotent=True,
        ),
        Tool(
            "horace_delete_collection",
            "Delete a collection; its files stay.",
            NameArgs,
            obj(("name",), name=STR),
            result(("name", "deleted"), name=STR, deleted=BOOL),
            delete_collection,
            destructive=True,
        ),
        Tool(
            "horace_find_duplicates",
            "Groups of catalogued files with the same content.",
            LimitArgs,
            obj(limit={**INT, "minimum": 1}),
            result(
                ("groups",),
                group_count=INT,
                groups={
                    "type": "array",
                    "items": obj(
                        ("checksum", "files"),
                        True,
                        checksum=STR,
                        size=INT,
                        files={"type": "array", "items": FILE},
                    ),
                },
            ),
            find_duplicates,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_verify",
            "Re-hash working files and stored objects; report mismatches and missing objects.",
            VerifyArgs,
            obj(**_FILE_REF),
            result(
                ("ok", "problems"),
                ok=BOOL,
                files_checked=INT,
                objects_checked=INT,
                problems={
                    "type": "array",
                    "items": obj((), True, kind=STR, file_id=STR, file_path=STR, detail=STR),
                },
            ),
            verify,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_scan",
            "Register untracked files and version changed ones under files/ (or path); sends "
            "progress notifications when the call carries a progressToken.",
            ScanArgs,
            obj(path={**STR, "description": "a folder under files/"}),
            result(
                ("scanned", "registered", "versioned"),
                scanned=INT,
                registered=INT,
                versioned=INT,
                unchanged=INT,
                duplicates=INT,
                errors=STRS,
            ),
            scan,
            idempotent=True,
        ),
    ]
}
