"""`tunewire`: serve, manage keys and models, upload files, run and watch jobs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import grpc
import typer

from bridge.cli.client import PURPOSES, Client
from bridge.cli.common import Address, ApiKey, connect, console, err, fail, new_table, show
from bridge.cli.models import models_app
from server.config import Settings
from trainer.hyperparameters import BY_NAME as HYPERPARAMETERS
from tunewire.v1 import auth_pb2, files_pb2, jobs_pb2

app = typer.Typer(help="Tunewire: self-hosted LoRA fine-tuning.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (local admin: works on the data dir directly).")
files_app = typer.Typer(help="Upload and inspect files.")
jobs_app = typer.Typer(help="Create, inspect and watch fine-tuning jobs.")
for sub, name in (
    (keys_app, "keys"),
    (models_app, "models"),
    (files_app, "files"),
    (jobs_app, "jobs"),
):
    app.add_typer(sub, name=name, no_args_is_help=True)


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Interface to serve on.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051).")] = None,
    http_port: Annotated[int | None, typer.Option(help="REST port (default 8080).")] = None,
    log_level: Annotated[
        str, typer.Option(envvar="TUNEWIRE_LOG_LEVEL", help="debug, info, warning, error.")
    ] = "warning",
) -> None:
    """Serve the gRPC API and the REST bridge, and run trainers, until SIGTERM / Ctrl-C."""
    from bridge.main import create_app
    from bridge.main import serve as serve_rest
    from server import logs
    from server.app import serve

    logs.setup(log_level)
    given = {"host": host, "grpc_port": grpc_port, "http_port": http_port}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})

    async def rest(grpc_address: str) -> None:
        await serve_rest(create_app(grpc_address), settings.host, settings.http_port)

    asyncio.run(serve(settings, companions=[rest]))


@keys_app.command("create")
def keys_create(org: Annotated[str, typer.Option(help="Organization the key belongs to.")]):
    """Create an API key for ORG and print it (it is shown only once)."""
    from server import auth
    from server.store.db import connect

    try:
        key = auth.create_key(connect(Settings().db_path), org)
    except ValueError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (their prefixes only)."""
    from server import auth
    from server.store.db import connect

    table = new_table("id", "org", "prefix", "revoked")
    for row in auth.list_keys(connect(Settings().db_path)):
        table.add_row(
            row["id"], row["org"], row["prefix"] + "…", "yes" if row["revoked_at"] else ""
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id; calls with it are refused from now on."""
    from server import auth
    from server.errors import NotFound
    from server.store.db import connect

    try:
        auth.revoke_key(connect(Settings().db_path), key_id)
    except NotFound as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error


@app.command()
def whoami(address: Address = None, api_key: ApiKey = None) -> None:
    """Check your API key: the organization and key it is."""
    client = connect(address, api_key)
    try:
        show(client.auth.GetCaller(auth_pb2.GetCallerRequest(), metadata=client.metadata))
    except grpc.RpcError as error:
        fail(error)


@files_app.command("upload")
def files_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option(help="fine-tune or user-data.")] = "fine-tune",
    address: Address = None,
    api_key: ApiKey = None,
) -> None:
    """Upload a file; a fine-tune file is validated and its report printed."""
    if purpose not in PURPOSES:
        err.print(f"[red]error:[/red] --purpose must be one of {', '.join(PURPOSES)}")
        raise typer.Exit(2)
    client = connect(address, api_key)
    try:
        with console.status(f"uploading {path.name}…"):
            record = client.upload(path, PURPOSES[purpose])
    except grpc.RpcError as error:
        fail(error)
    show(record)
    if record.state == files_pb2.File.STATE_ERROR:
        raise typer.Exit(1)


@files_app.command("list")
def files_list(address: Address = None, api_key: ApiKey = None) -> None:
    """List your files, newest first."""
    client = connect(address, api_key)
    table = new_table("id", "filename", "bytes", "state", "examples")
    token = ""
    try:
        while True:
            page = client.files.ListFiles(
                files_pb2.ListFilesRequest(page_token=token, page_size=100),
                metadata=client.metadata,
            )
            for f in page.files:
                table.add_row(
                    f.id,
                    f.filename,
                    f"{f.bytes:,}",
                    files_pb2.File.State.Name(f.state).removeprefix("STATE_").lower(),
                    str(f.validation.example_count),
                )
            if not (token := page.next_page_token):
                break
    except grpc.RpcError as error:
        fail(error)
    console.print(table)


@files_app.command("get")
def files_get(file_id: str, address: Address = None, api_key: ApiKey = None):
    """Show a file with its validation report."""
    client = connect(address, api_key)
    try:
        show(
            client.files.GetFile(
                files_pb2.GetFileRequest(file_id=file_id), metadata=client.metadata
            )
        )
    except grpc.RpcError as error:
        fail(error)


def _metadata_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            err.print(f"[red]error:[/red] --metadata takes KEY=VALUE, got {pair!r}")
            raise typer.Exit(2)
        out[key] = value
    return out


def _help(name: str) -> str:
    row = HYPERPARAMETERS[name]
    only = f" {row.method.upper()} only." if row.method else ""
    return f"{row.doc} {row.range}; auto when unset.{only}"


METHODS = {"supervised": jobs_pb2.Method.TYPE_SUPERVISED, "dpo": jobs_pb2.Method.TYPE_DPO}


@jobs_app.command("create")
def jobs_create(
    model: Annotated[str, typer.Option(help="Base model, e.g. tiny-llama.")],
    training_file: Annotated[str, typer.Option(help="A processed fine-tune file id.")],
    validation_file: Annotated[str, typer.Option(help="Validation file id.")] = "",
    suffix: Annotated[str, typer.Option(help="Added to the model name.")] = "",
    seed: Annotated[int | None, typer.Option(help="Seed (generated when unset).")] = None,
    n_epochs: Annotated[int | None, typer.Option(help=_help("n_epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_help("batch_size"))] = None,
    learning_rate_multiplier: Annotated[
        float | None, typer.Option(help=_help("learning_rate_multiplier"))
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="supervised (chat, completion or text data) or dpo (preference data: "
            "input, preferred_output, non_preferred_output)."
        ),
    ] = "supervised",
    beta: Annotated[float | None, typer.Option(help=_help("beta"))] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    request_id: Annotated[str, typer.Option(help="Idempotency key.")] = "",
    watch: Annotated[bool, typer.Option(help="Watch it after creating it.")] = False,
    address: Address = None,
    api_key: ApiKey = None,
) -> None:
    """Create a fine-tuning job."""
    hp = jobs_pb2.Hyperparameters()
    for name, value in (
        ("n_epochs", n_epochs),
        ("batch_size", batch_size),
        ("learning_rate_multiplier", learning_rate_multiplier),
        ("beta", beta),
    ):
        if value is not None:
            setattr(hp, name, value)
    if method not in METHODS:
        err.print(f"[red]error:[/red] --method must be one of {', '.join(METHODS)}")
        raise typer.Exit(2)
    job = jobs_pb2.Job(
        base_model=model,
        training_file=training_file,
        validation_file=validation_file,
        suffix=suffix,
        method=jobs_pb2.Method(type=METHODS[method]),
        hyperparameters=hp,
        metadata=_metadata_pairs(metadata or []),
    )
    if seed is not None:
        job.seed = seed
    client = connect(address, api_key)
    try:
        created = client.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(job=job, request_id=request_id), metadata=client.metadata
        )
    except grpc.RpcError as error:
        fail(error)
    show(created)
    if watch:
        _watch(client, created.id, 0)


@jobs_app.command("list")
def jobs_list(
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE filter.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    address: Address = None,
    api_key: ApiKey = None,
) -> None:
    """List jobs, newest first."""
    client = connect(address, api_key)
    try:
        page = client.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(page_size=limit, metadata=_metadata_pairs(metadata or [])),
            metadata=client.metadata,
        )
    except grpc.RpcError as error:
        fail(error)
    table = new_table("id", "model", "state", "fine-tuned model")
    for j in page.jobs:
        table.add_row(
            j.id, j.base_model, jobs_pb2.Job.State.Name(j.state)[6:].lower(), j.fine_tuned_model
        )
    console.print(table)


@jobs_app.command("get")
def jobs_get(job_id: str, address: Address = None, api_key: ApiKey = None):
    """Show a job."""
    client = connect(address, api_key)
    try:
        show(client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=client.metadata))
    except grpc.RpcError as error:
        fail(error)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, address: Address = None, api_key: ApiKey = None):
    """Cancel a job: a queued one at once, a running one within a step."""
    client = connect(address, api_key)
    try:
        show(
            client.jobs.CancelJob(
                jobs_pb2.CancelJobRequest(job_id=job_id), metadata=client.metadata
            )
        )
    except grpc.RpcError as error:
        fail(error)


@jobs_app.command("watch")
def jobs_watch(
    job_id: str,
    after: Annotated[int, typer.Option(help="Resume after this event sequence.")] = 0,
    address: Address = None,
    api_key: ApiKey = None,
) -> None:
    """Stream a job's events live until it finishes, with a progress bar while it trains."""
    _watch(connect(address, api_key), job_id, after)


def _watch(client: Client, job_id: str, after: int) -> None:
    from bridge.cli.progress import watch

    try:
        final = watch(client, job_id, after, console)
    except grpc.RpcError as error:
        fail(error)
    if final != "succeeded":
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
