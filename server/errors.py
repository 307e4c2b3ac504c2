"""Domain errors, and the one place that turns them into gRPC statuses.

Domain code raises these; `rpc` (in server.rpc) maps them with `to_status`, so
every handler answers with a precise code and never lets UNKNOWN reach a client.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class TunewireError(Exception):
    """An error a client should see, with its status code."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []


class InvalidArgument(TunewireError):
    """Bad request fields; carries every violation found, as BadRequest details."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{field}: {why}" for field, why in violations))

    @classmethod
    def field(cls, field: str, why: str) -> InvalidArgument:
        return cls([(field, why)])

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFound(TunewireError):
    """Missing, or owned by another organization: the two must look identical."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")


class FailedPrecondition(TunewireError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(TunewireError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(TunewireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(TunewireError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(TunewireError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(TunewireError):
    code = grpc.StatusCode.UNAVAILABLE


def to_status(error: TunewireError) -> grpc.Status:
    """A grpc.Status whose trailers carry the google.rpc.Status with details."""
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=error.message,
        details=error.details(),
    )
    return rpc_status.to_status(status)
