"""Job throughput: many one-step jobs queued at once on a real `tunewire up` with one
training worker, against the same job run in-process by `trainer.recipe.train` back to
back. The makespan per job minus the in-process job is the service's cost per job:
leasing, the worker's reports, checkpoint and adapter uploads, registering the model,
and whatever the worker pays between jobs (nothing, for a long-lived worker; a process
exit and a fresh torch import, for the layout before it).

Each job: tiny-llama, 8 chat examples, batch 8, 1 epoch (one step), its own seed.
Makespan: the first job's create_time to the last job's finish_time (server clock).
Before timing, one job runs through the service and one in-process (warm-ups). With the
full run the layout before this one (commit BASELINE: one trainer process per job, a warm
spare) runs the same queue, for the figure this replaces.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.harness import WORK, Context, Figure, Section, log
from bench.servers import old_checkout, tunewire_up, wait_job

NAME = "queue"
TITLE = "Job throughput: one-step jobs queued at once vs the same jobs in-process"
BASELINE = "75defa3"
"""The last commit that started a trainer process per job."""
EXAMPLES = 10  # the fewest a job may have: one step of one batch
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": EXAMPLES, "learning_rate_multiplier": 10.0}
GOAL_SECONDS = 0.5


def run(ctx: Context) -> Section:
    say = log(NAME)
    jobs = ctx.scale(50, 5)
    model_dir = workload.tiny_llama()
    train_file = workload.chat_file(EXAMPLES, seed=11)
    in_process = _in_process(model_dir, train_file, ctx, runs=ctx.scale(10, 2))
    say(f"in-process: {in_process:.3f} s per job")
    layouts: dict[str, Path | None] = {"one runtime": None}
    if not ctx.quick and (old := old_checkout(BASELINE, WORK / "checkouts")) is not None:
        layouts[f"a trainer process per job ({BASELINE})"] = old
    makespans = {}
    for name, checkout in layouts.items():
        with tunewire_up(
            ctx.work / "home", model_dir.parent, ctx.threads, checkout=checkout
        ) as server:
            makespans[name] = _queue(server, train_file, jobs)
        say(f"{name}: {jobs} jobs in {makespans[name]:.1f} s")
    return _section(ctx, jobs, in_process, makespans)


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


def _queue(server: Any, train_file: Path, jobs: int) -> float:
    """Seconds from the first job's creation to the last one's finish."""
    from bridge.cli.client import Client
    from tunewire.v1 import files_pb2, jobs_pb2

    client = Client(server.address, server.key)
    try:
        uploaded = client.upload(train_file, files_pb2.File.PURPOSE_FINE_TUNE, "train.jsonl")

        def create(seed: int) -> str:
            job = jobs_pb2.Job(
                base_model="tiny-llama",
                training_file=uploaded.id,
                seed=seed,
                hyperparameters=jobs_pb2.Hyperparameters(**HYPERPARAMETERS),
            )
            request = jobs_pb2.CreateJobRequest(job=job)
            return client.jobs.CreateJob(request, metadata=client.metadata, timeout=60).id

        warm = wait_job(client.jobs, client.metadata, create(0))
        if warm.state != jobs_pb2.Job.STATE_SUCCEEDED:
            raise RuntimeError(f"the warm-up job ended {jobs_pb2.Job.State.Name(warm.state)}")
        ids = [create(seed) for seed in range(1, jobs + 1)]
        done = [wait_job(client.jobs, client.metadata, i, timeout=1800) for i in ids]
    finally:
        client.close()
    failed = [j.id for j in done if j.state != jobs_pb2.Job.STATE_SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} of {jobs} jobs did not succeed, e.g. {failed[0]}")
    first = min(j.create_time.ToNanoseconds() for j in done)
    last = max(j.finish_time.ToNanoseconds() for j in done)
    return (last - first) / 1e9


def _section(ctx: Context, jobs: int, in_process: float, makespans: dict[str, float]) -> Section:
    ours_name, *others = makespans
    per_job = makespans[ours_name] / jobs
    overhead = per_job - in_process
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"{jobs} jobs created back to back on a `tunewire up` with one training worker "
        f"(max_running_jobs 1); each trains tiny-llama for one step ({EXAMPLES} chat "
        f"examples, batch {EXAMPLES}) with its own seed. Makespan: first create_time to "
        "last finish_time, after one warm-up job.",
        f"In-process: `trainer.recipe.train` on the same job in this process, median of "
        f"{ctx.scale(10, 2)} runs after a warm-up (torch imported, nothing reported).",
    ]
    if others:
        section.method.append(
            f"Before: `tunewire up` of commit {BASELINE} (a trainer process per job and a "
            "warm spare) on the same queue, once."
        )
    section.add(
        Figure(
            "makespan per job",
            per_job,
            in_process,
            "s",
            "the same job in-process",
            higher_is_better=False,
        ),
        Figure(
            "service overhead per job",
            overhead,
            None,
            "s",
            higher_is_better=False,
            goal=f"< {GOAL_SECONDS} s",
            met=overhead < GOAL_SECONDS,
        ),
    )
    for name in others:
        before = makespans[name] / jobs - in_process
        section.add(
            Figure(
                "service overhead per job",
                overhead,
                before,
                "s",
                name,
                higher_is_better=False,
            )
        )
    section.summary = (
        f"{jobs} one-step jobs took {per_job:.2f} s each through the service vs "
        f"{in_process:.2f} s in-process: {overhead:.2f} s of overhead per job (goal < "
        f"{GOAL_SECONDS} s: {'met' if overhead < GOAL_SECONDS else 'missed'})"
    )
    if others:
        before = makespans[others[0]] / jobs - in_process
        section.summary += f"; {before:.2f} s per job with a trainer process per job."
    else:
        section.summary += "."
    return section
