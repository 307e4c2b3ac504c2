"""ModelService: base models, fine-tuned models, generation."""

from __future__ import annotations

from google.protobuf import empty_pb2

from server.control_plane import ControlPlane, authenticated
from server.errors import Unimplemented
from server.rpc import caller_org
from server.store import pages, records
from server.store.db import write
from tunewire.v1 import models_pb2, models_pb2_grpc

BaseModel = models_pb2.BaseModel
FineTunedModel = models_pb2.FineTunedModel


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

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
            db.execute("DELETE FROM models WHERE id = ?", [request.model_id])
        return empty_pb2.Empty()

    @authenticated
    async def Generate(self, request: models_pb2.GenerateRequest, context):
        raise Unimplemented("Generate is not available yet")
        yield  # a server stream
