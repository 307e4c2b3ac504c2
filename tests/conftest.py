"""Real servers for the control-plane tests: `tunewire up` on a real port, no fakes.

`server` is one server for the whole session (most tests share it and use unique data);
`start_server` starts servers of a test's own (a small upload limit, SIGTERM, restarts).
Each server runs with `TUNEWIRE_MAX_RUNNING_JOBS=0`, so queued jobs stay queued, and
shares one `tiny-llama` built once per session.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from bridge.cli.client import Client
from tunewire.v1 import files_pb2, jobs_pb2, models_pb2

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CHAT = REPO / "trainer" / "assets" / "sample-chat.jsonl"
BIN = Path(sys.executable).parent
READY = re.compile(r"tunewire: serving gRPC on (\S+):(\d+)")
FIRST_KEY = re.compile(r"^\s+(tw-\S+)\s*$", re.MULTILINE)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0  # no single call in these tests should come near it
ID = re.compile(r"^(file|ftjob|ftevent|ftckpt|key)-[0-9a-f]{24}$")

File = files_pb2.File
Job = jobs_pb2.Job


def tunewire_command() -> list[str]:
    script = BIN / "tunewire"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge.cli"]


def clean_env(home: Path, models_dir: Path | None, **extra: str) -> dict[str, str]:
    """The environment without the caller's TUNEWIRE_* settings, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWIRE_")}
    env["TUNEWIRE_HOME"] = str(home)
    if models_dir is not None:
        env["TUNEWIRE_MODELS_DIR_OVERRIDE"] = str(models_dir)
    env["TUNEWIRE_MAX_RUNNING_JOBS"] = "0"
    env["TUNEWIRE_HTTP_PORT"] = "0"  # the REST bridge beside it: any free port
    env["COLUMNS"] = "200"  # rich tables from the CLI must not wrap or truncate ids
    env.update(extra)
    return env


# --- calling the API --------------------------------------------------------------------------


class Authed:
    """A stub whose calls carry an org's key and a deadline unless told otherwise."""

    def __init__(self, stub: Any, metadata: list[tuple[str, str]]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            kwargs.setdefault("timeout", CALL_TIMEOUT)
            return method(request, **kwargs)

        return call


def upload_requests(
    data: bytes,
    filename: str,
    purpose: int = File.PURPOSE_FINE_TUNE,
    chunk: int = 64 * 1024,
) -> Iterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(
        metadata=files_pb2.UploadFileMetadata(filename=filename, purpose=purpose)
    )
    for start in range(0, len(data), chunk):
        yield files_pb2.UploadFileRequest(chunk=data[start : start + chunk])


def make_job(**fields: Any) -> Job:
    """A Job request on tiny-llama; dicts, lists and messages go into their fields."""
    job = Job(base_model=fields.pop("base_model", "tiny-llama"))
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(job, name).update(value)
        elif isinstance(value, list):
            getattr(job, name).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(job, name).CopyFrom(value)
        else:
            setattr(job, name, value)
    return job


@dataclass
class Org:
    """One organization's view of a server: its key, a Client and authed stubs."""

    name: str
    key: str
    address: str

    def __post_init__(self) -> None:
        self.client = Client(self.address, self.key)
        md = self.client.metadata
        self.auth = Authed(self.client.auth, md)
        self.files = Authed(self.client.files, md)
        self.jobs = Authed(self.client.jobs, md)
        self.models = Authed(self.client.models, md)
        self.exports = Authed(self.client.exports, md)

    def upload(
        self,
        data: bytes,
        filename: str = "train.jsonl",
        purpose: int = File.PURPOSE_FINE_TUNE,
    ) -> File:
        return self.files.UploadFile(upload_requests(data, filename, purpose))

    def upload_sample(self) -> File:
        record = self.upload(SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
        assert record.state == File.STATE_PROCESSED, record.validation
        return record

    def create_job(self, training_file: str, request_id: str = "", **fields: Any) -> Job:
        job = make_job(training_file=training_file, **fields)
        return self.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job, request_id=request_id))

    def close(self) -> None:
        self.client.close()


