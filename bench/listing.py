"""Lists and events at 100 and at 100,000 objects: every list and event call, on every
surface, should cost the same however many objects the caller has (goal: within 2x).

Two stores are filled directly (the real schema and migrations, `server.store.db.connect`;
rows written as the control plane writes them) with N jobs, N files, N fine-tuned models
and one job with N events and N checkpoints, for N = 100 and N = 100,000 (`--quick`: 100
and 5,000). A real `tunewire up` (gRPC and its REST bridge) then serves each store, and
each call is timed on a kept-alive connection: gRPC with a sync stub; native REST,
OpenAI, Cohere and TrueFoundry through the bridge with http.client. Calls: first pages,
pages deep in the list (OpenAI `after` = an id near the end, a page token near the end),
the indexed filters (metadata pair, purpose, event type), events newest first with
`limit=1`. The baseline of each figure is the same call on the 100-object store; the ratio
is per-call time at N / at 100.

StreamJobEvents: a whole replay of the events job (N events) on gRPC, one event per
message and in batches of 500 (`max_batch_size`), against paging the same events with
ListJobEvents (page_size 1000), in events/s.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from bench.harness import REPO, WORK, Context, Figure, Section, child_env, log
from bench.servers import READY, REST_READY, _stop, _tunewire, _wait_for, old_checkout

NAME = "listing"
TITLE = "Lists and events: the same cost at 100 and at 100,000 objects"
ORG = "default"
T0 = 1_700_000_000.0
GOAL = 2.0
BEFORE = "5210e43"
"""The last commit before lists were keyset-paged: the same calls on the same large store
with that code are the "before" figures."""
BEFORE_CALLS = [
    "openai GET fine_tuning/jobs?after (deep)",
    "openai GET events?limit=1",
    "openai GET events?after (deep)",
    "openai GET files?limit=20",
    "openai GET files?after (deep)",
    "cohere GET finetuned-models",
    "cohere GET training-step-metrics",
    "native GET jobs?metadata",
]


# --- filling a store ---------------------------------------------------------------------


def fill(home: Path, n: int) -> dict[str, Any]:
    """A fresh home with `n` jobs, files, models, Helix sessions (conversations of the
    jobs, two messages each), and one job with `n` events and `n` checkpoints; returns the
    API key and the ids the calls need."""
    from google.protobuf import struct_pb2

    from server import auth
    from server.ids import timestamp
    from server.store.db import connect, write
    from tunewire.v1 import (
        checkpoints_pb2,
        conversations_pb2,
        events_pb2,
        files_pb2,
        jobs_pb2,
        models_pb2,
    )

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    db = connect(home / "tunewire.db")
    key = auth.create_key(db, ORG)
    File, Job, Event = files_pb2.File, jobs_pb2.Job, events_pb2.Event
    conn = db.conn
    files, jobs, models, sessions, messages = [], [], [], [], []
    for i in range(n):
        at = T0 + i
        purpose = File.PURPOSE_FINE_TUNE if i % 5 == 0 else File.PURPOSE_USER_DATA
        record = File(
            id=f"file-{i:024x}",
            filename=f"data-{i}.jsonl",
            purpose=purpose,
            bytes=100,
            state=File.STATE_PROCESSED,
            create_time=timestamp(at),
        )
        files.append((record.id, ORG, purpose, at, record.SerializeToString()))
        metadata = {"group": str(i % 5), "kind": "bench"}
        job = Job(
            id=f"ftjob-{i:024x}",
            organization=ORG,
            base_model="tiny-llama",
            training_file=files[0][0],
            state=Job.STATE_CANCELLED,
            create_time=timestamp(at),
            finish_time=timestamp(at + 0.5),
            metadata=metadata,
            suffix=f"s{i}",
        )
        jobs.append(
            (
                job.id,
                ORG,
                job.state,
                at,
                job.training_file,
                json.dumps(metadata, sort_keys=True),
                job.SerializeToString(),
            )
        )
        model = models_pb2.FineTunedModel(
            id=f"ft:tiny-llama:{ORG}:s{i}:{job.id}",
            job_id=job.id,
            base_model="tiny-llama",
            create_time=timestamp(at),
        )
        models.append((model.id, ORG, job.id, at, "none", model.SerializeToString()))
        said = [
            conversations_pb2.ConversationMessage(
                id=f"cmsg-{2 * i + s:024x}",
                role=role,
                metadata={"kind": kind},
                sequence=s + 1,
                create_time=timestamp(at),
            )
            for s, (role, kind) in enumerate([("user", "documents"), ("assistant", "finetune")])
        ]
        session = conversations_pb2.Conversation(
            id=f"conv-{i:024x}",
            title=f"data-{i}.txt",
            model="tiny-llama",
            job_id=job.id,
            message_count=len(said),
            last_message_id=said[-1].id,
            create_time=timestamp(at),
            update_time=timestamp(at),
            organization=ORG,
        )
        sessions.append((session.id, ORG, at, job.id, session.SerializeToString()))
        messages += [(session.id, m.sequence, m.SerializeToString()) for m in said]
    events_job = jobs[-1][0]
    events, checkpoints = [], []
    for s in range(1, n + 1):
        state = s in (1, 2, 3) or s == n
        event = Event(
            id=f"ftevent-{s:024x}",
            parent=events_job,
            sequence=s,
            create_time=timestamp(T0 + s * 0.001),
            type=Event.TYPE_STATE if state else Event.TYPE_METRICS,
            message=f"Step {s}/{n}: training loss=1.00",
        )
        data = struct_pb2.Struct()
        if state:
            named = "cancelled" if s == n else ("queued", "running", "paused")[s - 1]
            data.update({"state": named})
        else:
            data.update({"step": s, "total_steps": n, "train_loss": 1.0})
        event.data.CopyFrom(data)
        events.append((events_job, s, event.id, event.type, event.SerializeToString()))
        checkpoint = checkpoints_pb2.Checkpoint(
            id=f"ftckpt-{s:024x}", job_id=events_job, step=s, create_time=timestamp(T0 + s)
        )
        checkpoints.append(
            (checkpoint.id, events_job, s, T0 + s, f"ckpt/{s}", checkpoint.SerializeToString())
        )
    with write(db):
        conn.executemany(
            "INSERT INTO files (id, org, purpose, created_at, proto) VALUES (?, ?, ?, ?, ?)", files
        )
        conn.executemany(
            "INSERT INTO jobs (id, org, state, created_at, training_file, metadata, proto)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            jobs,
        )
        conn.executemany(
            "INSERT INTO models (id, org, job_id, created_at, adapter_path, proto)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            models,
        )
        conn.executemany(
            "INSERT INTO events (parent, sequence, id, type, proto) VALUES (?, ?, ?, ?, ?)",
            events,
        )
        conn.executemany(
            "INSERT INTO checkpoints (id, job_id, step, created_at, path, proto)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            checkpoints,
        )
        conn.executemany(
            "INSERT INTO conversations (id, org, created_at, job_id, proto) VALUES (?, ?, ?, ?, ?)",
            sessions,
        )
        conn.executemany(
            "INSERT INTO conversation_messages (conversation_id, sequence, proto) VALUES (?, ?, ?)",
            messages,
        )
    conn.execute("ANALYZE")
    conn.close()
    deep = max(0, min(10, n - 30))  # an object near the end of a newest-first list
    return {
        "key": key,
        "job": events_job,
        "session": sessions[-1][0],  # the events job's
        "deep_job": jobs[deep][0],
        "deep_file": files[deep][0],
        "deep_event": events[deep][2],
        "n": n,
    }


@contextmanager
def serve(
    home: Path, work: Path, threads: int, checkout: Path | None = None
) -> Iterator[tuple[str, str]]:
    """`tunewire up` (gRPC and REST) on a filled home; yields the two addresses.
    `checkout`: an older tree of Tunewire to run instead (its migrations are a prefix
    of this one's, so it reads the store as it is)."""
    log_path = work / f"{home.name}{'-before' if checkout else ''}.log"
    env = child_env(threads, TUNEWIRE_HOME=str(home), TUNEWIRE_MAX_RUNNING_JOBS="0")
    env["TUNEWIRE_LOG_LEVEL"] = "warning"
    command = [*_tunewire(), "up"]
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(checkout / "protos")])
        command = [sys.executable, "-m", "bridge.cli", "up"]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [*command, "--grpc-port", "0", "--http-port", "0"],
            env=env,
            cwd=checkout or REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        grpc_ready = _wait_for(READY, log_path, process)
        rest_ready = _wait_for(REST_READY, log_path, process)
        yield (
            f"{grpc_ready.group(1)}:{grpc_ready.group(2)}",
            f"http://{rest_ready.group(1)}:{rest_ready.group(2)}",
        )
    finally:
        _stop(process)


