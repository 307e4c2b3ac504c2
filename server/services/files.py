"""FileService: streamed uploads with a size limit, validation, reads, deletes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from server.control_plane import ControlPlane, authenticated, caller_org
from server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from server.ids import new_id, now, timestamp
from server.lifecycle import FINAL_STATES_SQL
from server.store import pages, records
from server.store.blobs import BlobWriter
from server.store.db import write
from server.validation import Report, StreamValidation
from tunewire.v1 import files_pb2, files_pb2_grpc

File = files_pb2.File
MAX_FILENAME = 255


def report_proto(report: Report) -> files_pb2.ValidationReport:
    return files_pb2.ValidationReport(
        format=report.format.value if report.format else "",
        example_count=report.examples,
        line_count=report.lines,
        token_estimate=report.token_estimate,
        problem_count=report.problem_count,
        problems=[
            files_pb2.ValidationReport.Problem(
                line=p.line, path=p.path, code=p.code, message=p.message
            )
            for p in report.problems
        ],
        labels=[
            files_pb2.ValidationReport.Label(
                label=s.label, example_count=s.examples, first_line=s.first_line
            )
            for s in report.labels
        ],
    )


async def _drain(requests: AsyncIterator[files_pb2.UploadFileRequest], budget: int) -> None:
    """Read and discard the rest of an upload, up to `budget` bytes. A call ended
    while its client is still writing can reach that client as INTERNAL instead
    of its real status; a client that sends on past the budget is cut off anyway."""
    async for message in requests:
        budget -= len(message.chunk)
        if budget < 0:
            return


class Intake:
    """One file being stored: its bytes streamed to the blob store and, for a fine-tune
    file, validated as they arrive (server.validation.StreamValidation), so the report is
    ready when the last chunk is. UploadFile and CompleteUpload both store files with it,
    so a file is the same whichever way its bytes came."""

    def __init__(self, plane: ControlPlane, meta: files_pb2.UploadFileMetadata) -> None:
        self.plane = plane
        self.meta = meta
        self.file_id = new_id("file")
        self.size = 0  # bytes received
        self.writer: BlobWriter = plane.blobs.writer(f"files/{self.file_id}")
        self.validation = (
            StreamValidation(
                meta.filename,
                written=self.writer.follow(),
                max_line_bytes=plane.settings.max_line_bytes,
            )
            if meta.purpose == File.PURPOSE_FINE_TUNE
            else None
        )

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.writer.write(chunk)
        if self.validation is not None:
            await self.validation.feed(chunk)

    async def finish(self) -> File:
        """Wait for the report and make the blob visible; returns the file's record, not
        saved yet. Whatever ends the call before it is saved must `delete` the blob."""
        # The disk writes out the file while validation reads its last blocks: each waits
        # on something else, so the two overlap, and the event loop waits on neither.
        report, _ = await asyncio.gather(self._report(), asyncio.to_thread(self.writer.sync))
        record = File(
            id=self.file_id,
            filename=self.meta.filename,
            purpose=self.meta.purpose,
            bytes=self.writer.size,
            sha256=self.writer.sha256,
            state=File.STATE_PROCESSED,
        )
        if report is not None:
            record.validation.CopyFrom(report_proto(report))
            record.state = File.STATE_PROCESSED if report.ok else File.STATE_ERROR
        self.writer.commit()
        record.create_time.CopyFrom(timestamp(now()))
        return record

    async def _report(self) -> Report | None:
        return await self.validation.report() if self.validation is not None else None

    def discard(self) -> None:
        """Before `finish` has returned: no .part is left, and validation stops."""
        if self.validation is not None:
            self.validation.cancel()
        self.writer.discard()

    def delete(self) -> None:
        """After `finish`: the blob goes again."""
        self.plane.blobs.delete(self.writer.key)


class FileServicer(files_pb2_grpc.FileServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    @authenticated
    async def UploadFile(
        self,
        requests: AsyncIterator[files_pb2.UploadFileRequest],
        context: grpc.aio.ServicerContext,
    ) -> File:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument.field("metadata", "the first message must carry metadata")
        meta = first.metadata
        problems = []
        if not meta.filename or len(meta.filename) > MAX_FILENAME:
            problems.append(("metadata.filename", f"required, at most {MAX_FILENAME} characters"))
        if meta.purpose not in (File.PURPOSE_FINE_TUNE, File.PURPOSE_USER_DATA):
            problems.append(("metadata.purpose", "must be PURPOSE_FINE_TUNE or PURPOSE_USER_DATA"))
        if problems:
            raise InvalidArgument(problems)

        limit = self.plane.settings.max_upload_bytes
        intake = Intake(self.plane, meta)
        try:
            async for message in requests:
                if message.HasField("metadata"):
                    raise InvalidArgument.field("metadata", "sent twice; only the first message")
                if intake.size + len(message.chunk) > limit:
                    await _drain(requests, budget=limit)
                    raise ResourceExhausted(
                        f"file is larger than the upload limit of {limit} bytes"
                    )
                await intake.write(message.chunk)
            record = await intake.finish()
        except BaseException:  # a cancel or a closed socket too: no .part is left
            intake.discard()
            raise
        # The blob is visible now: whatever ends the call before its row is saved (a
        # cancel, a full database) takes it away again.
        try:
            with write(self.plane.db):
                self.plane.save_file(record, caller_org())
        except BaseException:
            intake.delete()
            raise
        return record

    @authenticated
    async def GetFile(self, request: files_pb2.GetFileRequest, context) -> File:
        return records.get(self.plane.db, "files", File, caller_org(), request.file_id)

    @authenticated
    async def ListFiles(self, request: files_pb2.ListFilesRequest, context):
        db, org = self.plane.db, caller_org()
        where, params = "org = ?", [org]
        if request.purpose:  # files_by_purpose
            where, params = where + " AND purpose = ?", [*params, request.purpose]
        cursor = None
        if request.after_id:
            cursor = pages.start_after(db, "files", "org = ?", [org], request.after_id, "file")
        rows, token = pages.keyset(
            db,
            "files",
            where,
            params,
            pages.page_size(request.page_size),
            request.page_token,
            desc=pages.descending(request.order_by),
            cursor=cursor,
        )
        return files_pb2.ListFilesResponse(
            files=[File.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def DeleteFile(self, request: files_pb2.DeleteFileRequest, context):
        org, db = caller_org(), self.plane.db
        records.get(db, "files", File, org, request.file_id)
        with write(db):
            in_use = db.execute(
                f"SELECT id FROM jobs WHERE org = ? AND state NOT IN ({FINAL_STATES_SQL})"
                " AND ? IN (training_file, validation_file)",
                [org, request.file_id],
            ).fetchone()
            if in_use:
                raise FailedPrecondition(
                    f"file {request.file_id!r} is used by job {in_use[0]!r}, which is not finished"
                )
            db.execute("DELETE FROM files WHERE id = ?", [request.file_id])
        self.plane.blobs.delete(f"files/{request.file_id}")
        return empty_pb2.Empty()

    @authenticated
    async def DownloadFile(self, request: files_pb2.DownloadFileRequest, context):
        record = records.get(self.plane.db, "files", File, caller_org(), request.file_id)
        for chunk in self.plane.blobs.read_chunks(
            f"files/{record.id}", record.bytes, record.sha256
        ):
            yield files_pb2.DownloadFileResponse(chunk=chunk)
