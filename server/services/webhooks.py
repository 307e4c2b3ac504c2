"""WebhookService: an organization's webhook endpoints and their delivery log. The
deliveries themselves are written with the events they report and sent by
`server.webhooks.Sender`."""

from __future__ import annotations

from google.protobuf import empty_pb2

from server import webhooks
from server.control_plane import ControlPlane, authenticated, caller_org
from server.secrets import box
from server.store import pages, records
from server.store.db import write
from tunewire.v1 import webhooks_pb2, webhooks_pb2_grpc

Endpoint = webhooks_pb2.WebhookEndpoint
Delivery = webhooks_pb2.WebhookDelivery


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def _get(self, endpoint_id: str) -> Endpoint:
        return records.get(self.plane.db, "webhook_endpoints", Endpoint, caller_org(), endpoint_id)

    @authenticated
    async def CreateWebhookEndpoint(
        self, request: webhooks_pb2.CreateWebhookEndpointRequest, context
    ) -> Endpoint:
        settings = self.plane.settings
        webhooks.check_endpoint(request.endpoint)
        # Resolved off the loop; refused when it reaches private addresses (unless allowed).
        await webhooks.checked_addresses(request.endpoint.url, settings.webhook_allow_private)
        with write(self.plane.db):
            return webhooks.create_endpoint(
                self.plane.db, box(settings.secret_key_path), caller_org(), request.endpoint
            )

    @authenticated
    async def GetWebhookEndpoint(
        self, request: webhooks_pb2.GetWebhookEndpointRequest, context
    ) -> Endpoint:
        return self._get(request.endpoint_id)

    @authenticated
    async def ListWebhookEndpoints(
        self, request: webhooks_pb2.ListWebhookEndpointsRequest, context
    ) -> webhooks_pb2.ListWebhookEndpointsResponse:
        rows, token = pages.newest_first(
            self.plane.db,
            "webhook_endpoints",
            "org = ?",
            [caller_org()],
            pages.page_size(request.page_size),
            request.page_token,
        )
        return webhooks_pb2.ListWebhookEndpointsResponse(
            endpoints=[Endpoint.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def DeleteWebhookEndpoint(
        self, request: webhooks_pb2.DeleteWebhookEndpointRequest, context
    ) -> empty_pb2.Empty:
        with write(self.plane.db):
            endpoint = self._get(request.endpoint_id)
            webhooks.delete_endpoint(self.plane.db, endpoint.id)
        return empty_pb2.Empty()

    @authenticated
    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        endpoint = self._get(request.endpoint_id)
        rows, token = pages.newest_first(
            self.plane.db,
            "webhook_deliveries",
            "endpoint_id = ?",
            [endpoint.id],
            pages.page_size(request.page_size),
            request.page_token,
        )
        return webhooks_pb2.ListWebhookDeliveriesResponse(
            deliveries=[Delivery.FromString(r["proto"]) for r in rows], next_page_token=token
        )
