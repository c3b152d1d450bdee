"""The operator's commands. A thin edge: flags become attrs values, the catalog works.

Every mistake a person can make ends in one line on stderr (JSON with ``--json``) and an
exit code that says what kind of mistake it was (:class:`Exit`, listed in ``--help``).
The global options (``--storage``, ``--database``, ``--json``, ``--debug``) may stand
anywhere on the line. A relative path means what it means in a shell when it lands
inside ``files/``, and is taken relative to ``files/`` otherwise.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
import click
import trio

from horace.backends import (
    CatalogDamaged,
    CatalogMissing,
    CatalogUnwritable,
    DatabaseFull,
    SchemaBehind,
    UnusableURL,
)
from horace.backends.migrations import SchemaTooNew
from horace.backends.protocol import BackendUnavailable
from horace.backends.records import (
    INT64_MAX,
    MAX_SEARCH_LIMIT,
    FileChanges,
    FileRecord,
    Order,
    SearchQuery,
    SortKey,
    Status,
)
from horace.binding import StoreRefused
from horace.catalog import Catalog
from horace.config import LEVEL_NAMES, ConfigError, Settings, ignored_variables, log_level_from_env
from horace.model import CannotListen, ErrorCode, HoraceError, NewFile, RepliesLost
from horace.paths import printable, quoted
from horace.redact import redact_url
from horace.storage import STORAGE_ERRNOS, StorageUnusable, storage_full, storage_refusal
from horace.supervise import the_failure

T = TypeVar("T")
log = logging.getLogger("horace")


class _Moment(click.ParamType):
    """An ISO 8601 date or date and time, with a zone (``Z``, ``+02:00``) or without one."""

    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date or time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)")
        try:  # without a zone, UTC, as the tool reads it
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        except (OverflowError, ValueError):
            self.fail(f"{value!r} is outside the years 1 to 9999 in UTC")


MOMENT = _Moment()


class Count(click.IntRange):
    """A whole number in a range, written in ASCII digits, as every number Horace reads
    is (Python's int() takes other scripts' digits, "٢" among them)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip().isascii():
            self.fail(f"{value!r} is not a number written in digits 0-9", param, ctx)
        return super().convert(value, param, ctx)


class _Text(click.ParamType):
    """Text as the catalog stores it: UTF-8. An argument holding bytes that are not (a name
    of files/ as the shell completed it, say) arrives with surrogate escapes, and would
    match nothing the catalog could hold."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{value} is not valid UTF-8")  # (escaped as every error line is)
        return str(value)


TEXT = _Text()


class _StoragePath(click.Path):
    """A folder's path; empty, it would be ``.`` (the current folder made a store), where
    an empty ``HORACE_STORAGE_PATH`` is taken as unset. Whitespace at its start or end is
    refused, as in the variable: a stray one (quoted from a script) names another store."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("the path is empty: name the store's folder, or leave the option out")
        if isinstance(value, str) and value != value.strip():
            self.fail(f"{value!r} has whitespace at its start or end: remove it")
        return super().convert(value, param, ctx)


class Exit(enum.IntEnum):
    OK = 0
    FOUND = 1  # the command finished and found problems (verify, scan errors, fsck repaired all)
    USAGE = 2  # a flag or argument is wrong
    REFUSED = 3  # the operation was refused: not catalogued, invalid path, ... (the code says which)
    FSCK_LEFT = 4  # fsck: problems remain
    STORE = 5  # no store there, or the store and the catalog do not belong together
    CONFIG = 6  # a setting is wrong: database URL, storage path, a value; or the schema is newer (or behind)
    BACKEND = 7  # the catalog database cannot be reached or refuses the login
    STORAGE = 8  # the storage is full, read-only or failing
    ADDRESS = 9  # the server cannot listen: the port is in use, or the address is not this host's
    INTERNAL = 70  # a bug in Horace: run again with --debug and report what it prints
    OUTPUT = 74  # what the command says cannot be written: stdout closed, or its disk full
    INTERRUPTED = 130  # Ctrl-C
    BROKEN_PIPE = 141  # what read the output stopped reading (as `| head` does): said by no message


EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code.value:>3}  {code.name.lower().replace('_', ' ')}" for code in Exit
)


class Failure(Exception):
    """What the command tells the person: one line, a code, an exit status."""

    def __init__(self, exit: Exit, code: str, message: str) -> None:
        super().__init__(message)
        self.exit, self.code, self.message = exit, code, message


# -- global options, anywhere on the line --------------------------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    # ctx.meta is shared by the group's context and the command's: the last one given wins.
    if value not in (None, False):
        ctx.meta[param.name] = value


_GLOBAL_OPTIONS = [
    click.option(
        "--storage",
        type=_StoragePath(path_type=Path),
        expose_value=False,
        callback=_remember,
        help="Storage root [HORACE_STORAGE_PATH, ./horace-data].",
    ),
    click.option(
        "--database",
        expose_value=False,
        callback=_remember,
        help="Catalog database: sqlite:///path or postgresql://... [HORACE_DATABASE_URL].",
    ),
    click.option("--json", is_flag=True, expose_value=False, callback=_remember, help="Print JSON."),
    click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Show tracebacks of internal errors.",
    ),
]


