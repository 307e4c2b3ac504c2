"""The REST bridge's limits and hostile input, against real bridges: every body is
limited while it streams in, forms are limited part by part, the multipart parser
stays linear, and malformed JSON, keys or ids get a 4xx in each surface's envelope
(never a 500, never FastAPI's own `{"detail"}`).

`small` is a bridge of this module's own with small limits, in front of the
session's server; memory is measured on fresh bridges with the default limits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, chat_lines
from test_bridge import Stack, start_bridge

# The `rest` and `live` stacks (one each per session).
pytest_plugins = ["test_bridge"]

SMALL_JSON = 64 * 1024
SMALL_PARTS = 8
SMALL_TEXT = 16 * 1024
TIMEOUT = 30.0
BOUNDARY = "limits-boundary"
FORM_TYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
COHERE_DATASET = "/cohere/v1/datasets?name=limits&type=chat-finetune-input"
# One route of each surface that takes a JSON body, and one that takes a form.
JSON_ROUTES = [
    "/tunewire/v1/jobs",
    "/v1/fine_tuning/jobs",
    "/api/llm/fine_tuning/jobs",
    "/cohere/v1/finetuning/finetuned-models",
    "/api/v1/sessions",
]
FORM_ROUTES = ["/tunewire/v1/files", "/v1/files", COHERE_DATASET, "/api/v1/sessions/learn"]


@pytest.fixture(scope="module")
def small(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    bridge = start_bridge(
        server.address,
        tmp_path_factory.mktemp("small-bridge"),
        TUNEWIRE_MAX_JSON_BODY_BYTES=str(SMALL_JSON),
        TUNEWIRE_MAX_FORM_PARTS=str(SMALL_PARTS),
        TUNEWIRE_MAX_FORM_TEXT_BYTES=str(SMALL_TEXT),
    )
    yield Stack(server, bridge, server.default.key)
    bridge.stop()


@pytest.fixture
def fresh(server: Server, tmp_path: Path) -> Iterator[Stack]:
    """A bridge with the default limits, started for this test, so its memory is the test's."""
    bridge = start_bridge(server.address, tmp_path)
    yield Stack(server, bridge, server.default.key)
    bridge.stop()


def refusal(reply: httpx.Response, path: str, status: int) -> str:
    """Assert `reply` is `status` in the envelope of `path`'s surface; its body as text."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    if path.startswith("/tunewire"):
        assert isinstance(body["code"], int) and body["message"], body
    elif path.startswith(("/v1", "/api/llm")):
        assert body["error"]["message"] and body["error"]["type"], body
    elif path.startswith("/cohere"):
        assert set(body) == {"message"} and body["message"], body
    else:
        assert reply.headers["content-type"] == "application/problem+json"
        assert body["status"] == status and body["detail"], body
    return json.dumps(body)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


def grow(stack: Stack, path: str, body: Any, **headers: str) -> tuple[httpx.Response, float]:
    """POST `body` to a fresh bridge; the reply and how much the bridge's peak RSS grew (MiB)."""
    with stack.http() as http:
        http.get("/tunewire/v1/caller")  # warm up the paths every request takes
        before = stack.bridge.memory_kib()["VmRSS"]
        reply = http.post(path, content=body, headers=headers)
        return reply, (stack.bridge.memory_kib()["VmHWM"] - before) / 1024


# --- 1. form fields: how many and how big, in all -----------------------------------------


