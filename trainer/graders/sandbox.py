"""The python grader's sandbox: every python grader runs in a fresh subprocess, never in
the process that asked (see `sandbox_runner` for what that process does to itself).

What it guarantees, and how:
- time: RLIMIT_CPU (the kernel kills it past `cpu_seconds` of CPU) and a wall-clock
  timeout here (its whole process group is killed past `timeout_seconds`);
- memory: RLIMIT_AS caps its address space (`memory_bytes`); past it the grader gets a
  MemoryError, reported as a memory-limit error;
- output: its result and log go to files capped by RLIMIT_FSIZE, and only a bounded
  prefix of each is read back;
- network: a new network namespace with no interface up (unprivileged user namespaces,
  as on most Linux hosts; where the kernel refuses them, sockets are still refused by the
  audit hook, and the result says which applied), plus the audit hook refusing every
  socket call;
- files: it starts in an empty scratch directory that is deleted afterwards; the audit
  hook refuses writes, creation, renames and deletions outside it, and reads outside it
  and Python's installation (so not the service's data dir), and refuses starting
  processes and ctypes, which could step around the hook.

What it does not guarantee: an audit hook is not a security boundary in CPython (code
that finds a way into C past the blocked modules could skip it). The kernel-enforced
parts are the rlimits and the network namespace; run the service as a user with access
to nothing else, or in a container, where graders come from untrusted users.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("sandbox_runner.py")
MAX_SOURCE = 256 * 1024
MAX_RESULT_READ = 64 * 1024


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 512 * 1024 * 1024
    file_bytes: int = 1024 * 1024

    @classmethod
    def from_env(cls) -> Limits:
        """The admin's limits: TUNEWIRE_GRADER_PYTHON_TIMEOUT (seconds, wall and CPU) and
        TUNEWIRE_GRADER_PYTHON_MEMORY_MB; the defaults otherwise."""
        timeout = float(os.environ.get("TUNEWIRE_GRADER_PYTHON_TIMEOUT", cls.timeout_seconds))
        memory = int(os.environ.get("TUNEWIRE_GRADER_PYTHON_MEMORY_MB", 512))
        return cls(
            timeout_seconds=timeout,
            cpu_seconds=max(1, math.ceil(timeout)),
            memory_bytes=memory * 1024 * 1024,
        )


@dataclass(frozen=True)
class Outcome:
    score: float | None
    error_kind: str | None = None
    """None, "runtime" (the grader raised), "timeout", "memory_limit", "output_limit",
    "crashed" (killed by a signal) or "sandbox" (the sandbox itself failed)."""
    message: str = ""
    log: str = ""
    network: str = ""
    """How network access was cut: "network namespace", or why only the hook applied."""
    seconds: float = 0.0


def check_source(source: object) -> str | None:
    """Why a python grader's source is refused at create (not a string, too long, a syntax
    error with its line), or None. Compiling does not run anything."""
    if not isinstance(source, str) or not source.strip():
        return "must be the grader's Python source, defining grade(sample, item)"
    if len(source) > MAX_SOURCE:
        return f"at most {MAX_SOURCE} characters"
    try:
        compile(source, "<grader>", "exec")
    except SyntaxError as error:
        return f"syntax error at line {error.lineno}: {error.msg}"
    except ValueError as error:
        return str(error)
    return None


def run(source: str, sample: dict[str, Any], item: Any, limits: Limits = Limits()) -> Outcome:
    """Run `grade(sample, item)` from `source` in the sandbox; every failure is an
    Outcome with `error_kind`, never an exception."""
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="tunewire-grader-"))
    try:
        request = json.dumps(
            {"source": source, "sample": sample, "item": item, "limits": asdict(limits)}
        )
        stdin = scratch / ".request"
        stdin.write_text(request, encoding="utf-8")
        result = scratch / ".result"
        with stdin.open("rb") as given, result.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", str(RUNNER)],
                stdin=given,
                stdout=out,
                stderr=subprocess.DEVNULL,
                cwd=scratch,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(scratch)},
                start_new_session=True,
                close_fds=True,
            )
            stdin.unlink()  # the runner has it open; the grader cannot read it back by name
            try:
                code = process.wait(timeout=limits.timeout_seconds)
            except subprocess.TimeoutExpired:
                _kill(process)
                return _failed(
                    "timeout", f"ran past its {limits.timeout_seconds:g} s limit", started
                )
        with result.open("rb") as handle:
            raw = handle.read(MAX_RESULT_READ)
        return _outcome(code, raw, limits, started)
    except OSError as error:
        return _failed("sandbox", f"the sandbox could not start: {error}", started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _failed(kind: str, message: str, started: float, **more: Any) -> Outcome:
    return Outcome(None, kind, message, seconds=time.perf_counter() - started, **more)


def _outcome(code: int, raw: bytes, limits: Limits, started: float) -> Outcome:
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        return _failed("timeout", f"ran past its {limits.cpu_seconds} s CPU limit", started)
    if code == -signal.SIGXFSZ:
        return _failed("output_limit", f"wrote more than {limits.file_bytes} bytes", started)
    try:
        reply = json.loads(raw.decode("utf-8"))
    except ValueError:
        if code < 0:
            return _failed("crashed", f"killed by signal {-code}", started)
        if code != 0:  # the interpreter itself could not start under the limits
            return _failed(
                "crashed",
                f"the grader process exited with status {code} before it reported",
                started,
            )
        return _failed("output_limit", "its result was cut off by the output limit", started)
    seconds = time.perf_counter() - started
    error = reply.get("error")
    if error:
        return Outcome(
            None,
            error.get("kind", "runtime"),
            error.get("message", ""),
            log=(reply.get("log", "") + error.get("traceback", ""))[-4096:],
            network=reply.get("network", ""),
            seconds=seconds,
        )
    return Outcome(
        float(reply["score"]),
        log=reply.get("log", ""),
        network=reply.get("network", ""),
        seconds=seconds,
    )
