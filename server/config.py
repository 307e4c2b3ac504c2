"""Settings, read from TUNEWIRE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

# Hosts a server binds to that a client cannot dial: it reaches such a server locally.
WILDCARDS = {"0.0.0.0", "::", "[::]"}


def dialable(host: str, port: int) -> str:
    """The address a client on this machine dials for a server bound to `host`:`port`, so
    that one TUNEWIRE_GRPC_PORT (and TUNEWIRE_HOST) moves a server and its clients together."""
    return f"{'127.0.0.1' if host in WILDCARDS else host}:{port}"


class Settings(BaseSettings):
    """Where Tunewire keeps its data and how it serves. Env: TUNEWIRE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="TUNEWIRE_")

    home: Path = Path(".tunewire")
    """Data dir: database, blobs, models, the first API key."""
    host: str = "127.0.0.1"
    """Interface to serve on."""
    grpc_port: int = 50051
    """gRPC port (0 picks a free one)."""
    http_port: int = 8080
    """REST bridge port (0 picks a free one)."""
    grpc_max_connections: int = 1000
    """Connections the gRPC port holds at once (handshaking ones included); more are closed
    as they arrive."""
    grpc_max_concurrent_rpcs: int = 4000
    """Calls the gRPC server runs at once, live streams included (each REST stream is one);
    more are answered RESOURCE_EXHAUSTED."""
    grpc_handshake_timeout_seconds: float = 10.0
    """A connection that has not finished its HTTP/2 handshake (sent its preface and
    settings) this long after it opened is closed."""
    grpc_idle_timeout_seconds: float = 300.0
    """A connection with no call in flight for this long is closed (GOAWAY; clients
    reconnect on their next call)."""
    max_upload_bytes: int = 512 * 1024 * 1024
    """Largest upload accepted; enforced while streaming."""
    max_chunked_upload_bytes: int = 8_000_000_000
    """Largest file sent in parts (an Upload's declared `bytes`; OpenAI's limit, 8 GB),
    independent of `max_upload_bytes`."""
    max_upload_part_bytes: int = 64 * 1024 * 1024
    """Largest part of an Upload (OpenAI's limit, 64 MB); enforced while streaming."""
    upload_expiry_seconds: float = 3600.0
    """An Upload not completed this long after its creation expires, and its parts are
    deleted (OpenAI's hour)."""
    max_line_bytes: int = 8 * 1024 * 1024
    """Longest line of an uploaded training file; a longer one is reported as a problem of
    its line (`line_too_long`) and never held in memory."""
    max_running_jobs: int = 1
    """Training workers the executor keeps running (jobs trained at once)."""
    export_workers: int = 1
    """Export workers the executor starts when exports wait."""
    inference_workers: int = 1
    """Inference workers the executor starts when generation is asked for; each keeps its
    base models loaded."""
    executor: Literal["local", "ray"] = "local"
    """Where the control plane runs its workers: `local` (processes on this machine) or
    `ray` (actors on the Ray cluster at `ray_address`; needs the `ray` extra)."""
    ray_address: str = ""
    """The Ray cluster's address (`HOST:PORT`), for the ray executor."""
    ray_train_cpus: float = 1.0
    """CPUs each training worker asks Ray for."""
    ray_train_gpus: float = 0.0
    """GPUs each training worker asks Ray for."""
    lease_seconds: float = 30.0
    """A trainer that has not heart-beaten for this long is presumed dead."""
    heartbeat_seconds: float = 2.0
    """How often trainers heart-beat (and so how soon they see cancel/pause)."""
    max_attempts: int = 3
    """Trainer attempts per job (the first plus resumes) before it fails."""
    models_dir_override: Path | None = None
    """Base models dir; defaults to <home>/models."""
    blob_url: str = ""
    """The blob store: a local directory or any fsspec URL (`s3://bucket/prefix`) that the
    control plane and every worker can reach; defaults to <home>/blobs."""
    worker_token: str = ""
    """The secret workers present to the control plane (and it to inference workers); a
    new random one each start unless set (set it for workers started elsewhere)."""
    webhook_allow_private: bool = False
    """Deliver webhooks to private, loopback and link-local addresses too (closed networks,
    tests); an endpoint whose host resolves to one is refused otherwise, at creation and at
    every delivery."""
    webhook_backoff_seconds: float = 5.0
    """The wait before a failed webhook delivery's first retry; it doubles each retry."""
    webhook_backoff_cap_seconds: float = 3600.0
    """The longest wait between two retries of a webhook delivery."""
    webhook_retry_window_seconds: float = 72 * 3600.0
    """How long after its event a webhook delivery is retried before it is marked failed."""
    webhook_timeout_seconds: float = 10.0
    """How long one webhook POST may take, connecting included."""
    webhook_concurrency: int = 8
    """Webhook POSTs in flight at once."""

    @property
    def db_path(self) -> Path:
        return self.home / "tunewire.db"

    @property
    def blobs(self) -> str:
        return self.blob_url or str(self.home / "blobs")

    @property
    def models_dir(self) -> Path:
        return self.models_dir_override or self.home / "models"

    @property
    def first_key_path(self) -> Path:
        return self.home / "api-key"

    @property
    def secret_key_path(self) -> Path:
        """The key that seals stored secrets (webhook secrets, tracking API keys)."""
        return self.home / "secret.key"
