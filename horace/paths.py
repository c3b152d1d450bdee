"""Turning a client's path into a safe path relative to ``<root>/files/``.

Validation here is lexical plus an ``lstat`` walk; the storage layer then opens every
path component with ``O_NOFOLLOW`` relative to a directory descriptor, so a symlink
swapped in between this check and the use is refused at use as well.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path

from horace.model import ErrorCode, HoraceError

HORACE_DIR = ".horace"
TMP_PREFIX = ".horace-tmp-"  # Horace's own temp files; a name of this form is never catalogued
COMPONENT_FOLDERS = ("gates", "playfair", "fiedler", "user", "shared")
# Bytes of a path from / (its NUL included) past which the system names no file (Linux's
# PATH_MAX): a file deeper than that can be listed from its folder, but never opened, read
# or restored by its path, so it is never catalogued.
PATH_MAX = 4096
# Bytes (UTF-8) of a path under files/ past which it is not catalogued: the catalog
# indexes paths, and a database bounds an index entry (PostgreSQL's B-tree holds 2,704
# bytes at most). The same on every backend, so that a store keeps its files on either.
MAX_PATH_BYTES = 2000

# Editor and writer temp files (swap files, backups, lock files): a scan, a reconcile and
# the watcher pass over them silently; register accepts them when asked by name. Vim's swap
# files start with a dot (.notes.txt.swp): anim.swf is a file.
_EDITOR_TEMP = re.compile(r"(\.tmp$|~$|^\.#|^\..+\.sw[a-p]$|^\..+\.swx$|^4913$|^\.~lock\.)")


def editor_temp(name: str) -> bool:
    return bool(_EDITOR_TEMP.search(name))


def unusable_name(name: str) -> str | None:
    """Why a file or folder of this name can never be catalogued, or None.

    Names come from the filesystem as bytes; a name that is not UTF-8 reaches Python with
    surrogate escapes and fits neither a JSON string nor a database column, so it is
    passed over and reported rather than stored in some lossy form.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    if name == HORACE_DIR:
        return f"the name {HORACE_DIR} is reserved for Horace's own data"
    if name.startswith(TMP_PREFIX):
        return f"names starting with {TMP_PREFIX} are reserved for Horace's temp files"
    return None


def too_long(files_root: Path, rel: str) -> str | None:
    """Why *rel* under *files_root* (resolved) is too long to be catalogued, or None."""
    size = len(os.fsencode(rel))
    if size > MAX_PATH_BYTES:
        return f"the path is {size} bytes under files/, past the catalog's limit of {MAX_PATH_BYTES}"
    length = len(os.fsencode(files_root)) + 1 + size
    if length < PATH_MAX:
        return None
    return f"the path is {length} bytes from /, past the system's limit of {PATH_MAX - 1} (PATH_MAX)"


def printable(path: str) -> str:
    """*path* as it can be shown and sent as JSON: each undecodable byte as ``\\xNN``, so
    that two names that differ only there are told apart."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# A byte that is not UTF-8 (held as a lone surrogate) as repr() escapes it, the backslashes
# before it paired (each a backslash of the name, doubled).
_REPR_UNDECODABLE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def quoted(path: str) -> str:
    """*path* quoted for a message, as ``repr`` quotes it (control characters escaped, a
    backslash doubled), each byte that is not UTF-8 as ``\\xNN``: one backslash, so that
    it is not taken for a name that holds a backslash."""
    return _REPR_UNDECODABLE.sub(r"\1\\x\2", repr(path))


# The most characters of a path a refusal quotes: its reason, after it, must outlive the
# cut of an error message (a path past the catalog's limit is longer than that cut).
QUOTED_PATH_MOST = 300


def _invalid(path: str, why: str) -> HoraceError:
    shown = quoted(path)
    if len(shown) > QUOTED_PATH_MOST:
        shown = f"{shown[: QUOTED_PATH_MOST - 100]}…{shown[-80:]} ({len(shown)} characters quoted)"
    return HoraceError(ErrorCode.INVALID_PATH, f"invalid path {shown}: {why}")


def to_relative(files_root: Path, client_path: str, *, on_disk: bool = True, folder: bool = False) -> str:
    """Return the normalised POSIX path of *client_path* relative to *files_root*.

    Refuses NUL bytes, paths that leave the root after resolving ``..``, the root
    itself (unless *folder*: then it is ``""``, the folder of every file), anything
    under ``.horace/`` and, *on_disk*, any path with a symlink in it (without, the path
    only names a catalogued file: what is on disk is not looked at).
    """
    if not isinstance(client_path, str) or not client_path.strip():
        raise _invalid(str(client_path), "empty path")
    if "\x00" in client_path:
        raise _invalid(client_path, "NUL byte in path")
    root = files_root.resolve()
    candidate = client_path
    if os.path.isabs(candidate):
        normalised = Path(posixpath.normpath(candidate))
        # Compare as paths, never as string prefixes: /x/files_evil is not /x/files.
        for base in {files_root.absolute(), root}:
            if normalised.is_relative_to(base):
                candidate = normalised.relative_to(base).as_posix()
                break
        else:
            raise _invalid(client_path, "outside the storage root's files/")
    rel = posixpath.normpath(candidate)
    if rel in (".", ""):
        if folder:
            return ""
        raise _invalid(client_path, "names the files/ folder itself")
    parts = rel.split("/")
    if parts[0] == ".." or rel.startswith("/"):
        raise _invalid(client_path, "leaves files/")
    for part in parts:
        why = unusable_name(part)
        if why is not None:
            raise _invalid(client_path, why)
    why = too_long(root, rel)
    if why is not None:
        raise _invalid(client_path, why)
    if not on_disk:
        return rel
    # Refuse symlinks anywhere along the path (dangling ones included).
    current = root
    for part in parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        except NotADirectoryError:
            raise _invalid(client_path, "a parent is not a folder") from None
        except PermissionError:
            raise  # a folder on the way this user may not enter: the storage's refusal, not the path's
        except OSError as exc:  # a name too long, a loop, ...: no such path can be catalogued
            raise _invalid(client_path, exc.strerror or type(exc).__name__) from None
        if stat.S_ISLNK(st.st_mode):
            raise _invalid(client_path, "symlinks are not followed")
    return rel


class NoCurrentFolder(Exception):
    """A relative path given while the current folder no longer exists."""


def absolute_root(root: Path) -> Path:
    """*root* (a store's folder) as an absolute path, taken once: a relative one, or one
    through ``..``, is resolved now, so that the store stays where it was found should the
    current folder (or a folder the path passes through) be removed or renamed later."""
    if root.is_absolute() and ".." not in root.parts:
        return root
    try:
        return Path(os.path.realpath(root))
    except FileNotFoundError:  # (the current folder, removed)
        raise NoCurrentFolder(
            f"the storage path {quoted(str(root))} is relative, and the current folder no longer "
            "exists: give it as an absolute path"
        ) from None