def global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_GLOBAL_OPTIONS):
        command = option(command)
    return command


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        settings = Settings.from_env(
            storage_path=ctx.meta.get("storage"), database_url=ctx.meta.get("database"), **overrides
        )
    except ConfigError as exc:
        raise Failure(Exit.CONFIG, "CONFIG", str(exc)) from None
    if not ctx.meta.get("variables_checked"):
        ctx.meta["variables_checked"] = True
        for line in ignored_variables(os.environ):
            click.echo(f"horace: warning: {line}", err=True)
    return settings


def _as_json(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("json"))


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="horace", prog_name="horace", message="%(prog)s %(version)s")
@global_options
def cli() -> None:
    """Horace: the file catalog and versioning server of the ICCM tool ecosystem.

    Serve MCP with `horace serve` (WebSocket and Streamable HTTP, both at /mcp), or
    `horace mcp` (stdin/stdout, for a desktop client); the other commands work on the same
    store (by default ./horace-data) and may run while a server does.
    """


# -- running a command ---------------------------------------------------------------------


def _emit(ctx: click.Context, value: Any, human: Callable[[Any], str]) -> None:
    if _as_json(ctx):
        from horace.wire import to_json  # cattrs: only for --json, keeps the start quick

        text = json.dumps(to_json(value), indent=2)
    else:
        text = human(value)
    _write_out((text + "\n").encode("utf-8", "surrogateescape"))


class StdoutGone(Exception):
    """What read stdout stopped reading (`horace fsck | head`): ended quietly by main. (Not
    the BrokenPipeError itself, an OSError, which click ends as a bare exit 1.)"""


def _write_out(data: bytes) -> None:
    """*data* to stdout, whole; what stops it is an output failure (exit 74), not the
    store's: a full disk under a redirection is not a full store. (A reader gone is
    :class:`StdoutGone`.)"""
    if sys.stdout is None:
        raise Failure(Exit.OUTPUT, "OUTPUT", "stdout is closed: there is nowhere to write what was done")
    try:
        sys.stdout.flush()
        fd, view, written = sys.stdout.fileno(), memoryview(data), 0
        while written < len(data):
            written += os.write(fd, view[written:])
    except BrokenPipeError:
        raise StdoutGone from None
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise Failure(Exit.OUTPUT, "OUTPUT", f"stdout cannot be written: {why}") from None


@contextmanager
def _progress(ctx: click.Context, label: str) -> Iterator[Callable[[int, int], None] | None]:
    if _as_json(ctx) or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # only on a terminal: keeps the other commands' start quick

    bar = tqdm(desc=label, unit="file", file=sys.stderr)
    try:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        yield update
    finally:
        bar.close()


def _run(
    ctx: click.Context,
    work: Callable[[Catalog], Awaitable[T]],
    *,
    read_only: bool = False,
    check: bool = True,
    create: bool = False,
    adopt: bool = False,
) -> T:
    """Open the catalog and do *work*. With *check*, what dead processes left in
    .horace/tmp is cleared first: a bounded look, whatever the store's size (the full
    automatic fsck is the server's, at its start and periodically, and `horace fsck`'s)."""
    from horace.assemble import StartCheck, open_catalog

    settings = _settings(ctx)
    start_check = StartCheck.LEFTOVERS if check else StartCheck.NONE

    async def go() -> T:
        async with open_catalog(
            settings, create=create, read_only=read_only, check=start_check, adopt=adopt
        ) as c:
            return await work(c)

    return _trio_run(go)


def _trio_run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(fn, *args)``, a Ctrl-C cancelling *fn* (see :func:`_interruptible`)."""
    return trio.run(_interruptible, fn, *args)


async def _interruptible(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``fn(*args)``, cancelled by a Ctrl-C (SIGINT) as a deadline cancels a call, then
    raised as :class:`KeyboardInterrupt`; a second Ctrl-C ends the process at once.

    Trio raises a Ctrl-C in whatever code runs when it comes: in trio-asyncio's loop or in
    asyncpg's protocol, it left futures for ever unfinished, and the shielded close of the
    catalog's connections waiting on them; the command hung, a transaction open with the
    schema's lock held. Cancelled instead, every step ends whole (commits are shielded)."""
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def cancel_on_ctrl_c() -> None:
                nonlocal interrupted
                async for _ in signals:
                    if interrupted:  # as a crash: what was done is kept, nothing is half-done
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                        signal.raise_signal(signal.SIGINT)
                    interrupted = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_on_ctrl_c)
            result = await fn(*args)
            nursery.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    return result


def _client_path(ctx: click.Context, arg: str) -> str:
    """A path as a person typed it: relative to the current folder when that lands inside
    files/, else relative to files/ (as MCP clients give it)."""
    if os.path.isabs(arg):
        return arg
    try:
        here = Path(os.path.normpath(os.path.join(os.getcwd(), arg)))
    except FileNotFoundError:  # (the current folder, removed): relative to files/ then
        return arg
    files = (_settings(ctx).storage_path / "files").absolute()
    for base in (files, files.resolve()):
        if here.is_relative_to(base):  # (files/ itself too: a scan of it all)
            return str(here)
    return arg


async def _resolve(ctx: click.Context, c: Catalog, ref: str) -> FileRecord:
    """A file by id, or by path (see :func:`_client_path`)."""
    by_id = await c.backend.file_by_id(ref) if ref.isascii() else None  # (an id is ASCII)
    return by_id or await c.resolve(_client_path(ctx, ref))


# After a scan's missing files: what they are, and what records them.
MISSING_HINT = (
    "\n  (missing: catalogued, and gone from files/ since; still active and restorable. "
    "`horace delete` records a deletion, `horace watch` or `horace serve --watch` records them all)"
)
SHOWN_ORPHANS = 20  # objects no version refers to, named one a line by `horace fsck`


