"""`tunewire`: serve, manage keys and models, upload files, run and watch jobs."""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path
from typing import Annotated

import grpc
import typer

from bridge.cli.client import PURPOSES, Client
from bridge.cli.common import Address, ApiKey, connect, console, err, fail
from bridge.cli.models import models_app
from bridge.cli.output import Output, enum_name, show, show_list
from server.config import Settings
from trainer.hyperparameters import TABLE as HYPERPARAMETERS
from trainer.hyperparameters import TARGET_MODULES
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
    from rich.table import Table

    from server import auth
    from server.store.db import connect

    table = Table("id", "org", "prefix", "revoked")
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
def whoami(address: Address = None, api_key: ApiKey = None, output: Output = "table") -> None:
    """Check your API key: the organization and key it is."""
    client = connect(address, api_key)
    try:
        show(client.auth.GetCaller(auth_pb2.GetCallerRequest(), metadata=client.metadata), output)
    except grpc.RpcError as error:
        fail(error)


@files_app.command("upload")
def files_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option(help="fine-tune or user-data.")] = "fine-tune",
    address: Address = None,
    api_key: ApiKey = None,
    output: Output = "table",
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
    show(record, output)
    if record.state == files_pb2.File.STATE_ERROR:
        raise typer.Exit(1)


@files_app.command("list")
def files_list(address: Address = None, api_key: ApiKey = None, output: Output = "table"):
    """List your files, newest first."""
    client = connect(address, api_key)
    files, token = [], ""
    try:
        while True:
            page = client.files.ListFiles(
                files_pb2.ListFilesRequest(page_token=token, page_size=100),
                metadata=client.metadata,
            )
            files += page.files
            if not (token := page.next_page_token):
                break
    except grpc.RpcError as error:
        fail(error)
    show_list(
        files,
        {
            "id": lambda f: f.id,
            "filename": lambda f: f.filename,
            "bytes": lambda f: f.bytes,
            "state": lambda f: enum_name(f, "state"),
            "examples": lambda f: f.validation.example_count,
        },
        output,
    )


@files_app.command("get")
def files_get(
    file_id: str, address: Address = None, api_key: ApiKey = None, output: Output = "table"
):
    """Show a file with its validation report."""
    client = connect(address, api_key)
    try:
        request = files_pb2.GetFileRequest(file_id=file_id)
        show(client.files.GetFile(request, metadata=client.metadata), output)
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


def with_hyperparameters(command):
    """Give a command one option per hyperparameter of the table (`--lora-rank`, ...), all
    None when unset, passed in its **hyperparameters: the CLI takes what the API takes."""
    signature = inspect.signature(command, eval_str=True)
    options = []
    for hp in HYPERPARAMETERS:
        unset = "auto" if hp.default == "auto" else hp.default
        only = f" {hp.method.upper()} only." if hp.method else ""
        option = typer.Option(
            help=f"{hp.doc} {hp.range}; {unset} when unset.{only}",
            rich_help_panel="Hyperparameters",
        )
        options.append(
            inspect.Parameter(
                hp.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[hp.type | None, option],
            )
        )
    kept = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=kept + options)
    return command


METHODS = {"supervised": jobs_pb2.Method.TYPE_SUPERVISED, "dpo": jobs_pb2.Method.TYPE_DPO}


@jobs_app.command("create")
@with_hyperparameters
def jobs_create(
    model: Annotated[str, typer.Option(help="Base model, e.g. tiny-llama.")],
    training_file: Annotated[str, typer.Option(help="A processed fine-tune file id.")],
    validation_file: Annotated[str, typer.Option(help="Validation file id.")] = "",
    suffix: Annotated[str, typer.Option(help="Added to the model name.")] = "",
    seed: Annotated[int | None, typer.Option(help="Seed (generated when unset).")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="supervised (chat, completion or text data) or dpo (preference data: "
            "input, preferred_output, non_preferred_output)."
        ),
    ] = "supervised",
    target_modules: Annotated[
        str | None,
        typer.Option(
            help=f"LoRA target modules: {', '.join(TARGET_MODULES)}; QV when unset.",
            rich_help_panel="Hyperparameters",
        ),
    ] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    request_id: Annotated[str, typer.Option(help="Idempotency key.")] = "",
    watch: Annotated[bool, typer.Option(help="Watch it after creating it.")] = False,
    address: Address = None,
    api_key: ApiKey = None,
    output: Output = "table",
    **hyperparameters: float | None,
) -> None:
    """Create a fine-tuning job. The server checks every value and names the one it refuses."""
    hp = jobs_pb2.Hyperparameters(**{k: v for k, v in hyperparameters.items() if v is not None})
    if target_modules is not None:
        if target_modules.upper() not in TARGET_MODULES:
            err.print(f"[red]error:[/red] --target-modules must be one of {TARGET_MODULES}")
            raise typer.Exit(2)
        hp.target_modules = jobs_pb2.Hyperparameters.TargetModules.Value(
            f"TARGET_MODULES_{target_modules.upper()}"
        )
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
    show(created, output)
    if watch:
        _watch(client, created.id, 0)


@jobs_app.command("list")
def jobs_list(
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE filter.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    address: Address = None,
    api_key: ApiKey = None,
    output: Output = "table",
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
    show_list(
        page.jobs,
        {
            "id": lambda j: j.id,
            "model": lambda j: j.base_model,
            "state": lambda j: enum_name(j, "state"),
            "fine-tuned model": lambda j: j.fine_tuned_model,
        },
        output,
    )


@jobs_app.command("get")
def jobs_get(
    job_id: str, address: Address = None, api_key: ApiKey = None, output: Output = "table"
):
    """Show a job."""
    client = connect(address, api_key)
    try:
        request = jobs_pb2.GetJobRequest(job_id=job_id)
        show(client.jobs.GetJob(request, metadata=client.metadata), output)
    except grpc.RpcError as error:
        fail(error)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str, address: Address = None, api_key: ApiKey = None, output: Output = "table"
):
    """Cancel a job: a queued one at once, a running one within a step."""
    client = connect(address, api_key)
    try:
        request = jobs_pb2.CancelJobRequest(job_id=job_id)
        show(client.jobs.CancelJob(request, metadata=client.metadata), output)
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
