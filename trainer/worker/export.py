"""Export work: merge a fine-tuned model's adapter into its base (merged safetensors), or
merge and export it to ONNX checked against torch, and put the artifacts in the blob
store whole or not at all."""

from __future__ import annotations

import logging
import secrets
import shutil

from trainer import classifier, models
from trainer.merge import ExportError, merge_adapter
from trainer.onnx_export import export_adapter
from trainer.worker.lease import Lease, Outcome
from trainer.worker.train import Place
from tunewire.v1 import exports_pb2, worker_pb2

log = logging.getLogger("tunewire.worker")
Export = exports_pb2.Export


def run(lease: Lease, work: worker_pb2.ExportWork, place: Place) -> None:
    export, blobs = work.export, place.blobs
    try:
        base = models.resolve_model(place.models_dir, work.base_model)
    except ValueError:
        lease.fail("base_model_missing", f"base model {work.base_model!r} is not in the models dir")
        return
    if not blobs.exists(f"{work.adapter}/adapter_config.json"):
        lease.fail("adapter_missing", f"the adapter of model {export.model_id!r} is gone")
        return
    adapter = blobs.get_dir(work.adapter, place.cache)
    out = place.scratch / "exports" / f"{export.id}.{secrets.token_hex(4)}"
    diffs: dict[str, float] = {}
    # A classifier's adapter (its labels in its header) merges into a sequence classifier.
    is_classifier = classifier.read_head(adapter) is not None
    onnx = classifier.export_onnx if is_classifier else export_adapter
    merge = classifier.merge_adapter if is_classifier else merge_adapter
    try:
        if export.format == Export.FORMAT_ONNX:
            done = onnx(
                base, adapter, out, quantize_int8=export.quantize_int8, on_event=lease.event
            )
            diffs = {
                "max_logit_diff": done.max_logit_diff,
                "int8_max_logit_diff": done.int8_max_logit_diff or 0.0,
            }
        else:
            merge(base, adapter, out, lease.event)
        # What a failed earlier run of this export may have left.
        blobs.delete(work.output)
        artifacts = blobs.put_dir(out, work.output)
    except ExportError as error:
        lease.fail(error.code, str(error))
        return
    except Exception as error:  # noqa: BLE001 - an export must end in a state, never hang
        log.exception("export failed", extra={"fields": {"export": export.id}})
        lease.fail(
            "export_failed",
            f"export failed unexpectedly ({type(error).__name__}); the worker log has the details",
        )
        return
    finally:
        shutil.rmtree(out, ignore_errors=True)
    lease.call("ReportResult", outcome=Outcome.OUTCOME_SUCCEEDED, artifacts=artifacts, **diffs)
