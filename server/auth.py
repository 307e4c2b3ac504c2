"""API keys: random bearer tokens stored as sha256 hashes, one org each."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from server.errors import NotFound, Unauthenticated
from server.ids import new_id, now
from server.store.db import write

KEY_PREFIX = "tw-"
DEFAULT_ORG = "default"


def _hash(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is as safe as a slow one here.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: sqlite_utils.Database, org: str) -> str:
    """Create a key for `org` and return it; only its hash is stored."""
    if not org or len(org) > 64 or not org.replace("-", "").replace("_", "").isalnum():
        raise ValueError("org must be 1-64 characters of letters, digits, - and _")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with write(db):
        db["api_keys"].insert(
            {
                "id": new_id("key"),
                "org": org,
                "hash": _hash(key),
                "prefix": key[:10],
                "created_at": now(),
                "revoked_at": None,
            }
        )
    return key


def list_keys(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query("SELECT id, org, prefix, created_at, revoked_at FROM api_keys"))


def revoke_key(db: sqlite_utils.Database, key_id: str) -> None:
    with write(db):
        cursor = db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            [now(), key_id],
        )
        if cursor.rowcount == 0:
            raise NotFound("key", key_id)


def ensure_first_key(db: sqlite_utils.Database, path: Path) -> str | None:
    """On a first start with no keys, create one for org `default` and store it
    in a 0600 file, so a new user can start at once. Returns the new key."""
    if db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone():
        return None
    key = create_key(db, DEFAULT_ORG)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


@dataclass(frozen=True)
class ApiKey:
    """A live key, as a call presents it (never the key itself)."""

    id: str
    org: str
    prefix: str
    created_at: float


def caller(db: sqlite_utils.Database, authorization: str | None) -> ApiKey:
    """The live key of a `Bearer <key>` header value; UNAUTHENTICATED otherwise."""
    if not authorization:
        raise Unauthenticated("missing authorization metadata: send 'Bearer <api key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("authorization must be 'Bearer <api key>'")
    row = db.execute(
        "SELECT id, org, prefix, created_at FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
        [_hash(key.strip())],
    ).fetchone()
    if row is None:
        raise Unauthenticated("invalid or revoked API key")
    return ApiKey(*row)
