"""`x-request-id` on every response of the bridge, on every surface: the client's own id
when it sent a sane one, else a new `req_…` (server.request_ids). OpenAI's SDKs show it
as `_request_id`. While the request is served the id is `request_ids.current`, so the
bridge's log lines carry it and its calls to the control plane send it on as gRPC
metadata (bridge.deps), where the control plane's log lines carry it too. What uvicorn
answers before a request reaches the app (a malformed request, a timeout) gets a new
id (bridge.main)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import request_ids

HEADER = request_ids.KEY.encode("latin-1")


class RequestIds:
    """ASGI middleware that gives each HTTP request its id and sends it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), b"")
        ident = request_ids.accept(given.decode("latin-1"))
        # No reset: uvicorn serves each request in a task of its own, so the id ends with
        # it, and uvicorn's log line for an exception that escaped the app still has it.
        request_ids.current.set(ident)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, header(ident)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def header(ident: str | None = None) -> tuple[bytes, bytes]:
    """The header, with `ident` or a new id."""
    return HEADER, (ident or request_ids.new()).encode("latin-1")


def written(response: bytes) -> bytes:
    """A whole response that is written to the socket directly, with a new id."""
    status_line, _, rest = response.partition(b"\r\n")
    name, value = header()
    return b"%s\r\n%s: %s\r\n%s" % (status_line, name, value, rest)


def install(app: FastAPI) -> None:
    """Put RequestIds outside all of `app`'s middleware. `app.add_middleware` would put
    it inside Starlette's ServerErrorMiddleware, whose 500 for a crash would go out
    without the id."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestIds(build())  # type: ignore[method-assign]
