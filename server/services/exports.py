"""ExportService: merged safetensors and ONNX exports of fine-tuned models, as operations.

An export is QUEUED when created, RUNNING while a child process does the work
(`python -m trainer.merge` or `python -m trainer.onnx_export`), then SUCCEEDED with its
artifacts or FAILED with an error. The child reports progress as JSON lines, which become
the export's events, and writes into a temporary directory of the blob store that is
renamed to `blobs/exports/<id>` once complete. A process rather than a thread: the
exporter's tracing never competes with the server for the GIL, the memory of a merge is
returned when it exits, and a server stop can kill it. Exports run one at a time.

Exporting the same (model, format, int8) twice returns the existing export; a FAILED one is
run again under the same id, so a transient failure is never final. An export cut off by a
server stop is marked FAILED at the next start, ready to be created again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from server.control_plane import ControlPlane, authenticated, caller_org
from server.errors import FailedPrecondition, InvalidArgument, NotFound
from server.ids import new_id, now, timestamp
from server.services.worker import artifacts
from server.store import pages, records
from server.store.blobs import read_chunks
from server.store.db import write
from tunewire.v1 import common_pb2, events_pb2, exports_pb2, exports_pb2_grpc, models_pb2

log = logging.getLogger("tunewire.exports")

Export = exports_pb2.Export
Event = events_pb2.Event
MODULES = {
    Export.FORMAT_MERGED_SAFETENSORS: "trainer.merge",
    Export.FORMAT_ONNX: "trainer.onnx_export",
}
UNFINISHED = (Export.STATE_QUEUED, Export.STATE_RUNNING)


class ExportFailed(Exception):
    """Why an export failed, as its `error` will say."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_create(export: Export) -> None:
    """Every problem with a CreateExport request's export, together."""
    problems = []
    if not export.model_id:
        problems.append(("export.model_id", "required"))
    if export.format not in MODULES:
        problems.append(("export.format", "must be FORMAT_MERGED_SAFETENSORS or FORMAT_ONNX"))
    if export.quantize_int8 and export.format != Export.FORMAT_ONNX:
        problems.append(("export.quantize_int8", "applies to FORMAT_ONNX only"))
    if problems:
        raise InvalidArgument(problems)


def state_name(state: int) -> str:
    return Export.State.Name(state).removeprefix("STATE_").lower()


