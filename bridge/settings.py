"""The bridge's settings, read from TUNEWIRE_* environment variables (and, for
`python -m bridge`, from the command line)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.config import dialable


class BridgeSettings(BaseSettings):
    """How the REST bridge serves and reaches the control plane. Env: TUNEWIRE_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="TUNEWIRE_",
        cli_kebab_case=True,
        cli_prog_name="python -m bridge",
        use_attribute_docstrings=True,
    )

    grpc_address: str = ""
    """The control plane's gRPC address; empty: where `tunewire up` with the same settings
    serves it, on `host` at `grpc_port`."""
    grpc_port: int = 50051
    """The control plane's gRPC port, when grpc_address is empty."""
    host: str = "127.0.0.1"
    """Interface to serve REST on."""
    http_port: int = 8080
    """REST port (0 picks a free one)."""
    http_max_connections: int = 1000
    """Connections the REST port serves at once, live streams included (uvicorn's
    limit_concurrency): a request that arrives with this many open is answered 503."""
    http_keep_alive_seconds: float = 5.0
    """An idle keep-alive connection is closed this long after its last response."""
    http_header_timeout_seconds: float = 10.0
    """A request's line and headers must arrive within this long of the connection (or of
    the request's first byte); else 408 (a silent connection is just closed)."""
    http_body_timeout_seconds: float = 60.0
    """A request body that sends nothing for this long is answered 408 and closed."""
    sse_heartbeat_seconds: float = 15.0
    """An idle server-sent-event stream gets a comment this often, so proxies keep it open."""
    max_form_field_bytes: int = 64 * 1024
    """Largest text field of a multipart form (file parts are streamed, not limited here)."""
    max_form_parts: int = 1000
    """Most parts of a multipart form, text fields and file parts together."""
    max_form_text_bytes: int = 1024 * 1024
    """Most bytes of a form's text fields, part names and file names together: the bridge
    holds them in memory while it reads the form."""
    max_json_body_bytes: int = 16 * 1024 * 1024
    """Largest request body on any route, counted while it streams in (the gRPC message
    limit). Multipart forms are limited part by part instead."""
    upload_chunk_bytes: int = 1024 * 1024
    """Bytes per UploadFile message: uploads are forwarded in chunks of this size."""
    default_base_model: str = ""
    """Base model for Cohere and Helix fine-tunes that name none; empty: the first
    causal LM the server lists."""
    log_level: str = "warning"
    """Log level: debug, info (adds a line per request), warning or error; uvicorn's, and
    for `python -m bridge` the whole process's."""
    # Helix's text fine-tunes turn documents into question-answer pairs first
    # (bridge/qa.py). Unset, they train on the documents' raw text instead.
    qa_generator_url: str = ""
    """Base URL of an OpenAI-compatible chat API that writes the question-answer pairs of
    Helix sessions (e.g. `https://api.openai.com/v1`; `/chat/completions` is appended)."""
    qa_generator_model: str = ""
    """The model that writes the pairs: with qa_generator_url, the endpoint's model name;
    without it, a model of this server (a base model such as the sessions' own, or a
    fine-tuned one), run by its Generate. Empty with no URL: no pairs, raw-text training."""
    qa_generator_key: str = ""
    """Bearer key for qa_generator_url, if it takes one."""
    qa_chunk_chars: int = Field(default=2000, ge=200, le=20_000)
    """Characters of a document per generator call."""
    qa_max_chunks_per_document: int = Field(default=8, ge=1, le=100)
    """Chunks of each document sent to the generator (the rest of a document is not)."""
    qa_max_chunks: int = Field(default=32, ge=1, le=200)
    """Chunks per session, over all its documents."""
    qa_max_pairs_per_chunk: int = Field(default=10, ge=1, le=50)
    """Pairs asked for, and kept at most, per chunk."""
    qa_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    """One generator call's limit; a chunk whose call fails or runs over yields no pairs."""
    qa_deadline_seconds: float = Field(default=180.0, gt=0, le=3600)
    """All of a session's generator calls together; chunks not done by then yield none."""

    @model_validator(mode="after")
    def _control_plane(self) -> BridgeSettings:
        if not self.grpc_address:
            self.grpc_address = dialable(self.host, self.grpc_port)
        return self
