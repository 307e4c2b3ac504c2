"""Connections on both ports of a real `tunewire up`: silent sockets neither lock
callers out nor stay open forever, over the REST cap a request is answered 503
rather than left waiting, and many SSE watchers of one job each get every event.

The server runs with short timeouts (set through the environment) so the tests take
seconds; the production defaults are in server.config and bridge.settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import SAMPLE_CHAT, Server, launch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tunewire.v1 import auth_pb2, jobs_pb2

REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
SILENT = 300  # silent sockets per port
HTTP_CAP = 600  # TUNEWIRE_HTTP_MAX_CONNECTIONS: above SILENT, and above the 500 SSE watchers
TIMEOUT = 1.0  # header, body and handshake timeouts, seconds
DEADLINE = 20.0  # for anything the server must do within TIMEOUT, on a loaded machine
WATCH_DEADLINE = 60.0


def rest_url(srv: Server) -> str:
    deadline = time.monotonic() + DEADLINE
    while not (ready := REST_READY.search(srv.stdout)):
        assert time.monotonic() < deadline, srv.stdout
        time.sleep(0.05)
    return f"http://{ready.group(1)}:{ready.group(2)}"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """`tunewire up` with short read timeouts and a REST connection cap of HTTP_CAP."""
    root = tmp_path_factory.mktemp("connections")
    srv = launch(
        root / "home",
        models_dir,
        root / "logs",
        TUNEWIRE_HTTP_MAX_CONNECTIONS=str(HTTP_CAP),
        TUNEWIRE_HTTP_HEADER_TIMEOUT_SECONDS=str(TIMEOUT),
        TUNEWIRE_HTTP_BODY_TIMEOUT_SECONDS=str(TIMEOUT),
        TUNEWIRE_GRPC_HANDSHAKE_TIMEOUT_SECONDS=str(TIMEOUT),
    )
    try:
        yield srv
    finally:
        try:
            code = srv.terminate()
        finally:
            srv.kill()
    assert code == 0, srv.stderr


def rest(srv: Server) -> httpx.Client:
    return httpx.Client(
        base_url=rest_url(srv),
        headers={"Authorization": f"Bearer {srv.first_key}"},
        timeout=DEADLINE,
    )


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def open_silent(port: int, n: int) -> list[socket.socket]:
    """`n` TCP connections to 127.0.0.1:port that send nothing."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            sock.setblocking(False)
            sockets.append(sock)
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def wait_closed(sockets: list[socket.socket], within: float) -> dict[socket.socket, bytes]:
    """Wait until the server has closed every socket; returns what each received."""
    received = dict.fromkeys(sockets, b"")
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + within
        while selector.get_map():
            left = deadline - time.monotonic()
            assert left > 0, f"{len(selector.get_map())} of {len(sockets)} sockets still open"
            for key, _ in selector.select(timeout=left):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                if data:
                    received[key.fileobj] += data  # type: ignore[index]
                else:
                    selector.unregister(key.fileobj)
    return received


# --- REST --------------------------------------------------------------------------------


def test_rest_answers_beside_silent_sockets_and_closes_them(guarded: Server) -> None:
    silent = open_silent(port_of(rest_url(guarded)), SILENT)
    try:
        opened = time.monotonic()
        with rest(guarded) as http:
            reply = http.get("/tunewire/v1/caller")
        assert reply.status_code == 200, reply.text
        received = wait_closed(silent, DEADLINE)
        assert time.monotonic() - opened >= TIMEOUT * 0.9  # closed by the timeout, not at once
        assert set(received.values()) == {b""}  # nothing was asked, so nothing is answered
    finally:
        close_all(silent)


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /tunewire/v1/caller HTTP/1.1\r\nHost: x\r\n",  # headers never end
        # With a key, so that the route reads the body (without one it answers 401).
        b"POST /tunewire/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        b"Content-Length: 100\r\n\r\n{",  # the body never ends
    ],
    ids=["headers", "body"],
)
def test_rest_answers_an_unfinished_request_408(guarded: Server, sent: bytes) -> None:
    (sock,) = open_silent(port_of(rest_url(guarded)), 1)
    try:
        sock.send(sent.replace(b"{key}", guarded.first_key.encode()))
        reply = wait_closed([sock], DEADLINE)[sock]
        assert reply.startswith(b"HTTP/1.1 408 "), reply
    finally:
        sock.close()


