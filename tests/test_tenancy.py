"""Tenancy, exhaustively: every public RPC, enumerated from the service descriptors, is
called with another organization's ids and with random ids, and must answer both alike.

A victim org owns a trained job (so a file, a job, checkpoints, a fine-tuned model) and an
export; an attacker org owns its own file. For every RPC:
- each id the request carries (`*_id`, `training_file`, `validation_file`, found by walking
  the request descriptor) is set to the victim's object, then to a random id: the two
  answers must have the same code and the same message and details but for the id, and
  the victim's objects are unchanged afterwards;
- for reads (a GET in its google.api.http rule), the victim's own call must answer
  differently from the random id (so the object was there to be found);
- lists never show the victim's items;
- no key, a malformed header, a wrong key and a revoked key are UNAUTHENTICATED, with the
  same answer whether the ids in the request exist or not.
A new RPC, or a new kind of id, that these rules cannot cover fails the test.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from conftest import SAMPLE_CHAT, Failure, Org, Server, failure_of, launch
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from server.app import SERVICES
from tunewire.v1 import (
    auth_pb2,
    checkpoints_pb2,
    common_pb2,
    conversations_pb2,
    conversations_pb2_grpc,
    events_pb2,
    exports_pb2,
    files_pb2,
    graders_pb2,
    jobs_pb2,
    models_pb2,
    uploads_pb2,
    uploads_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
    worker_pb2,
)

Code = grpc.StatusCode
PUBLIC = [module.DESCRIPTOR.services_by_name[name] for module, name, _, _ in SERVICES]
# Reads with no object in the request that list none: shared base models, the caller.
NOT_LISTS = {"ListBaseModels", "GetCaller"}
INTERNAL = {"tunewire.v1.WorkerService"}  # workers only; answers no API key (tested below)
# Served by inference workers at their own address, to the control plane alone.
WORKER_SERVED = {"tunewire.v1.InferenceService"}
MODULES = (auth_pb2, checkpoints_pb2, common_pb2, events_pb2, exports_pb2, files_pb2, jobs_pb2)
MODULES += (conversations_pb2, graders_pb2, models_pb2, webhooks_pb2, worker_pb2, uploads_pb2)
RPCS = [method for service in PUBLIC for method in service.methods]

# Which object an id field names.
REFERENCES = {
    "file_id": "file",
    "training_file": "file",
    "validation_file": "file",
    "job_id": "job",
    "model_id": "model",
    "export_id": "export",
    "endpoint_id": "webhook_endpoint",
    "conversation_id": "conversation",
    "upload_id": "upload",
}
KINDS = set(REFERENCES.values())
# Ids that name no object of the caller's to reach: an idempotency key, and a list's
# cursor (another org's object as a cursor is refused: tests/test_listing.py).
NOT_REFERENCES = {"request_id", "after_id", "last_message_id"}
# Values for other fields a request needs to get as far as its ids.
FILLERS: dict[str, Any] = {
    "base_model": "tiny-llama",
    "path": "config.json",  # a file every merged export has
    "prompt": "Hello",
    "format": exports_pb2.Export.FORMAT_MERGED_SAFETENSORS,
    "page_size": 1000,
}
# POST/DELETE RPCs that name no existing object: they only ever create the caller's own.
CREATES_ONLY = {
    "tunewire.v1.FileService.UploadFile",
    "tunewire.v1.UploadService.CreateUpload",
    "tunewire.v1.WebhookService.CreateWebhookEndpoint",
    # Graders are computed from the request alone: nothing stored is read or written.
    "tunewire.v1.GraderService.RunGrader",
    "tunewire.v1.GraderService.ValidateGrader",
}


def http_verb(method: MethodDescriptor) -> str:
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    assert verb, f"{method.full_name} has no google.api.http rule"
    return verb


def reference_fields(method: MethodDescriptor) -> list[tuple[str, str]]:
    """(dotted field path, kind) of every id a request carries: fields named like ids,
    nested messages included, and `{resource.id}` variables of its HTTP path (AIP's
    Update methods carry the resource, whose `id` names it)."""

    def walk(descriptor: Descriptor, prefix: str) -> list[tuple[str, str]]:
        found = []
        for field in descriptor.fields:
            path = f"{prefix}{field.name}"
            if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
                if not field.message_type.full_name.startswith("google.protobuf."):
                    found += walk(field.message_type, f"{path}.")
            elif field.name in REFERENCES:
                found.append((path, REFERENCES[field.name]))
            elif field.name.endswith("_id") and field.name not in NOT_REFERENCES:
                raise AssertionError(f"{path}: an id of a kind these tests do not know")
        return found

    found = walk(method.input_type, "")
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    template = getattr(rule, rule.WhichOneof("pattern"))
    for variable in re.findall(r"{([\w.]+)(?:=[^}]*)?}", template):
        if variable.endswith(".id"):
            kind = variable.split(".")[-2]
            assert kind in KINDS, f"{method.full_name}: {{{variable}}} names an unknown kind"
            found.append((variable, kind))
    return found


def required(field: FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


def build(method: MethodDescriptor, ids: dict[str, str]) -> Message:
    """The method's request with every id field set from `ids` (path -> id) and fillers."""
    request = message_factory.GetMessageClass(method.input_type)()

    def fill(message: Message, prefix: str) -> None:
        for field in message.DESCRIPTOR.fields:
            path = f"{prefix}{field.name}"
            if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
                if field.message_type.full_name == "google.protobuf.FieldMask":
                    getattr(message, field.name).paths.append("metadata")
                elif any(p.startswith(f"{path}.") for p in ids) or required(field):
                    fill(getattr(message, field.name), f"{path}.")
            elif path in ids:
                setattr(message, field.name, ids[path])
            elif field.name in FILLERS and not field.is_repeated:
                setattr(message, field.name, FILLERS[field.name])

    fill(request, "")
    return request


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def call(srv: Server, method: MethodDescriptor, request: Message, metadata, channel=None) -> Any:
    """Call any RPC (draining server streams; one message for client streams), on the
    server's default connection (one for the module's many calls) unless given another."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    parse = message_factory.GetMessageClass(method.output_type).FromString
    channel = channel or srv.default.client.channel
    kwargs = {"request_serializer": serialize, "response_deserializer": parse}
    if method.client_streaming:
        return channel.stream_unary(path, **kwargs)(iter([request]), metadata=metadata, timeout=30)
    if method.server_streaming:
        return list(channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=30))
    return channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=30)


def outcome(
    srv: Server, method: MethodDescriptor, request: Message, metadata, channel=None
) -> Failure | None:
    try:
        call(srv, method, request, metadata, channel)
    except grpc.RpcError as error:
        return failure_of(error)
    return None


def shape(failure: Failure | None, ids: dict[str, str]) -> tuple:
    """A failure with the ids in it replaced by their field names."""
    if failure is None:
        return ("OK",)

    def scrub(text: str) -> str:
        for path, ident in ids.items():
            text = text.replace(ident, f"<{path}>")
        return text

    violations = []
    for detail in failure.status.details if failure.status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, scrub(v.description)) for v in bad.field_violations]
    return failure.code, scrub(failure.message), tuple(violations)


def random_id(kind: str, like: str) -> str:
    if kind == "model":
        return like.rsplit(":", 1)[0] + f":ftjob-{secrets.token_hex(12)}"
    return f"{like.split('-', 1)[0]}-{secrets.token_hex(12)}"


# --- the world: a victim with one of everything, an attacker with its own file ---------------


class World:
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.victim = srv.new_org("victim")
        self.attacker = srv.new_org("attacker")
        v = self.victim
        sample = SAMPLE_CHAT.read_bytes()
        file = v.upload(sample, SAMPLE_CHAT.name)
        job = v.create_job(
            file.id,
            seed=3,
            suffix="secret",
            metadata={"tenant": "victim"},
            hyperparameters=jobs_pb2.Hyperparameters(n_epochs=1, batch_size=8),
        )
        events = v.jobs.StreamJobEvents(jobs_pb2.StreamJobEventsRequest(job_id=job.id), timeout=300)
        messages = [r.event.message for r in events]
        job = v.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert job.state == jobs_pb2.Job.STATE_SUCCEEDED, messages
        export = v.exports.CreateExport(
            exports_pb2.CreateExportRequest(
                export=exports_pb2.Export(
                    model_id=job.fine_tuned_model,
                    format=exports_pb2.Export.FORMAT_MERGED_SAFETENSORS,
                )
            )
        )
        # Finished, so nothing of the victim's changes while the tests look.
        deadline = time.monotonic() + 300
        while export.state not in (
            exports_pb2.Export.STATE_SUCCEEDED,
            exports_pb2.Export.STATE_FAILED,
        ):
            assert time.monotonic() < deadline, export
            time.sleep(0.2)
            export = v.exports.GetExport(exports_pb2.GetExportRequest(export_id=export.id))
        assert export.state == exports_pb2.Export.STATE_SUCCEEDED, export.error
        self.owned = {"file": file.id, "job": job.id, "model": job.fine_tuned_model}
        self.owned["export"] = export.id
        checkpoints = v.jobs.ListCheckpoints(jobs_pb2.ListCheckpointsRequest(job_id=job.id))
        self.victim_ids = {file.id, job.id, job.fine_tuned_model, export.id}
        self.victim_ids |= {c.id for c in checkpoints.checkpoints}
        self.victim_ids |= {c.model for c in checkpoints.checkpoints}
        self.victim_ids |= set(job.result_files)
        self.own_file = self.attacker.upload(sample, SAMPLE_CHAT.name).id
        # Made once the victim's work is done, so nothing is ever sent to it (the discard
        # port on loopback, which the world's server allows).
        self.hooks = webhooks_pb2_grpc.WebhookServiceStub(v.client.channel)
        endpoint = self.hooks.CreateWebhookEndpoint(
            webhooks_pb2.CreateWebhookEndpointRequest(
                endpoint=webhooks_pb2.WebhookEndpoint(url="http://127.0.0.1:9/victim")
            ),
            metadata=v.client.metadata,
            timeout=30,
        )
        self.owned["webhook_endpoint"] = endpoint.id
        self.victim_ids.add(endpoint.id)
        self.chats = conversations_pb2_grpc.ConversationServiceStub(v.client.channel)
        chat = self.chats.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                conversation=conversations_pb2.Conversation(
                    title="victim's", model=job.fine_tuned_model
                )
            ),
            metadata=v.client.metadata,
            timeout=30,
        )
        self.owned["conversation"] = chat.id
        self.victim_ids.add(chat.id)
        # A pending upload with one part (parts are named only in CompleteUpload's list).
        self.uploads = uploads_pb2_grpc.UploadServiceStub(v.client.channel)
        upload = self.uploads.CreateUpload(
            uploads_pb2.CreateUploadRequest(
                upload=uploads_pb2.Upload(
                    filename="victim.jsonl",
                    purpose=files_pb2.File.PURPOSE_FINE_TUNE,
                    bytes=len(sample),
                    mime_type="text/jsonl",
                )
            ),
            metadata=v.client.metadata,
            timeout=30,
        )
        part = self.uploads.AddUploadPart(
            iter([uploads_pb2.AddUploadPartRequest(upload_id=upload.id, chunk=sample[:100])]),
            metadata=v.client.metadata,
            timeout=30,
        )
        self.owned["upload"] = upload.id
        self.victim_ids |= {upload.id, part.id}

    def snapshot(self) -> list[Message]:
        """Everything the victim owns, as the victim sees it."""
        v, owned = self.victim, self.owned
        return [
            v.files.GetFile(files_pb2.GetFileRequest(file_id=owned["file"])),
            v.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=owned["job"])),
            v.models.GetModel(models_pb2.GetModelRequest(model_id=owned["model"])),
            v.exports.GetExport(exports_pb2.GetExportRequest(export_id=owned["export"])),
            *v.jobs.ListJobEvents(
                jobs_pb2.ListJobEventsRequest(job_id=owned["job"], page_size=1000)
            ).events,
            self.hooks.GetWebhookEndpoint(
                webhooks_pb2.GetWebhookEndpointRequest(endpoint_id=owned["webhook_endpoint"]),
                metadata=v.client.metadata,
                timeout=30,
            ),
            self.chats.GetConversation(
                conversations_pb2.GetConversationRequest(conversation_id=owned["conversation"]),
                metadata=v.client.metadata,
                timeout=30,
            ),
            self.uploads.GetUpload(
                uploads_pb2.GetUploadRequest(upload_id=owned["upload"]),
                metadata=v.client.metadata,
                timeout=30,
            ),
        ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tenancy")
    srv = launch(
        root / "home",
        models_dir,
        root / "logs",
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_WEBHOOK_ALLOW_PRIVATE="true",
    )
    try:
        yield World(srv)
    finally:
        srv.terminate()
        srv.kill()


def bearer(org: Org) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {org.key}")]


# --- the rules cover every RPC ----------------------------------------------------------------


def test_every_service_is_public_or_internal_and_every_rpc_is_covered() -> None:
    declared = {
        service.full_name
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert declared == {s.full_name for s in PUBLIC} | INTERNAL | WORKER_SERVED
    for method in RPCS:
        references = reference_fields(method)
        if references or http_verb(method) == "get":
            continue
        assert method.full_name in CREATES_ONLY, (
            f"{method.full_name} changes state but names no object: add its tenancy rule"
        )


# RPCs that name no object are lists and creates, checked below.
@pytest.mark.parametrize(
    "method", [m for m in RPCS if reference_fields(m)], ids=lambda m: m.full_name
)
def test_another_orgs_ids_answer_exactly_like_random_ids(world: World, method: MethodDescriptor):
    references = reference_fields(method)
    own = {"file": world.own_file}
    before = world.snapshot()
    for path, kind in references:
        # The other ids are the attacker's own where it has one, so only `path` differs.
        base = {p: own[k] for p, k in references if p != path and k in own}
        victims = {**base, path: world.owned[kind]}
        randoms = {**base, path: random_id(kind, world.owned[kind])}
        attacker = bearer(world.attacker)
        theirs = outcome(world.srv, method, build(method, victims), attacker)
        missing = outcome(world.srv, method, build(method, randoms), attacker)
        assert theirs is not None, f"{method.full_name}: another org's {path} was served"
        assert shape(theirs, {path: victims[path]}) == shape(missing, {path: randoms[path]})
        assert theirs.code in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), theirs
        if http_verb(method) == "get":
            mine = outcome(world.srv, method, build(method, victims), bearer(world.victim))
            assert shape(mine, {path: victims[path]}) != shape(missing, {path: randoms[path]}), (
                f"{method.full_name}: the owner's own {path} is not found either"
            )
    assert world.snapshot() == before, "another org's call changed the victim's objects"


@pytest.mark.parametrize(
    "method", [m for m in RPCS if reference_fields(m)], ids=lambda m: m.full_name
)
def test_an_id_too_long_for_the_trailers_is_answered_like_any_unknown_id(
    world: World, method: MethodDescriptor
):
    # Echoed whole, a 20 KiB id overflowed the status trailers (gRPC caps them at 8 KiB)
    # and reached the client as RESOURCE_EXHAUSTED.
    for path, kind in reference_fields(method):
        huge = random_id(kind, world.owned[kind]) + "x" * 20_000
        found = outcome(world.srv, method, build(method, {path: huge}), bearer(world.attacker))
        assert found is not None and found.code in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), (
            f"{method.full_name} {path}: {found}"
        )
        assert len(found.message) <= 1024


@pytest.mark.parametrize(
    "method",
    [m for m in RPCS if http_verb(m) == "get" and not reference_fields(m)],
    ids=lambda m: m.full_name,
)
def test_lists_never_show_another_orgs_items(world: World, method: MethodDescriptor) -> None:
    # Filtered on the victim's metadata too, where the list filters on metadata.
    filtered = build(method, {})
    if "metadata" in filtered.DESCRIPTOR.fields_by_name:
        filtered.metadata.update({"tenant": "victim"})
    for request in (build(method, {}), filtered):
        reply = call(world.srv, method, request, bearer(world.attacker))
        shown = set(ids_in(reply))
        assert not shown & world.victim_ids, f"{method.full_name} shows {shown & world.victim_ids}"
    # The control: the victim's own list does show its items (where it lists any).
    mine = set(ids_in(call(world.srv, method, build(method, {}), bearer(world.victim))))
    if method.name not in NOT_LISTS:
        assert mine & world.victim_ids, f"{method.full_name}: the victim sees none of its items"


def ids_in(message: Message) -> Iterator[str]:
    """Every `id` (and `model`) in a message, recursively."""
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            if field.name in ("id", "model", "model_id", "fine_tuned_model", "job_id"):
                yield value
            continue
        for item in value if field.is_repeated else [value]:
            if isinstance(item, Message):
                yield from ids_in(item)


def test_an_attacker_ends_up_owning_only_what_it_made(world: World) -> None:
    """Run after the cross-org calls (file order): none of them created anything."""
    a = world.attacker
    assert [f.id for f in a.files.ListFiles(files_pb2.ListFilesRequest()).files] == [world.own_file]
    assert a.jobs.ListJobs(jobs_pb2.ListJobsRequest()).jobs == []
    assert a.models.ListModels(models_pb2.ListModelsRequest()).models == []
    assert a.exports.ListExports(exports_pb2.ListExportsRequest()).exports == []


# --- keys -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def revoked(world: World) -> str:
    org = world.srv.new_org("revoked")
    listed = world.srv.cli("keys", "list").stdout
    (row,) = [line for line in listed.splitlines() if org.key[:10] in line]
    key_id = next(word for word in row.replace("│", " ").split() if word.startswith("key-"))
    world.srv.cli("keys", "revoke", key_id)
    return org.key


@pytest.mark.parametrize("method", RPCS, ids=lambda m: m.full_name)
def test_every_rpc_refuses_missing_wrong_and_revoked_keys(
    world: World, revoked: str, method: MethodDescriptor
) -> None:
    references = reference_fields(method)
    real = build(method, {path: world.owned[kind] for path, kind in references})
    fake = build(method, {path: random_id(kind, world.owned[kind]) for path, kind in references})
    for metadata in (
        [],
        [("authorization", "")],
        [("authorization", "Bearer")],
        [("authorization", f"Basic {world.victim.key}")],
        [("authorization", f"Bearer tw-{secrets.token_urlsafe(32)}")],
        [("authorization", f"Bearer {world.victim.key[:-1]}")],
        [("authorization", f"Bearer {revoked}")],
    ):
        answers = [outcome(world.srv, method, request, metadata) for request in (real, fake)]
        for answer in answers:
            assert answer is not None and answer.code == Code.UNAUTHENTICATED, (metadata, answer)
        # Whether the ids exist makes no difference before the key is checked.
        assert answers[0].message == answers[1].message


def services(names: set[str]) -> list[ServiceDescriptor]:
    return [
        s for m in MODULES for s in m.DESCRIPTOR.services_by_name.values() if s.full_name in names
    ]


def test_the_worker_service_answers_no_api_key(world: World) -> None:
    (service,) = services(INTERNAL)
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)()
        answer = outcome(world.srv, method, request, bearer(world.victim))
        assert answer is not None and answer.code == Code.UNAUTHENTICATED, (method.name, answer)


def test_the_control_plane_serves_no_inference(world: World) -> None:
    (service,) = services(WORKER_SERVED)
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)()
        answer = outcome(world.srv, method, request, bearer(world.victim))
        assert answer is not None and answer.code == Code.UNIMPLEMENTED, (method.name, answer)


def test_an_inference_worker_answers_only_its_control_plane(world: World, tmp_path: Path) -> None:
    from server.store.blobs import BlobStore
    from trainer.worker import serve
    from trainer.worker.train import Place

    token = secrets.token_urlsafe(16)
    place = Place(BlobStore(str(tmp_path / "blobs")), world.srv.home / "models", tmp_path)
    server, address = serve.start(place, token, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(address) as channel:
            for method in services(WORKER_SERVED)[0].methods:
                request = message_factory.GetMessageClass(method.input_type)()
                for metadata in (bearer(world.victim), [], [("authorization", "Bearer wrong")]):
                    answer = outcome(world.srv, method, request, metadata, channel)
                    assert answer is not None and answer.code == Code.UNAUTHENTICATED, (
                        method.name,
                        metadata,
                    )
    finally:
        server.stop(None)


def test_keys_are_stored_hashed(world: World) -> None:
    stored = b"".join(path.read_bytes() for path in world.srv.home.glob("tunewire.db*"))
    for org in (world.victim, world.attacker):
        assert org.key.encode() not in stored


# --- the same over HTTP, for every route in the bridge's OpenAPI document -------------------

REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
HTTP = httpx.Client(timeout=60)  # one connection pool for the module's many requests
# Path parameters: the kind of object each names (Cohere's datasets are files and its
# finetuned models jobs; Helix's sessions are jobs), or a filler value.
PATH_REFERENCES = {
    "file_id": "file",
    "dataset_id": "file",
    "job_id": "job",
    "fine_tuning_job_id": "job",
    "id": "job",
    "finetuned_model_id": "job",
    "session_id": "conversation",
    "model_id": "model",
    "model": "model",
    "export_id": "export",
    "endpoint_id": "webhook_endpoint",
    "webhook_id": "webhook_endpoint",
    "conversation_id": "conversation",
    "upload_id": "upload",
}
PATH_FILLERS = {"path": "config.json"}  # a file every merged export has
QUERY_FILLERS = {"type": "chat-finetune-input"}  # Cohere's one dataset type for fine-tuning
# Routes that name objects in their body: (verb, path) -> body builder given the id. The
# body is sent as JSON, or as a form where the route takes one.
BODY_REFERENCES: dict[tuple[str, str], tuple[str, Callable[[str], dict]]] = {
    ("post", "/tunewire/v1/jobs"): (
        "file",
        lambda ref: {"base_model": "tiny-llama", "training_file": ref},
    ),
    ("post", "/tunewire/v1/exports"): (
        "model",
        lambda ref: {"model_id": ref, "format": "FORMAT_MERGED_SAFETENSORS"},
    ),
    ("post", "/v1/fine_tuning/jobs"): (
        "file",
        lambda ref: {"model": "tiny-llama", "training_file": ref},
    ),
    ("post", "/api/llm/fine_tuning/jobs"): (
        "file",
        lambda ref: {"model": "tiny-llama", "training_file": ref},
    ),
    ("post", "/v1/chat/completions"): (
        "model",
        lambda ref: {"model": ref, "messages": [{"role": "user", "content": "Hello"}]},
    ),
    ("post", "/v1/completions"): ("model", lambda ref: {"model": ref, "prompt": "Hello"}),
    ("post", "/cohere/v1/classify"): ("model", lambda ref: {"model": ref, "inputs": ["Hello"]}),
    ("post", "/cohere/v1/finetuning/finetuned-models"): (
        "file",
        lambda ref: {
            "name": "stolen",
            "settings": {"base_model": {"base_type": "BASE_TYPE_CHAT"}, "dataset_id": ref},
        },
    ),
    ("post", "/tunewire/v1/conversations"): ("model", lambda ref: {"model": ref}),
    ("post", "/cohere/v1/chat"): ("model", lambda ref: {"model": ref, "message": "Hello"}),
    ("post", "/cohere/v2/chat"): (
        "model",
        lambda ref: {"model": ref, "messages": [{"role": "user", "content": "Hello"}]},
    ),
    ("post", "/api/v1/sessions"): (
        "model",
        lambda ref: {"input": "Hello", "mode": "inference", "type": "text", "model_name": ref},
    ),
}
# Routes that create only the caller's own objects from what they upload.
HTTP_CREATES_ONLY = {
    ("post", "/tunewire/v1/files"),
    ("post", "/v1/files"),
    ("post", "/api/llm/files"),
    ("post", "/tunewire/v1/uploads"),
    ("post", "/v1/uploads"),
    ("post", "/cohere/v1/datasets"),
    ("post", "/api/v1/sessions/learn"),
    ("post", "/tunewire/v1/webhook_endpoints"),
    ("post", "/v1/webhooks"),
    ("post", "/tunewire/v1/graders:run"),
    ("post", "/tunewire/v1/graders:validate"),
    ("post", "/v1/fine_tuning/alpha/graders/run"),
    ("post", "/v1/fine_tuning/alpha/graders/validate"),
}


@pytest.fixture(scope="module")
def rest(world: World) -> Iterator[tuple[str, dict]]:
    deadline = time.monotonic() + 30
    while not (ready := REST_READY.search(world.srv.stdout)):
        assert time.monotonic() < deadline, "the REST bridge did not start"
        time.sleep(0.1)
    url = f"http://{ready.group(1)}:{ready.group(2)}"
    document = HTTP.get(f"{url}/openapi.json").json()
    yield url, document
    HTTP.close()


def routes(document: dict) -> list[tuple[str, str, dict]]:
    return [
        (verb, path, operation)
        for path, operations in document["paths"].items()
        for verb, operation in operations.items()
    ]


def path_kind(name: str) -> str | None:
    """The kind of object a path parameter names; `job__id` is FastAPI's `{job.id}`."""
    if name in PATH_REFERENCES:
        return PATH_REFERENCES[name]
    resource = name.removesuffix("__id")
    return resource if resource != name and resource in {"file", "job", "model", "export"} else None


