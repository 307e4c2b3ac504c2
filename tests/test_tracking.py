"""Experiment tracking with real trackers: a real training job (tiny-llama, 8 steps) logs
to a real MLflow tracking server that this module starts on 127.0.0.1, to Weights &
Biases through the real `wandb` client (offline: no W&B server here, so the run's files
come back as a result file of the job), and to TensorBoard event files (a result file of
every job); each must hold what the job's events hold. A tracker that is down never fails
the job: it shows up as warn events. API keys are never shown or stored in plain text.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SAMPLE_CHAT, Org, Server, chat_lines, launch

from tunewire.v1 import events_pb2, files_pb2, jobs_pb2

Job = jobs_pb2.Job
Event = events_pb2.Event
BIN = Path(sys.executable).parent
MLFLOW_START_TIMEOUT = 180.0
JOB_TIMEOUT = 300.0
REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
NOT_METRICS = {"step", "total_steps", "epoch"}
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a real MLflow tracking server ------------------------------------------------------------


@dataclass
class Mlflow:
    process: subprocess.Popen
    url: str
    log: Path
    artifacts: Path

    def wait(self) -> str:
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server not ready"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlflow]:
    """`mlflow server` (mlflow-skinny's server and the packages it imports) on a free port
    with a SQLite backend; started now, waited for when first used."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = root / "mlflow.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
                *("--default-artifact-root", str(root / "artifacts")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its uvicorn workers stop with it
        )
    try:
        yield Mlflow(process, f"http://127.0.0.1:{port}", log, root / "artifacts")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def trainer_env(**extra: str) -> dict[str, str]:
    # No W&B account here: the client logs offline, whatever the environment says.
    return {
        "TUNEWIRE_MAX_RUNNING_JOBS": "1",
        "TUNEWIRE_HEARTBEAT_SECONDS": "0.5",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **extra,
    }


@pytest.fixture(scope="module")
def trainer(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, mlflow_server: Mlflow
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("tracking")
    srv = launch(root / "home", models_dir, root / "logs", **trainer_env())
    try:
        yield srv
    finally:
        srv.terminate()
        srv.kill()


def rest_url(srv: Server) -> str:
    found = REST_READY.search(srv.stdout)
    assert found, srv.stdout
    return f"http://{found.group(1)}:{found.group(2)}"


# --- reading what the trackers wrote ----------------------------------------------------------


def run_to_end(org: Org, job_id: str) -> tuple[Job, list[Event]]:
    request = jobs_pb2.StreamJobEventsRequest(job_id=job_id)
    events = [r.event for r in org.jobs.StreamJobEvents(request, timeout=JOB_TIMEOUT)]
    return org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id)), events


def event_metrics(events: list[Event]) -> dict[int, dict[str, float]]:
    """step -> every metric the job's events hold at it: its metrics event's, which has
    the validation's figures too at a step that validated."""
    found: dict[int, dict[str, float]] = defaultdict(dict)
    for event in events:
        if event.type == Event.TYPE_METRICS:
            data = dict(event.data)
            step = int(data["step"])
            found[step] |= {k: v for k, v in data.items() if k not in NOT_METRICS}
    assert found, [e.message for e in events]
    return dict(found)


