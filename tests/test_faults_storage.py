"""Storage under faults: SQLite writers killed mid-write, writers racing for the lock, the
API under concurrent load, and a disk that fills up during an upload.

Real processes and real signals: a writer subprocess commits through
`server.store.db.write` (BEGIN IMMEDIATE) and prints each transaction it has committed;
the test SIGKILLs it at seeded random moments and then checks the database.
`@pytest.mark.slow` variants run the same scenarios many more times (RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import REPO, Server, chat_lines, fails, sha256, upload_requests

from tunewire.v1 import files_pb2, jobs_pb2

File = files_pb2.File

# One writer: `python -c WRITER db parent first_txn txns`. Each transaction inserts a
# random number of event rows (1-20) with random payloads (up to 256 bytes), so kills land
# inside transactions, WAL appends and checkpoints; each row's key names its transaction
# and that transaction's row count. After COMMIT it prints "txn rows".
WRITER = r"""
import random, sys
from pathlib import Path
from server.store.db import connect, write

db = connect(Path(sys.argv[1]))
# Checkpoint the WAL into the database every few transactions (not every 1000 pages),
# so that many kills land inside a checkpoint too.
db.conn.execute("PRAGMA wal_autocheckpoint = 16")
parent, first, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(f"{parent}:{first}")
for txn in range(first, first + count):
    rows = rng.randint(1, 20)
    with write(db):
        for row in range(rows):
            payload = rng.randbytes(rng.randint(0, 256))
            db.execute(
                "INSERT INTO events (parent, sequence, dedupe_key, proto) VALUES (?, ?, ?, ?)",
                [parent, txn * 100 + row, f"{txn}:{rows}:{row}", payload],
            )
    sys.stdout.write(f"{txn} {rows}\n")
    sys.stdout.flush()
"""


def writer(db: Path, parent: str, first: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), parent, str(first), str(count)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def committed(db: Path, parent: str) -> dict[int, int]:
    """txn -> rows present, read back from the database; a transaction present only in
    part (fewer rows than it wrote) fails the test at once."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        migrated = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone()
        query = "SELECT dedupe_key FROM events WHERE parent = ?"
        keys = [k for (k,) in conn.execute(query, [parent])] if migrated else []
    present: dict[int, int] = {}
    planned: dict[int, int] = {}
    for key in keys:
        txn, rows, _ = map(int, key.split(":"))
        present[txn] = present.get(txn, 0) + 1
        planned[txn] = rows
    torn = {txn: (present[txn], planned[txn]) for txn in present if present[txn] != planned[txn]}
    assert not torn, f"transactions present in part (rows, planned): {torn}"
    return present


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def kill_writers_at_random(db: Path, rounds: int, seed: int) -> tuple[int, int]:
    """Run a writer `rounds` times, SIGKILLing each at a seeded random moment; after every
    kill the database must pass integrity_check, every acknowledged transaction must be
    there whole, and no transaction may be there in part. Returns (kills, acked txns)."""
    rng = random.Random(seed)
    acked: dict[int, int] = {}
    next_txn, kills = 1, 0
    for round_ in range(rounds):
        proc = writer(db, "killed", next_txn, 100_000)
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True)
        reader.start()
        if round_ % 2:
            # Mid-stream: once it has acknowledged a write, however slowly a loaded machine
            # got it there.
            deadline = time.monotonic() + 60
            while not lines and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.2))
        else:
            # From its start: while it imports and migrates, or early in the stream.
            time.sleep(rng.uniform(0, 0.8))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=30)
        reader.join(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        # A line cut short by the kill was never acknowledged.
        for line in lines:
            if line.endswith("\n"):
                txn, rows = map(int, line.split())
                acked[txn] = rows
        assert integrity(db) == "ok"
        present = committed(db, "killed")
        lost = {t: r for t, r in acked.items() if present.get(t) != r}
        assert not lost, f"acknowledged transactions lost or partial: {lost}"
        next_txn = max([*present, next_txn - 1]) + 1
    return kills, len(acked)


def test_a_writer_killed_at_random_points_loses_no_acknowledged_write(tmp_path: Path) -> None:
    kills, acked = kill_writers_at_random(tmp_path / "tunewire.db", rounds=12, seed=1)
    assert kills >= 8 and acked > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_writer_killed_at_random_points_many_times(tmp_path: Path) -> None:
    kills, acked = kill_writers_at_random(tmp_path / "tunewire.db", rounds=300, seed=2)
    print(f"\nFIGURE sqlite-kill: {kills} kills, {acked} acknowledged transactions, 0 lost")
    assert kills >= 250


def race_writers(db: Path, writers: int, txns: int) -> float:
    """`writers` processes commit `txns` transactions each at full speed; returns seconds."""
    started = time.monotonic()
    procs = [writer(db, f"racer-{i}", 1, txns) for i in range(writers)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    elapsed = time.monotonic() - started
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert "locked" not in err and "busy" not in err.lower(), err
        assert proc.returncode == 0, err
        assert len(out.splitlines()) == txns
    for i in range(writers):
        assert sorted(committed(db, f"racer-{i}")) == list(range(1, txns + 1))
    assert integrity(db) == "ok"
    return elapsed


def test_writers_racing_at_full_speed_never_see_database_is_locked(tmp_path: Path) -> None:
    race_writers(tmp_path / "tunewire.db", writers=4, txns=80)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_writers_racing_at_full_speed(tmp_path: Path) -> None:
    elapsed = race_writers(tmp_path / "tunewire.db", writers=8, txns=1000)
    print(f"\nFIGURE sqlite-race: 8 writers x 1000 transactions in {elapsed:.1f} s, 0 locked")


# --- the API under concurrent writes ----------------------------------------------------------


def hammer_the_api(srv: Server, clients: int, rounds: int) -> tuple[int, list[str]]:
    """`clients` threads each upload a file and create a job `rounds` times, while a writer
    process commits to the same database; returns (calls, failures)."""
    org = srv.default
    failures: list[str] = []

    def client(n: int) -> int:
        calls = 0
        for i in range(rounds):
            try:
                record = org.upload(chat_lines(10, f"load-{n}-{i}"), f"load-{n}-{i}.jsonl")
                calls += 1
                assert record.state == File.STATE_PROCESSED
                org.create_job(record.id, request_id=f"load-{n}-{i}")
                calls += 1
            except grpc.RpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
        return calls

    other = writer(srv.home / "tunewire.db", "outside-writer", 1, 100_000)
    try:
        with ThreadPoolExecutor(clients) as pool:
            calls = sum(pool.map(client, range(clients)))
    finally:
        other.kill()
        _, err = other.communicate(timeout=30)
    assert "locked" not in err, err
    return calls, failures


def test_concurrent_creates_and_uploads_never_fail(start_server: Callable[..., Server]) -> None:
    srv = start_server()
    calls, failures = hammer_the_api(srv, clients=6, rounds=3)
    assert failures == []
    assert calls == 6 * 3 * 2
    jobs = srv.default.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1000)).jobs
    assert len(jobs) == 6 * 3
    assert integrity(srv.home / "tunewire.db") == "ok"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_concurrent_creates_and_uploads(start_server: Callable[..., Server]) -> None:
    srv = start_server()
    started = time.monotonic()
    calls, failures = hammer_the_api(srv, clients=16, rounds=25)
    elapsed = time.monotonic() - started
    print(f"\nFIGURE api-race: {calls} calls from 16 clients in {elapsed:.1f} s, 0 failed")
    assert failures == []
    assert calls == 16 * 25 * 2


