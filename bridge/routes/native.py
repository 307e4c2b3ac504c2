"""The native REST API at `/tunewire`: every public RPC at the path its
`google.api.http` annotation gives (so `GET /tunewire/v1/jobs/{job_id}`),
transcoded by one generic endpoint per binding (bridge.transcode).

Errors are google.rpc.Status JSON with grpc-gateway's HTTP statuses. Server
streams are NDJSON, or server-sent events for `Accept: text/event-stream`,
resumable with `Last-Event-ID` where the request has a cursor. The client-streaming
RPCs take a multipart form at their path: UploadFile (`purpose`, `file`) and
AddUploadPart (`data`).

One route is not an RPC: `GET /tunewire/v1/hyperparameters`, the hyperparameter table
(`trainer/hyperparameters.py`) that forms such as the dashboard's are built from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from google.rpc import status_pb2
from pydantic import BaseModel

from bridge import transcode
from bridge.deps import Auth, BackendDep, SettingsDep, check_key
from bridge.errors import ApiError, native_error
from bridge.routing import route_class
from bridge.streams import (
    EVENT_STREAM,
    NDJSON,
    STREAM_HEADERS,
    ndjson_frames,
    open_stream,
    sse_frames,
    wants_events,
)
from bridge.transcode import Binding, to_json
from bridge.uploads import BINARY, form_openapi, upload_file_form, upload_part_form
from trainer.hyperparameters import BASE_LEARNING_RATE, TABLE, TARGET_MODULES
from tunewire.v1 import (
    auth_pb2,
    conversations_pb2,
    exports_pb2,
    files_pb2,
    graders_pb2,
    jobs_pb2,
    models_pb2,
    uploads_pb2,
    webhooks_pb2,
)

PREFIX = "/tunewire"
PUBLIC_API = (
    auth_pb2.DESCRIPTOR,
    files_pb2.DESCRIPTOR,
    jobs_pb2.DESCRIPTOR,
    models_pb2.DESCRIPTOR,
    exports_pb2.DESCRIPTOR,
    webhooks_pb2.DESCRIPTOR,
    graders_pb2.DESCRIPTOR,
    conversations_pb2.DESCRIPTOR,
    uploads_pb2.DESCRIPTOR,
)
UPLOAD_METHOD = "tunewire.v1.FileService.UploadFile"
PART_METHOD = "tunewire.v1.UploadService.AddUploadPart"
PURPOSES = {
    value.name: value.number for value in files_pb2.File.Purpose.DESCRIPTOR.values if value.number
}

router = APIRouter(prefix=PREFIX, tags=["native"], route_class=route_class(native_error))
BINDINGS = transcode.bindings(PUBLIC_API)


def _resume_from(binding: Binding, request: Request, message: Any) -> None:
    """`Last-Event-ID` (sent by EventSource on reconnect) is the stream's cursor."""
    last = request.headers.get("last-event-id")
    if last is None or binding.cursor is None:
        return
    try:
        setattr(message, binding.cursor, int(last))
    except ValueError:
        raise ApiError.invalid([("Last-Event-ID", "must be an event sequence")]) from None


def _endpoint(binding: Binding) -> Callable[..., Any]:
    async def endpoint(
        request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
    ) -> Response:
        # The route class limits the body as it comes.
        body = await request.body()
        message = binding.build(request.path_params, request.query_params.multi_items(), body)
        call = binding.callable(backend.channel)
        if not binding.method.server_streaming:
            return JSONResponse(to_json(await call(message, metadata=auth)))
        _resume_from(binding, request, message)
        events = wants_events(request.headers.get("accept"))
        items = await open_stream(
            call(message, metadata=auth), settings.sse_heartbeat_seconds, patient=not events
        )
        if events:
            frames = sse_frames(items, to_json, native_error, binding.sequence_of)
            return StreamingResponse(frames, media_type=EVENT_STREAM, headers=STREAM_HEADERS)
        frames = ndjson_frames(items, to_json, native_error)
        return StreamingResponse(frames, media_type=NDJSON, headers=STREAM_HEADERS)

    endpoint.__name__ = binding.operation_id
    endpoint.__doc__ = (
        f"`{binding.method.full_name}` as `{binding.http_method} {binding.template}`."
    )
    return endpoint


