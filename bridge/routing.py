"""The route class every surface's router uses: a bad key is 401 whatever else is wrong
with the request, every body is limited while it streams in, JSON is read one strict
way, and failures are answered in the surface's envelope."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from fastapi import Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import Message, Receive

from bridge.deps import check_key
from bridge.errors import ApiError, Code, Envelope, as_api_error
from bridge.multipart import boundary_of
from server.errors import MAX_ECHOED, cut

log = logging.getLogger("tunewire.bridge")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Failures answered in the surface's envelope; anything else is a bug (a 500).
ANSWERED = (ApiError, grpc.aio.AioRpcError, RequestValidationError, HTTPException)


def route_class(envelope: Envelope, media_type: str = "application/json") -> type[APIRoute]:
    """An APIRoute that checks the caller's key before any other check of the request,
    limits its body, and answers its failures in `envelope`, with the mapped HTTP status."""

    class SurfaceRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()
            takes_form = _takes_form(self)

            async def handle(request: Request) -> Response:
                checked = request.method in BODY_METHODS
                body = _LimitedBody(request, takes_form)
                request = _Request(request.scope, body.receive)
                try:
                    if checked:
                        # Before FastAPI reads the body: a bad key is 401 whatever the
                        # body holds, and nobody without a key gets one parsed or streamed.
                        await check_key(request)
                    try:
                        body.check_length()
                        return await handler(request)
                    except ANSWERED:
                        # A request refused before its RPC ran (a bad query or path): the
                        # key outranks it. Only here, so a GET's success costs no extra call.
                        if not checked:
                            await check_key(request)
                        raise
                except (ClientDisconnect, *ANSWERED) as error:
                    # FastAPI wraps what fails while it reads a body in an HTTPException.
                    if isinstance(error.__cause__ or error, ClientDisconnect):
                        # Gone mid-request (an upload cut off): nobody reads an answer.
                        return Response(status_code=499)
                    failure = as_api_error(error)
                    if failure.http_status >= 500 and failure.code != Code.UNIMPLEMENTED:
                        log.warning("%s %s: %s", request.method, request.url.path, failure.message)
                    return JSONResponse(
                        envelope(failure), status_code=failure.http_status, media_type=media_type
                    )

            return handle

    # Read by `unrouted`, so a request no route took is answered as this surface's are.
    SurfaceRoute.error_envelope = staticmethod(envelope)  # type: ignore[attr-defined]
    SurfaceRoute.error_media_type = media_type  # type: ignore[attr-defined]
    return SurfaceRoute


def unrouted(
    surfaces: Mapping[str, type[APIRoute]],
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The app's handler for what Starlette's router refuses outside every route: a path
    no route has (404) or a method no route of the path takes (405, with its `Allow`).
    `surfaces` maps a path prefix to the route class of the surface under it; the
    longest prefix the path has picks the envelope, so each surface's clients parse the
    refusal as they parse its other errors. Outside every surface (the dashboard's
    files), FastAPI's own `{"detail"}` answers."""
    table = sorted(
        ((prefix.rstrip("/"), route) for prefix, route in surfaces.items()),
        key=lambda item: len(item[0]),
        reverse=True,
    )

    async def handle(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        path = _route_path(request)
        for prefix, route in table:
            if path == prefix or path.startswith(prefix + "/"):
                headers = dict(error.headers or {})
                if error.status_code == 405:
                    headers["Allow"] = _allowed(request)
                failure = _refusal(request.method, path, error.status_code, headers) or (
                    as_api_error(error)
                )
                return JSONResponse(
                    route.error_envelope(failure),  # type: ignore[attr-defined]
                    status_code=failure.http_status,
                    headers=headers,
                    media_type=route.error_media_type,  # type: ignore[attr-defined]
                )
        return await http_exception_handler(request, error)

    return handle


def _route_path(request: Request) -> str:
    """The path routes match, without the app's root path (as Starlette's router sees it)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


# The methods a 405's `Allow` may name.
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method some route takes at the request's path. Starlette's `Allow` names
    only the methods of the first route of the path, which may be one of several (GET
    and POST on a collection are two routes). Asked of the router itself, method by
    method, so routers included in routers answer too."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    )


def _refusal(method: str, path: str, status: int, headers: dict[str, str]) -> ApiError | None:
    """The router's 404 or 405 as an error; None for any other status."""
    shown = cut(path, MAX_ECHOED)
    if status == 404:
        # OpenAI's own words for a path it does not serve.
        return ApiError.of(Code.NOT_FOUND, f"Invalid URL ({method} {shown})")
    if status == 405:
        return ApiError.of(
            Code.UNIMPLEMENTED,
            f"Method {method} is not allowed for {shown}; allowed: {headers['Allow']}",
            http_status=405,
        )
    return None


def _takes_form(route: APIRoute) -> bool:
    """Whether the route documents a multipart form body: those stream it through
    bridge.uploads, which limits it part by part."""
    content = (route.openapi_extra or {}).get("requestBody", {}).get("content", {})
    return "multipart/form-data" in content


class _LimitedBody:
    """The request's body, limited to max_json_body_bytes: refused at its Content-Length
    when it gives one, else as soon as the bytes that came pass the limit. A multipart
    form sent to a route that takes one is limited by bridge.uploads instead."""

    def __init__(self, request: Request, takes_form: bool) -> None:
        self._receive: Receive = request.receive
        self._received = 0
        is_form = takes_form and boundary_of(request.headers.get("content-type", ""))
        self._limit = None if is_form else request.app.state.settings.max_json_body_bytes
        self._length = request.headers.get("content-length", "")

    def check_length(self) -> None:
        if self._limit is not None and self._length.isdigit() and int(self._length) > self._limit:
            raise self._too_large()

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and self._limit is not None:
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                raise self._too_large()
        return message

    def _too_large(self) -> ApiError:
        return ApiError.invalid([("body", f"is larger than {self._limit} bytes")], http_status=413)


class _Request(Request):
    """A request whose JSON is read by `parse_json`, for FastAPI's body parameters and
    the routes that read it themselves alike."""

    async def json(self) -> Any:
        if not hasattr(self, "_parsed"):
            self._parsed = parse_json(await self.body())
        return self._parsed


# A JSON escape of a UTF-16 surrogate: the body may hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(body: bytes) -> Any:
    """A JSON body as Python values, or a 400 naming `body` or the bad field: JSON that
    is not UTF-8, nests deeper than the parser goes, or holds a lone UTF-16 surrogate
    (a string no protobuf field or encoder takes)."""
    try:
        value = json.loads(body.decode("utf-8-sig"))
    except RecursionError:
        raise ApiError.invalid([("body", "is nested too deeply")]) from None
    except ValueError as error:  # also UnicodeDecodeError
        raise ApiError.invalid([("body", f"is not JSON: {error}")]) from None
    # Decoding strictly left surrogates only as escapes; the walk runs only if there are any.
    if _SURROGATE_ESCAPE.search(body) and (field := _lone_surrogate(value)) is not None:
        raise ApiError.invalid([(field, "is not valid Unicode: it has a lone UTF-16 surrogate")])
    return value


def _lone_surrogate(value: Any) -> str | None:
    """Where a string (or a key) holds a surrogate (a pair decodes to one character, so
    any left is lone), as `a.b[2]`; `body` for the body itself; None if nowhere."""
    # (value, where) with where as (parent's where, key): paths are spelled out only
    # for the one found, so the walk stays linear however deep the body nests.
    pending: list[tuple[Any, Any]] = [(value, None)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return _spelled(where)
        elif isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return _spelled((where, key))
                pending.append((child, (where, key)))
        elif isinstance(item, list):
            pending.extend((child, (where, i)) for i, child in enumerate(item))
    return None


def _spelled(where: Any) -> str:
    keys = []
    while where is not None:
        where, key = where
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out or "body"
