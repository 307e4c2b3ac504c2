"""Route dependencies, as Annotated aliases: the backend, the settings, the caller's key."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from bridge.backend import Backend, Metadata
from bridge.errors import ApiError, Code
from bridge.settings import BridgeSettings
from server import request_ids
from tunewire.v1 import auth_pb2


def _backend(request: Request) -> Backend:
    return request.app.state.backend


def _settings(request: Request) -> BridgeSettings:
    return request.app.state.settings


_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")

# auto_error=False: a missing key is answered by our own 401, in each surface's envelope.
_bearer_scheme = HTTPBearer(auto_error=False, description="A Tunewire API key.")


def _auth(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Metadata:
    """The caller's key and the request's id as gRPC metadata; the control plane checks
    the key."""
    if credentials is None or not credentials.credentials:
        raise ApiError.of(
            Code.UNAUTHENTICATED, "missing API key: send 'Authorization: Bearer <api key>'"
        )
    # gRPC metadata is printable ASCII: any other byte (Starlette reads headers as
    # Latin-1) would fail the call itself, and is no key the server ever issued.
    if not _PRINTABLE_ASCII.fullmatch(credentials.credentials):
        raise ApiError.of(Code.UNAUTHENTICATED, "invalid API key")
    # Every call the bridge makes takes this metadata, so the control plane's log lines
    # for it carry the request's id (bridge.request_ids).
    return (
        ("authorization", f"Bearer {credentials.credentials}"),
        (request_ids.KEY, request_ids.current.get() or request_ids.new()),
    )


async def check_key(request: Request) -> None:
    """Raise unless the request carries a live key: AuthService.GetCaller, before the
    route reads anything else. The route's own calls check the key again; the lookup is
    one indexed query, and a key revoked in between still gets 401 from them."""
    metadata = _auth(await _bearer_scheme(request))
    await _backend(request).auth.GetCaller(auth_pb2.GetCallerRequest(), metadata=metadata)


BackendDep = Annotated[Backend, Depends(_backend)]
SettingsDep = Annotated[BridgeSettings, Depends(_settings)]
Auth = Annotated[Metadata, Depends(_auth)]


# Request numbers that land in protobuf integer fields: out of range is a 422
# naming the field, never a failed assignment (a 500) deeper down.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
