"""One error model for every surface: a `google.rpc.Status` and its HTTP status.

gRPC failures (with the details the server put in `grpc-status-details-bin`),
request validation failures and the bridge's own checks all become an `ApiError`.
Each surface renders it in the envelope its clients parse, through its route
class (`bridge.routing.route_class`), so no handler maps errors itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from fastapi.exceptions import RequestValidationError
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from starlette.exceptions import HTTPException

Code = grpc.StatusCode
DETAILS_KEY = "grpc-status-details-bin"

# grpc-gateway's table (runtime/errors.go HTTPStatusFromCode); anything else is 500.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
}
_BY_NUMBER = {code.value[0]: code for code in Code}
# The other way, for Starlette's HTTPException: the first code of each HTTP status, and
# 405 as grpc-gateway answers a method a path does not take (UNIMPLEMENTED).
_BY_HTTP_STATUS = {http: code for code, http in reversed(HTTP_STATUS.items())} | {
    405: Code.UNIMPLEMENTED
}


class ApiError(Exception):
    """A failure to answer with: the status a gRPC client would have seen.

    `http_status` overrides the table where a route knows better (413 for an
    upload over the size limit, 415 for a body that is not a form).
    """

    def __init__(self, status: status_pb2.Status, http_status: int | None = None) -> None:
        super().__init__(status.message)
        self.status = status
        self.http_status = http_status or HTTP_STATUS.get(self.code, 500)

    @classmethod
    def of(cls, code: Code, message: str, *, http_status: int | None = None) -> ApiError:
        return cls(status_pb2.Status(code=code.value[0], message=message), http_status)

    @classmethod
    def invalid(
        cls, violations: Sequence[tuple[str, str]], *, http_status: int | None = None
    ) -> ApiError:
        """INVALID_ARGUMENT with BadRequest field violations, as the server sends them."""
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        message = "; ".join(f"{f}: {d}" for f, d in violations)
        return cls(
            status_pb2.Status(
                code=Code.INVALID_ARGUMENT.value[0], message=message, details=[detail]
            ),
            http_status,
        )

    @classmethod
    def from_rpc(cls, error: grpc.aio.AioRpcError) -> ApiError:
        """The status of a failed call, details decoded from its trailers."""
        for key, value in error.trailing_metadata() or ():
            if key == DETAILS_KEY:
                status = status_pb2.Status.FromString(value)
                if status.code == error.code().value[0]:
                    return cls(status)
        return cls.of(error.code(), error.details() or "")

    @property
    def code(self) -> Code:
        return _BY_NUMBER.get(self.status.code, Code.UNKNOWN)

    @property
    def message(self) -> str:
        return self.status.message

    @property
    def resource(self) -> tuple[str, str] | None:
        """(kind, id) of the resource a NOT_FOUND is about, from the ResourceInfo detail
        the server attaches; None if there is none."""
        for detail in self.status.details:
            if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                info = error_details_pb2.ResourceInfo()
                detail.Unpack(info)
                return info.resource_type, info.resource_name
        return None

    @property
    def reason(self) -> str:
        """The ErrorInfo reason the server gave (e.g. `invalid_n_examples`), else ""."""
        for detail in self.status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason
        return ""

    def message_in(self, nouns: Mapping[str, str]) -> str:
        """The message, with a missing resource named by a surface's noun for its kind
        (`nouns`: kind -> noun; a kind not in it keeps its own name)."""
        found = self.resource if self.code == Code.NOT_FOUND else None
        if found is None:
            return self.message
        kind, ident = found
        return f"{nouns.get(kind, kind.replace('_', ' '))} {ident!r} not found"

    @property
    def violations(self) -> list[tuple[str, str]]:
        """BadRequest field violations, (field, description), in order."""
        found = []
        for detail in self.status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found += [(v.field, v.description) for v in bad.field_violations]
        return found


def as_api_error(error: Exception) -> ApiError:
    """Any failure a route can meet, as an ApiError."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, grpc.aio.AioRpcError):
        return ApiError.from_rpc(error)
    if isinstance(error, RequestValidationError):
        found: dict[str, list[str]] = {}
        for problem in error.errors():
            found.setdefault(_location(problem["loc"]), []).append(problem["msg"])
        return ApiError.invalid(
            [(field, " or ".join(msgs)) for field, msgs in found.items()] or [("", "invalid")]
        )
    if isinstance(error, HTTPException):
        # Starlette's own refusals (a form it cannot parse); FastAPI's "There was an
        # error parsing the body" hides what failed, and is answered as that instead.
        if isinstance(error.__cause__, ApiError):
            return error.__cause__
        fallback = Code.INVALID_ARGUMENT if error.status_code < 500 else Code.UNKNOWN
        code = _BY_HTTP_STATUS.get(error.status_code, fallback)
        return ApiError.of(code, str(error.detail), http_status=error.status_code)
    raise TypeError(f"not an API error: {error!r}")


# pydantic names the member of a union that failed after the field: `n_epochs.int`,
# `n_epochs.literal['auto']`. Those tags are not fields.
_UNION_TAG = re.compile(r"[\[\]()'\"]|^(int|float|str|bool|bytes|none)$")


def _location(loc: Sequence[Any]) -> str:
    """`body.hyperparameters.n_epochs.int` -> `hyperparameters.n_epochs`: the field, as sent."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        if isinstance(part, str) and _UNION_TAG.search(part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """A google.rpc.Status in its JSON mapping (grpc-gateway's error body)."""
    try:
        return json_format.MessageToDict(
            status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except json_format.SerializeToJsonError:
        # A detail of a type this process does not know: keep the rest.
        return {"code": status.code, "message": status.message, "details": []}


def native_error(error: ApiError) -> dict[str, Any]:
    return status_json(error.status)


Envelope = Callable[[ApiError], dict[str, Any]]
