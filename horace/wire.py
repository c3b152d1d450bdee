"""The boundary: JSON-shaped data to attrs values and back.

Only the edges (MCP arguments and results, CLI output) use this module; past it,
everything is an attrs instance. Structuring is strict: a string is not an integer, a
boolean is not a number, and an unknown field is an error, each reported as
``INVALID_ARGUMENT`` with the field's name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from horace.backends.records import MAX_SEARCH_LIMIT, FileChanges, Order, SearchQuery, SortKey, Status
from horace.model import ErrorCode, HoraceError, NewFile

T = TypeVar("T")

# -- out: values to JSON ------------------------------------------------------------------

converter = cattrs.Converter()
converter.register_unstructure_hook(datetime, lambda dt: dt.isoformat())
converter.register_unstructure_hook(Mapping, lambda m: {k: converter.unstructure(v) for k, v in m.items()})


def to_json(value: Any) -> Any:
    """JSON-ready data (dicts, lists, strings, numbers) for an attrs value."""
    return converter.unstructure(value)


# -- in: JSON to values ---------------------------------------------------------------------

strict = cattrs.Converter(forbid_extra_keys=True)


def _exact(kind: type, name: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if type(value) is bool and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return hook


strict.register_structure_hook(str, _exact(str, "a string"))
strict.register_structure_hook(int, _exact(int, "an integer"))
strict.register_structure_hook(float, _exact(float, "a number"))
strict.register_structure_hook(bool, _exact(bool, "a boolean"))


def _datetime(value: Any, _: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("expected an ISO 8601 date/time string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


strict.register_structure_hook(datetime, _datetime)


def _enum(kind: type[enum.Enum]) -> Any:
    def hook(value: Any, _: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(str(member.value) for member in kind)
            raise ValueError(f"{value!r} is not one of {choices}") from None

    return hook


for _kind in (Status, SortKey, Order):
    strict.register_structure_hook(_kind, _enum(_kind))


def _mapping(value: Any, _: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError("expected an object")
    return dict(value)


strict.register_structure_hook_func(lambda kind: kind == Mapping[str, Any], _mapping)


def _tuple_of_str(value: Any, _: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)  # a single tag given as a string
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


strict.register_structure_hook_func(lambda kind: kind == tuple[str, ...], _tuple_of_str)


def _describe(exc: BaseException, path: str = "") -> list[str]:
    if isinstance(exc, KeyError):
        return [f"{path}missing required field"]
    if isinstance(exc, ForbiddenExtraKeysError):
        return [f"{path}unknown field(s): {', '.join(sorted(exc.extra_fields))}"]
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        messages = []
        for sub, note in with_notes:
            name = getattr(note, "name", getattr(note, "index", ""))
            messages += _describe(sub, f"{path}{name}: ")
        for sub in without:
            messages += _describe(sub, path)
        return messages
    return [f"{path}{exc}"]


def structure(data: Any, cls: type[T]) -> T:
    """*data* as a *cls*, or ``INVALID_ARGUMENT`` saying which field is wrong and why."""
    if not isinstance(data, Mapping):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"expected an object, got {type(data).__name__}")
    try:
        return strict.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "; ".join(_describe(exc))) from None


# -- the shapes callers send ----------------------------------------------------------------

# Fields of a file that an update may change; everything else is refused.
UPDATABLE = ("owner", "purpose", "tags", "status", "collection", "custom")
_REGISTER_KNOWN = ("owner", "purpose", "tags", "collection", "correlation_id")


def new_file(metadata: Mapping[str, Any] | None) -> tuple[NewFile, str | None]:
    """What a registration says of a file, and its correlation id.

    Keys beyond the known ones are the caller's own metadata, kept with the file.
    """
    metadata = dict(metadata or {})
    if not isinstance(metadata, dict):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "metadata must be an object")
    known = {k: metadata.pop(k) for k in _REGISTER_KNOWN if k in metadata and metadata[k] is not None}
    correlation_id = known.pop("correlation_id", None)
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "correlation_id must be a string")
    return structure({**known, "custom": metadata}, NewFile), correlation_id


def file_changes(metadata: Mapping[str, Any] | None) -> FileChanges:
    """The allow-listed changes of an update; any other field is ``INVALID_ARGUMENT``."""
    if not isinstance(metadata, Mapping):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "metadata must be an object")
    refused = sorted(set(metadata) - set(UPDATABLE) - {"correlation_id"})
    if refused:
        raise HoraceError(
            ErrorCode.INVALID_ARGUMENT,
            f"field(s) {', '.join(refused)} cannot be updated; updatable: {', '.join(UPDATABLE)}",
        )
    return structure({k: v for k, v in metadata.items() if k != "correlation_id"}, FileChanges)


def search_query(arguments: Mapping[str, Any]) -> tuple[SearchQuery, str | None]:
    """A search from filters given flat or nested in ``query{}``; and its cursor."""
    args = dict(arguments)
    nested = args.pop("query", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, "query must be an object")
        args = {**nested, **args}
    cursor = args.pop("cursor", None)
    if cursor is not None and not isinstance(cursor, str):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "cursor must be a string")
    status = args.pop("status", "active")
    if status not in (*(s.value for s in Status), "all", None):
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "status is one of active, archived, deleted, all")
    if "after" in args:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "unknown field(s): after (use cursor)")
    args = {k: v for k, v in args.items() if v is not None}
    query = structure(args, SearchQuery)
    if not query.limit >= 1:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "limit must be at least 1")
    if query.offset < 0:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "offset must not be negative")
    for name in ("min_size", "max_size"):
        if (getattr(query, name) or 0) < 0:
            raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"{name} must not be negative")
    query = attrs.evolve(
        query,
        limit=min(query.limit, MAX_SEARCH_LIMIT),
        status=None if status in ("all", None) else Status(status),
    )
    return query, cursor
