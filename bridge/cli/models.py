"""`tunewire models get|delete|export|generate`: using fine-tuned models from the terminal.

The `tunewire models` commands.
The module imports nothing from bridge.cli.app, so the app can import it at the top.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.markup import escape

from bridge.cli.client import Client
from bridge.cli.common import Address, ApiKey, connect, console, err, fail
from bridge.cli.output import Output, show, show_list
from server.config import Settings
from server.states import FINAL_EXPORT_STATES
from tunewire.v1 import exports_pb2, models_pb2

models_app = typer.Typer(help="Base and fine-tuned models: list, inspect, export, generate.")

Export = exports_pb2.Export
BaseModel = models_pb2.BaseModel
FORMATS = {"merged": Export.FORMAT_MERGED_SAFETENSORS, "onnx": Export.FORMAT_ONNX}
POLL_SECONDS = 0.5


@models_app.command("init-tiny")
def models_init_tiny(
    if_missing: Annotated[bool, typer.Option(help="Do nothing when it exists.")] = False,
) -> None:
    """Build `tiny-llama` (a small Llama, tokenizer trained locally) in the models dir."""
    from trainer.models import init_tiny

    target = Settings().models_dir / "tiny-llama"
    if if_missing and (target / "config.json").exists():
        return
    with console.status("building tiny-llama…"):
        path = init_tiny(Settings().models_dir)
    console.print(f"tiny-llama ready at {path}")


@models_app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="A Hugging Face model directory.")],
    name: Annotated[
        str | None, typer.Option(help="NAME or ORG/NAME to list it as (default: its dir name).")
    ] = None,
) -> None:
    """Import a local model dir as a base model (local admin: writes the models dir).

    Takes safetensors weights, config and tokenizer files only (never pickled .bin/.pt
    weights, never code), verifies them with transformers, and renames the copy into place.
    """
    from bridge.cli import model_import

    model_import.add(path, name)


@models_app.command("pull")
def models_pull(
    repo_id: Annotated[str, typer.Argument(help="A hub repo id, e.g. Qwen/Qwen3-0.6B.")],
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: main).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="NAME or ORG/NAME to list it as (default: the repo id).")
    ] = None,
) -> None:
    """Download a base model from the Hugging Face hub and import it as `add` does (local
    admin). HF_ENDPOINT picks a mirror; HF_TOKEN is the token for gated or private repos."""
    from bridge.cli import model_import

    model_import.pull(repo_id, revision, name)


@models_app.command("list")
def models_list(
    address: Address = None,
    api_key: ApiKey = None,
    output: Output = "table",
    fine_tuned: Annotated[bool, typer.Option(help="Only your fine-tuned models.")] = False,
) -> None:
    """List base models, then your fine-tuned models (newest first)."""
    client = connect(address, api_key)
    try:
        bases = client.models.ListBaseModels(
            models_pb2.ListBaseModelsRequest(), metadata=client.metadata
        )
        tuned = client.models.ListModels(models_pb2.ListModelsRequest(), metadata=client.metadata)
    except grpc.RpcError as error:
        fail(error)
    if fine_tuned:
        show_list(
            tuned.models,
            {
                "model": lambda m: m.id,
                "base": lambda m: m.base_model,
                "job": lambda m: m.job_id,
            },
            output,
        )
        return
    # One list of two kinds: a row says which, and -o json/-o id print both.
    show_list(
        [*bases.base_models, *tuned.models],
        {
            "model": lambda m: m.id,
            "kind": lambda m: "base" if isinstance(m, BaseModel) else "fine-tuned",
            "base": lambda m: m.architecture if isinstance(m, BaseModel) else m.base_model,
            "parameters / job": lambda m: (
                m.parameter_count if isinstance(m, BaseModel) else m.job_id
            ),
        },
        output,
    )


@models_app.command("get")
def models_get(
    model_id: str, address: Address = None, api_key: ApiKey = None, output: Output = "table"
):
    """Show a fine-tuned (or checkpoint) model with its adapter's files."""
    client = connect(address, api_key)
    try:
        model = client.models.GetModel(
            models_pb2.GetModelRequest(model_id=model_id), metadata=client.metadata
        )
    except grpc.RpcError as error:
        fail(error)
    show(model, output)


@models_app.command("delete")
def models_delete(model_id: str, address: Address = None, api_key: ApiKey = None):
    """Delete a fine-tuned model."""
    client = connect(address, api_key)
    try:
        client.models.DeleteModel(
            models_pb2.DeleteModelRequest(model_id=model_id), metadata=client.metadata
        )
    except grpc.RpcError as error:
        fail(error)
    console.print(f"deleted {model_id}", markup=False)


