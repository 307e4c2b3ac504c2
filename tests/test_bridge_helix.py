"""Helix's session API on the bridge (`/api/v1`): the fine-tuning form from Helix's
docs, byte for byte, starts a text fine-tune; sessions (fine-tune and inference) are
stored, listed, read with their interactions, continued and deleted; documents become
question-answer pairs when a generator is configured, raw text otherwise.

tests/data/helix-session-data.form is what the docs' `cat >session-data.form
<<EOL … EOL` writes (seeds/helix-fine-tuning-session.txt): LF line ends, a
literal `\\n`, the docs' mojibake, boundary `---BOUNDARY`.

The question-answer generator of the trained session is a real OpenAI-compatible chat
endpoint run here (uvicorn), standing in for the external service an admin configures:
a tiny random-weight model writes no parseable pairs. The server's own models are the
generator of another test, which shows what happens when pairs cannot be read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Header
from test_bridge import Stack, start_bridge, wait_for

from bridge import qa

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
# The 28 keys of `config` in seeds/helix-fine-tuning-session.txt.
CONFIG_KEYS = {
    "active_tools",
    "app_query_params",
    "assistant_id",
    "avatar",
    "document_group_id",
    "document_ids",
    "eval_automatic_reason",
    "eval_automatic_score",
    "eval_manual_reason",
    "eval_manual_score",
    "eval_original_user_prompts",
    "eval_run_id",
    "eval_user_reason",
    "eval_user_score",
    "finetune_data_entity_id",
    "helix_version",
    "manually_review_questions",
    "origin",
    "original_mode",
    "priority",
    "rag_enabled",
    "rag_settings",
    "rag_source_data_entity_id",
    "shared",
    "stream",
    "system_prompt",
    "text_finetune_enabled",
    "uploaded_data_entity_id",
}
SUMMARY_KEYS = {
    "created",
    "updated",
    "scheduled",
    "completed",
    "session_id",
    "name",
    "interaction_id",
    "model_name",
    "mode",
    "type",
    "owner",
    "lora_dir",
    "summary",
    "priority",
}
PAIRS_PER_CHUNK = 6

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


def learn(http: httpx.Client) -> dict[str, Any]:
    reply = http.post(
        "/api/v1/sessions/learn", content=SEED_FORM.read_bytes(), headers=SEED_HEADERS
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def listed(http: httpx.Client, **params: int) -> dict[str, Any]:
    reply = http.get("/api/v1/sessions", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_seed_form_starts_a_text_fine_tune(rest: Stack) -> None:
    with rest.http() as http:
        session = learn(http)
        assert set(session) == SESSION_KEYS and set(session["config"]) == CONFIG_KEYS
        assert (session["mode"], session["type"], session["model_name"]) == (
            "finetune",
            "text",
            "tiny-llama",
        )
        assert session["id"].startswith("conv-") and session["lora_dir"] == ""
        assert session["name"] == "textfile-1.txt" and session["owner"] == "default"
        user, system = session["interactions"]
        assert user["creator"] == "user" and user["files"] == ["textfile-1.txt", "textfile-2.txt"]
        assert system["creator"] == "system" and system["state"] == "waiting"
        assert (system["status"], system["progress"], system["finished"]) == ("queued", 0, False)
        # No generator is configured here: the session says it trains on the raw text.
        assert system["metadata"]["data_prep"] == "raw_text"
        assert "No question-answer generator is configured" in system["message"]
        assert "raw text" in system["message"]
        assert http.get(f"/api/v1/sessions/{session['id']}").json() == session

        # The documents are one .txt upload, joined by a blank line: raw text to train on.
        job = http.get(f"/tunewire/v1/jobs/{system['metadata']['job_id']}").json()
        document = http.get(f"/tunewire/v1/files/{job['training_file']}").json()
        assert document["filename"] == "documents.txt"
        assert document["validation"]["format"] == "text"
        assert session["config"]["uploaded_data_entity_id"] == job["training_file"]
        assert session["config"]["finetune_data_entity_id"] == job["training_file"]
        content = http.get(f"/v1/files/{job['training_file']}/content").content
        assert content == b"\n\n".join(seed_documents())

        # The API reference posts the same form to /sessions.
        again = http.post("/api/v1/sessions", content=SEED_FORM.read_bytes(), headers=SEED_HEADERS)
        assert again.status_code == 200 and again.json()["mode"] == "finetune"
        again_job = again.json()["interactions"][1]["metadata"]["job_id"]

        http.post(f"/tunewire/v1/jobs/{job['id']}:cancel")
        cancelled = http.get(f"/api/v1/sessions/{session['id']}").json()["interactions"][1]
        assert (cancelled["state"], cancelled["finished"], cancelled["error"]) == (
            "error",
            True,
            "cancelled",
        )

        # Deleting a session cancels its job, answers with the session, and hides it.
        deleted = http.delete(f"/api/v1/sessions/{again.json()['id']}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["interactions"][1]["error"] == "cancelled"
        assert http.get(f"/tunewire/v1/jobs/{again_job}").json()["state"] == "STATE_CANCELLED"
        problem(http.get(f"/api/v1/sessions/{again.json()['id']}"), 404)
        ids = {s["session_id"] for s in listed(http)["sessions"]}
        assert session["id"] in ids and again.json()["id"] not in ids


def test_inference_sessions_are_kept_listed_continued_and_deleted(rest: Stack) -> None:
    with rest.http() as http:
        form = http.post(
            "/api/v1/sessions",
            data={"input": "yo", "mode": "inference", "type": "text", "model_name": "tiny-llama"},
        )
        assert form.status_code == 200, form.text
        session = form.json()
        assert (session["mode"], session["model_name"]) == ("inference", "tiny-llama")
        assert set(session["config"]) == CONFIG_KEYS
        assert session["config"]["original_mode"] == "inference"
        asked, answered = session["interactions"]
        assert (asked["creator"], asked["message"], asked["mode"]) == ("user", "yo", "inference")
        assert answered["creator"] == "system" and answered["state"] == "complete"
        assert isinstance(answered["message"], str)
        assert http.get(f"/api/v1/sessions/{session['id']}").json() == session

        # A follow-up appends the next two interactions (Helix's PUT, a form or JSON).
        more = http.put(f"/api/v1/sessions/{session['id']}", data={"input": "and then?"})
        assert more.status_code == 200, more.text
        assert [i["message"] for i in more.json()["interactions"][::2]] == ["yo", "and then?"]
        again = http.put(f"/api/v1/sessions/{session['id']}", json={"input": "ok"})
        assert len(again.json()["interactions"]) == 6
        assert http.get(f"/api/v1/sessions/{session['id']}").json() == again.json()
        problem(http.put(f"/api/v1/sessions/{session['id']}", json={"inpt": "typo"}), 400)

        as_json = http.post(
            "/api/v1/sessions",
            json={"input": "hi", "mode": "inference", "type": "text", "model_name": "tiny-llama"},
        )
        assert as_json.status_code == 200 and as_json.json()["interactions"][0]["message"] == "hi"

        # Helix's list: summaries, newest first, paged by offset and limit, all counted.
        page = listed(http, limit=2)
        assert page["counter"]["count"] >= 2
        newest, second = page["sessions"]
        assert set(newest) == SUMMARY_KEYS
        assert (newest["session_id"], second["session_id"]) == (
            as_json.json()["id"],
            session["id"],
        )
        assert (newest["summary"], newest["mode"], newest["model_name"]) == (
            "hi",
            "inference",
            "tiny-llama",
        )
        assert second["interaction_id"] == again.json()["interactions"][-1]["id"]
        assert listed(http, offset=1, limit=1)["sessions"] == [second]
        problem(http.get("/api/v1/sessions", params={"limit": -1}), 400)

        gone = http.delete(f"/api/v1/sessions/{session['id']}")
        assert gone.status_code == 200 and gone.json() == again.json()
        problem(http.get(f"/api/v1/sessions/{session['id']}"), 404)
        problem(http.delete(f"/api/v1/sessions/{session['id']}"), 404)
        assert session["id"] not in {s["session_id"] for s in listed(http)["sessions"]}


def test_helix_errors_are_problem_details(rest: Stack) -> None:
    with rest.http(key=None) as anonymous:
        problem(anonymous.get("/api/v1/sessions/ftjob-nope"), 401)
        problem(anonymous.get("/api/v1/sessions"), 401)
    with rest.http() as http:
        assert problem(http.get("/api/v1/sessions/conv-nope"), 404)["detail"] == (
            "session 'conv-nope' not found"
        )
        image = problem(
            http.post(
                "/api/v1/sessions", data={"input": "fish", "mode": "inference", "type": "image"}
            ),
            400,
        )
        assert [p["name"] for p in image["invalid_params"]] == ["type"]
        unknown = problem(
            http.post(
                "/api/v1/sessions",
                json={
                    "input": "hi",
                    "mode": "inference",
                    "type": "text",
                    "lora_dir": "/sessions/x/lora",
                },
            ),
            400,
        )
        assert [p["name"] for p in unknown["invalid_params"]] == ["lora_dir"]

        # Another org's session is missing, like one that never was.
        mine = http.post(
            "/api/v1/sessions",
            json={"input": "mine", "mode": "inference", "type": "text", "model_name": "tiny-llama"},
        ).json()
    with rest.http(key=rest.server.other.key) as other:
        problem(other.get(f"/api/v1/sessions/{mine['id']}"), 404)
        problem(other.delete(f"/api/v1/sessions/{mine['id']}"), 404)
        assert mine["id"] not in {s["session_id"] for s in listed(other)["sessions"]}

    with rest.http() as http:
        before = file_ids(http)
        form = SEED_FORM.read_bytes().replace(b"\nfinetune\n", b"\ninference\n")
        wrong_mode = problem(
            http.post("/api/v1/sessions/learn", content=form, headers=SEED_HEADERS), 400
        )
        assert [p["name"] for p in wrong_mode["invalid_params"]] == ["mode"]
        assert file_ids(http) == before  # the uploaded documents were deleted


# --- question-answer pairs ------------------------------------------------------------------


def stand_in_pairs(text: str) -> list[dict[str, str]]:
    """What the stand-in generator answers for a chunk: pairs read off its words."""
    words = text.split()
    return [
        {
            "question": f"Which word is number {i + 1} of the text?",
            "answer": f"Word {i + 1} is {words[i % len(words)]!r}.",
        }
        for i in range(PAIRS_PER_CHUNK)
    ]


def stand_in_app(calls: list[dict[str, Any]]) -> FastAPI:
    """An OpenAI-compatible `/v1/chat/completions` that answers with question-answer
    JSON (fenced, as chat models often write it) made from the prompt's text."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(body: dict[str, Any], authorization: str = Header("")) -> dict[str, Any]:
        calls.append({"body": body, "authorization": authorization})
        _, _, text = body["messages"][-1]["content"].partition("\n\n")
        content = "Here you go:\n```json\n" + json.dumps(stand_in_pairs(text)) + "\n```"
        return {
            "id": f"chatcmpl-{len(calls)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }

    return app


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The stand-in generator on a free port: its base URL, and the calls it got."""
    calls: list[dict[str, Any]] = []
    server = uvicorn.Server(
        uvicorn.Config(stand_in_app(calls), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", calls
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def qa_live(
    live: Stack, stand_in: tuple[str, list], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The `live` server (it trains) behind a bridge whose generator is the stand-in."""
    bridge = start_bridge(
        live.server.address,
        tmp_path_factory.mktemp("qa-bridge"),
        TUNEWIRE_QA_GENERATOR_URL=stand_in[0],
        TUNEWIRE_QA_GENERATOR_MODEL="stand-in-qa",
        TUNEWIRE_QA_GENERATOR_KEY="sk-stand-in",
    )
    yield Stack(live.server, bridge, live.key)
    bridge.stop()


def test_documents_become_qa_pairs_that_train_as_chat(
    qa_live: Stack, stand_in: tuple[str, list]
) -> None:
    _, calls = stand_in
    with qa_live.http() as http:
        session = learn(http)
        documents, *pairs, finetune = session["interactions"]
        assert documents["files"] == ["textfile-1.txt", "textfile-2.txt"]

        # One call per document (each is one chunk), with the admin's model and key.
        asked = calls[-2:]
        assert [c["authorization"] for c in asked] == ["Bearer sk-stand-in"] * 2
        assert {c["body"]["model"] for c in asked} == {"stand-in-qa"}
        texts = sorted(c["body"]["messages"][-1]["content"] for c in asked)
        assert texts == [
            f"Document: {name}\n\n{doc.decode().strip()}"
            for name, doc in zip(
                ["textfile-1.txt", "textfile-2.txt"], seed_documents(), strict=True
            )
        ]

        # The pairs are the session's interactions: question (user), answer (system).
        expected = [
            (p["question"], p["answer"], name)
            for name, doc in zip(
                ["textfile-1.txt", "textfile-2.txt"], seed_documents(), strict=True
            )
            for p in stand_in_pairs(doc.decode())
        ]
        shown = [
            (q["message"], a["message"], q["metadata"]["document"])
            for q, a in zip(pairs[::2], pairs[1::2], strict=True)
        ]
        assert shown == expected
        assert {(i["creator"], i["mode"]) for i in pairs[::2]} == {("user", "finetune")}
        assert {(i["creator"], i["mode"]) for i in pairs[1::2]} == {("system", "finetune")}
        assert finetune["metadata"]["data_prep"] == "qa_pairs"
        assert finetune["message"].startswith("stand-in-qa")
        assert f"{len(expected)} question-answer pairs" in finetune["message"]
        assert finetune["data_prep_total_chunks"] == 2 and not finetune["data_prep_limited"]
        assert finetune["data_prep_chunks"] == {
            name: [{"index": 0, "prompt_name": "tunewire-qa", "question_count": 6, "error": ""}]
            for name in ("textfile-1.txt", "textfile-2.txt")
        }

        # The job trains on the pairs as a chat-format file.
        job = http.get(f"/tunewire/v1/jobs/{finetune['metadata']['job_id']}").json()
        training = http.get(f"/tunewire/v1/files/{job['training_file']}").json()
        assert (training["filename"], training["validation"]["format"]) == (
            "qa-pairs.jsonl",
            "chat",
        )
        lines = http.get(f"/v1/files/{job['training_file']}/content").content.splitlines()
        assert [json.loads(line)["messages"] for line in lines] == [
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a, _ in expected
        ]
        assert session["config"]["finetune_data_entity_id"] == job["training_file"]

        def trained() -> dict[str, Any] | None:
            now = http.get(f"/api/v1/sessions/{session['id']}").json()
            return now if now["interactions"][-1]["finished"] else None

        done = wait_for(trained, timeout=300)
        finished = done["interactions"][-1]
        assert (finished["state"], finished["progress"]) == ("complete", 100), finished
        lora_dir = f"/sessions/{session['id']}/lora"
        assert done["lora_dir"] == finished["lora_dir"] == lora_dir
        model = finished["metadata"]["fine_tuned_model"]
        assert model.startswith("ft:tiny-llama:")

        # Helix clients chat with the adapter by its lora_dir, or go on in the session.
        chat = http.post(
            "/api/v1/sessions",
            data={
                "input": "Which word is number 1?",
                "mode": "inference",
                "type": "text",
                "lora_dir": lora_dir,
            },
        )
        assert chat.status_code == 200, chat.text
        assert (chat.json()["lora_dir"], chat.json()["model_name"]) == (lora_dir, "tiny-llama")
        follow = http.put(f"/api/v1/sessions/{session['id']}", data={"input": "Word 2?"})
        assert follow.status_code == 200, follow.text
        asked_, answered = follow.json()["interactions"][-2:]
        assert (asked_["mode"], asked_["message"], answered["creator"]) == (
            "inference",
            "Word 2?",
            "system",
        )
        summary = next(s for s in listed(http)["sessions"] if s["session_id"] == session["id"])
        assert (summary["lora_dir"], summary["mode"]) == (lora_dir, "finetune")


def test_unreadable_pairs_fall_back_to_raw_text(
    rest: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The server's own tiny random-weight model as the generator: it writes no pairs
    that can be read, so the session trains on the raw text and says why."""
    bridge = start_bridge(
        rest.server.address,
        tmp_path_factory.mktemp("qa-self"),
        TUNEWIRE_QA_GENERATOR_MODEL="tiny-llama",
        TUNEWIRE_QA_MAX_PAIRS_PER_CHUNK="1",
    )
    try:
        with Stack(rest.server, bridge, rest.key).http() as http:
            session = learn(http)
            documents, finetune = session["interactions"]
            assert finetune["metadata"]["data_prep"] == "raw_text"
            assert finetune["message"].startswith("tiny-llama (this server's Generate) wrote 0")
            assert "fewer than the 10 a chat fine-tune needs" in finetune["message"]
            assert "raw text" in finetune["message"]
            chunks = finetune["data_prep_chunks"]
            assert sorted(chunks) == ["textfile-1.txt", "textfile-2.txt"]
            assert all(c[0]["question_count"] == 0 and c[0]["error"] for c in chunks.values())
            job = http.get(f"/tunewire/v1/jobs/{finetune['metadata']['job_id']}").json()
            assert job["training_file"] == session["config"]["uploaded_data_entity_id"]
            http.delete(f"/api/v1/sessions/{session['id']}")
    finally:
        bridge.stop()


# --- the pieces of question-answer generation -------------------------------------------------


def test_pairs_are_read_from_what_models_write() -> None:
    pair = {"question": "Q1?", "answer": "A1."}
    assert qa.parse_pairs(json.dumps([pair]), 5) == [("Q1?", "A1.")]
    assert qa.parse_pairs("Sure!\n```json\n" + json.dumps({"pairs": [pair]}) + "\n```", 5) == [
        ("Q1?", "A1.")
    ]
    assert qa.parse_pairs(
        "1. Q: What is it?\nA: A test.\n2. Question: Why?\nAnswer: Because.", 5
    ) == [
        ("What is it?", "A test."),
        ("Why?", "Because."),
    ]
    many = [{"Question": f"Q{i}?", "Answer": f"A{i}."} for i in range(9)]
    assert len(qa.parse_pairs(json.dumps(many), 3)) == 3
    # Empty, duplicate and overlong sides are dropped; prose yields nothing.
    odd = [{"question": "", "answer": "x"}, pair, pair, {"question": "Q?", "answer": "a" * 5000}]
    assert qa.parse_pairs(json.dumps(odd), 5) == [("Q1?", "A1.")]
    assert qa.parse_pairs("I would rather not.", 5) == []


def test_documents_are_cut_into_bounded_chunks() -> None:
    text = ("One sentence here. " * 40).strip()
    pieces = qa.cut_chunks(text, 200)
    assert all(len(p) <= 200 for p in pieces) and all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == text
    chunks, limited = qa.plan_chunks([("a", text), ("b", "short"), ("c", "more")], 200, 2, 3)
    assert [(c.document, c.index) for c in chunks] == [("a", 0), ("a", 1), ("b", 0)]
    assert limited
