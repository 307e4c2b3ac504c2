"""What every `tunewire` command shares: consoles, the client options, error output."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bridge.cli.client import Client, default_key
from server.config import Settings

# Piped output keeps whole rows (ids unbroken) for grep and scripts. No emoji codes:
# a model id like `ft:base:org:memo:…` must not print as "ft:base:org📝…".
console = Console(width=None if sys.stdout.isatty() else 240, emoji=False)
err = Console(stderr=True, emoji=False)

Address = Annotated[
    str, typer.Option(envvar="TUNEWIRE_ADDRESS", help="gRPC address of the server.")
]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="TUNEWIRE_API_KEY", help="API key (default: <home>/api-key)."),
]


def connect(address: str, api_key: str | None) -> Client:
    return Client(address, api_key or default_key(Settings().home))


def fail(error: grpc.RpcError) -> NoReturn:
    err.print(f"[red]error:[/red] {error.code().name}: {escape(error.details() or '')}")
    raise typer.Exit(1)


def show(message: Message) -> None:
    console.print_json(json_format.MessageToJson(message, preserving_proto_field_name=True))


def new_table(*columns: str) -> Table:
    # Ids are what people copy from these tables: fold long ones, never crop them.
    out = Table()
    for column in columns:
        out.add_column(column, overflow="fold")
    return out
