"""What every `tunewire` command shares: consoles, the client options, error output."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import grpc
import typer
from rich.console import Console
from rich.markup import escape

from bridge.cli.client import Client, default_key
from server.config import Settings, dialable

# Piped output keeps whole rows (ids unbroken) for grep and scripts. No emoji codes:
# a model id like `ft:base:org:memo:…` must not print as "ft:base:org📝…".
console = Console(width=None if sys.stdout.isatty() else 240, emoji=False)
err = Console(stderr=True, emoji=False)

Address = Annotated[
    str | None,
    typer.Option(
        envvar="TUNEWIRE_ADDRESS",
        help="gRPC address of the server (default: where `tunewire up` serves by the same "
        "settings, TUNEWIRE_HOST:TUNEWIRE_GRPC_PORT, 127.0.0.1:50051 unless set).",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="TUNEWIRE_API_KEY", help="API key (default: <home>/api-key)."),
]


def connect(address: str | None, api_key: str | None) -> Client:
    """A client of `address` (the --address flag or TUNEWIRE_ADDRESS), else of the server
    these settings describe."""
    settings = Settings()
    address = address or dialable(settings.host, settings.grpc_port)
    return Client(address, api_key or default_key(settings.home))


def fail(error: grpc.RpcError) -> NoReturn:
    err.print(f"[red]error:[/red] {error.code().name}: {escape(error.details() or '')}")
    raise typer.Exit(1)