# --- the calls ---------------------------------------------------------------------------

Call = Callable[[], Any]


def grpc_calls(address: str, ids: dict[str, Any]) -> tuple[dict[str, Call], Any]:
    import grpc

    from tunewire.v1 import (
        events_pb2,
        files_pb2,
        files_pb2_grpc,
        jobs_pb2,
        jobs_pb2_grpc,
        models_pb2,
        models_pb2_grpc,
    )

    channel = grpc.insecure_channel(address)
    meta = [("authorization", f"Bearer {ids['key']}")]
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    files = files_pb2_grpc.FileServiceStub(channel)
    models = models_pb2_grpc.ModelServiceStub(channel)
    job = ids["job"]

    def call(method: Callable[..., Any], request: Any) -> Call:
        return lambda: method(request, metadata=meta, timeout=60)

    deep_token = (
        jobs.ListJobs(
            jobs_pb2.ListJobsRequest(page_size=20, after_id=ids["deep_job"]),
            metadata=meta,
            timeout=60,
        ).next_page_token
        or ""
    )
    L = jobs_pb2.ListJobsRequest
    E = jobs_pb2.ListJobEventsRequest
    calls = {
        "ListJobs page 1": call(jobs.ListJobs, L(page_size=20)),
        "ListJobs deep page (page_token)": call(
            jobs.ListJobs, L(page_size=20, page_token=deep_token)
        ),
        "ListJobs after_id (deep)": call(jobs.ListJobs, L(page_size=20, after_id=ids["deep_job"])),
        "ListJobs oldest first": call(jobs.ListJobs, L(page_size=20, order_by="create_time")),
        "ListJobs metadata filter": call(jobs.ListJobs, L(page_size=20, metadata={"group": "3"})),
        "ListFiles page 1": call(files.ListFiles, files_pb2.ListFilesRequest(page_size=20)),
        "ListFiles purpose filter": call(
            files.ListFiles,
            files_pb2.ListFilesRequest(page_size=20, purpose=files_pb2.File.PURPOSE_FINE_TUNE),
        ),
        "ListModels page 1": call(models.ListModels, models_pb2.ListModelsRequest(page_size=20)),
        "ListJobEvents page 1": call(jobs.ListJobEvents, E(job_id=job, page_size=20)),
        "ListJobEvents newest, page_size 1": call(
            jobs.ListJobEvents, E(job_id=job, page_size=1, order_by="sequence desc")
        ),
        "ListJobEvents after_id (deep)": call(
            jobs.ListJobEvents,
            E(job_id=job, page_size=20, order_by="sequence desc", after_id=ids["deep_event"]),
        ),
        "ListJobEvents state events": call(
            jobs.ListJobEvents, E(job_id=job, page_size=20, types=[events_pb2.Event.TYPE_STATE])
        ),
        "ListCheckpoints page 1": call(
            jobs.ListCheckpoints, jobs_pb2.ListCheckpointsRequest(job_id=job, page_size=10)
        ),
    }
    return calls, channel


