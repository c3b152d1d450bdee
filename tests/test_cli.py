"""The operator's commands as a person types them: one line for every mistake, with the
exit code ``horace --help`` documents; relative paths as in a shell; global options
anywhere; read-only commands that never create a store.

Every command runs as a real process (``python -m horace``) with a clean environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from helpers import godot_that_never_answers, sha256, write

from horace.cli import Exit, _failure
from horace.model import ErrorCode, HoraceError

BACKEND = os.environ.get("HORACE_TEST_BACKEND", "sqlite")


def horace(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    return subprocess.run(
        [sys.executable, "-m", "horace", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=umask,
    )


def horace_without_override(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """:func:`horace` as a process that file modes bind, root's included (setpriv drops
    the capabilities that override them)."""
    without_override = (
        [
            "setpriv",
            "--inh-caps=-dac_override,-dac_read_search,-fowner",
            "--bounding-set=-dac_override,-dac_read_search,-fowner",
        ]
        if os.geteuid() == 0
        else []
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    return subprocess.run(
        [*without_override, sys.executable, "-m", "horace", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_quiet_when_the_reader_stops(args: str, env: dict[str, str]) -> None:
    """`horace ARGS | head -c 10`: the status a pipe's writer gets, and nothing said."""
    piped = subprocess.run(
        f"{sys.executable} -m horace {args} | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (piped.returncode, piped.stderr) == (Exit.BROKEN_PIPE, ""), (piped.returncode, piped.stderr)


def one_line_error(done: subprocess.CompletedProcess[str], exit_code: Exit, *words: str) -> str:
    """The command failed with *exit_code* and said so in one line, no traceback."""
    assert done.returncode == exit_code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_while_the_cli_is_imported_is_one_line_and_130(as_json: bool) -> None:
    """The CLI's imports take a tenth of a second: a Ctrl-C then is said as one at any
    other time (here, raised where the import of horace.cli begins)."""
    interrupt_the_import = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'horace.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from horace.__main__ import run\n"
        "run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", interrupt_the_import, "search", *(["--json"] if as_json else [])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == Exit.INTERRUPTED and "Traceback" not in done.stderr, done.stderr
    if as_json:
        assert json.loads(done.stderr)["error"] == {
            "code": "INTERRUPTED",
            "message": "interrupted",
            "exit_code": 130,
        }
    else:
        assert done.stderr == "horace: error: INTERRUPTED: interrupted\n"


def test_init_names_the_catalog_in_use(tmp_path: Path) -> None:
    """A catalog copied under another name (the same identity) is refused while the store
    is bound to the original; adopted, it is the store's, and init names the copy, not the
    name the store was made with."""
    root = tmp_path / "root"
    made = f"sqlite:///{tmp_path}/made.db"
    assert horace("init", "--storage", str(root), "--database", made).returncode == 0
    copy = tmp_path / "copy.db"
    copy.write_bytes((tmp_path / "made.db").read_bytes())
    done = horace("init", "--storage", str(root), "--database", f"sqlite:///{copy}")
    one_line_error(done, Exit.STORE, "STORE_REFUSED", "is a copy of it", "init --adopt")
    done = horace("init", "--adopt", "--storage", str(root), "--database", f"sqlite:///{copy}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"catalog sqlite:///{copy}", done.stdout
    one_line_error(horace("search", "--storage", str(root), "--database", made), Exit.STORE, "do not belong")


@pytest.fixture
def store(tmp_path: Path, database_url: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A store created by `horace init` (its catalog: the test backend's database)."""
    root = tmp_path / "horace-data"
    env = {"HORACE_STORAGE_PATH": str(root), "HORACE_DATABASE_URL": database_url}
    done = horace("init", env=env)
    assert done.returncode == 0, done.stderr
    yield root, env


def test_fsck_names_the_objects_no_version_refers_to(store: tuple[Path, dict[str, str]]) -> None:
    """Each may be all that is left of a version (a catalog older than the store): named
    where its content is, the first 20 a line each, the rest counted."""
    root, env = store
    names = [f"{n:064x}" for n in range(23)]
    for name in names:
        (root / ".horace/objects" / name[:2] / name).write_text(name)
    done = horace("fsck", env={**env, "HORACE_GC_GRACE": "0s"})  # (past the grace period)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "23 objects no version refers to, kept until HORACE_DELETED_RETENTION" in lines[0]
    assert lines[1:21] == [f"  kept: {n}" for n in sorted(names)[:20]]
    assert lines[21] == "  … and 3 more (--json lists them all)"
    # Collected once the retention has passed: the collector's work, not a repair (exit 0).
    past = {**env, "HORACE_GC_GRACE": "0s", "HORACE_DELETED_RETENTION": "0s"}
    done = horace("fsck", "--repair", env=past)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.count("orphan_object") == 23, done.stdout


def test_fsck_says_what_versions_without_content_most_often_come_of(
    store: tuple[Path, dict[str, str]],
) -> None:
    """A catalog copied after the rest of the store (a backup taken the wrong way round)
    names objects the copy lacks: fsck names each, then says the likely cause and the
    way out."""
    root, env = store
    write(root / "files/user/a.txt", "first")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    write(root / "files/user/a.txt", "second")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    (root / ".horace/objects" / sha256("first")[:2] / sha256("first")).unlink()
    done = horace("fsck", env=env)
    assert done.returncode == Exit.FSCK_LEFT, (done.stdout, done.stderr)
    said = [line for line in done.stdout.splitlines() if "without content" in line]
    assert said == [
        "  1 version without content: a catalog restored from a backup whose catalog copy was taken "
        "after the rest of the store names objects the copy lacks (take the catalog copy first), or "
        "objects were removed from .horace/objects; `horace fsck --repair --forget-missing` drops the "
        "old versions whose content is nowhere"
    ], done.stdout
    forgotten = horace("fsck", "--repair", "--forget-missing", env=env)
    assert forgotten.returncode in (Exit.OK, Exit.FOUND), (forgotten.stdout, forgotten.stderr)
    assert "without content" not in horace("fsck", env=env).stdout


def test_a_version_newer_than_a_restored_catalog_is_written_out_by_its_checksum(tmp_path: Path) -> None:
    """A catalog restored from a backup lacks the rows of the versions made since: fsck
    lists their objects as kept, by checksum, and `horace show --object` writes one out,
    of its own or in a pack (a scan's new files are packed), to be put back by hand."""
    root = tmp_path / "horace-data"
    env = {"HORACE_STORAGE_PATH": str(root), "HORACE_GC_GRACE": "0s"}
    assert horace("init", env=env).returncode == 0
    catalog, backup = root / ".horace/catalog.db", tmp_path / "backup.db"
    with sqlite3.connect(catalog) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    for i in range(80):
        (root / f"files/user/new{i:02d}.txt").write_text(f"made after the backup {i}")
    assert horace("scan", env=env).returncode == 0
    assert list((root / ".horace/objects/packs").iterdir())  # (packed)
    for side in ("-wal", "-shm"):
        catalog.with_name(catalog.name + side).unlink(missing_ok=True)
    shutil.copy(backup, catalog)
    listed = horace("fsck", env=env)
    assert "`horace show --object SHA256` writes one out" in listed.stdout, listed.stdout
    content = b"made after the backup 7"
    checksum = hashlib.sha256(content).hexdigest()
    out = subprocess.run(
        [sys.executable, "-m", "horace", "show", "--object", checksum],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}, **env},
        capture_output=True,
        check=False,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, content, b"")
    one_line_error(horace("show", "--object", "0" * 64, env=env), Exit.REFUSED, "FILE_NOT_FOUND")
    one_line_error(horace("show", "--object", "../../etc/passwd", env=env), Exit.REFUSED, "INVALID_ARGUMENT")
    one_line_error(horace("show", env=env), Exit.USAGE, "--object SHA256")


@pytest.mark.parametrize("kept_again_by", ["register", "scan"])
def test_a_pruned_content_kept_again_after_the_catalog_copy_is_kept_a_retention_long(
    tmp_path: Path, kept_again_by: str
) -> None:
    """A version's content let go of by pruning (marked released), then kept again for a
    newer version of another file: once a catalog restored from a copy older than both
    lacks that version's row, its object is kept a retention long as any other made
    after the copy, not collected a grace period after it was first let go of."""
    root = tmp_path / "horace-data"
    env = {
        "HORACE_STORAGE_PATH": str(root),
        "HORACE_GC_GRACE": "0s",
        "HORACE_VERSION_COUNT": "1",
        "HORACE_DELETED_RETENTION": "1h",
    }
    assert horace("init", env=env).returncode == 0
    catalog, backup = root / ".horace/catalog.db", tmp_path / "backup.db"
    with sqlite3.connect(catalog) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    work = root / "files/user"
    content = b"pruned, then kept again"
    checksum = hashlib.sha256(content).hexdigest()
    (work / "a.txt").write_bytes(content)
    assert horace("register", "user/a.txt", env=env).returncode == 0
    (work / "a.txt").write_text("its next version")
    assert horace("update", "user/a.txt", env=env).returncode == 0
    mark = root / ".horace/released" / checksum
    hour_ago = time.time() - 3600
    os.utime(mark, (hour_ago, hour_ago))  # (let go of an hour ago: not within a clock tick of now)
    for i in range(40):  # (a scan packs a batch of small new files)
        (work / f"other{i:02d}.txt").write_text(f"other {i}")
    (work / "b.txt").write_bytes(content)
    if kept_again_by == "register":
        assert horace("register", "user/b.txt", env=env).returncode == 0
    else:
        assert horace("scan", env=env).returncode == 0
    for side in ("-wal", "-shm"):
        catalog.with_name(catalog.name + side).unlink(missing_ok=True)
    shutil.copy(backup, catalog)
    assert checksum in json.loads(horace("fsck", "--json", env=env).stdout)["orphans"]  # listed as kept
    assert horace("purge", env=env).returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "horace", "show", "--object", checksum],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}, **env},
        capture_output=True,
        check=False,
    )
    assert (out.returncode, out.stdout) == (0, content), out.stderr