def test_rest_over_its_connection_cap_answers_503(guarded: Server) -> None:
    silent = open_silent(port_of(rest_url(guarded)), HTTP_CAP)
    try:
        with rest(guarded) as http:
            assert http.get("/tunewire/v1/caller").status_code == 503
            wait_closed(silent, DEADLINE)
            assert http.get("/tunewire/v1/caller").status_code == 200
    finally:
        close_all(silent)


# --- gRPC --------------------------------------------------------------------------------


def test_grpc_answers_beside_silent_sockets_and_closes_them(guarded: Server) -> None:
    silent = open_silent(port_of(guarded.address), SILENT)
    try:
        with grpc.insecure_channel(guarded.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=DEADLINE
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        caller = guarded.default.auth.GetCaller(auth_pb2.GetCallerRequest(), timeout=DEADLINE)
        assert caller.org == "default"
        wait_closed(silent, DEADLINE)
    finally:
        close_all(silent)


@pytest.mark.slow
def test_ten_thousand_silent_sockets_leave_both_ports_answering(
    tmp_path: Path, models_dir: Path
) -> None:
    """The figure in RELIABILITY.md: 5,000 silent sockets on each port, with caps that
    admit them (the defaults would answer 503 past 1,000, as the test above shows)."""
    srv = launch(
        tmp_path / "home",
        models_dir,
        tmp_path / "logs",
        TUNEWIRE_HTTP_MAX_CONNECTIONS="12000",
        TUNEWIRE_GRPC_MAX_CONNECTIONS="12000",
    )
    silent: list[socket.socket] = []
    try:
        silent += open_silent(port_of(rest_url(srv)), 5000)
        silent += open_silent(port_of(srv.address), 5000)
        started = time.monotonic()
        with grpc.insecure_channel(srv.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=DEADLINE
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with rest(srv) as http:
            assert http.get("/tunewire/v1/caller").status_code == 200
        took = time.monotonic() - started
        rss = int(
            re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{srv.process.pid}/status").read_text())[1]
        )
        print(
            f"\nFIGURE 10,000 silent sockets: health + caller in {took * 1000:.0f} ms, "
            f"server RSS {rss // 1024} MiB"
        )
    finally:
        close_all(silent)
        srv.terminate()
        srv.kill()


# --- SSE fan-out -------------------------------------------------------------------------


async def watch_sse(url: str, key: str, job_id: str, n: int, want: int) -> list[list[int]]:
    """`n` concurrent SSE watchers of `job_id`; each returns the ids it received. A
    watcher that has `want` events keeps its stream open until every watcher has
    them (or WATCH_DEADLINE passes): all n streams are live at once."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    done, everyone = 0, asyncio.Event()
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=WATCH_DEADLINE
    ) as http:

        async def watch() -> list[int]:
            nonlocal done
            ids: list[int] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_DEADLINE):
                    path = f"/tunewire/v1/jobs/{job_id}/events:stream"
                    async with http.stream("GET", path) as reply:
                        assert reply.status_code == 200
                        async for line in reply.aiter_lines():
                            if line.startswith("id:"):
                                ids.append(int(line[3:]))
                            if len(ids) == want:
                                break
                        done += 1
                        if done == n:
                            everyone.set()
                        await everyone.wait()
            return ids

        return await asyncio.gather(*(watch() for _ in range(n)))


def check_sse_fan_out(srv: Server, n: int) -> None:
    # The job stays queued (no trainers), so its stream stays open after its events.
    org = srv.default
    job = org.create_job(org.upload(SAMPLE_CHAT.read_bytes(), f"fan-out-{n}.jsonl").id)
    events = org.jobs.ListJobEvents(jobs_pb2.ListJobEventsRequest(job_id=job.id)).events
    expected = [event.sequence for event in events]
    assert len(expected) >= 2
    got = asyncio.run(watch_sse(rest_url(srv), org.key, job.id, n, len(expected)))
    starved = sum(not ids for ids in got)
    wrong = sum(ids != expected for ids in got)
    assert (starved, wrong) == (0, 0), f"of {n}: {starved} starved, {wrong} without every event"


# The session's server, with the default timeouts: under a burst of watchers on a busy
# machine, the guarded server's 1 s header timeout could close a watcher's connection
# before its request is read.
def test_sse_watchers_each_get_every_event(server: Server) -> None:
    check_sse_fan_out(server, 200)


@pytest.mark.slow
def test_sse_watchers_each_get_every_event_500(server: Server) -> None:
    check_sse_fan_out(server, 500)
