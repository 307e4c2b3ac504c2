"""The one upload streamer: a multipart form read as it arrives, its file parts
forwarded into `FileService.UploadFile` client streams chunk by chunk.

Nothing is held whole, in memory or on disk: the bridge holds one HTTP chunk
and one gRPC message at a time, and HTTP and gRPC flow control slow the client
down to the server's pace. The parts of uploads sent in parts (OpenAI's Uploads API)
are streamed into `UploadService.AddUploadPart` the same way. The server enforces the
size limit while streaming; its RESOURCE_EXHAUSTED is answered 413. What the bridge
does hold, text fields and names, is limited here (max_form_field_bytes each, max_form_parts and
max_form_text_bytes in all), also 413. A request that fails for any reason
cancels the upload in flight and deletes the files it already stored. The
client's filename is passed on as data only (the server stores blobs under
generated ids).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi import Request
from google.protobuf.message import Message

from bridge.backend import Backend, Metadata
from bridge.errors import ApiError, Code
from bridge.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from bridge.settings import BridgeSettings
from tunewire.v1 import files_pb2, uploads_pb2

log = logging.getLogger("tunewire.bridge")

File = files_pb2.File


@dataclass(frozen=True)
class Destination:
    """How a file part is stored. Consecutive parts of one name are written, in
    order and joined by `separator`, into one file."""

    filename: str
    purpose: File.Purpose.ValueType
    separator: bytes = b""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, File] = field(default_factory=dict)
    """Stored files, by part name."""
    filenames: dict[str, list[str]] = field(default_factory=dict)
    """The client's names of the parts written into each file."""
    part_bytes: dict[str, list[int]] = field(default_factory=dict)
    """The size of each part written into each file, in order: where each one lies in it
    (with the destination's separator between them)."""


# (part name, client filename, the form so far) -> how to store the part, or None
# for a text field. Files of earlier part names are stored by then.
Route = Callable[[str, str | None, Form], Destination | None]


def upload_error(error: grpc.aio.AioRpcError) -> ApiError:
    failure = ApiError.from_rpc(error)
    if failure.code == Code.RESOURCE_EXHAUSTED:
        failure.http_status = 413
    return failure