# Control characters, line and paragraph separators, and the bidirectional overrides and
# isolates (which make a name read as another); and the backslash, so that a name holding
# "\n" (two characters) does not read as one holding a newline; and a byte that is not
# UTF-8 (an argument's, as a surrogate escape), shown as \xNN.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\udc80-\udcff"
_CONTROL = re.compile(f"[\\\\{_UNSAFE}]")
_UNSAFE_IN_MESSAGE = re.compile(f"[{_UNSAFE}]")


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


def _shown(text: str) -> str:
    """*text* for a line of output: a control character in a name (a newline, an escape,
    a right-to-left override) is shown escaped, so that it cannot end the line, forge
    another, or disguise the name; a backslash is shown doubled."""
    return _CONTROL.sub(lambda m: _escaped(m.group()), text)


def _said(message: str) -> str:
    """An error's message (or a report's line) for its line: the names in it are quoted already (a backslash
    doubled there, a byte that is not UTF-8 as ``\\xNN``: :func:`horace.paths.quoted`),
    so only what could break or disguise the line is escaped."""
    return _UNSAFE_IN_MESSAGE.sub(lambda m: _escaped(m.group()), message)


class _ShownLines(logging.Formatter):
    """A command's log lines on stderr, escaped as its error lines are (:func:`_said`: the
    names in them are quoted)."""

    def format(self, record: logging.LogRecord) -> str:
        return _said(super().format(record))


def _record_line(file: Any) -> str:
    tags = _shown(",".join(file.tags))
    status = file.status.value
    return (
        f"{file.id}  v{file.current_version}  {status:8}  {file.size:>10}  {_shown(file.file_path)}  [{tags}]"
    )


# -- the commands --------------------------------------------------------------------------


@cli.command()
@click.option("--adopt", is_flag=True, help="Bind an empty catalog to a store whose own catalog is lost.")
@global_options
@click.pass_context
def init(ctx: click.Context, adopt: bool) -> None:
    """Create a store (and its SQLite catalog unless --database says otherwise)."""

    async def work(c: Catalog) -> dict[str, Any]:
        state = await trio.to_thread.run_sync(c.storage.state)
        # The catalog in use: the store's record keeps the URL it was made with, which a
        # catalog restored under another name (same identity) no longer has.
        return {
            "storage": str(c.storage.root),
            "store_id": state.store_id,
            "catalog": redact_url(c.backend.url),
        }

    from horace.storage import Storage

    storage = Storage(_settings(ctx).storage_path)
    try:
        before = storage.state().store_id if storage.identity_file.exists() else None
    except (OSError, ValueError):  # (a path no store can have, a damaged record: the open says)
        before = None
    done = {**_run(ctx, work, create=True, adopt=adopt), "created": before is None}
    if before is None or (adopt and done["store_id"] != before):
        made = ""
    else:
        made = " (made already: nothing adopted)" if adopt else " (made already)"
    _emit(
        ctx,
        done,
        lambda d: f"store {d['store_id']} at {_shown(d['storage'])}{made}\ncatalog {_shown(d['catalog'])}",
    )
    if done["created"]:
        beside = sorted(p.name for p in storage.root.iterdir() if p.name not in ("files", ".horace"))
        if beside:
            shown = ", ".join(quoted(name) for name in beside[:5]) + (", ..." if len(beside) > 5 else "")
            click.echo(
                f"horace: warning: {shown} in {_shown(str(storage.root))} "
                f"{'is' if len(beside) == 1 else 'are'} beside files/, and not catalogued: Horace "
                "catalogs what is under files/ (move them there)",
                err=True,
            )


@cli.command()
@click.argument("path")
@click.option("--owner", help="Who owns it (default: the component folder it is in).", type=TEXT)
@click.option("--purpose", help="What it is for (searchable text).", type=TEXT)
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for more).", type=TEXT)
@click.option("--collection", help="Add it to this collection (made if new).", type=TEXT)
@global_options
@click.pass_context
def register(
    ctx: click.Context,
    path: str,
    owner: str | None,
    purpose: str | None,
    tags: tuple[str, ...],
    collection: str | None,
) -> None:
    """Catalog a file under files/."""
    new = NewFile(owner=owner, purpose=purpose, tags=tags, collection=collection)
    result = _run(ctx, lambda c: c.register(_client_path(ctx, path), new))
    catalogued_before = result.duplicate or not result.version_created or result.file.current_version > 1
    if catalogued_before and (owner or purpose or tags or collection):
        click.echo(
            f"horace: note: {'its content' if result.duplicate else 'it'} was catalogued already: "
            "the metadata given was not applied (use `horace update`)",
            err=True,
        )
    _emit(ctx, result, lambda r: ("duplicate of " if r.duplicate else "") + _record_line(r.file))


@cli.command()
@click.argument("ref", metavar="PATH|ID")
@click.option("--versions", is_flag=True, help="List the versions too.")
@global_options
@click.pass_context
def info(ctx: click.Context, ref: str, versions: bool) -> None:
    """Show a file's record (by id or path)."""

    async def work(c: Catalog) -> Any:
        file = await _resolve(ctx, c, ref)
        return await c.get_info(file_id=file.id, include_versions=versions)

    def human(i: Any) -> str:
        lines = [_record_line(i.file), f"  checksum {i.file.checksum}  {i.file.mime_type}"]
        for v in i.versions or ():
            origin = f" (restored from v{v.restored_from_version})" if v.restored_from_version else ""
            at = v.created_at.astimezone(UTC)  # (said so: Z)
            lines.append(f"  v{v.version}  {at:%Y-%m-%d %H:%M:%S}Z  {v.size:>10}  {v.checksum[:16]}{origin}")
        return "\n".join(lines)

    _emit(ctx, _run(ctx, work, read_only=True), human)


