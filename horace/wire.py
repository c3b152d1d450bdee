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
from cattrs.gen import make_dict_structure_fn, override

from horace.model import ErrorCode, HoraceError
from horace.schema import REST

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


def json_kind(value: Any) -> str:
    """What *value* is in JSON's words (a client knows no Python type names)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _exact(kind: type, name: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if type(value) is bool and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if kind is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)  # JSON Schema: 5.0 is an integer (a client may send numbers as floats)
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {json_kind(value)}")
        return value

    return hook


strict.register_structure_hook(str, _exact(str, "a string"))
strict.register_structure_hook(int, _exact(int, "an integer"))
strict.register_structure_hook(float, _exact(float, "a number"))
strict.register_structure_hook(bool, _exact(bool, "a boolean"))


def _datetime(value: Any, _: Any) -> datetime:
    """An ISO 8601 date/time as an instant in UTC (without a zone: UTC)."""
    if not isinstance(value, str):
        raise TypeError("expected an ISO 8601 date/time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:  # (Python's words for an offset name its timedelta class)
        reason = str(exc)
        if "offset" in reason:
            reason = "its zone offset is not under 24 hours"
        reason = "" if reason.startswith("Invalid isoformat") else f": {reason}"
        raise ValueError(f"{value[:64]!r} is not an ISO 8601 date/time{reason}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before the first instant there is
        raise ValueError(f"{value[:64]!r} is outside years 1 to 9999 in UTC") from None


strict.register_structure_hook(datetime, _datetime)


def _enum(value: Any, kind: type[enum.Enum]) -> Any:
    choices = ", ".join(str(member.value) for member in kind)
    if not isinstance(value, str):
        raise TypeError(f"expected one of {choices}, got {json_kind(value)}")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one of {choices}") from None


# Dispatched on the class: StrEnum, or the str hook above would take them as plain strings.
strict.register_structure_hook(enum.StrEnum, _enum)


def _object(value: Any) -> Mapping[str, Any]:
    """*value*, a JSON object; or said in JSON's words what it is instead."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {json_kind(value)}")
    return value


def _mapping(value: Any, _: Any) -> dict[str, Any]:
    if not all(isinstance(k, str) for k in _object(value)):
        raise TypeError("expected an object")
    return dict(value)


strict.register_structure_hook_func(lambda kind: kind == Mapping[str, Any], _mapping)


def _tuple_of_str(value: Any, _: Any) -> tuple[str, ...]:
    # (A lone string is refused, as the inputSchema says: taken as a list of one, it was a
    # second way to say the same thing that no schema-driven client would know of.)
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of strings, got {json_kind(value)}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"expected a list of strings, got one that is {json_kind(item)}")
    return tuple(value)


strict.register_structure_hook_func(lambda kind: kind == tuple[str, ...], _tuple_of_str)


def _record(kind: type) -> Any:
    """Structure an attrs class nested in the arguments: an object, or said so in JSON's
    words (cattrs alone would say what Python found missing on a string or a None)."""
    structure_fields: Any = make_dict_structure_fn(kind, strict, _cattrs_forbid_extra_keys=True)

    def hook(value: Any, _: Any) -> Any:
        return structure_fields(_object(value), kind)

    return hook


def _takes_the_rest(kind: Any) -> bool:
    return attrs.has(kind) and any(f.metadata.get(REST) for f in attrs.fields(kind))


def _with_the_rest(kind: type) -> Any:
    """Structure a class one of whose fields takes every key the others do not name."""
    rest = next(f for f in attrs.fields(kind) if f.metadata.get(REST))
    named = {f.name for f in attrs.fields(kind)} - {rest.name}
    overrides: dict[str, Any] = {rest.name: override(omit=True)}
    structure_named: Any = make_dict_structure_fn(kind, strict, _cattrs_forbid_extra_keys=True, **overrides)

    def hook(value: Any, _: Any) -> Any:
        known = {k: v for k, v in _object(value).items() if k in named}
        others = {k: v for k, v in value.items() if k not in named}
        if not all(isinstance(k, str) for k in others):
            raise TypeError("expected an object")
        return attrs.evolve(structure_named(known, kind), **{rest.name: others})

    return hook


strict.register_structure_hook_factory(lambda kind: attrs.has(kind) and not _takes_the_rest(kind), _record)
strict.register_structure_hook_factory(_takes_the_rest, _with_the_rest)


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
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, f"expected an object, got {json_kind(data)}")
    try:
        return strict.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise HoraceError(ErrorCode.INVALID_ARGUMENT, "; ".join(_describe(exc))) from None
