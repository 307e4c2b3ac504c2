"""The route class every surface's router uses: a bad key is 401 whatever else is wrong
with the request, and failures are answered in the surface's envelope."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from bridge.deps import check_key
from bridge.errors import ApiError, Code, Envelope, as_api_error

log = logging.getLogger("tunewire.bridge")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def route_class(envelope: Envelope, media_type: str = "application/json") -> type[APIRoute]:
    """An APIRoute that checks the caller's key before any other check of the request
    and answers its failures in `envelope`, with the mapped HTTP status."""

    class SurfaceRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                checked = request.method in BODY_METHODS
                try:
                    if checked:
                        # Before FastAPI reads the body: a bad key is 401 whatever the
                        # body holds, and nobody without a key gets one parsed or streamed.
                        await check_key(request)
                    try:
                        return await handler(request)
                    except (ApiError, RequestValidationError):
                        # A request refused before its RPC ran (a bad query or path): the
                        # key outranks it. Only here, so a GET's success costs no extra call.
                        if not checked:
                            await check_key(request)
                        raise
                except ClientDisconnect:
                    # Gone mid-request (an upload cut off): nobody reads an answer.
                    return Response(status_code=499)
                except (ApiError, grpc.aio.AioRpcError, RequestValidationError) as error:
                    failure = as_api_error(error)
                    if failure.http_status >= 500 and failure.code != Code.UNIMPLEMENTED:
                        log.warning("%s %s: %s", request.method, request.url.path, failure.message)
                    return JSONResponse(
                        envelope(failure), status_code=failure.http_status, media_type=media_type
                    )

            return handle

    return SurfaceRoute