@pytest.mark.parametrize("path", FORM_ROUTES)
def test_forms_are_limited_in_parts_and_text(small: Stack, path: str) -> None:
    with small.http() as http:
        many = b"".join(part(f"f{i}", b"x") for i in range(SMALL_PARTS + 1)) + END
        text = refusal(http.post(path, content=many, headers=FORM_TYPE), path, 413)
        assert f"more than {SMALL_PARTS} parts" in text
        # Each field under max_form_field_bytes, together over max_form_text_bytes.
        big = b"".join(part(f"f{i}", b"x" * (SMALL_TEXT // 3)) for i in range(4)) + END
        text = refusal(http.post(path, content=big, headers=FORM_TYPE), path, 413)
        assert f"more than {SMALL_TEXT} bytes" in text


def test_file_parts_are_not_held_to_the_json_limit(small: Stack) -> None:
    data = chat_lines(2000, "big")
    assert len(data) > 2 * SMALL_JSON
    with small.http() as http:
        reply = http.post(
            "/tunewire/v1/files", data={"purpose": "PURPOSE_FINE_TUNE"}, files={"file": data}
        )
        assert reply.status_code == 200, reply.text
        assert http.delete(f"/tunewire/v1/files/{reply.json()['id']}").status_code == 200


def test_many_big_form_fields_are_413_in_bounded_memory(fresh: Stack) -> None:
    def body() -> Iterator[bytes]:
        for i in range(1500):
            yield part(f"field{i}", b"x" * 60_000)
        yield END

    reply, growth = grow(fresh, "/tunewire/v1/files", body(), **FORM_TYPE)
    assert "bytes of text" in refusal(reply, "/tunewire/v1/files", 413)
    print(f"1500 form fields of 60 KB: bridge peak RSS +{growth:.1f} MiB")
    assert growth < 32


# --- 2. every JSON body is limited while it streams in ------------------------------------


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_json_bodies_over_the_limit_are_413_on_every_surface(small: Stack, path: str) -> None:
    oversize = b'{"x": "' + b"y" * SMALL_JSON + b'"}'
    with small.http() as http:
        # With a Content-Length (refused before reading), and chunked (counted as it comes).
        sized = http.post(path, content=oversize, headers={"Content-Type": "application/json"})
        assert str(SMALL_JSON) in refusal(sized, path, 413)
        chunked = http.post(
            path,
            content=iter([oversize[:1000], oversize[1000:]]),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert str(SMALL_JSON) in refusal(chunked, path, 413)
        # A body that is not JSON is limited too: a JSON route never buffers it whole.
        text = http.post(path, content=oversize, headers={"Content-Type": "text/plain"})
        refusal(text, path, 413)


def test_a_chunked_json_body_is_refused_in_bounded_memory(fresh: Stack) -> None:
    piece = b"y" * (1024 * 1024)

    def body() -> Iterator[bytes]:
        yield b'{"model": "'
        for _ in range(96):
            yield piece
        yield b'"}'

    reply, growth = grow(
        fresh, "/v1/fine_tuning/jobs", body(), **{"Content-Type": "application/json"}
    )
    refusal(reply, "/v1/fine_tuning/jobs", 413)
    print(f"96 MiB chunked JSON body: bridge peak RSS +{growth:.1f} MiB")
    assert growth < 48  # the default limit is 16 MiB


# --- 3. the multipart parser is linear in transport padding -------------------------------


def test_megabytes_of_boundary_padding_are_refused_at_once(fresh: Stack) -> None:
    # Whitespace after a boundary line is allowed, a little of it. The quadratic
    # parser took minutes over this; the client gives up after TIMEOUT.
    padding = b" " * (12 * 1024 * 1024)
    body = f"--{BOUNDARY}".encode() + padding + b"\r\n"
    body += b'Content-Disposition: form-data; name="purpose"\r\n\r\nPURPOSE_FINE_TUNE\r\n' + END
    with fresh.http() as http:
        reply = http.post("/tunewire/v1/files", content=body, headers=FORM_TYPE, timeout=TIMEOUT)
        assert "padding" in refusal(reply, "/tunewire/v1/files", 400)


def test_a_little_padding_is_still_accepted(rest: Stack) -> None:
    form = (
        f"--{BOUNDARY}  \t\r\n".encode()
        + b'Content-Disposition: form-data; name="purpose"\r\n\r\nPURPOSE_FINE_TUNE\r\n'
        + f"--{BOUNDARY} \r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        + chat_lines(10, "padding")
        + b"\r\n"
        + END
    )
    with rest.http() as http:
        reply = http.post("/tunewire/v1/files", content=form, headers=FORM_TYPE)
        assert reply.status_code == 200, reply.text
        assert http.delete(f"/tunewire/v1/files/{reply.json()['id']}").status_code == 200


# --- 15. JSON that parses into what no route can take -------------------------------------

LONE_SURROGATE = {
    "/tunewire/v1/jobs": ('{"base_model": "tiny-llama", "suffix": "a\\ud800"}', "suffix"),
    "/v1/fine_tuning/jobs": ('{"model": "m", "training_file": "\\udfff"}', "training_file"),
    "/api/llm/fine_tuning/jobs": ('{"model": "\\ud800x", "training_file": "f"}', "model"),
    "/cohere/v1/finetuning/finetuned-models": (
        '{"name": "\\ud800", "settings": {"base_model": {"base_type": "BASE_TYPE_CHAT"},'
        ' "dataset_id": "d"}}',
        "name",
    ),
    "/api/v1/sessions": (
        '{"input": "\\ud800", "mode": "inference", "type": "text", "model_name": "none"}',
        "input",
    ),
}


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_lone_surrogates_are_400_naming_the_field(rest: Stack, path: str) -> None:
    body, field = LONE_SURROGATE[path]
    with rest.http() as http:
        reply = http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert field in refusal(reply, path, 400)
        # A surrogate pair is one character, and fine.
        paired = body.replace("\\ud800", "\\ud83d\\ude00").replace("\\udfff", "\\ud83d\\ude00")
        reply = http.post(path, content=paired, headers={"Content-Type": "application/json"})
        assert reply.status_code < 500, reply.text


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_deeply_nested_json_is_400_naming_the_body(rest: Stack, path: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with rest.http() as http:
        for body in (deep, '{"x": ' + deep + "}"):
            reply = http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert "body" in refusal(reply, path, 400)


# --- 16. keys that are not ASCII ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tunewire/v1/files"),
        ("POST", "/tunewire/v1/jobs"),
        ("GET", "/v1/files"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/api/llm/fine_tuning/jobs"),
        ("GET", "/cohere/v1/datasets"),
        ("GET", "/api/v1/sessions/x"),
    ],
)
def test_a_key_with_non_ascii_bytes_is_401(rest: Stack, method: str, path: str) -> None:
    with rest.http(key=None) as http:
        for key in (b"tw-\xe9\xff", "tw-" + rest.key[3:] + "\xe9"):
            raw = key if isinstance(key, bytes) else key.encode("latin-1")
            reply = http.request(method, path, headers={"Authorization": b"Bearer " + raw})
            refusal(reply, path, 401)


# --- 21. Cohere's and Helix's own ---------------------------------------------------------


def test_cohere_deletes_a_dataset_only_when_all_its_parts_exist(rest: Stack) -> None:
    with rest.http() as http:
        made = http.post(COHERE_DATASET, files={"data": ("d.jsonl", chat_lines(10, "parts"))})
        assert made.status_code == 200, made.text
        dataset = made.json()["id"]
        for wrong in (f"{dataset}~file-{'0' * 24}", f"{dataset}~{dataset}"):
            path = f"/cohere/v1/datasets/{wrong}"
            refusal(http.delete(path), path, 404)
            assert http.get(f"/cohere/v1/datasets/{dataset}").status_code == 200
        assert http.delete(f"/cohere/v1/datasets/{dataset}").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/cohere/v1/finetuning/finetuned-models",
        "/cohere/v1/finetuning/finetuned-models/x/events",
        # training-step-metrics pages by the control plane's cursor: an unknown job is a
        # 404 before its token is read (cursors are tested in tests/test_listing.py).
    ],
)
def test_cohere_refuses_negative_page_tokens(rest: Stack, path: str) -> None:
    with rest.http() as http:
        text = refusal(http.get(path, params={"page_token": "-1"}), path, 400)
        assert "page_token" in text


def test_helix_answers_form_failures_as_problems(rest: Stack) -> None:
    path = "/api/v1/sessions"
    with rest.http() as http:
        no_boundary = http.post(
            path, content=b"mode=finetune", headers={"Content-Type": "multipart/form-data"}
        )
        refusal(no_boundary, path, 415)
        oversize = http.post(
            path,
            content=b"mode=inference&type=text&input=" + b"x" * (2 * 1024 * 1024),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        refusal(oversize, path, 400)