def path_params(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def resolve(schema: dict, document: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def example(schema: dict, document: dict) -> Any:
    """The smallest value a schema accepts: required properties only, first choices."""
    schema = resolve(schema, document)
    for choice in ("anyOf", "oneOf"):
        if choice in schema:
            options = [o for o in schema[choice] if resolve(o, document).get("type") != "null"]
            return example(options[0], document)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        return {name: example(properties[name], document) for name in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {}), document)]
    if kind == "string":
        return b'{"text": "x"}\n' if schema.get("format") == "binary" else "x"
    return {"integer": 1, "number": 1.0, "boolean": False}.get(kind)


def well_formed(operation: dict, document: dict) -> dict[str, Any]:
    """httpx arguments for a request the route accepts as far as its body and query go."""
    kwargs: dict[str, Any] = {}
    query = {
        p["name"]: QUERY_FILLERS.get(p["name"]) or example(p["schema"], document)
        for p in operation.get("parameters", [])
        if p["in"] == "query" and p.get("required")
    }
    if query:
        kwargs["params"] = query
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        kwargs["json"] = example(content["application/json"]["schema"], document)
    elif "multipart/form-data" in content:
        fields = example(content["multipart/form-data"]["schema"], document)
        kwargs["files"] = [
            (name, ("data.jsonl", item) if isinstance(item, bytes) else (None, str(item)))
            for name, value in fields.items()
            for item in (value if isinstance(value, list) else [value])
        ]
    elif "application/x-www-form-urlencoded" in content:
        kwargs["data"] = example(content["application/x-www-form-urlencoded"]["schema"], document)
    return kwargs


