"""The text search (``purpose``): words, their index kept in step with every change, and
the SQLite schema step that builds the index for a catalog that has files already.

Runs on the backend under test; tests/test_backend_postgres_units.py holds the edge
cases compared between the two backends.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from horace.backends import open_backend
from horace.backends import sqlite as sqlite_backend
from horace.backends.migrations import steps
from horace.backends.protocol import Backend, UnusableURL
from horace.backends.records import FileChanges, FileRecord, Order, SearchQuery, SortKey, Status
from horace.backends.sqlite import open_sqlite
from horace.backends.words import WORD_CHARS, fts5_match, prefix_end, query_words, tsquery

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def record(path: str, purpose: str | None, *, when: float = 0, tags: tuple[str, ...] = ()) -> FileRecord:
    at = T0 + timedelta(seconds=when)
    return FileRecord(
        id=str(uuid.uuid4()),
        file_path=path,
        owner=None,
        purpose=purpose,
        tags=tags,
        size=1,
        mime_type="text/plain",
        checksum=f"sum-{path}",
        status=Status.ACTIVE,
        current_version=1,
        correlation_id=None,
        created_at=at,
        updated_at=at,
        deleted_at=None,
    )


# -- words ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Monthly REPORT", ["monthly", "report"]),
        ("report report Report", ["report"]),
        ("gates/project-12/file_0001.TXT", ["gates", "project", "12", "file", "0001", "txt"]),
        ("Café CRÈME naïve", ["café", "crÈme", "naïve"]),  # ASCII letters only are folded
        ('"NEAR" AND * ^ - : & | ! ( ) \' \\ %', ["near", "and"]),
        ("", []),
        ("  ... ---  ", []),
        ("日本語 テキスト", ["日本語", "テキスト"]),
        ("x" * (WORD_CHARS + 10), ["x" * WORD_CHARS]),
    ],
)
def test_query_words(text: str, expected: list[str]) -> None:
    assert query_words(text) == expected


def test_queries_quote_every_word() -> None:
    assert fts5_match(["near", "ab"]) == '"near"* AND "ab"*'
    # Words whose index words are known are written as those (none: nothing matches).
    terms = {"ab": ["ab", "abc"], "zz": []}
    assert fts5_match(["near", "ab", "zz"], terms) == '"near"* AND ("ab" OR "abc") AND ("zz")'
    assert tsquery(["near", "ab"], ["active"]) == "('active:near':*) & ('active:ab':*)"
    assert tsquery(["x"], ["active", "deleted"]) == "('active:x':* | 'deleted:x':*)"


@pytest.mark.parametrize(
    ("word", "end"),
    [
        ("abc", "abd"),
        ("az", "a{"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff", None),
        ("x\ud7ff", "x\ue000"),  # past the surrogates, which UTF-8 never holds
        ("café", "cafê"),
    ],
)
def test_prefix_end(word: str, end: str | None) -> None:
    assert prefix_end(word) == end
    if end is not None:  # every string that begins with the word is before it, in UTF-8 too
        for longer in (word, word + "\U0010ffff" * 3, word + "zzz"):
            assert word.encode() <= longer.encode() < end.encode()


# -- the index follows every change -------------------------------------------------------------


@pytest.fixture
async def backend(database_url: str) -> AsyncIterator[Backend]:
    async with open_backend(database_url) as opened:
        await opened.migrate()
        yield opened


async def found(backend: Backend, text: str, **filters: object) -> set[str]:
    total, page = await backend.search(SearchQuery(purpose=text, limit=100, **filters))  # type: ignore[arg-type]
    assert total == len(page)
    return {f.file_path for f in page}


async def test_words_follow_updates_moves_status_and_purges(backend: Backend) -> None:
    a, b = record("docs/alpha.md", "weekly report"), record("docs/beta.md", None, when=1)
    await backend.insert_files([a, b])
    assert await found(backend, "report") == {"docs/alpha.md"}
    assert await found(backend, "beta") == {"docs/beta.md"}

    await backend.update_file(a.id, FileChanges(purpose="summary"), T0)
    assert await found(backend, "report") == set()
    assert await found(backend, "summ") == {"docs/alpha.md"}

    await backend.move_files([(b.id, "docs/gamma.md", None)], T0)
    assert await found(backend, "beta") == set()
    assert await found(backend, "gamma") == {"docs/gamma.md"}

    await backend.update_file(a.id, FileChanges(status=Status.ARCHIVED), T0)
    assert await found(backend, "docs") == {"docs/gamma.md"}
    assert await found(backend, "docs", status=Status.ARCHIVED) == {"docs/alpha.md"}
    assert await found(backend, "docs", status=None) == {"docs/alpha.md", "docs/gamma.md"}

    await backend.update_file(a.id, FileChanges(status=Status.DELETED), T0)
    await backend.purge_deleted(T0 + timedelta(days=1))
    assert await found(backend, "summary", status=None) == set()
    assert await found(backend, "docs", status=None) == {"docs/gamma.md"}


async def test_tidy_leaves_one_word_segment_and_the_same_answers(backend: Backend, database_url: str) -> None:
    for i in range(40):  # a transaction each: a segment each, a few merged as they come
        await backend.insert_files([record(f"w/{i:02d}.txt", f"weekly report q{i % 4}", when=i)])
    before = {text: await found(backend, text, status=None) for text in ("report", "w 1", "week q3", "0")}
    segments = "SELECT count(DISTINCT segid) FROM horace_words_idx"
    path = database_url.removeprefix("sqlite://")
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(path) as conn:
            assert conn.execute(segments).fetchone()[0] > 1
    await backend.tidy()
    assert {text: await found(backend, text, status=None) for text in before} == before
    assert len(before["report"]) == 40 and len(before["week q3"]) == 10
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(path) as conn:
            assert conn.execute(segments).fetchone()[0] == 1
            conn.execute("INSERT INTO horace_words (horace_words) VALUES ('integrity-check')")
    await backend.tidy()  # nothing left to merge: it ends at once


async def test_a_file_counts_once_however_many_of_its_words_match(backend: Backend) -> None:
    await backend.insert_files(
        [record("x/a.txt", "report reports reporting"), record("x/b.txt", "reporter", when=1)]
    )
    both = {"x/a.txt", "x/b.txt"}
    assert await found(backend, "rep") == both  # (found checks the total too)
    assert await found(backend, "rep", status=None) == both
    assert await found(backend, "rep x") == both
    assert await found(backend, "reports") == {"x/a.txt"}


async def test_a_word_that_begins_few_words_and_one_that_begins_many(backend: Backend) -> None:
    # SQLite reads a word that begins at most 8 of the index's words as those words, and
    # one that begins more as a prefix: the same answers either way.
    await backend.insert_files([record(f"p/pre{i}.txt", f"preset pre{i}", when=i) for i in range(12)])
    assert await found(backend, "pre") == {f"p/pre{i}.txt" for i in range(12)}  # 13 words
    assert await found(backend, "pre1") == {"p/pre1.txt", "p/pre10.txt", "p/pre11.txt"}
    assert await found(backend, "pre10 preset") == {"p/pre10.txt"}
    assert await found(backend, "pre1 prf") == set()  # no word begins with "prf"
    await backend.update_file((await backend.file_by_path("p/pre10.txt")).id, FileChanges(purpose="x"), T0)
    assert await found(backend, "pre10") == {"p/pre10.txt"}  # (its path)
    assert await found(backend, "preset pre10") == set()


async def test_sqlite_writes_a_word_as_the_words_it_begins(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "c.db") as backend:
        await backend.migrate()
        await backend.insert_files([record(f"p/pre{i}.txt", None, when=i) for i in range(12)])
    conn = sqlite_backend._connect(tmp_path / "c.db")
    try:

        def match(text: str) -> str | None:
            return sqlite_backend._text_match(conn, SearchQuery(purpose=text))

        assert match("pre1") == '("pre1" OR "pre10" OR "pre11")'
        assert match("pre") == '"pre"*'  # 12 words: more than 8
        assert match("prf txt") == '("prf") AND ("txt")'
        assert match("") is None
    finally:
        conn.close()


@pytest.mark.parametrize("per_second", [10, 40])
async def test_pages_of_many_files_created_in_one_second(backend: Backend, per_second: int) -> None:
    """Newest first is created_at, then id, also among files of the same second (the
    SQLite index orders words by the second only), however many share one."""
    files = [
        record(f"batch/f{i:02d}.txt", "same batch", when=i // per_second + (i % 5) / 100) for i in range(40)
    ]
    await backend.insert_files(files)
    expected = [f.id for f in sorted(files, key=lambda f: (f.created_at, f.id), reverse=True)]
    seen: list[str] = []
    after = None
    while True:
        total, page = await backend.search(SearchQuery(purpose="batch", limit=7, after=after))
        assert total == 40
        if not page:
            break
        seen += [f.id for f in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == expected
    _, offset_page = await backend.search(SearchQuery(purpose="batch", limit=5, offset=12))
    assert [f.id for f in offset_page] == expected[12:17]


@pytest.mark.parametrize("order", list(Order))
@pytest.mark.parametrize("sort_by", list(SortKey))
async def test_pages_of_a_common_word_and_a_rare_one_in_every_order(
    backend: Backend, sort_by: SortKey, order: Order
) -> None:
    """Every page of a word in most files and of one in few, by cursor and by offset, in
    the order asked, ties included (on PostgreSQL, the first pages of the common word are
    read in page order, its far offsets and the rare word through the word index)."""
    files = [
        attrs.evolve(
            record(f"d{i % 4}/f{i:03d}.txt", "common" if i % 5 else "common rare", when=i // 3),
            size=i % 7,
            status=Status.ARCHIVED if i % 11 == 0 else Status.ACTIVE,
        )
        for i in range(300)
    ]
    await backend.insert_files(files)
    key = {
        SortKey.CREATED_AT: lambda f: (f.created_at, f.id),
        SortKey.UPDATED_AT: lambda f: (f.updated_at, f.id),
        SortKey.SIZE: lambda f: (f.size, f.id),
        SortKey.PATH: lambda f: (f.file_path, f.id),
    }[sort_by]
    for word, which in (("common", lambda f: True), ("rare", lambda f: f.purpose == "common rare")):
        matching = [f for f in files if f.status is Status.ACTIVE and which(f)]
        expected = [f.id for f in sorted(matching, key=key, reverse=order is Order.DESC)]
        seen: list[str] = []
        after = None
        while True:
            query = SearchQuery(purpose=word, sort_by=sort_by, order=order, limit=25, after=after)
            total, page = await backend.search(query)
            assert total == len(expected)
            if not page:
                break
            seen += [f.id for f in page]
            after = key(page[-1])  # (the cursor's position: sort value, id)
        assert seen == expected, word
        for offset in (0, 40, len(expected) - 10):
            query = SearchQuery(purpose=word, sort_by=sort_by, order=order, limit=25, offset=offset)
            _, page = await backend.search(query)
            assert [f.id for f in page] == expected[offset : offset + 25], (word, offset)


# -- SQLite: step 003 on a catalog that has files ------------------------------------------------


def sqlite_at_step_2(path: Path, files: list[FileRecord]) -> None:
    conn = sqlite3.connect(path)
    for step in steps("sqlite")[:2]:
        conn.executescript(step.sql)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (2)")
    for f in files:
        created = f.created_at.isoformat(timespec="microseconds")
        conn.execute(
            "INSERT INTO horace_files (id, file_path, purpose, tags, size, mime_type, checksum, "
            "status, current_version, created_at, updated_at) VALUES (?, ?, ?, '[]', 1, 'text/plain', "
            "?, ?, 1, ?, ?)",
            (f.id, f.file_path, f.purpose, f.checksum, f.status.value, created, created),
        )
        conn.executemany(
            "INSERT INTO horace_file_tags (tag, file_id) VALUES (?, ?)", [(t, f.id) for t in f.tags]
        )
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("foreign", "said"),
    [
        (
            "CREATE TABLE conversations (id INTEGER PRIMARY KEY, body TEXT)",
            "table conversations already exists",
        ),
        (
            "CREATE TABLE schema_version (installed_rank INT, version TEXT)",
            "(installed_rank INT, version TEXT)",
        ),
        (
            "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (3)",
            "records steps, but none of Horace's tables",
        ),
    ],
)
async def test_sqlite_a_file_holding_another_applications_tables_is_refused_untouched(
    tmp_path: Path, foreign: str, said: str
) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(foreign)
        before = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    async with open_sqlite(db, create=False) as backend:
        with pytest.raises(UnusableURL, match="another application's") as refused:
            await backend.migrate()
    assert said in str(refused.value)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == before


async def test_sqlite_a_step_that_landed_out_of_order_is_applied(tmp_path: Path) -> None:
    """A catalog made when step 004 had landed and 003 had not (steps 1, 2 and 4: they
    came from two branches) is given 003 and every step after, not only those above 4."""
    db = tmp_path / "gap.db"
    sqlite_at_step_2(db, [record("a/report.txt", "Quarterly numbers", when=0, tags=("q",))])
    conn = sqlite3.connect(db)
    conn.executescript({step.version: step for step in steps("sqlite")}[4].sql)
    conn.execute("INSERT INTO schema_version (version) VALUES (4)")
    conn.commit()
    conn.close()
    async with open_sqlite(db, create=False) as backend:
        assert await backend.migrate() == steps("sqlite")[-1].version
        assert await found(backend, "quarter") == {"a/report.txt"}
        await backend.insert_files([record("a/newer.txt", "quarterly", when=0)])
        assert await found(backend, "quarterly") == {"a/report.txt", "a/newer.txt"}
    with sqlite3.connect(db) as conn:
        applied = sorted(version for (version,) in conn.execute("SELECT version FROM schema_version"))
    assert applied == [step.version for step in steps("sqlite") if step.version >= 2]  # (1: before 2)


async def test_sqlite_step_3_indexes_the_files_already_there(tmp_path: Path) -> None:
    files = [
        record("a/old report.txt", "Quarterly numbers", when=0, tags=("q",)),
        record("a/new.txt", "quarterly REPORT", when=0, tags=("q", "r")),  # same second
        record("b/other.txt", None, when=5, tags=("r",)),
    ]
    files[2] = attrs.evolve(files[2], status=Status.ARCHIVED)
    db = tmp_path / "old.db"
    sqlite_at_step_2(db, files)
    async with open_sqlite(db, create=False) as backend:
        assert await backend.migrate() == steps("sqlite")[-1].version
        assert await found(backend, "quarter") == {"a/old report.txt", "a/new.txt"}
        assert await found(backend, "report") == {"a/old report.txt", "a/new.txt"}
        assert await found(backend, "other", status=Status.ARCHIVED) == {"b/other.txt"}
        total, page = await backend.search(SearchQuery(tags=("r",)))
        assert (total, [f.file_path for f in page]) == (1, ["a/new.txt"])  # b is archived
        total, page = await backend.search(SearchQuery(tags=("r",), status=Status.ARCHIVED))
        assert (total, [f.file_path for f in page]) == (1, ["b/other.txt"])
        # New files after the step get keys after the ones it gave.
        await backend.insert_files([record("a/newer.txt", "quarterly", when=0)])
        assert await found(backend, "quarterly") == {"a/old report.txt", "a/new.txt", "a/newer.txt"}


async def test_sqlite_a_second_without_sequence_numbers_left_refuses_its_files(tmp_path: Path) -> None:
    """A words key is (creation second, sequence number, status): a file of a second whose
    2^27 sequence numbers are used up is refused whole, and the next second goes on."""
    db = tmp_path / "catalog.db"
    async with open_sqlite(db) as backend:
        await backend.migrate()
        await backend.insert_files([record("a/first.txt", "alpha")])
        conn = sqlite3.connect(db)
        (key,) = conn.execute("SELECT key FROM horace_word_keys").fetchone()
        last = key | (1 << 29) - 4  # the second's last sequence number
        conn.execute("INSERT INTO horace_word_keys VALUES (?, 'the last of its second')", (last,))
        conn.commit()
        conn.close()
        with pytest.raises(sqlite3.IntegrityError, match="too many files created in one second"):
            await backend.insert_files([record("a/second.txt", "beta", when=0.5)])
        assert await backend.file_by_path("a/second.txt") is None
        assert await found(backend, "beta") == set()
        await backend.insert_files([record("a/third.txt", "beta", when=1)])
        assert await found(backend, "beta") == {"a/third.txt"}
        assert await found(backend, "alpha") == {"a/first.txt"}
