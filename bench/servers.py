"""Real `tunewire up` (and `python -m bridge`) processes for the service benchmarks, started
the way tests/conftest.py starts them: a fresh home, a free port, the ready line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO, child_env

READY = re.compile(r"tunewire: serving gRPC on (\S+):(\d+)")
REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
FIRST_KEY = re.compile(r"^\s+(tw-\S+)\s*$", re.MULTILINE)
START_TIMEOUT = 60.0


@dataclass
class Server:
    process: subprocess.Popen
    address: str
    key: str
    home: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.key}")]


def _tunewire() -> list[str]:
    script = Path(sys.executable).parent / "tunewire"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge.cli"]


def _wait_for(pattern: re.Pattern[str], log: Path, process: subprocess.Popen) -> re.Match[str]:
    deadline = time.monotonic() + START_TIMEOUT
    while not (ready := pattern.search(log.read_text())):
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args} exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{process.args} was not ready in {START_TIMEOUT:.0f} s")
        time.sleep(0.05)
    return ready


@contextmanager
def tunewire_up(
    home: Path,
    models_dir: Path | None,
    threads: int,
    checkout: Path | None = None,
    **settings: str,
) -> Iterator[Server]:
    """A control plane on a free port with a fresh home; SIGTERM and cleanup afterwards.
    `settings` are TUNEWIRE_* variables without the prefix, e.g. max_running_jobs="1".
    `checkout`: an older source tree of Tunewire (`old_checkout`) to run instead of this
    one, with this environment's packages: a baseline of the same service."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = home.parent / f"{home.name}.log"
    env = child_env(threads, TUNEWIRE_HOME=str(home))
    if models_dir is not None:
        env["TUNEWIRE_MODELS_DIR_OVERRIDE"] = str(models_dir)
    env.update({f"TUNEWIRE_{k.upper()}": v for k, v in settings.items()})
    command = [*_tunewire(), "up", "--grpc-port", "0"]
    if checkout is not None:
        # Its own packages first, on every process it starts (its trainers too).
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(checkout / "protos")])
        command = [sys.executable, "-m", "server", "up", "--grpc-port", "0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=checkout or REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        ready = _wait_for(READY, log, process)
        key = FIRST_KEY.search(log.read_text())
        if key is None:
            raise RuntimeError(f"no first API key in the server's output:\n{log.read_text()}")
        yield Server(process, f"{ready.group(1)}:{ready.group(2)}", key.group(1), home, log)
    finally:
        _stop(process)
        shutil.rmtree(home, ignore_errors=True)


def old_checkout(commit: str, into: Path) -> Path | None:
    """This repository's tree at `commit`, unpacked under `into` (kept between runs);
    None when the clone lacks that commit (a shallow clone)."""
    tree = into / commit
    if (tree / "server").is_dir():
        return tree
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        return None
    staging = into / f".{commit}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
    staging.rename(tree)
    return tree


@contextmanager
def bridge_up(grpc_address: str, log: Path, threads: int) -> Iterator[tuple[str, int]]:
    """`python -m bridge` in front of `grpc_address`; yields its base URL and pid."""
    env = child_env(threads, TUNEWIRE_LOG_LEVEL="warning")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--grpc-address", grpc_address, "--http-port", "0"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        ready = _wait_for(REST_READY, log, process)
        yield f"http://{ready.group(1)}:{ready.group(2)}", process.pid
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_job(stub, metadata, job_id: str, timeout: float = 600):  # noqa: ANN001, ANN201
    """Poll GetJob until the job is final; returns it."""
    from tunewire.v1 import jobs_pb2

    final = {jobs_pb2.Job.STATE_SUCCEEDED, jobs_pb2.Job.STATE_FAILED, jobs_pb2.Job.STATE_CANCELLED}
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=30)
        if job.state in final:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
        time.sleep(0.1)
