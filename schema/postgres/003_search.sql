-- Search that stays fast as the catalog grows (step 003): the words of the purpose and
-- the path, for the text search, in a GIN-indexed tsvector.
--
-- A word is what backends/words.py says (and SQLite's FTS5 ascii tokenizer does): a run
-- of ASCII letters and digits and of characters beyond ASCII, ASCII letters folded to
-- lower case. It is spelled out here instead of using a text search configuration, whose
-- parser and case folding differ from SQLite's and depend on the database's locale. The
-- words are lexemes as they are (array_to_tsvector: no dictionary, no stemming), cut to
-- 255 characters (a lexeme has a size limit), from the first 100000 characters of the
-- purpose (so does a tsvector).
CREATE FUNCTION horace_words(purpose TEXT, file_path TEXT) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT array_to_tsvector(coalesce(array_agg(DISTINCT left(word, 255)), '{}'))
    FROM regexp_split_to_table(
        translate(coalesce(left(purpose, 100000), '') || ' ' || coalesce(file_path, ''),
                  'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
        '[\x01-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+'
    ) AS word
    WHERE word <> ''
$$;

ALTER TABLE horace_files
    ADD COLUMN words tsvector GENERATED ALWAYS AS (horace_words(purpose, file_path)) STORED;
CREATE INDEX horace_files_words ON horace_files USING GIN (words);
