"""REST bridge: GetJob over REST (`GET /tunewire/v1/jobs/{id}` through a real
`python -m bridge`) against the same call over gRPC to the same `tunewire up`, and a job's
event stream as NDJSON and as server-sent events against the direct gRPC stream.

Latency: sequential calls on one kept-alive connection each (http.client for REST, a sync
gRPC stub), so the client adds as little as it can; the added latency is REST minus gRPC.
Requests/s: 16 concurrent callers for a fixed time (httpx.AsyncClient vs grpc.aio, one
client process). Stream throughput: replaying every event of a finished training job
(tiny-llama, batch 1: one metrics event per step) from sequence 0, parsed by the client
(JSON per line; SSE `data:` lines), events/s. Interleaved; medians.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import urlparse

from bench import workload
from bench.harness import (
    Context,
    Figure,
    Section,
    interleaved,
    log,
    median_of,
    percentile,
    spread_of,
)
from bench.servers import Server, bridge_up, tunewire_up, wait_job

NAME = "bridge"
TITLE = "REST bridge: GetJob and event streams vs direct gRPC"
CONCURRENCY = 16


def run(ctx: Context) -> Section:
    from contextlib import ExitStack

    say = log(NAME)
    from bridge.cli.client import Client
    from tunewire.v1 import files_pb2, jobs_pb2

    models_dir = workload.tiny_llama().parent
    with ExitStack() as stack:
        server = stack.enter_context(
            tunewire_up(
                ctx.work / "home", models_dir, ctx.threads, max_running_jobs=ctx.scale("1", "0")
            )
        )
        url, _pid = stack.enter_context(
            bridge_up(server.address, ctx.work / "bridge.log", ctx.threads)
        )
        client = Client(server.address, server.key)
        stack.callback(client.close)
        path = ctx.work / "sample-chat.jsonl"
        path.write_bytes((resources.files("trainer") / "assets" / "sample-chat.jsonl").read_bytes())
        uploaded = client.upload(path, files_pb2.File.PURPOSE_FINE_TUNE)
        job = client.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(
                    base_model="tiny-llama",
                    training_file=uploaded.id,
                    seed=1,
                    hyperparameters=jobs_pb2.Hyperparameters(
                        n_epochs=ctx.scale(8, 1), batch_size=ctx.scale(1, 4)
                    ),
                )
            ),
            metadata=client.metadata,
            timeout=120,
        )
        if ctx.quick:  # CI: no trainer; a cancelled job's three events
            client.jobs.CancelJob(
                jobs_pb2.CancelJobRequest(job_id=job.id), metadata=client.metadata, timeout=60
            )
        else:
            say(f"training {job.id} for its events")
        done = wait_job(client.jobs, client.metadata, job.id)
        wanted = jobs_pb2.Job.STATE_CANCELLED if ctx.quick else jobs_pb2.Job.STATE_SUCCEEDED
        if done.state != wanted:
            raise RuntimeError(f"the events job ended {jobs_pb2.Job.State.Name(done.state)}")
        calls = ctx.scale(200, 50)
        seconds = ctx.scale(5.0, 0.5)
        replays = ctx.scale(5, 2)
        variants = {
            "grpc get": lambda: _grpc_latency(server, job.id, calls),
            "rest get": lambda: _rest_latency(server, url, job.id, calls),
            "grpc rps": lambda: asyncio.run(_grpc_rps(server, job.id, seconds)),
            "rest rps": lambda: asyncio.run(_rest_rps(server, url, job.id, seconds)),
            "grpc stream": lambda: _grpc_stream(client, job.id, replays),
            "ndjson stream": lambda: _rest_stream(server, url, job.id, replays, sse=False),
            "sse stream": lambda: _rest_stream(server, url, job.id, replays, sse=True),
        }
        samples = interleaved(variants, ctx.repeats, warmup=ctx.scale(1, 0), log=say)
    return _section(ctx, samples, calls, seconds)


def _grpc_latency(server: Server, job_id: str, calls: int) -> dict[str, float]:
    import grpc

    from tunewire.v1 import jobs_pb2, jobs_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.GetJobRequest(job_id=job_id)
        stub.GetJob(request, metadata=server.metadata, timeout=30)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.GetJob(request, metadata=server.metadata, timeout=30)
            times.append(time.perf_counter() - started)
    return _latency(times)


def _rest_latency(server: Server, url: str, job_id: str, calls: int) -> dict[str, float]:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"authorization": f"Bearer {server.key}"}
    path = f"/tunewire/v1/jobs/{job_id}"
    times = []
    try:
        for index in range(calls + 1):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            reply = connection.getresponse()
            body = reply.read()
            if index:
                times.append(time.perf_counter() - started)
            if reply.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {reply.status}: {body[:300]!r}")
    finally:
        connection.close()
    return _latency(times)


def _latency(times: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * percentile(times, 50), "p99_ms": 1000 * percentile(times, 99)}


async def _grpc_rps(server: Server, job_id: str, seconds: float) -> dict[str, float]:
    import grpc

    from tunewire.v1 import jobs_pb2, jobs_pb2_grpc

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.GetJobRequest(job_id=job_id)

        async def call() -> None:
            await stub.GetJob(request, metadata=server.metadata, timeout=30)

        return await _closed_loop(call, seconds)


async def _rest_rps(server: Server, url: str, job_id: str, seconds: float) -> dict[str, float]:
    import httpx

    headers = {"authorization": f"Bearer {server.key}"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:

        async def call() -> None:
            reply = await http.get(f"/tunewire/v1/jobs/{job_id}", timeout=30)
            reply.raise_for_status()

        return await _closed_loop(call, seconds)


async def _closed_loop(call: Any, seconds: float) -> dict[str, float]:
    await asyncio.gather(*(call() for _ in range(CONCURRENCY)))  # connections open
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return {"rps": done / (time.perf_counter() - started)}


def _grpc_stream(client: Any, job_id: str, replays: int) -> dict[str, float]:
    from tunewire.v1 import jobs_pb2

    count = 0
    started = time.perf_counter()
    for _ in range(replays):
        request = jobs_pb2.StreamJobEventsRequest(job_id=job_id)
        for reply in client.jobs.StreamJobEvents(request, metadata=client.metadata, timeout=60):
            count += reply.event.sequence > 0
    return {"events_per_s": count / (time.perf_counter() - started), "events": count / replays}


def _rest_stream(
    server: Server, url: str, job_id: str, replays: int, sse: bool
) -> dict[str, float]:
    import httpx

    headers = {"authorization": f"Bearer {server.key}"}
    if sse:
        headers["accept"] = "text/event-stream"
    count = 0
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        started = time.perf_counter()
        for _ in range(replays):
            with http.stream("GET", f"/tunewire/v1/jobs/{job_id}/events:stream") as reply:
                reply.raise_for_status()
                for line in reply.iter_lines():
                    if sse:
                        if line.startswith("data: "):
                            count += "event" in json.loads(line[6:])["result"]
                    elif line:
                        count += "event" in json.loads(line)["result"]
        seconds = time.perf_counter() - started
    return {"events_per_s": count / seconds, "events": count / replays}


def _section(ctx: Context, samples: dict[str, list], calls: int, seconds: float) -> Section:
    m = {name: {k: median_of(rows, k) for k in rows[0]} for name, rows in samples.items()}
    grpc_get, rest_get = m["grpc get"], m["rest get"]
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"GetJob latency: {calls} sequential calls per sample on one kept-alive connection "
        "(http.client for REST, a sync gRPC stub); the bridge is a real `python -m bridge` "
        "in front of a real `tunewire up`.",
        f"Requests/s: {CONCURRENCY} concurrent callers for {seconds:g} s (httpx.AsyncClient "
        "vs grpc.aio, one client process; client, bridge and server share the cores).",
        f"Streams: every event of a finished tiny-llama job ({int(m['grpc stream']['events'])} "
        "events) replayed from sequence 0 and parsed, NDJSON and SSE vs the gRPC stream.",
        f"Interleaved, {ctx.scale('1 warm-up round + ', '')}{len(samples['grpc get'])} "
        "repeat(s); medians.",
    ]
    section.add(
        Figure(
            "GetJob latency p50",
            rest_get["p50_ms"],
            grpc_get["p50_ms"],
            "ms",
            "gRPC",
            higher_is_better=False,
            note=f"added {rest_get['p50_ms'] - grpc_get['p50_ms']:.2f} ms",
            spread=spread_of(samples["rest get"], "p50_ms"),
        ),
        Figure(
            "GetJob latency p99",
            rest_get["p99_ms"],
            grpc_get["p99_ms"],
            "ms",
            "gRPC",
            higher_is_better=False,
            note=f"added {rest_get['p99_ms'] - grpc_get['p99_ms']:.2f} ms",
            spread=spread_of(samples["rest get"], "p99_ms"),
        ),
        Figure(
            f"GetJob requests/s, {CONCURRENCY} concurrent",
            m["rest rps"]["rps"],
            m["grpc rps"]["rps"],
            "req/s",
            "gRPC",
            spread=f"rest {spread_of(samples['rest rps'], 'rps')}; "
            f"grpc {spread_of(samples['grpc rps'], 'rps')}",
        ),
        Figure(
            "event stream replay, NDJSON",
            m["ndjson stream"]["events_per_s"],
            m["grpc stream"]["events_per_s"],
            "ev/s",
            "gRPC StreamJobEvents",
        ),
        Figure(
            "event stream replay, SSE",
            m["sse stream"]["events_per_s"],
            m["grpc stream"]["events_per_s"],
            "ev/s",
            "gRPC StreamJobEvents",
        ),
    )
    if rest_get["p50_ms"] - grpc_get["p50_ms"] > 30:
        section.notes.append(
            "A ~40 ms floor on small replies is Nagle's algorithm meeting delayed ACKs. "
            "This benchmark found it once: asyncio sets TCP_NODELAY only on accepted "
            "sockets whose proto is IPPROTO_TCP, so check that bridge.main._listen still "
            "creates its socket with socket.socket(family, SOCK_STREAM, IPPROTO_TCP) "
            "(44 ms without, 0.4 ms with, on a bare uvicorn app)."
        )
    section.summary = (
        f"REST adds {rest_get['p50_ms'] - grpc_get['p50_ms']:.2f} ms p50 / "
        f"{rest_get['p99_ms'] - grpc_get['p99_ms']:.2f} ms p99 to GetJob "
        f"({m['rest rps']['rps']:.0f} vs {m['grpc rps']['rps']:.0f} req/s); NDJSON "
        f"{m['ndjson stream']['events_per_s']:.0f} and SSE "
        f"{m['sse stream']['events_per_s']:.0f} events/s vs "
        f"{m['grpc stream']['events_per_s']:.0f} over gRPC."
    )
    return section