OLD_PYTHONS = sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3"))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 3.10 under ~/.pyenv")
def test_a_python_before_3_11_is_told_so_in_a_line() -> None:
    """`python3.10 -m horace` in a source folder (pip refuses to install it there): one
    line that says which Python it needs, not an ImportError's traceback."""
    source = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [str(OLD_PYTHONS[-1]), "-m", "horace", "--version"],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == Exit.CONFIG, done
    said = done.stderr.splitlines()
    assert len(said) == 1 and re.fullmatch(
        r"horace: error: CONFIG: Horace needs Python 3\.11 to 3\.13; \S+ is 3\.10\.\d+", said[0]
    ), done.stderr


def test_a_value_taken_as_it_is_may_not_begin_or_end_with_whitespace() -> None:
    """A stray space or newline (an environment file's) at the end of a path, a URL or a
    token would name another store (made anew) or a token no client can send: refused,
    saying so (a secret unshown). Numbers and words are read around their spaces."""
    from horace.config import ConfigError, Settings

    for name, value in [
        ("HORACE_STORAGE_PATH", "/srv/horace "),
        ("HORACE_DATABASE_URL", "postgresql://horace:s3cret@db/horace\n"),
        ("GODOT_URL", " ws://godot:9060"),
        ("HORACE_AUTH_TOKEN", "s3cret\n"),
        ("HORACE_DB_USER", "horace "),
    ]:
        env = {name: value, "HORACE_DB_HOST": "db"} if name.startswith("HORACE_DB_") else {name: value}
        with pytest.raises(ConfigError, match=f"^{name}.* has whitespace at its start or end") as refused:
            Settings.from_env(env)
        assert "s3cret" not in str(refused.value)
    # A password may begin or end with a space.
    spaced = Settings.from_env({"HORACE_DB_HOST": "db", "HORACE_DB_PASSWORD": " s3cret "})
    assert spaced.database_url == "postgresql://horace:%20s3cret%20@db:5432/horace"
    assert Settings.from_env({"HORACE_VERSION_COUNT": "3 "}).version_count == 3
    # A host that is a folder is the server's Unix socket there, not a host name.
    socket = {"HORACE_DB_HOST": "/run/postgresql", "HORACE_DB_PORT": "5433", "HORACE_DB_NAME": "hp"}
    assert Settings.from_env(socket).database_url == "postgresql://horace@/hp?host=/run/postgresql&port=5433"


def test_numbers_hosts_and_origins_no_request_could_use_are_refused_at_start(tmp_path: Path) -> None:
    """A port or a count is ASCII digits alone (int() would take "١٩٢٣١", "1_000" and "+5");
    an allowed host or origin that no request could ever give (a URL for a host, a name
    without its scheme or with a path for an origin) would leave every request it was
    meant to allow refused with 403: each is a setting's mistake, said at start."""
    from horace.config import ConfigError, Settings

    for name, value, said in [
        ("HORACE_MCP_PORT", "١٩٢٣١", "is not a port number"),
        ("HORACE_MCP_PORT", "1_9232", "is not a port number"),
        ("HORACE_VERSION_COUNT", "1_000", "is not an integer"),
        ("HORACE_VERSION_COUNT", "+5", "is not an integer"),
        ("HORACE_ALLOWED_HOSTS", "horace.example, https://horace.example", "is not a host name"),
        ("HORACE_ALLOWED_HOSTS", "horace.example/mcp", "is not a host name"),
        ("HORACE_ALLOWED_HOSTS", "x y z!", "is not a host name"),
        ("HORACE_ALLOWED_ORIGINS", "ops.example", "is not an origin"),
        ("HORACE_ALLOWED_ORIGINS", "https://ops.example/app", "is not an origin"),
    ]:
        with pytest.raises(ConfigError, match=f"^{name}.*{said}"):
            Settings.from_env({name: value})
    allowed = Settings.from_env(
        {
            "HORACE_MCP_PORT": " 8071 ",
            "HORACE_ALLOWED_HOSTS": "horace.example, horace.example:8443, [::1]:8070, *",
            "HORACE_ALLOWED_ORIGINS": "https://Ops.example:443/, http://ops.example:8080, *",
        }
    )
    assert allowed.port == 8071 and len(allowed.allowed_hosts) == 4 and len(allowed.allowed_origins) == 3
    # HORACE_LOG_LEVEL stands for --log-level, but a wrong one is a setting's mistake too.
    store = {"HORACE_STORAGE_PATH": str(tmp_path / "s")}
    for command in ("serve", "mcp", "watch"):
        done = horace(command, env={**store, "HORACE_LOG_LEVEL": "verbose"})
        one_line_error(done, Exit.CONFIG, "CONFIG", "HORACE_LOG_LEVEL='verbose'")
    assert not (tmp_path / "s").exists()


def test_a_storage_path_a_shell_would_have_expanded_is_refused_unless_it_is_there(tmp_path: Path) -> None:
    """A desktop client's JSON "env" goes through no shell: "~/store" or "$HOME/store" would
    be a store made under ./~ or ./$HOME. A folder that is there by such a name is served."""
    from horace.config import ConfigError, Settings

    for value, said in [
        ("~/store", "'~'"),
        ("$HOME/store", "'$HOME'"),
        (f"{tmp_path}/${{USER}}", "'${USER}'"),
    ]:
        with pytest.raises(
            ConfigError, match=f"^HORACE_STORAGE_PATH=.* holds {re.escape(said)}, which only a shell"
        ):
            Settings.from_env({"HORACE_STORAGE_PATH": value})
    there = tmp_path / "price$5 and $x"
    there.mkdir()
    assert Settings.from_env({"HORACE_STORAGE_PATH": str(there)}).storage_path == there
    assert Settings.from_env({"HORACE_STORAGE_PATH": f"{tmp_path}/costs $5"}).storage_path.name == "costs $5"


