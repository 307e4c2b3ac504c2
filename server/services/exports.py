"""ExportService: merged safetensors and ONNX exports of fine-tuned models, as operations.

The servicer checks and records; an export worker leases the export, does the work and
reports (see `server.exports` for the state machine, `trainer.worker` for the work).
"""

from __future__ import annotations

from server import exports
from server.control_plane import ControlPlane, authenticated, caller_org
from server.errors import FailedPrecondition, InvalidArgument, NotFound
from server.exports import FORMATS
from server.states import export_state_name
from server.store import pages, records
from server.store.db import write
from tunewire.v1 import exports_pb2, exports_pb2_grpc, models_pb2, worker_pb2

Export = exports_pb2.Export


def check_create(export: Export) -> None:
    """Every problem with a CreateExport request's export, together."""
    problems = []
    if not export.model_id:
        problems.append(("export.model_id", "required"))
    if export.format not in FORMATS:
        problems.append(("export.format", "must be FORMAT_MERGED_SAFETENSORS or FORMAT_ONNX"))
    if export.quantize_int8 and export.format != Export.FORMAT_ONNX:
        problems.append(("export.quantize_int8", "applies to FORMAT_ONNX only"))
    if problems:
        raise InvalidArgument(problems)


class ExportServicer(exports_pb2_grpc.ExportServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    # --- the API ----------------------------------------------------------------------

    @authenticated
    async def CreateExport(self, request: exports_pb2.CreateExportRequest, context) -> Export:
        org, db = caller_org(), self.plane.db
        check_create(request.export)
        records.get(db, "models", models_pb2.FineTunedModel, org, request.export.model_id)
        with write(db):
            export, queued = exports.find_or_queue(db, self.plane.events, org, request.export)
        if queued:
            self.plane.post(worker_pb2.Lease.KIND_EXPORT)
        return export

    @authenticated
    async def GetExport(self, request: exports_pb2.GetExportRequest, context) -> Export:
        return records.get(self.plane.db, "exports", Export, caller_org(), request.export_id)

    @authenticated
    async def ListExports(self, request: exports_pb2.ListExportsRequest, context):
        rows, token = pages.newest_first(
            self.plane.db,
            "exports",
            "org = ?",
            [caller_org()],
            pages.page_size(request.page_size),
            request.page_token,
        )
        return exports_pb2.ListExportsResponse(
            exports=[Export.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def ListExportEvents(self, request: exports_pb2.ListExportEventsRequest, context):
        records.get(self.plane.db, "exports", Export, caller_org(), request.export_id)
        cursor = pages.decode(request.page_token, 1)[0] if request.page_token else 0
        size = pages.page_size(request.page_size)
        batch = self.plane.events.after(request.export_id, cursor, size + 1)
        token = pages.encode([batch[size - 1].sequence]) if len(batch) > size else ""
        return exports_pb2.ListExportEventsResponse(events=batch[:size], next_page_token=token)

    @authenticated
    async def DownloadExportArtifact(
        self, request: exports_pb2.DownloadExportArtifactRequest, context
    ):
        export = records.get(self.plane.db, "exports", Export, caller_org(), request.export_id)
        if export.state != Export.STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"export {export.id!r} is {export_state_name(export.state)}; "
                "its artifacts are ready once it has succeeded"
            )
        artifact = next((a for a in export.artifacts if a.path == request.path), None)
        if artifact is None:
            raise NotFound("artifact", request.path)
        # The path is one the export recorded, never the request's own.
        key = f"{exports.output_key(export.id)}/{artifact.path}"
        for chunk in self.plane.blobs.read_chunks(key, artifact.bytes, artifact.sha256):
            yield exports_pb2.DownloadExportArtifactResponse(chunk=chunk)
