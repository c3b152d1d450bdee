"""The MCP tool table: for each tool an argument class, a result class, and a handler.

Each tool is declared once. Its argument class says every field's type, default,
description and bounds (``horace.server.schema.param``); its ``inputSchema`` and
``outputSchema`` are generated from the two classes, and the bounds are checked when the
arguments are structured (strictly, with cattrs: a wrong type, an unknown field, a value
out of bounds is ``INVALID_ARGUMENT``: a tool error in a session of MCP 2025-11-25, JSON-RPC
error -32602 for earlier clients). A handler takes a :class:`CallContext` and the
structured arguments, calls the catalog, and returns the result class; the session
unstructures it into ``structuredContent``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
from attrs import frozen

from horace import fsck
from horace.backends.records import (
    DEFAULT_SEARCH_LIMIT,
    MAX_SEARCH_LIMIT,
    Collection,
    DuplicateGroup,
    FileChanges,
    FileRecord,
    Order,
    SearchQuery,
    SortKey,
    Status,
    VersionRecord,
)
from horace.backends.words import QUERY_WORDS
from horace.catalog import Catalog, Progress, ScanReport
from horace.diff import DIFF_LIMIT, Diff, between
from horace.model import ErrorCode, HoraceError, NewFile, SearchPage
from horace.schema import input_schema, output_schema, param
from horace.server import heap
from horace.wire import structure

READ_LIMIT = 8 * 1024 * 1024  # bytes of one version read through MCP (a diff, a resource)
MAX_TAGS = 100  # tags in one filter
MAX_PATTERN = 4096  # characters of a path glob or a file type (PATH_MAX)
MAX_FILE_IDS = 10_000  # files added to or removed from a collection in one call
# Characters of a correlation id: stored with files and versions and echoed in every
# reply and log line of the call, so one unbounded id would swell each of them.
MAX_CORRELATION_ID = 200


@frozen
class CallContext:
    catalog: Catalog
    correlation_id: str
    progress: Progress | None = None
    read_limit: int = READ_LIMIT


# -- arguments -------------------------------------------------------------------------------

FILE_ID = "the file's id (a UUID)"
FILE_PATH = "the file's path: relative to files/, or absolute inside it"


@frozen(kw_only=True)
class FileRef:
    """A file, by its id or by its path (one of the two)."""

    __one_of__ = ("file_id", "file_path")

    file_id: str | None = param(None, doc=FILE_ID)
    file_path: str | None = param(None, doc=FILE_PATH)

    def __attrs_post_init__(self) -> None:
        if self.file_id is None and self.file_path is None:
            raise ValueError("give file_id or file_path")


@frozen(kw_only=True)
class NewFileMetadata:
    """What the caller says of the file; keys other than these are kept as its custom
    metadata."""

    owner: str | None = param(
        None, doc="defaults to the component folder (gates/, user/, ...); at most 200 characters"
    )
    purpose: str | None = param(None, doc="what the file is for, searchable by its words")
    tags: tuple[str, ...] = param((), doc="labels to search by, each at most 200 characters")
    collection: str | None = param(
        None, doc="add the file to this collection (created if missing; 1 to 200 characters)"
    )
    correlation_id: str | None = param(
        None, doc="stored with the file and its version", max_length=MAX_CORRELATION_ID
    )
    custom: Mapping[str, Any] = param(attrs.Factory(dict), doc="", rest=True)


@frozen(kw_only=True)
class RegisterArgs:
    file_path: str = param(doc=FILE_PATH)
    metadata: NewFileMetadata = param(attrs.Factory(NewFileMetadata), doc="what the caller says of the file")


class StatusFilter(enum.StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"
    DELETED = "deleted"
    ALL = "all"


@frozen(kw_only=True)
class SearchFilters:
    # Bounds where a database has limits of its own (SQLite: the terms of a compound
    # SELECT, a LIKE or GLOB pattern's length), far above any real search.
    tags: tuple[str, ...] = param((), doc="files that have all of these tags", max_items=MAX_TAGS)
    any_tags: tuple[str, ...] = param((), doc="files that have any of these tags", max_items=MAX_TAGS)
    owner: str | None = param(None, doc="files of this owner")
    purpose: str | None = param(
        None,
        doc=(
            f"prefixes of words of the purpose or path (all, at most {QUERY_WORDS} different ones; "
            "ASCII in any case)"
        ),
        max_length=MAX_PATTERN,
    )
    path: str | None = param(
        None, doc="glob relative to files/, e.g. gates/*.md (* also crosses /)", max_length=MAX_PATTERN
    )
    collection: str | None = param(None, doc="files in this collection")
    file_type: str | None = param(
        None, doc="MIME type (image/png, image/*) or extension (pdf)", max_length=MAX_PATTERN
    )
    min_size: int | None = param(None, doc="bytes", minimum=0)
    max_size: int | None = param(None, doc="bytes", minimum=0)
    created_after: datetime | None = param(None, doc="ISO 8601; without a zone: UTC")
    created_before: datetime | None = param(None, doc="ISO 8601; without a zone: UTC")
    checksum: str | None = param(None, doc="SHA-256 of the current content")
    correlation_id: str | None = param(
        None, doc="files registered under this correlation id", max_length=MAX_CORRELATION_ID
    )
    status: StatusFilter = param(StatusFilter.ACTIVE, doc="all: every status")
    limit: int = param(DEFAULT_SEARCH_LIMIT, doc="results per page", minimum=1, maximum=MAX_SEARCH_LIMIT)
    offset: int = param(0, doc="results to skip", minimum=0)
    cursor: str | None = param(None, doc="next_cursor of the previous page (instead of offset)")
    sort_by: SortKey = param(SortKey.CREATED_AT, doc="")
    order: Order = param(Order.DESC, doc="")


@frozen(kw_only=True)
class SearchArgs(SearchFilters):
    """Filters are given flat, or nested in query{} (as older ICCM clients send them)."""

    query: Mapping[str, Any] | None = param(None, doc="the same filters, nested; a flat one wins")


@frozen(kw_only=True)
class FileInfoArgs(FileRef):
    include_versions: bool = param(False, doc="also list the versions, newest first")
    versions_limit: int = param(
        MAX_SEARCH_LIMIT,
        doc="versions listed at most (version_count has them all)",
        minimum=1,
        maximum=MAX_SEARCH_LIMIT,
    )
    versions_offset: int = param(0, doc="newest versions to skip", minimum=0)


@frozen(kw_only=True)
class FileChangeArgs:
    """Only these fields may change."""

    owner: str | None = param(None, doc="at most 200 characters")
    purpose: str | None = param(None, doc="")
    tags: tuple[str, ...] | None = param(None, doc="replaces the tags (each at most 200 characters)")
    status: Status | None = param(
        None, doc="archived or deleted removes the working copy (kept as a version)"
    )
    collection: str | None = param(
        None, doc="add the file to this collection (created if missing; 1 to 200 characters)"
    )
    custom: Mapping[str, Any] | None = param(None, doc="merged into the file's custom metadata")
    correlation_id: str | None = param(
        None, doc="stored with a version this update makes", max_length=MAX_CORRELATION_ID
    )


@frozen(kw_only=True)
class UpdateArgs(FileRef):
    metadata: FileChangeArgs = param(
        attrs.Factory(FileChangeArgs), doc="the changes: only these fields may change"
    )
    check_for_changes: bool = param(
        True,
        doc="version the working file first if its content changed (FILE_LOCKED while another "
        "process has it open for writing)",
    )


@frozen(kw_only=True)
class RestoreArgs(FileRef):
    version: int = param(doc="the version to put back", minimum=1)


@frozen(kw_only=True)
class FileOnlyArgs(FileRef):
    pass


@frozen(kw_only=True)
class DiffArgs(FileRef):
    from_version: int = param(doc="the older version", minimum=1)
    to_version: int | None = param(None, doc="the newer version; the current one when left out", minimum=1)


@frozen(kw_only=True)
class CreateCollectionArgs:
    name: str = param(doc="1 to 200 characters, not blank, no NUL")
    description: str | None = param(None, doc="")
    file_ids: tuple[str, ...] = param((), doc="files to add", max_items=MAX_FILE_IDS)
    metadata: Mapping[str, Any] | None = param(None, doc="replaces the collection's metadata")


@frozen(kw_only=True)
class PageArgs:
    limit: int = param(50, doc="", minimum=1, maximum=MAX_SEARCH_LIMIT)
    offset: int = param(0, doc="", minimum=0)


@frozen(kw_only=True)
class GetCollectionArgs(PageArgs):
    name: str = param(doc="")


@frozen(kw_only=True)
class MembersArgs:
    name: str = param(doc="the collection")
    file_ids: tuple[str, ...] = param(doc="", max_items=MAX_FILE_IDS)


@frozen(kw_only=True)
class NameArgs:
    name: str = param(doc="the collection")


@frozen(kw_only=True)
class DuplicatesArgs:
    limit: int = param(100, doc="groups at most", minimum=1, maximum=MAX_SEARCH_LIMIT)
    offset: int = param(0, doc="groups to skip (the largest content first)", minimum=0)
    files_per_group: int = param(
        10,
        doc="files listed per group at most (file_count has them all)",
        minimum=1,
        maximum=MAX_SEARCH_LIMIT,
    )


@frozen(kw_only=True)
class VerifyArgs:
    file_id: str | None = param(None, doc="only this file (by id); else everything")
    file_path: str | None = param(None, doc="only this file (by path)")
    limit: int = param(
        MAX_SEARCH_LIMIT,
        doc="problems listed at most (problem_count has them all)",
        minimum=1,
        maximum=MAX_SEARCH_LIMIT,
    )


@frozen(kw_only=True)
class ScanArgs:
    path: str | None = param(None, doc="a folder under files/, or one file; else all of files/")


# -- results ---------------------------------------------------------------------------------


@frozen(kw_only=True)
class RegisterResult:
    file_id: str
    duplicate: bool = param(doc="the content was catalogued already, as file_id: nothing new was catalogued")
    version_created: bool
    current_version: int
    file: FileRecord


@frozen(kw_only=True)
class FileInfoResult:
    file: FileRecord
    versions: tuple[VersionRecord, ...] | None = param(doc="newest first, when asked for")
    version_count: int | None = param(doc="how many versions the file has, when they are asked for")


@frozen(kw_only=True)
class UpdateResult:
    file_id: str
    changed_fields: tuple[str, ...]
    version_created: bool
    current_version: int
    file: FileRecord


@frozen(kw_only=True)
class RestoreResult:
    file_id: str
    restored_from_version: int
    new_version: int
    preserved_version: int | None = param(doc="the working file's unsaved content, kept first")
    current_version: int
    file: FileRecord


@frozen(kw_only=True)
class LifecycleResult:
    file_id: str
    status: Status
    changed: bool = param(doc="false when the file was in that state already")
    file: FileRecord


@frozen(kw_only=True)
class CollectionResult:
    collection: Collection


@frozen(kw_only=True)
class CollectionsPage:
    total_count: int
    collections: tuple[Collection, ...]
    limit: int
    offset: int


@frozen(kw_only=True)
class CollectionFiles:
    collection: Collection
    files: tuple[FileRecord, ...]
    limit: int
    offset: int


@frozen(kw_only=True)
class DeletedCollection:
    name: str
    deleted: bool


@frozen(kw_only=True)
class DuplicatesResult:
    group_count: int
    groups: tuple[DuplicateGroup, ...]


@frozen(kw_only=True)
class VerifyResult:
    ok: bool
    files_checked: int
    objects_checked: int
    problem_count: int
    problems: tuple[fsck.Problem, ...]


# -- handlers --------------------------------------------------------------------------------

Handler = Callable[[CallContext, Any], Awaitable[Any]]


async def register(ctx: CallContext, args: RegisterArgs) -> RegisterResult:
    said = args.metadata
    new = NewFile(said.owner, said.purpose, said.tags, said.collection, dict(said.custom))
    done = await ctx.catalog.register(args.file_path, new, said.correlation_id or ctx.correlation_id)
    return RegisterResult(
        file_id=done.file.id,
        duplicate=done.duplicate,
        version_created=done.version_created,
        current_version=done.file.current_version,
        file=done.file,
    )


def _flat_search(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Filters nested in query{} come out, with the flat ones winning."""
    nested = raw.get("query")
    if not isinstance(nested, Mapping):
        return raw
    return {**nested, **{k: v for k, v in raw.items() if k != "query"}}


