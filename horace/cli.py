"""The operator's commands. A thin edge: flags become attrs values, the catalog works.

Every command takes ``--json``; any error exits non-zero (``fsck`` and ``verify`` also
when they find a problem).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import trio
from tqdm import tqdm

from backends.migrations import SchemaTooNew
from backends.protocol import BackendUnavailable
from horace.app import open_catalog
from horace.catalog import Catalog
from horace.config import ConfigError, Settings
from horace.fsck import fsck
from horace.model import FileChanges, HoraceError, NewFile, Order, SearchQuery, SortKey, Status
from horace.wire import to_json

T = TypeVar("T")


@click.group()
@click.option("--storage", type=click.Path(path_type=Path), help="Storage root [HORACE_STORAGE_PATH].")
@click.option("--database", help="sqlite:///path or postgresql://... [HORACE_DATABASE_URL].")
@click.pass_context
def main(ctx: click.Context, storage: Path | None, database: str | None) -> None:
    """Horace: the file catalog and versioning server of ICCM."""
    try:
        ctx.obj = Settings.from_env(storage_path=storage, database_url=database)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _emit(as_json: bool, value: Any, human: Callable[[Any], str]) -> None:
    click.echo(json.dumps(to_json(value), indent=2) if as_json else human(value))


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    bar = tqdm(desc=label, unit="file", file=sys.stderr)
    try:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        yield update
    finally:
        bar.close()


def _run(settings: Settings, work: Callable[[Catalog], Awaitable[T]], *, check: bool = True) -> T:
    async def go() -> T:
        async with open_catalog(settings, check=check) as catalog:
            return await work(catalog)

    try:
        return trio.run(go)
    except HoraceError as exc:
        click.echo(f"error: {exc.code.value}: {exc.message}", err=True)
        sys.exit(2)
    except (BackendUnavailable, SchemaTooNew, ConfigError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)


def _record_line(file: Any) -> str:
    tags = ",".join(file.tags)
    status = file.status.value
    return f"{file.id}  v{file.current_version}  {status:8}  {file.size:>10}  {file.file_path}  [{tags}]"


@main.command()
@click.argument("path")
@click.option("--owner")
@click.option("--purpose")
@click.option("--tag", "tags", multiple=True)
@click.option("--collection")
@json_option
@click.pass_obj
def register(
    settings: Settings,
    path: str,
    owner: str | None,
    purpose: str | None,
    tags: tuple[str, ...],
    collection: str | None,
    as_json: bool,
) -> None:
    """Catalog a file under files/."""
    new = NewFile(owner=owner, purpose=purpose, tags=tags, collection=collection)
    result = _run(settings, lambda c: c.register(path, new))
    _emit(as_json, result, lambda r: ("duplicate of " if r.duplicate else "") + _record_line(r.file))


@main.command()
@click.argument("ref")
@click.option("--versions", is_flag=True, help="List the versions too.")
@json_option
@click.pass_obj
def info(settings: Settings, ref: str, versions: bool, as_json: bool) -> None:
    """Show a file's record (by id or path)."""

    async def work(c: Catalog) -> Any:
        file = await c.resolve(ref)
        return await c.get_info(file_id=file.id, include_versions=versions)

    def human(i: Any) -> str:
        lines = [_record_line(i.file), f"  checksum {i.file.checksum}  {i.file.mime_type}"]
        for v in i.versions or ():
            origin = f" (restored from v{v.restored_from_version})" if v.restored_from_version else ""
            lines.append(
                f"  v{v.version}  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.size:>10}  {v.checksum[:16]}{origin}"
            )
        return "\n".join(lines)

    _emit(as_json, _run(settings, work), human)


