"""The bridge's app: one FastAPI app over one grpc.aio channel to the control plane,
with a router per surface, and `serve` to run it in the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge import dashboard, request_ids
from bridge.backend import Backend
from bridge.routes import cohere, helix, native, openai, truefoundry, webhooks
from bridge.routing import unrouted
from bridge.settings import BridgeSettings

GRACE_SECONDS = 5
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\nconnection: close\r\n\r\nRequest Timeout"
)
DESCRIPTION = """\
Tunewire's REST bridge. The native API is under `/tunewire` (the gRPC API as
JSON, transcoded from its `google.api.http` annotations); OpenAI's API is at
`/v1`, Cohere's at `/cohere/v1`, Helix's at `/api/v1` and TrueFoundry's jobs at
`/api/llm`. Every call takes `Authorization: Bearer <api key>`.
The web dashboard is at `/ui/`.
"""


def create_app(grpc_address: str, settings: BridgeSettings | None = None) -> FastAPI:
    """The bridge in front of the control plane at `grpc_address`."""
    settings = (settings or BridgeSettings()).model_copy(update={"grpc_address": grpc_address})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backend = Backend.connect(grpc_address)
        try:
            yield
        finally:
            await app.state.backend.close()

    app = FastAPI(title="Tunewire", version="v1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    request_ids.install(app)  # x-request-id on every response, errors and unknown paths too
    for surface in (native, openai, webhooks, cohere, helix, truefoundry):
        app.include_router(surface.router)
    app.include_router(cohere.router_v2)  # Cohere's v2 chat, beside its v1 API
    dashboard.mount(app)  # the web dashboard at /ui/, a client of the native routes
    # An unknown path or method under a surface's prefix, in that surface's envelope.
    app.add_exception_handler(
        HTTPException,
        unrouted(
            {
                native.PREFIX: native.router.route_class,
                "/v1": openai.OpenAIRoute,
                "/cohere/v1": cohere.router.route_class,
                "/cohere/v2": cohere.router_v2.route_class,
                "/api/v1": helix.router.route_class,
                "/api/llm": openai.OpenAIRoute,  # TrueFoundry's API is OpenAI's
            }
        ),
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            # The native routes refer to the protobuf messages by full name.
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                native.component_schemas()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: whoever runs `serve` owns the process's
    signals (the gRPC server beside it, or `python -m bridge`) and stops the
    bridge by cancelling it. Prints `ready_line` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.ready_line, flush=True)


class _TimedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol plus the read timeouts it lacks (it only times the
    wait between keep-alive requests, so a connection that never finishes a request
    would be held forever): a request's line and headers must arrive within the
    header timeout of the connection (or of the request's first byte), and its body
    may not stall for longer than the body timeout. Past either, the connection is
    closed, after a 408 if a request had begun and no response has."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings: BridgeSettings = self.config.app.state.settings
        self.header_timeout = settings.http_header_timeout_seconds
        self.body_timeout = settings.http_body_timeout_seconds
        self.read_timer: asyncio.TimerHandle | None = None
        self.request_begun = False

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if self.flow.read_paused:
            # We stopped reading (the app has not taken the body yet): not the client's fault.
            self._arm(self.body_timeout)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The body stalled: the app's receive() now says disconnected, and what it
            # sends is dropped.
            answer = not cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            answer = self.request_begun
        if answer:
            self.transport.write(request_ids.written(REQUEST_TIMEOUT))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request_begun = True
        if self.read_timer is None:  # a keep-alive request (a new connection's is timed)
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.body_timeout)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self.request_begun = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # A request too malformed to reach the app: uvicorn answers it, with its default
        # headers, and the id every answer carries among them for this one answer.
        shared = self.server_state.default_headers
        self.server_state.default_headers = [*shared, request_ids.header()]
        try:
            super().send_400_response(msg)
        finally:
            self.server_state.default_headers = shared


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # for sockets that say they are TCP; without it each small reply waits ~40 ms
    # on Nagle's algorithm and the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` in the running loop until cancelled (port 0 picks a free one).

    Prints `tunewire: serving REST on HOST:PORT` once it accepts connections. On
    cancellation it stops accepting, lets requests in flight finish for up to
    GRACE_SECONDS (then cancels them: live streams would never end), closes the
    channel and re-raises.
    """
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    settings: BridgeSettings = app.state.settings
    config = uvicorn.Config(
        app,
        http=_TimedProtocol,
        lifespan="on",
        log_level=settings.log_level,
        # uvicorn's loggers propagate to the process's handler (server.logs): structured
        # lines that carry the request id, as the bridge's own do.
        log_config=None,
        timeout_graceful_shutdown=GRACE_SECONDS,
        timeout_keep_alive=settings.http_keep_alive_seconds,  # type: ignore[arg-type]
        limit_concurrency=settings.http_max_connections,
    )
    server = _Server(config, f"tunewire: serving REST on {bound_host}:{bound_port}")
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
    finally:
        sock.close()
