"""`python -m bridge`: the REST bridge alone, in front of a running control plane.

    python -m bridge --grpc-address 127.0.0.1:50051 --http-port 8080

Every option is also a TUNEWIRE_* environment variable (see bridge.settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from bridge.main import create_app, serve
from bridge.settings import BridgeSettings
from server import logs


async def run(settings: BridgeSettings) -> None:
    serving = asyncio.ensure_future(
        serve(create_app(settings.grpc_address, settings), settings.host, settings.http_port)
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, serving.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serving


def main() -> None:
    settings = BridgeSettings(_cli_parse_args=True)
    logs.setup(settings.log_level)  # structured, as `tunewire up` writes them
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
