"""The route class every surface's router uses: a bad key is 401 whatever else is wrong
with the request, every body is limited while it streams in, JSON is read one strict
way, and failures are answered in the surface's envelope."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from bridge.deps import check_key
from bridge.errors import ApiError, Code, Envelope, as_api_error
from bridge.multipart import boundary_of

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

    return SurfaceRoute


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
