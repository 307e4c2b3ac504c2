"""The server as a process: health, reflection, graceful stop, restarts, error hygiene, the
CLI finding it by the same settings; and what ModelService and ExportService answer before
any model exists (with a trained model they are tested in test_models_api.py)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import REPO, Server, chat_lines, clean_env, fails, invalid, launch, tunewire_command
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from server.app import GRACE_SECONDS
from server.reflection import V1_SERVICE_NAME as V1_REFLECTION
from tunewire.v1 import auth_pb2, exports_pb2, files_pb2, jobs_pb2, models_pb2

Code = grpc.StatusCode
PUBLIC = [
    "tunewire.v1.AuthService",
    "tunewire.v1.FileService",
    "tunewire.v1.JobService",
    "tunewire.v1.ModelService",
    "tunewire.v1.ExportService",
]
PUBLIC_MODULES = (auth_pb2, files_pb2, jobs_pb2, models_pb2, exports_pb2)
UNKNOWN_EXPORT = "export-000000000000000000000000"
GARBAGE = b"\xff\xff\xff\xffnot protobuf"


# --- health and reflection --------------------------------------------------------------------


def test_health_reports_serving_without_a_key(server: Server) -> None:
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *PUBLIC]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        fails(
            Code.NOT_FOUND,
            health.Check,
            health_pb2.HealthCheckRequest(service="tunewire.v1.NoSuchService"),
            timeout=10,
        )


def test_reflection_describes_the_public_api(server: Server) -> None:
    with server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
        listed = {s.name for s in reply.list_services_response.service}
        assert set(PUBLIC) | {"grpc.health.v1.Health"} <= listed

        # A client with no protos (grpcurl, Postman) can build every method from it.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        jobs = pool.FindServiceByName("tunewire.v1.JobService")
        assert {"CreateJob", "StreamJobEvents", "CancelJob"} <= {m.name for m in jobs.methods}
        assert jobs.file.name == "tunewire/v1/jobs.proto"
        create = jobs.methods_by_name["CreateJob"]
        request_class = message_factory.GetMessageClass(create.input_type)
        assert "request_id" in request_class.DESCRIPTOR.fields_by_name


BUF = REPO / ".venv" / "node_modules" / ".bin" / "buf"


def _buf_curl(server: Server, *args: str, reflection: str = "grpc-v1") -> str:
    if not BUF.exists():
        pytest.fail(f"buf is missing; run: make {BUF.relative_to(REPO)}")
    done = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            reflection,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("reflection", ["grpc-v1", "grpc-v1alpha"])
def test_reflection_serves_v1_and_v1alpha_to_buf_curl(server: Server, reflection: str) -> None:
    base = f"http://{server.address}"
    methods = _buf_curl(server, "--list-methods", base, reflection=reflection).split()
    assert {"tunewire.v1.FileService/ListFiles", "tunewire.v1.JobService/CreateJob"} <= set(methods)
    services = _buf_curl(server, "--list-services", base, reflection=reflection).split()
    assert {"grpc.reflection.v1.ServerReflection", *PUBLIC} <= set(services)
    # A call built from reflection alone, as grpcurl and Postman build theirs.
    org = server.new_org(f"buf-{reflection}")
    record = org.upload(b"reflected", "reflected.bin", files_pb2.File.PURPOSE_USER_DATA)
    reply = _buf_curl(
        server,
        "-H",
        f"authorization: Bearer {org.key}",
        "-d",
        "{}",
        f"{base}/tunewire.v1.FileService/ListFiles",
        reflection=reflection,
    )
    assert [f["id"] for f in json.loads(reply)["files"]] == [record.id]


def test_reflection_v1_describes_itself(server: Server) -> None:
    """v1 is served by v1alpha's servicer; its descriptor is derived, and served too."""
    v1 = descriptor_pool.Default().FindServiceByName("grpc.reflection.v1.ServerReflection")
    assert v1.file.name == "grpc/reflection/v1/reflection.proto"
    with server.channel() as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=v1.full_name)
        (reply,) = info(iter([request]), timeout=10)
    [served] = reply.file_descriptor_response.file_descriptor_proto
    proto = descriptor_pb2.FileDescriptorProto.FromString(served)
    assert (proto.name, proto.package) == (v1.file.name, "grpc.reflection.v1")
    method = proto.service[0].method[0]
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


# --- error hygiene ----------------------------------------------------------------------------


def _raw(channel: grpc.Channel, method, payload: bytes, metadata) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.client_streaming and method.server_streaming:
        for _ in channel.stream_stream(path)(iter([payload]), metadata=metadata, timeout=10):
            pass
    elif method.client_streaming:
        channel.stream_unary(path)(iter([payload]), metadata=metadata, timeout=10)
    elif method.server_streaming:
        for _ in channel.unary_stream(path)(payload, metadata=metadata, timeout=10):
            pass
    else:
        channel.unary_unary(path)(payload, metadata=metadata, timeout=10)


