"""Experiment tracking of a training attempt, on rank 0: TensorBoard event files for
every job, and the job's integrations: Weights & Biases (the real `wandb` client; offline
when no W&B server or API key is configured, its run files then kept with the job's
results) and MLflow (a tracking server: params, metrics per step, the adapter).

The training loop only hands records over: each tracker has a bounded queue and a thread
of its own that does its I/O, so a tracker that is down or slow never fails or slows
training. When its queue is full, records are dropped, with a warn event; its errors are
warn events too. At the end of the attempt each tracker gets `FLUSH_SECONDS` to catch
up; one still busy then is left behind, with a warn event.

One run per job: W&B's run id is the job's id and MLflow's run carries the job's id as a
tag, so the attempts that resume a job after a pause or a lost trainer log to the same
run. Each attempt's TensorBoard and offline W&B files go to the blob store under
`tracking/<job>/attempt-<epoch>`; a job that succeeds gets them all as result files
(`<job>-tensorboard.tar.gz`, `<job>-wandb.tar.gz`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from server.store.blobs import BlobStore
from tunewire.v1 import common_pb2, jobs_pb2, worker_pb2

log = logging.getLogger("tunewire.worker")

QUEUE_SIZE = int(os.environ.get("TUNEWIRE_TRACKING_QUEUE_SIZE", "10000"))
"""Records a tracker may fall behind by before the next ones are dropped."""
FLUSH_SECONDS = float(os.environ.get("TUNEWIRE_TRACKING_FLUSH_SECONDS", "30"))
"""How long the end of an attempt waits for its trackers to catch up."""
DROP_REPORT_SECONDS = 30.0  # at most one "dropped" warn event per tracker this often
MLFLOW_TIMEOUT_SECONDS = "10"
MLFLOW_RETRIES = "2"
BLOB_PREFIX = "tracking"

Report = Callable[[str, str, dict[str, Any]], None]
"""(level, message, data): an event of the job."""


class Tracker(Protocol):
    """One tracking backend; its methods run on its own thread, in order."""

    name: str

    def start(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Open the run; what to say about it in an event (its id and URL), if anything."""

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def checkpoint(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, status: str, adapter_dir: Path | None) -> None: ...


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


# --- the trackers ---------------------------------------------------------------------------


class TensorBoard:
    """Scalars under their metric names, and the run's configuration as text."""

    name = "TensorBoard"

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.writer: Any = None

    def start(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=30)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
        return None

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        self.writer.flush()

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        if self.writer is not None:
            self.writer.close()


class Wandb:
    """A W&B run through the real client: online with an API key (the job's, else the
    worker's `WANDB_API_KEY`), else offline into `root` (WANDB_MODE=offline)."""

    name = "Weights & Biases"

    def __init__(self, integration: jobs_pb2.Integration, job: jobs_pb2.Job, root: Path) -> None:
        self.integration, self.job, self.root = integration, job, root
        self.run: Any = None
        self.offline = True
        self.config: dict[str, Any] = {}

    def start(self, config: dict[str, Any]) -> dict[str, Any]:
        self.config = config
        return self._open()

    def _open(self) -> dict[str, Any]:
        import wandb

        it = self.integration
        key = it.api_key or os.environ.get("WANDB_API_KEY", "")
        self.offline = not key or os.environ.get("WANDB_MODE", "") in ("offline", "disabled")
        where: dict[str, Any] = {"base_url": it.tracking_uri} if it.tracking_uri else {}
        if not self.offline:
            where["api_key"] = key
        settings = wandb.Settings(
            mode="offline" if self.offline else "online",
            console="off",
            silent=True,
            x_disable_stats=True,
            x_save_requirements=False,
            save_code=False,
            disable_git=True,
            **where,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=it.project,
            entity=it.entity or None,
            name=it.name or self.job.id,
            id=self.job.id,
            resume="allow",
            tags=[
                *it.tags,
                "tunewire/finetune",
                f"tunewire/{self.job.base_model}",
                f"tunewire/{self.job.id}",
            ],
            config=self.config,
            dir=str(self.root),
            reinit="create_new",
            settings=settings,
        )
        return {
            "run_id": self.run.id,
            "url": "" if self.offline else (self.run.url or ""),
            "project": it.project,
            "mode": "offline" if self.offline else "online",
        }

    def _ready(self) -> None:
        if self.run is None:  # it could not start: try again
            self._open()

    def log(self, step: int, values: dict[str, float]) -> None:
        self._ready()
        self.run.log(values, step=step)

    def checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        self._ready()
        self.run.summary["last_checkpoint_step"] = step

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status in ("succeeded", "paused") else 1)
        if not self.offline:  # synced already; its local logs are no result of the job
            shutil.rmtree(self.root / "wandb", ignore_errors=True)


