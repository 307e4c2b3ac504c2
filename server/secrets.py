"""Secrets the control plane must use later but never show again (webhook signing
secrets, tracking API keys): sealed with AES-256-GCM under a key kept in a file of the
data dir (`<home>/secret.key`, 0600, made on first use), in the `secrets` table, apart
from the records they belong to. A sealed value is bound to its owner and name, so it
cannot be moved to another row."""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

import sqlite_utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretBox:
    """Seals and opens values under one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, owner: str, name: str, value: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode(), f"{owner}/{name}".encode())

    def open(self, owner: str, name: str, sealed: bytes) -> str:
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, body, f"{owner}/{name}".encode()).decode()

    # --- the `secrets` table (call inside a write transaction for put/drop) ------------

    def put(self, db: sqlite_utils.Database, owner: str, name: str, value: str) -> None:
        db.execute(
            "INSERT OR REPLACE INTO secrets (owner, name, sealed) VALUES (?, ?, ?)",
            [owner, name, self.seal(owner, name, value)],
        )

    def get(self, db: sqlite_utils.Database, owner: str, name: str) -> str | None:
        row = db.execute(
            "SELECT sealed FROM secrets WHERE owner = ? AND name = ?", [owner, name]
        ).fetchone()
        return self.open(owner, name, row[0]) if row else None

    @staticmethod
    def drop(db: sqlite_utils.Database, owner: str) -> None:
        db.execute("DELETE FROM secrets WHERE owner = ?", [owner])


def _read_or_make_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return _read_or_make_key(path)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
            out.flush()
            os.fsync(out.fileno())
    if len(key) != KEY_BYTES:
        raise RuntimeError(f"{path} is not a {KEY_BYTES}-byte key; restore it or remove it")
    return key


@functools.cache
def box(key_path: Path) -> SecretBox:
    """The box for the key at `key_path` (made when missing)."""
    return SecretBox(_read_or_make_key(key_path))
