"""The one hyperparameter table (`trainer/hyperparameters.py`) is the rule everywhere:
the contract's comments state its ranges, the trainer's arguments take exactly what it
allows, and every surface that creates a job (gRPC, native REST, OpenAI, TrueFoundry,
Cohere) accepts exactly the values it allows and refuses the rest, naming the field as
that surface's request names it. Values are drawn around each range's edges. A method's
own hyperparameter (DPO's beta) is tried on a job of that method, on preference data."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from conftest import REPO, Org, Server, chat_lines, failure_of, make_job, preference_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bridge import Stack

from bridge.routes.cohere import COHERE_HYPERPARAMETERS
from trainer.args import JOB_HYPERPARAMETERS, TrainArgs
from trainer.hyperparameters import AUTO, TABLE, Hyperparameter
from tunewire.v1 import jobs_pb2

pytest_plugins = ["test_bridge"]
EXAMPLES = 40
INT32 = (-(2**31), 2**31 - 1)


def values(row: Hyperparameter, scale: float = 1.0, json_only: bool = False) -> Any:
    """Values of `row` in a surface's units: its edges and their neighbours, inside and
    outside the range, fractions for integer fields, and infinities where they can travel."""
    integral = row.type is int and scale == 1
    cast = int if integral else float
    low, high = cast(row.low * scale), cast(row.high * scale)
    step = 1 if integral else (high - low) * 1e-9
    edges = [low - step, low, low + step, high - step, high, high + step, 0, -1, high * 2]
    drawn = [st.sampled_from([cast(edge) for edge in edges])]
    if integral:
        drawn.append(st.integers(min_value=INT32[0], max_value=INT32[1]))
        drawn.append(st.integers(min_value=int(low) - 3, max_value=int(high) + 3))
        if json_only:
            drawn.append(st.floats(min_value=low - 3, max_value=high + 3).map(_fraction))
    else:
        drawn.append(st.floats(allow_nan=not json_only, allow_infinity=not json_only))
        drawn.append(st.floats(min_value=low - abs(low) - 1, max_value=high * 1.5))
    return st.one_of(drawn)


def _fraction(value: float) -> float:
    return math.floor(value) + 0.5


def _case(rows: tuple[Hyperparameter, ...], **kwargs: Any) -> Any:
    return st.sampled_from(rows).flatmap(lambda row: st.tuples(st.just(row), values(row, **kwargs)))


# --- the contract and the trainer ------------------------------------------------------------


def test_the_contracts_comments_state_the_tables_ranges_and_defaults() -> None:
    proto = (REPO / "protos" / "tunewire" / "v1" / "jobs.proto").read_text()
    message = proto[proto.index("message Hyperparameters {") :]
    for row in TABLE:
        found = re.search(rf"((?:  //[^\n]*\n)+)  optional \w+ {row.name} = ", message)
        assert found, f"jobs.proto has no commented field {row.name}"
        comment = " ".join(line.strip("/ ") for line in found.group(1).splitlines())
        assert row.range in comment, f"{row.name}: {comment!r} does not say {row.range}"
        unset = "Unset: auto" if row.default == AUTO else f"Unset: {row.default:g}"
        assert unset in comment, f"{row.name}: {comment!r} does not say {unset!r}"
    # Every numeric field of the message is in the table, and nothing else is.
    declared = set(re.findall(r"optional \w+ (\w+) = \d+", message.split("\n}\n")[0]))
    assert declared == {row.name for row in TABLE}


@settings(max_examples=300, deadline=None)
@given(_case(JOB_HYPERPARAMETERS, json_only=False))
def test_the_trainers_arguments_take_exactly_what_the_table_allows(case: Any) -> None:
    row, value = case
    args = TrainArgs(
        base_model="m",
        train_file="f",
        output_dir="o",
        method=row.method or "supervised",
        **{row.name: value},
    )
    problems = {p.field: p.message for p in args.problems()}
    assert (row.name not in problems) == row.allows(value), problems.get(row.name)


def test_unset_means_the_tables_default() -> None:
    args = TrainArgs(base_model="m", train_file="f", output_dir="o")
    assert {row.name: getattr(args, row.name) for row in JOB_HYPERPARAMETERS} == {
        row.name: row.default for row in JOB_HYPERPARAMETERS
    }


# --- every surface -----------------------------------------------------------------------------


@dataclass
class Surface:
    """One way to create a job: `create(row, value)` returns None when the job was
    created, else the name the refusal gave the field (its whole error text)."""

    name: str
    rows: tuple[Hyperparameter, ...]
    create: Callable[[Hyperparameter, Any], str | None]
    field: Callable[[Hyperparameter], str]
    scale: Callable[[Hyperparameter], float] = lambda row: 1.0
    json_only: bool = True


@pytest.fixture(scope="module")
def org(server: Server) -> Iterator[Org]:
    org = server.new_org("hyperparameters")
    yield org
    org.close()


@pytest.fixture(scope="module")
def training_file(org: Org) -> str:
    return org.upload(chat_lines(10, "hyperparameters"), "hp.jsonl").id


@pytest.fixture(scope="module")
def preference_file(org: Org) -> str:
    return org.upload(preference_lines(10, "hyperparameters"), "hp-dpo.jsonl").id


def _data(row: Hyperparameter, training_file: str, preference_file: str) -> str:
    """The training file a job trying `row` needs: DPO's beta trains on preference data."""
    return preference_file if row.method == "dpo" else training_file


