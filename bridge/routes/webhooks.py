"""Webhook endpoints on the OpenAI surface (`/v1/webhooks`), in OpenAI's style: objects
with `object` and unix `created_at`, lists as `{"object": "list", "data", "has_more"}`
with `after`/`limit` cursors, errors in OpenAI's envelope. OpenAI manages its webhook
endpoints in its dashboard; these routes are that, as an API. The same service is at
`/tunewire/v1/webhook_endpoints` on the native surface (transcoded from its
annotations). The events delivered are OpenAI's (`fine_tuning.job.succeeded`, ...),
signed by the Standard Webhooks scheme, so `openai.webhooks.unwrap` verifies them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from bridge.backend import after_cursor, every_page, unix
from bridge.deps import Auth, BackendDep
from bridge.routes.openai import OpenAIRoute
from tunewire.v1 import webhooks_pb2, webhooks_pb2_grpc

Endpoint = webhooks_pb2.WebhookEndpoint
Delivery = webhooks_pb2.WebhookDelivery
Limit = Annotated[int, Query(ge=1, le=100)]

router = APIRouter(prefix="/v1", tags=["webhooks"], route_class=OpenAIRoute)


class WebhookEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where events are POSTed (public https:// or http://).")
    events: list[str] | None = Field(
        default=None,
        description="Event types to receive, e.g. `fine_tuning.job.succeeded`; all if absent.",
    )
    description: str | None = None


class WebhookEndpointObject(BaseModel):
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: int
    secret: str | None = Field(
        default=None, description="The signing secret (`whsec_...`): in the create response only."
    )


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointObject]
    has_more: bool


class DeletedWebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class DeliveryAttempt(BaseModel):
    created_at: int
    status_code: int | None
    error: str | None
    duration_seconds: float


class WebhookDeliveryObject(BaseModel):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str = Field(description="The `webhook-id` header, the same on every retry.")
    endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    created_at: int
    next_attempt_at: int | None
    attempt_count: int
    attempts: list[DeliveryAttempt]
    payload: dict[str, Any]


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryObject]
    has_more: bool


def _stub(backend: BackendDep) -> webhooks_pb2_grpc.WebhookServiceStub:
    return webhooks_pb2_grpc.WebhookServiceStub(backend.channel)


def endpoint_object(endpoint: Endpoint) -> WebhookEndpointObject:
    return WebhookEndpointObject(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.event_types),
        description=endpoint.description or None,
        created_at=unix(endpoint.create_time) or 0,
        secret=endpoint.secret or None,
    )


def delivery_object(delivery: Delivery) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        status=Delivery.State.Name(delivery.state).removeprefix("STATE_").lower(),  # type: ignore[arg-type]
        created_at=unix(delivery.create_time) or 0,
        next_attempt_at=unix(delivery.next_attempt_time),
        attempt_count=delivery.attempt_count,
        attempts=[
            DeliveryAttempt(
                created_at=unix(a.time) or 0,
                status_code=a.status_code or None,
                error=a.error or None,
                duration_seconds=a.duration_seconds,
            )
            for a in delivery.attempts
        ],
        payload=json.loads(delivery.payload) if delivery.payload else {},
    )


@router.post("/webhooks")
async def create_webhook(
    body: WebhookEndpointIn, backend: BackendDep, auth: Auth
) -> WebhookEndpointObject:
    endpoint = Endpoint(
        url=body.url, event_types=body.events or [], description=body.description or ""
    )
    request = webhooks_pb2.CreateWebhookEndpointRequest(endpoint=endpoint)
    return endpoint_object(await _stub(backend).CreateWebhookEndpoint(request, metadata=auth))


@router.get("/webhooks")
async def list_webhooks(
    backend: BackendDep, auth: Auth, after: str | None = None, limit: Limit = 20
) -> WebhookEndpointList:
    items = every_page(
        _stub(backend).ListWebhookEndpoints,
        webhooks_pb2.ListWebhookEndpointsRequest(),
        "endpoints",
        auth,
    )
    page, more = await after_cursor(items, after, limit, lambda e: e.id)
    return WebhookEndpointList(data=[endpoint_object(e) for e in page], has_more=more)


@router.get("/webhooks/{webhook_id}")
async def get_webhook(webhook_id: str, backend: BackendDep, auth: Auth) -> WebhookEndpointObject:
    request = webhooks_pb2.GetWebhookEndpointRequest(endpoint_id=webhook_id)
    return endpoint_object(await _stub(backend).GetWebhookEndpoint(request, metadata=auth))


@router.delete("/webhooks/{webhook_id}")
async def delete_webhook(
    webhook_id: str, backend: BackendDep, auth: Auth
) -> DeletedWebhookEndpoint:
    request = webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=webhook_id)
    await _stub(backend).DeleteWebhookEndpoint(request, metadata=auth)
    return DeletedWebhookEndpoint(id=webhook_id)


@router.get("/webhooks/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: str, backend: BackendDep, auth: Auth, after: str | None = None, limit: Limit = 20
) -> WebhookDeliveryList:
    """The endpoint's delivery log, newest first."""
    items = every_page(
        _stub(backend).ListWebhookDeliveries,
        webhooks_pb2.ListWebhookDeliveriesRequest(endpoint_id=webhook_id),
        "deliveries",
        auth,
    )
    page, more = await after_cursor(items, after, limit, lambda d: d.id)
    return WebhookDeliveryList(data=[delivery_object(d) for d in page], has_more=more)
