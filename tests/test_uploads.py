"""Files sent in parts (OpenAI's Uploads API, `UploadService`): the official `openai` SDK
against the real bridge and server creates uploads, adds parts, completes and cancels
them; the file a completed upload becomes is the one a single upload of the same bytes
makes; bad input is refused naming its field; expired uploads refuse parts and lose them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from conftest import Server, chat_lines, fails
from test_bridge import Stack, start_bridge

from tunewire.v1 import files_pb2, uploads_pb2, uploads_pb2_grpc

# The `rest` stack (one per session).
pytest_plugins = ["test_bridge"]
Upload = uploads_pb2.Upload
UPLOAD_KEYS = {
    "id",
    "object",
    "bytes",
    "created_at",
    "filename",
    "purpose",
    "status",
    "expires_at",
    "file",
}


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def client(rest: Stack) -> Iterator[openai.OpenAI]:
    with sdk(rest.url, rest.key) as c:
        yield c


def parts_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def grpc_file(server: Server, file_id: str) -> files_pb2.File:
    return server.default.files.GetFile(files_pb2.GetFileRequest(file_id=file_id))


def test_the_sdk_uploads_a_file_in_parts_as_one_upload_would(
    client: openai.OpenAI, rest: Stack, tmp_path: Path
) -> None:
    # Valid data, and data with problems: the report is the single upload's either way.
    broken = chat_lines(40, "parts-bad") + b'{"messages": []}\nnot json\n' + b"\xff\n"
    for data in (chat_lines(300, "parts"), broken):
        path = tmp_path / "train.jsonl"
        path.write_bytes(data)
        upload = client.uploads.upload_file_chunked(
            file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=1000
        )
        assert (upload.object, upload.status, upload.bytes) == ("upload", "completed", len(data))
        assert upload.id.startswith("upload_") and upload.filename == "train.jsonl"
        assert upload.expires_at == upload.created_at + 3600
        whole = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        made = upload.file
        assert made is not None and made.id.startswith("file-")
        assert (made.bytes, made.status, made.status_details, made.purpose) == (
            whole.bytes,
            whole.status,
            whole.status_details,
            whole.purpose,
        )
        assert client.files.content(made.id).read() == data
        ours, theirs = grpc_file(rest.server, made.id), grpc_file(rest.server, whole.id)
        assert (ours.sha256, ours.validation, ours.state) == (
            theirs.sha256,
            theirs.validation,
            theirs.state,
        )
        assert client.files.retrieve(made.id) == made
    assert made.status == "error" and "Line 42 is not valid JSON" in made.status_details

    # User data is stored as it is, unvalidated, like a single upload of it.
    notes = client.uploads.upload_file_chunked(
        file=b"anything at all",
        filename="notes.bin",
        bytes=15,
        mime_type="application/octet-stream",
        purpose="user_data",
        part_size=4,
    )
    assert notes.file.purpose == "user_data" and notes.file.status == "processed"


def test_parts_complete_in_the_order_given_and_a_client_can_resume(
    client: openai.OpenAI, rest: Stack
) -> None:
    data = chat_lines(30, "resume")
    pieces = parts_of(data, 700)
    upload = client.uploads.create(
        filename="resumed.jsonl", purpose="fine-tune", bytes=len(data), mime_type="text/jsonl"
    )
    assert (upload.status, upload.file) == ("pending", None)
    with rest.http() as http:
        raw = http.post(
            f"/v1/uploads/{upload.id}/parts", files={"data": ("blob", pieces[0])}
        ).json()
    assert set(raw) == {"id", "object", "created_at", "upload_id"}
    assert raw["object"] == "upload.part" and raw["upload_id"] == upload.id
    ids = {0: raw["id"]}
    # The client is cut off; a new one (a new process, say) adds the rest, last first.
    with sdk(rest.url, rest.key) as again:
        for i in reversed(range(1, len(pieces))):
            part = again.uploads.parts.create(upload_id=upload.id, data=pieces[i])
            assert part.id.startswith("part_") and part.object == "upload.part"
            ids[i] = part.id
        stub = uploads_pb2_grpc.UploadServiceStub(rest.server.default.client.channel)
        shown = stub.GetUpload(
            uploads_pb2.GetUploadRequest(upload_id=upload.id),
            metadata=rest.server.default.client.metadata,
            timeout=30,
        )
        assert (shown.part_count, shown.received_bytes) == (len(pieces), len(data))
        done = again.uploads.complete(
            upload_id=upload.id,
            part_ids=[ids[i] for i in range(len(pieces))],
            md5=hashlib.md5(data).hexdigest(),
        )
    assert done.status == "completed" and done.file.status == "processed"
    assert client.files.content(done.file.id).read() == data
    with rest.http() as http:
        raw = http.post(f"/v1/uploads/{upload.id}/cancel")
    assert raw.status_code == 400 and "completed" in raw.json()["error"]["message"]


def error(excinfo: pytest.ExceptionInfo[openai.APIStatusError]) -> tuple[int, Any, str]:
    e = excinfo.value
    return e.status_code, e.param, e.message


def test_bad_input_is_refused_naming_its_field(client: openai.OpenAI, rest: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.create(filename="x", purpose="batch", bytes=1, mime_type="text/jsonl")
    assert error(bad)[:2] == (400, "purpose")
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.create(
            filename="x", purpose="fine-tune", bytes=9_000_000_000, mime_type="text/jsonl"
        )
    assert error(bad)[:2] == (400, "bytes") and "8000000000" in error(bad)[2]
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.create(filename="", purpose="fine-tune", bytes=1, mime_type="text/jsonl")
    assert error(bad)[:2] == (400, "filename")

    data = chat_lines(12, "bad-input")
    files_before = {f.id for f in client.files.list()}
    upload = client.uploads.create(
        filename="t.jsonl", purpose="fine-tune", bytes=len(data), mime_type="text/jsonl"
    )
    first = client.uploads.parts.create(upload_id=upload.id, data=data[:100])
    second = client.uploads.parts.create(upload_id=upload.id, data=data[100:])
    with pytest.raises(openai.BadRequestError) as bad:  # past the declared bytes
        client.uploads.parts.create(upload_id=upload.id, data=b"x")
    assert error(bad)[:2] == (400, "data") and f"({len(data)})" in error(bad)[2]

    other = client.uploads.create(
        filename="o.jsonl", purpose="fine-tune", bytes=3, mime_type="text/jsonl"
    )
    elsewhere = client.uploads.parts.create(upload_id=other.id, data=b"abc")
    for wrong in ("part_nope", elsewhere.id):  # unknown, or another upload's
        with pytest.raises(openai.BadRequestError) as bad:
            client.uploads.complete(upload_id=upload.id, part_ids=[first.id, wrong])
        assert (
            error(bad)[:2] == (400, "part_ids[1]")
            and "not a part of this upload" in (error(bad)[2])
        )
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, first.id])
    assert error(bad)[:2] == (400, "part_ids[1]") and "twice" in error(bad)[2]
    with pytest.raises(openai.BadRequestError) as bad:  # the sizes do not add up
        client.uploads.complete(upload_id=upload.id, part_ids=[second.id])
    assert error(bad)[:2] == (400, "part_ids")
    assert f"hold {len(data) - 100} bytes" in error(bad)[2] and str(len(data)) in error(bad)[2]
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.complete(
            upload_id=upload.id, part_ids=[first.id, second.id], md5=hashlib.md5(b"").hexdigest()
        )
    assert error(bad)[:2] == (400, "md5") and hashlib.md5(data).hexdigest() in error(bad)[2]
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id], md5="xyz")
    assert error(bad)[:2] == (400, "md5")
    # Every failed complete left nothing behind: no file, the upload still pending.
    assert {f.id for f in client.files.list()} == files_before
    done = client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id])
    assert done.status == "completed" and done.file.bytes == len(data)

    for call in (
        lambda: client.uploads.parts.create(upload_id=upload.id, data=b"x"),
        lambda: client.uploads.complete(upload_id=upload.id, part_ids=[first.id]),
        lambda: client.uploads.cancel(upload.id),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            call()
        assert f"upload {upload.id!r} is completed" in error(bad)[2]
    cancelled = client.uploads.cancel(other.id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    with pytest.raises(openai.BadRequestError) as bad:
        client.uploads.complete(upload_id=other.id, part_ids=[elsewhere.id])
    assert f"upload {other.id!r} is cancelled" in error(bad)[2]

    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create(upload_id="upload_nope", data=b"x")
    with rest.http() as http:
        reply = http.post(
            "/v1/uploads",
            json={"filename": "x", "purpose": "fine-tune", "bytes": 1, "mime_type": "a/b"}
            | {"expires_after": {"anchor": "created_at", "seconds": 60}},
        )
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "expires_after"
        shown = http.post(
            "/v1/uploads",
            json={"filename": "x", "purpose": "fine-tune", "bytes": 1, "mime_type": "a/b"},
        ).json()
        assert set(shown) == UPLOAD_KEYS and shown["file"] is None
        missing = http.post(f"/v1/uploads/{shown['id']}/parts", files={"other": ("b", b"x")})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "other"


def test_another_orgs_upload_is_not_found_like_a_random_id(
    client: openai.OpenAI, rest: Stack
) -> None:
    upload = client.uploads.create(
        filename="mine.jsonl", purpose="fine-tune", bytes=3, mime_type="text/jsonl"
    )
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    assert rest.server.other is not None
    with sdk(rest.url, rest.server.other.key) as stranger:
        answers = []
        for ident in (upload.id, "upload_" + "0" * 24):
            found = []
            for call in (
                lambda i=ident: stranger.uploads.parts.create(upload_id=i, data=b"x"),
                lambda i=ident: stranger.uploads.complete(upload_id=i, part_ids=[part.id]),
                lambda i=ident: stranger.uploads.cancel(i),
            ):
                with pytest.raises(openai.NotFoundError) as missing:
                    call()
                found.append(missing.value.message.replace(ident, "<id>"))
            answers.append(found)
        assert answers[0] == answers[1]
        # Nor does another org's part complete an upload of the stranger's own.
        own = stranger.uploads.create(
            filename="theirs.jsonl", purpose="fine-tune", bytes=3, mime_type="text/jsonl"
        )
        with pytest.raises(openai.BadRequestError) as bad:
            stranger.uploads.complete(upload_id=own.id, part_ids=[part.id])
        assert error(bad)[1] == "part_ids[0]"
    assert client.uploads.complete(upload_id=upload.id, part_ids=[part.id]).status == "completed"


@pytest.fixture
def small(start_server: Any, tmp_path: Path) -> Iterator[Stack]:
    """A server of its own: small part and single-upload limits, uploads expire in 2 s."""
    srv = start_server(
        TUNEWIRE_MAX_UPLOAD_PART_BYTES="1000",
        TUNEWIRE_MAX_UPLOAD_BYTES="2000",
        TUNEWIRE_UPLOAD_EXPIRY_SECONDS="2",
    )
    bridge = start_bridge(srv.address, tmp_path / "small-bridge")
    yield Stack(srv, bridge, srv.default.key)
    bridge.stop()


def test_limits_and_expiry(small: Stack) -> None:
    data = chat_lines(60, "limits")
    assert len(data) > 2000  # too big for one request here, fine in parts
    with sdk(small.url, small.key) as client:
        with pytest.raises(openai.APIStatusError) as too_big:
            client.files.create(file=("t.jsonl", data), purpose="fine-tune")
        assert too_big.value.status_code == 413
        upload = client.uploads.upload_file_chunked(
            file=data,
            filename="t.jsonl",
            bytes=len(data),
            mime_type="text/jsonl",
            purpose="fine-tune",
            part_size=1000,
        )
        assert upload.file.status == "processed" and upload.file.bytes == len(data)

        pending = client.uploads.create(
            filename="late.jsonl", purpose="fine-tune", bytes=2000, mime_type="text/jsonl"
        )
        with pytest.raises(openai.APIStatusError) as part_too_big:
            client.uploads.parts.create(upload_id=pending.id, data=data[:1001])
        assert part_too_big.value.status_code == 413
        assert part_too_big.value.code == "file_too_large"
        assert "part limit of 1000 bytes" in part_too_big.value.message
        part = client.uploads.parts.create(upload_id=pending.id, data=data[:1000])
        parts_dir = small.server.home / "blobs" / "uploads" / pending.id
        assert [p.name for p in parts_dir.iterdir()] == [part.id]
        time.sleep(max(0.0, pending.expires_at + 1.2 - time.time()))  # a whole second
        for call in (
            lambda: client.uploads.parts.create(upload_id=pending.id, data=b"x"),
            lambda: client.uploads.complete(upload_id=pending.id, part_ids=[part.id]),
        ):
            with pytest.raises(openai.BadRequestError) as late:
                call()
            assert f"upload {pending.id!r} is expired" in late.value.message
        assert not parts_dir.exists()  # swept

    # Over gRPC: the part limit is enforced while streaming (RESOURCE_EXHAUSTED).
    stub = uploads_pb2_grpc.UploadServiceStub(small.server.default.client.channel)
    md = small.server.default.client.metadata
    fresh = stub.CreateUpload(
        uploads_pb2.CreateUploadRequest(
            upload=Upload(
                filename="g.jsonl",
                purpose=files_pb2.File.PURPOSE_FINE_TUNE,
                bytes=5000,
                mime_type="text/jsonl",
            )
        ),
        metadata=md,
        timeout=30,
    )
    assert fresh.id.startswith("upload_") and fresh.state == Upload.STATE_PENDING
    chunks = [uploads_pb2.AddUploadPartRequest(upload_id=fresh.id)] + [
        uploads_pb2.AddUploadPartRequest(chunk=b"x" * 300) for _ in range(4)
    ]
    failure = fails(
        grpc.StatusCode.RESOURCE_EXHAUSTED, stub.AddUploadPart, iter(chunks), metadata=md
    )
    assert "part limit" in failure.message
    assert not any((small.server.home / "blobs" / "tmp").iterdir())  # no .part left