class Mlflow:
    """An MLflow run on a tracking server: the configuration as params, every metric per
    step, the final adapter as the artifact `adapter`."""

    name = "MLflow"

    def __init__(self, integration: jobs_pb2.Integration, job: jobs_pb2.Job) -> None:
        self.integration, self.job = integration, job
        self.client: Any = None
        self.run_id = ""
        self.experiment_id = ""
        self.config: dict[str, Any] = {}

    def start(self, config: dict[str, Any]) -> dict[str, Any]:
        self.config = config
        # Fail fast: a down server costs seconds per call, not the client's minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_TIMEOUT_SECONDS)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_RETRIES)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        # MLflow reads its token from the environment on each request; this worker runs
        # one job at a time, and a token left by an earlier job (whose tracker was left
        # behind still busy) never goes to this job's server.
        _set_mlflow_token(self.integration.api_key)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.integration.tracking_uri)
        return self._open()

    def _open(self) -> dict[str, Any]:
        from mlflow.entities import Param

        client, it, job = self.client, self.integration, self.job
        name = it.experiment or "tunewire"
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                self.experiment_id = client.create_experiment(name)
            except Exception:  # noqa: BLE001 - created meanwhile by another job's worker
                self.experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            self.experiment_id = experiment.experiment_id
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`tunewire.job_id` = '{job.id}'",
            max_results=1,
        )
        if found:  # a resumed job: the same run
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"tunewire.job_id": job.id, "tunewire.base_model": job.base_model}
            tags |= dict.fromkeys(it.tags, "")
            run = client.create_run(self.experiment_id, run_name=it.name or job.id, tags=tags)
            self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(self.config.items())]
        client.log_batch(self.run_id, params=params)
        base = it.tracking_uri.rstrip("/")
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "url": f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}",
        }

    def _ready(self) -> None:
        if not self.run_id:  # the server was down at the start: try again
            self._open()

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        self._ready()
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in sorted(values.items())]
        self.client.log_batch(self.run_id, metrics=metrics)

    def checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        self._ready()
        self.client.set_tag(self.run_id, "tunewire.last_checkpoint_step", str(step))

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        try:
            if self.client is None:
                return
            self._ready()
            if adapter_dir is not None:
                self.client.log_artifacts(self.run_id, str(adapter_dir), "adapter")
            if status != "paused":  # a paused job's run goes on when it resumes
                ended = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(status, "FAILED")
                self.client.set_terminated(self.run_id, ended)
        finally:
            _set_mlflow_token("")


_mlflow_token = ""  # the MLFLOW_TRACKING_TOKEN this module set, if any


def _set_mlflow_token(token: str) -> None:
    global _mlflow_token
    if _mlflow_token and os.environ.get("MLFLOW_TRACKING_TOKEN") == _mlflow_token:
        del os.environ["MLFLOW_TRACKING_TOKEN"]
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    _mlflow_token = token


# --- one tracker's queue and thread --------------------------------------------------------

_STOP = object()


class _Channel:
    def __init__(self, tracker: Tracker, report: Report, size: int) -> None:
        self.tracker, self.report = tracker, report
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.dropped = 0
        self.failed = 0
        self._reported_drop_at = -math.inf
        self._failing = False
        self.thread = threading.Thread(
            target=self._work, name=f"tracking-{tracker.name}", daemon=True
        )
        self.thread.start()

    def put(self, method: str, *args: Any) -> None:
        """Hand a call over without waiting; dropped (with a warn event) when full."""
        try:
            self.queue.put_nowait((method, args))
        except queue.Full:
            self.dropped += 1
            clock = time.monotonic()
            if clock - self._reported_drop_at >= DROP_REPORT_SECONDS:
                self._reported_drop_at = clock
                self.report(
                    "warn",
                    f"{self.tracker.name} is not keeping up (down or slow): its records are "
                    f"being dropped ({self.dropped} so far); training goes on",
                    {"integration": self.tracker.name, "dropped": self.dropped},
                )

    def stop(self, deadline: float) -> bool:
        """Let it finish what it has and end; False if it is still busy at `deadline`."""
        with contextlib.suppress(queue.Full):
            self.queue.put((_STOP, ()), timeout=max(0.0, deadline - time.monotonic()))
        self.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return not self.thread.is_alive()

    def _work(self) -> None:
        while True:
            method, args = self.queue.get()
            if method is _STOP:
                return
            try:
                said = getattr(self.tracker, method)(*args)
            except Exception as error:  # noqa: BLE001 - a tracker's failure is only a warning
                self.failed += 1
                if not self._failing:
                    self._failing = True
                    self.report(
                        "warn",
                        f"{self.tracker.name}: could not {method} "
                        f"({type(error).__name__}: {str(error)[:300]}); training goes on",
                        {"integration": self.tracker.name, "operation": method},
                    )
                continue
            if self._failing and method != "finish":  # a no-op finish proves nothing
                self._failing = False
                self.report(
                    "info",
                    f"{self.tracker.name} is answering again",
                    {"integration": self.tracker.name},
                )
            if method == "start" and said:
                where = said.get("url") or "offline: its files come with the job's result files"
                self.report(
                    "info",
                    f"{self.tracker.name} run {said['run_id']} started ({where})",
                    {"integration": self.tracker.name, **said},
                )


