"""Checking a CreateJob request: every problem found is reported together,
each naming its field (BadRequest field violations)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Set

import sqlite_utils

from server import classification, graders, integrations
from server.errors import InvalidArgument
from server.validation import describe
from trainer.hyperparameters import TABLE
from tunewire.v1 import files_pb2, jobs_pb2

Job = jobs_pb2.Job
File = files_pb2.File

SUFFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_SEED = 2_147_483_647
MIN_EXAMPLES = 10  # OpenAI's minimum; documents (text) are chunked, so exempt
MAX_METADATA = 16
MAX_REQUEST_ID = 128
MAX_WORKERS = 8  # data-parallel ranks on one machine


def method_name(method: jobs_pb2.Method) -> str:
    """The method as the hyperparameter table and the trainer name it: supervised, dpo."""
    if method.type == jobs_pb2.Method.TYPE_REINFORCEMENT:
        return "reinforcement"
    return "dpo" if method.type == jobs_pb2.Method.TYPE_DPO else "supervised"


def check_hyperparameters(
    hp: jobs_pb2.Hyperparameters, method: str = "supervised"
) -> list[tuple[str, str]]:
    """Each set field against its row of the one table (unset means its default); a
    method's own hyperparameter (DPO's beta) is refused on a job of another method."""
    problems = []
    for row in TABLE:
        if not hp.HasField(row.name):
            continue
        if row.method and row.method != method:
            problem = (
                f"{row.name} is a {row.method.upper()} hyperparameter; this job's method is "
                f"{method}"
            )
        else:
            problem = row.problem(getattr(hp, row.name))
        if problem:
            problems.append((f"job.hyperparameters.{row.name}", problem))
    return problems


PREFERENCE_SHAPE = "preference examples (input, preferred_output, non_preferred_output)"


def check_fits_method(field: str, record: File, method: str) -> list[tuple[str, str]]:
    """A DPO job trains on preference data, and only it does: the file's validation
    report says which format it holds."""
    fmt = record.validation.format
    if (method == "reinforcement") != (fmt == "reinforcement") and fmt != "preference":
        return [(field, graders.format_problem(record.id, fmt, method))]
    if method == "dpo" and fmt != "preference":
        return [
            (
                field,
                f"file {record.id!r} holds {fmt or 'no valid'} examples; method DPO trains on "
                f"{PREFERENCE_SHAPE}",
            )
        ]
    if method != "dpo" and fmt == "preference":
        return [
            (
                field,
                f"file {record.id!r} holds {PREFERENCE_SHAPE}, which train with method DPO; "
                f"a {method} job trains on chat, prompt/completion or text data",
            )
        ]
    return []


def check_metadata(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    problems = []
    if len(metadata) > MAX_METADATA:
        problems.append(("job.metadata", f"at most {MAX_METADATA} pairs"))
    for key, value in metadata.items():
        if not 0 < len(key) <= 64:
            problems.append((f"job.metadata[{key!r}]", "keys must be 1-64 characters"))
        if len(value) > 512:
            problems.append((f"job.metadata[{key!r}]", "values must be at most 512 characters"))
    return problems


def _check_file(
    db: sqlite_utils.Database, org: str, field: str, file_id: str
) -> tuple[list[tuple[str, str]], File | None]:
    # The field names the kind, so each surface's own (OpenAI's `training_file`, Cohere's
    # `settings.dataset_id`) reads right: the descriptions never say "file".
    row = db.execute("SELECT proto FROM files WHERE id = ? AND org = ?", [file_id, org]).fetchone()
    if row is None:
        return [(field, f"{file_id!r} does not exist")], None
    record = File.FromString(row[0])
    if record.purpose != File.PURPOSE_FINE_TUNE:
        return [
            (field, f"{file_id!r} was not uploaded for fine-tuning (purpose fine-tune)")
        ], record
    if record.state != File.STATE_PROCESSED:
        report = record.validation
        # The first problem, so the caller can start fixing without another request.
        first = (
            f" The first: {describe(p.line, p.path, p.message)}"
            if (p := next(iter(report.problems), None))
            else ""
        )
        return [
            (
                field,
                f"{file_id!r} failed validation with {report.problem_count} problem(s); "
                f"fix them and upload it again.{first}",
            )
        ], record
    return [], record


def check_create(
    db: sqlite_utils.Database,
    org: str,
    job: Job,
    request_id: str,
    base_models: set[str],
    encoders: Set[str] = frozenset(),
) -> Job:
    """The job to store, with defaults filled in; raises InvalidArgument. `encoders`: the
    base models that classify rather than generate."""
    problems: list[tuple[str, str]] = []
    reason = ""
    method = method_name(job.method)
    if not job.base_model:
        problems.append(("job.base_model", "required"))
    elif job.base_model not in base_models:
        known = ", ".join(sorted(base_models)) or "none; run 'tunewire models init-tiny'"
        problems.append(
            ("job.base_model", f"unknown base model {job.base_model!r}; known: {known}")
        )

    if not job.training_file:
        problems.append(("job.training_file", "required"))
    else:
        found, training = _check_file(db, org, "job.training_file", job.training_file)
        problems += found
        if training and not found:
            problems += check_fits_method("job.training_file", training, method)
        report = training.validation if training and not found else None
        if report and report.format != "text" and report.example_count < MIN_EXAMPLES:
            reason = "invalid_n_examples"  # OpenAI's code for it
            problems.append(
                (
                    "job.training_file",
                    f"Training file has {report.example_count} example(s), "
                    f"but must have at least {MIN_EXAMPLES} examples",
                )
            )
    if job.validation_file:
        found, validation = _check_file(db, org, "job.validation_file", job.validation_file)
        problems += found
        if validation and not found:
            problems += check_fits_method("job.validation_file", validation, method)

    problems += check_hyperparameters(job.hyperparameters, method)
    problems += graders.check_job(job, method)
    workers = job.compute.workers
    if job.compute.HasField("workers") and not 1 <= workers <= MAX_WORKERS:
        problems.append(("job.compute.workers", f"{workers} is out of range [1, {MAX_WORKERS}]"))
    gpus = job.compute.gpus_per_worker
    if job.compute.HasField("gpus_per_worker") and gpus not in (0, 1):
        problems.append(("job.compute.gpus_per_worker", f"{gpus} is out of range [0, 1]"))
    if job.HasField("seed") and not 0 <= job.seed <= MAX_SEED:
        problems.append(("job.seed", f"must be in [0, {MAX_SEED}]"))
    if job.suffix and not SUFFIX.fullmatch(job.suffix):
        problems.append(("job.suffix", "at most 64 characters of letters, digits, '_', '.', '-'"))
    problems += check_metadata(job.metadata)
    if len(job.integrations) > 5:
        problems.append(("job.integrations", "at most 5"))
    problems += integrations.check(job.integrations)
    if len(request_id) > MAX_REQUEST_ID:
        problems.append(("request_id", f"at most {MAX_REQUEST_ID} characters"))
    problems += classification.check_job(db, org, job, encoders, base_models)
    if problems:
        raise InvalidArgument(problems, reason)

    clean = Job()
    clean.CopyFrom(job)
    for output_only in (
        "id",
        "state",
        "error",
        "fine_tuned_model",
        "trained_tokens",
        "result_files",
        "organization",
        "create_time",
        "finish_time",
        "estimated_finish",
        "progress",
    ):
        clean.ClearField(output_only)
    if not clean.HasField("seed"):
        clean.seed = secrets.randbelow(MAX_SEED + 1)
    clean.method.type = clean.method.type or classification.implied_method(db, org, job)
    clean.method.type = clean.method.type or jobs_pb2.Method.TYPE_SUPERVISED
    return clean
