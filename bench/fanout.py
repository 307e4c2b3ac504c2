"""Event fan-out: many concurrent StreamJobEvents watchers of one job on one control plane.

Events come from a real training job (tiny-llama on the shipped 64-example sample, batch
4, several epochs: one metrics event per step plus checkpoints and state changes), so
they arrive at the pace a trainer reports them. Every watcher is a grpc.aio stream in
this one client process, spread over a few channels (HTTP/2 connections); each must
receive every event of the job, in order, with no gap (0 dropped). Delivery latency is
receipt time minus the event's create_time (set by the server when it appends the event;
same machine clock), over events appended after every watcher was connected. While they
watch, a separate process calls GetJob in a loop (sync gRPC, 20 ms apart) for its
latency. Server memory per watcher: the server's RSS growth from before the job to the
moment all watchers are connected, minus the same growth with one watcher, divided by
the extra watchers. The baseline is the same job watched by one stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources

from bench import workload
from bench.harness import (
    Context,
    Figure,
    Section,
    child_env,
    interleaved,
    log,
    median_of,
    percentile,
    rss_bytes,
    spread_of,
)
from bench.servers import Server, tunewire_up

NAME = "fanout"
TITLE = "Event fan-out: concurrent StreamJobEvents watchers of one job"
STREAMS_PER_CHANNEL = 100


@dataclass
class Watcher:
    received: list[tuple[int, float, float]] = field(default_factory=list)
    """(sequence, create_time, receipt time) per event."""
    error: str = ""


def run(ctx: Context) -> Section:
    say = log(NAME)
    watchers = ctx.scale(1000, 50)
    epochs = ctx.scale(6, 2)
    from bridge.cli.client import Client
    from tunewire.v1 import files_pb2, models_pb2

    models_dir = workload.tiny_llama().parent
    sample = resources.files("trainer") / "assets" / "sample-chat.jsonl"
    # Quick mode (CI) runs no trainer: the watched job is queued, then cancelled.
    with tunewire_up(
        ctx.work / "home", models_dir, ctx.threads, max_running_jobs=ctx.scale("1", "0")
    ) as server:
        client = Client(server.address, server.key)
        try:
            path = ctx.work / "sample-chat.jsonl"
            path.write_bytes(sample.read_bytes())
            say("server up")
            uploaded = client.upload(path, files_pb2.File.PURPOSE_FINE_TUNE)
            # The first model lookup reads the models dir: not a watcher's cost.
            client.models.ListBaseModels(
                models_pb2.ListBaseModelsRequest(), metadata=client.metadata, timeout=120
            )
            say("server warm")
            variants = {
                f"{watchers} watchers": lambda: asyncio.run(
                    _one_job(server, uploaded.id, watchers, epochs, ctx)
                ),
                "1 watcher": lambda: asyncio.run(_one_job(server, uploaded.id, 1, epochs, ctx)),
            }
            samples = interleaved(variants, ctx.repeats, warmup=0, log=say)
        finally:
            client.close()
    return _section(ctx, watchers, epochs, samples)


async def _one_job(
    server: Server, file_id: str, n_watchers: int, epochs: int, ctx: Context
) -> dict[str, float]:
    import grpc

    from tunewire.v1 import jobs_pb2, jobs_pb2_grpc

    rss_before = rss_bytes(server.pid)
    n_channels = max(1, -(-n_watchers // STREAMS_PER_CHANNEL))
    channels = [grpc.aio.insecure_channel(server.address) for _ in range(n_channels)]
    stubs = [jobs_pb2_grpc.JobServiceStub(channel) for channel in channels]
    try:
        job = await stubs[0].CreateJob(
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(
                    base_model="tiny-llama",
                    training_file=file_id,
                    seed=7,
                    hyperparameters=jobs_pb2.Hyperparameters(
                        n_epochs=epochs, batch_size=4, learning_rate_multiplier=50
                    ),
                )
            ),
            metadata=server.metadata,
            timeout=60,
        )
        watchers = [Watcher() for _ in range(n_watchers)]
        first = [asyncio.Event() for _ in range(n_watchers)]

        async def watch(index: int) -> None:
            watcher = watchers[index]
            call = stubs[index % n_channels].StreamJobEvents(
                jobs_pb2.StreamJobEventsRequest(job_id=job.id),
                metadata=server.metadata,
                timeout=600,
            )
            try:
                async for reply in call:
                    event = reply.event
                    watcher.received.append(
                        (event.sequence, event.create_time.ToNanoseconds() / 1e9, time.time())
                    )
                    first[index].set()
            except grpc.aio.AioRpcError as error:
                watcher.error = f"{error.code().name}: {error.details()}"
            finally:
                first[index].set()

        tasks = [asyncio.create_task(watch(i)) for i in range(n_watchers)]
        await asyncio.gather(*(event.wait() for event in first))
        connected = time.time()
        rss_connected = rss_bytes(server.pid)
        prober = _start_prober(server, job.id, ctx)
        if ctx.quick:
            await stubs[0].CancelJob(
                jobs_pb2.CancelJobRequest(job_id=job.id), metadata=server.metadata, timeout=60
            )
        await asyncio.gather(*tasks)
        probes = _stop_prober(prober)
        final = await stubs[0].GetJob(
            jobs_pb2.GetJobRequest(job_id=job.id), metadata=server.metadata, timeout=60
        )
    finally:
        for channel in channels:
            await channel.close()
    wanted = jobs_pb2.Job.STATE_CANCELLED if ctx.quick else jobs_pb2.Job.STATE_SUCCEEDED
    if final.state != wanted:
        raise RuntimeError(f"job {job.id} ended {jobs_pb2.Job.State.Name(final.state)}")
    total = max(seq for w in watchers for seq, _, _ in w.received)
    expected = list(range(1, total + 1))
    complete = sum(1 for w in watchers if [s for s, _, _ in w.received] == expected)
    latencies = [
        received - created
        for w in watchers
        for _, created, received in w.received
        if created >= connected
    ]
    # Per event: when the last watcher had it.
    last_receipt: dict[int, tuple[float, float]] = {}
    for w in watchers:
        for seq, created, received in w.received:
            if created >= connected:
                _, latest = last_receipt.get(seq, (created, 0.0))
                last_receipt[seq] = (created, max(latest, received))
    to_all = [latest - created for created, latest in last_receipt.values()]
    return {
        "watchers": n_watchers,
        "channels": n_channels,
        "events": total,
        "live_events": len(last_receipt),
        "complete_watchers": complete,
        "dropped": sum(max(0, total - len(w.received)) for w in watchers),
        "errors": sum(1 for w in watchers if w.error),
        "latency_p50_ms": 1000 * (percentile(latencies, 50) or 0.0),
        "latency_p99_ms": 1000 * (percentile(latencies, 99) or 0.0),
        "to_all_p50_ms": 1000 * (percentile(to_all, 50) or 0.0),
        "to_all_p99_ms": 1000 * (percentile(to_all, 99) or 0.0),
        "rss_growth_mib": (rss_connected - rss_before) / 2**20,
        "getjob_p50_ms": 1000 * (percentile(probes, 50) or 0.0),
        "getjob_p99_ms": 1000 * (percentile(probes, 99) or 0.0),
        "getjob_calls": len(probes),
    }


PROBE = """
import json, sys, threading, time
import grpc
from tunewire.v1 import jobs_pb2, jobs_pb2_grpc
address, key, job_id = sys.argv[1:4]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
stub = jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(address))
metadata = [("authorization", "Bearer " + key)]
request = jobs_pb2.GetJobRequest(job_id=job_id)
stub.GetJob(request, metadata=metadata, timeout=60)
latencies = []
while not stop.wait(0.02):
    started = time.perf_counter()
    stub.GetJob(request, metadata=metadata, timeout=60)
    latencies.append(time.perf_counter() - started)