# --- an attempt's tracking -------------------------------------------------------------------


class Tracking:
    """The trackers of one attempt; every method returns at once."""

    def __init__(self, trackers: list[Tracker], report: Report, root: Path) -> None:
        self.root = root
        self.report = report
        self.channels = [_Channel(t, report, QUEUE_SIZE) for t in trackers]
        self.closed = False

    def _all(self, method: str, *args: Any) -> None:
        for channel in self.channels:
            channel.put(method, *args)

    def start(self, config: dict[str, Any]) -> None:
        self._all("start", config)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        self._all("log", step, _numbers(values))

    def checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        self._all("checkpoint", step, _numbers(metrics))

    def close(self, status: str, adapter_dir: Path | None = None) -> None:
        """End every run (`status`: the attempt's outcome) and wait up to FLUSH_SECONDS."""
        if self.closed:
            return
        self.closed = True
        self._all("finish", status, adapter_dir)
        deadline = time.monotonic() + FLUSH_SECONDS
        for channel in self.channels:
            done = channel.stop(deadline)
            name = channel.tracker.name
            if not done:
                self.report(
                    "warn",
                    f"{name} was still busy {FLUSH_SECONDS:g}s after training ended; "
                    "what it had not logged by then is dropped",
                    {"integration": name},
                )
            elif channel.dropped or channel.failed:
                self.report(
                    "warn",
                    f"{name}: {channel.dropped} record(s) dropped and {channel.failed} "
                    "call(s) failed during this attempt",
                    {"integration": name, "dropped": channel.dropped, "failed": channel.failed},
                )

    def keep(self, blobs: BlobStore, job_id: str, epoch: int) -> None:
        """Store this attempt's files (TensorBoard's, offline W&B runs') in the blob store."""
        if not self.root.is_dir():
            return
        for link in [p for p in self.root.rglob("*") if p.is_symlink()]:
            link.unlink()  # W&B's `latest-run` and log links: the files are there already
        if any(p.is_file() for p in self.root.rglob("*")):
            blobs.put_dir(self.root, f"{BLOB_PREFIX}/{job_id}/attempt-{epoch}")


def for_attempt(work: worker_pb2.TrainWork, root: Path, report: Report) -> Tracking:
    """TensorBoard, and a tracker per integration of the job (with its API key)."""
    job = work.job
    trackers: list[Tracker] = [TensorBoard(root / "tensorboard")]
    for it in work.integrations or job.integrations:
        if it.type == "wandb":
            trackers.append(Wandb(it, job, root))
        elif it.type == "mlflow":
            trackers.append(Mlflow(it, job))
    return Tracking(trackers, report, root)


def _archive(dirs: list[Path], member: str, target: Path) -> bool:
    """A tar.gz of `member` of each attempt's dir, as `attempt-N/<member>/...`; False when
    no attempt has it."""
    found = [(d, d / member) for d in dirs if (d / member).is_dir()]
    if not found:
        return False
    with tarfile.open(target, "w:gz") as tar:
        for attempt, path in found:
            tar.add(path, arcname=f"{attempt.name}/{member}")
    return True


@contextlib.contextmanager
def _scratch(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def result_files(
    blobs: BlobStore,
    work: worker_pb2.TrainWork,
    cache: Path,
    put: Callable[[BlobStore, Path, str], common_pb2.Artifact],
) -> dict[str, common_pb2.Artifact]:
    """The job's tracking archives from every attempt's stored files, written to the
    work's `tracking_files` keys (through `put`): kind -> what was written."""
    job_id = work.job.id
    attempts = blobs.list_dirs(f"{BLOB_PREFIX}/{job_id}")
    if not attempts or not work.tracking_files:
        return {}
    with _scratch(cache / "tracking-fetch" / job_id) as fetched:
        # Each attempt's dir is named by its key's last part: `attempt-N`.
        dirs = [blobs.get_dir(key, fetched) for key in attempts]
        written = {}
        for kind, member in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
            key = work.tracking_files.get(kind)
            if not key:
                continue
            target = fetched / f"{job_id}-{kind}.tar.gz"
            if _archive(dirs, member, target):
                written[kind] = put(blobs, target, key)
        return written
