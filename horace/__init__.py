"""Horace: the file catalog and versioning server of the ICCM tool ecosystem."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("horace")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
