"""Job throughput: many one-step jobs queued at once on a real `tunewire up` with one
training worker, against the same job run in-process by `trainer.recipe.train` back to
back. The makespan per job minus the in-process job is the service's cost per job:
leasing, the worker's reports, checkpoint and adapter uploads, registering the model,
and whatever the worker pays between jobs (nothing, for a long-lived worker; a process
exit and a fresh torch import, for the layout before it).

Each job: tiny-llama, 10 chat examples, batch 10, 1 epoch (one step), its own seed.
Two servers run side by side, one per executor: the local one (the training worker a
process of its own) and the Ray one (`TUNEWIRE_EXECUTOR=ray`: the worker an actor on a
one-node Ray cluster started for the run and stopped after). Each round queues the same
jobs on each and runs the same job in-process, rotating which goes first, so both
executors meet the same load; figures are medians over the rounds. Makespan: the first
job's create_time to the last job's finish_time (server clock), after a warm-up job on
each server. With the full run the layout before this one (commit BASELINE: one trainer
process per job, a warm spare) runs the same queue once, for the figure this replaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import workload
from bench.harness import (
    WORK,
    Context,
    Figure,
    Sample,
    Section,
    child_env,
    interleaved,
    log,
    median_of,
    spread_of,
)
from bench.servers import Server, old_checkout, tunewire_up, wait_job

NAME = "queue"
TITLE = "Job throughput: one-step jobs queued at once vs the same jobs in-process"
BASELINE = "75defa3"
"""The last commit that started a trainer process per job."""
EXAMPLES = 10  # the fewest a job may have: one step of one batch
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": EXAMPLES, "learning_rate_multiplier": 10.0}
GOAL_SECONDS = 0.5
IN_PROCESS = "in-process"
LOCAL = "the local executor"
RAY = "the Ray executor"
RAY_CPUS = 2
RAY_STARTED = re.compile(r"Ray runtime started")
RAY_START_TIMEOUT = 120.0


def run(ctx: Context) -> Section:
    say = log(NAME)
    jobs = ctx.scale(20, 5)  # per server and round
    model_dir = workload.tiny_llama()
    train_file = workload.chat_file(EXAMPLES, seed=11)
    runs = ctx.scale(5, 2)  # in-process, per round

    with contextlib.ExitStack() as stack:

        def queue(home: str, **settings: str) -> _Queue:
            server = stack.enter_context(
                tunewire_up(ctx.work / home, model_dir.parent, ctx.threads, **settings)
            )
            return stack.enter_context(contextlib.closing(_Queue(server, train_file)))

        local = queue("home")
        address = stack.enter_context(_ray_head(ctx.threads, say))
        on_ray = queue("home-ray", executor="ray", ray_address=address)
        samples = interleaved(
            {
                IN_PROCESS: lambda: {"per_job": _in_process(model_dir, train_file, ctx, runs)},
                LOCAL: lambda: {"per_job": local.run(jobs) / jobs},
                RAY: lambda: {"per_job": on_ray.run(jobs) / jobs},
            },
            repeats=ctx.repeats,
            warmup=0,  # each server ran a warm-up job; each in-process median has one
            log=say,
        )
    before = None
    if not ctx.quick and (old := old_checkout(BASELINE, WORK / "checkouts")) is not None:
        with (
            tunewire_up(ctx.work / "home", model_dir.parent, ctx.threads, checkout=old) as server,
            contextlib.closing(_Queue(server, train_file)) as baseline,
        ):
            before = baseline.run(jobs) / jobs
        say(f"a trainer process per job ({BASELINE}): {before:.2f} s per job")
    return _section(ctx, jobs, runs, samples, before)


@contextlib.contextmanager
def _ray_head(threads: int, say: Callable[[str], None]) -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 for the Ray layout; its GCS address.

    `ray start --block` in a session of its own: SIGTERM makes it stop the processes it
    started, and whatever is left of the session is killed. Never `ray stop`, which stops
    every Ray cluster on the machine, other people's too. Its temp dir is short, under
    /tmp: Ray's Unix sockets live there."""
    temp = Path(tempfile.mkdtemp(prefix="twray-", dir="/tmp"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = Path(sys.executable).parent / "ray"
    output = temp / "ray-start.log"
    with open(output, "wb") as out:
        head = subprocess.Popen(
            [
                str(ray),
                *("start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"),
                *(f"--num-cpus={RAY_CPUS}", "--include-dashboard=false"),
                *("--disable-usage-stats", f"--temp-dir={temp}"),
            ],
            env=child_env(threads, RAY_TMPDIR=str(temp)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + RAY_START_TIMEOUT
        while not RAY_STARTED.search(output.read_text(errors="replace")):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{output.read_text()[-4000:]}")
            time.sleep(0.2)
        say(f"Ray head on 127.0.0.1:{port} ({RAY_CPUS} CPUs)")
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        for pid in _session(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _session(sid: int) -> list[int]:
    """The processes still in session `sid` (started by `ray start` in it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # After "(comm)": state, ppid, pgrp, session.
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                found.append(int(stat.parent.name))
    return found


def _in_process(model_dir: Path, train_file: Path, ctx: Context, runs: int) -> float:
    """Median seconds of one job by `trainer.recipe.train` here, after a warm-up."""
    from bench.service import train_args
    from trainer.recipe import Callbacks, train

    took = []
    for run_ in range(runs + 1):
        with tempfile.TemporaryDirectory(dir=ctx.work) as output:
            args = train_args(model_dir, train_file, output, seed=run_, **HYPERPARAMETERS)
            started = time.perf_counter()
            result = train(args, Callbacks())
            took.append(time.perf_counter() - started)
        if result.status != "succeeded":
            raise RuntimeError(f"in-process run ended {result.status}")
    return statistics.median(took[1:])


class _Queue:
    """Jobs on one server: the training file uploaded once, a warm-up job run; every
    server gets the same seeds in the same order."""

    def __init__(self, server: Server, train_file: Path) -> None:
        from bridge.cli.client import Client
        from tunewire.v1 import files_pb2

        self.client = Client(server.address, server.key)
        self.seed = 0
        uploaded = self.client.upload(train_file, files_pb2.File.PURPOSE_FINE_TUNE, "train.jsonl")
        self.file_id = uploaded.id
        self.run(1)

    def run(self, jobs: int) -> float:
        """Seconds from the first of `jobs` jobs' creation to the last one's finish."""
        from tunewire.v1 import jobs_pb2

        ids = []
        for _ in range(jobs):
            self.seed += 1
            job = jobs_pb2.Job(
                base_model="tiny-llama",
                training_file=self.file_id,
                seed=self.seed,
                hyperparameters=jobs_pb2.Hyperparameters(**HYPERPARAMETERS),
            )
            request = jobs_pb2.CreateJobRequest(job=job)
            created = self.client.jobs.CreateJob(request, metadata=self.client.metadata, timeout=60)
            ids.append(created.id)
        done = [wait_job(self.client.jobs, self.client.metadata, i, timeout=1800) for i in ids]
        failed = [j.id for j in done if j.state != jobs_pb2.Job.STATE_SUCCEEDED]
        if failed:
            raise RuntimeError(f"{len(failed)} of {jobs} jobs did not succeed, e.g. {failed[0]}")
        first = min(j.create_time.ToNanoseconds() for j in done)
        last = max(j.finish_time.ToNanoseconds() for j in done)
        return (last - first) / 1e9

    def close(self) -> None:
        self.client.close()


def _section(
    ctx: Context, jobs: int, runs: int, samples: dict[str, list[Sample]], before: float | None
) -> Section:
    in_process = median_of(samples[IN_PROCESS], "per_job")
    per_job = median_of(samples[LOCAL], "per_job")
    overheads = {
        name: [
            {"overhead": s["per_job"] - p["per_job"]}
            for s, p in zip(samples[name], samples[IN_PROCESS], strict=True)
        ]
        for name in (LOCAL, RAY)
    }
    overhead = median_of(overheads[LOCAL], "overhead")
    ray_overhead = median_of(overheads[RAY], "overhead")
    ray_per_job = median_of(samples[RAY], "per_job")
    rounds = f"{ctx.repeats} round(s)"
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Each round: {jobs} jobs created back to back on each of two `tunewire up` "
        "servers with one training worker each (max_running_jobs 1), and the same job "
        f"{runs} times in-process; which goes first rotates. Each job trains tiny-llama "
        f"for one step ({EXAMPLES} chat examples, batch {EXAMPLES}) with its own seed. "
        f"Makespan: first create_time to last finish_time, after one warm-up job per "
        f"server. Medians over {rounds}; overhead = makespan per job minus the same "
        "round's in-process job.",
        "Local executor: the training worker a process of the server's. Ray executor: "
        "`TUNEWIRE_EXECUTOR=ray`, the worker an actor on a one-node Ray cluster on this "
        f"machine (`ray start --head --node-ip-address=127.0.0.1 --num-cpus={RAY_CPUS}`, "
        "started for the run and stopped after). Both servers and the cluster are up "
        "throughout, idle while the other runs.",
        "In-process: `trainer.recipe.train` on the same job in this process, median of "
        f"{runs} runs after a warm-up (torch imported, nothing reported).",
    ]
    if before is not None:
        section.method.append(
            f"Before: `tunewire up` of commit {BASELINE} (a trainer process per job and a "
            f"warm spare) on {jobs} jobs, once, after the rounds."
        )
    section.add(
        Figure(
            "makespan per job",
            per_job,
            in_process,
            "s",
            "the same job in-process",
            higher_is_better=False,
            spread=_spread(samples, LOCAL, IN_PROCESS, key="per_job"),
        ),
        Figure(
            "service overhead per job",
            overhead,
            None,
            "s",
            higher_is_better=False,
            goal=f"< {GOAL_SECONDS} s",
            met=overhead < GOAL_SECONDS,
            spread=spread_of(overheads[LOCAL], "overhead"),
        ),
        Figure(
            "service overhead per job, Ray executor",
            ray_overhead,
            overhead,
            "s",
            f"{LOCAL} (same rounds)",
            higher_is_better=False,
            spread=_spread(overheads, RAY, LOCAL, key="overhead"),
            note=f"makespan per job on Ray {ray_per_job:.3f} s",
        ),
    )
    if before is not None:
        section.add(
            Figure(
                "service overhead per job",
                overhead,
                before - in_process,
                "s",
                f"a trainer process per job ({BASELINE})",
                higher_is_better=False,
            )
        )
    section.summary = (
        f"One-step jobs took {per_job:.2f} s each through the service vs {in_process:.2f} s "
        f"in-process: {overhead:.2f} s of overhead per job (goal < {GOAL_SECONDS} s: "
        f"{'met' if overhead < GOAL_SECONDS else 'missed'}); {ray_overhead:.2f} s with "
        f"the Ray executor in the same rounds"
    )
    if before is not None:
        section.summary += f"; {before - in_process:.2f} s with a trainer process per job."
    else:
        section.summary += "."
    return section


def _spread(samples: dict[str, list[Sample]], ours: str, theirs: str, key: str) -> str:
    return "; ".join(
        f"{name} {spread}" for name in (ours, theirs) if (spread := spread_of(samples[name], key))
    )
