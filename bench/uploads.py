"""Uploads: a large JSONL file through the gRPC UploadFile stream (the project's own
`bridge.cli.client.Client.upload`, 1 MiB chunks) and through the REST bridge's multipart route
(`POST /tunewire/v1/files`, streamed by httpx), against a plain file copy on the same disk
(`shutil.copyfile` + fsync, the durability the blob store gives: it fsyncs before the
rename).

Uploads use purpose USER_DATA, so the figure is the transfer (stream, sha256, fsync,
rename); the same bytes are also uploaded as FINE_TUNE over gRPC, validated while they
stream (the goal: at least 0.8x the USER_DATA rate); validation alone is the `validation`
benchmark's. Each uploaded file is deleted before the next round. The server's (and
bridge's) peak RSS growth during an upload is sampled every 10 ms: streaming must not
hold the file in memory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.harness import (
    MB,
    Context,
    Figure,
    PeakRss,
    Section,
    interleaved,
    log,
    median_of,
    spread_of,
)
from bench.servers import bridge_up, tunewire_up

NAME = "uploads"
TITLE = "Uploads: a large JSONL through gRPC and the REST bridge vs a file copy"


def run(ctx: Context) -> Section:
    from contextlib import ExitStack

    say = log(NAME)
    size = ctx.scale(1_000_000_000, 50_000_000)
    source = workload.big_jsonl(size)
    size = source.stat().st_size
    with ExitStack() as stack:
        server = stack.enter_context(
            tunewire_up(
                ctx.work / "home",
                None,
                ctx.threads,
                max_running_jobs="0",
                max_upload_bytes=str(4 * size),
            )
        )
        bridge_url, bridge_pid = stack.enter_context(
            bridge_up(server.address, ctx.work / "bridge.log", ctx.threads)
        )
        _read_through(source)
        scratch = ctx.work / "scratch.jsonl"
        uploads = {
            "grpc": lambda: _grpc_upload(server, source),
            "fine_tune": lambda: _grpc_upload(server, source, fine_tune=True),
        }
        others = {
            "copy": lambda: _copy(source, ctx.work / "copy.jsonl"),
            "bridge": lambda: _bridge_upload(server, bridge_url, bridge_pid, source),
        }
        # The two gRPC uploads compared among themselves, A B B A A B B A: each runs
        # after each as often. What ran just before moved the kernel's share of receiving
        # by more than validation costs (see `server_system_ms_per_mb`), and a rotation
        # of all four put the user-data upload after the bridge's every time.
        rounds = ctx.scale(8, ctx.repeats)
        samples = interleaved(
            {name: _settled(v, source, scratch) for name, v in uploads.items()}, rounds, log=say
        )
        samples |= interleaved(
            {name: _settled(v, source, scratch) for name, v in others.items()}, ctx.repeats, log=say
        )
    section = _section(ctx, size, samples)
    section.repeats = rounds
    return section


def _settled(variant: Any, source: Path, scratch: Path) -> Any:
    """`variant`, started once the disk has written what the variant before left dirty
    (untimed): a gigabyte still being written back slows whatever runs next. And after
    one more gigabyte written and deleted (untimed, a copy of `source` at `scratch`): in
    one run of this VM the kernel's share of receiving an upload (its page cache)
    alternated between 0.7-0.9 and 1.4-1.6 ms/MB from one upload to the next, so each
    variant follows the same kind of work."""

    def run() -> dict[str, float]:
        _copy(source, scratch)
        os.sync()
        return variant()

    return run


def _read_through(path: Path) -> None:
    """Read the file once, so every variant reads it from the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _grpc_upload(server: Any, source: Path, fine_tune: bool = False) -> dict[str, float]:
    from bridge.cli.client import Client
    from tunewire.v1 import files_pb2

    File = files_pb2.File
    purpose = File.PURPOSE_FINE_TUNE if fine_tune else File.PURPOSE_USER_DATA
    client = Client(server.address, server.key)
    try:
        with PeakRss(server.pid) as rss:
            system = _system_seconds(server.pid)
            started = time.perf_counter()
            record = client.upload(source, purpose, "big.jsonl")
            seconds = time.perf_counter() - started
            system = _system_seconds(server.pid) - system
        _delete(client, record.id)
    finally:
        client.close()
    if record.bytes != source.stat().st_size:
        raise RuntimeError(f"uploaded {record.bytes} bytes of {source.stat().st_size}")
    if fine_tune and (record.state != File.STATE_PROCESSED or not record.validation.example_count):
        raise RuntimeError(f"the fine-tune upload was not validated: {record.validation}")
    return {
        "mb_per_s": record.bytes / MB / seconds,
        "seconds": seconds,
        "server_rss_growth_mib": rss.growth / 2**20,
        "server_system_ms_per_mb": system * 1000 / (record.bytes / MB),
    }