@main.command()
@click.option("--tag", "tags", multiple=True, help="Has all of these tags.")
@click.option("--any-tag", "any_tags", multiple=True, help="Has any of these tags.")
@click.option("--owner")
@click.option("--purpose", help="Text in the purpose.")
@click.option("--path", help="Glob relative to files/.")
@click.option("--collection")
@click.option("--type", "file_type", help="MIME type (image/*) or extension.")
@click.option("--min-size", type=int)
@click.option("--max-size", type=int)
@click.option("--created-after", type=click.DateTime())
@click.option("--created-before", type=click.DateTime())
@click.option("--checksum")
@click.option("--correlation-id")
@click.option("--status", type=click.Choice([*(s.value for s in Status), "all"]), default="active")
@click.option("--limit", type=click.IntRange(1, 1000), default=50)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--cursor")
@click.option("--sort-by", type=click.Choice([k.value for k in SortKey]), default="created_at")
@click.option("--order", type=click.Choice([o.value for o in Order]), default="desc")
@json_option
@click.pass_obj
def search(
    settings: Settings,
    as_json: bool,
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
            created_after=_aware(created_after),
            created_before=_aware(created_before),
        ),
        **filters,  # the remaining flags are named as the query's fields
    )
    page = _run(settings, lambda c: c.search(query, cursor))
    _emit(
        as_json,
        page,
        lambda p: "\n".join(
            [
                *(_record_line(f) for f in p.results),
                f"{len(p.results)} of {p.total_count}"
                + (f"  next: --cursor {p.next_cursor}" if p.next_cursor else ""),
            ]
        ),
    )


def _aware(moment: datetime | None) -> datetime | None:
    return moment.astimezone() if moment is not None else None


@main.command()
@click.argument("ref")
@click.option("--tag", "tags", multiple=True, help="Replace the tags (repeat).")
@click.option("--clear-tags", is_flag=True)
@click.option("--owner")
@click.option("--purpose")
@click.option("--status", type=click.Choice([s.value for s in Status]))
@click.option("--collection", help="Add to this collection.")
@click.option("--no-check", is_flag=True, help="Do not look for changed content.")
@json_option
@click.pass_obj
def update(
    settings: Settings,
    ref: str,
    tags: tuple[str, ...],
    clear_tags: bool,
    owner: str | None,
    purpose: str | None,
    status: str | None,
    collection: str | None,
    no_check: bool,
    as_json: bool,
) -> None:
    """Change a file's metadata (and version it if its content changed)."""
    changes = FileChanges(
        owner=owner,
        purpose=purpose,
        tags=() if clear_tags else (tags or None),
        status=Status(status) if status else None,
        collection=collection,
    )

    async def work(c: Catalog) -> Any:
        file = await c.resolve(ref)
        return await c.update(file.id, changes, check_for_changes=not no_check)

    _emit(
        as_json,
        _run(settings, work),
        lambda u: f"changed: {', '.join(u.changed_fields) or 'nothing'}\n" + _record_line(u.file),
    )


@main.command()
@click.argument("ref")
@click.argument("version", type=click.IntRange(1))
@json_option
@click.pass_obj
def restore(settings: Settings, ref: str, version: int, as_json: bool) -> None:
    """Put an earlier version back (as a new version)."""

    async def work(c: Catalog) -> Any:
        return await c.restore((await c.resolve(ref)).id, version)

    _emit(
        as_json,
        _run(settings, work),
        lambda r: f"restored v{version} as v{r.version.version}\n" + _record_line(r.file),
    )


def _lifecycle(name: str, doc: str) -> None:
    @main.command(name=name, help=doc)
    @click.argument("ref")
    @json_option
    @click.pass_obj
    def command(settings: Settings, ref: str, as_json: bool) -> None:
        async def work(c: Catalog) -> Any:
            return await getattr(c, name)((await c.resolve(ref)).id)

        _emit(as_json, _run(settings, work), lambda u: _record_line(u.file))


_lifecycle("delete", "Soft-delete a file (its history is kept until purge).")
_lifecycle("undelete", "Make a deleted file active again.")


@main.command()
@click.argument("path", required=False)
@json_option
@click.pass_obj
def scan(settings: Settings, path: str | None, as_json: bool) -> None:
    """Register untracked files and version changed ones."""
    with _progress(not as_json, "scan") as progress:
        report = _run(settings, lambda c: c.scan(path, progress=progress))
    _emit(
        as_json,
        report,
        lambda r: (
            f"scanned {r.scanned}: {r.registered} registered, {r.versioned} versioned, "
            f"{r.unchanged} unchanged, {r.duplicates} duplicates, {len(r.errors)} errors"
            + "".join(f"\n  {e}" for e in r.errors)
        ),
    )
    if report.errors:
        sys.exit(1)


