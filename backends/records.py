"""The values a catalog backend stores and answers with: its rows and its queries.

Everything here is frozen; the catalog, storage and backends hand these around and nobody
mutates them. This module depends on nothing of Horace above the backends.
"""

import enum
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
from attrs import frozen


class Status(enum.StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"
    DELETED = "deleted"


class SortKey(enum.StrEnum):
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    SIZE = "size"
    PATH = "path"


class Order(enum.StrEnum):
    ASC = "asc"
    DESC = "desc"


MAX_SEARCH_LIMIT = 1000


DEFAULT_SEARCH_LIMIT = 50


@frozen
class FileRecord:
    id: str
    file_path: str  # relative to <root>/files/, POSIX separators
    owner: str | None
    purpose: str | None
    tags: tuple[str, ...]
    size: int
    mime_type: str
    checksum: str
    status: Status
    current_version: int
    correlation_id: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@frozen
class VersionRecord:
    file_id: str
    version: int
    checksum: str
    size: int
    created_at: datetime
    restored_from_version: int | None
    correlation_id: str | None


@frozen
class Collection:
    name: str
    description: str | None
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    member_count: int


@frozen
class FileChanges:
    """The allow-listed fields of an update; None means 'leave as it is'."""

    owner: str | None = None
    purpose: str | None = None
    tags: tuple[str, ...] | None = None
    status: Status | None = None
    collection: str | None = None
    custom: Mapping[str, Any] | None = None
    # Not a field a client sets: the permission bits of the working copy a status change
    # takes out of files/, kept to write it back with (see ``Backend.working_mode``).
    working_mode: int | None = None


@frozen
class SearchQuery:
    tags: tuple[str, ...] = ()
    any_tags: tuple[str, ...] = ()
    owner: str | None = None
    purpose: str | None = None
    path: str | None = None  # glob, relative to files/
    collection: str | None = None
    file_type: str | None = None  # MIME type (may end in /*) or extension
    min_size: int | None = None
    max_size: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    checksum: str | None = None
    correlation_id: str | None = None
    status: Status | None = Status.ACTIVE  # None: every status
    limit: int = DEFAULT_SEARCH_LIMIT
    offset: int = 0
    after: tuple[Any, str] | None = None  # keyset position (sort value, id), from a cursor
    sort_by: SortKey = SortKey.CREATED_AT
    order: Order = Order.DESC

    @property
    def reach(self) -> int:
        """How many matches in order the page ends at (its offset and limit), as a query's
        LIMIT may say it: within a BIGINT (an offset near 2**63 reaches past every row)."""
        return min(self.offset + self.limit, INT64_MAX)


# The integers a catalog column holds (BIGINT; SQLite's INTEGER): a number outside them is
# refused at the edge, never handed to a backend.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def to_int64(value: int) -> int:
    """An unsigned 64-bit stat field (an inode, a device) as the signed BIGINT columns keep it."""
    return value - (1 << 64) if value > INT64_MAX else value


def from_int64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


@frozen
class WorkingStat:
    """What ``stat`` said of a working file when its content was read, as git's index
    keeps it: a later ``stat`` giving the same values says the file was not written
    since, provided the values were not taken too close to a write (see
    ``horace.catalog.unchanged_since``: the racy-git rule)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    recorded_ns: int  # the filesystem's clock just before the content was read
    # Its permission bits (not part of the identity): what it is written back with when
    # it comes back to files/ (see ``Backend.working_mode``). None: not known.
    mode: int | None = None


@frozen
class NewVersion:
    """A version to record: its content is already a durable object."""

    checksum: str
    size: int
    mime_type: str
    restored_from_version: int | None = None
    # The working file this content was read from, when it was read from files/ (the
    # file's stat identity is recorded with the version; otherwise it is cleared).
    working: WorkingStat | None = None


@frozen
class IndexEntry:
    """A catalogued file as a scan looks at it: where it is, which content is current, and
    the stat identity of the working file that content was read from (None: unknown, so
    the file is read again)."""

    file_id: str
    file_path: str
    checksum: str
    status: Status
    current_version: int
    working: WorkingStat | None


@frozen
class Retention:
    keep: int = 5  # newest versions kept, the current one included
    min_age_seconds: float = 0.0  # a version is pruned only when older than this


@frozen
class DuplicateGroup:
    checksum: str
    size: int
    file_count: int  # the group's files; ``files`` holds the first of them
    files: tuple[FileRecord, ...]


@frozen
class CatalogIdentity:
    """What a catalog database says of the store it belongs to, read before migrating."""

    store_id: str | None  # None: never bound (new, or from before stores had identities)
    storage_path: str | None  # where the store was when the pair was bound
    empty: bool  # no file catalogued
    # Where the catalog's tables are, as the database says (the SQLite file's real path; the
    # PostgreSQL database and schema): what tells a copy of it from itself.
    place: str | None = None
    # When it was bound to that store (made its catalog, or adopted): whatever the store
    # held before is not this catalog's history.
    bound_at: datetime | None = None
    # Whether the database holds Horace's tables at all (none: a catalog made and never
    # migrated, by a first start cut short).
    tables: bool = True


@frozen
class Turn:
    """One turn of a conversation in the Fiedler format (a request or a response)."""

    conversation_id: str
    turn_number: int
    role: str  # user | assistant
    content: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    timing_ms: float | None
    metadata: Mapping[str, Any]
    created_at: datetime


_SORTED_JSON = json.JSONEncoder(sort_keys=True)  # made once: json.dumps(sort_keys=True) makes one a call


def json_array(items: Sequence[Any]) -> str:
    """*items* as JSON text; most files have no tags, and "[]" costs nothing to make."""
    return json.dumps(list(items)) if items else "[]"


def json_object(mapping: Mapping[str, Any]) -> str:
    """*mapping* as JSON text (a file's metadata: most often empty)."""
    return json.dumps(dict(mapping)) if mapping else "{}"


def metadata_json(turn: Turn) -> str:
    """A turn's metadata as both backends store it: JSON, keys sorted."""
    metadata = turn.metadata
    return _SORTED_JSON.encode(metadata if type(metadata) is dict else dict(metadata))
