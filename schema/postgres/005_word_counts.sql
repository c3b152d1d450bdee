-- How many files have each lexeme of horace_file_words: a search by one word whose prefix
-- range holds a single lexeme ("report", when no file has "reports") counts its matches as
-- the sum of the lexeme's rows here instead of reading an index entry per match.
-- Writers only add rows: +n for the lexemes a statement added, -n for those it removed, so
-- no writer waits on another for a count. The backend's upkeep (each periodic purge) folds
-- each lexeme's rows into one, dropping those that sum to nothing.
CREATE TABLE horace_word_counts (
    lexeme TEXT COLLATE "C" NOT NULL,  -- as horace_file_words.lexeme
    files  BIGINT NOT NULL
);
CREATE INDEX horace_word_counts_lexeme ON horace_word_counts (lexeme) INCLUDE (files);
INSERT INTO horace_word_counts (lexeme, files)
SELECT lexeme, count(*) FROM horace_file_words GROUP BY lexeme;

-- One function for both triggers: each names its transition table "changed". (The rows of a
-- file purged go by its foreign key's cascade, which fires the second.)
CREATE FUNCTION horace_word_counts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO horace_word_counts (lexeme, files)
    SELECT lexeme, CASE TG_OP WHEN 'INSERT' THEN count(*) ELSE -count(*) END FROM changed GROUP BY lexeme;
    RETURN NULL;
END
$$;
CREATE TRIGGER horace_word_counts_added AFTER INSERT ON horace_file_words
REFERENCING NEW TABLE AS changed
FOR EACH STATEMENT EXECUTE FUNCTION horace_word_counts_changed();
CREATE TRIGGER horace_word_counts_removed AFTER DELETE ON horace_file_words
REFERENCING OLD TABLE AS changed
FOR EACH STATEMENT EXECUTE FUNCTION horace_word_counts_changed();

-- Lexemes never change in place; a TRUNCATE would bypass the counts, so none is allowed.
CREATE FUNCTION horace_word_counts_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'horace_file_words: % would bypass horace_word_counts', TG_OP;
END
$$;
CREATE TRIGGER horace_word_counts_fixed BEFORE UPDATE OR TRUNCATE ON horace_file_words
FOR EACH STATEMENT EXECUTE FUNCTION horace_word_counts_fixed();
