"""Classification jobs: what CreateJob checks beyond the generic rules, from the files'
validation reports (which carry each label with its count and first line) and the base
model's kind. Every problem names its field and, for data, the line.

A job trains a classifier when its method is TYPE_CLASSIFICATION, or when its method is
unset and its training file is classification data (Cohere's `{"text", "label"}`).
"""

from __future__ import annotations

from collections.abc import Set

import sqlite_utils

from trainer import labels
from trainer.models import MINILM
from tunewire.v1 import files_pb2, jobs_pb2

Job = jobs_pb2.Job
File = files_pb2.File
Method = jobs_pb2.Method


def _file(db: sqlite_utils.Database, org: str, file_id: str) -> File | None:
    """A processed file's record; None when it is missing or failed (CreateJob's generic
    checks report those)."""
    if not file_id:
        return None
    row = db.execute("SELECT proto FROM files WHERE id = ? AND org = ?", [file_id, org]).fetchone()
    record = File.FromString(row[0]) if row else None
    return record if record is not None and record.state == File.STATE_PROCESSED else None


def _stats(report: files_pb2.ValidationReport) -> list[labels.LabelStat]:
    return [labels.LabelStat(x.label, x.example_count, x.first_line) for x in report.labels]


def implied_method(db: sqlite_utils.Database, org: str, job: Job) -> int:
    """The method a job with no method set trains with: TYPE_CLASSIFICATION for
    classification data, else unset (the caller's default)."""
    training = _file(db, org, job.training_file)
    if training is not None and labels.is_labelled(training.validation.format):
        return Method.TYPE_CLASSIFICATION
    return Method.TYPE_UNSPECIFIED


def check_job(
    db: sqlite_utils.Database, org: str, job: Job, encoders: Set[str], base_models: Set[str]
) -> list[tuple[str, str]]:
    """Every problem of a job with classification data or method, or with an encoder for a
    base model: (field, description)."""
    training = _file(db, org, job.training_file)
    validation = _file(db, org, job.validation_file)
    training_format = training.validation.format if training else ""
    labelled = labels.is_labelled(training_format)
    method = job.method.type
    problems: list[tuple[str, str]] = []
    if method == Method.TYPE_CLASSIFICATION and training and not labelled:
        problems.append(
            (
                "job.training_file",
                f"file {training.id!r} holds {training_format or 'no valid'} examples; a "
                'classification job trains on classification data ({"text", "label"} rows)',
            )
        )
    if method == Method.TYPE_SUPERVISED and labelled:
        problems.append(
            (
                "job.method.type",
                "the training file is classification data, which trains with "
                "TYPE_CLASSIFICATION (or leave the method unset)",
            )
        )
    classifying = method == Method.TYPE_CLASSIFICATION or (labelled and not method)
    if job.base_model in base_models:
        encoder = job.base_model in encoders
        if classifying and not encoder:
            problems.append(
                (
                    "job.base_model",
                    f"{job.base_model!r} generates text; a classifier fine-tunes an encoder "
                    f"such as {MINILM!r}",
                )
            )
        elif encoder and not classifying:
            problems.append(
                (
                    "job.base_model",
                    f"{job.base_model!r} is an encoder: it fine-tunes on classification "
                    'data ({"text", "label"} rows), not on what generates text',
                )
            )
    if not (classifying and labelled):
        return problems
    assert training is not None
    if why := labels.training_problem(_stats(training.validation)):
        problems.append(("job.training_file", why))
    if validation is not None:
        if why := labels.kind_mismatch(training_format, validation.validation.format):
            problems.append(("job.validation_file", f"file {validation.id!r} {why}"))
        else:
            known = [x.label for x in training.validation.labels]
            unknown = labels.unknown_labels(known, _stats(validation.validation))
            problems += [("job.validation_file", "; ".join(unknown[:5]))] if unknown else []
    return problems
