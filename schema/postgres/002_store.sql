-- The store this catalog belongs to (SPEC §1): one row, written when the pair is bound.
-- The store records the same id in <root>/.horace/store.json; a pair that does not match
-- is refused before anything is read or repaired.
CREATE TABLE horace_store (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    store_id     UUID NOT NULL,
    storage_path TEXT NOT NULL,
    bound_at     TIMESTAMPTZ NOT NULL
);
