-- Horace catalog, PostgreSQL.
CREATE TABLE horace_files (
    id              UUID PRIMARY KEY,
    file_path       TEXT COLLATE "C" NOT NULL UNIQUE,  -- code point order, as SQLite
    owner           TEXT,
    purpose         TEXT,
    tags            TEXT[] NOT NULL DEFAULT '{}',
    size            BIGINT NOT NULL,
    mime_type       TEXT NOT NULL,
    checksum        TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'archived', 'deleted')),
    current_version INTEGER NOT NULL,
    correlation_id  TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    deleted_at      TIMESTAMPTZ,
    metadata        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX horace_files_tags ON horace_files USING GIN (tags);
CREATE INDEX horace_files_status_created ON horace_files (status, created_at);
CREATE INDEX horace_files_status_updated ON horace_files (status, updated_at);
CREATE INDEX horace_files_status_size ON horace_files (status, size);
CREATE INDEX horace_files_owner_created ON horace_files (owner, created_at);
CREATE INDEX horace_files_checksum ON horace_files (checksum);
CREATE INDEX horace_files_correlation ON horace_files (correlation_id);

CREATE TABLE horace_versions (
    file_id               UUID NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    version               INTEGER NOT NULL,
    checksum              TEXT NOT NULL,
    size                  BIGINT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    restored_from_version INTEGER,
    correlation_id        TEXT,
    PRIMARY KEY (file_id, version)
);
CREATE INDEX horace_versions_checksum ON horace_versions (checksum);

CREATE TABLE horace_collections (
    name        TEXT PRIMARY KEY,
    description TEXT,
    metadata    JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE horace_collection_members (
    collection TEXT NOT NULL REFERENCES horace_collections (name) ON DELETE CASCADE,
    file_id    UUID NOT NULL REFERENCES horace_files (id) ON DELETE CASCADE,
    added_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (collection, file_id)
);
CREATE INDEX horace_collection_members_file ON horace_collection_members (file_id);

CREATE TABLE conversations (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id UUID NOT NULL,
    turn_number     INTEGER NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    model           TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    timing_ms       DOUBLE PRECISION,
    metadata        JSONB NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (conversation_id, turn_number)
);