def rest_calls(
    url: str, ids: dict[str, Any], only: list[str] | None = None
) -> tuple[dict[str, Call], Any]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    headers = {"Authorization": f"Bearer {ids['key']}"}
    job = ids["job"]

    def get(path: str) -> Any:
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed the kept-alive connection while it sat idle (uvicorn's
            # keep-alive timeout): open it again, as any HTTP client does.
            conn.close()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return json.loads(body)

    def call(path: str) -> Call:
        return lambda: get(path)

    token = (
        ""
        if only
        else get("/cohere/v1/finetuning/finetuned-models?page_size=10")["next_page_token"]
    )
    tf = "/api/llm/fine_tuning/jobs"
    calls = {
        "native GET jobs": call("/tunewire/v1/jobs?page_size=20"),
        "native GET jobs?metadata": call("/tunewire/v1/jobs?page_size=20&metadata[group]=3"),
        "native GET files?purpose": call(
            "/tunewire/v1/files?page_size=20&purpose=PURPOSE_FINE_TUNE"
        ),
        "native GET events": call(f"/tunewire/v1/jobs/{job}/events?page_size=20"),
        "openai GET fine_tuning/jobs": call("/v1/fine_tuning/jobs?limit=20"),
        "openai GET fine_tuning/jobs?after (deep)": call(
            f"/v1/fine_tuning/jobs?limit=20&after={ids['deep_job']}"
        ),
        "openai GET fine_tuning/jobs?metadata": call(
            "/v1/fine_tuning/jobs?limit=20&metadata[group]=3"
        ),
        "openai GET events?limit=1": call(f"/v1/fine_tuning/jobs/{job}/events?limit=1"),
        "openai GET events?after (deep)": call(
            f"/v1/fine_tuning/jobs/{job}/events?limit=20&after={ids['deep_event']}"
        ),
        "openai GET checkpoints": call(f"/v1/fine_tuning/jobs/{job}/checkpoints"),
        "openai GET files?limit=20": call("/v1/files?limit=20"),
        "openai GET files?after (deep)": call(f"/v1/files?limit=20&after={ids['deep_file']}"),
        "openai GET files?purpose": call("/v1/files?limit=20&purpose=fine-tune"),
        "cohere GET finetuned-models": call("/cohere/v1/finetuning/finetuned-models?page_size=10"),
        "cohere GET finetuned-models page 2": call(
            f"/cohere/v1/finetuning/finetuned-models?page_size=10&page_token={quote(token)}"
        ),
        "cohere GET finetuned-models (asc)": call(
            "/cohere/v1/finetuning/finetuned-models?page_size=10&order_by=created_at"
        ),
        "cohere GET events": call(f"/cohere/v1/finetuning/finetuned-models/{job}/events"),
        "cohere GET training-step-metrics": call(
            f"/cohere/v1/finetuning/finetuned-models/{job}/training-step-metrics?page_size=10"
        ),
        "cohere GET datasets?limit=10": call("/cohere/v1/datasets?limit=10"),
        "helix GET sessions/{id}": call(f"/api/v1/sessions/{ids['session']}"),
        "helix GET sessions?limit=20": call("/api/v1/sessions?limit=20"),
        "truefoundry GET jobs": call(f"{tf}?limit=20"),
        "truefoundry GET events?limit=1": call(f"{tf}/{job}/events?limit=1"),
    }
    if only is not None:
        calls = {name: calls[name] for name in only}
    return calls, conn


def paired_ms(small: Call, large: Call, rounds: int, calls: int) -> tuple[float, float]:
    """Median ms per call of the same call on the small and the large store: a warm-up,
    then `rounds` rounds of `calls` calls on each, alternating which goes first, so
    other load on the machine falls on both alike."""
    small(), large()
    times: dict[int, list[float]] = {0: [], 1: []}
    for round_ in range(rounds):
        order = [(0, small), (1, large)]
        for side, call in order if round_ % 2 == 0 else order[::-1]:
            for _ in range(calls):
                started = time.perf_counter()
                call()
                times[side].append((time.perf_counter() - started) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def replay_rates(address: str, ids: dict[str, Any]) -> dict[str, float]:
    """Events/s: a whole StreamJobEvents replay (per event, batched) vs ListJobEvents pages."""
    import grpc

    from tunewire.v1 import jobs_pb2, jobs_pb2_grpc

    meta = [("authorization", f"Bearer {ids['key']}")]
    n = ids["n"]
    rates: dict[str, float] = {}
    with grpc.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        def stream(batch: int) -> int:
            got = 0
            request = jobs_pb2.StreamJobEventsRequest(job_id=ids["job"], max_batch_size=batch)
            for reply in stub.StreamJobEvents(request, metadata=meta, timeout=600):
                got += len(reply.events) or 1
            return got

        def paging() -> int:
            got, token = 0, ""
            while True:
                page = stub.ListJobEvents(
                    jobs_pb2.ListJobEventsRequest(
                        job_id=ids["job"], page_size=1000, page_token=token
                    ),
                    metadata=meta,
                    timeout=600,
                )
                got += len(page.events)
                if not (token := page.next_page_token):
                    return got

        for name, run in (
            ("stream, 1 event per message", lambda: stream(0)),
            ("stream, max_batch_size 500", lambda: stream(500)),
            ("ListJobEvents pages of 1000", paging),
        ):
            run()  # warm-up
            best = 0.0
            for _ in range(3):
                t = time.perf_counter()
                got = run()
                elapsed = time.perf_counter() - t
                if got != n:
                    raise RuntimeError(f"{name}: {got} events of {n}")
                best = max(best, n / elapsed)
            rates[name] = best
    return rates


# --- the benchmark -----------------------------------------------------------------------


def measure(
    ctx: Context, sizes: tuple[int, int], say: Callable[[str], None]
) -> tuple[dict[str, tuple[float, float]], list[dict[str, float]]]:
    """Per-call ms of every call on both stores, served side by side, and the replay
    rates on each."""
    filled = []
    for n in sizes:
        started = time.perf_counter()
        filled.append(fill(ctx.work / f"home-{n}", n))
        say(f"filled a store with {n:,} of each in {time.perf_counter() - started:.1f} s")
    rounds, calls = ctx.scale(10, 2), ctx.scale(20, 5)
    timings: dict[str, tuple[float, float]] = {}
    with ExitStack() as stack:
        served = [
            stack.enter_context(serve(ctx.work / f"home-{n}", ctx.work, ctx.threads)) for n in sizes
        ]
        grpc_sides = [
            grpc_calls(address, ids) for (address, _), ids in zip(served, filled, strict=True)
        ]
        rest_sides = [rest_calls(url, ids) for (_, url), ids in zip(served, filled, strict=True)]
        for prefix, ((small, _), (large, _)) in (("grpc ", grpc_sides), ("", rest_sides)):
            for name in small:
                pair = timings[prefix + name] = paired_ms(small[name], large[name], rounds, calls)
                say(
                    f"{prefix}{name}: {pair[0]:.2f} ms at {sizes[0]:,}, "
                    f"{pair[1]:.2f} at {sizes[1]:,}"
                )
        for _, connection in grpc_sides + rest_sides:
            connection.close()
        rates = [
            replay_rates(address, ids) for (address, _), ids in zip(served, filled, strict=True)
        ]
    before: dict[str, float] = {}
    old = None if ctx.quick else old_checkout(BEFORE, WORK / "checkouts")
    if old is not None:
        with serve(ctx.work / f"home-{sizes[1]}", ctx.work, ctx.threads, old) as (_, url):
            calls, connection = rest_calls(url, filled[1], only=BEFORE_CALLS)
            for name, call in calls.items():
                call()
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - started) * 1000)
                before[name] = statistics.median(times)
                say(f"before ({BEFORE}): {name}: {before[name]:.1f} ms at {sizes[1]:,}")
            connection.close()
    for n in sizes:
        shutil.rmtree(ctx.work / f"home-{n}", ignore_errors=True)
    return timings, rates, before