@main.command()
@click.argument("ref", required=False)
@json_option
@click.pass_obj
def verify(settings: Settings, ref: str | None, as_json: bool) -> None:
    """Re-hash objects and working files; exit 1 on any mismatch."""

    async def work(c: Catalog) -> Any:
        file_id = (await c.resolve(ref)).id if ref else None
        with _progress(not as_json, "verify") as progress:
            return await c.verify(file_id, progress=progress)

    report = _run(settings, work)
    _emit(
        as_json,
        report,
        lambda r: "\n".join(
            [
                f"{r.files_checked} files, {r.objects_checked} objects checked, {len(r.problems)} problems",
                *(f"  {p.kind}: {p.file_path} {p.detail}" for p in r.problems),
            ]
        ),
    )
    if report.problems:
        sys.exit(1)


@main.command(name="fsck")
@click.option("--repair", is_flag=True, help="Repair what can be repaired.")
@click.option("--deep", is_flag=True, help="Re-hash every object (slow), not only sizes.")
@json_option
@click.pass_obj
def fsck_command(settings: Settings, repair: bool, deep: bool, as_json: bool) -> None:
    """Check the catalog against the object store. Exit 0 clean, 1 repaired, 4 problems left."""

    async def work(c: Catalog) -> Any:
        with _progress(not as_json, "fsck") as progress:
            return await fsck(c, repair=repair, deep=deep, progress=progress)

    report = _run(settings, work, check=False)
    _emit(
        as_json,
        report,
        lambda r: "\n".join(
            [
                f"{r.files} files, {r.versions} versions, {r.objects} objects: "
                + ("clean" if r.clean else f"{len(r.findings)} findings"),
                *(
                    f"  {'repaired' if f.repaired else 'FOUND'}: {f.kind}: {f.file_path or ''} {f.detail}"
                    for f in r.findings
                ),
            ]
        ),
    )
    sys.exit(report.exit_code)


@main.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Bring the catalog schema up to date."""

    async def work(c: Catalog) -> int:
        return await c.backend.migrate()

    click.echo(f"schema version {_run(settings, work, check=False)}")


@main.command()
@click.option("--host", help="Address to bind [HORACE_MCP_HOST, 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [HORACE_MCP_PORT, 8070].")
@click.option(
    "--watch", "watch", is_flag=True, default=None, help="Catalog every write under files/ [HORACE_WATCH]."
)
@click.option("--poll", is_flag=True, default=None, help="Watch by polling (NFS) [HORACE_WATCH_POLL].")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.pass_obj
def serve(
    settings: Settings,
    host: str | None,
    port: int | None,
    watch: bool | None,
    poll: bool | None,
    log_level: str,
) -> None:
    """Serve MCP over WebSocket (and /health) until SIGINT or SIGTERM."""
    from horace.server import serve as run_server

    _run_service(settings, log_level, partial(run_server), host=host, port=port, watch=watch, watch_poll=poll)


@main.command()
@click.option("--poll", is_flag=True, default=None, help="Watch by polling (NFS) [HORACE_WATCH_POLL].")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.pass_obj
def watch(settings: Settings, poll: bool | None, log_level: str) -> None:
    """Catalog and version every write under files/, without serving MCP."""
    from horace.tasks import run_watch

    _run_service(settings, log_level, run_watch, watch=True, watch_poll=poll)


def _run_service(settings: Settings, log_level: str, service: Any, **overrides: Any) -> None:
    import attrs

    from horace import logs

    logs.configure(log_level)
    settings = attrs.evolve(settings, **{k: v for k, v in overrides.items() if v is not None})
    with _progress(settings.watch, "reconcile") as progress:
        try:
            trio.run(partial(service, settings, progress=progress))
        except (BackendUnavailable, SchemaTooNew, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(3)
