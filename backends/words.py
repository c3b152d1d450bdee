"""The words of the text search (``SearchQuery.purpose``), the same on both backends.

A file's searchable text is its purpose and its path. A word is a run of ASCII letters
and digits and of any characters beyond ASCII; every other ASCII character (spaces,
punctuation, ``/``, ``.``, ``-``, ``_``...) separates words. Only ASCII letters are folded
to lower case, and diacritics are kept. This is exactly what SQLite's FTS5 ``ascii``
tokenizer does, and what the PostgreSQL schema spells out with a regular expression:
neither backend's own notion of letters or case (which differ, and in PostgreSQL depend
on the database's locale) is used.

A search matches the files whose text has, for each word of the query, a word that starts
with it (prefix match, every word required, in any order). The query's text is only ever
words: no character in it is query syntax, and a query with no word matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# One character beyond ASCII, or an ASCII letter or digit, is part of a word: written as
# "not an ASCII non-alphanumeric", which compiles in 0.1 ms where the range up to
# U+10FFFF takes 3-6 ms of every command's start.
_WORD = re.compile(r"[^\x00-/:-@\[-`{-\x7f]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# PostgreSQL keeps the first WORD_CHARS characters of a word (a lexeme has a size limit):
# a query word is cut to the same length, so "starts with" answers the same on both sides.
WORD_CHARS = 255
# Only the head of a long purpose is searchable (a tsvector has a size limit too).
PURPOSE_CHARS = 100_000
# Words a query may have: each is one more term for the database to match and join (work
# that grows faster than the words), and no real search names more.
QUERY_WORDS = 64


def query_words(text: str) -> list[str]:
    """The distinct words of a query, in order of first appearance."""
    words: dict[str, None] = {}
    for match in _WORD.finditer(text.translate(_ASCII_LOWER)):
        words.setdefault(match.group()[:WORD_CHARS], None)
    return list(words)


def fts5_match(words: list[str], terms: Mapping[str, list[str]] | None = None) -> str:
    """An FTS5 query: every word as a prefix, or, where *terms* gives them, as the
    index's words it begins (exactly, any of them; none: the word matches nothing). Words
    hold no '"', so quoting them is enough to keep FTS5 from reading any of them (AND,
    NEAR, ``*``, ``:``...) as syntax."""
    terms = terms or {}

    def one(word: str) -> str:
        exact = terms.get(word)
        if exact is None:
            return f'"{word}"*'
        return "(" + " OR ".join(f'"{term}"' for term in exact or [word]) + ")"

    return " AND ".join(map(one, words))


def prefix_end(word: str) -> str | None:
    """The first string after every string that begins with *word*, in code point order
    (which is UTF-8's byte order, SQLite's, and that of PostgreSQL's "C" collation); None
    when there is none."""
    for i in range(len(word) - 1, -1, -1):
        code = ord(word[i]) + 1
        if 0xD800 <= code <= 0xDFFF:  # (no surrogate is ever in UTF-8)
            code = 0xE000
        if code <= 0x10FFFF:
            return word[:i] + chr(code)
    return None


def tsquery(words: list[str], statuses: list[str]) -> str:
    """A PostgreSQL tsquery of the lexemes of schema/postgres/003 ("<status>:<word>"):
    every word as a prefix, in a file of one of *statuses*. Lexemes are quoted (a quote
    doubled, as the tsquery input syntax wants; words hold no quote or backslash anyway)."""

    def lexeme(status: str, word: str) -> str:
        return "'{}:{}':*".format(status, word.replace("'", "''"))

    return " & ".join("(" + " | ".join(lexeme(s, w) for s in statuses) + ")" for w in words)
