"""Workers anywhere: the control plane runs none of its own (`TUNEWIRE_MAX_RUNNING_JOBS=0`,
no export or inference workers), and workers started by hand, as on another machine, do
all its work: from another working directory, with their own scratch space, their own
copy of the base models and their own view of the blob store, knowing only the control
plane's address and its worker token. Nothing in the contract is a path of the control
plane's machine, so a job trains, exports and serves exactly as with local workers."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Org, Server, clean_env, launch

from tunewire.v1 import exports_pb2, jobs_pb2, models_pb2

Job = jobs_pb2.Job
Export = exports_pb2.Export
TOKEN = secrets.token_urlsafe(24)
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("remote")
    srv = launch(
        root / "home",
        models_dir,
        root / "logs",
        TUNEWIRE_MAX_RUNNING_JOBS="0",
        TUNEWIRE_EXPORT_WORKERS="0",
        TUNEWIRE_INFERENCE_WORKERS="0",
        TUNEWIRE_WORKER_TOKEN=TOKEN,
    )
    # The other machine: the blob store reached by another name, base models copied.
    machine = root / "elsewhere"
    (machine / "cwd").mkdir(parents=True)
    (machine / "blobs").symlink_to(srv.home / "blobs")
    shutil.copytree(models_dir / "tiny-llama", machine / "models" / "tiny-llama")
    workers = [start_worker(srv, machine, kind) for kind in ("train", "export", "serve")]
    srv.machine = machine
    try:
        yield srv
    finally:
        srv.terminate()
        srv.kill()
        for worker in workers:
            worker.kill()
            worker.wait(timeout=10)


def start_worker(srv: Server, machine: Path, kind: str) -> subprocess.Popen:
    env = clean_env(machine / "no-home", None, OMP_NUM_THREADS="1")
    env["TUNEWIRE_WORKER_TOKEN"] = TOKEN
    env["PYTHONPATH"] = os.pathsep.join(sys.path)  # this checkout, wherever cwd is
    log = open(machine / f"worker-{kind}.log", "wb")  # noqa: SIM115 - the worker's for life
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "trainer.worker", "--kind", kind),
            *("--control-plane", srv.address, "--blobs", str(machine / "blobs")),
            *("--models-dir", str(machine / "models")),
            *("--scratch", str(machine / f"scratch-{kind}")),
        ],
        cwd=machine / "cwd",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="module")
def trained(remote: Server) -> Job:
    org = remote.default
    upload = org.upload_sample()
    job = org.create_job(
        upload.id,
        seed=3,
        hyperparameters=jobs_pb2.Hyperparameters(n_epochs=1, checkpoint_every_steps=4),
    )
    request = jobs_pb2.StreamJobEventsRequest(job_id=job.id)
    messages = [r.event.message for r in org.jobs.StreamJobEvents(request, timeout=TIMEOUT)]
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_SUCCEEDED, messages
    return done


def test_a_job_trains_on_a_worker_elsewhere(remote: Server, trained: Job) -> None:
    org: Org = remote.default
    checkpoints = org.jobs.ListCheckpoints(jobs_pb2.ListCheckpointsRequest(job_id=trained.id))
    assert checkpoints.checkpoints
    # Its working files were the worker's own, not the control plane's.
    assert (remote.machine / "scratch-train" / "jobs" / trained.id).is_dir()
    assert not (remote.home / "jobs" / trained.id).exists()
    assert (remote.home / "blobs" / "models" / trained.id / "final").is_dir()


def test_its_model_exports_and_generates_on_workers_elsewhere(remote: Server, trained: Job) -> None:
    org: Org = remote.default
    merged = Export(model_id=trained.fine_tuned_model, format=Export.FORMAT_MERGED_SAFETENSORS)
    export = org.exports.CreateExport(exports_pb2.CreateExportRequest(export=merged))
    deadline = time.monotonic() + TIMEOUT
    request = exports_pb2.GetExportRequest(export_id=export.id)
    while (export := org.exports.GetExport(request)).state not in (
        Export.STATE_SUCCEEDED,
        Export.STATE_FAILED,
    ):
        assert time.monotonic() < deadline, Export.State.Name(export.state)
        time.sleep(0.2)
    assert export.state == Export.STATE_SUCCEEDED, export.error
    assert export.artifacts

    replies = list(
        org.models.Generate(
            models_pb2.GenerateRequest(
                model_id=trained.fine_tuned_model, prompt="Hello", max_tokens=5, temperature=0
            ),
            timeout=TIMEOUT,
        )
    )
    assert replies[-1].finish_reason in ("length", "stop")
    assert replies[-1].usage.completion_tokens >= 1
    assert any(reply.text for reply in replies)