@pytest.fixture(scope="module")
def http(rest: Stack, org: Org) -> Iterator[httpx.Client]:
    with rest.http(key=org.key) as client:
        yield client


def _grpc(org: Org, training_file: str, preference_file: str) -> Surface:
    def create(row: Hyperparameter, value: Any) -> str | None:
        job = make_job(
            training_file=_data(row, training_file, preference_file),
            hyperparameters=jobs_pb2.Hyperparameters(**{row.name: value}),
        )
        if row.method == "dpo":
            job.method.type = jobs_pb2.Method.TYPE_DPO
        try:
            org.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job))
        except grpc.RpcError as error:
            failure = failure_of(error)
            assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure.message
            return " ".join(failure.violations)
        return None

    return Surface(
        "grpc", TABLE, create, lambda row: f"job.hyperparameters.{row.name}", json_only=False
    )


def _refusal(reply: httpx.Response, text: Callable[[dict[str, Any]], str]) -> str | None:
    if reply.status_code == 200:
        return None
    assert reply.status_code == 400, reply.text
    return text(reply.json())


def _native(http: httpx.Client, training_file: str, preference_file: str) -> Surface:
    def create(row: Hyperparameter, value: Any) -> str | None:
        body: dict[str, Any] = {
            "base_model": "tiny-llama",
            "training_file": _data(row, training_file, preference_file),
        }
        if row.method == "dpo":
            body["method"] = {"type": "TYPE_DPO"}
        reply = http.post("/tunewire/v1/jobs", json={**body, "hyperparameters": {row.name: value}})
        return _refusal(
            reply,
            lambda status: " ".join(
                v["field"] for d in status["details"] for v in d.get("field_violations", [])
            ),
        )

    return Surface("native", TABLE, create, lambda row: f"hyperparameters.{row.name}")


def _openai(
    http: httpx.Client, training_file: str, preference_file: str, prefix: str, in_method: bool
) -> Surface:
    def create(row: Hyperparameter, value: Any) -> str | None:
        given = {row.name: value}
        body: dict[str, Any] = {
            "model": "tiny-llama",
            "training_file": _data(row, training_file, preference_file),
        }
        kind = row.method or "supervised"
        if in_method:
            body["method"] = {"type": kind, kind: {"hyperparameters": given}}
        else:
            body["hyperparameters"] = given
            body["method"] = {"type": kind}
        reply = http.post(f"{prefix}/fine_tuning/jobs", json=body)
        return _refusal(reply, lambda body: body["error"]["param"] or "")

    return Surface(prefix, TABLE, create, lambda row: f"hyperparameters.{row.name}")


def _cohere(http: httpx.Client, training_file: str) -> Surface:
    counter = iter(range(1_000_000))

    def create(row: Hyperparameter, value: Any) -> str | None:
        theirs = COHERE_HYPERPARAMETERS[row.name][0]
        reply = http.post(
            "/cohere/v1/finetuning/finetuned-models",
            json={
                "name": f"hp-{next(counter)}",
                "settings": {
                    "base_model": {"base_type": "BASE_TYPE_CHAT", "name": "tiny-llama"},
                    "dataset_id": training_file,
                    "hyperparameters": {theirs: value},
                },
            },
        )
        return _refusal(reply, lambda body: body["message"])

    rows = tuple(row for row in TABLE if row.name in COHERE_HYPERPARAMETERS)
    return Surface(
        "cohere",
        rows,
        create,
        lambda row: f"settings.hyperparameters.{COHERE_HYPERPARAMETERS[row.name][0]}",
        scale=lambda row: COHERE_HYPERPARAMETERS[row.name][1],
    )


SURFACES = ["grpc", "native", "openai", "truefoundry-method", "cohere"]


@pytest.fixture
def surface(
    request: pytest.FixtureRequest,
    org: Org,
    http: httpx.Client,
    training_file: str,
    preference_file: str,
) -> Surface:
    files = (training_file, preference_file)
    return {
        "grpc": lambda: _grpc(org, *files),
        "native": lambda: _native(http, *files),
        "openai": lambda: _openai(http, *files, "/v1", in_method=False),
        "truefoundry-method": lambda: _openai(http, *files, "/api/llm", in_method=True),
        "cohere": lambda: _cohere(http, training_file),
    }[request.param]()


@pytest.mark.parametrize("surface", SURFACES, indirect=True)
def test_every_surface_accepts_exactly_what_the_table_allows(surface: Surface) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.data())
    def check(data: st.DataObject) -> None:
        row = data.draw(st.sampled_from(surface.rows), label="hyperparameter")
        scale = surface.scale(row)
        value = data.draw(values(row, scale, surface.json_only), label="value")
        allowed = row.allows(value / scale) and (row.type is not int or abs(value) < 2**31)
        refused = surface.create(row, value)
        if allowed:
            assert refused is None, f"{row.name}={value!r} is allowed but was refused: {refused}"
        else:
            assert refused is not None, f"{row.name}={value!r} is out of range but was accepted"
            assert surface.field(row) in refused, refused

    check()