def result_archive(org: Org, job: Job, kind: str, into: Path) -> Path:
    """The job's `<job>-<kind>.tar.gz` result file, downloaded and extracted into `into`."""
    names = {
        org.files.GetFile(files_pb2.GetFileRequest(file_id=f)).filename: f for f in job.result_files
    }
    file_id = names[f"{job.id}-{kind}.tar.gz"]
    record = org.files.GetFile(files_pb2.GetFileRequest(file_id=file_id))
    assert record.purpose == files_pb2.File.PURPOSE_FINE_TUNE_RESULTS
    data = b"".join(
        r.chunk.data for r in org.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=file_id))
    )
    assert len(data) == record.bytes
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a `.wandb` run file, parsed with wandb's own protobuf messages.

    wandb 0.31 reads these files in its Go core only (the Python `datastore` reader is
    gone), so the framing is read here: a 7-byte header (`:W&B`, magic 0xBEE1, version 0),
    then LevelDB's log format in 32 KiB blocks, each record a 7-byte header (CRC-32 of
    its type byte and data, length, type FULL/FIRST/MIDDLE/LAST) and its data."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", raw[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if (crc, length, kind) == (0, 0, 0):  # zero padding to the block's end
            pos += left
            continue
        data = raw[pos + 7 : pos + 7 + length]
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at {pos}"
        pos += 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_history(path: Path) -> tuple[dict[int, dict[str, Any]], Any, dict[str, Any]]:
    """(step -> logged values, the run record, its config) of a `.wandb` file."""
    history: dict[int, dict[str, Any]] = defaultdict(dict)
    run, config = None, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            values = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            history[int(values["_step"])] |= values
        elif kind == "run":
            run = record.run
            config |= {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "config":
            config |= {u.key: json.loads(u.value_json) for u in record.config.update}
    return dict(history), run, config


# --- the tests ----------------------------------------------------------------------------------


def test_a_job_logs_to_mlflow_wandb_and_tensorboard(
    trainer: Server, mlflow_server: Mlflow, tmp_path: Path
) -> None:
    org = trainer.default
    train = org.upload_sample()
    valid = org.upload(chat_lines(10, "tracking-valid"), "valid.jsonl")
    token = f"mlflow-token-{secrets.token_hex(8)}"
    url = mlflow_server.wait()
    # Through OpenAI's surface: its integrations field, with MLflow beside W&B.
    body = {
        "model": "tiny-llama",
        "training_file": train.id,
        "validation_file": valid.id,
        "seed": 11,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {**HYPERPARAMETERS, "checkpoint_every_steps": 4}},
        },
        "integrations": [
            {
                "type": "wandb",
                "wandb": {"project": "tunewire-tests", "name": "tracked", "tags": ["ci"]},
            },
            {
                "type": "mlflow",
                "mlflow": {
                    "tracking_uri": url,
                    "experiment": "tunewire-tests",
                    "tags": ["ci"],
                    "api_key": token,
                },
            },
        ],
    }
    with httpx.Client(
        base_url=rest_url(trainer), headers={"Authorization": f"Bearer {org.key}"}, timeout=60
    ) as http:
        created = http.post("/v1/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        shown = created.json()
        assert token not in created.text
        assert shown["integrations"][1]["type"] == "mlflow"
        assert shown["integrations"][1]["mlflow"]["tracking_uri"] == url
        job, events = run_to_end(org, shown["id"])
        assert token not in http.get(f"/v1/fine_tuning/jobs/{job.id}").text
    assert job.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    assert [i.api_key for i in job.integrations] == ["", ""]
    assert [i.has_api_key for i in job.integrations] == [False, True]
    expected = event_metrics(events)
    assert max(expected) == 8 and "valid_loss" in expected[8] and "valid_loss" in expected[4]
    warnings = [e.message for e in events if e.level == Event.LEVEL_WARN]
    assert not warnings, warnings
    hp = job.hyperparameters

    # MLflow: the run of the job, its params, every metric per step, the adapter.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("tunewire-tests")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`tunewire.job_id` = '{job.id}'"
    )
    assert run.info.status == "FINISHED" and run.info.run_name == job.id
    started = [e for e in events if dict(e.data).get("integration") == "MLflow"]
    assert started and started[0].data["run_id"] == run.info.run_id, [e.message for e in events]
    assert started[0].data["url"].startswith(url) and run.info.run_id in started[0].data["url"]
    params = run.data.params
    assert params["n_epochs"] == str(hp.n_epochs) == "1"
    assert params["batch_size"] == str(hp.batch_size) == "8"
    assert float(params["learning_rate_multiplier"]) == hp.learning_rate_multiplier
    assert params["lora_rank"] == str(hp.lora_rank) and params["seed"] == "11"
    assert params["job_id"] == job.id and params["base_model"] == "tiny-llama"
    assert run.data.tags["ci"] == ""
    for name in {k for values in expected.values() for k in values}:
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        wanted = {step: values[name] for step, values in expected.items() if name in values}
        assert logged == pytest.approx(wanted, rel=1e-9), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= artifacts

    # W&B: the offline run's files come with the results; they hold every metric.
    (run_file,) = result_archive(org, job, "wandb", tmp_path / "wandb").rglob("*.wandb")
    assert run_file.name == f"run-{job.id}.wandb"
    history, wandb_run, config = wandb_history(run_file)
    assert wandb_run.run_id == job.id and wandb_run.project == "tunewire-tests"
    assert wandb_run.display_name == "tracked" and "ci" in wandb_run.tags
    assert f"tunewire/{job.id}" in wandb_run.tags
    assert config["n_epochs"] == 1 and config["batch_size"] == 8 and config["seed"] == 11
    for step, values in expected.items():
        logged = {k: v for k, v in history[step].items() if k in values}
        assert logged == pytest.approx(values, rel=1e-9), step
    said = [e for e in events if dict(e.data).get("integration") == "Weights & Biases"]
    assert said and said[0].data["run_id"] == job.id and said[0].data["mode"] == "offline"

    # TensorBoard: event files as a result file, holding the losses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = result_archive(org, job, "tensorboard", tmp_path / "tensorboard")
    (logdir,) = {p.parent for p in logs.rglob("events.out.tfevents.*")}
    scalars = EventAccumulator(str(logdir))
    scalars.Reload()
    for name in ("train_loss", "valid_loss", "learning_rate"):
        logged = {e.step: e.value for e in scalars.Scalars(name)}
        wanted = {step: values[name] for step, values in expected.items() if name in values}
        assert logged == pytest.approx(wanted, rel=1e-6), name

    # The MLflow token was sent to MLflow, and is nowhere in the data dir in plain text.
    for path in trainer.home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path