async def upload_file(
    request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> Response:
    """`tunewire.v1.FileService.UploadFile` as a multipart form: `purpose` (first), then `file`."""
    record = await upload_file_form(request, backend, auth, settings, PURPOSES)
    return JSONResponse(to_json(record))


def _upload_openapi(binding: Binding) -> dict[str, Any]:
    operation = binding.openapi()
    operation.update(
        form_openapi(
            {"purpose": {"type": "string", "enum": list(PURPOSES)}, "file": BINARY},
            ["purpose", "file"],
        )
    )
    return operation


async def add_upload_part(
    upload_id: str, request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> Response:
    """`tunewire.v1.UploadService.AddUploadPart` as a multipart form: the part as `data`."""
    part = await upload_part_form(request, backend, auth, settings, upload_id)
    return JSONResponse(to_json(part))


def _part_openapi(binding: Binding) -> dict[str, Any]:
    operation = binding.openapi()
    operation.update(form_openapi({"data": BINARY}, ["data"]))
    return operation


for _binding in BINDINGS:
    if _binding.method.client_streaming:
        if _binding.method.full_name == UPLOAD_METHOD:
            handler, extra = upload_file, _upload_openapi(_binding)
        elif _binding.method.full_name == PART_METHOD:
            handler, extra = add_upload_part, _part_openapi(_binding)
        else:
            raise NotImplementedError(f"no REST form for client stream {_binding.method.full_name}")
    else:
        handler, extra = _endpoint(_binding), _binding.openapi()
    router.add_api_route(
        _binding.path,
        handler,
        methods=[_binding.http_method],
        operation_id=_binding.operation_id,
        summary=f"{_binding.method.containing_service.name}.{_binding.method.name}",
        response_class=StreamingResponse if _binding.method.server_streaming else JSONResponse,
        openapi_extra=extra,
    )


class HyperparameterRow(BaseModel):
    """One row of the hyperparameter table: a field of `tunewire.v1.Hyperparameters`."""

    name: str
    type: Literal["integer", "number"]
    minimum: float
    maximum: float
    exclusive_minimum: bool
    exclusive_maximum: bool
    range: str
    """The range as errors write it: `[1, 50]`, `(0, 100]`."""
    default: int | float | Literal["auto"]
    """What leaving the field unset means: "auto" (resolved when the job plans) or a value."""
    auto: str
    """How "auto" is resolved; empty where the default is a value."""
    description: str
    method: str
    """The only `Method.type` that uses it (`TYPE_DPO`), or empty for every method."""


class HyperparameterTable(BaseModel):
    """Every hyperparameter a job may set, as the server checks it."""

    hyperparameters: list[HyperparameterRow]
    target_modules: list[str]
    """`Hyperparameters.target_modules` presets; unset means the first."""
    base_learning_rate: float
    """The peak learning rate at `learning_rate_multiplier` 1."""
    methods: list[str]
    """`Method.type` values a job may name."""


@router.get(
    "/v1/hyperparameters",
    operation_id="ListHyperparameters",
    summary="The hyperparameter table",
    response_model=HyperparameterTable,
)
async def list_hyperparameters(request: Request) -> HyperparameterTable:
    """The one table (`trainer/hyperparameters.py`) that CreateJob checks a job's
    hyperparameters against: types, ranges, defaults and how "auto" resolves. Not an RPC:
    the table is a constant of the release; it needs a key like every call."""
    await check_key(request)
    rows = [
        HyperparameterRow(
            name=hp.name,
            type="integer" if hp.type is int else "number",
            minimum=hp.low,
            maximum=hp.high,
            exclusive_minimum=hp.low_open,
            exclusive_maximum=hp.high_open,
            range=hp.range,
            default=hp.default,
            auto=hp.auto,
            description=hp.doc,
            method=f"TYPE_{hp.method.upper()}" if hp.method else "",
        )
        for hp in TABLE
    ]
    return HyperparameterTable(
        hyperparameters=rows,
        target_modules=[f"TARGET_MODULES_{name}" for name in TARGET_MODULES],
        base_learning_rate=BASE_LEARNING_RATE,
        methods=[v.name for v in jobs_pb2.Method.Type.DESCRIPTOR.values if v.number],
    )


def component_schemas() -> dict[str, dict[str, Any]]:
    """OpenAPI schemas of every message the native routes take or give."""
    roots = [b.method.input_type for b in BINDINGS] + [b.method.output_type for b in BINDINGS]
    return transcode.schemas([*roots, status_pb2.Status.DESCRIPTOR])
