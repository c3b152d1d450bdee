"""Horace: the file catalog and versioning server of the ICCM tool ecosystem."""

from __future__ import annotations

import functools


@functools.cache
def _installed_version() -> str:
    # Looked up on first use: importlib.metadata costs tens of milliseconds at start.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("horace")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module 'horace' has no attribute {name!r}")