def test_a_tracker_that_is_down_never_fails_the_job(tmp_path: Path, models_dir: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv = launch(
        tmp_path / "home",
        models_dir,
        tmp_path / "logs",
        **trainer_env(TUNEWIRE_TRACKING_QUEUE_SIZE="2", TUNEWIRE_TRACKING_FLUSH_SECONDS="5"),
    )
    try:
        org = srv.default
        train = org.upload(SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
        job = org.create_job(
            train.id,
            seed=5,
            hyperparameters=jobs_pb2.Hyperparameters(**HYPERPARAMETERS),
            integrations=[jobs_pb2.Integration(type="mlflow", tracking_uri=down)],
        )
        job, events = run_to_end(org, job.id)
        names = {
            org.files.GetFile(files_pb2.GetFileRequest(file_id=f)).filename
            for f in job.result_files
        }
    finally:
        srv.terminate()
        srv.kill()
    assert job.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    warnings = [e.message for e in events if e.level == Event.LEVEL_WARN]
    assert any(m.startswith("MLflow: could not ") for m in warnings), warnings
    assert any("MLflow is not keeping up" in m for m in warnings), warnings
    assert event_metrics(events)[8]["train_loss"] > 0  # every step trained and reported
    # TensorBoard was not held up by MLflow: its files are there.
    assert f"{job.id}-tensorboard.tar.gz" in names


def test_integrations_are_checked(trainer: Server) -> None:
    from conftest import invalid

    org = trainer.default
    train = org.upload_sample()
    violations = invalid(
        org.create_job,
        train.id,
        integrations=[
            jobs_pb2.Integration(type="comet"),
            jobs_pb2.Integration(type="mlflow"),
            jobs_pb2.Integration(type="wandb"),
            jobs_pb2.Integration(type="mlflow", tracking_uri="file:///etc"),
        ],
    )
    assert violations == {
        "job.integrations[0].type": "must be 'wandb' or 'mlflow'",
        "job.integrations[1].tracking_uri": "required for an mlflow integration",
        "job.integrations[2].project": "required for a wandb integration",
        "job.integrations[3].tracking_uri": "must be an http:// or https:// URL",
    }
