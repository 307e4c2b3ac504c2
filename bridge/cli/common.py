"""What every `tunewire` command shares: consoles, the client options, error output."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import grpc
import typer
from rich.console import Console
from rich.markup import escape

from bridge.cli.client import Client, default_key
from server.config import Settings

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
# Hosts a server binds to that a client cannot dial: it reaches such a server locally,
# as the server itself does (server/app.py).
WILDCARDS = {"0.0.0.0", "::", "[::]"}
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="TUNEWIRE_API_KEY", help="API key (default: <home>/api-key)."),
]


def server_address(settings: Settings) -> str:
    """Where a server started with these settings serves gRPC, so that one TUNEWIRE_GRPC_PORT
    (and TUNEWIRE_HOST) moves the server and its CLI together."""
    host = "127.0.0.1" if settings.host in WILDCARDS else settings.host
    return f"{host}:{settings.grpc_port}"


def connect(address: str | None, api_key: str | None) -> Client:
    """A client of `address` (the --address flag or TUNEWIRE_ADDRESS), else of the server
    these settings describe."""
    settings = Settings()
    return Client(address or server_address(settings), api_key or default_key(settings.home))


def fail(error: grpc.RpcError) -> NoReturn:
    err.print(f"[red]error:[/red] {error.code().name}: {escape(error.details() or '')}")
    raise typer.Exit(1)