@dataclass
class Server:
    """A running `tunewire up` and the orgs that call it."""

    home: Path
    models_dir: Path | None
    process: subprocess.Popen
    address: str
    stdout_path: Path
    stderr_path: Path
    first_key: str | None
    orgs: list[Org] = field(default_factory=list)
    default: Org | None = None  # the first key's org, when this start created one
    other: Org | None = None  # a second org (the session server only)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `tunewire` command against this server's home."""
        done = subprocess.run(
            [*tunewire_command(), *args],
            env=clean_env(self.home, self.models_dir, TUNEWIRE_ADDRESS=self.address),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def org(self, key: str, name: str) -> Org:
        org = Org(name, key, self.address)
        self.orgs.append(org)
        return org

    def new_org(self, name: str) -> Org:
        """A fresh organization with its own key, made with `tunewire keys create`."""
        key = self.cli("keys", "create", "--org", name).stdout.strip()
        assert key.startswith("tw-"), key
        return self.org(key, name)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            for org in self.orgs:
                org.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def launch(home: Path, models_dir: Path | None, logs: Path, **extra_env: str) -> Server:
    """Start `tunewire up` on a free port (or TUNEWIRE_GRPC_PORT's, when given) and wait
    for its ready line."""
    home.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = logs / "stdout.txt", logs / "stderr.txt"
    # The flag would override the setting, which some tests start the server by.
    port = [] if "TUNEWIRE_GRPC_PORT" in extra_env else ["--grpc-port", "0"]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [*tunewire_command(), "up", *port],
            env=clean_env(home, models_dir, **extra_env),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not (ready := READY.search(stdout_path.read_text())):
        if process.poll() is not None:
            raise RuntimeError(
                f"tunewire up exited with {process.returncode}:\n"
                f"{stdout_path.read_text()}\n{stderr_path.read_text()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"tunewire up was not ready in {START_TIMEOUT}s")
        time.sleep(0.05)
    key = FIRST_KEY.search(stdout_path.read_text())
    srv = Server(
        home=home,
        models_dir=models_dir,
        process=process,
        address=f"{ready.group(1)}:{ready.group(2)}",
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        first_key=key.group(1) if key else None,
    )
    if srv.first_key:
        srv.default = srv.org(srv.first_key, "default")
    return srv


# --- errors -----------------------------------------------------------------------------------


@dataclass
class Failure:
    """A failed call: its code, message and decoded google.rpc.Status."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status | None

    @property
    def violations(self) -> dict[str, str]:
        """BadRequest field violations, field -> description."""
        found: dict[str, str] = {}
        for detail in self.status.details if self.status else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                for v in bad.field_violations:
                    assert v.field not in found, f"field {v.field} reported twice"
                    found[v.field] = v.description
        return found


def failure_of(error: grpc.RpcError) -> Failure:
    status = rpc_status.from_call(error)  # also checks code and message agree with trailers
    if status is not None:
        assert status.code == error.code().value[0]
        assert status.message == error.details()
    return Failure(error.code(), error.details() or "", status)


def fails(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Failure:
    """Run a call (draining it if it streams) that must fail with `code`."""
    try:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator) or hasattr(result, "__next__"):
            for _ in result:
                pass
    except grpc.RpcError as error:
        failure = failure_of(error)
        assert failure.code == code, f"expected {code.name}, got {failure.code.name}: {failure}"
        return failure
    raise AssertionError(f"expected {code.name}, but the call succeeded")


def invalid(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, str]:
    """Run a call that must fail INVALID_ARGUMENT; returns its field violations."""
    failure = fails(grpc.StatusCode.INVALID_ARGUMENT, call, *args, **kwargs)
    assert failure.violations, f"INVALID_ARGUMENT without field violations: {failure.message}"
    return failure.violations


def every_page(fetch: Callable[[str], Any], limit: int = 100) -> Iterator[Any]:
    """Each page of a listing, `fetch(page_token)` until next_page_token is empty;
    a listing that never ends fails instead of hanging."""
    token = ""
    for _ in range(limit):
        page = fetch(token)
        yield page
        if not (token := page.next_page_token):
            return
    raise AssertionError(f"paging did not end after {limit} pages")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chat_lines(n: int, tag: str = "") -> bytes:
    """`n` valid chat examples, different per `tag` so uploads are unique."""
    return b"".join(
        (
            f'{{"messages": [{{"role": "user", "content": "q{i} {tag}"}}, '
            f'{{"role": "assistant", "content": "a{i}"}}]}}\n'
        ).encode()
        for i in range(n)
    )


def preference_lines(n: int, tag: str = "") -> bytes:
    """`n` valid preference examples (DPO's data), different per `tag`."""
    return b"".join(
        (
            f'{{"input": {{"messages": [{{"role": "user", "content": "q{i} {tag}"}}]}}, '
            f'"preferred_output": [{{"role": "assistant", "content": "good a{i}"}}], '
            f'"non_preferred_output": [{{"role": "assistant", "content": "bad a{i}"}}]}}\n'
        ).encode()
        for i in range(n)
    )


# --- fixtures ---------------------------------------------------------------------------------


class TinyBuild:
    """`tunewire models init-tiny` running in the background; `wait()` for its dir."""

    def __init__(self, home: Path) -> None:
        self.path = home / "models"
        self.process = subprocess.Popen(
            [*tunewire_command(), "models", "init-tiny"],
            env=clean_env(home, self.path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self) -> Path:
        if self.process.returncode is None:
            self.output, _ = self.process.communicate(timeout=180)
        assert self.process.returncode == 0, self.output
        assert (self.path / "tiny-llama" / "config.json").exists()
        return self.path


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    """Starts building tiny-llama once per session, so servers can start meanwhile."""
    return TinyBuild(tmp_path_factory.mktemp("models-home"))


@pytest.fixture(scope="session")
def models_dir(tiny_build: TinyBuild) -> Path:
    """A models dir with `tiny-llama`, built once per session."""
    return tiny_build.wait()


@pytest.fixture(scope="session")
def tiny(models_dir: Path) -> Path:
    """tiny-llama's model dir, for tests that run the trainer in this process."""
    return models_dir / "tiny-llama"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """In-process torch work on tiny-llama: its matrices are too small to split across
    threads, and on a busy machine the threads mostly wait for each other (ten times
    slower on a loaded 2-core box)."""
    import torch  # only the modules that ask for it pay the import

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_build: TinyBuild) -> Iterator[Server]:
    """One server for the session, with the default org's key and a second org's."""
    root = tmp_path_factory.mktemp("server")
    srv = launch(root / "home", tiny_build.path, root / "logs")
    try:
        assert srv.default, srv.stdout
        # The server imports torch on its first model lookup: let it do so while
        # tiny-llama builds.
        warm = threading.Thread(
            target=srv.default.models.ListBaseModels, args=(models_pb2.ListBaseModelsRequest(),)
        )
        warm.start()
        srv.other = srv.new_org("other")
        tiny_build.wait()
        warm.join()
        yield srv
    finally:
        try:
            code = srv.terminate()
        finally:
            srv.kill()
    assert code == 0, srv.stderr


@pytest.fixture
def start_server(tmp_path: Path, models_dir: Path) -> Iterator[Callable[..., Server]]:
    """Start servers of this test's own; `start_server(home=..., **env)`."""
    started: list[Server] = []

    def start(home: Path | None = None, **env: str) -> Server:
        n = len(started)
        srv = launch(home or tmp_path / f"home{n}", models_dir, tmp_path / f"logs{n}", **env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        try:
            srv.terminate(timeout=10)
        finally:
            srv.kill()
