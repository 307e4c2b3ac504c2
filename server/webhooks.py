"""Webhooks: an organization's endpoints, the outbox of deliveries, and the sender.

When a job reaches a final state, `job_finished` writes one delivery per subscribed
endpoint into `webhook_deliveries`, in the transaction that changes the job's state
(`lifecycle.transition`): the event can never be lost, nor sent for a change that was
rolled back. The `Sender` runs on the control plane's event loop and drains that outbox:
each delivery is POSTed, signed by the Standard Webhooks scheme (as OpenAI signs its
webhooks), until the endpoint answers 2xx, with exponential backoff up to the retry
window; each attempt is recorded in the delivery, which is the owner's delivery log. A
delivery keeps its id (the `webhook-id` header) across retries and restarts: receivers
deduplicate by it, since an attempt cut short by a crash is made again (at least once).

Endpoints must resolve to public addresses unless `webhook_allow_private` is set: checked
when one is created and again before every attempt, which then connects to the address
it checked (no second lookup that a rebinding DNS could answer differently).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
import sqlite_utils

from server.config import Settings
from server.errors import InvalidArgument
from server.ids import new_id, now, timestamp
from server.secrets import SecretBox
from server.store.db import write
from tunewire.v1 import jobs_pb2, webhooks_pb2

log = logging.getLogger("tunewire.webhooks")

Job = jobs_pb2.Job
Endpoint = webhooks_pb2.WebhookEndpoint
Delivery = webhooks_pb2.WebhookDelivery

JOB_EVENTS = {
    Job.STATE_SUCCEEDED: "fine_tuning.job.succeeded",
    Job.STATE_FAILED: "fine_tuning.job.failed",
    Job.STATE_CANCELLED: "fine_tuning.job.cancelled",
}
EVENT_TYPES = frozenset(JOB_EVENTS.values())
SECRET_PREFIX = "whsec_"
SECRET_NAME = "signing_secret"
MAX_URL = 2048
MAX_DESCRIPTION = 512
MAX_ENDPOINTS = 20  # per organization
KEPT_ATTEMPTS = 50
POLL_SECONDS = 60.0  # the sender looks at the outbox at least this often
USER_AGENT = "Tunewire-Webhooks/1"


# --- endpoints ----------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: `whsec_` and base64 of 24 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why webhooks may not go to `address` (empty when they may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for test, what in (
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (address.is_private, "a private"),
        (address.is_multicast, "a multicast"),
        (address.is_unspecified or address.is_reserved, "a reserved"),
        (not address.is_global, "a non-public"),
    ):
        if test:
            return f"{what} address ({address})"
    return ""


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint URL; InvalidArgument naming `endpoint.url`."""
    field = "endpoint.url"
    if not url:
        raise InvalidArgument.field(field, "required")
    if len(url) > MAX_URL:
        raise InvalidArgument.field(field, f"at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidArgument.field(field, f"not a URL: {error}") from None
    if parts.scheme not in ("https", "http"):
        raise InvalidArgument.field(field, "must be an https:// (or http://) URL")
    if not parts.hostname:
        raise InvalidArgument.field(field, "has no host")
    if parts.username or parts.password:
        raise InvalidArgument.field(field, "must not carry credentials")
    if parts.fragment:
        raise InvalidArgument.field(field, "must not have a #fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` resolves to (without blocking the event loop)."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))


