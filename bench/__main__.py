"""`python -m bench [--quick] [--threads N] [--repeats N] [NAME ...]`: run benchmarks and
(re)write their RESULTS.md.

Each benchmark runs in a process of its own (a crash or a leak in one never skews the
next) and leaves `NAME.json`; RESULTS.md is rendered from every JSON there, so running one
benchmark refreshes its section and keeps the others. Full runs write `bench/results/` and
`bench/RESULTS.md`; `--quick` writes `bench/.quick/` (seconds per benchmark, for CI: the
figures only prove the code still runs). The exit status is 1 when a benchmark fails to
run, never because of a figure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import shlex
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import report
from bench.harness import (
    BENCH,
    GPU_RESULTS_DIR,
    QUICK_DIR,
    REPO,
    RESULTS_DIR,
    WORK,
    Context,
    Section,
    child_env,
    machine,
)

BENCHMARKS = [
    "training",
    "dpo",
    "data_parallel",
    "service",
    "queue",
    "latency",
    "fanout",
    "store",
    "listing",
    "uploads",
    "validation",
    "bridge",
    "onnx",
    "classification",
    "generation",
]
SLOWEST_FIRST = [
    "onnx",
    "generation",
    "classification",
    "training",
    "dpo",
    "data_parallel",
    "service",
    "queue",
    "latency",
    "bridge",
    "fanout",
    "uploads",
    "listing",
    "store",
    "validation",
]
GPU_BENCHMARKS = ["training", "generation"]
"""What `make bench-gpu` runs: those with GPU-sized variants."""
DEFAULT_THREADS = 1
"""torch threads everywhere: the recipe's own choice for models under 100M parameters, and
the figure least disturbed when other work shares the cores."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--quick", action="store_true", help="seconds per benchmark (CI)")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch threads for every torch process (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved repeats after the warm-up (default %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="benchmarks run at once (default: 3 with --quick, whose figures "
        "mean nothing anyway; else 1, as timings need the machine alone)",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="GPU-sized runs on CUDA (`make bench-gpu`), written to RESULTS-gpu.md; the "
        f"benchmarks that have them: {', '.join(GPU_BENCHMARKS)}",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child entry point
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.list:
        for name in BENCHMARKS:
            print(f"{name:12} {importlib.import_module(f'bench.{name}').TITLE}")
        return 0
    if options.one:
        return _run_one(options)

    unknown = [n for n in options.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; see --list")
    names = options.names or BENCHMARKS
    if options.gpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("--gpu needs a CUDA GPU, and torch sees none (a CPU build of torch?)")
        if options.quick or not set(names) <= set(GPU_BENCHMARKS):
            parser.error(f"--gpu runs in full, and only {', '.join(GPU_BENCHMARKS)}")
    out = QUICK_DIR if options.quick else GPU_RESULTS_DIR if options.gpu else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    jobs = options.jobs or (3 if options.quick else 1)
    if jobs > 1 and not options.quick:
        print(
            f"warning: --jobs {jobs} runs benchmarks side by side; their timings disturb "
            "each other",
            file=sys.stderr,
        )
    if jobs > 1:  # longest first, so the parallel runs finish together
        names = sorted(names, key=SLOWEST_FIRST.index)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda name: _spawn(name, options, out), names))
    results_md = (
        out / "RESULTS.md"
        if options.quick
        else BENCH / ("RESULTS-gpu.md" if options.gpu else "RESULTS.md")
    )
    sections = report.load_sections(out, BENCHMARKS)
    results_md.write_text(report.render(sections, _command(options, [])))
    print(f"wrote {results_md.relative_to(REPO)} ({time.monotonic() - started:.0f} s)", flush=True)
    # A figure never fails the run; a benchmark that no longer runs does (that is
    # what `make bench-quick` in CI is for).
    broken = [s.name for s in sections if s.name in names and s.status == "error"]
    if broken:
        print(f"error: benchmark(s) failed to run: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


def _flags(options: argparse.Namespace) -> list[str]:
    flags = ["--quick"] if options.quick else []
    if options.gpu:
        flags.append("--gpu")
    if options.threads != DEFAULT_THREADS:
        flags += ["--threads", str(options.threads)]
    if options.repeats != 3:
        flags += ["--repeats", str(options.repeats)]
    return flags


def _command(options: argparse.Namespace, names: list[str]) -> str:
    return shlex.join([".venv/bin/python", "-m", "bench", *_flags(options), *names])


def _spawn(name: str, options: argparse.Namespace, out: Path) -> None:
    """Run one benchmark in a child; if it dies, record an error section instead."""
    started = time.monotonic()
    print(f"== {name}", flush=True)
    argv = [sys.executable, "-m", "bench", "--one", name, "--out", str(out), *_flags(options)]
    timeout = 180 if options.quick else 1200
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=child_env(options.threads), timeout=timeout, check=False
        )
        failed = f"exited with {done.returncode}" if done.returncode else ""
    except subprocess.TimeoutExpired:
        failed = f"ran past {timeout} s and was stopped"
    if failed:
        module = importlib.import_module(f"bench.{name}")
        section = Section(
            name=name,
            title=module.TITLE,
            status="error",
            summary=f"The benchmark {failed}; its output above says why.",
        )
        _finish(section, options, started)
        (out / f"{name}.json").write_text(json.dumps(section.to_json(), indent=1))
    print(f"== {name}: {time.monotonic() - started:.0f} s", flush=True)


def _run_one(options: argparse.Namespace) -> int:
    import warnings

    # Library deprecation chatter (transformers, peft, torch.onnx) is not a result.
    warnings.filterwarnings("ignore")
    name = options.one
    module = importlib.import_module(f"bench.{name}")
    work = WORK / ("quick" if options.quick else "gpu" if options.gpu else "full") / name
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        quick=options.quick,
        threads=options.threads,
        repeats=1 if options.quick else options.repeats,
        work=work,
        gpu=options.gpu,
    )
    started = time.monotonic()
    details = machine()
    try:
        section = module.run(ctx)
    except Exception as error:  # noqa: BLE001 - recorded in RESULTS.md, not raised
        traceback.print_exc()
        section = Section(
            name=name,
            title=module.TITLE,
            status="error",
            summary=f"{type(error).__name__}: {error}"[:500],
        )
    section.machine = details
    _finish(section, options, started, repeats=ctx.repeats)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"{name}.json").write_text(json.dumps(section.to_json(), indent=1))
    return 0


def _finish(
    section: Section, options: argparse.Namespace, started: float, repeats: int | None = None
) -> None:
    section.command = _command(options, [section.name])
    section.quick = options.quick
    section.threads = options.threads
    # A section that sets its own (rounds of seeds) keeps them.
    section.repeats = section.repeats or (repeats if repeats is not None else options.repeats)
    section.seconds = time.monotonic() - started
    section.finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not section.machine:
        section.machine = machine()


if __name__ == "__main__":
    sys.exit(main())
