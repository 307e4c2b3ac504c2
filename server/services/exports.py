"""ExportService: merged safetensors and ONNX exports (not available yet)."""

from __future__ import annotations

from server.control_plane import ControlPlane, authenticated
from server.errors import Unimplemented
from tunewire.v1 import exports_pb2_grpc

NOT_YET = "exports are not available yet"


class ExportServicer(exports_pb2_grpc.ExportServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    @authenticated
    async def CreateExport(self, request, context):
        raise Unimplemented(NOT_YET)

    @authenticated
    async def GetExport(self, request, context):
        raise Unimplemented(NOT_YET)

    @authenticated
    async def ListExports(self, request, context):
        raise Unimplemented(NOT_YET)

    @authenticated
    async def ListExportEvents(self, request, context):
        raise Unimplemented(NOT_YET)

    @authenticated
    async def DownloadExportArtifact(self, request, context):
        raise Unimplemented(NOT_YET)
        yield  # a server stream