class ExportServicer(exports_pb2_grpc.ExportServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._slot = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task] = set()
        self._fail_interrupted()

    # --- records and events -------------------------------------------------------------

    def _save(self, export: Export, org: str) -> None:
        records.put(
            self.plane.db,
            "exports",
            export,
            org=org,
            model_id=export.model_id,
            format=export.format,
            quantize_int8=int(export.quantize_int8),
            created_at=export.create_time.ToNanoseconds() / 1e9,
        )

    def _transition(
        self,
        export: Export,
        org: str,
        state: int,
        message: str,
        level: int = Event.LEVEL_INFO,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Save `export` in `state` with its TYPE_STATE event, in one transaction."""
        export.state = state
        if state in (Export.STATE_SUCCEEDED, Export.STATE_FAILED):
            export.finish_time.CopyFrom(timestamp(now()))
        with write(self.plane.db):
            self._save(export, org)
            self.plane.events.append(
                export.id,
                message,
                level=level,
                type=Event.TYPE_STATE,
                data={"state": state_name(state), **(data or {})},
            )

    def _fail(self, export: Export, org: str, code: str, message: str) -> None:
        export.error.code, export.error.message = code, message
        self._transition(
            export,
            org,
            Export.STATE_FAILED,
            f"Export failed: {message}",
            level=Event.LEVEL_ERROR,
            data={"error": code},
        )

    def _fail_interrupted(self) -> None:
        for org, proto in self.plane.db.execute("SELECT org, proto FROM exports").fetchall():
            export = Export.FromString(proto)
            if export.state in UNFINISHED:
                self._fail(
                    export,
                    org,
                    "interrupted",
                    "the server stopped before the export finished; create it again to retry",
                )

    # --- running an export --------------------------------------------------------------

    def _inputs(self, org: str, model_id: str) -> tuple[Path, Path]:
        """The base model dir and adapter dir of fine-tuned model `model_id`."""
        from trainer.models import resolve_model  # torch-heavy; see ControlPlane

        row = self.plane.db.execute(
            "SELECT adapter_path, proto FROM models WHERE id = ? AND org = ?", [model_id, org]
        ).fetchone()
        if row is None:
            raise ExportFailed("model_not_found", f"model {model_id!r} no longer exists")
        adapter = Path(row[0])
        if not (adapter / "adapter_config.json").is_file():
            raise ExportFailed("adapter_missing", f"the adapter of model {model_id!r} is gone")
        base_model = models_pb2.FineTunedModel.FromString(row[1]).base_model
        try:
            return resolve_model(self.plane.settings.models_dir, base_model), adapter
        except ValueError as error:
            raise ExportFailed(
                "base_model_missing", f"base model {base_model!r} is not in the models dir"
            ) from error

    def _start(self, export_id: str, org: str) -> None:
        task = asyncio.create_task(self._run(export_id, org))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, export_id: str, org: str) -> None:
        async with self._slot:
            export = records.get(self.plane.db, "exports", Export, org, export_id)
            self._transition(export, org, Export.STATE_RUNNING, "Export started")
            try:
                result, produced = await self._produce(export, org)
            except ExportFailed as failure:
                self._fail(export, org, failure.code, failure.message)
                return
            except Exception:  # noqa: BLE001 - an export must end in a state, never hang
                ref = secrets.token_hex(4)
                log.exception("export %s failed (ref %s)", export.id, ref)
                self._fail(export, org, "internal", f"internal error (ref {ref})")
                return
            export.max_logit_diff = result.get("max_logit_diff") or 0.0
            export.int8_max_logit_diff = result.get("int8_max_logit_diff") or 0.0
            del export.artifacts[:]
            export.artifacts.extend(produced)
            total = sum(artifact.bytes for artifact in produced)
            self._transition(
                export,
                org,
                Export.STATE_SUCCEEDED,
                f"Export succeeded: {len(produced)} files, {total:,} bytes",
                data={"files": len(produced), "bytes": total},
            )

    async def _produce(
        self, export: Export, org: str
    ) -> tuple[dict[str, Any], list[common_pb2.Artifact]]:
        """Run the child process; returns its result and the artifacts now in place."""
        base, adapter = self._inputs(org, export.model_id)
        blobs, settings = self.plane.blobs, self.plane.settings
        staging = blobs.root / "tmp" / f"{export.id}.{secrets.token_hex(4)}"
        command = [sys.executable, "-m", MODULES[export.format], str(base), str(adapter)]
        command += [str(staging), *(["--int8"] if export.quantize_int8 else [])]
        (settings.home / "logs").mkdir(parents=True, exist_ok=True)
        with open(settings.home / "logs" / f"{export.id}.log", "ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            outcome = await self._follow(export, process)
            code = await process.wait()
        except BaseException:
            # Cancelled at shutdown (or broken): the database may be closed by now, so
            # only stop the work; the next start marks the export FAILED.
            process.kill()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            if "error" in outcome:
                raise ExportFailed(outcome["error"]["code"], outcome["error"]["message"])
            if code != 0 or "result" not in outcome:
                raise ExportFailed("export_failed", f"the export process exited with code {code}")
            produced = await asyncio.to_thread(artifacts, staging)
            final = blobs.path("exports", export.id)
            # What a failed earlier run of this export may have left.
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return outcome["result"], produced

    async def _follow(self, export: Export, process: asyncio.subprocess.Process) -> dict:
        """Append the child's events as they come; return its final line (result or error)."""
        outcome: dict = {}
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                # A library printing to stdout: keep it in the log, not in the events.
                log.info("export %s: %s", export.id, line.decode(errors="replace").rstrip())
            elif "event" in record:
                with write(self.plane.db):
                    self.plane.events.append(
                        export.id, str(record["event"]), data=record.get("data") or None
                    )
            else:
                outcome = record
        return outcome

    def _find_or_queue(self, org: str, spec: Export) -> tuple[Export, bool]:
        """The export of `spec`'s model, format and int8: the existing one, or a new one (or
        the failed one again) queued now, which the bool says. In a write transaction."""
        row = self.plane.db.execute(
            "SELECT proto FROM exports WHERE org = ? AND model_id = ? AND format = ?"
            " AND quantize_int8 = ?",
            [org, spec.model_id, spec.format, int(spec.quantize_int8)],
        ).fetchone()
        if row is None:
            export = Export(
                id=new_id("export"),
                model_id=spec.model_id,
                format=spec.format,
                quantize_int8=spec.quantize_int8,
                create_time=timestamp(now()),
            )
            message = "Export queued"
        else:
            export = Export.FromString(row[0])
            if export.state != Export.STATE_FAILED:
                return export, False
            for name in ("error", "finish_time", "max_logit_diff", "int8_max_logit_diff"):
                export.ClearField(name)
            message = "Export queued again after a failure"
        export.state = Export.STATE_QUEUED
        self._save(export, org)
        self.plane.events.append(
            export.id, message, type=Event.TYPE_STATE, data={"state": "queued"}
        )
        return export, True

    # --- the API ----------------------------------------------------------------------

    @authenticated
    async def CreateExport(self, request: exports_pb2.CreateExportRequest, context) -> Export:
        org, db = caller_org(), self.plane.db
        check_create(request.export)
        records.get(db, "models", models_pb2.FineTunedModel, org, request.export.model_id)
        with write(db):
            export, queued = self._find_or_queue(org, request.export)
        if queued:
            self._start(export.id, org)
        return export

    @authenticated
    async def GetExport(self, request: exports_pb2.GetExportRequest, context) -> Export:
        return records.get(self.plane.db, "exports", Export, caller_org(), request.export_id)

    @authenticated
    async def ListExports(self, request: exports_pb2.ListExportsRequest, context):
        rows, token = pages.newest_first(
            self.plane.db,
            "exports",
            "org = ?",
            [caller_org()],
            pages.page_size(request.page_size),
            request.page_token,
        )
        return exports_pb2.ListExportsResponse(
            exports=[Export.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def ListExportEvents(self, request: exports_pb2.ListExportEventsRequest, context):
        records.get(self.plane.db, "exports", Export, caller_org(), request.export_id)
        cursor = pages.decode(request.page_token, 1)[0] if request.page_token else 0
        size = pages.page_size(request.page_size)
        batch = self.plane.events.after(request.export_id, cursor, size + 1)
        token = pages.encode([batch[size - 1].sequence]) if len(batch) > size else ""
        return exports_pb2.ListExportEventsResponse(events=batch[:size], next_page_token=token)

    @authenticated
    async def DownloadExportArtifact(
        self, request: exports_pb2.DownloadExportArtifactRequest, context
    ):
        export = records.get(self.plane.db, "exports", Export, caller_org(), request.export_id)
        if export.state != Export.STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"export {export.id!r} is {state_name(export.state)}; "
                "its artifacts are ready once it has succeeded"
            )
        artifact = next((a for a in export.artifacts if a.path == request.path), None)
        if artifact is None:
            raise NotFound("artifact", request.path)
        # The path is one the export recorded, never the request's own.
        path = self.plane.blobs.path("exports", export.id) / artifact.path
        for chunk in read_chunks(path, artifact.bytes, artifact.sha256):
            yield exports_pb2.DownloadExportArtifactResponse(chunk=chunk)