async def search(ctx: CallContext, args: SearchArgs) -> SearchPage:
    query = SearchQuery(
        tags=args.tags,
        any_tags=args.any_tags,
        owner=args.owner,
        purpose=args.purpose,
        path=args.path,
        collection=args.collection,
        file_type=args.file_type,
        min_size=args.min_size,
        max_size=args.max_size,
        created_after=args.created_after,
        created_before=args.created_before,
        checksum=args.checksum,
        correlation_id=args.correlation_id,
        status=None if args.status is StatusFilter.ALL else Status(args.status.value),
        limit=args.limit,
        offset=args.offset,
        sort_by=args.sort_by,
        order=args.order,
    )
    return await ctx.catalog.search(query, args.cursor)


async def get_file_info(ctx: CallContext, args: FileInfoArgs) -> FileInfoResult:
    info = await ctx.catalog.get_info(
        file_id=args.file_id, file_path=args.file_path, include_versions=args.include_versions
    )
    if info.versions is None:
        return FileInfoResult(file=info.file, versions=None, version_count=None)
    start = args.versions_offset
    return FileInfoResult(
        file=info.file,
        versions=info.versions[start : start + args.versions_limit],
        version_count=len(info.versions),
    )


async def update_file(ctx: CallContext, args: UpdateArgs) -> UpdateResult:
    file = await ctx.catalog.locate(args.file_id, args.file_path)
    said = args.metadata
    changes = FileChanges(said.owner, said.purpose, said.tags, said.status, said.collection, said.custom)
    done = await ctx.catalog.update(
        file.id,
        changes,
        check_for_changes=args.check_for_changes,
        correlation_id=said.correlation_id or ctx.correlation_id,
    )
    return UpdateResult(
        file_id=done.file.id,
        changed_fields=done.changed_fields,
        version_created=done.version_created,
        current_version=done.file.current_version,
        file=done.file,
    )