def test_a_relative_storage_path_is_resolved_once(tmp_path: Path, database_url: str) -> None:
    """A relative storage path (or one through ..) is made absolute at start, so that the
    store stays where it was found should the current folder go; with the current folder
    gone already, it is a CONFIG error that says so."""
    from horace.config import Settings
    from horace.storage import Storage

    (tmp_path / "cwd").mkdir()
    assert Storage(tmp_path / "cwd" / ".." / "s").root == tmp_path / "s"
    settings = Settings.from_env({"HORACE_STORAGE_PATH": str(tmp_path / "cwd" / ".." / "s")})
    assert (settings.storage_path, settings.catalog_url) == (
        tmp_path / "s",
        f"sqlite://{tmp_path}/s/.horace/catalog.db",  # (the default catalog's path with it)
    )
    gone = tmp_path / "gone"
    gone.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    done = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m horace search'],
        env={**clean, "HORACE_STORAGE_PATH": "relative", "HORACE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(done, Exit.CONFIG, "'relative' is relative, and the current folder no longer exists")
    # An absolute storage path works with the current folder gone, a relative file path too
    # (relative to files/, as MCP clients give it).
    assert horace("init", env={"HORACE_STORAGE_PATH": str(tmp_path / "s")}).returncode == 0
    gone.mkdir()
    done = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m horace info user/x.txt'],
        env={**clean, "HORACE_STORAGE_PATH": str(tmp_path / "s")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(done, Exit.REFUSED, "NOT_CATALOGED")


def test_names_are_read_as_utf8_whatever_the_locale(tmp_path: Path, database_url: str) -> None:
    """Under a locale whose encoding is not UTF-8 (here ASCII: LC_ALL=C with Python's UTF-8
    mode off), a name is still read as UTF-8: the catalog's names are, and read with
    another encoding one file's name would be taken for another's."""
    root = tmp_path / "horace-data"
    env = {
        "HORACE_STORAGE_PATH": str(root),
        "HORACE_DATABASE_URL": database_url,
        "PYTHONUTF8": "0",
        "LC_ALL": "C",
    }
    assert horace("init", env=env).returncode == 0
    write(root / "files/user/café.txt", "named in UTF-8")
    with open(os.path.join(os.fsencode(root), b"files/user/caf\xe9.txt"), "wb") as f:
        f.write(b"named in Latin-1")
    scanned = horace("scan", env=env)
    assert scanned.returncode == Exit.FOUND, scanned.stderr
    assert (
        "1 registered" in scanned.stdout
        and "'user/caf\\xe9.txt': the name is not valid UTF-8" in scanned.stdout
    )
    listed = horace("--json", "search", env=env)
    assert [f["file_path"] for f in json.loads(listed.stdout)["results"]] == ["user/café.txt"], listed.stdout


def test_a_byte_that_is_not_utf8_and_a_backslash_are_told_apart_in_a_scans_lines(
    store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A name with the byte 0xff and one with the four characters \\xff are two names: the
    scan's report and its log lines quote each as Python does (one backslash before a
    byte's xNN, a backslash of the name doubled), as every error line does."""
    root, env = store
    folder = os.path.join(os.fsencode(root), b"files", b"h")
    os.makedirs(folder)
    with open(os.path.join(folder, b"a\xffb.txt"), "wb") as f:
        f.write(b"raw")
    literal = os.path.join(folder, b"a\\xffb.txt")
    with open(literal, "wb") as f:
        f.write(b"literal")
    os.link(literal, tmp_path / "second-link")  # (an error: a file of two links)
    scanned = horace("scan", "h", env=env)
    assert scanned.returncode == Exit.FOUND, scanned.stderr
    assert "  skipped: 'h/a\\xffb.txt': the name is not valid UTF-8" in scanned.stdout, scanned.stdout
    assert "  error: 'h/a\\\\xffb.txt': 'h/a\\\\xffb.txt' has 2 hard links" in scanned.stdout, scanned.stdout
    assert "skipped 'h/a\\xffb.txt': the name" in scanned.stderr, scanned.stderr
    assert "not taken: 'h/a\\\\xffb.txt': " in scanned.stderr, scanned.stderr


def test_a_name_with_control_characters_is_one_escaped_line(store: tuple[Path, dict[str, str]]) -> None:
    """A newline in a name must not end its record's line and forge another; an escape
    must not reach the terminal."""
    root, env = store
    (root / "files/user/evil\nabc  v9  active  0  forged.txt  [].txt").write_text("n")
    (root / "files/user/red\x1b[31m.txt").write_text("e")
    (root / "files/user/bidi\u202etxt.exe").write_text("b")
    (root / "files/user/lit\\nx").write_text("a backslash and an n, no newline")
    scanned = horace("scan", env=env)
    assert scanned.returncode == 0, scanned.stderr
    (root / "files/user/.horace-tmp-\x1b[2J\nforged").write_text("reserved name, skipped with a warning")
    warned = horace("scan", env=env)
    assert "\x1b" not in warned.stdout + warned.stderr and "\\x1b[2J\\nforged" in warned.stderr
    assert len([line for line in warned.stderr.splitlines() if "forged" in line]) == 1, warned.stderr
    done = horace("search", "--path", "user/*", env=env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "user/" in line]
    assert len(lines) == 4, done.stdout
    assert any("user/lit\\\\nx" in line for line in lines), lines  # (not as the newline's \n)
    assert any("user/bidi\\u202etxt.exe" in line for line in lines), lines
    assert any("user/evil\\nabc  v9" in line for line in lines), lines
    assert any("user/red\\x1b[31m.txt" in line for line in lines), lines
    assert "\x1b" not in done.stdout
    (root / "files/user/red\x1b[31m.txt").unlink()  # gone: named by the next scan, escaped
    gone = horace("scan", "user", env=env)
    assert gone.returncode == 1, gone.stderr  # (the reserved name is still skipped)
    assert "1 skipped, 1 missing, 0 moved\n" in gone.stdout, gone.stdout
    assert "\n  missing: user/red\\x1b[31m.txt\n" in gone.stdout, gone.stdout
    assert "\x1b" not in gone.stdout and "horace delete" in gone.stdout


@pytest.mark.parametrize("mode", [0, 0o600])  # (0600: listed, never entered)
def test_an_unreadable_folder_is_reported_not_fatal(store: tuple[Path, dict[str, str]], mode: int) -> None:
    """A folder of catalogued files that cannot be read (mode 000, for a process without
    root's override: setpriv drops it) is one finding of fsck and of verify; the rest
    is checked, and a server's start (which runs the same fsck) is not stopped by it."""
    root, env = store
    (root / "files/user/open.txt").write_text("readable")
    (root / "files/user/shut").mkdir()
    (root / "files/user/shut/a.txt").write_text("behind a folder nobody may read")
    (root / "files/user/shut/deeper").mkdir()
    (root / "files/user/shut/deeper/b.txt").write_text("further behind")
    (root / "files/user/folders-only/inner").mkdir(parents=True)  # (nothing to stat first)
    (root / "files/user/folders-only/inner/c.txt").write_text("behind one more")
    assert horace("scan", env=env).returncode == 0
    for shut in ("shut", "folders-only"):
        (root / "files/user" / shut).chmod(mode)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return horace_without_override(*args, env=env)

    try:
        checked = run("fsck")
        assert checked.returncode == Exit.FSCK_LEFT, (checked.stdout, checked.stderr)
        assert "unreachable: user/shut/a.txt its folder cannot be read" in checked.stdout, checked.stdout
        verified = run("verify")
        assert verified.returncode == Exit.FOUND, (verified.stdout, verified.stderr)
        assert "working_unreadable: user/shut/a.txt" in verified.stdout, verified.stdout
        registered = run("register", "user/shut/a.txt")  # the storage's refusal, not the path's
        one_line_error(registered, Exit.STORAGE, "STORAGE_ERROR", "may not read or write")
        scanned = run("scan")  # the folder is said to be skipped, and nothing is deleted
        assert scanned.returncode == Exit.FOUND, (scanned.stdout, scanned.stderr)
        for shut in ("shut", "folders-only"):  # passed over whole, not folder by folder within
            assert f"skipped: 'user/{shut}': the folder cannot be read (Permission denied)" in scanned.stdout
        assert "skipped: user/folders-only/inner" not in scanned.stdout, scanned.stdout
        listed = run("search", "--status", "all", "--json")
        assert {(f["file_path"], f["status"]) for f in json.loads(listed.stdout)["results"]} == {
            ("user/open.txt", "active"),
            ("user/shut/a.txt", "active"),
            ("user/shut/deeper/b.txt", "active"),
            ("user/folders-only/inner/c.txt", "active"),
        }
    finally:
        for shut in ("shut", "folders-only"):
            (root / "files/user" / shut).chmod(0o755)


def test_no_folder_of_horace_s_is_writable_by_every_user_whatever_the_umask(
    tmp_path: Path, database_url: str
) -> None:
    """Under a umask of 000 a folder is made 0777, and any local user may unlink what is in
    one (a version's object: its own mode, 0444, is no help). The store's folder and
    Horace's own are never writable by every user; those of a store made so before lose
    it at its next start. Group writes stay the umask's (instances run as one group)."""
    root = tmp_path / "horace-data"
    env = {"HORACE_STORAGE_PATH": str(root), "HORACE_DATABASE_URL": database_url}
    assert horace("init", env=env, umask=0).returncode == 0
    (root / "files/user/a.txt").write_text("one")
    assert horace("scan", env=env, umask=0).returncode == 0
    private = root / ".horace"

    def writable_by_all() -> list[Path]:
        return [p for p in [root, *private.rglob("*")] if p.stat().st_mode & stat.S_IWOTH]

    assert writable_by_all() == []
    assert stat.S_IMODE((private / "objects" / "00").stat().st_mode) == 0o775
    assert stat.S_IMODE((private / "store.json").stat().st_mode) == 0o644
    for made_so_before in (private, private / "tmp", private / "objects", private / "objects" / "ab"):
        made_so_before.chmod(0o777)
    done = horace("scan", env=env, umask=0)
    assert done.returncode == 0, done.stderr
    assert writable_by_all() == []
    assert stat.S_IMODE(private.stat().st_mode) == 0o775


def test_a_read_only_catalog_is_a_storage_error_and_works_again_once_writable(
    tmp_path: Path,
) -> None:
    """A catalog file made read-only: a write is STORAGE_ERROR (exit 8), saying which file,
    not INTERNAL. SQLite meanwhile makes its -wal and -shm files with the catalog's mode:
    once the catalog is writable again they are made so too, so that it is usable without
    finding them by hand."""
    root = tmp_path / "horace-data"
    env = {"HORACE_STORAGE_PATH": str(root)}
    assert horace("init", env=env).returncode == 0
    (root / "files/user/a.txt").write_text("one")
    assert horace("scan", env=env).returncode == 0
    catalog = root / ".horace/catalog.db"
    catalog.chmod(0o444)
    (root / "files/user/a.txt").write_text("two")
    line = one_line_error(horace_without_override("scan", env=env), Exit.STORAGE, "STORAGE_ERROR")
    assert f"the catalog {catalog} is read-only" in line
    # (A server is not started on it: it would serve no write until restarted.)
    served = horace_without_override("serve", "--port", "0", env=env)
    assert f"STORAGE_ERROR: the catalog {catalog} is read-only" in one_line_error(served, Exit.STORAGE)
    catalog.chmod(0o644)
    done = horace_without_override("scan", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["versioned"] == 1


@pytest.mark.parametrize(("soft", "hard", "raised", "said"), [(32, 1024, 1024, False), (32, 64, 64, True)])
def test_a_service_raises_its_limit_of_open_files_and_says_when_it_is_too_low(
    soft: int, hard: int, raised: int, said: bool
) -> None:
    """Each connection and each file at work holds a descriptor: a service raises its soft
    limit to the hard one, and says when that is still below what its connection limits
    may take (else connections and calls failed with "too many open files", said as
    INTERNAL, and its own tasks crashed at start)."""
    code = (
        "import logging, resource, sys\n"
        "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from horace.cli import _more_open_files\n"
        "from horace.config import Settings\n"
        "_more_open_files(Settings())\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == raised
    assert ("the limit of open files is 64 (ulimit -n), below the 512" in done.stderr) == said, done.stderr


def test_a_file_larger_than_the_process_may_write_is_a_storage_error(
    store: tuple[Path, dict[str, str]],
) -> None:
    """Past the process's file size limit (``ulimit -f``) a copy fails with EFBIG: the
    system's limit, said as STORAGE_ERROR with what to raise, not INTERNAL; nothing half
    written is left."""
    root, env = store
    (root / "files/user/big.bin").write_bytes(os.urandom(4 << 20))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    done = subprocess.run(
        ["bash", "-c", 'ulimit -f 1024 && exec "$0" -m horace register user/big.bin', sys.executable],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(done, Exit.STORAGE, "STORAGE_ERROR", "File too large", "(ulimit -f)")
    assert list((root / ".horace/tmp").iterdir()) == []
    one_line_error(horace("info", "user/big.bin", env=env), Exit.REFUSED, "NOT_CATALOGED")


def test_a_reader_that_stops_reading_a_long_output_ends_it_quietly(
    store: tuple[Path, dict[str, str]],
) -> None:
    """Output longer than a pipe holds (`horace --json search | head`, `horace fsck | head`
    on a store with many findings): the status a pipe's writer gets, and nothing said (it
    was `INTERNAL: SystemExit: 1`, exit 70)."""
    root, env = store
    for i in range(600):
        (root / f"files/user/f{i:03d}.txt").write_text(f"file {i}")
    assert horace("scan", env=env).returncode == 0
    assert_quiet_when_the_reader_stops("--json search --limit 1000", env)


def test_version_and_module_entry() -> None:
    done = horace("--version")
    assert done.returncode == 0 and done.stdout.startswith("horace "), done
    assert "Exit codes" in horace("--help").stdout
    alone = horace()  # what there is to do, on stdout: not an error
    assert alone.returncode == 0 and alone.stderr == "" and alone.stdout == horace("--help").stdout


def test_a_store_inside_another_stores_folders_is_refused(store: tuple[Path, dict[str, str]]) -> None:
    """Its objects and catalog would be catalogued as the outer store's files."""
    root, _env = store
    for inner in (root / "files/gates/horace-data", root / ".horace/tmp/nested", root / "files"):
        for command in ("init", "serve"):  # (files/ itself: a desktop client's config, say)
            done = horace(command, "--storage", str(inner))
            said = one_line_error(done, Exit.CONFIG, "inside the store at")
            assert f"run with --storage {root}" in said, said
        assert not inner.exists() or inner == root / "files"
    one_line_error(horace("init", cwd=root / "files/gates"), Exit.CONFIG, "inside the store at")
    assert not (root / "files/gates/horace-data").exists()
    # Run in the store's own folder, the default ./horace-data would be a new store in it.
    for command in (["init"], ["serve", "--port", "0"]):
        line = one_line_error(horace(*command, cwd=root), Exit.CONFIG, "in the folder of the store at")
        assert f"--storage {root}" in line
        assert not (root / "horace-data").exists()


@contextlib.contextmanager
def mounted_at(folder: Path, *how: str) -> Iterator[None]:
    """*folder* a mount point while the block runs: a small tmpfs, or *how* (bind ...)."""
    how = how or ("-t", "tmpfs", "-o", "size=8m", "tmpfs")
    mounted = subprocess.run(["mount", *how, str(folder)], capture_output=True, check=False)
    if mounted.returncode != 0:  # (a container without the privilege)
        pytest.skip(f"cannot mount here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounts: root only")
def test_a_folder_of_the_store_on_another_file_system_is_said_so(store: tuple[Path, dict[str, str]]) -> None:
    """Working files move to and from .horace/tmp by renaming: a disk mounted at files/
    (or under it) cannot be renamed across. Such a store is refused at open, saying so; a
    disk mounted deeper in files/ makes a delete a STORAGE_ERROR that says so, changing
    nothing (it was INTERNAL, "Invalid cross-device link")."""
    root, env = store
    with mounted_at(root / "files/user"):
        write(root / "files/user/a.txt", "on its own disk")
        assert horace("scan", env=env).returncode == 0
        one_line_error(horace("delete", "user/a.txt", env=env), Exit.STORAGE, "STORAGE_ERROR", "file system")
        assert (root / "files/user/a.txt").read_text() == "on its own disk"
        assert horace("fsck", env=env).returncode == 0
    with mounted_at(root / "files"):
        one_line_error(horace("search", env=env), Exit.CONFIG, "files is on another file system")
    # A bind mount of the same disk: the same device number, and still no rename across.
    (root.parent / "elsewhere").mkdir()
    with mounted_at(root / "files", "--bind", str(root.parent / "elsewhere")):
        one_line_error(horace("search", env=env), Exit.CONFIG, "files is on another file system (or mount)")
    assert horace("search", env=env).returncode == 0


def test_configuration_mistakes_are_one_line(tmp_path: Path) -> None:
    root = {"HORACE_STORAGE_PATH": str(tmp_path / "s")}
    for url, words in [
        ("mysql://x", ("CONFIG", "'mysql' is not supported")),
        ("garbage", ("CONFIG", "not a URL")),
        ("sqlite://", ("CONFIG", "needs a path")),
        ("sqlite://relative.db", ("CONFIG", "absolute path")),  # a different file in each folder
        ("postgresql://u:pw@127.0.0.1:notaport/db", ("CONFIG", "'notaport' is not a port number")),
        ("postgresql://u@[bad/db", ("CONFIG", "address cannot be read")),  # urllib: a ValueError
        # A password holding / and @ unencoded: its tail would be read as host and database
        ("postgresql://horace:se:cr@t/pw@127.0.0.1:5432/horace", ("CONFIG", "must be percent-encoded")),
        ("postgresql://horace:a#b@127.0.0.1:5432/horace", ("CONFIG", "must be percent-encoded")),
        ("postgresql://horace:p@ss@127.0.0.1:5432/horace", ("CONFIG", "must be percent-encoded")),
    ]:
        line = one_line_error(horace("search", env={**root, "HORACE_DATABASE_URL": url}), Exit.CONFIG, *words)
        assert not any(part in line for part in ("cr@t", "pw@", "a#b", "p@ss")), line  # none of a password
        one_line_error(horace("serve", env={**root, "HORACE_DATABASE_URL": url}), Exit.CONFIG, *words)
        one_line_error(horace("mcp", env={**root, "HORACE_DATABASE_URL": url}), Exit.CONFIG, *words)
    for url, word in [  # found out as the database is opened (asyncpg parses the URL)
        ("postgresql://u@127.0.0.1:1/db?sslmode=bogus", "sslmode"),
        ("postgresql://u@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nowhere/ca.pem", "sslrootcert"),
        ("postgresql://u@127.0.0.1:1/db?connect_timeout=soon", "connect_timeout='soon'"),
    ]:
        for command in ("init", "serve"):
            done = horace(command, env={**root, "HORACE_DATABASE_URL": url})
            one_line_error(done, Exit.CONFIG, "CONFIG", "bad PostgreSQL URL", word)
    typo = tmp_path / "var" / "lib" / "horrace" / "catalog.db"  # a folder nobody made
    for command in ("init", "serve"):
        done = horace(command, env={**root, "HORACE_DATABASE_URL": f"sqlite://{typo}"})
        one_line_error(done, Exit.CONFIG, "CONFIG", f"there is no folder {typo.parent}")
        assert not (tmp_path / "var").exists()
    for command in (["serve", "--port", "0"], ["mcp"]):  # (a typo in the conversation log's URL never heals)
        done = horace(*command, env={**root, "HORACE_CONVERSATIONS_URL": f"sqlite://{typo}"})
        one_line_error(done, Exit.CONFIG, "HORACE_CONVERSATIONS_URL", f"there is no folder {typo.parent}")
    not_a_database = write(tmp_path / "notes.db", "not a database\n")
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    deep = tmp_path / ("x" * 200) / ("y" * 200) / ("z" * 100)
    deep.mkdir(parents=True)
    (tmp_path / "short").symlink_to(deep)
    for url, words in [
        (f"sqlite://{tmp_path}/short/c.db", ("symbolic links followed", "SQLite opens none over 503")),
        (f"sqlite://{not_a_database}/c.db", (f"{not_a_database} is a file, not a folder",)),
        (f"sqlite://{tmp_path}/c.db?mode=rw", ("takes a path only",)),
        (f"sqlite://{tmp_path}/", ("is a folder",)),
        (f"sqlite://{tmp_path}/{'x' * 200}/{'y' * 200}/{'z' * 100}.db", ("SQLite opens none over 503",)),
        (f"sqlite://{not_a_database}", ("is not an SQLite database",)),
        ("sqlite:///dev/null", ("is not a regular file",)),  # (SQLite made /dev/null-journal)
        (f"sqlite://{fifo}", ("is not a regular file",)),
    ]:
        for command in ("init", "serve"):
            done = horace(command, env={**root, "HORACE_DATABASE_URL": url})
            one_line_error(done, Exit.CONFIG, "CONFIG", *words)
    assert not_a_database.read_text() == "not a database\n"
    assert not os.path.exists("/dev/null-journal")
    # /proc has no blocks to fill: what SQLite cannot open there is no full disk.
    done = horace("init", env={**root, "HORACE_DATABASE_URL": "sqlite:///proc/c.db"})
    one_line_error(done, Exit.STORAGE, "STORAGE_ERROR", "cannot be opened for writing")
    one_line_error(
        horace("search", env={**root, "HORACE_VERSION_COUNT": "many"}), Exit.CONFIG, "not an integer"
    )
    parts = {**root, "HORACE_DB_HOST": "127.0.0.1", "HORACE_DB_PORT": "abc"}
    one_line_error(horace("search", env=parts), Exit.CONFIG, "HORACE_DB_HOST/PORT", "'abc'")
    for name, value, words in [  # the log sinks' settings too, before anything starts
        ("HORACE_GODOT_LEVEL", "LOUD", ("DEBUG, INFO, WARNING or ERROR",)),
        ("GODOT_URL", "http://godot:9060", ("a WebSocket URL",)),
        ("GODOT_URL", "ws://u:s3cret@godot:port/", ("the port is not a number",)),
    ]:
        for command in ("serve", "mcp"):
            line = one_line_error(horace(command, env={**root, name: value}), Exit.CONFIG, name, *words)
            assert "s3cret" not in line
    one_line_error(horace("serve", "--storage", "/etc/passwd"), Exit.CONFIG, "not a folder")
    for args in (["--storage", "", "init"], ["init", "--storage", ""]):  # ("." would make one here)
        one_line_error(horace(*args, cwd=tmp_path), Exit.USAGE, "--storage", "the path is empty")
        assert not (tmp_path / ".horace").exists()
    for stray in ("s ", " s", "s\n"):  # (as in HORACE_STORAGE_PATH: another store, made anew)
        one_line_error(
            horace("init", "--storage", stray, cwd=tmp_path), Exit.USAGE, "--storage", "whitespace"
        )
        assert not (tmp_path / stray).exists() and not (tmp_path / "s").exists()
    # A path no store can have (the catalog records it as text; a filesystem takes names of
    # 255 bytes at most): said, and nothing made.
    before = sorted(os.listdir(tmp_path))
    for name, words in (
        ("st\udcffore", "st\\xffore' is not valid UTF-8"),
        ("L" * 300, "more than 255 bytes"),
    ):
        for command in (["init"], ["search"], ["serve", "--port", "0"]):
            one_line_error(horace(*command, "--storage", str(tmp_path / name)), Exit.CONFIG, words)
    assert sorted(os.listdir(tmp_path)) == before
    for in_the_way in ("files", ".horace"):  # a file where a folder of the layout goes: named
        blocked = tmp_path / f"blocked-{in_the_way}"
        write(blocked / in_the_way, "a file")
        one_line_error(
            horace("init", "--storage", str(blocked)),
            Exit.CONFIG,
            f"{blocked / in_the_way} is a file, not a folder",
        )
        assert (blocked / in_the_way).read_text() == "a file"
    one_line_error(horace("search", "--database", "mysql://x", env=root), Exit.CONFIG, "--database:")
    # A storage root that cannot be created (sysfs refuses even root): a storage error, as
    # for a read-only or forbidden store made already.
    one_line_error(
        horace("init", "--storage", "/sys/horace-store"), Exit.STORAGE, "STORAGE_ERROR", "/sys/horace-store"
    )
    one_line_error(horace("search", "--limit", "0"), Exit.USAGE, "USAGE", "--limit")
    # Numbers no catalog column holds are refused before any backend sees them.
    one_line_error(horace("search", "--offset", str(2**64)), Exit.USAGE, "USAGE", "--offset")
    one_line_error(horace("restore", "a.txt", str(2**64)), Exit.USAGE, "USAGE", "VERSION")
    for wrong in ("0", "v", "vv1", "1.5", "9" * 5000):
        one_line_error(horace("restore", "a.txt", wrong), Exit.USAGE, "USAGE", "is not a version")
    one_line_error(horace("serch"), Exit.USAGE, "No such command")
    for port in ("abc", "65536", "-1"):
        one_line_error(horace("serve", "--port", port), Exit.USAGE, "is not a port: a number from 0")
    # (served, it would watch nothing: --poll alone says how to watch, not to)
    one_line_error(horace("serve", "--poll", "--port", "0"), Exit.USAGE, "USAGE", "give --watch with it")
    # (said first; then the host is refused, before a store is made)
    polled = horace("serve", "--host", "no-such-host.invalid", env={"HORACE_WATCH_POLL": "1"})
    assert "HORACE_WATCH_POLL is set, but watch mode is off" in polled.stderr, polled.stderr
    cleared_and_set = horace("update", "a.txt", "--clear-tags", "--tag", "weekly")
    one_line_error(cleared_and_set, Exit.USAGE, "USAGE", "--clear-tags", "give one of them")


def test_a_variable_that_is_no_setting_is_named_with_the_setting_it_may_mean(tmp_path: Path) -> None:
    """A typo (HORACE_AUTH_TOKN) would leave the setting it meant at its default, silently:
    each command says so on stderr, once, and goes on."""
    env = {
        "HORACE_STORAGE_PATH": str(tmp_path / "s"),
        "HORACE_AUTH_TOKN": "secret",
        "HORACE_TEST_SOMETHING": "1",  # the repository's tooling: not a setting, not reported
        "HORACE_DB_NAME": "horace",  # read only with HORACE_DB_HOST
        "HORACE_DB_URL": "sqlite:///elsewhere.db",  # another tool's name for one
        "HORACE_LOG_LEVEL": "ERROR",  # a setting, read by the option it stands for
    }
    assert horace("init", env=env).returncode == 0
    done = horace("search", env=env)
    assert done.returncode == 0, done.stderr
    lines = [line.removeprefix("horace: warning: ") for line in done.stderr.splitlines()]
    assert lines == [
        "HORACE_DB_NAME is read only with HORACE_DB_HOST, which selects PostgreSQL: ignored",
        "HORACE_AUTH_TOKN is not a Horace setting (did you mean HORACE_AUTH_TOKEN?): ignored",
        "HORACE_DB_URL is not a Horace setting (did you mean HORACE_DATABASE_URL?): ignored",
    ], done.stderr
    # HORACE_LOG_LEVEL is --log-level's: a server's INFO lines are not logged at ERROR.
    store = {"HORACE_STORAGE_PATH": env["HORACE_STORAGE_PATH"]}
    quiet = horace("mcp", env={**store, "HORACE_LOG_LEVEL": "ERROR"})  # (stdin empty: it ends at once)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = horace("mcp", env={**store, "HORACE_LOG_LEVEL": "INFO"})
    assert loud.returncode == 0 and '"level": "INFO"' in loud.stderr, loud.stderr
    # --log-level takes the names HORACE_LOG_LEVEL takes (WARN and TRACE were usage errors).
    warned = horace("mcp", "--log-level", "warn", env=store)
    assert warned.returncode == 0 and warned.stderr == "", warned.stderr
    traced = horace("mcp", "--log-level", "TRACE", env=store)
    assert traced.returncode == 0 and '"level": "INFO"' in traced.stderr, traced.stderr
    # A count in other digits than 0-9 (int() takes "٢") is refused, as every number is.
    one_line_error(
        horace("search", "--limit", "\u0662", env=store), Exit.USAGE, "USAGE", "--limit", "digits 0-9"
    )


def test_a_sink_setting_that_cannot_apply_is_said_ignored() -> None:
    """Settings of a log sink that is off would seem to apply: each is said ignored, as a
    typo is (HORACE_WATCH_POLL without watch mode has its warning too)."""
    from horace.config import ignored_variables

    off = {"HORACE_CONVERSATIONS": "off", "HORACE_CONVERSATIONS_URL": "sqlite:///t.db"}
    no_godot = {"HORACE_GODOT_TOOL": "log", "HORACE_CONVERSATIONS_TO_GODOT": "on"}
    conversations_off = "is read only with the conversation log on (HORACE_CONVERSATIONS is off): ignored"
    godot_off = "is read only with GODOT_URL, which sends the log to Godot: ignored"
    assert ignored_variables({**off, "HORACE_CONVERSATION_RETENTION": "30d", **no_godot}) == [
        f"HORACE_CONVERSATIONS_URL {conversations_off}",
        f"HORACE_CONVERSATION_RETENTION {conversations_off}",
        f"HORACE_GODOT_TOOL {godot_off}",
        f"HORACE_CONVERSATIONS_TO_GODOT {godot_off}",
    ]
    on = {**off, "HORACE_CONVERSATIONS": "on", **no_godot, "GODOT_URL": "ws://godot:9060"}
    assert ignored_variables(on) == []
    # A sink's first retry delay above the most it waits: each retry waits the cap.
    overruled = "is above HORACE_SINK_BACKOFF_CAP"
    assert ignored_variables({"HORACE_SINK_BACKOFF_BASE": "1m"}) == [
        f"HORACE_SINK_BACKOFF_BASE (60 s) {overruled} (30 s), the most a sink waits between retries: "
        "each waits the cap"
    ]
    assert (
        overruled in ignored_variables({"HORACE_SINK_BACKOFF_CAP": "2s", "HORACE_SINK_BACKOFF_BASE": "3s"})[0]
    )
    for fine in ({"HORACE_SINK_BACKOFF_BASE": "30s"}, {"HORACE_SINK_BACKOFF_BASE": "0s"}):
        assert ignored_variables(fine) == []


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # bound, never listening: refused, and nobody else's
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        env = {
            "HORACE_STORAGE_PATH": str(tmp_path / "s"),
            "HORACE_DATABASE_URL": f"postgresql://horace:s3cret@127.0.0.1:{port}/horace",
        }
        line = one_line_error(horace("init", env=env), Exit.BACKEND, "BACKEND_UNAVAILABLE")
        assert "s3cret" not in line
        done = horace("mcp", env=env)  # a desktop client shows this line from the server's stderr
        line = one_line_error(done, Exit.BACKEND, "BACKEND_UNAVAILABLE")
        assert "s3cret" not in line and done.stdout == ""


def test_read_only_commands_never_create_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["search"], ["info", "x"], ["verify"], ["fsck"], ["register", "a.txt"], ["scan"]):
        line = one_line_error(horace(*command, cwd=empty), Exit.STORE, "STORE_REFUSED", "no Horace store")
        assert str(empty / "horace-data") in line and "horace init" in line
    assert list(empty.iterdir()) == []


def test_read_only_commands_open_no_lock_file(store: tuple[Path, dict[str, str]]) -> None:
    """Readers take no lock: a command that only reads does not open (or make) the store's
    lock file for writing, so that the versions of a store gone read-only can be read (on
    PostgreSQL; SQLite itself writes beside its catalog)."""
    root, env = store
    write(root / "files/user/a.txt", "one")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    (root / ".horace/locks").unlink()
    for command in (
        ["info", "user/a.txt"],
        ["search"],
        ["show", "user/a.txt"],
        ["verify"],
        ["diff", "user/a.txt", "1"],
    ):
        done = horace(*command, env=env)
        assert done.returncode == 0, (command, done.stderr)
    assert not (root / ".horace/locks").exists()


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (ErrorCode.BACKEND_UNAVAILABLE, Exit.BACKEND),
        (ErrorCode.STORAGE_ERROR, Exit.STORAGE),
        (ErrorCode.STORAGE_FULL, Exit.STORAGE),
        (ErrorCode.FILE_LOCKED, Exit.REFUSED),
    ],
)
def test_a_tool_error_exits_by_its_code(code: ErrorCode, exit_code: Exit) -> None:
    """An outage said as a tool error (a scan cut short by it, saying what it kept) exits
    as the same outage raised bare does: a job that retries on 7 retries a scan too."""
    kept = HoraceError(code, "it stopped; before it stopped, this scan registered 3 files, which are kept")
    failure = _failure(kept)
    assert failure is not None
    assert (failure.exit, failure.code) == (exit_code, code.value)


NOT_UTF8_PATH = os.fsdecode(b"user/a\xff.txt")  # as the shell passes a name that is not UTF-8


@pytest.mark.parametrize(
    "args",
    [
        ["info", NOT_UTF8_PATH],
        ["show", NOT_UTF8_PATH],
        ["delete", NOT_UTF8_PATH],
        ["undelete", NOT_UTF8_PATH],
        ["verify", NOT_UTF8_PATH],
        ["restore", NOT_UTF8_PATH, "1"],
        ["diff", NOT_UTF8_PATH, "1"],
        ["update", NOT_UTF8_PATH, "--owner", "x"],
    ],
    ids=lambda args: args[0],
)
def test_a_path_argument_that_is_not_utf8_is_an_invalid_path(
    store: tuple[Path, dict[str, str]], args: list[str]
) -> None:
    """Such a name is never catalogued: refused as register and scan refuse it, not INTERNAL."""
    _, env = store
    line = one_line_error(horace(*args, env=env), Exit.REFUSED, "INVALID_PATH", "not valid UTF-8")
    assert "\udcff" not in line and "'user/a\\xff.txt'" in line, line  # (one backslash)


def test_error_lines_tell_a_byte_that_is_not_utf8_from_a_backslash(
    store: tuple[Path, dict[str, str]],
) -> None:
    """A name is quoted once in an error line, as in a message over MCP: a backslash of the
    name doubled, a byte that is not UTF-8 and a control character each one escape."""
    _, env = store
    said = {
        name: one_line_error(horace("info", name, env=env), Exit.REFUSED, "", "")
        for name in (NOT_UTF8_PATH, "user/a\\xff.txt", "user/a\nb", "user/a\\nb")
    }
    assert "'user/a\\xff.txt'" in said[NOT_UTF8_PATH], said
    assert "'user/a\\\\xff.txt'" in said["user/a\\xff.txt"], said
    assert "'user/a\\nb'" in said["user/a\nb"], said
    assert "'user/a\\\\nb'" in said["user/a\\nb"], said


@pytest.mark.parametrize("option", ["--owner", "--purpose", "--path", "--tag", "--checksum"])
def test_a_search_option_that_is_not_utf8_is_a_usage_error(
    store: tuple[Path, dict[str, str]], option: str
) -> None:
    _, env = store
    done = horace("search", option, NOT_UTF8_PATH, env=env)
    assert done.returncode == Exit.USAGE, (done.returncode, done.stderr)
    assert "user/a\\xff.txt is not valid UTF-8" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env_extra", "said"),
    [
        (
            ["serve", "--host", "h\u2603", "--port", "0"],
            {},
            "--host='h\u2603' is not an IP address or a host name",
        ),
        (["serve", "--port", "0"], {"HORACE_MCP_HOST": NOT_UTF8_PATH}, "is not an IP address or a host name"),
        (
            ["--database", os.fsdecode(b"postgresql://u\xff@127.0.0.1/db"), "info", "x"],
            {},
            "is not valid UTF-8",
        ),
    ],
    ids=["host-not-idna", "host-not-utf8", "database-not-utf8"],
)
def test_a_host_or_database_that_cannot_be_encoded_is_a_config_error(
    store: tuple[Path, dict[str, str]], args: list[str], env_extra: dict[str, str], said: str
) -> None:
    _, env = store
    one_line_error(horace(*args, env={**env, **env_extra}, timeout=30), Exit.CONFIG, "CONFIG", said)


def test_domain_errors_json_and_global_options_anywhere(store: tuple[Path, dict[str, str]]) -> None:
    root, env = store
    one_line_error(horace("info", "user/nothing.txt", env=env), Exit.REFUSED, "NOT_CATALOGED")
    done = horace("info", "--json", "user/nothing.txt", env=env)
    assert done.returncode == Exit.REFUSED
    body = json.loads(done.stderr)
    assert body["error"]["code"] == "NOT_CATALOGED" and body["error"]["exit_code"] == Exit.REFUSED
    done = horace("register", "--json", "../outside.txt", env=env)
    assert json.loads(done.stderr)["error"]["code"] == "INVALID_PATH"
    # The storage option after the subcommand, or before it: the same store.
    write(root / "files/user/a.txt", "a")
    others = {k: v for k, v in env.items() if k != "HORACE_STORAGE_PATH"}
    assert horace("register", "user/a.txt", "--storage", str(root), env=others).returncode == 0
    found = horace("--storage", str(root), "search", "--json", env=others)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["total_count"] == 1
    # Registered again with metadata: not applied (update does that), and said so.
    again = horace("register", "user/a.txt", "--tag", "x", env=env)
    assert (
        again.returncode == 0 and "the metadata given was not applied (use `horace update`)" in again.stderr
    )
    write(root / "files/user/b.txt", "b")
    first = horace("register", "user/b.txt", "--tag", "x", env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    for command in (["migrate"], ["fsck"], ["scan"], ["verify"]):
        done = horace(*command, "--json", env=env)
        assert done.returncode == 0, (command, done.stderr)
        json.loads(done.stdout)


def test_relative_paths_mean_what_they_mean_in_a_shell(store: tuple[Path, dict[str, str]]) -> None:
    root, env = store
    gates = root / "files" / "gates"
    write(gates / "a.txt", "from the shell")
    write(gates / "deep/b.txt", "deeper")
    # From the folder above the store, a path through horace-data/files/ works...
    done = horace("register", "--json", "horace-data/files/gates/a.txt", cwd=root.parent, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["file"]["file_path"] == "gates/a.txt"
    # ...as does ./b.txt inside files/gates/deep, and a path relative to files/ anywhere.
    done = horace("register", "--json", "./b.txt", cwd=gates / "deep", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["file"]["file_path"] == "gates/deep/b.txt"
    assert horace("info", "gates/a.txt", cwd=root.parent, env=env).returncode == 0
    assert horace("info", "../a.txt", cwd=gates / "deep", env=env).returncode == 0
    # files/ itself, as the shell names it: all of it scanned (and no file of that name).
    write(gates / "c.txt", "found by a scan of files/")
    done = horace("scan", "--json", "horace-data/files/", cwd=root.parent, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["registered"] == 1
    one_line_error(
        horace("info", "horace-data/files", cwd=root.parent, env=env), Exit.REFUSED, "INVALID_PATH"
    )


def test_serve_on_a_port_in_use_is_one_line(store: tuple[Path, dict[str, str]]) -> None:
    _root, env = store
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = horace("serve", "--port", str(port), env=env)
    assert done.returncode == Exit.ADDRESS, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "ADDRESS_IN_USE" in errors[0] and "Traceback" not in done.stderr
    # The port is taken before the store is made: a newcomer's first try leaves nothing.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fresh = _root.parent / "fresh"
        done = horace("serve", "--storage", str(fresh), "--port", str(port), env=env)
    assert done.returncode == Exit.ADDRESS and not fresh.exists(), done.stderr
    # A host name that does not resolve is an address error too, not an internal one.
    done = horace("serve", "--host", "nonexistent.invalid", "--port", "0", env=env)
    assert done.returncode == Exit.ADDRESS, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot listen on nonexistent.invalid" in errors[0], done.stderr


@pytest.mark.skipif(BACKEND != "postgres", reason="SQLite's read-only commands find every table")
def test_a_read_only_command_on_a_schema_behind_says_to_migrate(store: tuple[Path, dict[str, str]]) -> None:
    """A command that only reads applies no schema step: what it needs of a step the
    catalog has not had yet is said to be that, not a catalog dropped under Horace."""
    root, env = store
    write(root / "files/user/notes.txt", "the minutes")
    assert horace("register", "user/notes.txt", "--purpose", "meeting minutes", env=env).returncode == 0

    import asyncpg  # (PostgreSQL runs only)

    async def as_an_earlier_release_left_it() -> None:
        conn = await asyncpg.connect(env["HORACE_DATABASE_URL"])  # (its search_path: the catalog's)
        try:
            await conn.execute(
                "DROP TABLE horace_word_counts; DROP FUNCTION horace_word_counts_changed CASCADE; "
                "DROP FUNCTION horace_word_counts_fixed CASCADE; DELETE FROM schema_version WHERE version = 5"
            )
        finally:
            await conn.close()

    asyncio.run(as_an_earlier_release_left_it())
    done = horace("search", "--purpose", "meeting", env=env)
    line = one_line_error(done, Exit.CONFIG, "SCHEMA_BEHIND")
    assert "schema is behind this Horace (steps 5 not applied)" in line and "horace migrate" in line, line
    assert horace("migrate", env=env).returncode == 0
    done = horace("search", "--json", "--purpose", "meeting", env=env)
    assert done.returncode == 0, done.stderr
    assert [f["file_path"] for f in json.loads(done.stdout)["results"]] == ["user/notes.txt"]


def test_migrate_makes_the_schema_ahead_of_any_store(tmp_path: Path, database_url: str) -> None:
    env = {"HORACE_STORAGE_PATH": str(tmp_path / "not-yet"), "HORACE_DATABASE_URL": database_url}
    done = horace("migrate", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema_version"] >= 2
    assert not (tmp_path / "not-yet").exists()
    assert horace("init", env=env).returncode == 0  # and the store binds to it afterwards


def test_purge_does_what_a_server_does_every_purge_interval(store: tuple[Path, dict[str, str]]) -> None:
    """A store used only through the CLI: a file deleted longer ago than the retention goes,
    and its content unless another file holds it; a file deleted since and a live file stay;
    an object nothing refers to goes once past the retention too."""
    root, env = store
    objects = root / ".horace/objects"
    (objects / "ff" / ("ff" * 32)).write_text("nobody's")  # (older than the retention, below)
    contents = {"old.txt": "old", "gone.txt": "gone", "recent.txt": "recent", "live.txt": "live"}
    for name, text in {**contents, "twin.txt": "old"}.items():
        write(root / "files/user" / name, text)
    assert horace("scan", env=env).returncode == 0
    for name in ("old.txt", "gone.txt"):
        assert horace("delete", f"user/{name}", env=env).returncode == 0
    time.sleep(11)
    assert horace("delete", "user/recent.txt", env=env).returncode == 0

    # (Ten seconds: recent.txt must stay younger than that through both purges, on a busy
    # machine too.)
    ten_seconds = {**env, "HORACE_DELETED_RETENTION": "10s", "HORACE_GC_GRACE": "0s"}
    done = horace("purge", "--json", env=ten_seconds)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"files_purged": 2, "objects_deleted": 2}
    done = horace("purge", env=ten_seconds)
    assert (done.returncode, done.stdout) == (0, "0 deleted files purged, 0 objects collected\n"), done.stderr
    kept = {p.name for p in objects.rglob("*") if p.is_file()}
    assert kept == {hashlib.sha256(text.encode()).hexdigest() for text in ("old", "recent", "live")}
    found = json.loads(horace("search", "--json", "--status", "all", env=env).stdout)
    assert {(f["file_path"], f["status"]) for f in found["results"]} == {
        ("user/recent.txt", "deleted"),
        ("user/live.txt", "active"),
        ("user/twin.txt", "active"),
    }


def test_search_takes_iso_8601_moments_with_or_without_a_zone(store: tuple[Path, dict[str, str]]) -> None:
    root, env = store
    (root / "files/user/a.txt").write_text("a")
    assert horace("register", "user/a.txt", env=env).returncode == 0

    def found(*args: str) -> int:
        done = horace("search", "--json", *args, env=env)
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["total_count"])

    assert found("--created-after", "2020-01-01T00:00:00Z") == 1
    assert found("--created-after", "2020-01-01") == 1
    assert found("--created-before", "2020-01-01T00:00:00+02:00") == 0
    assert found("--created-after", "2999-01-01T00:00:00-05:00") == 0
    one_line_error(horace("search", "--created-after", "yesterday", env=env), Exit.USAGE, "ISO 8601")
    for edge in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        one_line_error(horace("search", "--created-after", edge, env=env), Exit.USAGE, "years 1 to 9999")


@contextlib.contextmanager
def listening_server(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`horace serve` on any free port, once it says it listens (its stderr read on from
    there); killed on the way out if it has not ended."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "horace", "serve", "--port", "0"],
        env={**clean, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    try:
        for line in server.stderr:
            if "listening on" in line:
                break
        else:
            pytest.fail(f"horace serve ended before listening: {server.wait()}")
        yield server
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_serve_stops_gracefully_on_a_stop_signal(store: tuple[Path, dict[str, str]], signum: int) -> None:
    """Ctrl-C, a service manager's stop, a terminal hanging up: the server shuts down (its
    sessions told, its sinks flushed) and exits 0."""
    with listening_server(store[1]) as server:
        server.send_signal(signum)
        assert server.wait(timeout=30) == 0
        rest = server.stderr.read() if server.stderr else ""
        assert f"signal {signal.Signals(signum).name}: shutting down" in rest, rest


def test_serve_stopped_at_once_by_a_second_signal_does_not_exit_0(store: tuple[Path, dict[str, str]]) -> None:
    """A second signal cuts the graceful shutdown short: not a clean stop, so the exit is
    a Ctrl-C's (130), which a service manager can tell from 0."""
    with listening_server(store[1]) as server:
        # Two signals of two kinds (one kind twice may be taken as one), sent while the
        # process is stopped: both are waiting when it goes on, so the second surely
        # comes while the shutdown the first begins is under way.
        for signum in (signal.SIGSTOP, signal.SIGTERM, signal.SIGINT, signal.SIGCONT):
            server.send_signal(signum)
        assert server.wait(timeout=30) == Exit.INTERRUPTED
        rest = server.stderr.read() if server.stderr else ""
        assert "second signal: stopping now" in rest, rest
        assert "INTERRUPTED" in rest and "Traceback" not in rest, rest


def test_a_second_signal_while_the_sinks_flush_is_still_a_ctrl_c(store: tuple[Path, dict[str, str]]) -> None:
    """After the first signal the server stops, then its sinks flush (here for up to 3 s:
    a Godot that takes connections and never answers). A second signal then still ends
    the process as a Ctrl-C does (130), not by the signal's default (143 for SIGTERM);
    and so does a third, which changes nothing more."""
    with godot_that_never_answers() as godot, listening_server({**store[1], **godot}) as server:
        server.send_signal(signal.SIGINT)
        time.sleep(1.0)  # (the server has stopped; its sinks are flushing)
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        server.send_signal(signal.SIGHUP)
        assert server.wait(timeout=30) == Exit.INTERRUPTED
        rest = server.stderr.read() if server.stderr else ""
        assert "second signal: stopping now" in rest, rest
        assert "signal SIGHUP: stopping now already" in rest, rest
        assert "Traceback" not in rest, rest


def test_a_second_signal_while_horace_watch_stops_is_a_ctrl_c(store: tuple[Path, dict[str, str]]) -> None:
    """`horace watch` as `horace serve`: the first signal stops it and its sinks flush; a
    second one in that time ends it as a Ctrl-C does (130), not by its default (143)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
    with godot_that_never_answers() as godot:
        env = {**clean, **store[1], **godot}
        watching = subprocess.Popen(
            [sys.executable, "-m", "horace", "watch", "--log-level", "INFO"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watching.stderr is not None
            for line in watching.stderr:
                if "until a stop signal" in line:
                    break
            else:
                pytest.fail(f"horace watch ended before watching: {watching.wait()}")
            watching.send_signal(signal.SIGINT)
            time.sleep(1.0)  # (it has stopped watching; its sinks are flushing)
            watching.send_signal(signal.SIGTERM)
            assert watching.wait(timeout=30) == Exit.INTERRUPTED
            rest = watching.stderr.read()
            assert "signal SIGINT: shutting down" in rest and "second signal: stopping now" in rest, rest
            assert "Traceback" not in rest, rest
        finally:
            watching.kill()
            watching.wait()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A store on SQLite (its catalog in .horace/), whatever the test backend: five files
    catalogued."""
    root = tmp_path / "horace-data"
    env = {"HORACE_STORAGE_PATH": str(root)}
    assert horace("init", env=env).returncode == 0
    for n in range(5):
        write(root / f"files/user/f{n}.txt", f"file {n}")
    assert horace("scan", env=env).returncode == 0
    yield root, env


def test_fsck_finds_a_catalog_index_missing_rows_and_the_repair_rebuilds_it(
    sqlite_store: tuple[Path, dict[str, str]],
) -> None:
    """Two owners changed while an index was not kept (as a torn restore leaves it): the
    search by owner misses both files, fsck says why, and its repair mends it."""
    root, env = sqlite_store
    catalog = root / ".horace/catalog.db"
    index = "horace_files_owner_search"
    with contextlib.closing(sqlite3.connect(catalog, isolation_level=None)) as conn:
        entry = conn.execute("SELECT * FROM sqlite_schema WHERE name = ?", (index,)).fetchone()
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("DELETE FROM sqlite_schema WHERE name = ?", (index,))
    with contextlib.closing(sqlite3.connect(catalog, isolation_level=None)) as conn:
        conn.execute(
            "UPDATE horace_files SET owner = 'ops' WHERE file_path IN ('user/f1.txt', 'user/f3.txt')"
        )
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("INSERT INTO sqlite_schema VALUES (?, ?, ?, ?, ?)", entry)
    assert horace("search", "--owner", "ops", env=env).stdout.strip().endswith("0 of 0")

    done = horace("fsck", env=env)
    assert done.returncode == Exit.FSCK_LEFT, (done.stdout, done.stderr)
    assert f"FOUND: catalog_damaged: sqlite://{catalog}" in done.stdout
    assert f"missing from index {index}" in done.stdout
    assert "`horace fsck --repair` rebuilds its indexes" in done.stdout

    done = horace("fsck", "--repair", env=env)
    assert done.returncode == Exit.FOUND, (done.stdout, done.stderr)
    assert "repaired: catalog_damaged" in done.stdout and "indexes were rebuilt" in done.stdout
    assert horace("fsck", env=env).stdout.splitlines()[0].endswith("clean")
    found = horace("search", "--owner", "ops", "--json", env=env)
    owned = sorted(f["file_path"] for f in json.loads(found.stdout)["results"])
    assert owned == ["user/f1.txt", "user/f3.txt"]


def test_a_catalog_with_a_broken_page_is_a_storage_error_that_says_what_to_do(
    sqlite_store: tuple[Path, dict[str, str]],
) -> None:
    root, env = sqlite_store
    catalog = root / ".horace/catalog.db"
    with contextlib.closing(sqlite3.connect(catalog)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root_page,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'horace_files'"
        ).fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with catalog.open("r+b") as f:
        f.seek((root_page - 1) * page_size)
        f.write(b"\xff" * page_size)
    for command in (["search"], ["fsck", "--repair"]):
        line = one_line_error(
            horace(*command, env=env), Exit.STORAGE, "STORAGE_ERROR", f"{catalog} is damaged"
        )
        assert "put back a backup copy" in line and "catalog.db-wal" in line, line
    assert sorted(p.name for p in (root / "files/user").iterdir()) == [f"f{n}.txt" for n in range(5)]


def test_a_hard_link_copy_of_a_store_is_refused_with_its_original(
    sqlite_store: tuple[Path, dict[str, str]],
) -> None:
    """`cp -al` gives the copy the original's catalog file: both refused while they share it."""
    root, env = sqlite_store
    copy = root.parent / "snapshot"
    subprocess.run(["cp", "-al", str(root), str(copy)], check=True)
    write(copy / "files/user/only-in-the-copy.txt", "new")
    for store in (copy, root):
        line = one_line_error(
            horace("scan", "--storage", str(store)), Exit.STORAGE, "STORAGE_ERROR", "2 hard links", "cp -al"
        )
        assert str(store / ".horace/catalog.db") in line
    shutil.rmtree(copy)
    done = horace("search", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_count"] == 5


def test_ctrl_c_during_a_command_is_its_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal (nothing showed "^C"), the error line is all stderr holds: no
    newline before it (click's own handling of a Ctrl-C writes one)."""
    import horace.cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(horace.cli, "_run", interrupted)
    with pytest.raises(SystemExit) as exited:
        horace.cli.main(["scan"])
    assert exited.value.code == Exit.INTERRUPTED
    assert capsys.readouterr().err == f"horace: error: INTERRUPTED: {horace.cli.INTERRUPTED}\n"


def test_ctrl_c_cancels_a_command_and_lets_its_shielded_steps_finish() -> None:
    """A Ctrl-C cancels the command's work as a deadline would: a step that must end whole
    (a commit, shielded) ends whole, then the command stops with KeyboardInterrupt. Raised
    in whatever code ran when it came, it once broke asyncpg's close and hung the command."""
    from horace.cli import _trio_run

    steps = []

    async def work() -> None:
        with trio.CancelScope(shield=True):
            os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep(0.2)  # a commit in flight
            steps.append("committed")
        await trio.sleep(30)
        steps.append("went on")

    with pytest.raises(KeyboardInterrupt):
        _trio_run(work)
    assert steps == ["committed"]


def test_a_command_run_inside_a_store_names_that_store(store: tuple[Path, dict[str, str]]) -> None:
    """`horace search` in the store's own folder, or under files/, looks for ./horace-data
    there: the error names the store meant, and how to use it."""
    root, env = store
    env = {k: v for k, v in env.items() if k != "HORACE_STORAGE_PATH"}
    for where in (root, root / "files/gates"):
        line = one_line_error(horace("search", cwd=where, env=env), Exit.STORE, "STORE_REFUSED")
        assert f"this folder is in the store at {root}: to use that store, run with --storage {root}" in line
    assert not (root / "horace-data").exists() and not (root / "files/gates/horace-data").exists()


@pytest.mark.skipif(BACKEND != "postgres", reason="a PostgreSQL server to ask")
def test_a_postgres_url_without_a_database_says_so(tmp_path: Path, database_url: str) -> None:
    """PostgreSQL takes the user's name for a database the URL does not name: the refusal
    of that database says the URL names none."""
    server = database_url.rsplit("/", 1)[0]  # postgresql://user@host:port
    done = horace("init", "--storage", str(tmp_path / "s"), "--database", server)
    one_line_error(done, Exit.BACKEND, "BACKEND_UNAVAILABLE", "does not exist", "the URL names no database")


def test_init_says_a_store_was_made_already_and_restore_names_the_version_it_kept(
    store: tuple[Path, dict[str, str]],
) -> None:
    """`init` on a store made already changes nothing and says so; a restore over a file
    changed since its last version names the version that kept that content."""
    root, env = store
    again = horace("init", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith(f"at {root} (made already)"), again.stdout
    assert json.loads(horace("init", "--json", env=env).stdout)["created"] is False
    adopted = horace("init", "--adopt", env=env)  # (bound to its own catalog: nothing to adopt)
    assert adopted.stdout.splitlines()[0].endswith(f"at {root} (made already: nothing adopted)"), adopted
    fresh = horace("init", "--json", env={"HORACE_STORAGE_PATH": str(root.parent / "fresh")})
    assert json.loads(fresh.stdout)["created"] is True, fresh.stderr
    assert fresh.stderr == ""
    # A folder of the user's own files made a store: they are beside files/, never catalogued.
    write(root.parent / "mine/thesis.txt", "mine")
    (root.parent / "mine/notes").mkdir()
    beside = horace("init", env={"HORACE_STORAGE_PATH": str(root.parent / "mine")})
    assert beside.returncode == 0, beside.stderr
    assert beside.stderr == (
        f"horace: warning: 'notes', 'thesis.txt' in {root.parent / 'mine'} are beside files/, and not "
        "catalogued: Horace catalogs what is under files/ (move them there)\n"
    )
    assert (root.parent / "mine/thesis.txt").read_text() == "mine"
    # A store whose .horace is gone (an `rm`, a copy that left dot-folders out) looks like a
    # folder of files/ made by hand: made again, it is said that their history is not here.
    write(root.parent / "lost/files/user/report.md", "v3 of a report")
    remade = horace("init", env={"HORACE_STORAGE_PATH": str(root.parent / "lost")})
    assert remade.returncode == 0, remade.stderr
    assert "files/ holds files already" in remade.stderr and "their history" in remade.stderr, remade.stderr
    assert (root.parent / "lost/files/user/report.md").read_text() == "v3 of a report"
    write(root / "files/user/a.txt", "one")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    write(root / "files/user/a.txt", "two, not recorded")
    done = horace("restore", "user/a.txt", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "kept the file's unrecorded content as v2",
        "restored v1 as v3",
    ], done.stdout
    assert (root / "files/user/a.txt").read_text() == "one"


def test_show_writes_a_version_whole_and_diff_says_what_changed(store: tuple[Path, dict[str, str]]) -> None:
    """`show` writes any version's bytes, of any size (past HORACE_MAX_READ_BYTES too),
    and nothing at all when the kept content is not what was recorded; `diff` gives a
    unified diff for text and a summary otherwise."""
    root, env = store
    small = {**env, "HORACE_MAX_READ_BYTES": "65536"}
    first = os.urandom(300_000)
    write(root / "files/user/blob.bin", first)
    assert horace("register", "user/blob.bin", env=env).returncode == 0
    write(root / "files/user/blob.bin", first + b"more")
    assert horace("update", "user/blob.bin", env=env).returncode == 0
    for args, expected in ((["1"], first), ([], first + b"more"), (["v2"], first + b"more")):
        done = subprocess.run(
            [sys.executable, "-m", "horace", "show", "user/blob.bin", *args],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}, **small},
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0 and done.stderr == b"", done.stderr
        assert done.stdout == expected, (args, len(done.stdout))
    one_line_error(horace("show", "user/blob.bin", "3", env=env), Exit.REFUSED, "VERSION_NOT_FOUND")
    over = horace("diff", "user/blob.bin", "1", env=small)  # not read: summed up from the catalog
    assert over.returncode == 0 and over.stdout.endswith("(over HORACE_MAX_READ_BYTES: no line diff)\n")
    assert "v1 300000 bytes" in over.stdout and "v2 300004 bytes" in over.stdout, over.stdout
    summary = horace("diff", "user/blob.bin", "1", env=env)
    assert summary.returncode == 0, summary.stderr
    assert "v1 300000 bytes" in summary.stdout and "v2 300004 bytes" in summary.stdout, summary.stdout
    # A reader that stops reading: no message, the status a pipe's writer gets.
    assert_quiet_when_the_reader_stops("show user/blob.bin", env)
    # Text: a unified diff; the same content: said so.
    write(root / "files/user/notes.txt", "one\ntwo\n")
    assert horace("register", "user/notes.txt", env=env).returncode == 0
    write(root / "files/user/notes.txt", "one\nthree\n")
    assert horace("update", "user/notes.txt", env=env).returncode == 0
    done = horace("diff", "user/notes.txt", "1", env=env)
    assert done.stdout.splitlines() == [
        "--- user/notes.txt@v1",
        "+++ user/notes.txt@v2",
        "@@ -1,2 +1,2 @@",
        " one",
        "-two",
        "+three",
    ], done.stdout
    assert horace("diff", "user/notes.txt", "2", "2", env=env).stdout == "v2 and v2 hold the same content\n"
    assert json.loads(horace("diff", "--json", "user/notes.txt", "1", env=env).stdout)["to_version"] == 2
    # The kept content damaged: one line, and nothing of it written.
    checksum = hashlib.sha256(first).hexdigest()
    kept = root / ".horace/objects" / checksum[:2] / checksum
    kept.chmod(0o644)
    with kept.open("r+b") as damaged:
        damaged.write(bytes([first[0] ^ 0xFF]))  # (a fixed byte would be no damage 1 time in 256)
    done = subprocess.run(
        [sys.executable, "-m", "horace", "show", "user/blob.bin", "1"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}, **env},
        capture_output=True,
        check=False,
    )
    assert done.stdout == b"" and b"CHECKSUM_MISMATCH" in done.stderr, done.stderr
    # Output that cannot be written is said so (exit 74), not taken for the store's trouble.
    base = {**{k: v for k, v in os.environ.items() if not k.startswith("HORACE_")}, **env}
    for command, redirect, why in (
        ("show user/blob.bin 2", "> /dev/full", "stdout cannot be written: No space left on device"),
        ("diff user/notes.txt 1", "> /dev/full", "stdout cannot be written: No space left on device"),
        ("show user/blob.bin 2", ">&-", "stdout is closed"),
        ("info user/notes.txt", ">&-", "stdout is closed"),
    ):
        done = subprocess.run(
            f"{sys.executable} -m horace {command} {redirect}",
            shell=True,
            executable="/bin/bash",
            env=base,
            capture_output=True,
            text=True,
            check=False,
        )
        assert (done.returncode, done.stderr.startswith(f"horace: error: OUTPUT: {why}")) == (
            Exit.OUTPUT,
            True,
        ), (
            command,
            redirect,
            done.stderr,
        )
    checked = horace("verify", env=env)  # (the version is named: several may share an object)
    assert checked.returncode == Exit.FOUND, checked.stdout
    assert "user/blob.bin version 1: object" in checked.stdout, checked.stdout


def test_undelete_r_brings_a_removed_folder_back(store: tuple[Path, dict[str, str]]) -> None:
    """`horace undelete -r FOLDER --deleted-after D`: the files deleted under FOLDER since
    D, one line each; one that cannot come back is an error line, and exit 1."""
    root, env = store
    for rel in ("repo/a.txt", "repo/sub/b.txt", "repo/old.txt", "repo/c.txt"):
        write(root / "files" / rel, rel)
    assert horace("scan", env=env).returncode == 0
    assert horace("delete", "repo/old.txt", env=env).returncode == 0
    time.sleep(0.01)
    since = datetime.now(UTC).isoformat()
    for rel in ("repo/a.txt", "repo/sub/b.txt", "repo/c.txt"):
        assert horace("delete", rel, env=env).returncode == 0
    write(root / "files/repo/c.txt/in-the-way", "a folder where c.txt was")
    one_line_error(horace("undelete", "repo", "--deleted-after", since, env=env), Exit.USAGE, "give -r")
    done = horace("undelete", "-r", "repo", "--deleted-after", since, env=env)
    assert done.returncode == Exit.FOUND, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert [line.split()[-2] for line in lines[:2]] == ["repo/a.txt", "repo/sub/b.txt"]
    assert lines[2] == "2 files undeleted, 1 error" and lines[3].startswith("  error: 'repo/c.txt': ")
    assert (root / "files/repo/sub/b.txt").read_text() == "repo/sub/b.txt"
    assert not (root / "files/repo/old.txt").exists()


def test_info_versions_says_its_times_are_utc(store: tuple[Path, dict[str, str]]) -> None:
    """The times `info --versions` prints are UTC, and say so (Z), whatever the zone the
    reader is in (TZ changes nothing)."""
    root, env = store
    write(root / "files/user/a.txt", "one")
    assert horace("register", "user/a.txt", env=env).returncode == 0
    for zone in ("UTC", "Pacific/Kiritimati"):
        shown = horace("info", "user/a.txt", "--versions", env={**env, "TZ": zone})
        line = r"^  v1  \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  "
        assert re.search(line, shown.stdout, re.MULTILINE), shown.stdout


def test_a_process_not_in_utf8_mode_starts_again_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With -X utf8 (which -I and -E, that ignore PYTHONUTF8, take too), once: started so
    already and still not in UTF-8 mode, it says why and stops."""
    import horace.__main__ as entry

    started: list[list[str]] = []
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-I", "-m", "horace", "scan"])
    monkeypatch.setattr(os, "execv", lambda program, argv: started.append(argv))
    monkeypatch.setenv("PYTHONUTF8", "0")
    entry._in_utf8_mode()
    assert started == [[sys.executable, "-X", "utf8", "-I", "-m", "horace", "scan"]]
    assert os.environ["PYTHONUTF8"] == "1"  # (for the sink process too)
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "utf8", "-I", "-m", "horace", "scan"])
    with pytest.raises(SystemExit) as stopped:
        entry._in_utf8_mode()
    assert stopped.value.code == 6 and len(started) == 1
