"""OpenAI's Uploads API on the bridge, for files larger than one request: `POST
/v1/uploads` (create), `/v1/uploads/{upload_id}/parts` (a multipart `data` part, streamed
into `UploadService.AddUploadPart`), `/complete` (the parts in order become a File) and
`/cancel`, in OpenAI's Upload and Upload Part shapes; the SDK's
`client.uploads.upload_file_chunked` drives them unchanged. Included by
`bridge.routes.openai`, whose error envelope it shares."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from bridge.backend import unix
from bridge.deps import Auth, BackendDep, Int64, SettingsDep
from bridge.errors import ApiError
from bridge.routes.openai import PURPOSES, FileObject, OpenAIRoute, Strict, file_object
from bridge.uploads import BINARY, form_openapi, upload_part_form
from tunewire.v1 import uploads_pb2

Upload = uploads_pb2.Upload
router = APIRouter(prefix="/uploads", tags=["openai"], route_class=OpenAIRoute)

STATUS: dict[int, Literal["pending", "completed", "cancelled", "expired"]] = {
    Upload.STATE_PENDING: "pending",
    Upload.STATE_COMPLETED: "completed",
    Upload.STATE_CANCELLED: "cancelled",
    Upload.STATE_EXPIRED: "expired",
}


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    expires_at: int
    file: FileObject | None = None


class UploadPartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class CreateUploadIn(Strict):
    filename: str
    purpose: str
    bytes: Int64
    mime_type: str
    expires_after: dict[str, Any] | None = None


class CompleteUploadIn(Strict):
    part_ids: list[str]
    md5: str | None = None


def upload_object(upload: Upload) -> UploadObject:
    purpose = next((name for name, value in PURPOSES.items() if value == upload.purpose), "")
    return UploadObject(
        id=upload.id,
        bytes=upload.bytes,
        created_at=unix(upload.create_time) or 0,
        filename=upload.filename,
        purpose=purpose,
        status=STATUS.get(upload.state, "pending"),
        expires_at=unix(upload.expire_time) or 0,
        file=file_object(upload.file) if upload.HasField("file") else None,
    )


@router.post("")
async def create_upload(body: CreateUploadIn, backend: BackendDep, auth: Auth) -> UploadObject:
    """Start an upload of `bytes` bytes (up to the server's chunked-upload limit, 8 GB by
    default); it takes parts for an hour."""
    problems = []
    if body.purpose not in PURPOSES:
        problems.append(("purpose", f"must be one of: {', '.join(PURPOSES)}"))
    if body.expires_after is not None:
        problems.append(("expires_after", "is not supported: files are kept until deleted"))
    if problems:
        raise ApiError.invalid(problems)
    request = uploads_pb2.CreateUploadRequest(
        upload=Upload(
            filename=body.filename,
            purpose=PURPOSES[body.purpose],
            bytes=body.bytes,
            mime_type=body.mime_type,
        )
    )
    return upload_object(await backend.uploads.CreateUpload(request, metadata=auth))


@router.post("/{upload_id}/parts", openapi_extra=form_openapi({"data": BINARY}, ["data"]))
async def add_upload_part(
    upload_id: str, request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> UploadPartObject:
    """Add a part (multipart `data`, at most 64 MB by default), streamed to the control
    plane; it is stored durably before this answers."""
    part = await upload_part_form(request, backend, auth, settings, upload_id)
    return UploadPartObject(
        id=part.id, created_at=unix(part.create_time) or 0, upload_id=part.upload_id
    )


@router.post("/{upload_id}/complete")
async def complete_upload(
    upload_id: str, body: CompleteUploadIn, backend: BackendDep, auth: Auth
) -> UploadObject:
    """Assemble the parts, in the order of `part_ids`, into a File (validated like any
    upload); `md5`, when given, must match."""
    request = uploads_pb2.CompleteUploadRequest(
        upload_id=upload_id, part_ids=body.part_ids, md5=body.md5 or ""
    )
    return upload_object(await backend.uploads.CompleteUpload(request, metadata=auth))


@router.post("/{upload_id}/cancel")
async def cancel_upload(upload_id: str, backend: BackendDep, auth: Auth) -> UploadObject:
    request = uploads_pb2.CancelUploadRequest(upload_id=upload_id)
    return upload_object(await backend.uploads.CancelUpload(request, metadata=auth))
