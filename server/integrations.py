"""A job's tracking integrations (Weights & Biases, MLflow): their check, and their API
keys, which are sealed apart from the job (server/secrets.py) and handed only to the
worker that trains it; the job as stored and shown never holds one."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlite_utils

from server.secrets import SecretBox
from tunewire.v1 import jobs_pb2

Integration = jobs_pb2.Integration
TYPES = ("wandb", "mlflow")
TRACKING_FILES = ("tensorboard", "wandb")
"""The archives a training worker may add to a job's result files."""
MAX_TEXT = 256
MAX_TAGS = 64
MAX_KEY = 1024


def _url_problem(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as error:
        return f"not a URL: {error}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL"
    return ""


def check(integrations: Sequence[Integration], prefix: str = "job.integrations") -> list:
    """Every problem with a job's integrations, each naming its field."""
    problems: list[tuple[str, str]] = []
    for i, it in enumerate(integrations):
        field = f"{prefix}[{i}]"
        if it.type not in TYPES:
            problems.append((f"{field}.type", "must be 'wandb' or 'mlflow'"))
            continue
        if it.type == "wandb" and not it.project:
            problems.append((f"{field}.project", "required for a wandb integration"))
        if it.type == "mlflow" and not it.tracking_uri:
            problems.append((f"{field}.tracking_uri", "required for an mlflow integration"))
        if it.tracking_uri and (problem := _url_problem(it.tracking_uri)):
            problems.append((f"{field}.tracking_uri", problem))
        for name in ("project", "entity", "name", "experiment", "tracking_uri"):
            if len(getattr(it, name)) > MAX_TEXT:
                problems.append((f"{field}.{name}", f"at most {MAX_TEXT} characters"))
        if len(it.tags) > MAX_TAGS or any(not 0 < len(tag) <= 64 for tag in it.tags):
            problems.append((f"{field}.tags", f"at most {MAX_TAGS} tags of 1-64 characters"))
        if len(it.api_key) > MAX_KEY:
            problems.append((f"{field}.api_key", f"at most {MAX_KEY} characters"))
    return problems


def _name(index: int) -> str:
    return f"integrations[{index}].api_key"


def take_keys(job: jobs_pb2.Job) -> dict[int, str]:
    """Take the API keys out of `job`'s integrations (marking `has_api_key`): index -> key."""
    keys = {}
    for index, it in enumerate(job.integrations):
        if it.api_key:
            keys[index] = it.api_key
            it.has_api_key = True
        it.ClearField("api_key")
    return keys


def save_keys(db: sqlite_utils.Database, box: SecretBox, job_id: str, keys: dict) -> None:
    """Seal a new job's API keys; in its creating transaction."""
    for index, key in keys.items():
        box.put(db, job_id, _name(index), key)


def with_keys(db: sqlite_utils.Database, box: SecretBox, job: jobs_pb2.Job) -> list[Integration]:
    """`job`'s integrations with their API keys, for the worker that trains it. A key that
    cannot be opened (secret.key replaced) is left out: the tracker says so in the events."""
    found = []
    for index, it in enumerate(job.integrations):
        copy = Integration()
        copy.CopyFrom(it)
        if it.has_api_key:
            try:
                copy.api_key = box.get(db, job.id, _name(index)) or ""
            except Exception:  # noqa: BLE001 - InvalidTag: sealed under another key
                copy.api_key = ""
        found.append(copy)
    return found
