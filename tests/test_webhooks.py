"""Webhooks against a real receiver: a small HTTP server on 127.0.0.1 in this process
that verifies every request with the `standardwebhooks` library (and OpenAI's SDK), and
can be made to answer 500 or to refuse connections. Jobs that succeed, fail and are
cancelled each send their event; an outage loses none of them, retries keep their
`webhook-id`, and a control plane restarted mid-backoff still delivers. Endpoints on
private or loopback addresses are refused unless the server allows them (these tests'
servers do; the session's server does not). Traffic goes to 127.0.0.1 only."""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from conftest import SAMPLE_CHAT, Authed, Org, Server, fails, invalid
from standardwebhooks import Webhook

from server import webhooks
from server.config import Settings
from tunewire.v1 import jobs_pb2, webhooks_pb2, webhooks_pb2_grpc

Job = jobs_pb2.Job
Endpoint = webhooks_pb2.WebhookEndpoint
Delivery = webhooks_pb2.WebhookDelivery
WAIT = 240.0
# Fast retries: milliseconds, capped well under a second, over a window the tests outlast.
FAST = {
    "TUNEWIRE_WEBHOOK_ALLOW_PRIVATE": "true",
    "TUNEWIRE_WEBHOOK_BACKOFF_SECONDS": "0.05",
    "TUNEWIRE_WEBHOOK_BACKOFF_CAP_SECONDS": "0.4",
    "TUNEWIRE_WEBHOOK_RETRY_WINDOW_SECONDS": "600",
    "TUNEWIRE_WEBHOOK_TIMEOUT_SECONDS": "5",
}


REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")