async def restore_version(ctx: CallContext, args: RestoreArgs) -> RestoreResult:
    file = await ctx.catalog.locate(args.file_id, args.file_path)
    done = await ctx.catalog.restore(file.id, args.version, ctx.correlation_id)
    return RestoreResult(
        file_id=done.file.id,
        restored_from_version=args.version,
        new_version=done.version.version,
        preserved_version=done.preserved_version,
        current_version=done.file.current_version,
        file=done.file,
    )


def _lifecycle(operation: str, target: Status) -> Handler:
    """The handler of delete or undelete: both stay put when the file is there already."""

    async def handler(ctx: CallContext, args: FileOnlyArgs) -> LifecycleResult:
        file = await ctx.catalog.locate(args.file_id, args.file_path)
        done = await getattr(ctx.catalog, operation)(file.id, ctx.correlation_id)
        return LifecycleResult(
            file_id=done.file.id, status=done.file.status, changed=file.status is not target, file=done.file
        )

    return handler


async def diff_versions(ctx: CallContext, args: DiffArgs) -> Diff:
    file = await ctx.catalog.locate(args.file_id, args.file_path)
    return await between(ctx.catalog, file, args.from_version, args.to_version, ctx.read_limit)


async def create_collection(ctx: CallContext, args: CreateCollectionArgs) -> CollectionResult:
    metadata = dict(args.metadata) if args.metadata is not None else None
    created = await ctx.catalog.create_collection(args.name, args.description, args.file_ids, metadata)
    return CollectionResult(collection=created)


