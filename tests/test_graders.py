"""OpenAI's graders (`trainer.graders`): each type scores as OpenAI's do, the python
grader's sandbox refuses the network, writes outside its scratch dir, and runs past its
time and memory limits, each as a grader error rather than a crash; model graders call an
OpenAI-compatible endpoint; malformed graders are refused naming the bad field, through
`GraderService` (INVALID_ARGUMENT), the OpenAI routes (400, OpenAI's envelope, also with
the official SDK) and job creation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import openai
import pytest
from conftest import Org, Server, invalid, make_job
from test_bridge import Stack
from test_bridge_openai import sdk

from trainer import graders
from trainer.graders import formula, remote, sandbox, similarity
from tunewire.v1 import graders_pb2, graders_pb2_grpc, jobs_pb2

pytest_plugins = ["test_bridge"]

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
EXACT_FIELDS = {k: EXACT[k] for k in ("input", "reference", "operation")}
SIMILAR = {
    "type": "text_similarity",
    "name": "similar",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "rouge_l",
}
MULTI = {
    "type": "multi",
    "name": "both",
    "graders": {"exact": EXACT, "similar": SIMILAR},
    "calculate_output": "0.5 * exact + 0.5 * similar",
}
LIMITS = sandbox.Limits(timeout_seconds=4, cpu_seconds=2, memory_bytes=256 * 1024 * 1024)
CONTEXT = graders.Context(endpoint=remote.Endpoint(), limits=LIMITS)


def python_grader(body: str) -> dict[str, Any]:
    return {"type": "python", "name": "py", "source": body}


def test_string_check_operations() -> None:
    item = {"answer": "Paris"}
    for operation, sample, expected in [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "Rome", 1.0),
        ("like", "It is Paris.", 1.0),
        ("like", "It is paris.", 0.0),
        ("ilike", "It is paris.", 1.0),
    ]:
        grader = {**EXACT, "operation": operation}
        assert graders.run(grader, sample, item, CONTEXT).reward == expected, operation


def test_text_similarity_metrics() -> None:
    same, other = "the cat sat on the mat", "a dog ran in the park"
    for metric in similarity.METRICS:
        # METEOR keeps a small fragmentation penalty even for identical texts.
        assert similarity.METRICS[metric](same, same) == pytest.approx(1.0, abs=0.01), metric
        assert 0.0 <= similarity.METRICS[metric](same, other) < 0.5, metric
    assert similarity.rouge_n("the cat sat", "the cat ran", 1) == pytest.approx(2 / 3)
    assert similarity.rouge_l("a b c d", "a c d") == pytest.approx(2 * (3 / 4) * 1 / (3 / 4 + 1))
    assert similarity.fuzzy_match("kitten", "sitting") == pytest.approx(2 * 4 / 13)


def test_multi_grader_formula_and_templates() -> None:
    result = graders.run(MULTI, "Paris", {"answer": "Paris"}, CONTEXT)
    assert result.reward == 1.0 and result.sub_rewards == {"exact": 1.0, "similar": 1.0}
    result = graders.run(MULTI, "Paris France", {"answer": "Paris"}, CONTEXT)
    assert result.sub_rewards["exact"] == 0.0 and 0 < result.reward < 0.5
    nested = {**EXACT, "reference": "{{item.a.b[1]}}"}
    assert graders.run(nested, "y", {"a": {"b": ["x", "y"]}}, CONTEXT).reward == 1.0
    json_field = {**EXACT, "input": "{{sample.output_json.city}}"}
    assert graders.run(json_field, '{"city": "Paris"}', {"answer": "Paris"}, CONTEXT).reward == 1
    missing = graders.run(EXACT, "Paris", {"other": 1}, CONTEXT)
    assert missing.reward == 0.0 and missing.errors["invalid_variable_error"]
    # The formula is walked as a tree, never eval'd: anything but arithmetic is refused.
    for bad in ("__import__('os')", "exact.__class__", "[exact]", "exact if 1 else 0"):
        with pytest.raises(formula.FormulaError):
            formula.parse(bad, {"exact"})
    tree = formula.parse("clip(max(a, b) ** 2 - 1 / 4, 0, 1)", {"a", "b"})
    assert formula.evaluate(tree, {"a": 0.5, "b": 1.0}) == 0.75


def test_python_grader_runs_in_its_sandbox() -> None:
    source = (
        "import json, math\n"
        "def grade(sample, item):\n"
        "    open('notes.txt', 'w').write(sample['output_text'])\n"  # its scratch dir: fine
        "    return float(open('notes.txt').read() == item['answer'])\n"
    )
    result = graders.run(python_grader(source), "Paris", {"answer": "Paris"}, CONTEXT)
    assert (result.reward, result.failed) == (1.0, False), result.details


@pytest.mark.parametrize(
    ("body", "flag", "said"),
    [
        (
            "import socket\ndef grade(s, i):\n    socket.create_connection(('1.1.1.1', 80), 1)\n",
            "python_grader_runtime_error",
            "network access is not allowed",
        ),
        (
            "def grade(s, i):\n    open('/tmp/tunewire-escaped.txt', 'w').write('x')\n",
            "python_grader_runtime_error",
            "only the scratch directory",
        ),
        (
            "def grade(s, i):\n    return len(open('/etc/hostname').read())\n",
            "python_grader_runtime_error",
            "reading '/etc/hostname' is not allowed",
        ),
        (
            "import os\ndef grade(s, i):\n    return os.system('true')\n",
            "python_grader_runtime_error",
            "os.system is not allowed",
        ),
        ("def grade(s, i):\n    while True: pass\n", "python_grader_server_error", "timeout"),
        (
            "import time\ndef grade(s, i):\n    time.sleep(60)\n",
            "python_grader_server_error",
            "timeout",
        ),
        (
            "def grade(s, i):\n    return len(bytearray(2 * 1024 ** 3))\n",
            "python_grader_server_error",
            "memory_limit",
        ),
        ("def grade(s, i):\n    return 1 / 0\n", "python_grader_runtime_error", "ZeroDivision"),
    ],
    ids=["network", "write", "read", "process", "cpu", "wall", "memory", "raises"],
)
def test_the_sandbox_refuses_each_as_a_grader_error(body: str, flag: str, said: str) -> None:
    result = graders.run(python_grader(body), "x", {}, CONTEXT)
    assert result.reward == 0.0 and result.errors[flag], result.errors
    assert said in result.message, result.message
    assert result.execution_time < LIMITS.timeout_seconds + 2


def test_the_sandbox_has_no_network_at_all() -> None:
    # Below the audit hook: a new network namespace where no interface is up.
    outcome = sandbox.run("def grade(s, i):\n    return 1\n", {}, {}, LIMITS)
    assert outcome.score == 1 and outcome.network == "network namespace"


# --- model graders, against an OpenAI-compatible endpoint --------------------------------------


@pytest.fixture
def endpoint() -> Iterator[tuple[remote.Endpoint, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append({"path": self.path, **body})
            if self.path.endswith("/embeddings"):
                reply = {"data": [{"index": i, "embedding": [1.0, float(i)]} for i in range(2)]}
            else:
                text = body["messages"][-1]["content"]
                answer = '{"result": 0.7}' if "score" in text else "The label is good."
                reply = {
                    "choices": [{"message": {"role": "assistant", "content": answer}}],
                    "usage": {"total_tokens": 11},
                }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield remote.Endpoint(f"http://127.0.0.1:{server.server_port}/v1", "k", "emb"), seen
    finally:
        server.shutdown()


def test_model_graders_ask_the_configured_endpoint(endpoint: Any) -> None:
    config, seen = endpoint
    context = graders.Context(endpoint=config, limits=LIMITS)
    messages = [
        {"role": "developer", "content": "Grade the answer."},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "score {{sample.output_text}}"}],
        },
    ]
    score = {
        "type": "score_model",
        "name": "s",
        "model": "judge",
        "input": messages,
        "range": [0, 1],
    }
    assert graders.problems(score, context=context) == []
    result = graders.run(score, "Paris", {}, context)
    assert result.reward == pytest.approx(0.7) and result.tokens_per_model == {"judge": 11}
    assert seen[-1]["messages"][1]["content"] == "score Paris"
    assert seen[-1]["messages"][0]["role"] == "system"
    label = {
        "type": "label_model",
        "name": "l",
        "model": "judge",
        "input": [{"role": "user", "content": "label {{sample.output_text}}"}],
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
    }
    assert graders.run(label, "Paris", {}, context).reward == 1.0
    cosine = {**SIMILAR, "evaluation_metric": "cosine"}
    assert graders.run(cosine, "a", {"answer": "b"}, context).reward == pytest.approx(0.5**0.5)
    # No endpoint configured: refused up front, saying what the admin sets.
    unconfigured = graders.problems(score, context=CONTEXT)
    assert "TUNEWIRE_GRADER_BASE_URL" in dict(unconfigured)["grader.model"]
    assert (
        "TUNEWIRE_GRADER_EMBEDDING_MODEL"
        in dict(graders.problems(cosine, context=CONTEXT))["grader.evaluation_metric"]
    )
    down = graders.Context(endpoint=remote.Endpoint("http://127.0.0.1:9/v1"), limits=LIMITS)
    failed = graders.run(score, "Paris", {}, down)
    assert failed.errors["model_grader_server_error"] and failed.reward == 0.0


# --- malformed graders, refused with the path of the bad field ---------------------------------

MALFORMED: list[tuple[dict[str, Any], str, str]] = [
    ({"type": "regex_check", "name": "x"}, "grader.type", "unknown grader type"),
    ({**EXACT, "reference": "{{item.answer"}, "grader.reference", "unbalanced"),
    ({**EXACT, "input": "{{answer}}"}, "grader.input", "item.* or sample.*"),
    ({**EXACT, "operation": "startswith"}, "grader.operation", "eq, ne, like, ilike"),
    ({**MULTI, "calculate_output": "exact +"}, "grader.calculate_output", "does not parse"),
    ({**MULTI, "calculate_output": "exact + other"}, "grader.calculate_output", "'other'"),
    (
        {**MULTI, "graders": {"exact": EXACT, "py": python_grader("def grade(s, i) return 1")}},
        "grader.graders.py.source",
        "syntax error at line 1",
    ),
]


@pytest.mark.parametrize(("grader", "field", "said"), MALFORMED)
def test_malformed_graders_name_the_bad_field(
    grader: dict[str, Any], field: str, said: str
) -> None:
    found = dict(graders.problems(grader, context=CONTEXT))
    assert field in found and said in found[field], found


@pytest.fixture(scope="module")
def org(server: Server) -> Iterator[Org]:
    org = server.new_org("graders")
    yield org
    org.close()


def grader_stub(org: Org) -> tuple[graders_pb2_grpc.GraderServiceStub, list[tuple[str, str]]]:
    channel = grpc.insecure_channel(org.address)
    return graders_pb2_grpc.GraderServiceStub(channel), [("authorization", f"Bearer {org.key}")]


def test_grader_service_validates_and_runs(org: Org) -> None:
    from server.graders import from_json, to_json

    stub, auth = grader_stub(org)
    message = from_json(MULTI)
    assert to_json(message) == MULTI  # the contract holds OpenAI's shape exactly
    reply = stub.ValidateGrader(graders_pb2.ValidateGraderRequest(grader=message), metadata=auth)
    assert reply.grader == message
    request = graders_pb2.RunGraderRequest(grader=message, model_sample="Paris")
    request.item.update({"answer": "Paris"})
    ran = stub.RunGrader(request, metadata=auth)
    assert ran.reward == 1.0 and dict(ran.sub_rewards) == {"exact": 1.0, "similar": 1.0}
    broken = from_json({**MULTI, "calculate_output": "exact +"})
    found = invalid(
        stub.ValidateGrader, graders_pb2.ValidateGraderRequest(grader=broken), metadata=auth
    )
    assert "does not parse" in found["grader.calculate_output"]
    found = invalid(stub.ValidateGrader, graders_pb2.ValidateGraderRequest(), metadata=auth)
    assert "grader.kind" in found


def test_openai_grader_routes_and_sdk(rest: Stack) -> None:
    with sdk(rest) as client:
        ran = client.fine_tuning.alpha.graders.run(
            grader=MULTI, model_sample="Paris", item={"answer": "Paris"}
        )
        assert ran.reward == 1.0 and ran.sub_rewards == {"exact": 1.0, "similar": 1.0}
        assert ran.metadata.type == "multi" and not ran.metadata.errors.other_error
        checked = client.fine_tuning.alpha.graders.validate(grader=EXACT)
        assert checked.grader is not None and checked.grader.type == "string_check"
        failing = client.fine_tuning.alpha.graders.run(
            grader=python_grader("def grade(s, i):\n    raise ValueError('nope')\n"),
            model_sample="x",
        )
        assert failing.reward == 0 and failing.metadata.errors.python_grader_runtime_error
        assert "ValueError: nope" in failing.metadata.errors.python_grader_runtime_error_details
        with pytest.raises(openai.BadRequestError) as raised:
            client.fine_tuning.alpha.graders.validate(grader={**EXACT, "input": "{{answer}}"})
        error = raised.value.body
        assert error["param"] == "grader.input" and error["type"] == "invalid_request_error"
    with rest.http() as http:
        reply = http.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": {"type": "x"}})
        assert reply.status_code == 400
        assert reply.json()["error"]["param"] == "grader.type"
        # The native API transcodes GraderService too.
        native = http.post(
            "/tunewire/v1/graders:run",
            json={
                "grader": {"name": "exact", "stringCheck": {**EXACT_FIELDS}},
                "modelSample": "Paris",
                "item": {"answer": "Paris"},
            },
        )
        assert native.status_code == 200 and native.json()["reward"] == 1.0, native.text


RFT_LINES = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"Q{i}?"}], "answer": "A"}).encode()
    + b"\n"
    for i in range(12)
)


def test_job_create_refuses_a_malformed_grader(org: Org, rest: Stack) -> None:
    prompts = org.upload(RFT_LINES, "rft.jsonl")
    assert prompts.validation.format == "reinforcement", prompts.validation
    method = jobs_pb2.Method(type=jobs_pb2.Method.TYPE_REINFORCEMENT)
    bad = {**MULTI, "graders": {"exact": EXACT, "py": python_grader("def grade(:")}}
    from server.graders import from_json

    method.reinforcement.grader.CopyFrom(from_json(bad))
    found = invalid(
        org.jobs.CreateJob,
        jobs_pb2.CreateJobRequest(job=make_job(training_file=prompts.id, method=method)),
    )
    assert "syntax error" in found["job.method.reinforcement.grader.graders.py.source"]
    missing = jobs_pb2.Method(type=jobs_pb2.Method.TYPE_REINFORCEMENT)
    found = invalid(
        org.jobs.CreateJob,
        jobs_pb2.CreateJobRequest(job=make_job(training_file=prompts.id, method=missing)),
    )
    assert "job.method.reinforcement.grader" in found
    with rest.http() as http:
        uploaded = http.post(
            "/v1/files", files={"file": ("rft.jsonl", RFT_LINES)}, data={"purpose": "fine-tune"}
        ).json()
        for grader, param in [
            ({"type": "nope", "name": "x"}, "method.reinforcement.grader.type"),
            ({**EXACT, "reference": "{{item.answer"}, "method.reinforcement.grader.reference"),
            (
                {**MULTI, "calculate_output": "exact +"},
                "method.reinforcement.grader.calculate_output",
            ),
            (
                {
                    **MULTI,
                    "graders": {"py": python_grader("def grade(:")},
                    "calculate_output": "py",
                },
                "method.reinforcement.grader.graders.py.source",
            ),
        ]:
            reply = http.post(
                "/v1/fine_tuning/jobs",
                json={
                    "model": "tiny-llama",
                    "training_file": uploaded["id"],
                    "method": {"type": "reinforcement", "reinforcement": {"grader": grader}},
                },
            )
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["param"] == param, reply.json()
