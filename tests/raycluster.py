"""A real Ray cluster on 127.0.0.1 for the tests: a head and any further nodes, each a
`ray start --block` in a process group of its own, so that ending it kills exactly this
cluster (`ray stop` stops every cluster on the machine, another test run's too)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import BIN, clean_env

RAY = str(BIN / "ray")
START_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_cluster(cpus: list[int]) -> Iterator[str]:
    """A cluster of `len(cpus)` nodes, the head first, with these CPUs each; its address."""
    # Ray's Unix sockets live under its temp dir: a short path, not pytest's deep one.
    temp = Path(tempfile.mkdtemp(prefix="twray-", dir="/tmp"))
    env = clean_env(temp / "no-home", None, RAY_TMPDIR=str(temp), OMP_NUM_THREADS="1")
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        for index, count in enumerate(cpus):
            where = (
                ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
                if index == 0
                else [f"--address={address}"]
            )
            with open(temp / f"node-{index}.log", "ab") as log:
                nodes.append(
                    subprocess.Popen(
                        [RAY, "start", "--block", *where, "--node-ip-address=127.0.0.1"]
                        + [f"--num-cpus={count}", "--disable-usage-stats"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
            _wait_for_nodes(address, index + 1, env, temp)
        yield address
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                node.send_signal(signal.SIGKILL)  # SIGTERM drains for 30 s
                subprocess.run(["pkill", "-KILL", "-g", str(node.pid)], check=False)
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, env: dict[str, str], temp: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        status = subprocess.run(
            [RAY, "status", f"--address={address}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if status.returncode == 0 and active.count(" node_") >= count:
            return
        time.sleep(1.0)
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in temp.glob("node-*.log"))
    raise TimeoutError(f"the Ray cluster did not reach {count} node(s): {logs}")
