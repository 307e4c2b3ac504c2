"""UploadService: files too large for one request, sent in parts (OpenAI's Uploads API).

An upload is a row; each part a row and a blob (`uploads/<upload id>/<part id>`), stored
(fsynced, renamed into place, recorded) before it is acknowledged, so a client that is cut
off resumes by adding the parts it has no acknowledgement for. Completing streams the
parts, in the order given, through the same `Intake` as UploadFile (so the file and its
validation report are what UploadFile would make of those bytes), then records the file
and the completed upload in one transaction: a failure leaves the upload pending and no
file. Uploads past their expiry are marked expired and their parts deleted by a sweep
that every call of this service runs first (and the start-up sweep of abandoned blobs).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import IO

import grpc

from server.control_plane import UPLOADS, ControlPlane, authenticated, caller_org
from server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    TunewireError,
    cut,
)
from server.ids import new_id, now, timestamp
from server.services.files import MAX_FILENAME, Intake, _drain
from server.store import records
from server.store.blobs import CHUNK
from server.store.db import write
from tunewire.v1 import files_pb2, uploads_pb2, uploads_pb2_grpc

Upload = uploads_pb2.Upload
UploadPart = uploads_pb2.UploadPart
File = files_pb2.File
MAX_PARTS = 10_000
"""Parts one upload may hold (OpenAI's 8 GB in 64 MB parts is 125)."""
MAX_MIME_TYPE = 255
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")

log = logging.getLogger("tunewire.server")


def _state_name(state: int) -> str:
    return Upload.State.Name(state).removeprefix("STATE_").lower()  # type: ignore[arg-type]


def _not_pending(upload: Upload, what: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"upload {upload.id!r} is {_state_name(upload.state)}; only a pending upload {what}"
    )


class UploadServicer(uploads_pb2_grpc.UploadServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    # --- records ------------------------------------------------------------------------

    def _load(self, upload_id: str) -> Upload:
        """The caller's upload (NOT_FOUND for another org's, like a missing one); one past
        its expiry reads as expired even before the sweep has marked it."""
        upload = records.get(self.plane.db, "uploads", Upload, caller_org(), upload_id)
        if (
            upload.state == Upload.STATE_PENDING
            and upload.expire_time.ToNanoseconds() / 1e9 <= now()
        ):
            upload.state = Upload.STATE_EXPIRED
        return upload

    def _save(self, upload: Upload, org: str) -> None:
        records.put(
            self.plane.db,
            "uploads",
            upload,
            org=org,
            state=upload.state,
            created_at=upload.create_time.ToNanoseconds() / 1e9,
            expires_at=upload.expire_time.ToNanoseconds() / 1e9,
        )

    def _totals(self, upload_id: str) -> tuple[int, int]:
        """(parts, bytes) an upload holds."""
        count, size = self.plane.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = ?",
            [upload_id],
        ).fetchone()
        return count, size

    def _shown(self, upload: Upload) -> Upload:
        if upload.state == Upload.STATE_PENDING:
            upload.part_count, upload.received_bytes = self._totals(upload.id)
        return upload

    def _end(self, upload: Upload, state: int, org: str) -> None:
        """In a write transaction: the upload leaves pending, and its parts' rows go (their
        blobs go once it commits: `_drop_parts`)."""
        upload.state = state  # type: ignore[assignment]
        self._save(upload, org)
        self.plane.db.execute("DELETE FROM upload_parts WHERE upload_id = ?", [upload.id])

    def _drop_parts(self, upload_id: str) -> None:
        self.plane.blobs.delete(f"{UPLOADS}/{upload_id}")

    def sweep(self) -> None:
        """Mark the pending uploads past their expiry expired and delete their parts; an
        index read when there are none."""
        due = "state = ? AND expires_at <= ?"
        args = [Upload.STATE_PENDING, now()]
        if self.plane.db.execute(f"SELECT 1 FROM uploads WHERE {due} LIMIT 1", args).fetchone():
            with write(self.plane.db):
                rows = self.plane.db.execute(
                    f"SELECT org, proto FROM uploads WHERE {due}", args
                ).fetchall()
                for org, proto in rows:
                    self._end(Upload.FromString(proto), Upload.STATE_EXPIRED, org)
            for _, proto in rows:
                self._drop_parts(Upload.FromString(proto).id)

    # --- the calls ----------------------------------------------------------------------

    @authenticated
    async def CreateUpload(self, request: uploads_pb2.CreateUploadRequest, context) -> Upload:
        given, limit = request.upload, self.plane.settings.max_chunked_upload_bytes
        problems = []
        if not given.filename or len(given.filename) > MAX_FILENAME:
            problems.append(("upload.filename", f"required, at most {MAX_FILENAME} characters"))
        if given.purpose not in (File.PURPOSE_FINE_TUNE, File.PURPOSE_USER_DATA):
            problems.append(("upload.purpose", "must be PURPOSE_FINE_TUNE or PURPOSE_USER_DATA"))
        if not 0 <= given.bytes <= limit:
            problems.append(
                ("upload.bytes", f"must be from 0 to {limit} (the chunked-upload limit)")
            )
        if not given.mime_type or len(given.mime_type) > MAX_MIME_TYPE:
            problems.append(("upload.mime_type", f"required, at most {MAX_MIME_TYPE} characters"))
        if problems:
            raise InvalidArgument(problems)
        self.sweep()
        created = now()
        upload = Upload(
            id=new_id("upload", "_"),
            filename=given.filename,
            purpose=given.purpose,
            bytes=given.bytes,
            mime_type=given.mime_type,
            state=Upload.STATE_PENDING,
            create_time=timestamp(created),
            expire_time=timestamp(created + self.plane.settings.upload_expiry_seconds),
        )
        with write(self.plane.db):
            self._save(upload, caller_org())
        return upload

    @authenticated
    async def GetUpload(self, request: uploads_pb2.GetUploadRequest, context) -> Upload:
        self.sweep()
        return self._shown(self._load(request.upload_id))

    @authenticated
    async def AddUploadPart(
        self,
        requests: AsyncIterator[uploads_pb2.AddUploadPartRequest],
        context: grpc.aio.ServicerContext,
    ) -> UploadPart:
        first = await anext(aiter(requests), None)
        if first is None or not first.upload_id:
            raise InvalidArgument.field("upload_id", "required in the first message")
        self.sweep()
        limit = self.plane.settings.max_upload_part_bytes
        try:
            upload = self._load(first.upload_id)
            if upload.state != Upload.STATE_PENDING:
                raise _not_pending(upload, "takes parts")
        except TunewireError:
            await _drain(requests, budget=limit)  # so the client reads this status, not INTERNAL
            raise
        room = upload.bytes - self._totals(upload.id)[1]
        part_id = new_id("part", "_")
        writer = self.plane.blobs.writer(f"{UPLOADS}/{upload.id}/{part_id}")
        try:
            message = first
            while message is not None:
                if message.upload_id not in ("", upload.id):
                    raise InvalidArgument.field("upload_id", "differs from the first message's")
                size = writer.size + len(message.chunk)
                if size > limit:
                    await _drain(requests, budget=limit)
                    raise ResourceExhausted(f"part is larger than the part limit of {limit} bytes")
                if size > room:
                    await _drain(requests, budget=limit)
                    raise self._overfull(upload, room)
                writer.write(message.chunk)
                message = await anext(requests, None)
            await asyncio.to_thread(writer.sync)
            writer.commit()
        except BaseException:  # a cancel or a closed socket too: no .part is left
            writer.discard()
            raise
        part = UploadPart(
            id=part_id,
            upload_id=upload.id,
            bytes=writer.size,
            sha256=writer.sha256,
            create_time=timestamp(now()),
        )
        # Stored: recorded now, unless the upload was ended or filled up meanwhile.
        try:
            with write(self.plane.db):
                current = self._load(upload.id)
                if current.state != Upload.STATE_PENDING:
                    raise _not_pending(current, "takes parts")
                count, held = self._totals(upload.id)
                if held + part.bytes > upload.bytes:
                    raise self._overfull(upload, upload.bytes - held)
                if count >= MAX_PARTS:
                    raise FailedPrecondition(
                        f"upload {upload.id!r} has {MAX_PARTS} parts, the most one may have"
                    )
                records.put(
                    self.plane.db, "upload_parts", part, upload_id=upload.id, bytes=part.bytes
                )
        except BaseException:
            self.plane.blobs.delete(writer.key)
            raise
        return part

    @staticmethod
    def _overfull(upload: Upload, room: int) -> InvalidArgument:
        return InvalidArgument.field(
            "chunk",
            f"the part is larger than the {max(room, 0)} bytes left of the upload's declared "
            f"bytes ({upload.bytes})",
        )

    @authenticated
    async def CompleteUpload(self, request: uploads_pb2.CompleteUploadRequest, context) -> Upload:
        self.sweep()
        org = caller_org()
        upload = self._load(request.upload_id)
        if upload.state != Upload.STATE_PENDING:
            raise _not_pending(upload, "can be completed")
        sizes = dict(
            self.plane.db.execute(
                "SELECT id, bytes FROM upload_parts WHERE upload_id = ?", [upload.id]
            ).fetchall()
        )
        problems, seen = [], set()
        for i, part_id in enumerate(request.part_ids):
            if part_id not in sizes:
                problems.append(
                    (f"part_ids[{i}]", f"{cut(part_id, 64)!r} is not a part of this upload")
                )
            elif part_id in seen:
                problems.append((f"part_ids[{i}]", f"part {part_id!r} is listed twice"))
            seen.add(part_id)
        if request.md5 and not _MD5.match(request.md5):
            problems.append(("md5", "must be 32 hex digits"))
        if problems:
            raise InvalidArgument(problems)
        total = sum(sizes[p] for p in request.part_ids)
        if total != upload.bytes:
            raise InvalidArgument.field(
                "part_ids",
                f"the parts listed hold {total} bytes, but the upload declared bytes "
                f"{upload.bytes}",
            )

        meta = files_pb2.UploadFileMetadata(filename=upload.filename, purpose=upload.purpose)
        intake = Intake(self.plane, meta)
        md5 = hashlib.md5()
        try:
            for part_id in request.part_ids:
                try:
                    blob = self.plane.blobs.open(f"{UPLOADS}/{upload.id}/{part_id}")
                except FileNotFoundError:  # cancelled or expired while this one assembled
                    raise _not_pending(self._load(upload.id), "can be completed") from None
                with blob:
                    while block := await asyncio.to_thread(_read, blob, md5):
                        await intake.write(block)
            if request.md5 and md5.hexdigest() != request.md5.lower():
                raise InvalidArgument.field(
                    "md5", f"does not match the parts, whose md5 is {md5.hexdigest()}"
                )
            record = await intake.finish()
        except BaseException:
            intake.discard()
            raise
        # The file is visible now: it is recorded together with the completed upload, or
        # taken away again.
        try:
            with write(self.plane.db):
                # Completed or cancelled meanwhile? (An expiry meanwhile does not count: the
                # request came in time.)
                stored = records.get(self.plane.db, "uploads", Upload, org, upload.id)
                if stored.state != Upload.STATE_PENDING:
                    raise _not_pending(stored, "can be completed")
                self.plane.save_file(record, org)
                upload.file.CopyFrom(record)
                self._end(upload, Upload.STATE_COMPLETED, org)
        except BaseException:
            intake.delete()
            raise
        self._drop_parts(upload.id)
        return upload

    @authenticated
    async def CancelUpload(self, request: uploads_pb2.CancelUploadRequest, context) -> Upload:
        self.sweep()
        with write(self.plane.db):
            upload = self._load(request.upload_id)
            if upload.state != Upload.STATE_PENDING:
                raise _not_pending(upload, "can be cancelled")
            self._end(upload, Upload.STATE_CANCELLED, caller_org())
        self._drop_parts(upload.id)
        return upload


def _read(blob: IO[bytes], md5: hashlib._Hash) -> bytes:
    block = blob.read(CHUNK)
    md5.update(block)
    return block
