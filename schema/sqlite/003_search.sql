-- Search that stays fast as the catalog grows (step 003).
--
-- Tags: each tag row carries its file's status and created_at, so that a tag search
-- counts and reads its page (newest first) from one index, without visiting the files.
ALTER TABLE horace_file_tags ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE horace_file_tags ADD COLUMN created_at TEXT NOT NULL DEFAULT '';
UPDATE horace_file_tags SET (status, created_at) =
    (SELECT f.status, f.created_at FROM horace_files f WHERE f.id = horace_file_tags.file_id);
CREATE INDEX horace_file_tags_search ON horace_file_tags (tag, status, created_at, file_id);
-- (created_at never changes: no unit of work updates it.)
CREATE TRIGGER horace_file_tags_follow AFTER UPDATE OF status ON horace_files
WHEN new.status IS NOT old.status
BEGIN
    UPDATE horace_file_tags SET status = new.status WHERE file_id = new.id;
END;

-- Owner and path searches count and order their matches from these indexes alone (the
-- status, created_at and id are in them), reading only the page's rows.
DROP INDEX horace_files_owner_created;
CREATE INDEX horace_files_owner_search ON horace_files (owner, status, created_at, id);
CREATE INDEX horace_files_path_search ON horace_files (file_path, status, created_at, id);

-- Words of the purpose and the path (backends/words.py says what a word is): a
-- contentless FTS5 table with the ascii tokenizer, kept in step by the triggers below.
--
-- A file's row in it is numbered by its key in horace_word_keys, which orders the index
-- the way a search pages by default:
--   bits 29..62  creation second, newest first: 2^34-1 - clamp(unix seconds, 0, 2^34-1)
--   bits  2..28  a sequence number among the files of that second
--   bits  0..1   status: 0 active, 1 archived, 2 deleted
-- so the newest matches come first (the status is checked on the key itself) and a search
-- reads only its page (and the rest of the last second it touches). The key is kept, not derived from the file's row,
-- so that removing a file's words never depends on its rowid.
-- The second's expression is repeated in backends/sqlite.py (_SECOND_SQL): keep both alike.
CREATE VIRTUAL TABLE horace_words USING fts5 (purpose, path, content = '', tokenize = 'ascii');
CREATE TABLE horace_word_keys (
    key     INTEGER PRIMARY KEY,
    file_id TEXT NOT NULL UNIQUE
);

INSERT INTO horace_word_keys (key, file_id)
SELECT (second << 29) | ((row_number() OVER (PARTITION BY second ORDER BY id) - 1) << 2) | code, id
FROM (
    SELECT id,
           17179869183 - min(max(CAST(strftime('%s', created_at) AS INTEGER), 0), 17179869183) AS second,
           CASE status WHEN 'active' THEN 0 WHEN 'archived' THEN 1 ELSE 2 END AS code
    FROM horace_files
);
INSERT INTO horace_words (rowid, purpose, path)
SELECT k.key, substr(f.purpose, 1, 100000), f.file_path
FROM horace_word_keys k JOIN horace_files f ON f.id = k.file_id;

CREATE TRIGGER horace_words_insert AFTER INSERT ON horace_files
BEGIN
    -- 2^27 files created in one second would run into the next second's keys: refuse.
    SELECT RAISE(ABORT, 'horace_word_keys: too many files created in one second')
    FROM (SELECT 17179869183 - min(max(CAST(strftime('%s', new.created_at) AS INTEGER), 0),
                                   17179869183) AS second) s
    WHERE (SELECT max(k.key) FROM horace_word_keys k
           WHERE k.key BETWEEN (s.second << 29) AND ((s.second << 29) | 536870911))
          >= ((s.second << 29) | 536870908);
    INSERT INTO horace_word_keys (key, file_id)
    SELECT coalesce(
               (SELECT (max(k.key) & ~3) + 4 FROM horace_word_keys k
                WHERE k.key BETWEEN (s.second << 29) AND ((s.second << 29) | 536870911)),
               s.second << 29
           ) | (CASE new.status WHEN 'active' THEN 0 WHEN 'archived' THEN 1 ELSE 2 END),
           new.id
    FROM (SELECT 17179869183 - min(max(CAST(strftime('%s', new.created_at) AS INTEGER), 0),
                                   17179869183) AS second) s;
    INSERT INTO horace_words (rowid, purpose, path)
    SELECT key, substr(new.purpose, 1, 100000), new.file_path FROM horace_word_keys
    WHERE file_id = new.id;
END;

CREATE TRIGGER horace_words_delete AFTER DELETE ON horace_files
BEGIN
    -- A contentless table forgets a row given the very values it indexed.
    INSERT INTO horace_words (horace_words, rowid, purpose, path)
    SELECT 'delete', key, substr(old.purpose, 1, 100000), old.file_path FROM horace_word_keys
    WHERE file_id = old.id;
    DELETE FROM horace_word_keys WHERE file_id = old.id;
END;

-- created_at never changes (no unit of work updates it): a file keeps its second.
CREATE TRIGGER horace_words_update AFTER UPDATE OF purpose, file_path, status ON horace_files
WHEN new.purpose IS NOT old.purpose OR new.file_path IS NOT old.file_path
  OR new.status IS NOT old.status
BEGIN
    INSERT INTO horace_words (horace_words, rowid, purpose, path)
    SELECT 'delete', key, substr(old.purpose, 1, 100000), old.file_path FROM horace_word_keys
    WHERE file_id = old.id;
    -- Same second and sequence number, the new status.
    UPDATE horace_word_keys
    SET key = (key & ~3) | (CASE new.status WHEN 'active' THEN 0 WHEN 'archived' THEN 1 ELSE 2 END)
    WHERE file_id = new.id;
    INSERT INTO horace_words (rowid, purpose, path)
    SELECT key, substr(new.purpose, 1, 100000), new.file_path FROM horace_word_keys
    WHERE file_id = new.id;
END;
