"""A small synchronous client for the CLI (and tests): channel, key, stubs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from tunewire.v1 import (
    auth_pb2_grpc,
    exports_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    jobs_pb2_grpc,
    models_pb2_grpc,
)

CHUNK = 1024 * 1024
PURPOSES = {
    "fine-tune": files_pb2.File.PURPOSE_FINE_TUNE,
    "user-data": files_pb2.File.PURPOSE_USER_DATA,
}


def default_key(home: Path) -> str | None:
    """TUNEWIRE_API_KEY, else the first key the server saved under its home."""
    key = os.environ.get("TUNEWIRE_API_KEY")
    if key:
        return key
    path = home / "api-key"
    return path.read_text().strip() if path.exists() else None


@dataclass
class Client:
    address: str
    api_key: str | None

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)
        self.exports = exports_pb2_grpc.ExportServiceStub(self.channel)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.api_key}")] if self.api_key else []

    def upload(self, path: Path, purpose: int, filename: str | None = None) -> files_pb2.File:
        def requests() -> Iterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(
                    filename=filename or path.name, purpose=purpose
                )
            )
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield files_pb2.UploadFileRequest(chunk=chunk)

        return self.files.UploadFile(requests(), metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
