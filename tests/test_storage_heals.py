"""Storage that heals: damaged checkpoints, abandoned uploads, broken model dirs, a full
disk and a world-readable data dir, each against a real `tunewire up`.

A damaged newest checkpoint must not cost a job its older intact ones; an upload cut short
(cancelled, or the server killed) must leave nothing behind; one broken entry of the models
dir must not break model listing or job creation for everyone; a full disk is
RESOURCE_EXHAUSTED, not INTERNAL; and no other local user can read the data dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import SAMPLE_CHAT, Server, chat_lines, fails, launch, upload_requests
from test_faults_storage import small_filesystem
from test_faults_training import STARTED, Follower, create, db_rows, fill, get, wait_gone

from server.store.blobs import BlobStore, BlobWriter
from tunewire.v1 import files_pb2, jobs_pb2, models_pb2

Job = jobs_pb2.Job
File = files_pb2.File


# --- 10: a damaged checkpoint ----------------------------------------------------------------


def stored_checkpoints(home: Path, job_id: str) -> list[tuple[int, Path]]:
    """(step, directory) of the job's registered checkpoints still in the blob store,
    newest first."""
    rows = db_rows(home, "SELECT step, path FROM checkpoints WHERE job_id = ?", [job_id])
    found = [(step, home / "blobs" / key) for step, key in rows]
    return sorted(((s, p) for s, p in found if p.is_dir()), reverse=True)


def truncate(checkpoint: Path) -> str:
    weights = checkpoint / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return "adapter_model.safetensors has 100 bytes"


def flip_a_byte(checkpoint: Path) -> str:
    """One byte changed, the size kept: only a checksum sees it."""
    state = checkpoint / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    return "state.pt has"


def remove(checkpoint: Path) -> str:
    shutil.rmtree(checkpoint)
    return "files are gone"


@pytest.mark.parametrize(
    "damages", [(truncate, flip_a_byte), (remove,)], ids=["truncated+flipped", "removed"]
)
def test_damaged_newest_checkpoints_fall_back_to_the_newest_intact_one(
    start_server: Callable[..., Server], damages: tuple[Callable[[Path], str], ...]
) -> None:
    srv = start_server(TUNEWIRE_MAX_RUNNING_JOBS="1", TUNEWIRE_HEARTBEAT_SECONDS="0.3")
    org = srv.default
    record = org.upload_sample()
    job = create(org, record.id, seed=5, n_epochs=2, checkpoint_every_steps=2)
    follower = Follower(org, job.id)
    follower.wait_for(lambda e: e.message.startswith("Checkpoint created at step 6"))
    org.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id))
    deadline = time.monotonic() + 60
    while get(org, job.id).state != Job.STATE_PAUSED:
        assert time.monotonic() < deadline, follower.messages
        time.sleep(0.1)

    stored = stored_checkpoints(srv.home, job.id)
    assert len(stored) > len(damages), stored
    reasons = [damage(path) for damage, (_, path) in zip(damages, stored, strict=False)]
    org.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id))
    follower.join()

    done = get(org, job.id)
    assert done.state == Job.STATE_SUCCEEDED, follower.messages
    damaged = [e for e in follower.events if "cannot be resumed from" in e.message]
    assert [int(e.data["step"]) for e in damaged] == [step for step, _ in stored[: len(damages)]]
    for event, reason in zip(damaged, reasons, strict=True):
        assert reason in event.message, event.message
    plans = [e for e in follower.events if e.message.startswith("Training plan")]
    assert int(plans[-1].data["start_step"]) == stored[len(damages)][0], follower.messages
    assert done.progress.attempt == 1, "falling back to an older checkpoint spent an attempt"


# --- 11: abandoned uploads --------------------------------------------------------------------


def blob_entries(home: Path) -> set[str]:
    return {
        str(p.relative_to(home / "blobs"))
        for d in ("files", "tmp")
        for p in (home / "blobs" / d).glob("*")
    }


def test_an_upload_cancelled_mid_stream_leaves_nothing(
    start_server: Callable[..., Server],
) -> None:
    # Validation runs as the bytes arrive, so a cancel mid-stream is a cancel mid-validation.
    srv = start_server()
    org = srv.default
    parts = list(upload_requests(chat_lines(40_000, "cancelled"), "big.jsonl", chunk=256 * 1024))
    sent, release = threading.Event(), threading.Event()

    def requests() -> Iterator[files_pb2.UploadFileRequest]:
        yield from parts[: len(parts) // 2]
        sent.set()
        release.wait(30)  # the rest never comes before the cancel

    call = org.client.files.UploadFile.future(requests(), metadata=org.client.metadata, timeout=120)
    assert sent.wait(60)
    deadline = time.monotonic() + 30
    while not list((srv.home / "blobs" / "tmp").glob("*.part")):
        assert time.monotonic() < deadline, "the upload never reached the server"
        time.sleep(0.05)
    assert call.cancel(), "the upload had finished before it could be cancelled"
    release.set()
    deadline = time.monotonic() + 30
    while blob_entries(srv.home):
        assert time.monotonic() < deadline, blob_entries(srv.home)
        time.sleep(0.1)
    assert org.files.ListFiles(files_pb2.ListFilesRequest()).files == []


def test_a_blob_discarded_while_its_fsync_runs_leaves_nothing(tmp_path: Path) -> None:
    # An upload's blob is synced in a thread while its validation finishes, and a failed
    # upload is discarded on the event loop meanwhile.
    store = BlobStore(tmp_path)
    data = os.urandom(8 << 20)
    kept, dropped = store.writer("files/kept"), store.writer("files/dropped")
    for writer in (kept, dropped):
        writer.write(data)
    failures: dict[str, BaseException] = {}

    def sync(name: str, writer: BlobWriter) -> None:
        try:
            writer.sync()
        except (OSError, ValueError) as error:  # the dropped file may close under it
            failures[name] = error

    threads = [
        threading.Thread(target=sync, args=item) for item in [("kept", kept), ("dropped", dropped)]
    ]
    for thread in threads:
        thread.start()
    dropped.discard()
    for thread in threads:
        thread.join(60)
    assert "kept" not in failures
    kept.commit()
    assert (tmp_path / "files" / "kept").read_bytes() == data
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["kept"]


def test_what_a_killed_server_left_of_uploads_is_swept_at_start(
    tmp_path: Path, models_dir: Path
) -> None:
    home = tmp_path / "home"
    srv = launch(home, models_dir, tmp_path / "logs0")
    kept = srv.default.upload(SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
    # A kill -9 mid-upload leaves a .part; one mid-validation, a stored file with no record.
    release = threading.Event()

    def stalled() -> Iterator[files_pb2.UploadFileRequest]:
        yield from upload_requests(chat_lines(100, "stalled"), "stalled.jsonl")
        release.wait(30)

    call = srv.default.client.files.UploadFile.future(
        stalled(), metadata=srv.default.client.metadata, timeout=60
    )
    deadline = time.monotonic() + 30
    while not list((home / "blobs" / "tmp").glob("*.part")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    srv.kill()
    release.set()
    with pytest.raises(grpc.RpcError):
        call.result()
    orphan = home / "blobs" / "files" / "file-0123456789abcdef01234567"
    orphan.write_bytes(b'{"messages": []}\n')
    os.utime(orphan, (time.time() - 60, time.time() - 60))
    assert blob_entries(home) > {f"files/{kept.id}"}

    again = launch(home, models_dir, tmp_path / "logs1")
    try:
        assert blob_entries(home) == {f"files/{kept.id}"}
        org = again.org(srv.first_key, "default")
        assert [f.id for f in org.files.ListFiles(files_pb2.ListFilesRequest()).files] == [kept.id]
    finally:
        again.terminate()
        again.kill()


# --- 12: a broken models dir ------------------------------------------------------------------

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)


@pytest.fixture
def broken_models(tmp_path: Path, tiny: Path) -> Path:
    """tiny-llama, and beside it one model dir broken in each way an attacker found."""
    root = tmp_path / "models"
    shutil.copytree(tiny, root / "tiny-llama")
    weights = (tiny / "model.safetensors").read_bytes()
    config = (tiny / "config.json").read_bytes()
    broken = {
        "lfs-config": {"config.json": LFS_POINTER, "model.safetensors": weights},
        "lfs-weights": {"config.json": config, "model.safetensors": LFS_POINTER},
        "truncated": {"config.json": config, "model.safetensors": weights[: len(weights) // 2]},
        "dir-config": {"model.safetensors": weights},
    }
    for name, files in broken.items():
        (root / name).mkdir()
        for filename, data in files.items():
            (root / name / filename).write_bytes(data)
    (root / "dir-config" / "config.json").mkdir()
    return root


def test_a_broken_model_dir_is_left_out_and_refused_by_name(
    tmp_path: Path, broken_models: Path
) -> None:
    srv = launch(tmp_path / "home", broken_models, tmp_path / "logs")
    try:
        org = srv.default
        listed = org.models.ListBaseModels(models_pb2.ListBaseModelsRequest()).base_models
        assert {m.id for m in listed} - {"all-MiniLM-L6-v2"} == {"tiny-llama"}
        record = org.upload_sample()
        assert org.create_job(record.id).base_model == "tiny-llama"
        for name in ("lfs-config", "lfs-weights", "truncated", "dir-config"):
            failure = fails(
                grpc.StatusCode.INVALID_ARGUMENT, org.create_job, record.id, base_model=name
            )
            assert "cannot be used" in failure.violations["job.base_model"], failure
            assert name in srv.stderr, srv.stderr
        assert "git-LFS pointer" in srv.stderr and "truncated" in srv.stderr
    finally:
        srv.terminate()
        srv.kill()


# --- 13: a full disk --------------------------------------------------------------------------


@pytest.fixture
def home_on_a_small_disk(tmp_path: Path) -> Iterator[Path]:
    """A home that is a 16 MiB filesystem; unmounted after the server has stopped."""
    with small_filesystem(tmp_path / "small-home", "16m") as home:
        yield home


def test_a_full_disk_is_resource_exhausted_and_passes_when_space_returns(
    home_on_a_small_disk: Path, start_server: Callable[..., Server]
) -> None:
    home = home_on_a_small_disk
    srv = start_server(home=home)
    org = srv.default
    record = org.upload_sample()
    filler = fill(home)
    failure = fails(grpc.StatusCode.RESOURCE_EXHAUSTED, org.create_job, record.id)
    assert "no space left" in failure.message
    fails(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        org.files.UploadFile,
        upload_requests(chat_lines(20, "full"), "full.jsonl"),
    )
    filler.unlink()
    assert org.create_job(record.id).state == Job.STATE_QUEUED
    assert org.upload(chat_lines(20, "after"), "after.jsonl").state == File.STATE_PROCESSED


def test_a_worker_lost_while_the_disk_is_full_is_taken_back_when_space_returns(
    home_on_a_small_disk: Path, start_server: Callable[..., Server]
) -> None:
    # The exit handler used to raise on the full disk: the lease then lapsed and the job
    # resumed only on expiry, for "no heartbeat" instead of the worker's exit.
    home = home_on_a_small_disk
    srv = start_server(home=home, TUNEWIRE_MAX_RUNNING_JOBS="1", TUNEWIRE_LEASE_SECONDS="8")
    org = srv.default
    job = create(org, org.upload_sample().id, seed=5, n_epochs=3, checkpoint_every_steps=4)
    follower = Follower(org, job.id)
    started = follower.wait_for(lambda e: bool(STARTED.fullmatch(e.message)))
    follower.wait_for(lambda e: e.message.startswith("Training plan"), started.sequence)
    pid = int(STARTED.fullmatch(started.message).group(1))
    filler = fill(home)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    time.sleep(2.5)  # the scheduler tries to take the lease back, and tries again
    filler.unlink()
    events = follower.join()
    assert get(org, job.id).state == Job.STATE_SUCCEEDED, follower.messages
    ended = [e.message for e in events if e.message.startswith("Trainer attempt")]
    assert len(ended) == 1 and "exited with code -9" in ended[0], ended
    assert "could not take a lease back" in srv.stderr


# --- 14: a private data dir -------------------------------------------------------------------


def modes(home: Path) -> dict[str, int]:
    """Permission bits of the home and everything under it (symlinks aside)."""
    found = {".": stat.S_IMODE(home.stat().st_mode)}
    for path in home.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(home))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assert_private(home: Path) -> None:
    found = modes(home)
    wide = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not wide, f"readable by others: {wide}"
    assert {"tunewire.db", "api-key", "blobs/files"} <= set(found)


def test_the_data_dir_is_private_and_an_existing_one_is_tightened(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    old = os.umask(0o022)  # what most users have: everything readable by all
    try:
        home = tmp_path / "home"
        srv = start_server(home=home)
        srv.default.upload_sample()
        assert_private(home)
        srv.terminate()
        # A home left readable (by an older version, a copy, `models init-tiny`).
        (home / "models").mkdir()
        (home / "models" / "notes.txt").write_text("from before")
        for path in [home, *home.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        start_server(home=home)
        assert_private(home)
    finally:
        os.umask(old)
