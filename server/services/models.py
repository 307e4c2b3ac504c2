"""ModelService: base models, fine-tuned models, generation.

Generation runs in an inference worker (`trainer.worker`, KIND_SERVE): this servicer
checks the request, resolves the model to (base, adapter) and streams the worker's
tokens through, so no forward pass ever runs in the control plane.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import empty_pb2

from server import exports, registry, request_ids
from server.control_plane import ControlPlane, authenticated, caller_org
from server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from server.store import pages, records
from server.store.db import write
from tunewire.v1 import exports_pb2, models_pb2, models_pb2_grpc, worker_pb2

log = logging.getLogger("tunewire.models")

BaseModel = models_pb2.BaseModel
FineTunedModel = models_pb2.FineTunedModel
Export = exports_pb2.Export
ROLES = ("system", "user", "assistant", "tool")
MAX_TOKENS = 4096
MAX_STOP = 4
MAX_INPUTS = 96  # Cohere's limit per classify call
MAX_INPUT_CHARS = 100_000
# The first request may wait for an inference worker to start and import torch.
SERVE_WAIT_SECONDS = 60.0
UNLOAD_SECONDS = 10.0


def check_generate(request: models_pb2.GenerateRequest) -> None:
    """Every problem with a Generate request, together; unset optional fields keep the
    documented defaults."""
    problems = []
    if not request.model_id:
        problems.append(("model_id", "required"))
    if bool(request.messages) == bool(request.prompt):
        problems.append(("messages", "give either messages or a prompt"))
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            problems.append((f"messages[{i}].role", f"must be one of {', '.join(ROLES)}"))
    checks = (
        ("max_tokens", lambda v: 1 <= v <= MAX_TOKENS, f"must be in [1, {MAX_TOKENS}]"),
        ("temperature", lambda v: 0 <= v <= 2, "must be in [0, 2]"),
        ("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    )
    for name, ok, why in checks:
        if request.HasField(name) and not ok(getattr(request, name)):
            problems.append((name, why))
    if len(request.stop) > MAX_STOP:
        problems.append(("stop", f"at most {MAX_STOP} sequences"))
    problems += [(f"stop[{i}]", "must not be empty") for i, s in enumerate(request.stop) if not s]
    if problems:
        raise InvalidArgument(problems)


def check_classify(request: models_pb2.ClassifyRequest) -> None:
    """Every problem with a Classify request, together."""
    problems = []
    if not request.model_id:
        problems.append(("model_id", "required"))
    if not 1 <= len(request.inputs) <= MAX_INPUTS:
        problems.append(("inputs", f"give 1 to {MAX_INPUTS} texts, not {len(request.inputs)}"))
    for i, text in enumerate(request.inputs):
        if not text.strip():
            problems.append((f"inputs[{i}]", "must not be empty"))
        elif len(text) > MAX_INPUT_CHARS:
            problems.append((f"inputs[{i}]", f"at most {MAX_INPUT_CHARS:,} characters"))
    if problems:
        raise InvalidArgument(problems)


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def _base_models(self) -> dict[str, str]:
        from trainer.models import list_base_models  # reads configs only, no torch

        return {m.name: m.architecture for m in list_base_models(self.plane.settings.models_dir)}

    def _inference_request(
        self, org: str, request: models_pb2.GenerateRequest
    ) -> worker_pb2.InferenceServiceGenerateRequest:
        """What the inference worker runs for `request`: an ONNX export, a fine-tuned (or
        checkpoint) model, or a base model, by name and blob key."""
        db = self.plane.db
        if request.export_id:
            export = records.get(db, "exports", Export, org, request.export_id)
            if export.format != Export.FORMAT_ONNX:
                raise InvalidArgument.field("export_id", "is not an ONNX export")
            if export.model_id != request.model_id:
                raise InvalidArgument.field(
                    "export_id", f"is an export of {export.model_id!r}, not of model_id"
                )
            if export.state != Export.STATE_SUCCEEDED:
                raise FailedPrecondition(f"export {export.id!r} has not succeeded")
            target = registry.fine_tuned(db, org, export.model_id) or registry.Target("")
            return worker_pb2.InferenceServiceGenerateRequest(
                base_model=target.base_model,
                onnx_export=exports.output_key(export.id),
                request=request,
            )
        target = registry.resolve(db, self.plane.blobs, org, request.model_id, self._base_models())
        return worker_pb2.InferenceServiceGenerateRequest(
            base_model=target.base_model, adapter=target.adapter, request=request
        )

    @authenticated
    async def ListBaseModels(self, request, context):
        from trainer.models import is_causal_lm, list_base_models  # configs only, no torch

        return models_pb2.ListBaseModelsResponse(
            base_models=[
                BaseModel(
                    id=m.name,
                    kind=BaseModel.KIND_CAUSAL_LM
                    if is_causal_lm(m.architecture)
                    else BaseModel.KIND_ENCODER,
                    architecture=m.architecture,
                    parameter_count=m.parameters,
                    context_length=m.context_length,
                )
                for m in list_base_models(self.plane.settings.models_dir)
            ]
        )

    @authenticated
    async def GetModel(self, request: models_pb2.GetModelRequest, context) -> FineTunedModel:
        return records.get(self.plane.db, "models", FineTunedModel, caller_org(), request.model_id)

    @authenticated
    async def ListModels(self, request: models_pb2.ListModelsRequest, context):
        db, org = self.plane.db, caller_org()
        # Checkpoint models resolve by name but are not listed, as in OpenAI's API.
        listed = "org = ? AND checkpoint_id IS NULL"  # models_listed
        cursor = None
        if request.after_id:
            cursor = pages.start_after(db, "models", listed, [org], request.after_id, "model")
        rows, token = pages.keyset(
            db,
            "models",
            listed,
            [org],
            pages.page_size(request.page_size),
            request.page_token,
            desc=pages.descending(request.order_by),
            cursor=cursor,
        )
        return models_pb2.ListModelsResponse(
            models=[FineTunedModel.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def DeleteModel(self, request: models_pb2.DeleteModelRequest, context):
        db = self.plane.db
        records.get(db, "models", FineTunedModel, caller_org(), request.model_id)
        with write(db):
            deleted = registry.delete(db, request.model_id, exports.output_key)
        for adapter in deleted.adapters:
            await self._unload(adapter)
        for key in deleted.blobs:
            await asyncio.to_thread(self.plane.blobs.delete, key)
        return empty_pb2.Empty()

    async def _unload(self, adapter: str) -> None:
        """Tell every inference worker to drop the adapter (at once if no request uses
        it, else when its last request ends). A worker that does not answer has lost its
        lease by then, and with it everything it had loaded."""
        unload = worker_pb2.UnloadAdapterRequest(adapter=adapter)
        for worker in list(self.plane.serving.workers.values()):
            try:
                await worker.stub().UnloadAdapter(
                    unload, metadata=self._metadata(), timeout=UNLOAD_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "unload failed",
                    extra={"fields": {"worker": worker.worker_id, "code": error.code().name}},
                )

    def _metadata(self) -> list[tuple[str, str]]:
        # The caller's request id travels on, so the worker's log lines name it too.
        ident = request_ids.current.get()
        return [("authorization", f"Bearer {self.plane.worker_token}")] + (
            [(request_ids.KEY, ident)] if ident else []
        )

    @authenticated
    async def Generate(self, request: models_pb2.GenerateRequest, context):
        check_generate(request)
        work = self._inference_request(caller_org(), request)
        self.plane.post(worker_pb2.Lease.KIND_SERVE)
        worker = await self.plane.serving.pick(work.base_model, SERVE_WAIT_SECONDS)
        stream = worker.stub().Generate(work, metadata=self._metadata())
        try:
            async for reply in stream:
                yield reply
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                field = "messages" if request.messages else "prompt"
                raise InvalidArgument.field(field, error.details() or "") from error
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(error.details() or "") from error
            raise Unavailable(
                f"the inference worker failed ({error.code().name}); retry"
            ) from error
        finally:
            stream.cancel()

    @authenticated
    async def Classify(self, request: models_pb2.ClassifyRequest, context):
        check_classify(request)
        db, org = self.plane.db, caller_org()
        target = registry.fine_tuned(db, org, request.model_id)
        if target is None:
            base_models = self._base_models()
            if request.model_id in base_models:
                raise InvalidArgument.field(
                    "model_id",
                    f"{request.model_id!r} is a base model, with no classification head; "
                    "classify with a classification fine-tune of it",
                )
            raise NotFound("model", request.model_id)
        target = registry.resolve(db, self.plane.blobs, org, request.model_id, {})
        from trainer.models import is_causal_lm  # names only, no torch

        if is_causal_lm(self._base_models().get(target.base_model, "")):
            raise InvalidArgument.field(
                "model_id",
                f"{request.model_id!r} generates text; Classify needs a classification fine-tune",
            )
        work = worker_pb2.InferenceServiceClassifyRequest(
            base_model=target.base_model, adapter=target.adapter, request=request
        )
        self.plane.post(worker_pb2.Lease.KIND_SERVE)
        worker = await self.plane.serving.pick(work.base_model, SERVE_WAIT_SECONDS)
        try:
            return await worker.stub().Classify(work, metadata=self._metadata())
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument.field("model_id", error.details() or "") from error
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(error.details() or "") from error
            raise Unavailable(
                f"the inference worker failed ({error.code().name}); retry"
            ) from error