# --- disk full during an upload ---------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`; skips when this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mounted.stderr}")
    try:
        yield path
    finally:
        # Lazy: a server that still has the dir open must not keep it mounted.
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def blobs_on_a_small_disk(tmp_path: Path) -> Iterator[Path]:
    """A home whose blob dir is a 4 MiB filesystem. Requested before `start_server`, so it
    is unmounted after the server has stopped."""
    home = tmp_path / "small-home"
    with small_filesystem(home / "blobs", "4m"):
        yield home


def entries(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_disk_full_during_an_upload_is_resource_exhausted_and_leaves_nothing(
    blobs_on_a_small_disk: Path, start_server: Callable[..., Server]
) -> None:
    home = blobs_on_a_small_disk
    srv = start_server(home=home)
    org = srv.default
    blobs = home / "blobs"
    before = entries(blobs)

    # Bigger than the whole disk: the write fails part way.
    big = chat_lines(60_000, "big")
    assert len(big) > 4 * 1024 * 1024
    failure = fails(
        grpc.StatusCode.RESOURCE_EXHAUSTED, org.files.UploadFile, upload_requests(big, "big.jsonl")
    )
    assert "space" in failure.message
    assert entries(blobs) == before, "the partial upload was left behind"
    assert org.files.ListFiles(files_pb2.ListFilesRequest()).files == []

    # Fill the disk from outside; a small upload now fails too, and works once space returns.
    filler = blobs / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    data = chat_lines(2000, "after")
    fails(
        grpc.StatusCode.RESOURCE_EXHAUSTED, org.files.UploadFile, upload_requests(data, "a.jsonl")
    )
    assert entries(blobs) == {*before, "filler"}
    filler.unlink()

    record = org.upload(data, "after.jsonl")
    assert record.state == File.STATE_PROCESSED and record.sha256 == sha256(data)
    download = org.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=record.id))
    assert b"".join(r.chunk.data for r in download) == data
    assert os.listdir(blobs / "tmp") == []
