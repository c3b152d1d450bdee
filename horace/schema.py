"""JSON Schema from attrs classes: a tool's arguments and its result declared once.

An argument class says each field's type, default, description and bounds (with
:func:`param`); :func:`input_schema` and :func:`output_schema` turn the class into the
schema an MCP client sees, and the bounds become attrs validators, so what the schema
promises is what structuring enforces (``horace.wire``).
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Union, get_args, get_origin, get_type_hints

import attrs

# A field whose value is every key of the object not named by another field.
REST = "rest"


def param(
    default: Any = attrs.NOTHING,
    *,
    doc: str,
    minimum: int | None = None,
    maximum: int | None = None,
    max_length: int | None = None,
    max_items: int | None = None,
    rest: bool = False,
    **schema: Any,
) -> Any:
    """An argument field: its description, its bounds (checked when structured), and
    any further JSON Schema keywords (``format``, ...)."""
    validators: list[Any] = []
    if max_length is not None:
        validators.append(_at_most(max_length, "characters", len))
        schema["maxLength"] = max_length
    if max_items is not None:
        validators.append(_at_most(max_items, "items", len))
        schema["maxItems"] = max_items
    if minimum is not None:
        validators.append(_bound(minimum, "at least", lambda value: value >= minimum))
        schema["minimum"] = minimum
    if maximum is not None:
        validators.append(_bound(maximum, "at most", lambda value: value <= maximum))
        schema["maximum"] = maximum
    metadata = {"doc": doc, "schema": schema, REST: rest}
    check: Any = attrs.validators.and_(*validators) if validators else None
    if default is None and check is not None:
        check = attrs.validators.optional(check)  # left out: nothing to check
    if default is attrs.NOTHING:
        return attrs.field(metadata=metadata, validator=check)
    return attrs.field(default=default, metadata=metadata, validator=check)


def _at_most(bound: int, unit: str, size: Any) -> Any:
    def check(_: Any, field: attrs.Attribute[Any], value: Any) -> None:
        if size(value) > bound:
            raise ValueError(f"{field.name}: at most {bound} {unit}, got {size(value)}")

    return check


def _bound(bound: int, words: str, holds: Any) -> Any:
    def check(_: Any, field: attrs.Attribute[Any], value: Any) -> None:
        if not holds(value):
            raise ValueError(f"{field.name}: must be {words} {bound}, got {value}")

    return check


def input_schema(cls: type) -> dict[str, Any]:
    """The schema of an argument class: fields without a default are required; no other
    keys than the fields', unless a field takes the rest."""
    return _object(cls, output=False)


def output_schema(cls: type) -> dict[str, Any]:
    """The schema of a result class: every field is always there (None where it may be).
    Records nested in it list their fields' types only, which keeps tools/list short."""
    return _object(cls, output=True)


def _object(cls: type, *, output: bool, nested: bool = False) -> dict[str, Any]:
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    open_ended = False
    for field in attrs.fields(cls):
        if field.metadata.get(REST):
            open_ended = True
            continue
        schema = {**_of(hints[field.name], output=output), **field.metadata.get("schema", {})}
        if field.metadata.get("doc"):
            schema["description"] = field.metadata["doc"]
        simple = not isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
        if not output and simple and field.default not in (attrs.NOTHING, None):
            schema["default"] = _plain(field.default)
        properties[field.name] = schema
        if (output and not nested) or (not output and field.default is attrs.NOTHING):
            required.append(field.name)
    found: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        found["required"] = required
    if not output:  # results may grow fields; what a caller sends may not
        found["additionalProperties"] = open_ended
    if cls.__doc__ and not output:
        found["description"] = " ".join(cls.__doc__.split())
    one_of = getattr(cls, "__one_of__", None)
    if one_of:
        found["anyOf"] = [{"required": [name]} for name in one_of]
    return found


def record_schema(cls: type) -> dict[str, Any]:
    """How a record looks inside a result (its fields' types; see :func:`output_schema`)."""
    return _object(cls, output=True, nested=True)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _of(kind: Any, *, output: bool) -> dict[str, Any]:
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        found = (
            _of(inner[0], output=output)
            if len(inner) == 1
            else {"anyOf": [_of(a, output=output) for a in inner]}
        )
        if type(None) in args:  # (an argument's null: as if it were left out, its default)
            found = _nullable(found)
        return found
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"type": "string", "enum": [member.value for member in kind]}
    if kind is bool:
        return {"type": "boolean"}
    if kind is int:
        return {"type": "integer"}
    if kind is float:
        return {"type": "number"}
    if kind is str:
        return {"type": "string"}
    if kind is datetime:
        return {"type": "string", "format": "date-time"}
    if origin in (tuple, list, Sequence) or kind in (tuple, list):
        return {"type": "array", "items": _of(args[0], output=output) if args else {}}
    if origin in (dict, Mapping) or kind in (dict, Mapping) or kind is Any:
        return {"type": "object"} if kind is not Any else {}
    if attrs.has(kind):
        return _object(kind, output=output, nested=True)
    raise TypeError(f"no JSON Schema for {kind!r}")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # anyOf rather than a list of types: what pydantic writes, and what clients that take
    # only a subset of JSON Schema (OpenAPI's, Gemini's) read; the Inspector warns of lists.
    if "anyOf" in schema:
        return {"anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}
