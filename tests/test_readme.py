"""The README's configuration table names every environment variable Horace reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from horace.config import ENVIRONMENT

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(name for names, _ in ENVIRONMENT.values() for name in names))
def test_every_setting_is_documented(name: str) -> None:
    assert f"`{name}`" in README, f"{name} is read by horace.config but not in the README"