def rest_url(srv: Server) -> str:
    found = REST_READY.search(srv.stdout)
    assert found, srv.stdout
    return f"http://{found.group(1)}:{found.group(2)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the receiver -------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str
    verified: bool
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Webhooks at http://127.0.0.1:<port>/<path>, each path with its endpoint's secret."""

    port: int = field(default_factory=free_port)
    secrets: dict[str, str] = field(default_factory=dict)
    status: int = 200
    got: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def up(self, status: int = 200) -> None:
        self.status = status
        if self._server is not None:
            return
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = self.path.lstrip("/")
                try:
                    Webhook(receiver.secrets[path]).verify(body, headers)
                    verified = True
                except Exception:  # noqa: BLE001 - recorded, and asserted on
                    verified = False
                status = receiver.status
                with receiver._lock:
                    receiver.got.append(Received(path, headers, body, verified, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.got)

    def delivered(self, path: str) -> list[Received]:
        return [r for r in self.requests() if r.path == path and r.status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    try:
        yield found
    finally:
        found.down()


def stub(org: Org) -> Any:
    return Authed(webhooks_pb2_grpc.WebhookServiceStub(org.client.channel), org.client.metadata)


def create_endpoint(org: Org, receiver: Receiver, path: str, *types: str) -> Endpoint:
    request = webhooks_pb2.CreateWebhookEndpointRequest(
        endpoint=Endpoint(url=receiver.url(path), event_types=types)
    )
    endpoint = stub(org).CreateWebhookEndpoint(request)
    assert endpoint.secret.startswith("whsec_")
    receiver.secrets[path] = endpoint.secret
    return endpoint


def deliveries(org: Org, endpoint_id: str) -> list[Delivery]:
    request = webhooks_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id, page_size=100)
    return list(stub(org).ListWebhookDeliveries(request).deliveries)


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def weightless_lines(n: int) -> bytes:
    """Valid chat data with nothing to learn (every assistant turn has weight 0): a job on
    it fails at once, and is never retried."""
    return b"".join(
        (
            f'{{"messages": [{{"role": "user", "content": "q{i}"}}, '
            f'{{"role": "assistant", "content": "a{i}", "weight": 0}}]}}\n'
        ).encode()
        for i in range(n)
    )


# --- the tests ----------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_and_stops_at_the_window() -> None:
    settings = Settings(
        webhook_backoff_seconds=1,
        webhook_backoff_cap_seconds=5,
        webhook_retry_window_seconds=20,
    )
    waits = [webhooks.next_attempt(settings, 0, n, 0) for n in range(1, 6)]
    for wait, base in zip(waits, [1, 2, 4, 5, 5], strict=True):
        assert base <= wait <= base * 1.2
    assert webhooks.next_attempt(settings, 0, 9, 19) == 20  # the last try: the window's end
    assert webhooks.next_attempt(settings, 0, 10, 20) is None


def test_every_job_event_arrives_signed_through_an_outage(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    receiver.up(status=500)  # failing at first
    srv = start_server(
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_HEARTBEAT_SECONDS="0.5",
        WANDB_MODE="offline",
        **FAST,
    )
    org = srv.default
    every = create_endpoint(org, receiver, "every")
    failures = create_endpoint(org, receiver, "failures", "fine_tuning.job.failed")
    sample = org.upload(SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
    nothing = org.upload(weightless_lines(12), "weightless.jsonl")
    hp = jobs_pb2.Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=5)
    good = org.create_job(sample.id, seed=1, hyperparameters=hp)
    bad = org.create_job(nothing.id, seed=2, hyperparameters=hp)
    dropped = org.create_job(sample.id, seed=3, hyperparameters=hp)
    org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=dropped.id))

    # 500s, then refused connections, then up.
    wait_for(lambda: len(receiver.requests()) >= 4, "answered 500s")
    receiver.down()
    wait_for(
        lambda: any(
            a.status_code == 0 and "Connect" in a.error
            for d in deliveries(org, every.id)
            for a in d.attempts
        ),
        "a refused attempt",
    )
    receiver.up(status=200)

    finals = {
        good.id: "fine_tuning.job.succeeded",
        bad.id: "fine_tuning.job.failed",
        dropped.id: "fine_tuning.job.cancelled",
    }
    wait_for(lambda: len(receiver.delivered("every")) >= 3, "three events", WAIT)
    wait_for(lambda: receiver.delivered("failures"), "the failed job's event")
    for job_id, state in (
        (good.id, Job.STATE_SUCCEEDED),
        (bad.id, Job.STATE_FAILED),
        (dropped.id, Job.STATE_CANCELLED),
    ):
        assert org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id)).state == state

    got = receiver.requests()
    assert got and all(r.verified for r in got), [r.headers for r in got if not r.verified]
    events = {r.event["data"]["id"]: r.event for r in receiver.delivered("every")}
    assert {job: e["type"] for job, e in events.items()} == finals
    for event in events.values():
        assert event["object"] == "event" and event["id"].startswith("evt_")
        assert isinstance(event["created_at"], int) and set(event) == {
            "id",
            "object",
            "type",
            "created_at",
            "data",
        }
    # At least once, and exactly once when acknowledged; one webhook-id per event and
    # endpoint, the same on every retry.
    for path in ("every", "failures"):
        ids_by_event: dict[str, set[str]] = {}
        for r in (r for r in got if r.path == path):
            ids_by_event.setdefault(r.event["id"], set()).add(r.headers["webhook-id"])
        assert all(len(ids) == 1 for ids in ids_by_event.values()), ids_by_event
        delivered = [r.headers["webhook-id"] for r in receiver.delivered(path)]
        assert len(delivered) == len(set(delivered)) == len(ids_by_event)
    (only,) = receiver.delivered("failures")
    assert only.event["type"] == "fine_tuning.job.failed" and only.event["data"]["id"] == bad.id
    # OpenAI's SDK accepts them as its own webhooks.
    sdk = openai.OpenAI(api_key="unused", webhook_secret=every.secret)
    for r in receiver.delivered("every"):
        assert sdk.webhooks.unwrap(r.body, r.headers).data.id in finals

    # The delivery log: each delivered, its attempts as the receiver saw them.
    log = {d.id: d for d in deliveries(org, every.id)}
    assert set(log) == {r.headers["webhook-id"] for r in got if r.path == "every"}
    for delivery in log.values():
        assert delivery.state == Delivery.STATE_DELIVERED
        seen = [r.status for r in got if r.headers["webhook-id"] == delivery.id]
        assert [a.status_code for a in delivery.attempts if a.status_code] == seen
        assert delivery.attempt_count == len(delivery.attempts) >= len(seen)
        assert not delivery.HasField("next_attempt_time")
    retried = [d for d in log.values() if d.attempt_count > 1]
    assert retried, "the outage should have made retries"

    # REST: the same log and endpoints, OpenAI-style and native.
    with httpx.Client(
        base_url=rest_url(srv), headers={"Authorization": f"Bearer {org.key}"}, timeout=30
    ) as http:
        listed = http.get("/v1/webhooks").json()
        assert {e["id"] for e in listed["data"]} == {every.id, failures.id}
        assert all(e["secret"] is None for e in listed["data"])
        shown = http.get(f"/v1/webhooks/{every.id}/deliveries", params={"limit": 100}).json()
        assert {d["id"] for d in shown["data"]} == set(log)
        assert {d["status"] for d in shown["data"]} == {"delivered"}
        assert {d["payload"]["data"]["id"] for d in shown["data"]} == set(finals)
        native = http.get(f"/tunewire/v1/webhook_endpoints/{every.id}/deliveries").json()
        assert {d["id"] for d in native["deliveries"]} == set(log)


