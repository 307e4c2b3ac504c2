"""The bridge's settings, read from TUNEWIRE_* environment variables (and, for
`python -m bridge`, from the command line)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class BridgeSettings(BaseSettings):
    """How the REST bridge serves and reaches the control plane. Env: TUNEWIRE_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="TUNEWIRE_",
        cli_kebab_case=True,
        cli_prog_name="python -m bridge",
        use_attribute_docstrings=True,
    )

    grpc_address: str = "127.0.0.1:50051"
    """The control plane's gRPC address."""
    host: str = "127.0.0.1"
    """Interface to serve REST on."""
    http_port: int = 8080
    """REST port (0 picks a free one)."""
    sse_heartbeat_seconds: float = 15.0
    """An idle server-sent-event stream gets a comment this often, so proxies keep it open."""
    max_form_field_bytes: int = 64 * 1024
    """Largest text field of a multipart form (file parts are streamed, not limited here)."""
    max_json_body_bytes: int = 16 * 1024 * 1024
    """Largest JSON request body (the gRPC message limit)."""
    upload_chunk_bytes: int = 1024 * 1024
    """Bytes per UploadFile message: uploads are forwarded in chunks of this size."""
    default_base_model: str = ""
    """Base model for Cohere and Helix fine-tunes that name none; empty: the first
    causal LM the server lists."""
    log_level: str = "warning"
    """uvicorn's log level for `python -m bridge`."""
