"""FileService against a real server: uploads, validation reports, listing, downloads."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import (
    ID,
    SAMPLE_CHAT,
    File,
    Org,
    Server,
    chat_lines,
    every_page,
    fails,
    invalid,
    sha256,
    upload_requests,
)

from tunewire.v1 import files_pb2

Code = grpc.StatusCode
Request = files_pb2.UploadFileRequest
Metadata = files_pb2.UploadFileMetadata


def download(files, file_id: str) -> tuple[bytes, list[files_pb2.Chunk]]:
    chunks = [
        reply.chunk for reply in files.DownloadFile(files_pb2.DownloadFileRequest(file_id=file_id))
    ]
    return b"".join(c.data for c in chunks), chunks


def list_all(files, **request) -> list[File]:
    """Every file, following next_page_token to the end."""

    def fetch(token: str) -> files_pb2.ListFilesResponse:
        return files.ListFiles(files_pb2.ListFilesRequest(page_token=token, **request))

    return [f for page in every_page(fetch) for f in page.files]


# --- UploadFile -------------------------------------------------------------------------------


def test_upload_validates_a_fine_tune_file(server: Server) -> None:
    data = SAMPLE_CHAT.read_bytes()
    record = server.default.upload(data, "sample-chat.jsonl")

    assert ID.match(record.id) and record.id.startswith("file-")
    assert record.filename == "sample-chat.jsonl"
    assert record.purpose == File.PURPOSE_FINE_TUNE
    assert (record.bytes, record.sha256) == (len(data), sha256(data))
    assert record.state == File.STATE_PROCESSED
    assert record.create_time.seconds > 0
    report = record.validation
    assert (report.format, report.example_count, report.line_count) == ("chat", 64, 64)
    assert (report.problem_count, list(report.problems)) == (0, [])
    assert report.token_estimate > 0
    got = server.default.files.GetFile(files_pb2.GetFileRequest(file_id=record.id))
    assert got == record


def test_user_data_is_stored_but_not_validated(server: Server) -> None:
    record = server.default.upload(b"not json at all\n", "notes.bin", File.PURPOSE_USER_DATA)
    assert record.purpose == File.PURPOSE_USER_DATA
    assert record.state == File.STATE_PROCESSED
    assert not record.HasField("validation")


def test_filename_is_kept_as_data_only(server: Server) -> None:
    name = "../../etc/passwd ünïcode.jsonl"
    record = server.default.upload(chat_lines(2, "fname"), name)
    assert record.filename == name
    stored = os.listdir(server.home / "blobs" / "files")
    assert record.id in stored and not any("passwd" in entry for entry in stored)


@pytest.fixture(scope="module")
def quiet_org(server: Server) -> Org:
    """An org whose uploads all fail, so it must never have a file."""
    return server.new_org("failed-uploads")


def _stream(*messages: Request) -> Iterator[Request]:
    yield from messages


@pytest.mark.parametrize(
    ("messages", "fields"),
    [
        pytest.param([], {"metadata"}, id="no-messages"),
        pytest.param([Request(chunk=b"{}")], {"metadata"}, id="chunk-first"),
        pytest.param(
            [
                Request(metadata=Metadata(filename="a.jsonl", purpose=File.PURPOSE_USER_DATA)),
                Request(chunk=b"abc"),
                Request(metadata=Metadata(filename="b.jsonl", purpose=File.PURPOSE_USER_DATA)),
            ],
            {"metadata"},
            id="second-metadata",
        ),
        pytest.param(
            [Request(metadata=Metadata(filename="a.jsonl"))],
            {"metadata.purpose"},
            id="purpose-unspecified",
        ),
        pytest.param(
            [Request(metadata=Metadata(filename="a.csv", purpose=File.PURPOSE_FINE_TUNE_RESULTS))],
            {"metadata.purpose"},
            id="purpose-written-by-tunewire",
        ),
        pytest.param(
            [Request(metadata=Metadata(purpose=File.PURPOSE_FINE_TUNE))],
            {"metadata.filename"},
            id="empty-filename",
        ),
        pytest.param(
            [Request(metadata=Metadata(filename="x" * 256, purpose=File.PURPOSE_FINE_TUNE))],
            {"metadata.filename"},
            id="filename-too-long",
        ),
        pytest.param(
            [Request(metadata=Metadata())],
            {"metadata.filename", "metadata.purpose"},
            id="both-bad",
        ),
    ],
)
def test_upload_rejects_bad_requests(
    server: Server, quiet_org: Org, messages: list[Request], fields: set[str]
) -> None:
    violations = invalid(quiet_org.files.UploadFile, _stream(*messages))
    assert set(violations) == fields
    assert list_all(quiet_org.files) == []
    assert os.listdir(server.home / "blobs" / "tmp") == []


def test_upload_at_the_limit_is_accepted_and_over_it_leaves_nothing(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server(TUNEWIRE_MAX_UPLOAD_BYTES="1000")
    org = srv.default
    exact = org.upload(b"x" * 1000, "exact.bin", File.PURPOSE_USER_DATA)
    assert exact.bytes == 1000

    over = fails(Code.RESOURCE_EXHAUSTED, org.upload, b"x" * 1001, "over.bin")
    assert "1000" in over.message
    # Over the limit across many small chunks, too.
    fails(
        Code.RESOURCE_EXHAUSTED,
        org.files.UploadFile,
        upload_requests(b"y" * 1200, "chunks.bin", File.PURPOSE_USER_DATA, chunk=100),
    )

    assert [f.id for f in list_all(org.files)] == [exact.id]
    assert os.listdir(srv.home / "blobs" / "files") == [exact.id]
    assert os.listdir(srv.home / "blobs" / "tmp") == []


def test_upload_limit_is_enforced_while_streaming(start_server: Callable[..., Server]) -> None:
    """A client that never stops sending is cut off at the limit, not at its end."""
    srv = start_server(TUNEWIRE_MAX_UPLOAD_BYTES="100000")

    def endless() -> Iterator[Request]:
        yield Request(metadata=Metadata(filename="endless.bin", purpose=File.PURPOSE_USER_DATA))
        while True:
            yield Request(chunk=b"z" * 65536)

    fails(Code.RESOURCE_EXHAUSTED, srv.default.files.UploadFile, endless(), timeout=20)
    assert list_all(srv.default.files) == []
    assert os.listdir(srv.home / "blobs" / "tmp") == []
    stored = srv.home / "blobs" / "files"
    assert not stored.exists() or os.listdir(stored) == []


# --- validation reports -----------------------------------------------------------------------


def test_validation_report_names_each_bad_line(server: Server) -> None:
    good = (
        b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}'
    )
    lines = [
        good,  # 1
        b'{"messages": [',  # 2 invalid_json
        b'{"messages": "caf\xe9"}',  # 3 invalid_utf8
        b'{"messages": [{"role": "robot", "content": "Hi"}, '
        b'{"role": "assistant", "content": "Yo"}]}',  # 4 unrecognized_role
        b'{"messages": [{"role": "user", "content": ""}, '
        b'{"role": "assistant", "content": "Yo"}]}',  # 5 missing_content
        b'{"messages": [{"role": "user", "content": "Hi"}]}',  # 6 no assistant
        b'{"messages": [{"role": "user", "content": "Hi"}, '
        b'{"role": "assistant", "content": "Yo"}], "labels": 1}',  # 7 unrecognized_key
        b"[1, 2]",  # 8 data_type
        b"",  # 9 blank: skipped
        good,  # 10
    ]
    record = server.default.upload(b"\n".join(lines) + b"\n", "mixed.jsonl")

    assert record.state == File.STATE_ERROR
    report = record.validation
    assert [(p.line, p.path, p.code) for p in report.problems] == [
        (2, "$", "invalid_json"),
        (3, "$", "invalid_utf8"),
        (4, "$.messages[0].role", "unrecognized_role"),
        (5, "$.messages[0].content", "missing_content"),
        (6, "$.messages", "example_missing_assistant_message"),
        (7, "$.labels", "unrecognized_key"),
        (8, "$", "data_type"),
    ]
    assert report.problem_count == 7
    assert (report.format, report.example_count, report.line_count) == ("chat", 2, 10)
    assert all(p.message for p in report.problems)


def test_a_line_past_the_limit_is_reported_on_its_line(
    start_server: Callable[..., Server],
) -> None:
    # One 500 MiB line used to cost the server 2 GiB: it was held whole, several times.
    srv = start_server(TUNEWIRE_MAX_LINE_BYTES="65536")
    good = chat_lines(10, "long")
    huge = b'{"text": "' + b"a" * (4 << 20) + b'"}\n'
    record = srv.default.upload(good + huge + good, "long.jsonl")
    assert record.state == File.STATE_ERROR
    report = record.validation
    assert [(p.line, p.code) for p in report.problems] == [(11, "line_too_long")]
    assert f"line 11 is {len(huge) - 1} bytes long" in report.problems[0].message
    assert (report.example_count, report.line_count) == (20, 21)


def test_empty_fine_tune_file_is_an_error(server: Server) -> None:
    record = server.default.upload(b"", "empty.jsonl")
    assert record.state == File.STATE_ERROR
    assert [(p.line, p.code) for p in record.validation.problems] == [(0, "empty_file")]


# --- GetFile / ListFiles / DeleteFile ---------------------------------------------------------


@pytest.mark.parametrize("rpc", ["GetFile", "DeleteFile", "DownloadFile"])
def test_unknown_file_is_not_found(server: Server, rpc: str) -> None:
    file_id = f"file-{secrets.token_hex(12)}"
    request = getattr(files_pb2, f"{rpc}Request")(file_id=file_id)
    failure = fails(Code.NOT_FOUND, getattr(server.default.files, rpc), request)
    assert failure.message == f"file {file_id!r} not found"


def test_list_pages_newest_first_covering_every_file_once(server: Server) -> None:
    org = server.new_org("paging-files")
    uploaded = [org.upload(chat_lines(1, str(i)), f"f{i}.jsonl").id for i in range(7)]

    pages = [
        [f.id for f in page.files]
        for page in every_page(
            lambda token: org.files.ListFiles(
                files_pb2.ListFilesRequest(page_size=3, page_token=token)
            )
        )
    ]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == uploaded[::-1]

    # A full last page says so with an empty token.
    page = org.files.ListFiles(files_pb2.ListFilesRequest(page_size=7))
    assert (len(page.files), page.next_page_token) == (7, "")
    # Default page size covers them all.
    assert [f.id for f in org.files.ListFiles(files_pb2.ListFilesRequest()).files] == uploaded[::-1]


def test_list_is_stable_when_files_arrive_between_pages(server: Server) -> None:
    org = server.new_org("paging-stable")
    uploaded = [org.upload(chat_lines(1, str(i)), f"s{i}.jsonl").id for i in range(5)]
    first = org.files.ListFiles(files_pb2.ListFilesRequest(page_size=2))
    org.upload(chat_lines(1, "late"), "late.jsonl")
    rest = list_all(org.files, page_size=2)  # from the start: sees the new one
    after = []
    token = first.next_page_token
    for _ in range(10):
        if not token:
            break
        page = org.files.ListFiles(files_pb2.ListFilesRequest(page_size=2, page_token=token))
        after += [f.id for f in page.files]
        token = page.next_page_token
    assert not token
    assert [f.id for f in first.files] + after == uploaded[::-1]
    assert len(rest) == 6


def test_list_filters_by_purpose(server: Server) -> None:
    org = server.new_org("purpose-filter")
    tune = org.upload(chat_lines(2, "p"), "t.jsonl")
    data = org.upload(b"blob", "d.bin", File.PURPOSE_USER_DATA)
    assert [f.id for f in list_all(org.files, purpose=File.PURPOSE_USER_DATA)] == [data.id]
    assert [f.id for f in list_all(org.files, purpose=File.PURPOSE_FINE_TUNE)] == [tune.id]
    assert [f.id for f in list_all(org.files)] == [data.id, tune.id]


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "bm90LWpzb24=",  # base64 of "not-json"
        "WzFd",  # [1]: the wrong arity
        "W3siYSI6IDF9LCAieCJd",  # [{"a": 1}, "x"]: an object where a time goes
        "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAsICJ4Il0=",  # [1e30 as an int, "x"]
        "WyJ4IiwgNV0=",  # ["x", 5]: the fields swapped
    ],
)
def test_list_rejects_a_page_token_it_did_not_issue(server: Server, token: str) -> None:
    violations = invalid(
        server.default.files.ListFiles, files_pb2.ListFilesRequest(page_token=token)
    )
    assert set(violations) == {"page_token"}


def test_list_rejects_a_negative_page_size(server: Server) -> None:
    violations = invalid(server.default.files.ListFiles, files_pb2.ListFilesRequest(page_size=-1))
    assert set(violations) == {"page_size"}


def test_delete_removes_the_record_and_the_bytes(server: Server) -> None:
    org = server.default
    record = org.upload(chat_lines(3, "delete"), "delete.jsonl")
    blob = server.home / "blobs" / "files" / record.id
    assert blob.exists()

    org.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=record.id))

    assert not blob.exists()
    fails(Code.NOT_FOUND, org.files.GetFile, files_pb2.GetFileRequest(file_id=record.id))
    fails(Code.NOT_FOUND, org.files.DeleteFile, files_pb2.DeleteFileRequest(file_id=record.id))
    fails(Code.NOT_FOUND, download, org.files, record.id)
    assert record.id not in {f.id for f in list_all(org.files)}


def test_delete_refuses_a_file_an_unfinished_job_uses(server: Server) -> None:
    from tunewire.v1 import jobs_pb2

    org = server.default
    record = org.upload(chat_lines(12, "in-use"), "in-use.jsonl")
    job = org.create_job(record.id)
    failure = fails(
        Code.FAILED_PRECONDITION,
        org.files.DeleteFile,
        files_pb2.DeleteFileRequest(file_id=record.id),
    )
    assert job.id in failure.message
    assert org.files.GetFile(files_pb2.GetFileRequest(file_id=record.id)).id == record.id

    org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    org.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=record.id))


# --- DownloadFile -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 3 * 1024 * 1024 + 12345])
def test_download_returns_the_uploaded_bytes(server: Server, size: int) -> None:
    data = os.urandom(size)
    record = server.default.upload(data, f"blob-{size}.bin", File.PURPOSE_USER_DATA)
    assert (record.bytes, record.sha256) == (size, sha256(data))

    got, chunks = download(server.default.files, record.id)

    assert got == data
    assert chunks[-1].sha256 == sha256(data)
    assert all(not c.sha256 for c in chunks[:-1])
    assert all(c.total_bytes == size for c in chunks)
    assert all(len(c.data) <= 1024 * 1024 for c in chunks)
    assert [c.offset for c in chunks] == [
        sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))
    ]
    assert len(chunks) == max(1, -(-size // (1024 * 1024)))
