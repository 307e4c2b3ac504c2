"""The model registry: fine-tuned models (final and per checkpoint), where their adapters
live in the blob store, and the one lookup from a model name to (base model, adapter)
that training, exports and generation all use.

Workers write adapters into the blob store and report their files, sizes and digests;
registering a model is a row, never a copy or a hash on the control plane's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from server.errors import FailedPrecondition, InvalidArgument, NotFound
from server.ids import now, timestamp
from server.store.blobs import BlobStore
from tunewire.v1 import common_pb2, jobs_pb2, models_pb2

FineTunedModel = models_pb2.FineTunedModel
MODELS = "models"
"""Blob prefix of the model store: `models/<job>/final`, `models/<job>/ckpt-step-N`."""
ADAPTER_CONFIG = "adapter_config.json"


def model_name(job: jobs_pb2.Job) -> str:
    return f"ft:{job.base_model}:{job.organization}:{job.suffix}:{job.id}"


def adapter_prefix(job_id: str) -> str:
    return f"{MODELS}/{job_id}"


@dataclass(frozen=True)
class Target:
    """What a model name stands for: a base model, with an adapter unless it is one."""

    base_model: str
    adapter: str = ""
    """The adapter's directory key; empty for a base model itself."""


def register(
    db: sqlite_utils.Database,
    job: jobs_pb2.Job,
    name: str,
    adapter: str,
    files: list[common_pb2.Artifact],
    checkpoint_id: str = "",
) -> FineTunedModel:
    """Record model `name` with its adapter at key `adapter`; in a write transaction."""
    model = FineTunedModel(
        id=name,
        base_model=job.base_model,
        job_id=job.id,
        checkpoint_id=checkpoint_id,
        state=FineTunedModel.STATE_READY,
        organization=job.organization,
        create_time=timestamp(now()),
        artifacts=files,
    )
    db["models"].upsert(
        {
            "id": name,
            "org": job.organization,
            "job_id": job.id,
            "checkpoint_id": checkpoint_id or None,
            "created_at": now(),
            "adapter_path": adapter,
            "proto": model.SerializeToString(),
        },
        pk="id",
    )
    return model


def fine_tuned(db: sqlite_utils.Database, org: str, model_id: str) -> Target | None:
    """The fine-tuned (or checkpoint) model `model_id` of `org`, or None."""
    row = db.execute(
        "SELECT adapter_path, proto FROM models WHERE id = ? AND org = ?", [model_id, org]
    ).fetchone()
    if row is None:
        return None
    return Target(FineTunedModel.FromString(row[1]).base_model, row[0])


def resolve(
    db: sqlite_utils.Database,
    blobs: BlobStore,
    org: str,
    model_id: str,
    base_models: dict[str, str],
    field: str = "model_id",
) -> Target:
    """A fine-tuned model whose adapter is in place, or a base model (`base_models`:
    name -> architecture); raises NotFound, FailedPrecondition."""
    target = fine_tuned(db, org, model_id)
    if target is not None:
        if not blobs.exists(f"{target.adapter}/{ADAPTER_CONFIG}"):
            raise FailedPrecondition(f"the adapter of model {model_id!r} is gone")
        return target
    if model_id not in base_models:
        raise NotFound("model", model_id)
    from trainer.models import is_causal_lm  # reads names only, no torch

    if not is_causal_lm(base_models[model_id]):
        raise InvalidArgument.field(
            field, f"{model_id!r} is an encoder; generation needs a causal LM"
        )
    return Target(model_id)


@dataclass(frozen=True)
class Deleted:
    """What deleting a model let go of: the blobs to remove once the rows are gone."""

    adapters: list[str]
    """Adapter keys of every model deleted, for inference workers to unload."""
    blobs: list[str]
    """Keys to remove: the job's whole model store with its final model (else the one
    checkpoint's adapter), and the output of every export of them."""


def delete(db: sqlite_utils.Database, model_id: str, export_key: Callable[[str], str]) -> Deleted:
    """Forget model `model_id` and everything that would still serve it: a job's final
    model takes its checkpoint models with it, and every export of a deleted model goes
    too (`export_key`: an export id -> its output's key). In a write transaction."""
    job_id, checkpoint_id = db.execute(
        "SELECT job_id, checkpoint_id FROM models WHERE id = ?", [model_id]
    ).fetchone()
    if checkpoint_id is None:
        sql, params = "SELECT id, adapter_path FROM models WHERE job_id = ?", [job_id]
    else:
        sql, params = "SELECT id, adapter_path FROM models WHERE id = ?", [model_id]
    rows = db.execute(sql, params).fetchall()
    ids = [row[0] for row in rows]
    marks = ",".join("?" * len(ids))
    exports = [
        row[0] for row in db.execute(f"SELECT id FROM exports WHERE model_id IN ({marks})", ids)
    ]
    if exports:
        export_marks = ",".join("?" * len(exports))
        db.execute(f"DELETE FROM events WHERE parent IN ({export_marks})", exports)
        db.execute(f"DELETE FROM exports WHERE id IN ({export_marks})", exports)
    db.execute(f"DELETE FROM models WHERE id IN ({marks})", ids)
    adapters = [row[1] for row in rows]
    # Only what the model store holds, never another key.
    store = [adapter_prefix(job_id)] if checkpoint_id is None else adapters
    owned = [key for key in store if key.startswith(f"{MODELS}/")]
    return Deleted(adapters, owned + [export_key(e) for e in exports])
