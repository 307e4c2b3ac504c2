"""Numbered schema migrations; append only, never edit one that has shipped.

Records are stored as their protobuf message (`proto` column) next to the
columns that queries filter and order on, so the API shape has one source.
"""

MIGRATIONS: list[str] = [
    # 1: keys, files, jobs, events, checkpoints, models, exports
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        purpose INTEGER NOT NULL,
        created_at REAL NOT NULL,
        proto BLOB NOT NULL
    );
    CREATE INDEX files_by_org ON files (org, created_at DESC, id DESC);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        state INTEGER NOT NULL,
        created_at REAL NOT NULL,
        request_id TEXT,
        training_file TEXT NOT NULL,
        validation_file TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        lease_epoch INTEGER NOT NULL DEFAULT 0,
        lease_expires_at REAL,
        command INTEGER NOT NULL DEFAULT 0,
        proto BLOB NOT NULL
    );
    CREATE INDEX jobs_by_org ON jobs (org, created_at DESC, id DESC);
    CREATE INDEX jobs_by_state ON jobs (state, created_at);
    CREATE UNIQUE INDEX jobs_by_request ON jobs (org, request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE events (
        parent TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        dedupe_key TEXT,
        proto BLOB NOT NULL,
        PRIMARY KEY (parent, sequence)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX events_by_key ON events (parent, dedupe_key) WHERE dedupe_key IS NOT NULL;
    CREATE TABLE checkpoints (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        created_at REAL NOT NULL,
        path TEXT NOT NULL,
        proto BLOB NOT NULL,
        UNIQUE (job_id, step)
    );
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        job_id TEXT NOT NULL,
        checkpoint_id TEXT,
        created_at REAL NOT NULL,
        adapter_path TEXT NOT NULL,
        proto BLOB NOT NULL
    );
    CREATE INDEX models_by_org ON models (org, created_at DESC, id DESC);
    CREATE TABLE exports (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        model_id TEXT NOT NULL,
        format INTEGER NOT NULL,
        quantize_int8 INTEGER NOT NULL,
        created_at REAL NOT NULL,
        proto BLOB NOT NULL,
        UNIQUE (org, model_id, format, quantize_int8)
    );
    CREATE INDEX exports_by_org ON exports (org, created_at DESC, id DESC)
    """,
    # 2: exports are leased to workers like jobs: their state is a column the lease
    # queries read, and checkpoint paths and adapter paths become blob keys.
    """
    ALTER TABLE exports ADD COLUMN state INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE exports ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE exports ADD COLUMN lease_expires_at REAL;
    ALTER TABLE exports ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX exports_by_state ON exports (state, created_at)
    """,
    # 3: what a job's request_id was first used for, so a reuse with other parameters is
    # refused instead of answered with the first job (NULL for jobs created before).
    """
    ALTER TABLE jobs ADD COLUMN request_hash TEXT
    """,
    # 4: a checkpoint's files as registered (name -> bytes, JSON), and why it can no longer
    # be resumed from (NULL while it can), so a damaged one is skipped, not retried.
    """
    ALTER TABLE checkpoints ADD COLUMN files TEXT;
    ALTER TABLE checkpoints ADD COLUMN damaged TEXT
    """,
]
