-- Horace catalog, SQLite. Timestamps are ISO 8601 UTC text of fixed width, so they sort.
CREATE TABLE horace_files (
    id              TEXT PRIMARY KEY,
    file_path       TEXT NOT NULL UNIQUE,
    owner           TEXT,
    purpose         TEXT,
    tags            TEXT NOT NULL DEFAULT '[]',   -- JSON array; searched through horace_file_tags
    size            INTEGER NOT NULL,
    mime_type       TEXT NOT NULL,
    checksum        TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'archived', 'deleted')),
    current_version INTEGER NOT NULL,
    correlation_id  TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX horace_files_status_created ON horace_files (status, created_at);
CREATE INDEX horace_files_status_updated ON horace_files (status, updated_at);
CREATE INDEX horace_files_status_size ON horace_files (status, size);
CREATE INDEX horace_files_owner_created ON horace_files (owner, created_at);
CREATE INDEX horace_files_checksum ON horace_files (checksum);
CREATE INDEX horace_files_correlation ON horace_files (correlation_id);

CREATE TABLE horace_file_tags (
    tag     TEXT NOT NULL,
    file_id TEXT NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, file_id)
) WITHOUT ROWID;
CREATE INDEX horace_file_tags_file ON horace_file_tags (file_id);

CREATE TABLE horace_versions (
    file_id               TEXT NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    version               INTEGER NOT NULL,
    checksum              TEXT NOT NULL,
    size                  INTEGER NOT NULL,
    created_at            TEXT NOT NULL,
    restored_from_version INTEGER,
    correlation_id        TEXT,
    PRIMARY KEY (file_id, version)
) WITHOUT ROWID;
CREATE INDEX horace_versions_checksum ON horace_versions (checksum);

CREATE TABLE horace_collections (
    name        TEXT PRIMARY KEY,
    description TEXT,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE horace_collection_members (
    collection TEXT NOT NULL REFERENCES horace_collections (name) ON DELETE CASCADE,
    file_id    TEXT NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    added_at   TEXT NOT NULL,
    PRIMARY KEY (collection, file_id)
) WITHOUT ROWID;
CREATE INDEX horace_collection_members_file ON horace_collection_members (file_id);

CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    turn_number     INTEGER NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    model           TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    timing_ms       REAL,
    metadata        TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL,
    UNIQUE (conversation_id, turn_number)
);
