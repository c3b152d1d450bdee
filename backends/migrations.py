"""Finding the DDL steps in ``schema/<backend>/NNN_name.sql``."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from attrs import frozen

from .protocol import NotHoraces


class SchemaTooNew(Exception):
    pass


@frozen
class Step:
    version: int
    name: str
    sql: str


def schema_dir(backend: str) -> Path:
    # Installed wheels carry the DDL inside the package; a source checkout has it at the top.
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema" / backend, here.parent / "schema" / backend):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no schema/{backend} folder beside {here}")


def steps(backend: str) -> list[Step]:
    found = []
    for path in sorted(schema_dir(backend).glob("[0-9][0-9][0-9]_*.sql")):
        number, _, name = path.stem.partition("_")
        found.append(Step(int(number), name, path.read_text(encoding="utf-8")))
    return found


def pending(backend: str, applied: Collection[int]) -> list[Step]:
    """The steps not *applied* yet, in order: those above the newest applied, and those
    missing between the oldest and the newest (steps made on branches may have landed out
    of order, and a catalog of that time lacks the earlier one); refuses a database newer
    than this code. (Below the oldest recorded, all are taken as applied: a catalog may
    record only the step it was made at.)"""
    known = steps(backend)
    newest = known[-1].version if known else 0
    current = max(applied, default=0)
    if current > newest:
        raise SchemaTooNew(
            f"the {backend} catalog has schema version {current}, but this Horace knows only "
            f"up to {newest}: upgrade Horace before using this database"
        )
    oldest = min(applied, default=0)
    return [step for step in known if step.version > oldest and step.version not in applied]


def check_version_table(columns: list[str], records_steps: bool, has_files: bool) -> None:
    """:class:`NotHoraces` when the ``schema_version`` table found (its *columns*, "name
    type"; whether it holds rows; whether ``horace_files`` is beside it) is not Horace's:
    of another shape (a migration tool's), or recording steps with none of Horace's tables."""
    if [column.lower() for column in columns] != ["version integer"]:
        raise NotHoraces(f"its table schema_version ({', '.join(columns)}) is not Horace's")
    if records_steps and not has_files:
        raise NotHoraces("its table schema_version records steps, but none of Horace's tables is there")
