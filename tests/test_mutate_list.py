"""scripts/mutate stays true to the code: each named mutation still finds the one line it
breaks (a refactor that moves a safety check must move its mutation too)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS: list[Any] = runpy.run_path(str(ROOT / "scripts" / "mutate"), run_name="mutate")["MUTATIONS"]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_finds_its_line_once(mutation: Any) -> None:
    source = (ROOT / mutation.path).read_text()
    assert source.count(mutation.old) == 1, f"{mutation.name}: {mutation.old!r} in {mutation.path}"
    assert mutation.new != mutation.old