@cli.command()
@click.option("--tag", "tags", multiple=True, help="Has all of these tags (repeat for more).", type=TEXT)
@click.option("--any-tag", "any_tags", multiple=True, help="Has any of these tags.", type=TEXT)
@click.option("--owner", type=TEXT)
@click.option("--purpose", help="Prefixes of words of the purpose or path (all).", type=TEXT)
@click.option("--path", help="Glob relative to files/ (* also crosses /).", type=TEXT)
@click.option("--collection", type=TEXT)
@click.option("--type", "file_type", help="MIME type (image/*) or extension.", type=TEXT)
@click.option("--min-size", type=Count(0, INT64_MAX))
@click.option("--max-size", type=Count(0, INT64_MAX))
@click.option("--created-after", type=MOMENT, help="ISO 8601; UTC when no zone is given.")
@click.option("--created-before", type=MOMENT, help="ISO 8601; UTC when no zone is given.")
@click.option("--checksum", type=TEXT)
@click.option("--correlation-id", type=TEXT)
@click.option("--status", type=click.Choice([*(s.value for s in Status), "all"]), default="active")
@click.option("--limit", type=Count(1, MAX_SEARCH_LIMIT), default=50)
@click.option("--offset", type=Count(0, INT64_MAX), default=0)
@click.option("--cursor", type=TEXT)
@click.option("--sort-by", type=click.Choice([k.value for k in SortKey]), default="created_at")
@click.option("--order", type=click.Choice([o.value for o in Order]), default="desc")
@global_options
@click.pass_context
def search(
    ctx: click.Context,
    cursor: str | None,
    status: str,
    sort_by: str,
    order: str,
    created_after: datetime | None,
    created_before: datetime | None,
    **filters: Any,
) -> None:
    """Search the catalog."""
    query = attrs.evolve(
        SearchQuery(
            status=None if status == "all" else Status(status),
            sort_by=SortKey(sort_by),
            order=Order(order),
            created_after=created_after,
            created_before=created_before,
        ),
        **filters,  # the remaining flags are named as the query's fields
    )
    page = _run(ctx, lambda c: c.search(query, cursor), read_only=True)
    _emit(
        ctx,
        page,
        lambda p: "\n".join(
            [
                *(_record_line(f) for f in p.results),
                f"{len(p.results)} of {p.total_count}"
                + (f"  next: --cursor {p.next_cursor}" if p.next_cursor else ""),
            ]
        ),
    )