async def checked_addresses(
    url: str, allow_private: bool
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses an endpoint URL may be reached at; InvalidArgument when none may."""
    _, host, port = split_url(url)
    try:
        addresses = await resolve(host, port)
    except OSError as error:
        raise InvalidArgument.field("endpoint.url", f"{host!r} does not resolve: {error}") from None
    if not addresses:
        raise InvalidArgument.field("endpoint.url", f"{host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if why := refusal(address):
                raise InvalidArgument.field(
                    "endpoint.url",
                    f"{host!r} resolves to {why}; webhooks go to public addresses only "
                    "(an administrator can allow private ones: TUNEWIRE_WEBHOOK_ALLOW_PRIVATE)",
                )
    return addresses


def check_endpoint(endpoint: Endpoint) -> None:
    """Every problem with a CreateWebhookEndpoint request but its URL's addresses."""
    problems: list[tuple[str, str]] = []
    try:
        split_url(endpoint.url)
    except InvalidArgument as error:
        problems += error.violations
    unknown = sorted(set(endpoint.event_types) - EVENT_TYPES)
    if unknown:
        problems.append(
            (
                "endpoint.event_types",
                f"unknown: {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}",
            )
        )
    if len(endpoint.description) > MAX_DESCRIPTION:
        problems.append(("endpoint.description", f"at most {MAX_DESCRIPTION} characters"))
    if problems:
        raise InvalidArgument(problems)


def create_endpoint(
    db: sqlite_utils.Database, box: SecretBox, org: str, request: Endpoint
) -> Endpoint:
    """Store a checked endpoint with a new secret; returns it with the secret (this once).
    In a write transaction."""
    (count,) = db.execute("SELECT COUNT(*) FROM webhook_endpoints WHERE org = ?", [org]).fetchone()
    if count >= MAX_ENDPOINTS:
        raise InvalidArgument.field("endpoint", f"at most {MAX_ENDPOINTS} endpoints per org")
    endpoint = Endpoint(
        id=new_id("wh"),
        url=request.url,
        event_types=sorted(set(request.event_types)),
        description=request.description,
        create_time=timestamp(now()),
        organization=org,
    )
    db["webhook_endpoints"].insert(
        {
            "id": endpoint.id,
            "org": org,
            "created_at": endpoint.create_time.ToNanoseconds() / 1e9,
            "proto": endpoint.SerializeToString(),
        }
    )
    secret = new_secret()
    box.put(db, endpoint.id, SECRET_NAME, secret)
    shown = Endpoint()
    shown.CopyFrom(endpoint)
    shown.secret = secret
    return shown


def delete_endpoint(db: sqlite_utils.Database, endpoint_id: str) -> None:
    """The endpoint, its secret and its deliveries. In a write transaction."""
    db.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", [endpoint_id])
    db.execute("DELETE FROM webhook_endpoints WHERE id = ?", [endpoint_id])
    SecretBox.drop(db, endpoint_id)


# --- the outbox ---------------------------------------------------------------------------

# Each database's sender, woken when a delivery is written. Control-plane code never
# awaits inside a transaction, so the sender runs only after the write has committed.
_wakers: weakref.WeakKeyDictionary[sqlite_utils.Database, Callable[[], None]] = (
    weakref.WeakKeyDictionary()
)


def payload(event_id: str, event_type: str, created_at: int, data: dict) -> str:
    """An event as OpenAI's webhooks carry it."""
    body = {"id": event_id, "object": "event", "type": event_type, "created_at": created_at}
    return json.dumps({**body, "data": data}, separators=(",", ":"))


def enqueue(db: sqlite_utils.Database, org: str, event_type: str, data: dict) -> list[str]:
    """One delivery of a new event to each of `org`'s endpoints that takes `event_type`;
    their ids. In the write transaction of the change the event reports."""
    rows = db.execute("SELECT proto FROM webhook_endpoints WHERE org = ?", [org]).fetchall()
    endpoints = [Endpoint.FromString(row[0]) for row in rows]
    endpoints = [e for e in endpoints if not e.event_types or event_type in e.event_types]
    if not endpoints:
        return []
    when = now()
    event_id = f"evt_{secrets.token_hex(12)}"
    body = payload(event_id, event_type, int(when), data)
    ids = []
    for endpoint in endpoints:
        delivery = Delivery(
            id=f"msg_{secrets.token_hex(12)}",
            endpoint_id=endpoint.id,
            event_id=event_id,
            event_type=event_type,
            payload=body,
            state=Delivery.STATE_PENDING,
            create_time=timestamp(when),
            next_attempt_time=timestamp(when),
        )
        db["webhook_deliveries"].insert(
            {
                "id": delivery.id,
                "org": org,
                "endpoint_id": endpoint.id,
                "state": delivery.state,
                "created_at": when,
                "next_attempt_at": when,
                "proto": delivery.SerializeToString(),
            }
        )
        ids.append(delivery.id)
    if (wake := _wakers.get(db)) is not None:
        wake()
    return ids


def job_finished(db: sqlite_utils.Database, job: Job) -> None:
    """`job` has just reached a final state: its event for the org's endpoints."""
    if job.state in JOB_EVENTS:
        enqueue(db, job.organization, JOB_EVENTS[job.state], {"id": job.id})


# --- signing and backoff ------------------------------------------------------------------


def sign(secret: str, message_id: str, sent_at: int, body: str) -> str:
    """The `webhook-signature` header: `v1,` and base64 of HMAC-SHA256 over
    `{id}.{timestamp}.{body}` keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{sent_at}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, message_id: str, body: str, sent_at: int | None = None) -> dict:
    sent_at = int(time.time()) if sent_at is None else sent_at
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": sign(secret, message_id, sent_at, body),
    }


def next_attempt(settings: Settings, created: float, attempts: int, at: float) -> float | None:
    """When to try again after `attempts` failed ones, the last at `at`: the backoff
    doubles from `webhook_backoff_seconds` up to its cap, with up to 20% jitter, and the
    last try is at the end of the retry window; None once the window is over."""
    end = created + settings.webhook_retry_window_seconds
    if at >= end:
        return None
    delay = settings.webhook_backoff_seconds * 2 ** min(attempts - 1, 60)
    delay = min(delay, settings.webhook_backoff_cap_seconds)
    delay *= 1 + secrets.randbelow(200) / 1000
    return min(at + delay, end)


# --- the sender ---------------------------------------------------------------------------


class Sender:
    """Drains the outbox on the control plane's loop: at most `webhook_concurrency` POSTs
    at once, each bounded by `webhook_timeout_seconds`; the loop only ever awaits."""

    def __init__(self, db: sqlite_utils.Database, settings: Settings, box: SecretBox) -> None:
        self.db, self.settings, self.box = db, settings, box
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task] = {}
        timeout = settings.webhook_timeout_seconds
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: straight to the address checked
            limits=httpx.Limits(max_connections=max(1, settings.webhook_concurrency)),
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        _wakers[self.db] = self.wake
        try:
            while True:
                self._wake.clear()
                wait = self._start_due()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            _wakers.pop(self.db, None)

    def _start_due(self) -> float:
        """Start the deliveries that are due (as many as may run); seconds until the
        next one is due."""
        room = self.settings.webhook_concurrency - len(self._inflight)
        rows = self.db.execute(
            "SELECT id, next_attempt_at FROM webhook_deliveries WHERE state = ?"
            " ORDER BY next_attempt_at LIMIT ?",
            [Delivery.STATE_PENDING, room + len(self._inflight) + 1],
        ).fetchall()
        clock = now()
        for ident, due in rows:
            if ident in self._inflight:
                continue
            if due > clock:
                return min(due - clock, POLL_SECONDS)
            if room <= 0:
                break  # a finishing delivery wakes the loop
            room -= 1
            self._inflight[ident] = asyncio.create_task(self._deliver(ident))
        return POLL_SECONDS

    async def close(self) -> None:
        """Stop: deliveries in flight are cut (and made again after a restart)."""
        for task in list(self._inflight.values()):
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._client.aclose()

    async def _deliver(self, ident: str) -> None:
        try:
            row = self.db.execute(
                "SELECT proto, state FROM webhook_deliveries WHERE id = ?", [ident]
            ).fetchone()
            if row is None or row[1] != Delivery.STATE_PENDING:
                return
            delivery = Delivery.FromString(row[0])
            started, wall = time.monotonic(), now()
            status, error = await self._post(delivery)
            attempt = Delivery.Attempt(
                time=timestamp(wall),
                status_code=status,
                error=error,
                duration_seconds=round(time.monotonic() - started, 4),
            )
            self._record(ident, attempt)
        except Exception:  # noqa: BLE001 - one delivery's bug must not stop the sender
            log.exception("webhook delivery failed unexpectedly", extra={"fields": {"id": ident}})
            await asyncio.sleep(POLL_SECONDS / 10)  # not again at once (a full disk, say)
        finally:
            self._inflight.pop(ident, None)
            self._wake.set()

    async def _post(self, delivery: Delivery) -> tuple[int, str]:
        """(HTTP status or 0, why it failed or "") of one attempt."""
        row = self.db.execute(
            "SELECT proto FROM webhook_endpoints WHERE id = ?", [delivery.endpoint_id]
        ).fetchone()
        if row is None:
            return 0, "the endpoint was deleted"
        endpoint = Endpoint.FromString(row[0])
        try:
            secret = self.box.get(self.db, endpoint.id, SECRET_NAME)
        except Exception:  # noqa: BLE001 - a lost or replaced secret.key
            secret = None
        if not secret:
            return 0, "the endpoint's signing secret cannot be read (secret.key changed?)"
        try:
            addresses = await checked_addresses(endpoint.url, self.settings.webhook_allow_private)
        except InvalidArgument as refused:
            return 0, refused.violations[0][1]
        scheme, host, port = split_url(endpoint.url)
        parts = urlsplit(endpoint.url)
        address = addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        sent = headers(secret, delivery.id, delivery.payload)
        sent["host"] = parts.netloc.rsplit("@", 1)[-1]
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds * 2):
                request = self._client.build_request(
                    "POST",
                    pinned,
                    content=delivery.payload.encode(),
                    headers=sent,
                    extensions=extensions,
                )
                response = await self._client.send(request, stream=True)
                await response.aclose()  # the body is not read: its size is the endpoint's
        except TimeoutError:
            return 0, f"timed out after {self.settings.webhook_timeout_seconds:g}s"
        except httpx.HTTPError as error:
            return 0, f"{type(error).__name__}: {error}"[:500]
        if 200 <= response.status_code < 300:
            return response.status_code, ""
        return response.status_code, f"HTTP {response.status_code}"

    def _record(self, ident: str, attempt: Delivery.Attempt) -> None:
        with write(self.db):
            row = self.db.execute(
                "SELECT proto FROM webhook_deliveries WHERE id = ?", [ident]
            ).fetchone()
            if row is None:  # its endpoint was deleted meanwhile
                return
            delivery = Delivery.FromString(row[0])
            delivery.attempt_count += 1
            delivery.attempts.append(attempt)
            del delivery.attempts[:-KEPT_ATTEMPTS]
            delivery.ClearField("next_attempt_time")
            due = None
            if not attempt.error:
                delivery.state = Delivery.STATE_DELIVERED
            else:
                created = delivery.create_time.ToNanoseconds() / 1e9
                due = next_attempt(self.settings, created, delivery.attempt_count, now())
                if due is None:
                    delivery.state = Delivery.STATE_FAILED
                else:
                    delivery.next_attempt_time.CopyFrom(timestamp(due))
            self.db.execute(
                "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, proto = ?"
                " WHERE id = ?",
                [delivery.state, due, delivery.SerializeToString(), ident],
            )
        if attempt.error:
            log.warning(
                "webhook delivery failed",
                extra={
                    "fields": {
                        "id": ident,
                        "attempt": delivery.attempt_count,
                        "error": attempt.error,
                        "state": Delivery.State.Name(delivery.state),
                    }
                },
            )
