-- Search that stays fast as the catalog grows (step 003).
--
-- Words of the purpose and the path, for the text search, in a GIN-indexed tsvector.
-- A word is what backends/words.py says (and SQLite's FTS5 ascii tokenizer does): a run
-- of ASCII letters and digits and of characters beyond ASCII, ASCII letters folded to
-- lower case. It is spelled out here instead of using a text search configuration, whose
-- parser and case folding differ from SQLite's and depend on the database's locale. The
-- words are lexemes as they are (array_to_tsvector: no dictionary, no stemming), cut to
-- 255 characters (a lexeme has a size limit), from the first 100000 characters of the
-- purpose (so does a tsvector). Each lexeme is "<status>:<word>", so that a search of one
-- status is a single index condition: its count needs no visit to the rows.
CREATE FUNCTION horace_words(status TEXT, purpose TEXT, file_path TEXT) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT array_to_tsvector(coalesce(array_agg(DISTINCT status || ':' || left(word, 255)), '{}'))
    FROM regexp_split_to_table(
        translate(coalesce(left(purpose, 100000), '') || ' ' || coalesce(file_path, ''),
                  'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
        '[\x01-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+'
    ) AS word
    WHERE word <> ''
$$;

ALTER TABLE horace_files
    ADD COLUMN words tsvector GENERATED ALWAYS AS (horace_words(status, purpose, file_path)) STORED;
CREATE INDEX horace_files_words ON horace_files USING GIN (words);

-- Owner and path searches count and order their matches from these indexes alone (the
-- status, created_at and id are in them; an index-only scan where the visibility map
-- allows), reading only the page's rows.
DROP INDEX horace_files_owner_created;
CREATE INDEX horace_files_owner_search ON horace_files (owner, status, created_at, id);
CREATE INDEX horace_files_path_search ON horace_files (file_path, status, created_at, id);

-- Tags, one row each, with the file's status and created_at: a tag search counts and
-- reads its page (newest first) from the primary key's index alone.
CREATE TABLE horace_file_tags (
    tag        TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    file_id    UUID NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, status, created_at, file_id)
);
CREATE INDEX horace_file_tags_file ON horace_file_tags (file_id);
INSERT INTO horace_file_tags (tag, status, created_at, file_id)
SELECT DISTINCT t.tag, f.status, f.created_at, f.id FROM horace_files f, unnest(f.tags) AS t (tag);

-- The lexemes of horace_files.words, one row each: a words search counts its matches in
-- this index alone (counting through the GIN index visits every matching row).
CREATE TABLE horace_file_words (
    lexeme  TEXT COLLATE "C" NOT NULL,  -- "<status>:<word>"; code point order for prefixes
    file_id UUID NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    PRIMARY KEY (lexeme, file_id)
);
CREATE INDEX horace_file_words_file ON horace_file_words (file_id);
INSERT INTO horace_file_words (lexeme, file_id)
SELECT l.lexeme, f.id FROM horace_files f, unnest(tsvector_to_array(f.words)) AS l (lexeme);

-- Both kept in step with horace_files by the triggers below.
CREATE FUNCTION horace_search_rows_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO horace_file_tags (tag, status, created_at, file_id)
    SELECT DISTINCT t.tag, n.status, n.created_at, n.id FROM new_files n, unnest(n.tags) AS t (tag);
    INSERT INTO horace_file_words (lexeme, file_id)
    SELECT l.lexeme, n.id FROM new_files n, unnest(tsvector_to_array(n.words)) AS l (lexeme);
    RETURN NULL;
END
$$;
CREATE TRIGGER horace_search_rows_inserted AFTER INSERT ON horace_files
REFERENCING NEW TABLE AS new_files
FOR EACH STATEMENT EXECUTE FUNCTION horace_search_rows_inserted();

-- (created_at never changes: no unit of work updates it.)
CREATE FUNCTION horace_search_rows_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most updates (a new version, say) change neither the tags, the status nor the words.
    DELETE FROM horace_file_tags t USING old_files o JOIN new_files n ON n.id = o.id
    WHERE t.file_id = o.id AND (n.tags IS DISTINCT FROM o.tags OR n.status IS DISTINCT FROM o.status);
    INSERT INTO horace_file_tags (tag, status, created_at, file_id)
    SELECT DISTINCT t.tag, n.status, n.created_at, n.id
    FROM old_files o JOIN new_files n ON n.id = o.id, unnest(n.tags) AS t (tag)
    WHERE n.tags IS DISTINCT FROM o.tags OR n.status IS DISTINCT FROM o.status;
    DELETE FROM horace_file_words w USING old_files o JOIN new_files n ON n.id = o.id
    WHERE w.file_id = o.id AND n.words IS DISTINCT FROM o.words;
    INSERT INTO horace_file_words (lexeme, file_id)
    SELECT l.lexeme, n.id
    FROM old_files o JOIN new_files n ON n.id = o.id, unnest(tsvector_to_array(n.words)) AS l (lexeme)
    WHERE n.words IS DISTINCT FROM o.words;
    RETURN NULL;
END
$$;
CREATE TRIGGER horace_search_rows_updated AFTER UPDATE ON horace_files
REFERENCING OLD TABLE AS old_files NEW TABLE AS new_files
FOR EACH STATEMENT EXECUTE FUNCTION horace_search_rows_updated();