def http(
    url: str,
    verb: str,
    path: str,
    values: dict[str, str],
    key: str | None,
    **kwargs: Any,
) -> tuple[int, str]:
    """One request to `path` with its parameters set from `values` (httpx arguments in
    `kwargs`); returns (status, body text)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    target = url + re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)
    response = HTTP.request(verb.upper(), target, headers=headers, **kwargs)
    return response.status_code, response.text


def body_of(operation: dict, body: dict) -> dict[str, Any]:
    """A body as the route takes it: JSON, or a form."""
    content = operation.get("requestBody", {}).get("content", {})
    return {"json": body} if "application/json" in content else {"data": body}


def scrubbed(answer: tuple[int, str], ident: str) -> tuple[int, str]:
    return answer[0], answer[1].replace(ident, "<id>")


def test_every_http_route_is_covered(rest: tuple[str, dict]) -> None:
    _, document = rest
    for verb, path, _ in routes(document):
        params = [p for p in path_params(path) if p not in PATH_FILLERS]
        unknown = [p for p in params if not path_kind(p)]
        assert not unknown, f"{verb} {path}: path parameters of unknown kind {unknown}"
        if params or verb == "get":
            continue
        assert (verb, path) in BODY_REFERENCES or (verb, path) in HTTP_CREATES_ONLY, (
            f"{verb.upper()} {path} changes state but these tests know no tenancy rule for it"
        )
    assert set(BODY_REFERENCES) | HTTP_CREATES_ONLY <= {(v, p) for v, p, _ in routes(document)}


def test_every_http_route_answers_another_orgs_ids_like_random_ones(
    world: World, rest: tuple[str, dict]
) -> None:
    url, document = rest
    before = world.snapshot()
    checked = 0
    for verb, path, operation in routes(document):
        params = [p for p in path_params(path) if p not in PATH_FILLERS]
        if params:
            # One path parameter names the object; any other is a filler.
            (name,) = params
            kind = path_kind(name)
            real, fake = world.owned[kind], random_id(kind, world.owned[kind])
            extra = well_formed(operation, document)
            send = [({**PATH_FILLERS, name: ident}, extra) for ident in (real, fake)]
        elif (verb, path) in BODY_REFERENCES:
            kind, body = BODY_REFERENCES[(verb, path)]
            real, fake = world.owned[kind], random_id(kind, world.owned[kind])
            send = [({}, body_of(operation, body(ident))) for ident in (real, fake)]
        else:
            continue
        theirs, missing = (http(url, verb, path, p, world.attacker.key, **k) for p, k in send)
        where = f"{verb.upper()} {path}"
        assert theirs[0] < 500 and theirs[0] not in (200, 201, 204), (where, theirs)
        assert scrubbed(theirs, real) == scrubbed(missing, fake), where
        if verb == "get":
            mine = http(url, verb, path, send[0][0], world.victim.key, **send[0][1])
            assert scrubbed(mine, real) != scrubbed(missing, fake), (where, mine)
        checked += 1
    assert checked >= 40
    assert world.snapshot() == before, "an HTTP call of another org changed the victim's objects"


def test_http_lists_never_show_another_orgs_items(world: World, rest: tuple[str, dict]) -> None:
    url, document = rest
    for verb, path, _ in routes(document):
        if verb != "get" or path_params(path) or path == "/openapi.json":
            continue
        status, text = http(url, verb, path, {}, world.attacker.key)
        assert status == 200, (path, status, text)
        leaked = [ident for ident in world.victim_ids if ident in text]
        assert not leaked, f"GET {path} shows another org's {leaked}"


def bad_keys(world: World, revoked: str) -> dict[str, str | None]:
    return {
        "no": None,
        "an empty": "",
        "a wrong": f"tw-{secrets.token_urlsafe(32)}",
        "a revoked": revoked,
        "a truncated": world.victim.key[:-1],
    }


def refusals(
    world: World, rest: tuple[str, dict], revoked: str, well: bool
) -> dict[str, tuple[int, str]]:
    """Every route called with every bad key, with a well-formed request (`well`) or an
    empty one; the answers that are not 401."""
    url, document = rest
    found = {}
    for verb, path, operation in routes(document):
        params = {**PATH_FILLERS}
        for name in path_params(path):
            if name not in PATH_FILLERS:
                params[name] = world.owned[path_kind(name)]
        if well and (verb, path) in BODY_REFERENCES:
            kind, body = BODY_REFERENCES[(verb, path)]
            kwargs = body_of(operation, body(world.owned[kind]))
        elif well:
            kwargs = well_formed(operation, document)
        else:
            kwargs = {"json": {}} if "requestBody" in operation else {}
        for label, key in bad_keys(world, revoked).items():
            status, text = http(url, verb, path, params, key, **kwargs)
            if status != 401:
                found[f"{verb.upper()} {path} with {label} key"] = (status, text[:100])
    return found


def test_every_http_route_refuses_missing_wrong_and_revoked_keys(
    world: World, rest: tuple[str, dict], revoked: str
) -> None:
    refused = refusals(world, rest, revoked, well=True)
    assert not refused, "\n".join(f"{k}: {v}" for k, v in sorted(refused.items()))


def test_every_http_route_checks_the_key_before_the_body(
    world: World, rest: tuple[str, dict], revoked: str
) -> None:
    """A request with a bad key is 401 whatever its body: the body is not even looked at."""
    refused = refusals(world, rest, revoked, well=False)
    assert not refused, "\n".join(f"{k}: {v}" for k, v in sorted(refused.items()))
