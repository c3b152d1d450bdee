"""The boundary converter: attrs value classes to JSON-ready data and back.

Only the edges (CLI output, MCP results and arguments) use it; inside, everything is
attrs instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import cattrs

converter = cattrs.Converter()
converter.register_unstructure_hook(datetime, lambda dt: dt.isoformat())
converter.register_structure_hook(
    datetime, lambda value, _: value if isinstance(value, datetime) else datetime.fromisoformat(value)
)
converter.register_unstructure_hook(Mapping, lambda m: {k: converter.unstructure(v) for k, v in m.items()})


def to_json(value: Any) -> Any:
    """JSON-ready data (dicts, lists, strings, numbers) for an attrs value."""
    return converter.unstructure(value)