print(json.dumps(latencies), flush=True)
"""


def _start_prober(server: Server, job_id: str, ctx: Context) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, server.address, server.key, job_id],
        env=child_env(ctx.threads),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _stop_prober(prober: subprocess.Popen) -> list[float]:
    out, _ = prober.communicate("", timeout=120)
    if prober.returncode != 0:
        raise RuntimeError(f"GetJob prober exited with {prober.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def _section(ctx: Context, watchers: int, epochs: int, samples: dict[str, list]) -> Section:
    many, one = samples[f"{watchers} watchers"], samples["1 watcher"]
    m = {key: median_of(many, key) for key in many[0]}
    o = {key: median_of(one, key) for key in one[0]}
    per_watcher_kib = (m["rss_growth_mib"] - o["rss_growth_mib"]) * 1024 / (watchers - 1)
    dropped = sum(s["dropped"] + s["errors"] for s in many)
    complete = min(s["complete_watchers"] for s in many)
    section = Section(name=NAME, title=TITLE)
    source = (
        "a queued job cancelled once every watcher was connected (quick mode: no trainer)"
        if ctx.quick
        else f"a real training job (tiny-llama, the 64-example sample, batch 4, {epochs} epochs)"
    )
    section.method = [
        f"Events: {source}: {int(m['events'])} events, {int(m['live_events'])} of them "
        "appended after every watcher was connected.",
        f"{watchers} watchers: grpc.aio streams in one client process over "
        f"{int(m['channels'])} channel(s), {STREAMS_PER_CHANNEL} streams per channel, all "
        "from after_sequence 0. Baseline: the same job watched by one stream.",
        "GetJob: a separate process, sync gRPC, one call every 20 ms while the job runs.",
        f"Interleaved {watchers} / 1 watcher jobs (the server warmed first), {len(many)} "
        "repeat(s); medians. Server, trainer and client share the machine's "
        "cores, so client-side receive time is part of the latency.",
    ]
    section.add(
        Figure(
            "watchers that received every event in order",
            complete,
            watchers,
            "",
            "watchers started",
            goal="all",
            met=complete == watchers,
        ),
        Figure(
            "events dropped (missing, or streams that failed)",
            dropped,
            0,
            "",
            "",
            higher_is_better=None,
            goal="0",
            met=dropped == 0,
        ),
        Figure(
            "delivery latency p50 (append -> receipt)",
            m["latency_p50_ms"],
            o["latency_p50_ms"],
            "ms",
            "1 watcher",
            higher_is_better=False,
            spread=spread_of(many, "latency_p50_ms"),
        ),
        Figure(
            "delivery latency p99",
            m["latency_p99_ms"],
            o["latency_p99_ms"],
            "ms",
            "1 watcher",
            higher_is_better=False,
            spread=spread_of(many, "latency_p99_ms"),
        ),
        Figure(
            "time for an event to reach every watcher, p99",
            m["to_all_p99_ms"],
            o["to_all_p99_ms"],
            "ms",
            "1 watcher",
            higher_is_better=False,
        ),
        Figure(
            "server memory per watcher",
            per_watcher_kib,
            None,
            "KiB",
            higher_is_better=False,
            note=f"server RSS +{m['rss_growth_mib']:.1f} MiB with {watchers} watchers, "
            f"+{o['rss_growth_mib']:.1f} MiB with 1",
        ),
        Figure(
            "GetJob p50 while they watch",
            m["getjob_p50_ms"],
            o["getjob_p50_ms"],
            "ms",
            "1 watcher",
            higher_is_better=False,
        ),
        Figure(
            "GetJob p99 while they watch",
            m["getjob_p99_ms"],
            o["getjob_p99_ms"],
            "ms",
            "1 watcher",
            higher_is_better=False,
            note=f"{int(m['getjob_calls'])} calls",
        ),
    )
    section.summary = (
        f"{complete}/{watchers} watchers got every event ({dropped} dropped); delivery p50 "
        f"{m['latency_p50_ms']:.0f} ms / p99 {m['latency_p99_ms']:.0f} ms (1 watcher: "
        f"{o['latency_p50_ms']:.1f} / {o['latency_p99_ms']:.1f} ms); "
        f"{per_watcher_kib:.0f} KiB of server memory per watcher; GetJob p99 "
        f"{m['getjob_p99_ms']:.0f} ms while they watch (1 watcher: {o['getjob_p99_ms']:.1f})."
    )
    return section