@cli.command()
@click.argument("ref", metavar="PATH|ID")
@click.option("--tag", "tags", multiple=True, help="Replace the tags (repeat).", type=TEXT)
@click.option("--clear-tags", is_flag=True, help="Remove every tag.")
@click.option("--owner", help="The new owner.", type=TEXT)
@click.option("--purpose", help="The new purpose.", type=TEXT)
@click.option("--status", type=click.Choice([s.value for s in Status]))
@click.option("--collection", help="Add to this collection.", type=TEXT)
@click.option("--no-check", is_flag=True, help="Do not look for changed content.")
@global_options
@click.pass_context
def update(
    ctx: click.Context,
    ref: str,
    tags: tuple[str, ...],
    clear_tags: bool,
    owner: str | None,
    purpose: str | None,
    status: str | None,
    collection: str | None,
    no_check: bool,
) -> None:
    """Change a file's metadata (and version it if its content changed)."""
    if clear_tags and tags:
        raise click.UsageError("--clear-tags removes every tag, --tag replaces them: give one of them")
    changes = FileChanges(
        owner=owner,
        purpose=purpose,
        tags=() if clear_tags else (tags or None),
        status=Status(status) if status else None,
        collection=collection,
    )

    async def work(c: Catalog) -> Any:
        file = await _resolve(ctx, c, ref)
        return await c.update(file.id, changes, check_for_changes=not no_check)

    _emit(
        ctx,
        _run(ctx, work),
        lambda u: f"changed: {', '.join(u.changed_fields) or 'nothing'}\n" + _record_line(u.file),
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class VersionNumber(click.ParamType):
    """A version as ``info --versions`` shows it (``v3``) or as a number (``3``)."""

    name = "VERSION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        digits = text[1:] if text[:1] in ("v", "V") else text
        if digits.isascii() and digits.isdigit() and len(digits) < 20 and 1 <= int(digits) <= INT64_MAX:
            return int(digits)
        self.fail(f"{value!r} is not a version: a number from 1 to {INT64_MAX} (as 3, or v3)", param, ctx)


class PortNumber(click.ParamType):
    """A TCP port, 0 (any free one) to 65535."""

    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535:
            return int(text)
        self.fail(f"{value!r} is not a port: a number from 0 (any free port) to 65535", param, ctx)


@cli.command()
@click.argument("ref", metavar="PATH|ID")
@click.argument("version", type=VersionNumber())
@global_options
@click.pass_context
def restore(ctx: click.Context, ref: str, version: int) -> None:
    """Put an earlier version back (as a new version)."""

    async def work(c: Catalog) -> Any:
        return await c.restore((await _resolve(ctx, c, ref)).id, version)

    _emit(
        ctx,
        _run(ctx, work),
        lambda r: (
            (f"kept the file's unrecorded content as v{r.preserved_version}\n" if r.preserved_version else "")
            + f"restored v{version} as v{r.version.version}\n"
            + _record_line(r.file)
        ),
    )


@cli.command()
@click.argument("ref", metavar="PATH|ID", required=False)
@click.argument("version", type=VersionNumber(), required=False)
@click.option(
    "--object",
    "checksum",
    metavar="SHA256",
    help="the content of this object instead, whichever version refers to it or none "
    "(one `horace fsck` lists as kept)",
)
@global_options
@click.pass_context
def show(ctx: click.Context, ref: str | None, version: int | None, checksum: str | None) -> None:
    """Write a version's content to stdout (the current one when VERSION is left out)."""
    if (ref is None) == (checksum is None):
        raise click.UsageError("give a file (PATH|ID [VERSION]) or --object SHA256, not both")

    async def work(c: Catalog) -> None:
        if checksum is not None:
            await c.copy_object_out(checksum, _write_out)
        else:
            assert ref is not None
            await c.copy_out(await _resolve(ctx, c, ref), version, _write_out)

    _run(ctx, work, read_only=True)


@cli.command()
@click.argument("ref", metavar="PATH|ID")
@click.argument("from_version", metavar="FROM", type=VersionNumber())
@click.argument("to_version", metavar="[TO]", type=VersionNumber(), required=False)
@global_options
@click.pass_context
def diff(ctx: click.Context, ref: str, from_version: int, to_version: int | None) -> None:
    """What changed from one version to another (TO: the current one when left out)."""
    from horace.diff import between

    limit = _settings(ctx).max_read_bytes

    async def work(c: Catalog) -> Any:
        return await between(c, await _resolve(ctx, c, ref), from_version, to_version, limit)

    def human(d: Any) -> str:
        if d.identical:
            return f"v{d.from_version} and v{d.to_version} hold the same content"
        if d.diff is None:
            return (
                f"v{d.from_version} {d.from_size} bytes {d.from_checksum[:16]} -> "
                f"v{d.to_version} {d.to_size} bytes {d.to_checksum[:16]} ({_WITHOUT_LINES[d.kind]})"
            )
        return d.diff.rstrip("\n") + ("\n(cut at the size limit)" if d.truncated else "")

    _emit(ctx, _run(ctx, work, read_only=True), human)


_WITHOUT_LINES = {
    "binary": "not text: no line diff",
    "large": "over HORACE_MAX_READ_BYTES: no line diff",
}


def _lifecycle(name: str, doc: str) -> None:
    @cli.command(name=name, help=doc)
    @click.argument("ref", metavar="PATH|ID")
    @global_options
    @click.pass_context
    def command(ctx: click.Context, ref: str) -> None:
        async def work(c: Catalog) -> Any:
            return await getattr(c, name)((await _resolve(ctx, c, ref)).id)

        _emit(ctx, _run(ctx, work), lambda u: _record_line(u.file))


_lifecycle("delete", "Soft-delete a file (its history is kept until purge).")


@cli.command()
@click.argument("ref", metavar="PATH|ID")
@click.option(
    "-r", "--recursive", is_flag=True, help="PATH is a folder: undelete every file deleted under it."
)
@click.option(
    "--deleted-after",
    type=MOMENT,
    metavar="D",
    help="With -r: only the files deleted at or after D (ISO 8601, UTC when it has no zone).",
)
@global_options
@click.pass_context
def undelete(ctx: click.Context, ref: str, recursive: bool, deleted_after: datetime | None) -> None:
    """Make a deleted file active again (-r: every file deleted under a folder). Exit 1
    when a file of the folder could not come back."""
    if not recursive:
        if deleted_after is not None:
            raise click.UsageError("--deleted-after chooses among a folder's files: give -r with it")

        async def work(c: Catalog) -> Any:
            return await c.undelete((await _resolve(ctx, c, ref)).id)

        _emit(ctx, _run(ctx, work), lambda u: _record_line(u.file))
        return
    folder = _client_path(ctx, ref)
    done = _run(ctx, lambda c: c.undelete_folder(folder, deleted_after))
    _emit(
        ctx,
        done,
        lambda d: "\n".join(
            [
                *(_record_line(f) for f in d.undeleted),
                f"{_count(len(d.undeleted), 'file')} undeleted, {_count(len(d.errors), 'error')}",
                *(f"  error: {_said(e)}" for e in d.errors),
            ]
        ),
    )
    ctx.exit(Exit.FOUND if done.errors else Exit.OK)


@cli.command()
@click.argument("path", required=False)
@click.option(
    "--rehash",
    is_flag=True,
    help="Read every catalogued file again, not only those whose size, times or inode changed.",
)
@global_options
@click.pass_context
def scan(ctx: click.Context, path: str | None, rehash: bool) -> None:
    """Register untracked files and version changed ones. Exit 1 when a file could not be
    taken or was skipped."""
    under = _client_path(ctx, path) if path is not None else None
    with _progress(ctx, "scan") as progress:
        report = _run(ctx, lambda c: c.scan(under, progress=progress, rehash=rehash))
    _emit(
        ctx,
        report,
        lambda r: (
            f"scanned {r.scanned}: {r.registered} registered, {r.versioned} versioned, "
            f"{r.unchanged} unchanged, {r.duplicates} duplicates, {len(r.errors)} errors, "
            f"{len(r.skipped)} skipped, {len(r.missing)} missing, {len(r.moved)} moved"
            + "".join(f"\n  moved: {_shown(m)}" for m in r.moved)
            + "".join(f"\n  error: {_said(e)}" for e in r.errors)
            + "".join(f"\n  skipped: {_said(s)}" for s in r.skipped)
            + "".join(f"\n  missing: {_shown(m)}" for m in r.missing)
            + (MISSING_HINT if r.missing else "")
        ),
    )
    ctx.exit(Exit.FOUND if report.errors or report.skipped else Exit.OK)


@cli.command()
@click.argument("ref", metavar="[PATH|ID]", required=False)
@global_options
@click.pass_context
def verify(ctx: click.Context, ref: str | None) -> None:
    """Re-hash objects and working files; exit 1 on any mismatch."""
    from horace.fsck import verify

    async def work(c: Catalog) -> Any:
        file_id = (await _resolve(ctx, c, ref)).id if ref else None
        with _progress(ctx, "verify") as progress:
            return await verify(c, file_id, progress=progress)

    report = _run(ctx, work, read_only=True)
    _emit(
        ctx,
        report,
        lambda r: "\n".join(
            [
                f"{_count(r.files_checked, 'file')}, {_count(r.objects_checked, 'object')} checked, "
                f"{_count(len(r.problems), 'problem')}",
                *(
                    f"  {p.kind}: {_shown(p.file_path)}"
                    + (f" version {p.version}:" if p.version is not None else "")
                    + f" {_shown(p.detail)}"
                    for p in r.problems
                ),
            ]
        ),
    )
    ctx.exit(Exit.FOUND if report.problems else Exit.OK)


def _missing_content_said(report: Any) -> list[str]:
    """What the versions whose content is missing most often come of, and what to do."""
    missing = sum(f.kind == "missing_object" and not f.repaired for f in report.findings)
    if not missing:
        return []
    return [
        f"  {_count(missing, 'version')} without content: a catalog restored from a backup whose "
        "catalog copy was taken after the rest of the store names objects the copy lacks (take "
        "the catalog copy first), or objects were removed from .horace/objects; `horace fsck "
        "--repair --forget-missing` drops the old versions whose content is nowhere"
    ]


@cli.command(name="fsck")
@click.option("--repair", is_flag=True, help="Also write missing working copies back and collect orphans.")
@click.option("--deep", is_flag=True, help="Re-hash every object (slow), not only sizes.")
@click.option(
    "--forget-missing",
    is_flag=True,
    help="With --repair: drop old versions whose content is nowhere in the store (lost for good).",
)
@click.option(
    "--forget-adopted",
    is_flag=True,
    help="With --repair: collect the objects written before the catalog was bound (lost history).",
)
@global_options
@click.pass_context
def fsck_command(
    ctx: click.Context, repair: bool, deep: bool, forget_missing: bool, forget_adopted: bool
) -> None:
    """Check the catalog against the object store.

    Without --repair only what a crash leaves behind is repaired (as at every start).
    Exit 0 clean, 1 all repaired, 4 problems left.
    """
    from horace.fsck import fsck

    for flag, given in (("--forget-missing", forget_missing), ("--forget-adopted", forget_adopted)):
        if given and not repair:
            raise click.UsageError(f"{flag} is a kind of repair: give --repair with it")

    async def work(c: Catalog) -> Any:
        with _progress(ctx, "fsck") as progress:
            return await fsck(
                c,
                repair=repair,
                deep=deep,
                forget_missing=forget_missing,
                forget_adopted=forget_adopted,
                progress=progress,
            )

    report = _run(ctx, work, check=False)
    _emit(
        ctx,
        report,
        lambda r: "\n".join(
            [
                f"{_count(r.files, 'file')}, {_count(r.versions, 'version')}, {_count(r.objects, 'object')}: "
                + ("clean" if r.clean else _count(len(r.findings), "finding"))
                + (f" ({r.busy} files busy, not checked)" if r.busy else "")
                + (
                    f"; {_count(len(r.orphans) - r.adopted, 'object')} no version refers to, kept until "
                    "HORACE_DELETED_RETENTION has passed (left by a crash, by concurrent scans, or by "
                    "a write the catalog refused after its content was stored; "
                    "or versions newer than a catalog restored from a backup: `horace show "
                    "--object SHA256` writes one out)"
                    if len(r.orphans) > r.adopted
                    else ""
                )
                + (
                    f"; {_count(r.adopted, 'object')} no version refers to written before the catalog was "
                    "bound to the store (adopted): another catalog's history, kept for good "
                    "(`horace fsck --repair --forget-adopted` collects them)"
                    if r.adopted
                    else ""
                ),
                *(
                    f"  {'repaired' if f.repaired else 'pending' if f.pending else 'FOUND'}: {f.kind}: "
                    f"{_shown(f.file_path or f.subject or '')} {_shown(f.detail)}"
                    for f in r.findings
                ),
                *_missing_content_said(r),
                *(f"  kept: {name}" for name in r.orphans[:SHOWN_ORPHANS]),
                *(
                    [f"  … and {len(r.orphans) - SHOWN_ORPHANS} more (--json lists them all)"]
                    if len(r.orphans) > SHOWN_ORPHANS
                    else []
                ),
            ]
        ),
    )
    ctx.exit(report.exit_code)


@cli.command()
@global_options
@click.pass_context
def purge(ctx: click.Context) -> None:
    """Purge the files deleted longer ago than HORACE_DELETED_RETENTION and collect the
    content no version holds any more: what a server does every HORACE_PURGE_INTERVAL
    (a store used only through the CLI has no server to do it)."""
    report = _run(ctx, lambda c: c.purge())
    _emit(
        ctx,
        report,
        lambda r: (
            f"{_count(r.files_purged, 'deleted file')} purged, "
            f"{_count(r.objects_deleted, 'object')} collected"
        ),
    )


@cli.command()
@global_options
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the catalog schema up to date (also done at every writing start). With a
    --database of its own, no store is needed: the schema can be made ahead."""
    settings = _settings(ctx)
    if settings.database_url is None:
        version = _run(ctx, lambda c: c.backend.migrate(), check=False)
    else:
        from horace.backends import open_backend

        async def ahead() -> int:
            async with open_backend(settings.catalog_url) as backend:  # migrates on opening
                return await backend.migrate()

        version = _trio_run(ahead)
    _emit(ctx, {"schema_version": version}, lambda d: f"schema version {d['schema_version']}")


_LOG_LEVEL = click.option(
    "--log-level",
    # (The names HORACE_LOG_LEVEL takes: TRACE and WARN too.)
    type=click.Choice(list(LEVEL_NAMES), case_sensitive=False),
    help="The least level logged on stderr (one JSON object a line) [HORACE_LOG_LEVEL, INFO].",
)


def _configure_logs(log_level: str | None) -> None:
    """Logs to stderr at *log_level* (the option's), else at ``HORACE_LOG_LEVEL``'s: a
    wrong value there is a setting's mistake (CONFIG), not a usage one."""
    from horace import logs

    if log_level is None:
        try:
            log_level = log_level_from_env(os.environ)
        except ConfigError as exc:
            raise Failure(Exit.CONFIG, "CONFIG", str(exc)) from None
    logs.configure(LEVEL_NAMES[log_level.upper()])


@cli.command()
@click.option("--host", help="Address to bind [HORACE_MCP_HOST, 127.0.0.1].")
@click.option("--port", type=PortNumber(), help="Port [HORACE_MCP_PORT, 8070].")
@click.option(
    "--watch", "watch", is_flag=True, default=None, help="Catalog every write under files/ [HORACE_WATCH]."
)
@click.option("--poll", is_flag=True, default=None, help="Watch by polling (NFS) [HORACE_WATCH_POLL].")
@_LOG_LEVEL
@global_options
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    watch: bool | None,
    poll: bool | None,
    log_level: str | None,
) -> None:
    """Serve MCP over WebSocket and Streamable HTTP (both at /mcp), and /health, until
    SIGINT, SIGTERM or SIGHUP. Creates the store when there is none."""
    from horace.server.serving import serve as run_server

    watching = _settings(ctx, watch=watch).watch
    if poll and not watching:  # (it would serve, watching nothing)
        raise click.UsageError("--poll says how watch mode looks at files: give --watch with it")
    if not watching and _settings(ctx).watch_poll:
        click.echo(
            "horace: warning: HORACE_WATCH_POLL is set, but watch mode is off: nothing is watched", err=True
        )
    _run_service(ctx, log_level, run_server, host=host, port=port, watch=watch, watch_poll=poll)


@cli.command(name="mcp")
@_LOG_LEVEL
@global_options
@click.pass_context
def mcp_command(ctx: click.Context, log_level: str | None) -> None:
    """Speak MCP over stdin and stdout, for a desktop client that starts Horace itself,
    until the client closes stdin (exit 0). Logs go to stderr only. Creates the store when
    there is none; shares it safely with a running `horace serve`."""
    from horace.server.stdio import claim_stdio

    fds = claim_stdio()  # first: from here on nothing but the protocol reaches stdout
    from horace.server.serving import serve_stdio

    _configure_logs(log_level)
    _trio_run(serve_stdio, _settings(ctx), fds)


@cli.command()
@click.option("--poll", is_flag=True, default=None, help="Watch by polling (NFS) [HORACE_WATCH_POLL].")
@_LOG_LEVEL
@global_options
@click.pass_context
def watch(ctx: click.Context, poll: bool | None, log_level: str | None) -> None:
    """Catalog and version every write under files/, without serving MCP."""
    from horace.tasks import run_watch

    _run_service(ctx, log_level, run_watch, watch=True, watch_poll=poll)


def _run_service(ctx: click.Context, log_level: str | None, service: Any, **overrides: Any) -> None:
    _configure_logs(log_level)
    settings = _settings(ctx, **overrides)
    _more_open_files(settings)
    with _progress(ctx, "reconcile") if settings.watch else _no_progress() as progress:
        _trio_run(partial(service, settings, progress=progress))


@contextmanager
def _no_progress() -> Iterator[None]:
    yield None


# Descriptors a server holds besides its connections': database connections, files being
# read or written, watches, pipes to its sink process.
FILES_AT_WORK = 128


def _more_open_files(settings: Settings) -> None:
    """A service holds a descriptor for each connection and each file at work: the soft
    limit of open files (1024, or less under a service manager) is raised to the hard
    one, as servers do. One still below what the connection limits may take is said: past
    it, connections and calls fail with "too many open files"."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("the limit of open files could not be raised from %d to %d: %s", soft, hard, exc)
    needed = settings.max_connections + settings.max_pending_connections + FILES_AT_WORK
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the limit of open files is %d (ulimit -n), below the %d that HORACE_MAX_CONNECTIONS "
            "and HORACE_MAX_PENDING_CONNECTIONS may take with the files at work: raise it, or lower "
            "them, or connections and calls will fail with 'too many open files'",
            soft,
            needed,
        )


# -- the edge: errors to one line and an exit code -----------------------------------------


_EXIT_OF_CODE = {
    ErrorCode.STORAGE_FULL: Exit.STORAGE,
    ErrorCode.STORAGE_ERROR: Exit.STORAGE,
    ErrorCode.BACKEND_UNAVAILABLE: Exit.BACKEND,
}


def _failure(exc: BaseException) -> Failure | None:
    """What a person should be told of *exc*; None for a bug."""
    exc = the_failure(exc)
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, HoraceError):  # by its code, whatever raised it (a scan cut short, say)
        return Failure(_EXIT_OF_CODE.get(exc.code, Exit.REFUSED), exc.code.value, exc.message)
    if isinstance(exc, CannotListen):
        return Failure(Exit.ADDRESS, "ADDRESS_IN_USE" if exc.in_use else "ADDRESS", str(exc))
    if isinstance(exc, RepliesLost):
        return Failure(Exit.OUTPUT, "OUTPUT", str(exc))
    if isinstance(exc, StoreRefused):
        return Failure(Exit.STORE, "STORE_REFUSED", str(exc))
    if isinstance(exc, CatalogMissing):
        return Failure(
            Exit.STORE, "STORE_REFUSED", f"{exc}: the store's catalog is not where the settings say"
        )
    if isinstance(exc, ConfigError | StorageUnusable | SchemaTooNew):
        return Failure(Exit.CONFIG, "CONFIG", str(exc))
    if isinstance(exc, SchemaBehind):
        return Failure(Exit.CONFIG, "SCHEMA_BEHIND", str(exc))
    if isinstance(exc, BackendUnavailable):
        return Failure(Exit.BACKEND, "BACKEND_UNAVAILABLE", str(exc))
    if isinstance(exc, DatabaseFull):
        return Failure(Exit.STORAGE, ErrorCode.STORAGE_FULL.value, str(exc))
    if isinstance(exc, UnusableURL):
        return Failure(Exit.CONFIG, "CONFIG", str(exc))
    if isinstance(exc, CatalogUnwritable | CatalogDamaged):
        return Failure(Exit.STORAGE, "STORAGE_ERROR", str(exc))
    full = storage_full(exc)  # met outside the storage's own calls (no inode left, say)
    if full is not None:
        return Failure(Exit.STORAGE, full.code.value, full.message)
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return Failure(Exit.STORAGE, "STORAGE_ERROR", storage_refusal(exc))
    return None


def _say(failure: Failure, as_json: bool) -> None:
    if as_json:
        message = printable(failure.message)  # (an argument's bytes that are not UTF-8, as \xNN)
        body = {"error": {"code": failure.code, "message": message, "exit_code": int(failure.exit)}}
        click.echo(json.dumps(body), err=True)
    else:
        # One line, whatever the message holds (PostgreSQL's add "\nHINT: ..." lines).
        message = "; ".join(line.strip() for line in failure.message.splitlines() if line.strip())
        click.echo(_said(f"horace: error: {failure.code}: {message}"), err=True)


def _configure_cli_logging(as_json: bool) -> None:
    """Warnings of a command (fsck at start, say) as one line each, like its errors."""
    from horace.logs import JsonLines, one_line, warnings_to_the_log

    warnings_to_the_log()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(one_line)
    if as_json:
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(_ShownLines("horace: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


# Each file's work is committed whole or not at all (a scan commits as it goes).
INTERRUPTED = "interrupted: what was done is kept, nothing is half-done; run it again to go on"


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    if not args:  # `horace` alone: what there is to do, not an error
        click.echo(cli.make_context("horace", [], resilient_parsing=True).get_help())
        sys.exit(Exit.OK)
    as_json, debug = "--json" in args, "--debug" in args
    _configure_cli_logging(as_json)
    try:
        # (cli.main() less its handling of errors, which is below: it would begin the line
        # of a Ctrl-C with a newline even where no terminal shows "^C")
        with cli.make_context("horace", list(args)) as ctx:
            status = cli.invoke(ctx)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as exc:
        message = exc.format_message()
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see `{exc.ctx.command_path} --help`)"
        _say(Failure(Exit.USAGE, "USAGE", message), as_json)
        sys.exit(Exit.USAGE)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _say(Failure(Exit.INTERRUPTED, "INTERRUPTED", INTERRUPTED), as_json)
        sys.exit(Exit.INTERRUPTED)
    except BaseException as exc:
        if isinstance(the_failure(exc), BrokenPipeError | StdoutGone):
            # Nobody reads on: nothing to say, and nothing left to flush at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(Exit.BROKEN_PIPE)
        failure = _failure(exc)
        if failure is None:
            if isinstance(the_failure(exc), KeyboardInterrupt):
                _say(Failure(Exit.INTERRUPTED, "INTERRUPTED", INTERRUPTED), as_json)
                sys.exit(Exit.INTERRUPTED)
            if debug:
                traceback.print_exception(exc)
            inner = the_failure(exc)
            failure = Failure(
                Exit.INTERNAL,
                ErrorCode.INTERNAL.value,
                f"{type(inner).__name__}: {inner}"
                + ("" if debug else " (run again with --debug for the traceback)"),
            )
        _say(failure, as_json)
        sys.exit(failure.exit)
    sys.exit(status if isinstance(status, int) else Exit.OK)


__all__ = ["Exit", "cli", "main"]
