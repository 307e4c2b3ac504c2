"""Validation: `server.validation.validate_file` (one streaming pass: UTF-8, JSON, the
record rules of `trainer.formats`, token estimate, per-line problems) against the least a
validator could do, a bare `json.loads` loop over the file's lines, on the same file.

Both run in this process on the same large chat JSONL (the uploads benchmark's file),
read once beforehand so both read from the page cache; interleaved; medians.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench import workload
from bench.harness import MB, Context, Figure, Section, interleaved, log, median_of, spread_of

NAME = "validation"
TITLE = "Validation: validate_file vs a bare json.loads loop"


def _ours(path: Path) -> dict[str, float]:
    from server.validation import validate_file

    started = time.perf_counter()
    report = validate_file(path, filename="train.jsonl")
    seconds = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"the benchmark file has problems: {report.problems[:3]}")
    return {"mb_per_s": path.stat().st_size / MB / seconds, "lines": report.lines}


def _bare(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    lines = 0
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            lines += 1
    seconds = time.perf_counter() - started
    return {"mb_per_s": path.stat().st_size / MB / seconds, "lines": lines}


def run(ctx: Context) -> Section:
    path = workload.big_jsonl(ctx.scale(1_000_000_000, 50_000_000))
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    samples = interleaved(
        {"validate_file": lambda: _ours(path), "json.loads": lambda: _bare(path)},
        ctx.repeats,
        warmup=0,
        log=log(NAME),
    )
    ours = median_of(samples["validate_file"], "mb_per_s")
    bare = median_of(samples["json.loads"], "mb_per_s")
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"File: {path.stat().st_size / MB:,.0f} MB, "
        f"{int(samples['validate_file'][0]['lines']):,} chat examples (valid), from the page "
        "cache.",
        "Ours: validate_file(path, filename='train.jsonl'). Baseline: `for line in f: "
        "json.loads(line)` (no schema, no UTF-8 reporting, no counts).",
        f"Interleaved, {len(samples['json.loads'])} repeat(s); medians.",
    ]
    section.add(
        Figure(
            "validation throughput",
            ours,
            bare,
            "MB/s",
            "bare json.loads loop",
            spread=f"ours {spread_of(samples['validate_file'], 'mb_per_s')}; baseline "
            f"{spread_of(samples['json.loads'], 'mb_per_s')}",
        ),
    )
    section.summary = (
        f"validate_file checks {ours:.0f} MB/s, {ours / bare:.2f}x a bare json.loads loop "
        f"({bare:.0f} MB/s) that checks nothing but JSON syntax."
    )
    return section