async def list_collections(ctx: CallContext, args: PageArgs) -> CollectionsPage:
    total, found = await ctx.catalog.list_collections(args.limit, args.offset)
    return CollectionsPage(total_count=total, collections=tuple(found), limit=args.limit, offset=args.offset)


async def get_collection(ctx: CallContext, args: GetCollectionArgs) -> CollectionFiles:
    found, members = await ctx.catalog.get_collection(args.name, args.limit, args.offset)
    return CollectionFiles(collection=found, files=tuple(members), limit=args.limit, offset=args.offset)


def _members(operation: str) -> Handler:
    async def handler(ctx: CallContext, args: MembersArgs) -> CollectionResult:
        return CollectionResult(collection=await getattr(ctx.catalog, operation)(args.name, args.file_ids))

    return handler


async def delete_collection(ctx: CallContext, args: NameArgs) -> DeletedCollection:
    await ctx.catalog.delete_collection(args.name)
    return DeletedCollection(name=args.name, deleted=True)


async def find_duplicates(ctx: CallContext, args: DuplicatesArgs) -> DuplicatesResult:
    groups = await ctx.catalog.find_duplicates(args.limit, args.offset, args.files_per_group)
    return DuplicatesResult(group_count=len(groups), groups=tuple(groups))


async def verify(ctx: CallContext, args: VerifyArgs) -> VerifyResult:
    file_id = None
    if args.file_id is not None or args.file_path is not None:
        file_id = (await ctx.catalog.locate(args.file_id, args.file_path)).id
    try:
        report = await fsck.verify(ctx.catalog, file_id, progress=ctx.progress)
    finally:
        heap.give_back()  # (what it held of a large store, back to the system)
    return VerifyResult(
        ok=not report.problems,
        files_checked=report.files_checked,
        objects_checked=report.objects_checked,
        problem_count=len(report.problems),
        problems=report.problems[: args.limit],  # a reply that can always be read
    )


