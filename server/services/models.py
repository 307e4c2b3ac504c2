"""ModelService: base models, fine-tuned models, generation."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from server.control_plane import ControlPlane, authenticated, caller_org
from server.errors import FailedPrecondition, InvalidArgument, NotFound
from server.store import pages, records
from server.store.db import write
from tunewire.v1 import exports_pb2, models_pb2, models_pb2_grpc

if TYPE_CHECKING:  # torch-heavy; imported when first used (see ControlPlane)
    from trainer.generation import Chunk, Generator, Prompt, SamplingParams

BaseModel = models_pb2.BaseModel
FineTunedModel = models_pb2.FineTunedModel
Export = exports_pb2.Export
ROLES = ("system", "user", "assistant", "tool")
MAX_TOKENS = 4096
MAX_STOP = 4

Target = Callable[["Prompt", "SamplingParams"], Iterator["Chunk"]]


def generation_input(request: models_pb2.GenerateRequest) -> tuple[Prompt, SamplingParams]:
    """The prompt and sampling parameters of a Generate request; every problem together."""
    from trainer.generation import SamplingParams

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
    # Unset optional fields keep SamplingParams' defaults (the proto's documented ones).
    given = {
        name: getattr(request, name)
        for name in ("max_tokens", "temperature", "top_p", "seed")
        if request.HasField(name)
    }
    params = SamplingParams(stop=tuple(request.stop), **given)
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    return messages or request.prompt, params


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._generator: Generator | None = None

    def generator(self) -> Generator:
        """One Generator for the server: each base model loaded once, adapters switched."""
        if self._generator is None:
            from trainer.generation import Generator

            self._generator = Generator()
        return self._generator

    def _target(self, org: str, request: models_pb2.GenerateRequest) -> Target:
        """What generates for `request`: an ONNX export, a fine-tuned (or checkpoint) model,
        or a base model."""
        from trainer.models import list_base_models, resolve_model

        db, settings = self.plane.db, self.plane.settings
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
            directory = self.plane.blobs.path("exports", export.id)
            return partial(self.generator().generate_onnx, directory)
        row = db.execute(
            "SELECT adapter_path, proto FROM models WHERE id = ? AND org = ?",
            [request.model_id, org],
        ).fetchone()
        if row is not None:
            adapter = Path(row[0])
            if not (adapter / "adapter_config.json").is_file():
                raise FailedPrecondition(f"the adapter of model {request.model_id!r} is gone")
            base = resolve_model(settings.models_dir, FineTunedModel.FromString(row[1]).base_model)
            return partial(self.generator().generate, base, adapter)
        bases = {m.name: m for m in list_base_models(settings.models_dir)}
        if request.model_id not in bases:
            raise NotFound("model", request.model_id)
        if not bases[request.model_id].architecture.endswith("ForCausalLM"):
            raise InvalidArgument.field(
                "model_id", f"{request.model_id!r} is an encoder; generation needs a causal LM"
            )
        return partial(self.generator().generate, bases[request.model_id].path, None)

    @authenticated
    async def ListBaseModels(self, request, context):
        from trainer.models import list_base_models  # torch-heavy; see ControlPlane

        return models_pb2.ListBaseModelsResponse(
            base_models=[
                BaseModel(
                    id=m.name,
                    kind=BaseModel.KIND_CAUSAL_LM
                    if m.architecture.endswith("ForCausalLM")
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
        rows, token = pages.newest_first(
            self.plane.db,
            "models",
            # Checkpoint models resolve by name but are not listed, as in OpenAI's API.
            "org = ? AND checkpoint_id IS NULL",
            [caller_org()],
            pages.page_size(request.page_size),
            request.page_token,
        )
        return models_pb2.ListModelsResponse(
            models=[FineTunedModel.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def DeleteModel(self, request: models_pb2.DeleteModelRequest, context):
        db = self.plane.db
        records.get(db, "models", FineTunedModel, caller_org(), request.model_id)
        with write(db):
            (adapter,) = db.execute(
                "SELECT adapter_path FROM models WHERE id = ?", [request.model_id]
            ).fetchone()
            db.execute("DELETE FROM models WHERE id = ?", [request.model_id])
        # Only what the model store holds; never a path outside the blob root.
        stored = Path(adapter).resolve()
        if self._generator is not None:
            # Off the loop: unloading waits for the base's lock (a forward pass).
            await asyncio.to_thread(self._generator.unload, stored)
        if stored.is_relative_to(self.plane.blobs.root.resolve() / "models"):
            shutil.rmtree(stored, ignore_errors=True)
        return empty_pb2.Empty()

    @authenticated
    async def Generate(self, request: models_pb2.GenerateRequest, context):
        from trainer.generation import InvalidPrompt

        prompt, params = generation_input(request)
        chunks = self._target(caller_org(), request)(prompt, params)
        try:
            # One step per thread hop: loading and forward passes stay off the event loop.
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield models_pb2.GenerateResponse(
                    text=chunk.text,
                    finish_reason=chunk.finish_reason or "",
                    usage=models_pb2.Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                    if chunk.usage
                    else None,
                )
        except InvalidPrompt as error:
            field = "messages" if request.messages else "prompt"
            raise InvalidArgument.field(field, str(error)) from error
