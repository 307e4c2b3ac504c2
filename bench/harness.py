"""The small harness every benchmark shares: machine details, fixed threads, interleaved
repeats with a warm-up, medians and percentiles, and the `Section` a benchmark returns.

A benchmark module defines `NAME`, `TITLE` and `run(ctx) -> Section`. It runs Tunewire and
its baseline side by side in the same process tree, on the same inputs, interleaved
(ours, baseline, ours, baseline, ...), after a warm-up, and reports medians. It never
asserts a number: a figure that misses its goal is reported as missed, not raised.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORK = BENCH / ".work"
"""Cached inputs (models, data sets) and scratch space; ignored by git."""
RESULTS_DIR = BENCH / "results"
GPU_RESULTS_DIR = BENCH / "results-gpu"
"""The same for `--gpu` runs, rendered to RESULTS-gpu.md."""
"""One JSON per benchmark from the last full run; RESULTS.md is rendered from them."""
QUICK_DIR = BENCH / ".quick"
"""Where `--quick` writes, so CI runs never touch the committed results."""


@dataclass(frozen=True)
class Context:
    """How a benchmark should run."""

    quick: bool
    threads: int
    """torch.set_num_threads for every torch process, ours and the baseline's alike."""
    repeats: int
    """Interleaved repeats after the warm-up (medians over them)."""
    work: Path
    """Scratch dir for this benchmark (created; kept between runs for cached inputs)."""
    gpu: bool = False
    """`make bench-gpu`: GPU-sized inputs on a CUDA device (the benchmarks that have them)."""

    def scale(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


@dataclass
class Figure:
    """One measured quantity: ours beside the baseline's."""

    metric: str
    ours: float | None
    baseline: float | None = None
    unit: str = ""
    baseline_name: str = ""
    higher_is_better: bool | None = True
    """None: neither direction is better (a count, a size), so no ratio is drawn."""
    goal: str = ""
    """Human-readable target, e.g. ">= 2x" or "< 1.05"."""
    met: bool | None = None
    """Whether `goal` is reached; None when there is no goal or no figure."""
    spread: str = ""
    """Range over the repeats, e.g. "1210-1290"."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline or self.higher_is_better is None:
            return None
        return self.ours / self.baseline


@dataclass
class Section:
    """What one benchmark reports."""

    name: str
    title: str
    status: str = "ok"
    """ok or error (the benchmark raised, died or ran past its time)."""
    summary: str = ""
    """One or two sentences: the headline and whether the goal is met."""
    method: list[str] = field(default_factory=list)
    """How it was measured: workload, baseline, repeats, what is timed."""
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    quick: bool = False
    threads: int = 1
    repeats: int = 0
    seconds: float = 0.0
    finished: str = ""

    def add(self, *figures: Figure) -> None:
        self.figures.extend(figures)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Section:
        figures = [Figure(**figure) for figure in data.pop("figures", [])]
        return cls(**data, figures=figures)


# --- machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, load and library versions: what a reader needs to judge
    a figure, and to know whether a rerun is comparable."""
    details: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(_meminfo("MemTotal") / 2**20, 1) if _meminfo("MemTotal") else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for name in ("torch", "transformers", "peft", "onnxruntime", "grpcio", "fastapi"):
        details[name] = _version(name)
    import sqlite3

    details["sqlite"] = sqlite3.sqlite_version
    details["gpu"] = _gpu()
    return details


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    """The GPU's name when torch sees one, without importing torch when nvidia-smi says none."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() or None if found.returncode == 0 else None


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads (and the BLAS pools) for this process."""
    import torch

    torch.set_num_threads(threads)


def thread_env(threads: int) -> dict[str, str]:
    """Environment for child processes so their BLAS/OpenMP pools match `threads` too."""
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
    }


def child_env(threads: int, **extra: str) -> dict[str, str]:
    """os.environ without TUNEWIRE_* settings, with the repo importable and threads fixed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWIRE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(thread_env(threads))
    env.update(extra)
    return env


# --- repeats and statistics ------------------------------------------------------------------


Sample = dict[str, float]


def interleaved(
    variants: dict[str, Callable[[], Sample]],
    repeats: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[Sample]]:
    """Run every variant `warmup` times (discarded), then `repeats` rounds of all of them,
    rotating which goes first each round so neither side always runs on a cooler machine.
    Returns each variant's samples from the measured rounds."""
    names = list(variants)
    for round_ in range(warmup):
        for name in names:
            _say(log, f"warm-up {round_ + 1}/{warmup}: {name}")
            variants[name]()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            sample = variants[name]()
            _say(
                log,
                f"repeat {round_ + 1}/{repeats}: {name} ({time.perf_counter() - started:.1f} s) "
                + ", ".join(f"{k}={_short(v)}" for k, v in sample.items()),
            )
            samples[name].append(sample)
    return samples


def _say(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def median_of(samples: list[Sample], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def spread_of(samples: list[Sample], key: str, digits: int = 3) -> str:
    values = [s[key] for s in samples if s.get(key) is not None]
    if len(values) < 2:
        return ""
    return f"{_sig(min(values), digits)}-{_sig(max(values), digits)}"


def _sig(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- processes -------------------------------------------------------------------------------


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default)."""
    import psutil

    return psutil.Process(pid).memory_info().rss


class PeakRss:
    """Samples a process's RSS in a thread; `peak` is the highest value seen."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.pid = pid
        self.every = every
        self.start = rss_bytes(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        process = psutil.Process(self.pid)
        while not self._stop.wait(self.every):
            try:
                self.peak = max(self.peak, process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start


def run_json(
    argv: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO
) -> dict[str, Any]:
    """Run a child that prints one JSON object as its last stdout line; return it."""
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} ... exited with {done.returncode}:\n{done.stderr[-4000:]}"
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON result from {' '.join(argv[:4])}:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """`with timer() as elapsed: ...; elapsed()` in seconds."""
    started = time.perf_counter()
    ended: list[float] = []
    try:
        yield lambda: (ended[0] if ended else time.perf_counter()) - started
    finally:
        ended.append(time.perf_counter())


def log(name: str) -> Callable[[str], None]:
    """A progress printer for a benchmark: stderr, flushed, prefixed by the name."""

    def say(message: str) -> None:
        print(
            f"[{name} {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True
        )

    return say


_STARTED = time.monotonic()
MB = 1_000_000
MIB = 1 << 20
