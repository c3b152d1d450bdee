-- A new file's words are written by the statements that insert files (backends/sqlite.py,
-- _insert_words), no longer by a trigger (step 003's horace_words_insert). A trigger that
-- writes makes SQLite keep a statement journal for each row inserted: copies of every page
-- the row touches, in horace_files' eight indexes, horace_word_keys and the FTS5 table. A
-- first scan of 10,000 files spent three times as long in it as in the inserts themselves.
-- The keys and words are the same as the trigger made; the delete and update triggers stay.
DROP TRIGGER horace_words_insert;