async def scan(ctx: CallContext, args: ScanArgs) -> ScanReport:
    try:
        report = await ctx.catalog.scan(args.path, ctx.correlation_id, progress=ctx.progress)
    finally:
        heap.give_back()  # (what it held of a large store, back to the system)
    # Thousands of unreadable files must not make a reply too large to be read.
    return attrs.evolve(
        report,
        errors=_at_most(report.errors),
        skipped=_at_most(report.skipped),
        missing=_at_most(report.missing),
        moved=_at_most(report.moved),
    )


def _at_most(lines: tuple[str, ...], count: int = MAX_SEARCH_LIMIT) -> tuple[str, ...]:
    if len(lines) <= count:
        return lines
    return (*lines[:count], f"... and {len(lines) - count} more (the server's log has each)")


# -- the table -------------------------------------------------------------------------------


@frozen
class Tool:
    name: str
    title: str
    description: str
    arguments: type  # an attrs class (horace.server.schema)
    result: type  # an attrs class
    handler: Handler
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None  # raw arguments, first
    # Its result grows with a page or with the catalog, up to a reply's limit, or it holds
    # whole versions while it runs: such a call reserves a whole reply's room before it
    # runs (see McpSession._room_for_a_reply).
    large_result: bool = False

    def structure(self, raw: Any) -> Any:
        """The arguments as the tool's class: ``INVALID_ARGUMENT`` when they are not."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "arguments must be an object")
        return structure(self.prepare(raw) if self.prepare else raw, self.arguments)

    @functools.cached_property
    def input_schema(self) -> dict[str, Any]:
        return input_schema(self.arguments)

    @functools.cached_property
    def output_schema(self) -> dict[str, Any]:
        """The result's schema; every result also carries the call's correlation id."""
        output = output_schema(self.result)
        output["properties"]["correlation_id"] = {"type": "string"}
        output["required"] = [*output.get("required", []), "correlation_id"]
        return output

    @functools.cached_property
    def entry(self) -> dict[str, Any]:
        """Its entry in tools/list."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": False,
            },
        }

    def describe(self) -> dict[str, Any]:
        return self.entry


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool(
            "horace_register_file",
            "Register a file",
            "Catalog a file under files/: checksum, size, MIME type and version 1. A path already "
            "catalogued returns its record (with a new version if the content changed); content "
            "already catalogued elsewhere returns that file with duplicate=true (its file_id and "
            "file_path are the other file's; this path stays uncatalogued). FILE_LOCKED while "
            "another process has the file open for writing.",
            RegisterArgs,
            RegisterResult,
            register,
            idempotent=True,
        ),
        Tool(
            "horace_search_files",
            "Search files",
            "Search the catalog. Pages with limit and offset, or with the next_cursor returned.",
            SearchArgs,
            SearchPage,
            search,
            read_only=True,
            idempotent=True,
            prepare=_flat_search,
            large_result=True,
        ),
        Tool(
            "horace_get_file_info",
            "Get a file's record",
            "The whole record of a file and, with include_versions, its versions newest first.",
            FileInfoArgs,
            FileInfoResult,
            get_file_info,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            "horace_update_file",
            "Update a file",
            "Change a file's metadata: only the fields listed may change. By default the working "
            "file is checked first and versioned if it changed. A status of archived or deleted "
            "removes the working copy, as horace_delete_file does.",
            UpdateArgs,
            UpdateResult,
            update_file,
            destructive=True,  # (a status change removes the working copy)
        ),
        Tool(
            "horace_restore_version",
            "Restore a version",
            "Put an earlier version back: verified first, the working file's unsaved content kept "
            "as a version, then written back atomically as a new version.",
            RestoreArgs,
            RestoreResult,
            restore_version,
        ),
        Tool(
            "horace_delete_file",
            "Delete a file",
            "Soft delete: status deleted, working copy removed (its content kept as a version), "
            "history kept until purged. A deleted file stays as it is.",
            FileOnlyArgs,
            LifecycleResult,
            _lifecycle("delete", Status.DELETED),
            destructive=True,
            idempotent=True,
        ),
        Tool(
            "horace_undelete_file",
            "Undelete a file",
            "Back to active; the working copy is written back if it is gone. An active file stays as it is.",
            FileOnlyArgs,
            LifecycleResult,
            _lifecycle("undelete", Status.ACTIVE),
            idempotent=True,
        ),
        Tool(
            "horace_diff_versions",
            "Compare two versions",
            "What changed between two versions of a file: a unified diff for text (cut at "
            f"{DIFF_LIMIT // 1024} KiB), else sizes and checksums (also for versions over "
            "HORACE_MAX_READ_BYTES, which are not read).",
            DiffArgs,
            Diff,
            diff_versions,
            read_only=True,
            idempotent=True,
            large_result=True,  # (a diff of up to DIFF_LIMIT)
        ),
        Tool(
            "horace_create_collection",
            "Create a collection",
            "Create a collection, or update its description and metadata and add files to it.",
            CreateCollectionArgs,
            CollectionResult,
            create_collection,
            idempotent=True,
        ),
        Tool(
            "horace_list_collections",
            "List collections",
            "The collections, with their member counts.",
            PageArgs,
            CollectionsPage,
            list_collections,
            read_only=True,
            idempotent=True,
            large_result=True,
        ),
        Tool(
            "horace_get_collection",
            "Get a collection",
            "A collection and a page of its files.",
            GetCollectionArgs,
            CollectionFiles,
            get_collection,
            read_only=True,
            idempotent=True,
            large_result=True,
        ),
        Tool(
            "horace_add_to_collection",
            "Add files to a collection",
            "Add files to a collection (a file may belong to several).",
            MembersArgs,
            CollectionResult,
            _members("add_to_collection"),
            idempotent=True,
        ),
        Tool(
            "horace_remove_from_collection",
            "Remove files from a collection",
            "Remove files from a collection; the files stay catalogued.",
            MembersArgs,
            CollectionResult,
            _members("remove_from_collection"),
            idempotent=True,
        ),
        Tool(
            "horace_delete_collection",
            "Delete a collection",
            "Delete a collection; its files stay.",
            NameArgs,
            DeletedCollection,
            delete_collection,
            destructive=True,
        ),
        Tool(
            "horace_find_duplicates",
            "Find duplicates",
            "Groups of catalogued files with the same content.",
            DuplicatesArgs,
            DuplicatesResult,
            find_duplicates,
            read_only=True,
            idempotent=True,
            large_result=True,
        ),
        Tool(
            "horace_verify",
            "Verify content",
            "Re-hash stored objects and working files (of one file, or all); report mismatches "
            "and missing objects. Nothing is repaired.",
            VerifyArgs,
            VerifyResult,
            verify,
            read_only=True,
            idempotent=True,
            large_result=True,
        ),
        Tool(
            "horace_scan",
            "Scan for changes",
            "Register untracked files and version changed ones under files/ (or a folder of it, "
            "or one file); a copy of a catalogued file is registered as a file of its own. Sends "
            "progress notifications when the call carries a progressToken.",
            ScanArgs,
            ScanReport,
            scan,
            idempotent=True,
            large_result=True,
        ),
    ]
}

__all__ = ["TOOLS", "CallContext", "Tool"]
