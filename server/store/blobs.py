"""The blob store: uploads, checkpoints, adapters and exports under string keys
(`files/file-0123`, `models/ftjob-0123/final/adapter_config.json`), in a local directory
by default or at any fsspec URL (`s3://bucket/tunewire`, `gs://...`, a shared mount).

Every process that touches blobs goes through this one interface: the control plane
(uploads, downloads) and the workers (training data in, checkpoints, adapters and
exports out), so a worker on another machine needs only the store's URL. Writes land
under a temporary key and are renamed into place, so a reader never sees a half-written
blob; a directory is written whole (`put_dir`) or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tunewire.v1 import common_pb2

CHUNK = 1024 * 1024
TMP = "tmp"


class BlobWriter:
    """Streams bytes to a temporary blob, hashing as it goes; `commit` renames it."""

    def __init__(self, store: BlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.tmp = f"{TMP}/{key.replace('/', '-')}.{secrets.token_hex(4)}.part"
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = store.fs.open(store._full(self.tmp), "wb")
        self._followed = False
        self._synced = False

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        if self._followed:
            self._file.flush()  # what is written is readable at once

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def follow(self) -> str | None:
        """The local path of the file being written, for another process to read it while
        it is written (every write is in the file when it returns); gone once the blob is
        committed or discarded. None when the store is not local."""
        if not self.store.is_local:
            return None
        self._followed = True
        return self.store._full(self.tmp)

    def sync(self) -> None:
        """Flush and fsync what is written, so that `commit` only renames. It blocks for as
        long as the disk takes (a quarter of a second for a gigabyte), so a server runs it
        in a thread, where it may overlap other waiting; it fsyncs a descriptor of its own,
        as the upload may be discarded meanwhile."""
        self._file.flush()
        if self.store.is_local:
            fd = os.dup(self._file.fileno())
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._synced = True

    def commit(self) -> str:
        """Make the blob visible under its key (synced first, unless it is); returns the key."""
        if not self._synced:
            self.sync()
        self._file.close()
        self.store._rename(self.tmp, self.key)
        return self.key

    def discard(self) -> None:
        # Closing flushes, which fails again on a full disk: the file goes all the same.
        with contextlib.suppress(OSError):
            self._file.close()
        self.store.delete(self.tmp)


class BlobStore:
    """Blobs under `url/<key>`, temporary ones under `url/tmp`."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        text = os.fspath(url)
        self.fs, root = fsspec.core.url_to_fs(text)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") if not self.is_local else str(Path(root).resolve())
        self.url = self.root if self.is_local else text.rstrip("/")
        self.fs.makedirs(self._full(TMP), exist_ok=True)

    def _full(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a blob key: {key!r}")
        return f"{self.root}/{key}"

    def _rename(self, source: str, target: str) -> None:
        parent = self._full(target).rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            os.replace(self._full(source), self._full(target))  # atomic, file or directory
        else:
            self.fs.mv(self._full(source), self._full(target), recursive=True)

    # --- single blobs -----------------------------------------------------------------

    def writer(self, key: str) -> BlobWriter:
        return BlobWriter(self, key)

    def open(self, key: str) -> IO[bytes]:
        return self.fs.open(self._full(key), "rb")

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._full(key))

    def delete(self, key: str) -> None:
        """Delete a blob or a directory of blobs; a missing one is no error."""
        full = self._full(key)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    def list_dirs(self, prefix: str) -> list[str]:
        """The keys of the directories right under `prefix` (none if it is missing)."""
        full = self._full(prefix)
        if not self.fs.exists(full):
            return []
        return sorted(
            f"{prefix}/{entry['name'].rstrip('/').rsplit('/', 1)[-1]}"
            for entry in self.fs.ls(full, detail=True)
            if entry["type"] == "directory"
        )

    def sizes(self, key: str) -> dict[str, int]:
        """The blobs under directory `key` by path relative to it, with their sizes;
        empty when there is no such directory."""
        full = self._full(key)
        if not self.fs.isdir(full):
            return {}
        found = self.fs.find(full, detail=True)
        return {path[len(full) + 1 :]: int(info["size"]) for path, info in found.items()}

    def stale(self, prefix: str, before: float) -> list[str]:
        """The keys right under `prefix` (blobs or directories) last modified before
        `before`, a Unix time; one whose time the store cannot tell is left out."""
        full = self._full(prefix)
        if not self.fs.exists(full):
            return []
        found = []
        for entry in self.fs.ls(full, detail=True):
            key = f"{prefix}/{entry['name'].rstrip('/').rsplit('/', 1)[-1]}"
            try:
                modified = self.fs.modified(self._full(key)).timestamp()
            except (OSError, NotImplementedError):
                continue
            if modified < before:
                found.append(key)
        return found

    def local_path(self, key: str) -> Path | None:
        """The key's path on this machine's file system, when the store is a local
        directory (so readers need no copy); None for a remote store."""
        return Path(self._full(key)) if self.is_local else None

    def read_chunks(self, key: str, total_bytes: int, sha256: str) -> Iterator[common_pb2.Chunk]:
        """A blob as download chunks: each with its offset and the total size, the last
        with the whole blob's sha256. An empty blob is one empty chunk (it still carries
        the sha256)."""
        offset = 0
        with self.open(key) as blob:
            while (data := blob.read(CHUNK)) or offset == 0:
                last = offset + len(data) >= total_bytes
                yield common_pb2.Chunk(
                    data=data,
                    offset=offset,
                    total_bytes=total_bytes,
                    sha256=sha256 if last else "",
                )
                offset += len(data)
                if last:
                    return

    # --- directories ------------------------------------------------------------------

    def put_dir(
        self, source: Path, key: str, only: tuple[str, ...] | None = None
    ) -> list[common_pb2.Artifact]:
        """Copy the local directory `source` (or just the files `only`) to `key`, whole or
        not at all, hashing each file on the way; returns the artifacts. A key that
        exists already is kept as it is (a retried report writes the same files)."""
        names = (
            sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
            if only is None
            else sorted(only)
        )
        staging = f"{TMP}/{key.replace('/', '-')}.{secrets.token_hex(4)}"
        produced = []
        try:
            for name in names:
                writer = BlobWriter(self, f"{staging}/{name}")
                with open(source / name, "rb") as f:
                    while block := f.read(CHUNK):
                        writer.write(block)
                writer.commit()
                produced.append(
                    common_pb2.Artifact(path=name, bytes=writer.size, sha256=writer.sha256)
                )
            if not self.exists(key):
                self._rename(staging, key)
        finally:
            self.delete(staging)
        return produced

    def get_dir(self, key: str, cache: Path) -> Path:
        """A local directory holding `key`'s files: the blobs themselves for a local store,
        else a copy downloaded once into `cache/<key>` (renamed into place when whole)."""
        if (local := self.local_path(key)) is not None:
            return local
        target = cache / key
        if target.is_dir():
            return target
        staging = cache / TMP / f"{key.replace('/', '-')}.{secrets.token_hex(4)}"
        self.fs.get(self._full(key) + "/", str(staging), recursive=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process (a rank beside this one) placed it first
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def get_file(self, key: str, cache: Path) -> Path:
        """A local path holding blob `key` (the blob itself for a local store)."""
        if (local := self.local_path(key)) is not None:
            return local
        target = cache / key
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            self.fs.get(self._full(key), str(staging))
            os.replace(staging, target)
        return target
