"""AuthService: who a key belongs to, so clients and the REST bridge can check a key
before they send anything else."""

from __future__ import annotations

import grpc

from server.control_plane import ControlPlane, authenticated, caller_key
from server.ids import timestamp
from tunewire.v1 import auth_pb2, auth_pb2_grpc


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    @authenticated
    async def GetCaller(
        self, request: auth_pb2.GetCallerRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Caller:
        key = caller_key()
        return auth_pb2.Caller(
            org=key.org,
            key_id=key.id,
            key_prefix=key.prefix,
            key_create_time=timestamp(key.created_at),
        )