@models_app.command("export")
def models_export(
    model_id: str,
    fmt: Annotated[str, typer.Option("--format", help="merged or onnx.")] = "merged",
    int8: Annotated[bool, typer.Option(help="ONNX: also write an int8 model.")] = False,
    download: Annotated[
        Path | None, typer.Option(help="Download the artifacts into this directory.")
    ] = None,
    address: Address = None,
    api_key: ApiKey = None,
) -> None:
    """Export a model (merged safetensors or ONNX) and wait for it, printing its progress."""
    if fmt not in FORMATS:
        err.print(f"[red]error:[/red] --format must be one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    client = connect(address, api_key)
    try:
        export = client.exports.CreateExport(
            exports_pb2.CreateExportRequest(
                export=Export(model_id=model_id, format=FORMATS[fmt], quantize_int8=int8)
            ),
            metadata=client.metadata,
        )
        console.print(f"export {export.id} of {model_id}", markup=False)
        export = _follow(client, export.id)
        if export.state != Export.STATE_SUCCEEDED:
            raise typer.Exit(1)
        _summary(export)
        if download is not None:
            for artifact in export.artifacts:
                _download(client, export.id, artifact.path, download)
            console.print(f"downloaded {len(export.artifacts)} files to {download}", markup=False)
    except grpc.RpcError as error:
        fail(error)


def _follow(client: Client, export_id: str) -> Export:
    """Print the export's events as they appear until it is finished; return it."""
    seen = 0
    while True:
        export = client.exports.GetExport(
            exports_pb2.GetExportRequest(export_id=export_id), metadata=client.metadata
        )
        token = ""
        while True:
            page = client.exports.ListExportEvents(
                exports_pb2.ListExportEventsRequest(
                    export_id=export_id, page_size=1000, page_token=token
                ),
                metadata=client.metadata,
            )
            for event in page.events:
                if event.sequence > seen:
                    style = "red" if event.level == event.LEVEL_ERROR else "default"
                    line = f"[dim]{event.sequence:>4}[/dim] [{style}]{escape(event.message)}"
                    console.print(line)
                    seen = event.sequence
            if not (token := page.next_page_token):
                break
        # The export was read before its events, so its final event is printed by now.
        if export.state in FINAL_EXPORT_STATES:
            return export
        time.sleep(POLL_SECONDS)


def _summary(export: Export) -> None:
    if export.format == Export.FORMAT_ONNX:
        console.print(f"max |logit diff| vs torch: {export.max_logit_diff:.3g}")
        if export.quantize_int8:
            console.print(f"int8 max |logit diff| vs torch: {export.int8_max_logit_diff:.3g}")
    show_list(
        export.artifacts,
        {
            "artifact": lambda a: a.path,
            "bytes": lambda a: a.bytes,
            "sha256": lambda a: a.sha256,
        },
    )


def _download(client: Client, export_id: str, path: str, into: Path) -> None:
    """Stream one artifact to `into/path`, checking its sha256, renamed into place."""
    target = into / path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    digest, expected = hashlib.sha256(), ""
    with open(partial, "wb") as out:
        for reply in client.exports.DownloadExportArtifact(
            exports_pb2.DownloadExportArtifactRequest(export_id=export_id, path=path),
            metadata=client.metadata,
        ):
            out.write(reply.chunk.data)
            digest.update(reply.chunk.data)
            expected = reply.chunk.sha256 or expected
    if digest.hexdigest() != expected:
        partial.unlink()
        err.print(f"[red]error:[/red] {escape(path)}: sha256 mismatch; download it again")
        raise typer.Exit(1)
    os.replace(partial, target)


def _messages(pairs: list[str]) -> list[models_pb2.ChatMessage]:
    out = []
    for pair in pairs:
        role, sep, content = pair.partition("=")
        if not sep:
            err.print(f"[red]error:[/red] --message takes ROLE=TEXT, got {pair!r}")
            raise typer.Exit(2)
        out.append(models_pb2.ChatMessage(role=role, content=content))
    return out


@models_app.command("generate")
def models_generate(
    model_id: str,
    prompt: Annotated[str, typer.Option(help="A raw prompt.")] = "",
    message: Annotated[
        list[str] | None,
        typer.Option("--message", "-m", help="A chat message ROLE=TEXT, repeatable."),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="At most this many tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy (default 1).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass (default 1).")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence, repeatable.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    export_id: Annotated[str, typer.Option(help="Run this ONNX export instead.")] = "",
    address: Address = None,
    api_key: ApiKey = None,
) -> None:
    """Generate from a model, streaming the text to the terminal as it is produced."""
    request = models_pb2.GenerateRequest(
        model_id=model_id,
        prompt=prompt,
        messages=_messages(message or []),
        stop=stop or [],
        export_id=export_id,
    )
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("seed", seed),
    ):
        if value is not None:
            setattr(request, name, value)
    client = connect(address, api_key)
    try:
        for reply in client.models.Generate(request, metadata=client.metadata):
            sys.stdout.write(reply.text)
            sys.stdout.flush()
            if reply.finish_reason:
                sys.stdout.write("\n")
                usage = reply.usage
                err.print(
                    f"[dim]finish: {reply.finish_reason}; tokens: {usage.prompt_tokens} prompt, "
                    f"{usage.completion_tokens} completion[/dim]"
                )
    except grpc.RpcError as error:
        fail(error)
