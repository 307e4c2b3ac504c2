"""The control plane's process: the gRPC services (health, reflection, graceful stop) and
the scheduler. `serve` runs companions beside it (`tunewire up` passes the REST bridge)
and stops them first, so this package never imports the bridge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server import auth, reflection, secrets, webhooks
from server.config import Settings, dialable
from server.control_plane import ControlPlane
from server.graders import GraderServicer
from server.request_ids import RequestIds
from server.rpc import RejectMalformedRequests
from server.scheduler import Scheduler
from server.services.auth import AuthServicer
from server.services.conversations import ConversationServicer
from server.services.exports import ExportServicer
from server.services.files import FileServicer
from server.services.jobs import JobServicer
from server.services.models import ModelServicer
from server.services.uploads import UploadServicer
from server.services.webhooks import WebhookServicer
from server.services.worker import WorkerServicer
from server.store.home import make_private
from tunewire.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    exports_pb2,
    exports_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    graders_pb2,
    graders_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
    worker_pb2_grpc,
)

log = logging.getLogger("tunewire.server")

GRACE_SECONDS = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVICES = [
    (auth_pb2, "AuthService", auth_pb2_grpc.add_AuthServiceServicer_to_server, AuthServicer),
    (files_pb2, "FileService", files_pb2_grpc.add_FileServiceServicer_to_server, FileServicer),
    (jobs_pb2, "JobService", jobs_pb2_grpc.add_JobServiceServicer_to_server, JobServicer),
    (models_pb2, "ModelService", models_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer),
    (
        uploads_pb2,
        "UploadService",
        uploads_pb2_grpc.add_UploadServiceServicer_to_server,
        UploadServicer,
    ),
    (
        exports_pb2,
        "ExportService",
        exports_pb2_grpc.add_ExportServiceServicer_to_server,
        ExportServicer,
    ),
    (
        graders_pb2,
        "GraderService",
        graders_pb2_grpc.add_GraderServiceServicer_to_server,
        GraderServicer,
    ),
    (
        webhooks_pb2,
        "WebhookService",
        webhooks_pb2_grpc.add_WebhookServiceServicer_to_server,
        WebhookServicer,
    ),
    (
        conversations_pb2,
        "ConversationService",
        conversations_pb2_grpc.add_ConversationServiceServicer_to_server,
        ConversationServicer,
    ),
]


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits, and the connection limits that keep silent or abandoned
    connections from filling the port. No per-connection stream cap
    (grpc.max_concurrent_streams): the REST bridge carries all its requests on one
    connection, so the server-wide call cap bounds streams instead. No
    grpc.max_connection_age_ms: live streams last as long as their jobs.

    A fixed receive window of 4 MiB per stream: with BDP probing, gRPC widened it as far
    as the control plane fell behind a loopback upload, and during a 1 GB fine-tune upload
    (its validation sharing the CPU) the server's RSS grew by up to 180 MiB (python -m
    bench uploads). Fixed, it grew by 7-20 MiB at the same rate; 4 MiB still carries
    40 MB/s at 100 ms of round trip."""
    return [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 4 << 20),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        # Also covers the wait for the client's HTTP/2 settings after the TCP handshake,
        # so it is what closes a socket that never says anything.
        ("grpc.server_handshake_timeout_ms", int(settings.grpc_handshake_timeout_seconds * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout_seconds * 1000)),
    ]


Companion = Callable[[str], Awaitable[None]]
"""Runs beside the control plane, given its gRPC address (the REST bridge)."""


async def serve(settings: Settings, companions: Sequence[Companion] = ()) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls and stop."""
    started = time.time()
    make_private(settings.home)
    plane = ControlPlane.open(settings)
    plane.sweep_abandoned_uploads(started)
    key = auth.ensure_first_key(plane.db, settings.first_key_path)
    if key:
        print(
            f"Created the first API key, for org '{auth.DEFAULT_ORG}' "
            f"(also saved to {settings.first_key_path}):\n  {key}",
            flush=True,
        )

    server = grpc.aio.server(
        interceptors=[RequestIds(), RejectMalformedRequests()],
        options=_server_options(settings),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, *reflection.SERVICE_NAMES]
    for module, name, add, servicer in SERVICES:
        add(servicer(plane), server)
        names.append(module.DESCRIPTOR.services_by_name[name].full_name)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(plane), server)
    reflection.enable(names, server)
    # Before anything is announced: a SIGTERM right after the ready line must stop
    # the server gracefully, not kill it with the default handler.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"tunewire: serving gRPC on {settings.host}:{port}", flush=True)

    local = dialable(settings.host, port)
    scheduler = Scheduler(plane, local)
    scheduling = asyncio.create_task(scheduler.run())

    def scheduler_ended(task: asyncio.Task) -> None:
        # Without its scheduler no lease is ever taken back: stop rather than limp on.
        if not task.cancelled() and task.exception() is not None:
            log.error("the scheduler failed", exc_info=task.exception())
            stop.set()

    scheduling.add_done_callback(scheduler_ended)
    # Webhooks from the outbox, on this loop; deliveries due before a restart go now.
    sender = webhooks.Sender(plane.db, settings, secrets.box(settings.secret_key_path))
    sending = asyncio.create_task(sender.run())
    beside = [asyncio.create_task(companion(local)) for companion in companions]

    await stop.wait()

    log.warning("shutting down", extra={"fields": {"grace_seconds": GRACE_SECONDS}})
    await health_servicer.enter_graceful_shutdown()
    # Live event streams end now, told where to resume (UNAVAILABLE, which clients
    # retry), rather than when the grace runs out; unary calls get the grace.
    plane.events.close()
    plane.doorbell.ring()  # and workers waiting for a lease get an empty answer
    # Companions first: they are clients of the gRPC server and drain through it.
    for task in beside:
        task.cancel()
    for task in beside:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    scheduling.cancel()
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    await sender.close()
    # Trainers are stopped, not drained: their jobs resume from their last
    # checkpoint when the control plane starts again.
    await scheduler.shutdown()
    await server.stop(GRACE_SECONDS)
    plane.db.close()
