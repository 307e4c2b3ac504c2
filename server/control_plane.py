"""The control plane's shared state: settings, database, blobs, event logs, and the
doorbell that wakes workers waiting for work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from server import auth
from server.config import Settings
from server.errors import InvalidArgument
from server.events import EventLog
from server.rpc import caller, rpc
from server.serving import Serving
from server.store import records
from server.store.blobs import TMP, BlobStore
from server.store.db import connect
from tunewire.v1 import files_pb2, uploads_pb2, worker_pb2

Kind = worker_pb2.Lease.Kind
FILES = "files"  # uploads' blobs: files/<file id>
UPLOADS = "uploads"  # parts of uploads sent in parts: uploads/<upload id>/<part id>

log = logging.getLogger("tunewire.server")


class Doorbell:
    """Workers waiting in AcquireLease wait here; posting work rings it for all of them
    (each then tries to lease in a write transaction, so only one gets each piece)."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()

    def ring(self) -> None:
        self._rung.set()
        self._rung = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        rung = self._rung
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rung.wait(), timeout)


@dataclass
class ControlPlane:
    settings: Settings
    db: sqlite_utils.Database
    blobs: BlobStore
    events: EventLog
    serving: Serving
    # Workers present this secret; WorkerService accepts only it, and inference workers
    # accept only it from the control plane. A new one each start unless configured, so a
    # worker from before a restart can never report again.
    worker_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    doorbell: Doorbell = field(default_factory=Doorbell)
    # Worker id -> the lease it holds now: what a local executor kills when a lease is
    # lost, and what a worker process that exits had been doing.
    holding: dict[str, worker_pb2.Lease] = field(default_factory=dict)
    # Set by the scheduler when it starts: work of a kind was posted (a job created or
    # resumed, an export queued, generation asked for), so wake waiting workers and make
    # sure the executor has one of that kind.
    on_work: Callable[[int], None] = lambda kind: None
    # Set by the scheduler: a lease was granted, so its expiry is a new deadline to watch.
    on_lease: Callable[[], None] = lambda: None

    @classmethod
    def open(cls, settings: Settings) -> ControlPlane:
        db = connect(settings.db_path)
        blobs = BlobStore(settings.blobs)
        plane = cls(settings, db, blobs, EventLog(db), Serving(settings.lease_seconds))
        if settings.worker_token:
            plane.worker_token = settings.worker_token
        return plane

    def post(self, kind: int) -> None:
        """Work of `kind` is waiting (or its state changed): wake the workers."""
        self.doorbell.ring()
        self.on_work(kind)

    def wake_scheduler(self) -> None:
        """A job was created, cancelled or resumed."""
        self.post(Kind.KIND_TRAIN)

    def base_model_names(self) -> set[str]:
        """The usable base models; a broken entry of the models dir is left out (and
        logged), never an error for every caller."""
        from trainer.models import list_base_models  # reads configs only, no torch

        return {model.name for model in list_base_models(self.settings.models_dir)}

    def encoder_names(self) -> set[str]:
        """The usable base models that are encoders (they classify; the rest generate)."""
        from trainer.models import is_causal_lm, list_base_models

        return {
            model.name
            for model in list_base_models(self.settings.models_dir)
            if not is_causal_lm(model.architecture)
        }

    def check_base_model(self, name: str) -> None:
        """Refuse a base model that is in the models dir but cannot be used, saying why."""
        from trainer.models import scan_base_models

        _, refused = scan_base_models(self.settings.models_dir)
        if name in refused:
            raise InvalidArgument.field(
                "job.base_model", f"base model {name!r} cannot be used: {refused[name]}"
            )

    def sweep_abandoned_uploads(self, before: float) -> None:
        """Take away what uploads cut short by a crash left (a kill -9 mid-upload or
        mid-validation): temporary blobs, and stored files that never got their record.
        Only what is older than `before` (this start), so no write under way is touched."""
        known = {row[0] for row in self.db.execute("SELECT id FROM files")}
        doomed = [k for k in self.blobs.stale(FILES, before) if k.split("/")[-1] not in known]
        doomed += self.blobs.stale(TMP, before)
        # Parts: those of uploads no longer pending, and any stored without its row.
        pending = {
            row[0]
            for row in self.db.execute(
                "SELECT id FROM uploads WHERE state = ?", [uploads_pb2.Upload.STATE_PENDING]
            )
        }
        parts = {row[0] for row in self.db.execute("SELECT id FROM upload_parts")}
        for folder in self.blobs.list_dirs(UPLOADS):
            if folder.split("/")[-1] not in pending:
                doomed.append(folder)
            else:
                stale = self.blobs.stale(folder, before)
                doomed += [k for k in stale if k.split("/")[-1] not in parts]
        for key in doomed:
            self.blobs.delete(key)
        if doomed:
            log.warning("removed abandoned uploads", extra={"fields": {"blobs": len(doomed)}})

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