def test_a_restart_mid_backoff_still_delivers(
    start_server: Callable[..., Server], receiver: Receiver, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {
        **FAST,
        "TUNEWIRE_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "TUNEWIRE_WEBHOOK_BACKOFF_CAP_SECONDS": "1",
    }
    srv = start_server(home=home, **env)  # the receiver is not listening yet
    org = srv.default
    endpoint = create_endpoint(org, receiver, "hooks")
    sample = org.upload(SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
    job = org.create_job(sample.id, seed=4)
    org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    (pending,) = wait_for(
        lambda: [d for d in deliveries(org, endpoint.id) if d.attempt_count >= 2],
        "two refused attempts",
    )
    assert pending.state == Delivery.STATE_PENDING and pending.HasField("next_attempt_time")
    assert srv.terminate() == 0, srv.stderr

    receiver.up()
    again = start_server(home=home, **env)
    org = Org("default", srv.first_key, again.address)
    again.orgs.append(org)
    (arrived,) = wait_for(lambda: receiver.delivered("hooks"), "the delivery after the restart")
    assert arrived.verified and arrived.headers["webhook-id"] == pending.id
    assert arrived.event["type"] == "fine_tuning.job.cancelled"
    assert arrived.event["data"] == {"id": job.id}
    (done,) = deliveries(org, endpoint.id)
    assert done.id == pending.id and done.state == Delivery.STATE_DELIVERED
    assert done.attempt_count >= 3 and done.attempts[-1].status_code == 200


def test_endpoints_on_private_addresses_are_refused(server: Server) -> None:
    """The session's server has no `webhook_allow_private`: nothing is ever sent here."""
    org = server.default
    for url in (
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
    ):
        request = webhooks_pb2.CreateWebhookEndpointRequest(endpoint=Endpoint(url=url))
        violations = invalid(stub(org).CreateWebhookEndpoint, request)
        assert set(violations) == {"endpoint.url"}, url
        assert "public addresses only" in violations["endpoint.url"], violations
    request = webhooks_pb2.CreateWebhookEndpointRequest(
        endpoint=Endpoint(url="ftp://example.com/x", event_types=["fine_tuning.job.paused"])
    )
    assert set(invalid(stub(org).CreateWebhookEndpoint, request)) == {
        "endpoint.url",
        "endpoint.event_types",
    }
    assert not stub(org).ListWebhookEndpoints(webhooks_pb2.ListWebhookEndpointsRequest()).endpoints
    with httpx.Client(
        base_url=rest_url(server), headers={"Authorization": f"Bearer {org.key}"}, timeout=30
    ) as http:
        refused = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
        assert refused.status_code == 400, refused.text
        assert "loopback" in refused.json()["error"]["message"]


def test_endpoints_belong_to_their_org(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    srv = start_server(**FAST)
    owner, other = srv.default, srv.new_org(f"other-{secrets.token_hex(3)}")
    endpoint = create_endpoint(owner, receiver, "mine")
    shown = stub(owner).GetWebhookEndpoint(
        webhooks_pb2.GetWebhookEndpointRequest(endpoint_id=endpoint.id)
    )
    assert shown.url == endpoint.url and not shown.secret  # the secret is shown once
    for call, request in (
        ("GetWebhookEndpoint", webhooks_pb2.GetWebhookEndpointRequest(endpoint_id=endpoint.id)),
        (
            "DeleteWebhookEndpoint",
            webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint.id),
        ),
        (
            "ListWebhookDeliveries",
            webhooks_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint.id),
        ),
    ):
        fails(grpc.StatusCode.NOT_FOUND, getattr(stub(other), call), request)
    listed = stub(other).ListWebhookEndpoints(webhooks_pb2.ListWebhookEndpointsRequest())
    assert not listed.endpoints
    # Another org's job never reaches this endpoint.
    sample = other.upload(SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
    job = other.create_job(sample.id, seed=9)
    other.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    stub(owner).DeleteWebhookEndpoint(
        webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint.id)
    )
    fails(
        grpc.StatusCode.NOT_FOUND,
        stub(owner).GetWebhookEndpoint,
        webhooks_pb2.GetWebhookEndpointRequest(endpoint_id=endpoint.id),
    )
    assert not receiver.requests()