def _system_seconds(pid: int) -> float:
    """CPU time the kernel spent for process `pid` (its stime in /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def _bridge_upload(server: Any, url: str, bridge_pid: int, source: Path) -> dict[str, float]:
    import httpx

    from bridge.cli.client import Client

    with open(source, "rb") as f, PeakRss(server.pid) as rss, PeakRss(bridge_pid) as brss:
        started = time.perf_counter()
        reply = httpx.post(
            f"{url}/tunewire/v1/files",
            data={"purpose": "PURPOSE_USER_DATA"},
            files={"file": ("big.jsonl", f, "application/jsonl")},
            headers={"authorization": f"Bearer {server.key}"},
            timeout=900,
        )
        seconds = time.perf_counter() - started
    if reply.status_code != 200:
        raise RuntimeError(f"bridge upload: HTTP {reply.status_code}: {reply.text[:500]}")
    record = reply.json()
    client = Client(server.address, server.key)
    try:
        _delete(client, record["id"])
    finally:
        client.close()
    if int(record["bytes"]) != source.stat().st_size:
        raise RuntimeError(f"uploaded {record['bytes']} bytes of {source.stat().st_size}")
    return {
        "mb_per_s": int(record["bytes"]) / MB / seconds,
        "seconds": seconds,
        "server_rss_growth_mib": rss.growth / 2**20,
        "bridge_rss_growth_mib": brss.growth / 2**20,
    }


def _delete(client: Any, file_id: str) -> None:
    from tunewire.v1 import files_pb2

    client.files.DeleteFile(
        files_pb2.DeleteFileRequest(file_id=file_id), metadata=client.metadata, timeout=60
    )


def _copy(source: Path, target: Path) -> dict[str, float]:
    started = time.perf_counter()
    shutil.copyfile(source, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    size = target.stat().st_size
    target.unlink()
    return {"mb_per_s": size / MB / seconds, "seconds": seconds}


def _section(ctx: Context, size: int, samples: dict[str, list]) -> Section:
    grpc_rate = median_of(samples["grpc"], "mb_per_s")
    copy_rate = median_of(samples["copy"], "mb_per_s")
    growth = max(s["server_rss_growth_mib"] for s in samples["grpc"])
    tuned = samples["fine_tune"]
    tuned_rate = median_of(tuned, "mb_per_s")
    tuned_growth = max(s["server_rss_growth_mib"] for s in tuned)
    # Each round's fine-tune upload against the user-data one beside it: both ran in the
    # same state of the machine, which a ratio of the two medians does not ensure.
    paired = sorted(
        t["mb_per_s"] / g["mb_per_s"] for t, g in zip(tuned, samples["grpc"], strict=True)
    )
    tuned_ratio = statistics.median(paired)
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"File: {size / MB:,.0f} MB of synthetic chat JSONL (valid training data), read "
        "once beforehand so every variant reads it from the page cache; server home on the "
        "same disk as the copy.",
        "gRPC: bridge.cli.client.Client.upload (1 MiB chunks) to a real `tunewire up`; bridge: "
        "httpx multipart POST to a real `python -m bridge` in front of it; copy: "
        "shutil.copyfile + fsync. Purpose USER_DATA (no validation: see `validation`); "
        "fine-tune: the same gRPC upload as FINE_TUNE, validated while it streams (the "
        "report is in the reply).",
        f"After a warm-up round, user data and fine-tune interleaved {len(samples['grpc'])} "
        "times (A B B A ...: each after each as often), then copy and bridge "
        f"{len(samples['copy'])} times; each started (untimed) after a copy of the file "
        "written and deleted and os.sync(), so none pays for the writeback of the one "
        "before; medians; RSS growth is the largest over the repeats.",
    ]
    section.add(
        Figure(
            "gRPC upload throughput",
            grpc_rate,
            copy_rate,
            "MB/s",
            "shutil.copyfile + fsync, same disk",
            spread=f"grpc {spread_of(samples['grpc'], 'mb_per_s')}; "
            f"copy {spread_of(samples['copy'], 'mb_per_s')}",
        ),
        Figure(
            "server peak RSS growth during a gRPC upload",
            growth,
            size / 2**20,
            "MiB",
            "the file's size",
            higher_is_better=False,
            goal="bounded (< 64 MiB)",
            met=growth < 64,
        ),
    )
    section.add(
        Figure(
            "fine-tune gRPC upload throughput (validated while streaming)",
            tuned_rate,
            grpc_rate,
            "MB/s",
            "the same bytes as USER_DATA (not validated)",
            spread=f"fine-tune {spread_of(tuned, 'mb_per_s')}; "
            f"user data {spread_of(samples['grpc'], 'mb_per_s')}",
        ),
        Figure(
            "fine-tune / user-data upload throughput, round by round (median)",
            tuned_ratio,
            None,
            "x",
            goal=">= 0.8x",
            met=tuned_ratio >= 0.8,
            spread=f"{paired[0]:.2f}-{paired[-1]:.2f}",
            note="each round's two uploads side by side, in the same state of the machine",
        ),
        Figure(
            "server system CPU per MB received (fine-tune vs user data)",
            median_of(tuned, "server_system_ms_per_mb"),
            median_of(samples["grpc"], "server_system_ms_per_mb"),
            "ms/MB",
            "the same for USER_DATA",
            higher_is_better=None,
            spread=f"fine-tune {spread_of(tuned, 'server_system_ms_per_mb')}; "
            f"user data {spread_of(samples['grpc'], 'server_system_ms_per_mb')}",
            note="the kernel's share of receiving (page cache): on this VM it was 0.7-1 "
            "ms/MB on memory freed just before and 2-3 ms/MB on memory the host had taken "
            "back, which moved the upload rates more than validation does; compare "
            "ratios only where these agree",
        ),
        Figure(
            "server peak RSS growth during a fine-tune upload",
            tuned_growth,
            size / 2**20,
            "MiB",
            "the file's size",
            higher_is_better=False,
            goal="bounded (< 64 MiB)",
            met=tuned_growth < 64,
        ),
    )
    bridge = samples["bridge"]
    bridge_rate = median_of(bridge, "mb_per_s")
    bridge_growth = max(s["bridge_rss_growth_mib"] for s in bridge)
    section.add(
        Figure(
            "bridge multipart upload throughput",
            bridge_rate,
            copy_rate,
            "MB/s",
            "shutil.copyfile + fsync, same disk",
            spread=spread_of(bridge, "mb_per_s"),
        ),
        Figure(
            "bridge multipart upload throughput",
            bridge_rate,
            grpc_rate,
            "MB/s",
            "the same upload over gRPC",
        ),
        Figure(
            "bridge peak RSS growth during an upload",
            bridge_growth,
            size / 2**20,
            "MiB",
            "the file's size",
            higher_is_better=False,
            goal="bounded (< 64 MiB)",
            met=bridge_growth < 64,
        ),
    )
    section.summary = (
        f"gRPC upload {grpc_rate:.0f} MB/s vs {copy_rate:.0f} MB/s for a file copy "
        f"({grpc_rate / copy_rate:.2f}x), server RSS +{growth:.0f} MiB for a "
        f"{size / MB:,.0f} MB file; bridge multipart {bridge_rate:.0f} MB/s; fine-tune "
        f"upload {tuned_rate:.0f} MB/s, {tuned_ratio:.2f}x user data round by round (goal "
        f">= 0.8x)."
    )
    return section
