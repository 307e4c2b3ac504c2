"""Numbered schema migrations; append only, never edit one that has shipped.

Records are stored as their protobuf message (`proto` column) next to the
columns that queries filter and order on, so the API shape has one source.
A migration is SQL (statements split at `;`), or a function of the database for
one that must read the stored messages; each runs in its own transaction.
"""

from collections.abc import Callable

import sqlite_utils

from tunewire.v1 import events_pb2


def _lists_by_cursor(db: sqlite_utils.Database) -> None:
    """Filters and cursors every list needs, each answered from an index:
    files by purpose; listed (non-checkpoint) models; checkpoints by job; jobs by a
    metadata pair (`job_metadata`, kept by triggers); jobs counted per org
    (`job_counts`, for total_size); events by id (OpenAI's `after`) and by type."""
    for statement in (
        "CREATE INDEX files_by_purpose ON files (org, purpose, created_at DESC, id DESC)",
        "CREATE INDEX models_listed ON models (org, created_at DESC, id DESC)"
        " WHERE checkpoint_id IS NULL",
        "CREATE INDEX checkpoints_by_job ON checkpoints (job_id, created_at DESC, id DESC)",
        """CREATE TABLE job_metadata (
            job_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            org TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (job_id, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX job_metadata_by_pair"
        " ON job_metadata (org, key, value, created_at DESC, job_id DESC)",
        """CREATE TRIGGER job_metadata_on_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO job_metadata (job_id, key, value, org, created_at)
            SELECT NEW.id, key, value, NEW.org, NEW.created_at FROM json_each(NEW.metadata);
        END""",
        """CREATE TRIGGER job_metadata_on_update AFTER UPDATE OF metadata ON jobs BEGIN
            DELETE FROM job_metadata WHERE job_id = NEW.id;
            INSERT INTO job_metadata (job_id, key, value, org, created_at)
            SELECT NEW.id, key, value, NEW.org, NEW.created_at FROM json_each(NEW.metadata);
        END""",
        "INSERT INTO job_metadata (job_id, key, value, org, created_at)"
        " SELECT jobs.id, pair.key, pair.value, jobs.org, jobs.created_at"
        " FROM jobs, json_each(jobs.metadata) AS pair",
        "CREATE TABLE job_counts (org TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        """CREATE TRIGGER job_counts_on_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO job_counts (org, n) VALUES (NEW.org, 1)
            ON CONFLICT (org) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER job_counts_on_delete AFTER DELETE ON jobs BEGIN
            UPDATE job_counts SET n = n - 1 WHERE org = OLD.org;
        END""",
        "INSERT INTO job_counts (org, n) SELECT org, COUNT(*) FROM jobs GROUP BY org",
        "ALTER TABLE events ADD COLUMN id TEXT",
        "ALTER TABLE events ADD COLUMN type INTEGER NOT NULL DEFAULT 0",
    ):
        db.execute(statement)
    position: tuple[str, int] = ("", 0)
    while rows := db.execute(
        "SELECT parent, sequence, proto FROM events WHERE (parent, sequence) > (?, ?)"
        " ORDER BY parent, sequence LIMIT 5000",
        position,
    ).fetchall():
        position = rows[-1][:2]
        db.conn.executemany(
            "UPDATE events SET id = ?, type = ? WHERE parent = ? AND sequence = ?",
            [
                (event.id, event.type, parent, sequence)
                for parent, sequence, proto in rows
                for event in [events_pb2.Event.FromString(proto)]
            ],
        )
    db.execute("CREATE UNIQUE INDEX events_by_id ON events (id)")
    db.execute("CREATE INDEX events_by_type ON events (parent, type, sequence)")


def _deleted_jobs(db: sqlite_utils.Database) -> None:
    """Deleted jobs (DeleteJob): marked, not removed, because a cancelled trainer may
    still be reporting on one; lists read a partial index of the others, and a deletion
    leaves the org's count and the metadata index, so neither sees it again."""
    for statement in (
        "ALTER TABLE jobs ADD COLUMN deleted_at REAL",
        "CREATE INDEX jobs_listed ON jobs (org, created_at DESC, id DESC) WHERE deleted_at IS NULL",
        """CREATE TRIGGER jobs_on_delete AFTER UPDATE OF deleted_at ON jobs
        WHEN OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL BEGIN
            UPDATE job_counts SET n = n - 1 WHERE org = NEW.org;
            DELETE FROM job_metadata WHERE job_id = NEW.id;
        END""",
    ):
        db.execute(statement)


def _conversations(db: sqlite_utils.Database) -> None:
    """Conversations (ConversationService): one row each; their messages in a table of
    their own, appended without rewriting the conversation, paged by sequence and removed
    with it; and a count per org kept by triggers, for total_size. A function, as the
    triggers' bodies hold `;`."""
    for statement in (
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            created_at REAL NOT NULL,
            job_id TEXT,
            proto BLOB NOT NULL
        )""",
        "CREATE INDEX conversations_by_org ON conversations (org, created_at DESC, id DESC)",
        """CREATE TABLE conversation_messages (
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            sequence INTEGER NOT NULL,
            proto BLOB NOT NULL,
            PRIMARY KEY (conversation_id, sequence)
        ) WITHOUT ROWID""",
        "CREATE TABLE conversation_counts (org TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        """CREATE TRIGGER conversation_counts_on_insert AFTER INSERT ON conversations BEGIN
            INSERT INTO conversation_counts (org, n) VALUES (NEW.org, 1)
            ON CONFLICT (org) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER conversation_counts_on_delete AFTER DELETE ON conversations BEGIN
            UPDATE conversation_counts SET n = n - 1 WHERE org = OLD.org;
        END""",
    ):
        db.execute(statement)


MIGRATIONS: list[str | Callable[[sqlite_utils.Database], None]] = [
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
    # 5: every list costs the same at 100 and at 100,000 rows (see _lists_by_cursor).
    _lists_by_cursor,
    # 6: webhooks (endpoints; deliveries, the outbox that the sender drains and the log
    # their owners read) and sealed secrets (server/secrets.py), kept apart from the rows
    # they belong to.
    """
    CREATE TABLE secrets (
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (owner, name)
    ) WITHOUT ROWID;
    CREATE TABLE webhook_endpoints (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        created_at REAL NOT NULL,
        proto BLOB NOT NULL
    );
    CREATE INDEX webhook_endpoints_by_org ON webhook_endpoints (org, created_at DESC, id DESC);
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        state INTEGER NOT NULL,
        created_at REAL NOT NULL,
        next_attempt_at REAL,
        proto BLOB NOT NULL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
    CREATE INDEX webhook_deliveries_by_endpoint
        ON webhook_deliveries (endpoint_id, created_at DESC, id DESC)
    """,
    # 7: DeleteJob (see _deleted_jobs).
    _deleted_jobs,
    # 8: conversations (see _conversations).
    _conversations,
    # 9: uploads sent in parts (UploadService): the upload, and its parts (their bytes are
    # blobs, uploads/<upload id>/<part id>); pending uploads by expiry, for the sweep.
    """
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        state INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        proto BLOB NOT NULL
    );
    CREATE INDEX uploads_by_expiry ON uploads (state, expires_at);
    CREATE TABLE upload_parts (
        id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
        bytes INTEGER NOT NULL,
        proto BLOB NOT NULL
    );
    CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id)
    """,
]
