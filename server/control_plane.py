"""The control plane's shared state: settings, database, blobs, event logs."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from server import auth
from server.config import Settings
from server.events import EventLog
from server.rpc import caller, rpc
from server.store import records
from server.store.blobs import BlobStore
from server.store.db import connect
from tunewire.v1 import files_pb2


@dataclass
class ControlPlane:
    settings: Settings
    db: sqlite_utils.Database
    blobs: BlobStore
    events: EventLog
    # Trainer processes get this secret in their environment; WorkerService
    # accepts only it. A new one each start, so a trainer from before a restart
    # re-authenticates through its lease, never through an old key.
    worker_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # Set by the scheduler when it starts; creating or resuming a job calls it.
    wake_scheduler: Callable[[], None] = lambda: None

    @classmethod
    def open(cls, settings: Settings) -> ControlPlane:
        db = connect(settings.db_path)
        return cls(settings, db, BlobStore(settings.blob_dir), EventLog(db))

    def base_model_names(self) -> set[str]:
        # Imported here: trainer.models pulls in torch, which CLI commands
        # that only talk to the server should not pay for.
        from trainer.models import list_base_models

        return {model.name for model in list_base_models(self.settings.models_dir)}

    def save_file(self, record: files_pb2.File, org: str) -> None:
        records.put(
            self.db,
            "files",
            record,
            org=org,
            purpose=record.purpose,
            created_at=record.create_time.ToNanoseconds() / 1e9,
        )


# Public handlers: the caller is its API key, looked up once per call.
authenticated = rpc(lambda servicer, header: auth.caller(servicer.plane.db, header))


def caller_key() -> auth.ApiKey:
    """The API key of the call an `authenticated` handler serves."""
    return caller()


def caller_org() -> str:
    """The organization every object of the call is scoped to."""
    return caller_key().org
