"""Write docs/tools.md from the live MCP tool table (``horace.server.tools.TOOLS``).

    python docs/gen_tools.py > docs/tools.md

Names, titles, descriptions, input and output schemas (with their defaults) and
annotations come from the table itself, which generates them from each tool's attrs
classes. The table does not declare which error codes a tool can return, so those are
listed below in ERRORS, read from ``horace/catalog.py``, ``horace/paths.py`` and
``horace/storage.py``: keep them in step when the code changes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from horace.backends.records import Collection, FileRecord, VersionRecord
from horace.config import Settings
from horace.schema import record_schema
from horace.server.jsonrpc import REPLY_TOO_LARGE
from horace.server.mcp import MAX_PROGRESS_TOKEN_CHARS
from horace.server.tools import MAX_CORRELATION_ID, TOOLS

SHAPES = {
    "File": record_schema(FileRecord),
    "Version": record_schema(VersionRecord),
    "Collection": record_schema(Collection),
}

# Error codes a tool may return as a result with isError: true (beyond the ones every
# tool may return: BACKEND_UNAVAILABLE, INTERNAL).
WRITES = ["FILE_LOCKED", "STORAGE_FULL"]
ERRORS: dict[str, list[str]] = {
    "horace_register_file": ["INVALID_PATH", "FILE_NOT_FOUND", "INVALID_ARGUMENT", *WRITES],
    "horace_search_files": ["INVALID_ARGUMENT"],
    "horace_get_file_info": ["NOT_CATALOGED", "INVALID_PATH", "INVALID_ARGUMENT"],
    "horace_update_file": ["NOT_CATALOGED", "INVALID_ARGUMENT", "CHECKSUM_MISMATCH", "INVALID_PATH", *WRITES],
    "horace_restore_version": [
        "NOT_CATALOGED",
        "INVALID_PATH",
        "VERSION_NOT_FOUND",
        "CHECKSUM_MISMATCH",
        "INVALID_ARGUMENT",
        *WRITES,
    ],
    "horace_delete_file": ["NOT_CATALOGED", "INVALID_PATH", *WRITES],
    "horace_undelete_file": [
        "NOT_CATALOGED",
        "INVALID_PATH",
        "INVALID_ARGUMENT",
        "CHECKSUM_MISMATCH",
        *WRITES,
    ],
    "horace_diff_versions": [
        "NOT_CATALOGED",
        "INVALID_PATH",
        "VERSION_NOT_FOUND",
        "CHECKSUM_MISMATCH",
        "INVALID_ARGUMENT",
    ],
    "horace_create_collection": ["INVALID_ARGUMENT", "NOT_CATALOGED", "STORAGE_FULL"],
    "horace_list_collections": ["INVALID_ARGUMENT"],
    "horace_get_collection": ["COLLECTION_NOT_FOUND", "INVALID_ARGUMENT"],
    "horace_add_to_collection": ["COLLECTION_NOT_FOUND", "NOT_CATALOGED", "STORAGE_FULL"],
    "horace_remove_from_collection": ["COLLECTION_NOT_FOUND", "NOT_CATALOGED", "STORAGE_FULL"],
    "horace_delete_collection": ["COLLECTION_NOT_FOUND", "STORAGE_FULL"],
    "horace_find_duplicates": ["INVALID_ARGUMENT"],
    "horace_verify": ["NOT_CATALOGED", "INVALID_PATH", "INVALID_ARGUMENT"],
    "horace_scan": ["INVALID_PATH", "FILE_NOT_FOUND", "STORAGE_FULL"],
}

# When each code is returned, in a few words (shown once, at the end).
ERROR_MEANINGS = {
    "INVALID_PATH": "the path leaves files/, names `.horace` or a `.horace-tmp-` name, holds a NUL byte "
    "or a symlink, ends in `/` (where a file is meant), is not a regular file, or has more than one "
    "hard link (what is on disk is looked at only where a file is read or written: a catalogued "
    "file is found by its path whatever is there now)",
    "FILE_NOT_FOUND": "no file (for a scan: no folder or file) at that path under files/",
    "NOT_CATALOGED": "no catalogued file with that id or path (also: an unknown id in `file_ids`)",
    "VERSION_NOT_FOUND": "the file has no such version (never had it, or it was pruned)",
    "COLLECTION_NOT_FOUND": "no collection of that name",
    "CHECKSUM_MISMATCH": "a stored object is missing or does not hash to its name; nothing was changed",
    "INVALID_ARGUMENT": "an argument is valid JSON but not acceptable (see each tool)",
    "FILE_LOCKED": "another writer held the file longer than `HORACE_LOCK_WAIT`, the file changed "
    "while Horace was reading it, or (delete, archive, restore, an update that checks for changes) "
    "another process has it open for writing; try again",
    "STORAGE_FULL": "the storage's disk or quota is full, or the catalog database's disk (SQLite or "
    "PostgreSQL); nothing was changed, but for what the message says was kept (an update that "
    "versioned the working copy's new content before the rest failed, a scan that committed the "
    "files it took before)",
    "STORAGE_ERROR": "the storage refuses (read-only, not Horace's to write, I/O errors, a limit "
    "of the system's: file size, open files); the call did not complete",
    "BACKEND_UNAVAILABLE": "the catalog database cannot be reached (an update's message says "
    "when the working copy's new content was versioned before the rest failed)",
    "INTERNAL": "a bug; the message carries the correlation id to look for in the log",
}

NOTES = {
    "horace_register_file": "When no `owner` is given and the path starts with a component folder "
    "(`gates/`, `playfair/`, `fiedler/`, `user/`, `shared/`), the owner is that folder's name. "
    "Keys of `metadata` other than those above are kept as the file's custom metadata. "
    "Metadata given when re-registering a catalogued path is not applied: use "
    "`horace_update_file`. Re-registering a deleted or archived file whose working copy is back "
    "makes it active again (versioned if its content changed).",
    "horace_search_files": "Every filter may also be given inside `query{}`; a filter given both "
    "ways takes the top-level value. A `limit` above 1000 is refused (`INVALID_ARGUMENT`), as "
    "the CLI refuses it. A `cursor` is tied to the filters it was issued for, and "
    "given with a non-zero `offset` is refused (`INVALID_ARGUMENT`).",
    "horace_get_file_info": "Give `file_id` or `file_path` (both: they must name the same file, "
    "else `INVALID_ARGUMENT`). `versions` is null unless `include_versions`.",
    "horace_update_file": "`tags` replaces the tags; `collection` adds the file to that collection "
    "(created if missing); `custom` is merged into the file's `metadata`. Any other field is "
    "refused (`INVALID_ARGUMENT`). A `status` change away from `active` moves the working file out of "
    "files/ and versions exactly what was moved (whatever `check_for_changes` says); back to "
    "`active` writes the current version back. With no `status`, a deleted or archived file whose "
    "working file is back at its path is taken in as re-registering takes it (active again, "
    "versioned if its content changed) before the change, unless `check_for_changes` is false.",
    "horace_restore_version": "The file must be `active`. `preserved_version` is the version that "
    "kept the working file's unsaved content (null when it had none). Restoring the current "
    "version still adds a version.",
    "horace_delete_file": "Deleting a deleted file is a success that changes nothing (`changed: false`).",
    "horace_undelete_file": "Undeleting an active file is a success that changes nothing "
    "(`changed: false`); an archived file is `INVALID_ARGUMENT` (update its status to `active` "
    "instead).",
    "horace_remove_from_collection": "Catalogued files that are not members are passed over; an id "
    "that is no catalogued file's is `NOT_CATALOGED`, and nothing is removed.",
    "horace_find_duplicates": "Groups come largest content first (then by checksum), and each "
    "group's files in the order they were catalogued. `group_count` is the number of groups in "
    "this reply: while it equals `limit`, the next page is at `offset + limit`.",
    "horace_diff_versions": "When both versions are at most `HORACE_MAX_READ_BYTES`, both are read "
    "from the object store (and checked against their checksums); text (UTF-8 without NUL bytes) "
    "gets a diff with 3 lines of context, anything else `kind: binary`. When either is larger, "
    "neither is read: `kind: large`, and the sizes and checksums are the catalog's. The "
    "`---`/`+++` lines name each version `path@vN`, quoted as git quotes a name (`\"user/a\\nb@v1\"`) "
    "when the path holds a control character, a quote or a backslash, so that no name forges a "
    "line of the diff.",
    "horace_verify": "Problem kinds: `missing_object`, `checksum_mismatch`, `no_versions`, "
    "`working_missing`, `working_modified`, `working_unreadable` (its folder, or itself), "
    "`working_refused` (there, but not catalogable as it is: hard linked, a FIFO; its changes "
    "are not versioned), `deleted_present` (a deleted file whose path holds a file again: a scan "
    "catalogs it as the file's next version); `version` is null for file problems. With a `progressToken` in "
    "`_meta`, `notifications/progress` are sent while it runs.",
    "horace_scan": "`skipped` lists names that can never be catalogued (not UTF-8, `.horace`, or "
    "in Horace's reserved `.horace-tmp-` form), each with why. Files that could not be taken are "
    "listed in `errors`, not returned as a tool error. `missing` lists the active catalogued files "
    "under the scanned folder that are gone from files/ (deleted outside Horace): a scan "
    "records nothing of them, they stay active and restorable (`horace_delete_file` records a "
    "deletion; watch mode records them all). A gone file found at a new path under the scanned "
    "folder with its inode and content was renamed: it keeps its id and history there, listed in "
    "`moved` as `old -> new`. Each list shows at most 1000 entries, then "
    "a line saying how many more the server's log has. With a `progressToken` in `_meta`, "
    "`notifications/progress` are sent while it runs.",
}


def type_of(schema: Any) -> str:
    for name, shape in SHAPES.items():
        if schema == shape:
            return name
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if "anyOf" in schema:  # (a nullable one: its type or null)
        text = " or ".join(type_of(alternative) for alternative in schema["anyOf"])
    elif isinstance(kind, list):
        text = " or ".join(kind)
    elif kind == "array":
        text = f"array of {type_of(schema.get('items', {}))}"
    else:
        text = kind
    if schema.get("format"):
        text += f" ({schema['format']})"
    if "minimum" in schema and "maximum" in schema:
        text += f", {schema['minimum']} to {schema['maximum']}"
    elif "minimum" in schema:
        text += f", ≥ {schema['minimum']}"
    if "maxItems" in schema:
        text += f", at most {schema['maxItems']} items"
    if "maxLength" in schema:
        text += f", at most {schema['maxLength']} characters"
    return text


def cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def arguments_table(tool: Any) -> list[str]:
    schema = tool.input_schema
    props, required = schema.get("properties", {}), set(schema.get("required", ()))
    if not props:
        return ["No arguments."]
    rows = ["| argument | type | required | default | description |", "|---|---|---|---|---|"]
    for name, sub in props.items():
        default = cell(sub["default"]) if "default" in sub else ""
        rows.append(
            f"| `{name}` | {type_of(sub)} | {'yes' if name in required else 'no'} | {default} "
            f"| {sub.get('description', '')} |"
        )
        if sub.get("type") == "object" and sub.get("properties"):
            for inner, inner_schema in sub["properties"].items():
                said = inner_schema.get("description", "")
                rows.append(f"| `{name}.{inner}` | {type_of(inner_schema)} | no | | {said} |")
    if not schema.get("additionalProperties", True):
        rows.append("")
        rows.append("Other top-level arguments are refused.")
    return rows


def result_table(tool: Any) -> list[str]:
    schema = tool.output_schema
    required = set(schema.get("required", ()))
    rows = ["| field | type | required |", "|---|---|---|"]
    for name, sub in schema["properties"].items():
        rows.append(f"| `{name}` | {type_of(sub)} | {'yes' if name in required else 'no'} |")
        items = sub.get("items", {})
        if sub.get("type") == "array" and items.get("type") == "object" and items not in SHAPES.values():
            for inner, inner_schema in items["properties"].items():
                rows.append(f"| `{name}[].{inner}` | {type_of(inner_schema)} | |")
    return rows


def shape_table(schema: Any) -> list[str]:
    required = set(schema.get("required", ()))
    rows = ["| field | type | required |", "|---|---|---|"]
    for name, sub in schema["properties"].items():
        rows.append(f"| `{name}` | {type_of(sub)} | {'yes' if name in required else 'no'} |")
    return rows


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main() -> None:
    out: list[str] = [
        "<!-- Generated from horace.server.tools.TOOLS by `python docs/gen_tools.py > docs/tools.md`.",
        "     Edit the tool table or the generator, then regenerate; do not edit this file by hand. -->",
        "",
        "# Horace MCP tools",
        "",
        f"Horace serves {len(TOOLS)} tools. `tools/list` returns each with its `inputSchema`, "
        "`outputSchema` and `annotations`; this page says the same in prose. See "
        "[spec.md](spec.md) for the protocol around them.",
        "",
        "How results and errors come back:",
        "",
        "- A successful call's result has `structuredContent` (the fields below) and the same JSON "
        "as one `text` item in `content`; `isError` is false. Every result carries the call's "
        "`correlation_id`: the caller's `metadata.correlation_id`, else `_meta.correlation_id` "
        f"(or `correlationId`), else a new UUID; at most {MAX_CORRELATION_ID} characters (a longer "
        "one is `INVALID_ARGUMENT` in `metadata`, `-32602` in `_meta`).",
        "- An error that belongs to the tool is a result with `isError: true` whose one `text` "
        "item is the JSON `{error_code, message, correlation_id}`; it has no `structuredContent` "
        "(the `outputSchema` describes results, and clients check structured content against it).",
        "- Arguments the tool's `inputSchema` does not admit (an unknown argument at any level "
        "but inside `horace_register_file`'s `metadata`, "
        "a missing required one, a wrong JSON type, a value out of bounds or not in an enum; "
        "a string with a NUL character or a lone surrogate, an integer past 64 bits, a number "
        "past a float, nesting past 64 levels, the message naming where: a NUL in `file_path` "
        "is `INVALID_PATH`) are "
        "such a tool error, `INVALID_ARGUMENT`, in a session of MCP 2025-11-25 (which says so: "
        "a model reads the message and can correct the call); for a client of an earlier "
        "version they are a JSON-RPC error `-32602` with "
        '`data: {error_code: "INVALID_ARGUMENT", correlation_id}`. An unknown tool is `-32602` '
        "in every version. A call past `HORACE_CALL_DEADLINE` is JSON-RPC error `-32001`.",
        "- An optional argument whose schema admits `null` may be sent as `null`: the same as "
        "leaving it out (its default). Any other `null` is a wrong JSON type.",
        "- Every tool may also return `INVALID_ARGUMENT` (arguments its schema does not admit, as "
        "above), `STORAGE_ERROR`, `BACKEND_UNAVAILABLE` and `INTERNAL`; each tool's list below names "
        "the codes of "
        "its own work.",
        f"- A reply larger than `HORACE_MAX_REPLY_BYTES` ({Settings().max_reply_bytes // 2**20} MiB) "
        f"is JSON-RPC error `{REPLY_TOO_LARGE}`, with the reply's size and the limit in `data`; a "
        f"`_meta.progressToken` longer than {MAX_PROGRESS_TOKEN_CHARS} characters is `-32602`.",
        "- Annotations: `openWorldHint` is false for every tool (Horace touches only its own storage).",
        "",
        "| tool | read-only | destructive | idempotent |",
        "|---|---|---|---|",
    ]
    for tool in TOOLS.values():
        out.append(
            f"| [`{tool.name}`](#{tool.name}) | {yes(tool.read_only)} | {yes(tool.destructive)} "
            f"| {yes(tool.idempotent)} |"
        )
    for tool in TOOLS.values():
        out += ["", f"## {tool.name}", "", tool.description, ""]
        out.append(
            f"Annotations: readOnlyHint {str(tool.read_only).lower()}, destructiveHint "
            f"{str(tool.destructive).lower()}, idempotentHint {str(tool.idempotent).lower()}, "
            "openWorldHint false."
        )
        out += ["", "**Arguments**", "", *arguments_table(tool), "", "**Result**", "", *result_table(tool)]
        out += ["", "**Errors:** " + ", ".join(f"`{code}`" for code in ERRORS[tool.name]) + "."]
        if tool.name in NOTES:
            out += ["", NOTES[tool.name]]
    out += ["", "## Shared shapes"]
    for name, schema in SHAPES.items():
        out += ["", f"### {name}", "", *shape_table(schema)]
    out += [
        "",
        "Times are ISO 8601 with a UTC offset. `file_path` is relative to files/, with `/` "
        "separators. A File's `correlation_id` is the one of the call that catalogued it; a "
        "Version's is the one of the call that made it.",
        "",
        "## Error codes",
        "",
        "| code | when |",
        "|---|---|",
        *(f"| `{code}` | {text} |" for code, text in ERROR_MEANINGS.items()),
        "",
    ]
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
