"""Control-plane latency while models generate: GetJob p50/p99 on a real `tunewire up`
while 4 Generate streams run against it, this layout (generation in an inference worker
process, streamed through) against the layout before it (commit BASELINE, forward passes
in the control plane's own process on threads beside its event loop), in one run.

Both serve the same base model (the benchmark Llama) on the same machine with the same
torch threads. Per layout: a server with a fresh home, a job created and cancelled (the
one GetJob reads), one Generate to load the model, then GetJob idle, then GetJob while
4 threads each stream Generate back to back (greedy, a fixed token count). GetJob is a
sync gRPC call every 10 ms, timed on the client; tokens per second are counted over the
same window. The two layouts alternate, once per repeat.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.harness import WORK, Context, Figure, Section, log, median_of, percentile
from bench.servers import old_checkout, tunewire_up

NAME = "latency"
TITLE = "Control-plane latency while models generate: GetJob beside 4 Generate streams"
BASELINE = "75defa3"
"""The last commit whose control plane ran generation in its own process."""
STREAMS = 4
GAP_SECONDS = 0.01


def run(ctx: Context) -> Section:
    say = log(NAME)
    shape = ctx.scale(workload.BENCH_MODEL, workload.QUICK_MODEL)
    model_dir = workload.bench_model(shape)
    train_file = workload.chat_file(10, seed=5)  # the fewest a job may have
    layouts: dict[str, Path | None] = {"one runtime": None}
    old = old_checkout(BASELINE, WORK / "checkouts")
    if old is not None:
        layouts[f"generation in the control plane ({BASELINE})"] = old
    elif not ctx.quick:
        raise RuntimeError(f"commit {BASELINE} is not in this clone: fetch its history")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in layouts}
    for repeat in range(ctx.repeats):
        for name, checkout in layouts.items():
            with tunewire_up(
                ctx.work / "home",
                model_dir.parent,
                ctx.threads,
                checkout=checkout,
                max_running_jobs="0",
            ) as server:
                sample = _measure(ctx, server, shape.key, train_file)
            say(f"repeat {repeat + 1} {name}: {sample}")
            samples[name].append(sample)
    return _section(ctx, shape, samples)


def _measure(ctx: Context, server: Any, model: str, train_file: Path) -> dict[str, float]:
    import grpc

    from bridge.cli.client import Client
    from tunewire.v1 import files_pb2, jobs_pb2, models_pb2

    client = Client(server.address, server.key)
    meta = client.metadata
    try:
        uploaded = client.upload(train_file, files_pb2.File.PURPOSE_FINE_TUNE, "train.jsonl")
        job = client.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(base_model=model, training_file=uploaded.id, seed=1)
            ),
            metadata=meta,
            timeout=60,
        )
        client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), metadata=meta)
        tokens = ctx.scale(32, 8)
        ask = models_pb2.GenerateRequest(
            model_id=model, prompt="The answer is", max_tokens=tokens, temperature=0
        )
        # Loading the model (and, for a worker, starting it) is not what is measured.
        list(client.models.Generate(ask, metadata=meta, timeout=300))
        window = ctx.scale(20.0, 2.0)
        idle = _get_job_latencies(client, job.id, window / 2)

        stop = threading.Event()
        generated = [0] * STREAMS
        errors: list[str] = []

        def stream(index: int) -> None:
            while not stop.is_set():
                try:
                    for reply in client.models.Generate(ask, metadata=meta, timeout=300):
                        if reply.HasField("usage"):
                            generated[index] += reply.usage.completion_tokens
                except grpc.RpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    return

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # every stream under way
        before, started = sum(generated), time.monotonic()
        loaded = _get_job_latencies(client, job.id, window)
        produced, elapsed = sum(generated) - before, time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        if errors:
            raise RuntimeError(f"a Generate stream failed: {errors[0]}")
    finally:
        client.close()
    return {
        "idle_p50": percentile(idle, 50),
        "idle_p99": percentile(idle, 99),
        "loaded_p50": percentile(loaded, 50),
        "loaded_p99": percentile(loaded, 99),
        "calls": len(loaded),
        "tokens_per_s": produced / elapsed,
    }


def _get_job_latencies(client: Any, job_id: str, seconds: float) -> list[float]:
    from tunewire.v1 import jobs_pb2

    request = jobs_pb2.GetJobRequest(job_id=job_id)
    found: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        client.jobs.GetJob(request, metadata=client.metadata, timeout=60)
        found.append((time.perf_counter() - sent) * 1000)
        time.sleep(GAP_SECONDS)
    return found


def _section(
    ctx: Context, shape: workload.ModelShape, samples: dict[str, list[dict[str, float]]]
) -> Section:
    ours_name, *others = samples
    med = {name: {k: median_of(rows, k) for k in rows[0]} for name, rows in samples.items()}
    ours = med[ours_name]
    old = med[others[0]] if others else dict.fromkeys(ours)
    old_name = others[0] if others else f"commit {BASELINE} (not in this clone)"
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Model: the {shape.hidden_size}-wide, {shape.num_hidden_layers}-layer benchmark "
        f"Llama ({shape.key}) as a base model; {STREAMS} threads each stream Generate "
        f"back to back ({ctx.scale(32, 8)} tokens, greedy) over one sync channel; GetJob "
        f"every {GAP_SECONDS * 1000:.0f} ms on the same channel for "
        f"{ctx.scale(20, 2)} s (idle: half that, before the streams start).",
        f"Baseline: `tunewire up` of commit {BASELINE}, the same service with generation "
        "on threads of the control plane; this environment's packages for both.",
        f"Layouts alternate, {ctx.repeats} repeat(s); medians of each repeat's percentiles.",
    ]

    def pair(metric: str, key: str, unit: str, better: bool | None, **kw: Any) -> Figure:
        return Figure(metric, ours[key], old[key], unit, old_name, higher_is_better=better, **kw)

    section.add(
        pair(
            "GetJob p50 while 4 streams generate",
            "loaded_p50",
            "ms",
            False,
            spread=_spread(samples, "loaded_p50"),
        ),
        pair(
            "GetJob p99 while 4 streams generate",
            "loaded_p99",
            "ms",
            False,
            spread=_spread(samples, "loaded_p99"),
        ),
        pair("GetJob p50 idle", "idle_p50", "ms", False),
        pair("GetJob p99 idle", "idle_p99", "ms", False),
        pair(
            "tokens generated per second (4 streams)",
            "tokens_per_s",
            "tok/s",
            True,
            note="streamed through the control plane from the worker",
        ),
    )
    if old["loaded_p99"] is not None:
        section.summary = (
            f"While 4 streams generate, GetJob p99 is {ours['loaded_p99']:.1f} ms with "
            f"generation in a worker vs {old['loaded_p99']:.1f} ms in the control plane "
            f"(p50 {ours['loaded_p50']:.1f} vs {old['loaded_p50']:.1f} ms); "
            f"{ours['tokens_per_s']:.0f} vs {old['tokens_per_s']:.0f} tokens/s."
        )
    else:
        section.summary = (
            f"GetJob p99 {ours['loaded_p99']:.1f} ms while 4 streams generate "
            f"(no baseline: commit {BASELINE} is not in this clone)."
        )
    return section


def _spread(samples: dict[str, list[dict[str, float]]], key: str) -> str:
    parts = []
    for name, rows in samples.items():
        values = [row[key] for row in rows if row[key] is not None]
        if values:
            parts.append(f"{name.split(' (')[0]} {min(values):.1f}-{max(values):.1f}")
    return "; ".join(parts)