def _all_methods():
    services = [
        module.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[1]]
        for module, name in zip(PUBLIC_MODULES, PUBLIC, strict=True)
    ]
    services.append(health_pb2.DESCRIPTOR.services_by_name["Health"])
    services.append(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
    services.append(descriptor_pool.Default().FindServiceByName(V1_REFLECTION))
    return [method for service in services for method in service.methods]


def test_garbage_bytes_are_invalid_argument_not_unknown(server: Server) -> None:
    answered = {}
    with server.channel() as channel:
        for method in _all_methods():
            if method.full_name == "grpc.health.v1.Health.List":
                continue  # not implemented by grpc_health's aio servicer: grpc's own default
            try:
                _raw(channel, method, GARBAGE, server.default.client.metadata)
                answered[method.full_name] = Code.OK
            except grpc.RpcError as error:
                answered[method.full_name] = error.code()
    assert {k: v for k, v in answered.items() if v != Code.INVALID_ARGUMENT} == {}


def test_unknown_methods_are_unimplemented(server: Server) -> None:
    with server.channel() as channel:
        for path in ["/tunewire.v1.JobService/RenameJob", "/tunewire.v1.Nope/Get"]:
            fails(
                Code.UNIMPLEMENTED,
                channel.unary_unary(path),
                b"",
                metadata=server.default.client.metadata,
                timeout=10,
            )


def test_well_formed_requests_never_get_unknown_or_internal(server: Server) -> None:
    """Every method with an empty request (Health.Watch would never end; an empty
    reflection request is the client's mistake, answered INVALID_ARGUMENT or OK)."""
    answered = {}
    with server.channel() as channel:
        for method in _all_methods():
            if method.full_name == "grpc.health.v1.Health.Watch":
                continue
            request = message_factory.GetMessageClass(method.input_type)()
            try:
                _raw(channel, method, request.SerializeToString(), server.default.client.metadata)
                answered[method.full_name] = Code.OK
            except grpc.RpcError as error:
                answered[method.full_name] = error.code()
    bad = {Code.UNKNOWN, Code.INTERNAL}
    assert {k: v for k, v in answered.items() if v in bad} == {}


# --- the process ------------------------------------------------------------------------------


def test_sigterm_stops_an_idle_server_at_once(start_server: Callable[..., Server]) -> None:
    srv = start_server()
    started = time.monotonic()
    assert srv.terminate(timeout=GRACE_SECONDS + 10) == 0
    assert time.monotonic() - started < 4
    assert "shutting down" in srv.stderr


def test_sigterm_drains_open_streams_within_the_grace_period(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server()
    health = health_pb2_grpc.HealthStub(srv.default.client.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    statuses: list[int] = []
    ended: list[grpc.StatusCode] = []

    def follow() -> None:
        try:
            for reply in watch:
                statuses.append(reply.status)
        except grpc.RpcError as error:
            ended.append(error.code())

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not statuses and time.monotonic() < deadline:
        time.sleep(0.02)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING]

    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=GRACE_SECONDS + 10) == 0
    assert time.monotonic() - started < GRACE_SECONDS + 3
    thread.join(timeout=10)
    # Watchers are told first, so load balancers stop sending before the server goes.
    assert statuses[:2] == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    assert ended != [Code.UNKNOWN]


def test_a_restart_keeps_keys_and_data(start_server: Callable[..., Server]) -> None:
    first = start_server()
    assert first.first_key
    record = first.default.upload(b"keep me", "keep.bin", files_pb2.File.PURPOSE_USER_DATA)
    assert first.terminate() == 0

    again = start_server(home=first.home)
    assert again.first_key is None and "Created the first API key" not in again.stdout
    org = again.org(first.first_key, "default")
    assert org.files.GetFile(files_pb2.GetFileRequest(file_id=record.id)) == record


def test_the_server_serves_on_the_host_it_is_told(start_server: Callable[..., Server]) -> None:
    srv = start_server(TUNEWIRE_HOST="localhost")
    assert srv.address.startswith("localhost:")
    srv.default.files.ListFiles(files_pb2.ListFilesRequest())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cli_dials_where_the_port_setting_puts_the_server(tmp_path: Path) -> None:
    port, nobody = _free_port(), _free_port()
    srv = launch(tmp_path / "home", None, tmp_path / "logs", TUNEWIRE_GRPC_PORT=str(port))
    try:
        assert srv.address == f"127.0.0.1:{port}" and srv.default
        record = srv.default.upload(chat_lines(10, "cli-port"), "cli-port.jsonl")

        def files_list(*flags: str, **settings: str) -> subprocess.CompletedProcess[str]:
            # Only the settings given, and the key; no home holding a key file.
            env = clean_env(tmp_path / "elsewhere", None, TUNEWIRE_API_KEY=srv.default.key)
            env.update(settings)
            return subprocess.run(
                [*tunewire_command(), "files", "list", *flags],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        listed = files_list(TUNEWIRE_GRPC_PORT=str(port))
        assert listed.returncode == 0 and record.id in listed.stdout, listed.stderr
        # Precedence: --address, then TUNEWIRE_ADDRESS, then the server's own settings.
        flag = files_list(
            "--address",
            srv.address,
            TUNEWIRE_ADDRESS=f"127.0.0.1:{nobody}",
            TUNEWIRE_GRPC_PORT=str(nobody),
        )
        assert flag.returncode == 0 and record.id in flag.stdout, flag.stderr
        env = files_list(TUNEWIRE_ADDRESS=srv.address, TUNEWIRE_GRPC_PORT=str(nobody))
        assert env.returncode == 0 and record.id in env.stdout, env.stderr
        missed = files_list(TUNEWIRE_GRPC_PORT=str(nobody))
        assert missed.returncode == 1 and "UNAVAILABLE" in missed.stderr, missed.stderr

        # So does the REST bridge run on its own (`python -m bridge`).
        env = clean_env(tmp_path / "elsewhere", None, TUNEWIRE_GRPC_PORT=str(port))
        bridge = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--http-port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            ready = re.search(r"serving REST on (\S+)", bridge.stdout.readline())
            assert ready, "the bridge did not say where it serves"
            reply = httpx.get(
                f"http://{ready.group(1)}/v1/files",
                headers={"Authorization": f"Bearer {srv.default.key}"},
                timeout=30,
            )
            assert reply.status_code == 200 and record.id in reply.text, reply.text
        finally:
            bridge.terminate()
            bridge.wait(timeout=20)
    finally:
        try:
            assert srv.terminate() == 0, srv.stderr
        finally:
            srv.kill()


# --- ModelService -----------------------------------------------------------------------------


def test_base_models_list_tiny_llama(server: Server) -> None:
    reply = server.default.models.ListBaseModels(models_pb2.ListBaseModelsRequest())
    tiny = {m.id: m for m in reply.base_models}["tiny-llama"]
    assert tiny.kind == models_pb2.BaseModel.KIND_CAUSAL_LM
    assert tiny.architecture == "LlamaForCausalLM"
    assert tiny.parameter_count > 0 and tiny.context_length > 0


def test_no_fine_tuned_models_yet(server: Server) -> None:
    org = server.new_org("no-models")
    page = org.models.ListModels(models_pb2.ListModelsRequest())
    assert (list(page.models), page.next_page_token) == ([], "")
    bad = models_pb2.ListModelsRequest(page_token="bad")
    assert set(invalid(org.models.ListModels, bad)) == {"page_token"}


@pytest.mark.parametrize("rpc", ["GetModel", "DeleteModel"])
def test_unknown_model_is_not_found(server: Server, rpc: str) -> None:
    model_id = "ft:tiny-llama:default:x:ftjob-000000000000000000000000"
    request = getattr(models_pb2, f"{rpc}Request")(model_id=model_id)
    failure = fails(Code.NOT_FOUND, getattr(server.default.models, rpc), request)
    assert failure.message == f"model {model_id!r} not found"


def test_generate_checks_the_request_and_the_model(server: Server) -> None:
    generate = server.default.models.Generate
    assert set(invalid(generate, models_pb2.GenerateRequest(model_id="tiny-llama"))) == {"messages"}
    model_id = "ft:tiny-llama:default:x:ftjob-000000000000000000000000"
    failure = fails(
        Code.NOT_FOUND, generate, models_pb2.GenerateRequest(model_id=model_id, prompt="Hi")
    )
    assert failure.message == f"model {model_id!r} not found"


# --- ExportService ----------------------------------------------------------------------------


def test_no_exports_yet(server: Server) -> None:
    org = server.new_org("no-exports")
    page = org.exports.ListExports(exports_pb2.ListExportsRequest())
    assert (list(page.exports), page.next_page_token) == ([], "")
    bad = exports_pb2.ListExportsRequest(page_token="bad")
    assert set(invalid(org.exports.ListExports, bad)) == {"page_token"}


def test_create_export_checks_the_request_and_the_model(server: Server) -> None:
    create = server.default.exports.CreateExport
    request = exports_pb2.CreateExportRequest(
        export=exports_pb2.Export(
            quantize_int8=True, format=exports_pb2.Export.FORMAT_MERGED_SAFETENSORS
        )
    )
    assert set(invalid(create, request)) == {"export.model_id", "export.quantize_int8"}
    model_id = "ft:tiny-llama:default:x:ftjob-000000000000000000000000"
    request = exports_pb2.CreateExportRequest(
        export=exports_pb2.Export(model_id=model_id, format=exports_pb2.Export.FORMAT_ONNX)
    )
    assert fails(Code.NOT_FOUND, create, request).message == f"model {model_id!r} not found"


@pytest.mark.parametrize(
    ("rpc", "request_message"),
    [
        ("GetExport", exports_pb2.GetExportRequest(export_id=UNKNOWN_EXPORT)),
        ("ListExportEvents", exports_pb2.ListExportEventsRequest(export_id=UNKNOWN_EXPORT)),
        (
            "DownloadExportArtifact",
            exports_pb2.DownloadExportArtifactRequest(export_id=UNKNOWN_EXPORT, path="model.onnx"),
        ),
    ],
)
def test_unknown_export_is_not_found(server: Server, rpc: str, request_message) -> None:
    failure = fails(Code.NOT_FOUND, getattr(server.default.exports, rpc), request_message)
    assert failure.message == f"export {UNKNOWN_EXPORT!r} not found"
