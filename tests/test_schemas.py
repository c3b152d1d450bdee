"""The wire contract of every tool, held against a golden file so that any change to it is
seen in review; and the rules the schemas follow.

Regenerate the golden file after a deliberate change:
``HORACE_UPDATE_GOLDEN=1 pytest tests/test_schemas.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from horace.model import HoraceError
from horace.server.tools import TOOLS

GOLDEN = Path(__file__).parent / "golden" / "tools.json"
ONE_FILE = {
    "horace_get_file_info",
    "horace_update_file",
    "horace_restore_version",
    "horace_delete_file",
    "horace_undelete_file",
    "horace_diff_versions",
}


def test_the_tools_match_the_golden_file() -> None:
    current = {name: tool.describe() for name, tool in TOOLS.items()}
    if os.environ.get("HORACE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert current == golden, "the tools' wire contract changed: review, then HORACE_UPDATE_GOLDEN=1"


def test_docs_tools_md_is_what_its_generator_writes() -> None:
    """docs/tools.md is made from the tool table: a tool changed without it is caught here."""
    root = Path(__file__).parents[1]
    made = subprocess.run(
        [sys.executable, str(root / "docs" / "gen_tools.py")], capture_output=True, text=True, check=True
    ).stdout
    assert made == (root / "docs" / "tools.md").read_text(), "run: python docs/gen_tools.py > docs/tools.md"


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_tool_is_described_whole(name: str) -> None:
    entry = TOOLS[name].describe()
    assert entry["title"] and entry["annotations"]["title"] == entry["title"]
    assert entry["inputSchema"]["type"] == "object" and entry["inputSchema"]["additionalProperties"] is False
    output = entry["outputSchema"]
    assert "correlation_id" in output["required"] and set(output["required"]) <= set(output["properties"])


def test_the_tools_that_can_remove_a_working_copy_say_they_are_destructive() -> None:
    """A client that asks before a destructive tool asks before either way of deleting."""
    for name in ("horace_delete_file", "horace_update_file"):  # (update: status deleted)
        assert TOOLS[name].describe()["annotations"]["destructiveHint"] is True, name


@pytest.mark.parametrize("name", sorted(ONE_FILE))
def test_a_tool_on_one_file_takes_its_id_or_its_path(name: str) -> None:
    tool = TOOLS[name]
    assert tool.describe()["inputSchema"]["anyOf"] == [{"required": ["file_id"]}, {"required": ["file_path"]}]
    extra = {"horace_restore_version": {"version": 1}, "horace_diff_versions": {"from_version": 1}}.get(
        name, {}
    )
    assert tool.structure({"file_path": "user/a.txt", **extra}).file_path == "user/a.txt"
    assert tool.structure({"file_id": "x", **extra}).file_id == "x"
    with pytest.raises(HoraceError, match="file_id or file_path"):
        tool.structure(extra)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_bounds_in_the_schema_are_enforced(name: str) -> None:
    tool = TOOLS[name]
    properties = tool.describe()["inputSchema"]["properties"]
    required = {
        "file_id": "x",
        "name": "n",
        "file_path": "a",
        "version": 1,
        "file_ids": [],
        "from_version": 1,
    }
    base = {k: v for k, v in required.items() if k in tool.describe()["inputSchema"].get("required", [])}
    if name in ONE_FILE:
        base["file_id"] = "x"
    for field, schema in properties.items():
        for bound, beyond in (("minimum", -1), ("maximum", +1)):
            if bound in schema:
                with pytest.raises(HoraceError, match=field):
                    tool.structure({**base, field: schema[bound] + beyond})
                tool.structure({**base, field: schema[bound]})


def test_a_whole_number_written_as_a_float_is_an_integer() -> None:
    """JSON Schema counts 5.0 as an integer; a client may send every number as a float."""
    args = TOOLS["horace_search_files"].structure({"limit": 5.0, "offset": 0.0, "min_size": -0.0})
    assert (args.limit, args.offset, args.min_size) == (5, 0, 0)
    assert all(type(value) is int for value in (args.limit, args.offset, args.min_size))
    with pytest.raises(HoraceError, match="limit"):
        TOOLS["horace_search_files"].structure({"limit": 1001.0})  # bounds as for 1001


@pytest.mark.parametrize(
    ("name", "arguments", "said"),
    [
        (
            "horace_restore_version",
            {"file_id": "x", "version": None},
            "version: expected an integer, got null",
        ),
        ("horace_search_files", {"limit": "5"}, "limit: expected an integer, got a string"),
        ("horace_search_files", {"min_size": 1.5}, "min_size: expected an integer, got the number 1.5"),
        ("horace_search_files", {"offset": 1e300}, "offset: expected an integer, got the number 1e+300"),
        ("horace_search_files", {"owner": ["a"]}, "owner: expected a string, got an array"),
        ("horace_search_files", {"owner": {}}, "owner: expected a string, got an object"),
        ("horace_search_files", {"tags": "x"}, "tags: expected a list of strings, got a string"),
        (
            "horace_search_files",
            {"tags": ["a", None]},
            "tags: expected a list of strings, got one that is null",
        ),
        ("horace_search_files", {"query": [1]}, "query: expected an object, got an array"),
        (
            "horace_update_file",
            {"file_id": "x", "metadata": "x"},
            "metadata: expected an object, got a string",
        ),
        ("horace_update_file", {"file_id": "x", "metadata": None}, "metadata: expected an object, got null"),
        (
            "horace_update_file",
            {"file_id": "x", "metadata": {"status": 5}},
            "metadata: status: expected one of active, archived, deleted, got the number 5",
        ),
        (
            "horace_search_files",
            {"status": None},
            "status: expected one of active, archived, deleted, all, got null",
        ),
        (
            "horace_register_file",
            {"file_path": "a", "metadata": 5},
            "metadata: expected an object, got the number 5",
        ),
    ],
)
def test_a_wrong_type_is_said_in_json_words(name: str, arguments: dict[str, object], said: str) -> None:
    """A client knows JSON's types, not Python's (NoneType, str, list)."""
    with pytest.raises(HoraceError) as refused:
        TOOLS[name].structure(arguments)
    assert said in refused.value.message


@pytest.mark.parametrize(
    ("name", "arguments", "said"),
    [
        ("horace_search_files", {"limit": 1001}, "limit: must be at most 1000, got 1001"),
        ("horace_search_files", {"offset": -1}, "offset: must be at least 0, got -1"),
        (
            "horace_create_collection",
            {"name": "c", "file_ids": ["x"] * 10_001},
            "file_ids: at most 10000 items, got 10001",
        ),
        (
            "horace_search_files",
            {"correlation_id": "c" * 201},
            "correlation_id: at most 200 characters, got 201",
        ),
    ],
)
def test_a_bound_is_said_with_the_fields_name_and_the_value_sent(
    name: str, arguments: dict[str, object], said: str
) -> None:
    """The same words as for a wrong type, not Python's (``Length of 'file_ids' must be <= ...``)."""
    with pytest.raises(HoraceError) as refused:
        TOOLS[name].structure(arguments)
    assert refused.value.message == said


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_null_is_admitted_where_the_schema_says_and_only_there(name: str) -> None:
    """An argument whose schema admits null takes it as its default (as if left out);
    one whose schema does not is refused, naming it."""
    tool = TOOLS[name]
    schema = tool.describe()["inputSchema"]
    base = {field: "x" for field in schema.get("required", ())}
    if name in ONE_FILE:
        base["file_id"] = "x"
    base.update({k: 1 for k in ("version", "from_version") if k in base})
    base.update({k: [] for k in ("file_ids",) if k in base})
    left_out = tool.structure(base)
    for field, property_schema in schema["properties"].items():
        if field in base:
            continue
        if {"type": "null"} in property_schema.get("anyOf", ()):
            assert tool.structure({**base, field: None}) == left_out, field
        else:
            with pytest.raises(HoraceError, match=f"{field}: expected"):
                tool.structure({**base, field: None})