def run(ctx: Context) -> Section:
    say = log(NAME)
    small, large = 100, ctx.scale(100_000, 5_000)
    timings, (low_rates, high_rates), before = measure(ctx, (small, large), say)
    low = {name: pair[0] for name, pair in timings.items()}
    high = {name: pair[1] for name, pair in timings.items()}
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Stores filled directly with {small:,} and {large:,} jobs, files, models, and one "
        f"job with as many events and checkpoints (1 in 5 files purpose fine-tune; metadata "
        f"`group` = i mod 5, so filtered pages are full at both sizes); then `tunewire up` "
        "(gRPC + REST bridge) on each.",
        "Both servers run side by side; per call: median ms over "
        f"{ctx.scale(10, 2)} rounds of {ctx.scale(20, 5)} calls on each store, alternating "
        "which goes first, on one kept-alive connection each (sync gRPC stub; http.client "
        "for REST), after a warm-up call. Ratio: ms at "
        f"{large:,} / ms at {small:,}; goal <= {GOAL:g}x.",
        "Deep pages start after an object 10 from the oldest end of a newest-first list.",
        "Replay: every event of the events job from sequence 0, best of 3, events/s; "
        "StreamJobEvents one event per message and in batches (`max_batch_size` 500) vs "
        "ListJobEvents pages of 1,000.",
        f"Before: the calls that read whole lists before this change, on the {large:,} "
        f"store served by the code of {BEFORE} (median of 3 calls after a warm-up); "
        "full runs only.",
    ]
    worst = 1.0
    for name in low:
        ratio = high[name] / low[name]
        worst = max(worst, ratio)
        section.add(
            Figure(
                metric=f"{name} (ms per call)",
                ours=round(high[name], 3),
                baseline=round(low[name], 3),
                unit="ms",
                baseline_name=f"same call at {small:,}",
                higher_is_better=False,
                goal=f"<= {GOAL:g}x",
                met=ratio <= GOAL,
                note=f"at {large:,}: {high[name]:.2f} ms; at {small:,}: {low[name]:.2f} ms",
            )
        )
    for name, ms in before.items():
        section.add(
            Figure(
                metric=f"{name} at {large:,}: now vs before ({BEFORE})",
                ours=round(high[name], 3),
                baseline=round(ms, 3),
                unit="ms",
                baseline_name=f"the same call, code of {BEFORE}",
                higher_is_better=False,
            )
        )
    paging = high_rates["ListJobEvents pages of 1000"]
    for name, rate in high_rates.items():
        if name == "ListJobEvents pages of 1000":
            continue
        section.add(
            Figure(
                metric=f"StreamJobEvents replay of {large:,} events: {name}",
                ours=round(rate),
                baseline=round(paging),
                unit="events/s",
                baseline_name="ListJobEvents pages of 1000",
                goal=">= 1x" if "batch" in name else "",
                met=rate >= paging if "batch" in name else None,
                note=f"at {small:,} events: {low_rates[name]:,.0f} events/s",
            )
        )
    met = sum(1 for f in section.figures if f.met)
    goals = sum(1 for f in section.figures if f.met is not None)
    batched = high_rates["stream, max_batch_size 500"]
    section.summary = (
        f"Worst list/event call ratio {worst:.2f}x between {large:,} and {small:,} objects "
        f"(goal <= {GOAL:g}x; {met}/{goals} goals met); StreamJobEvents replays "
        f"{batched:,.0f} events/s batched ({batched / paging:.2f}x paging's {paging:,.0f}), "
        f"{high_rates['stream, 1 event per message']:,.0f} one per message."
    )
    return section
