"""The blob store: a local directory. Writes land under a temporary name and are
renamed into place, so a reader never sees a half-written blob."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from tunewire.v1 import common_pb2


class BlobWriter:
    """Streams bytes to a temporary file, hashing as it goes; `commit` renames it."""

    def __init__(self, tmp: Path, final: Path) -> None:
        self.tmp = tmp
        self.final = final
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = open(tmp, "wb")  # noqa: SIM115 - closed in commit/discard

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


CHUNK = 1024 * 1024


def read_chunks(path: Path, total_bytes: int, sha256: str) -> Iterator[common_pb2.Chunk]:
    """A blob as download chunks: each with its offset and the total size, the last
    with the whole blob's sha256. An empty blob is one empty chunk (it still
    carries the sha256)."""
    offset = 0
    with open(path, "rb") as blob:
        while (data := blob.read(CHUNK)) or offset == 0:
            last = offset + len(data) >= total_bytes
            yield common_pb2.Chunk(
                data=data, offset=offset, total_bytes=total_bytes, sha256=sha256 if last else ""
            )
            offset += len(data)
            if last:
                return


class BlobStore:
    """Blobs under `root/<kind>/<id>`, temporary files under `root/tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, ident: str) -> Path:
        return self.root / kind / ident

    def writer(self, kind: str, ident: str) -> BlobWriter:
        tmp = self.root / "tmp" / f"{ident}.{secrets.token_hex(4)}.part"
        return BlobWriter(tmp, self.path(kind, ident))

    def delete(self, kind: str, ident: str) -> None:
        self.path(kind, ident).unlink(missing_ok=True)
