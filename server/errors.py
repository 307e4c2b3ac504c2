"""Domain errors, and the one place that turns them into gRPC statuses.

Domain code raises these; `rpc` (in server.rpc) maps them with `to_status`, so
every handler answers with a precise code and never lets UNKNOWN reach a client.
"""

from __future__ import annotations

import errno
import sqlite3

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# A status travels in trailers (the message percent-encoded, the details in base64) that
# gRPC caps at 8 KiB by default: an error echoing a 16 KiB id would reach the client as
# RESOURCE_EXHAUSTED instead of itself. Echoed input is cut, and so is every text.
MAX_ECHOED = 128
MAX_TEXT = 1024


# ErrorInfo.domain: who defines the reasons (AIP-193).
DOMAIN = "tunewire"


def cut(text: str, limit: int) -> str:
    """`text`, or its start and an ellipsis when it is longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


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

    def __init__(self, violations: list[tuple[str, str]], reason: str = "") -> None:
        self.violations = violations
        self.reason = reason
        super().__init__("; ".join(f"{field}: {why}" for field, why in violations))

    @classmethod
    def field(cls, field: str, why: str) -> InvalidArgument:
        return cls([(field, why)])

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=cut(f, MAX_ECHOED), description=cut(d, MAX_TEXT // 4)
                )
                for f, d in self.violations
            ]
        )
        found = [_packed(bad)]
        if self.reason:
            # A machine-readable cause a client may branch on (OpenAI's `error.code`,
            # e.g. invalid_n_examples), so no client has to read it out of a message.
            found.append(_packed(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)))
        return found


class NotFound(TunewireError):
    """Missing, or owned by another organization: the two must look identical.

    Carries a ResourceInfo detail (the kind and the id asked for), so each REST surface
    can name the resource in its own words (Cohere's "dataset" for a file) without
    reading the message."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = cut(ident, MAX_ECHOED)
        super().__init__(f"{kind} {self.ident!r} not found")

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ResourceInfo(
            resource_type=self.kind, resource_name=self.ident, description=self.message
        )
        return [_packed(info)]


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


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(error: BaseException) -> ResourceExhausted | None:
    """A full disk, as the status a client should see: the disk may be freed and the call
    retried, which INTERNAL would not say. None for any other error."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return ResourceExhausted(f"no space left on the server's disk ({error.strerror})")
        if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return ResourceExhausted("no space left on the server's disk (the database is full)")
        error = error.__cause__ or error.__context__
    return None


def to_status(error: TunewireError) -> grpc.Status:
    """A grpc.Status whose trailers carry the google.rpc.Status with details."""
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=cut(error.message, MAX_TEXT),
        details=error.details(),
    )
    return rpc_status.to_status(status)