class _Stream:
    """One client-streaming upload call: its first message, then chunks of `chunk` bytes
    (`message(chunk)` makes each one's message)."""

    def __init__(
        self, call: Any, first: Message, message: Callable[[bytes], Message], chunk: int
    ) -> None:
        self._call = call
        self._first = first
        self._message = message
        self._chunk = chunk
        self._pending = bytearray()

    async def start(self) -> None:
        await self._send(self._first)

    async def write(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= self._chunk:
            await self._flush()

    async def finish(self) -> Any:
        await self._flush()
        # When the server has already ended the call (over the limit while the
        # last chunks were in flight), done_writing raises its own usage error;
        # the call's status is what says why.
        with contextlib.suppress(Exception):
            await self._call.done_writing()
        try:
            return await self._call
        except grpc.aio.AioRpcError as error:
            raise upload_error(error) from None

    def cancel(self) -> None:
        self._call.cancel()

    async def _flush(self) -> None:
        if self._pending:
            chunk = bytes(self._pending)
            self._pending.clear()
            await self._send(self._message(chunk))

    async def _send(self, message: Message) -> None:
        try:
            await self._call.write(message)
        except Exception:
            # The server ended the call (over the size limit, bad metadata, gone):
            # its status says why.
            try:
                await self._call
            except grpc.aio.AioRpcError as error:
                raise upload_error(error) from None
            raise


class _Upload(_Stream):
    """One UploadFile call: metadata first, then chunks of `chunk_bytes`."""

    def __init__(
        self, backend: Backend, auth: Metadata, name: str, destination: Destination, chunk: int
    ) -> None:
        self.name = name
        self.destination = destination
        metadata = files_pb2.UploadFileMetadata(
            filename=destination.filename, purpose=destination.purpose
        )
        super().__init__(
            backend.files.UploadFile(metadata=auth),
            files_pb2.UploadFileRequest(metadata=metadata),
            lambda data: files_pb2.UploadFileRequest(chunk=data),
            chunk,
        )


@asynccontextmanager
async def streamed_form(
    request: Request,
    backend: Backend,
    auth: Metadata,
    settings: BridgeSettings,
    route: Route,
) -> AsyncIterator[Form]:
    """Read the request's form, streaming file parts as `route` says. If the form
    or the block using it fails, the files stored for it are deleted."""
    form = Form()
    try:
        await _read(request, backend, auth, settings, route, form)
        yield form
    except BaseException:
        await _discard(backend, auth, form)
        raise


def _parser(request: Request) -> MultipartParser:
    """A parser for the request's multipart body; 415 when it is not one."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    if boundary is None:
        raise ApiError.of(
            Code.INVALID_ARGUMENT,
            "expected a multipart/form-data body with a boundary",
            http_status=415,
        )
    return MultipartParser(boundary)


async def _read(
    request: Request,
    backend: Backend,
    auth: Metadata,
    settings: BridgeSettings,
    route: Route,
    form: Form,
) -> None:
    parser = _parser(request)
    held = _Held(settings)
    upload: _Upload | None = None
    name, text = "", bytearray()
    is_file = False
    try:
        async for chunk in request.stream():
            for event in parser.feed(chunk):
                match event:
                    case PartStart():
                        held.part(len(event.name) + len(event.filename or ""))
                        name, text = event.name, bytearray()
                        if upload is not None and upload.name != name:
                            form.files[upload.name] = await upload.finish()
                            upload = None
                        destination = route(name, event.filename, form)
                        is_file = destination is not None
                        if destination is None:
                            continue
                        if upload is None:
                            if name in form.files:
                                raise ApiError.invalid(
                                    [(name, "the parts of one file must come one after another")]
                                )
                            upload = _Upload(
                                backend, auth, name, destination, settings.upload_chunk_bytes
                            )
                            await upload.start()
                        else:
                            await upload.write(destination.separator)
                        form.filenames.setdefault(name, []).append(event.filename or "")
                        form.part_bytes.setdefault(name, []).append(0)
                    case PartData() if is_file and upload is not None:
                        await upload.write(event.data)
                        form.part_bytes[name][-1] += len(event.data)
                    case PartData():
                        held.text(len(event.data))
                        text += event.data
                        if len(text) > settings.max_form_field_bytes:
                            raise _too_large(
                                f"field {name!r} is larger than "
                                f"{settings.max_form_field_bytes} bytes"
                            )
                    case PartEnd() if not is_file:
                        try:
                            form.fields[name] = text.decode()
                        except UnicodeDecodeError:
                            raise ApiError.invalid([(name, "must be UTF-8 text")]) from None
        parser.close()
        if upload is not None:
            form.files[upload.name] = await upload.finish()
            upload = None
    except MultipartError as error:
        raise ApiError.of(Code.INVALID_ARGUMENT, f"malformed multipart body: {error}") from None
    finally:
        if upload is not None:
            upload.cancel()


class _Held:
    """What the bridge holds of a form in memory, limited: its parts (each costs some
    bookkeeping) and its text (fields, part names and file names)."""

    def __init__(self, settings: BridgeSettings) -> None:
        self._settings = settings
        self._parts = self._text = 0

    def part(self, name_bytes: int) -> None:
        self._parts += 1
        if self._parts > self._settings.max_form_parts:
            raise _too_large(f"has more than {self._settings.max_form_parts} parts")
        self.text(name_bytes)

    def text(self, size: int) -> None:
        self._text += size
        if self._text > self._settings.max_form_text_bytes:
            raise _too_large(
                f"has more than {self._settings.max_form_text_bytes} bytes of text fields and names"
            )


def _too_large(problem: str) -> ApiError:
    return ApiError.of(Code.INVALID_ARGUMENT, f"form {problem}", http_status=413)


async def _discard(backend: Backend, auth: Metadata, form: Form) -> None:
    for stored in form.files.values():
        try:
            await backend.files.DeleteFile(
                files_pb2.DeleteFileRequest(file_id=stored.id), metadata=auth
            )
        except grpc.aio.AioRpcError as error:
            log.warning("could not delete %s of a failed request: %s", stored.id, error.details())


async def upload_file_form(
    request: Request,
    backend: Backend,
    auth: Metadata,
    settings: BridgeSettings,
    purposes: Mapping[str, File.Purpose.ValueType],
) -> File:
    """The form of `POST …/files` (native and OpenAI): a `file` part and a `purpose` field.

    The purpose should come first; a file that comes first is uploaded as
    fine-tune (the common case) and refused afterwards if the purpose says otherwise.
    """

    def purpose(value: str) -> File.Purpose.ValueType:
        if value not in purposes:
            raise ApiError.invalid([("purpose", f"must be one of: {', '.join(purposes)}")])
        return purposes[value]

    def route(part: str, filename: str | None, form: Form) -> Destination | None:
        if part != "file":
            return None
        given = form.fields.get("purpose")
        tentative = File.PURPOSE_FINE_TUNE if given is None else purpose(given)
        return Destination(filename or "upload", tentative)

    async with streamed_form(request, backend, auth, settings, route) as form:
        if "file" not in form.files:
            raise ApiError.invalid([("file", "required: a file part named 'file'")])
        if "purpose" not in form.fields:
            raise ApiError.invalid([("purpose", "required")])
        if purpose(form.fields["purpose"]) != form.files["file"].purpose:
            raise ApiError.invalid(
                [("purpose", "must come before the file part in the form (unless it is fine-tune)")]
            )
        return form.files["file"]


async def upload_part_form(
    request: Request, backend: Backend, auth: Metadata, settings: BridgeSettings, upload_id: str
) -> uploads_pb2.UploadPart:
    """The form of `POST …/uploads/{upload_id}/parts` (OpenAI and native): one part named
    `data`, streamed into `UploadService.AddUploadPart`. The call is ended only once the
    whole form has been read, so a malformed form stores no part; a part is durable once
    the server has answered."""
    parser = _parser(request)
    held = _Held(settings)
    part: _Stream | None = None
    in_data = done = False
    try:
        async for chunk in request.stream():
            for event in parser.feed(chunk):
                match event:
                    case PartStart():
                        held.part(len(event.name) + len(event.filename or ""))
                        if event.name != "data" or part is not None:
                            why = "sent twice" if event.name == "data" else "unknown field"
                            raise ApiError.invalid(
                                [(event.name, f"{why}: the form has one part, `data`")]
                            )
                        part = _Stream(
                            backend.uploads.AddUploadPart(metadata=auth),
                            uploads_pb2.AddUploadPartRequest(upload_id=upload_id),
                            lambda data: uploads_pb2.AddUploadPartRequest(chunk=data),
                            settings.upload_chunk_bytes,
                        )
                        await part.start()
                        in_data = True
                    case PartData() if in_data and part is not None:
                        await part.write(event.data)
                    case PartEnd():
                        in_data = False
        parser.close()
        if part is None:
            raise ApiError.invalid([("data", "required: a part named 'data'")])
        done = True
        return await part.finish()
    except MultipartError as error:
        raise ApiError.of(Code.INVALID_ARGUMENT, f"malformed multipart body: {error}") from None
    finally:
        if part is not None and not done:
            part.cancel()


BINARY = {"type": "string", "format": "binary"}


def form_openapi(properties: Mapping[str, dict], required: list[str]) -> dict:
    """An OpenAPI requestBody for a multipart form (the route reads the stream itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": dict(properties),
                        "required": required,
                    }
                }
            },
        }
    }
