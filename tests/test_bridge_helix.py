"""Helix's session API on the bridge (`/api/v1`): the fine-tuning form from Helix's
docs, byte for byte, starts a text fine-tune; sessions show it under
`interactions`; inference sessions chat.

tests/data/helix-session-data.form is what the docs' `cat >session-data.form
<<EOL … EOL` writes (seeds/helix-fine-tuning-session.txt): LF line ends, a
literal `\\n`, the docs' mojibake, boundary `---BOUNDARY`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from test_bridge import Stack

SEED_FORM = Path(__file__).parent / "data" / "helix-session-data.form"
SEED_HEADERS = {"Content-Type": "multipart/form-data; boundary=---BOUNDARY"}
SESSION_KEYS = {
    "id",
    "name",
    "created",
    "updated",
    "parent_session",
    "parent_app",
    "config",
    "mode",
    "type",
    "model_name",
    "lora_dir",
    "interactions",
    "owner",
    "owner_type",
}

# The `rest` and `live` stacks (one each per session).
pytest_plugins = ["test_bridge"]


def seed_documents() -> list[bytes]:
    """The two documents of the seed form, as the form carries them."""
    parts = SEED_FORM.read_bytes().split(b"\n-----BOUNDARY")
    return [part.split(b"\n\n", 1)[1] for part in parts[:2]]


def file_ids(http: httpx.Client) -> set[str]:
    return {f["id"] for f in http.get("/v1/files").json()["data"]}


def problem(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_seed_form_starts_a_text_fine_tune(rest: Stack) -> None:
    with rest.http() as http:
        reply = http.post(
            "/api/v1/sessions/learn", content=SEED_FORM.read_bytes(), headers=SEED_HEADERS
        )
        assert reply.status_code == 200, reply.text
        session = reply.json()
        assert set(session) == SESSION_KEYS
        assert (session["mode"], session["type"], session["model_name"]) == (
            "finetune",
            "text",
            "tiny-llama",
        )
        assert session["name"] == "textfile-1.txt" and session["owner"] == "default"
        user, system = session["interactions"]
        assert user["creator"] == "user" and user["files"] == ["textfile-1.txt", "textfile-2.txt"]
        assert system["creator"] == "system" and system["state"] == "waiting"
        assert (system["status"], system["progress"], system["finished"]) == ("queued", 0, False)
        assert http.get(f"/api/v1/sessions/{session['id']}").json() == session

        # The documents are one .txt upload, joined by a blank line: raw text to train on.
        job = http.get(f"/tunewire/v1/jobs/{session['id']}").json()
        document = http.get(f"/tunewire/v1/files/{job['training_file']}").json()
        assert document["filename"] == "documents.txt"
        assert document["validation"]["format"] == "text"
        content = http.get(f"/v1/files/{job['training_file']}/content").content
        assert content == b"\n\n".join(seed_documents())

        # The API reference posts the same form to /sessions.
        again = http.post("/api/v1/sessions", content=SEED_FORM.read_bytes(), headers=SEED_HEADERS)
        assert again.status_code == 200 and again.json()["mode"] == "finetune"

        for started in (session["id"], again.json()["id"]):
            http.post(f"/tunewire/v1/jobs/{started}:cancel")
        cancelled = http.get(f"/api/v1/sessions/{session['id']}").json()["interactions"][1]
        assert (cancelled["state"], cancelled["finished"], cancelled["error"]) == (
            "error",
            True,
            "cancelled",
        )


def test_inference_session_chats(rest: Stack) -> None:
    with rest.http() as http:
        form = http.post(
            "/api/v1/sessions",
            data={"input": "yo", "mode": "inference", "type": "text", "model_name": "tiny-llama"},
        )
        assert form.status_code == 200, form.text
        session = form.json()
        assert (session["mode"], session["model_name"]) == ("inference", "tiny-llama")
        asked, answered = session["interactions"]
        assert (asked["creator"], asked["message"]) == ("user", "yo")
        assert answered["creator"] == "system" and answered["state"] == "complete"
        assert isinstance(answered["message"], str)
        as_json = http.post(
            "/api/v1/sessions",
            json={"input": "hi", "mode": "inference", "type": "text", "model_name": "tiny-llama"},
        )
        assert as_json.status_code == 200 and as_json.json()["interactions"][0]["message"] == "hi"


def test_helix_errors_are_problem_details(rest: Stack) -> None:
    with rest.http(key=None) as anonymous:
        problem(anonymous.get("/api/v1/sessions/ftjob-nope"), 401)
    with rest.http() as http:
        problem(http.get("/api/v1/sessions/ftjob-nope"), 404)
        image = problem(
            http.post(
                "/api/v1/sessions", data={"input": "fish", "mode": "inference", "type": "image"}
            ),
            400,
        )
        assert [p["name"] for p in image["invalid_params"]] == ["type"]

        before = file_ids(http)
        form = SEED_FORM.read_bytes().replace(b"\nfinetune\n", b"\ninference\n")
        wrong_mode = problem(
            http.post("/api/v1/sessions/learn", content=form, headers=SEED_HEADERS), 400
        )
        assert [p["name"] for p in wrong_mode["invalid_params"]] == ["mode"]
        assert file_ids(http) == before  # the uploaded documents were deleted
