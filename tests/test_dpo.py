"""DPO (method.type DPO) end to end: the recipe learns a held-out preference on tiny-llama,
its loss is the standard sigmoid loss against the base model with the adapter disabled,
resumes and data-parallel ranks train the same run, and jobs run through the gRPC API and
the official `openai` SDK with DPO metrics in their events. Data that does not fit the
method, and a beta out of range or on a supervised job, are refused naming the field.

The toy preference set: sample-chat's geography questions, where the preferred answer
follows a rule (it is cheerful: "..., friend!") and the rejected one breaks it in one of
three ways. The rule is learned from 48 questions and judged on 24 held-out ones.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
import torch.nn.functional as F
from conftest import Org, Server, chat_lines, fails, invalid, make_job, preference_lines
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from test_bridge import FINAL, Stack
from test_bridge_openai import sdk
from test_training import assert_clean_log, run_to_end, stream, wait_state

from trainer import checkpoints, lora, methods, models
from trainer.args import InvalidArgs, Refused, TrainArgs
from trainer.recipe import Callbacks, Command, TrainResult, _evaluate, train
from tunewire.v1 import events_pb2, jobs_pb2

pytest_plugins = ["test_bridge"]

Job, Event = jobs_pb2.Job, events_pb2.Event
DPO = jobs_pb2.Method(type=jobs_pb2.Method.TYPE_DPO)
ASSETS = Path(__file__).resolve().parent.parent / "trainer" / "assets"
TORCHRUN = Path(sys.executable).parent / "torchrun"
LN2 = math.log(2)
REWARDS = ("rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin")
BROKEN = ("{stem}.", "{stem}. Whatever.", "{stem}, stranger.")


def toy_preferences(records: list[dict[str, Any]]) -> bytes:
    """Preference examples from chat examples whose answers end ", friend!": that answer is
    preferred, and the rejected one breaks the rule (one of BROKEN, in turn)."""
    out = []
    for i, record in enumerate(records):
        *prompt, answer = record["messages"]
        stem = answer["content"].removesuffix(", friend!")
        assert stem != answer["content"], answer
        rejected = BROKEN[i % len(BROKEN)].format(stem=stem)
        example = {
            "input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": answer["content"]}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        }
        out.append(json.dumps(example) + "\n")
    return "".join(out).encode()


def _records(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ASSETS / name).read_text(encoding="utf-8").splitlines()]


TRAIN = toy_preferences(_records("sample-chat.jsonl")[:48])
HELD_OUT = toy_preferences(_records("sample-chat.jsonl")[48:] + _records("sample-chat-valid.jsonl"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dpo-data")
    paths = {
        "train": root / "train.jsonl",
        "held_out": root / "held_out.jsonl",
        "chat": root / "chat.jsonl",
    }
    paths["train"].write_bytes(TRAIN)
    paths["held_out"].write_bytes(HELD_OUT)
    paths["chat"].write_bytes(chat_lines(12, "dpo"))
    return paths


def make_args(tiny: Path, files: dict[str, Path], output_dir: Path, **overrides: Any) -> TrainArgs:
    # 48 pairs, micro-batches of 4 pairs (8 rows): 12 steps per epoch, 24 in all.
    values: dict[str, Any] = {
        "base_model": str(tiny),
        "train_file": str(files["train"]),
        "validation_file": str(files["held_out"]),
        "output_dir": str(output_dir),
        "method": "dpo",
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate_multiplier": 10,
        "lora_dropout": 0.1,  # on: exact resumes also prove the RNG state is restored
        "seed": 5,
        "checkpoint_every_steps": 4,
        "keep_checkpoints": 10,
        "deterministic": True,
    }
    return TrainArgs(**{**values, **overrides})


def run(args: TrainArgs, commands: list[Command] = ()) -> tuple[TrainResult, dict[str, list]]:
    seen: dict[str, list] = {"metrics": [], "validations": [], "checkpoints": [], "events": []}
    answers = itertools.chain(commands, itertools.repeat("continue"))
    result = train(
        args,
        Callbacks(
            on_metrics=lambda **values: seen["metrics"].append(values),
            on_validation=lambda **values: seen["validations"].append(values),
            on_checkpoint=lambda **values: seen["checkpoints"].append(values),
            on_event=lambda *event: seen["events"].append(event),
            control=lambda: next(answers),
        ),
    )
    return result, seen


def held_out_metrics(tiny: Path, files: dict[str, Path], adapter: Path | None) -> dict[str, float]:
    """DPO metrics on the held-out pairs, by the recipe's own evaluation: for a fresh
    adapter (policy = reference: untrained) or a trained one."""
    tokenizer = models.load_tokenizer(tiny)
    method = methods.DPO(beta=0.1)
    encoded = method.load(files["held_out"], tokenizer, 1024, "", "validation_file")
    base = models.load_causal_lm(tiny, torch.float32)
    if adapter is None:
        with lora.peft_quietly():
            model = get_peft_model(base, lora.lora_config("llama", "QV", 8, 16, 0.0))
    else:
        model = PeftModel.from_pretrained(base, adapter)
    return _evaluate(model, method, encoded, tokenizer.pad_token_id, 8, False)


@pytest.fixture(scope="module")
def baseline(
    tiny: Path, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, dict[str, list]]:
    """One uninterrupted DPO run that the other tests compare against."""
    return run(make_args(tiny, files, tmp_path_factory.mktemp("dpo-baseline")))


# --- the recipe -----------------------------------------------------------------------------


def test_dpo_learns_a_held_out_preference(
    baseline: tuple[TrainResult, dict[str, list]], tiny: Path, files: dict[str, Path]
) -> None:
    result, seen = baseline
    assert (result.status, result.steps, result.hyperparameters.beta) == ("succeeded", 24, 0.1)
    before = held_out_metrics(tiny, files, None)
    after = held_out_metrics(tiny, files, result.adapter_dir)
    # Untrained, the policy is the reference: every reward is 0, so no preferred output
    # wins (accuracy 0), the margin is 0 and the loss is ln 2.
    assert before["loss"] == pytest.approx(LN2, abs=1e-6)
    assert (before["reward_accuracy"], before["reward_margin"]) == (0.0, 0.0)
    # Measured (CPU, seed 5): held-out reward accuracy 0.00 -> 1.00, margin 0.00 -> 0.79,
    # loss 0.693 -> 0.377, chosen reward +0.38, rejected -0.41.
    print(f"held-out before: {before}\nheld-out after: {after}")
    assert after["reward_accuracy"] >= 0.95, after
    assert after["reward_margin"] >= 0.5, after
    assert after["loss"] < 0.6 * LN2, after
    # The preferred output gains and the rejected one loses against the reference.
    assert after["rewards_chosen"] > 0 > after["rewards_rejected"], after
    # The recipe's last validation is that same evaluation of the final adapter.
    last = seen["validations"][-1]
    assert last["step"] == 24
    for name in ("loss", *REWARDS):
        assert last[f"valid_{name}"] == pytest.approx(after[name], abs=1e-5), name
    # Every step reports the DPO metrics.
    metrics = seen["metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 25))
    assert all({f"train_{name}" for name in REWARDS} <= set(m) for m in metrics)
    assert metrics[0]["train_loss"] == pytest.approx(LN2, abs=1e-6)
    late = metrics[-6:]
    assert sum(m["train_reward_accuracy"] for m in late) / len(late) >= 0.95


def test_the_loss_is_sigmoid_dpo_against_the_base_model(
    baseline: tuple[TrainResult, dict[str, list]], tiny: Path, files: dict[str, Path]
) -> None:
    """The reference inside the recipe is the base with the adapter disabled: the loss it
    computes equals the standard DPO loss computed by hand against a second, separately
    loaded copy of the base model."""
    result, _ = baseline
    tokenizer = models.load_tokenizer(tiny)
    method = methods.DPO(beta=0.3)
    pairs = method.load(files["held_out"], tokenizer, 1024, "", "validation_file").pairs[:5]
    batch = method.collate(pairs, tokenizer.pad_token_id)
    policy = PeftModel.from_pretrained(
        models.load_causal_lm(tiny, torch.float32), result.adapter_dir
    )
    policy.eval()
    reference = models.load_causal_lm(tiny, torch.float32).eval()
    with torch.no_grad():
        loss_sum, stats = method.measure(policy, batch, bf16=False)

        def logps(model: torch.nn.Module, rows: list[Any]) -> torch.Tensor:
            out = []
            for sequence in rows:
                ids = torch.tensor([sequence.input_ids])
                logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
                labels = torch.tensor(sequence.labels[1:])
                mask = labels != -100
                out.append(logits[mask].gather(-1, labels[mask, None]).sum())
            return torch.stack(out)

        chosen = [p.chosen for p in pairs]
        rejected = [p.rejected for p in pairs]
        pi_c, pi_r = logps(policy, chosen), logps(policy, rejected)
        ref_c, ref_r = logps(reference, chosen), logps(reference, rejected)
    expected = -F.logsigmoid(0.3 * ((pi_c - ref_c) - (pi_r - ref_r))).sum()
    torch.testing.assert_close(loss_sum, expected, atol=1e-4, rtol=1e-5)
    named = dict(zip(method.stats, stats.tolist(), strict=True))
    assert named["rewards_chosen"] == pytest.approx(float((0.3 * (pi_c - ref_c)).sum()), abs=1e-4)
    assert named["rewards_rejected"] == pytest.approx(float((0.3 * (pi_r - ref_r)).sum()), abs=1e-4)
    assert not torch.allclose(pi_c, ref_c)  # the adapter is trained: policy != reference
    assert policy.training is False  # measure put the model's mode back as it found it


def test_checkpoints_and_results_file(baseline: tuple[TrainResult, dict[str, list]]) -> None:
    result, seen = baseline
    root = result.last_checkpoint.parent
    assert [p.name for p in checkpoints.list_checkpoints(root)] == [
        f"step-{step:06d}" for step in (4, 8, 12, 16, 20, 24)
    ]
    for path in root.iterdir():
        assert sorted(p.name for p in path.iterdir()) == sorted(checkpoints.CHECKPOINT_FILES)
    state = json.loads((root / "step-000016" / "trainer_state.json").read_text())
    assert state["hyperparameters"]["beta"] == 0.1
    assert {"valid_loss", "valid_reward_accuracy", "train_reward_margin"} <= set(state["metrics"])
    assert seen["checkpoints"][-1]["metrics"]["valid_reward_accuracy"] >= 0.95
    # The best checkpoint is the one of the lowest held-out DPO loss.
    assert result.best_metrics["valid_loss"] == min(
        v["valid_loss"] for v in seen["validations"] if v["step"] in (4, 8, 12, 16, 20, 24)
    )
    with result.metrics_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert {f"train_{n}" for n in REWARDS} | {f"valid_{n}" for n in REWARDS} <= set(rows[0])
    assert [float(r["train_reward_margin"]) for r in rows] == pytest.approx(
        [m["train_reward_margin"] for m in seen["metrics"]], abs=1e-6
    )


def test_pause_and_resume_continue_exactly(
    baseline: tuple[TrainResult, dict[str, list]],
    tiny: Path,
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    result, first = baseline
    # control() is polled before each step: the 8th answer comes after 7 steps.
    paused, before = run(make_args(tiny, files, tmp_path / "a"), ["continue"] * 7 + ["pause"])
    assert (paused.status, paused.steps) == ("paused", 7)
    resumed, after = run(
        make_args(tiny, files, tmp_path / "b", resume_from=str(paused.last_checkpoint))
    )
    assert resumed.status == "succeeded"
    steps = [m["step"] for m in before["metrics"] + after["metrics"]]
    assert steps == list(range(1, 25))  # no step twice, none lost
    # Every metric of every step is the uninterrupted run's, bit for bit (but speed).
    assert [_measured(m) for m in before["metrics"] + after["metrics"]] == [
        _measured(m) for m in first["metrics"]
    ]
    assert after["validations"] == first["validations"][-len(after["validations"]) :]
    final = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    expected = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def _measured(metrics: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in metrics.items() if name != "tokens_per_second"}


def test_data_that_does_not_fit_the_method_is_refused(
    tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(Refused) as chat_in_dpo:
        train(make_args(tiny, files, tmp_path / "a", train_file=str(files["chat"])))
    assert (chat_in_dpo.value.code, chat_in_dpo.value.field) == (
        "invalid_training_file",
        "training_file",
    )
    assert "holds chat examples; method dpo trains on preference examples" in str(chat_in_dpo.value)
    with pytest.raises(Refused) as preference_in_sft:
        train(make_args(tiny, files, tmp_path / "b", method="supervised", validation_file=None))
    assert preference_in_sft.value.field == "training_file"
    assert "which train with method dpo" in str(preference_in_sft.value)
    with pytest.raises(Refused) as chat_validation:
        train(make_args(tiny, files, tmp_path / "c", validation_file=str(files["chat"])))
    assert chat_validation.value.field == "validation_file"
    with pytest.raises(InvalidArgs) as beta_on_sft:
        train(make_args(tiny, files, tmp_path / "d", method="supervised", beta=0.2))
    assert [p.field for p in beta_on_sft.value.problems] == ["beta"]
    assert "is a dpo hyperparameter" in str(beta_on_sft.value)
    with pytest.raises(InvalidArgs) as beta_out_of_range:
        train(make_args(tiny, files, tmp_path / "e", beta=2.5))
    assert str(beta_out_of_range.value) == "beta: 2.5 is out of range (0, 2]"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_in(command: list[str], args: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(args), encoding="utf-8")
    done = subprocess.run(
        [*command, "-m", "trainer", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _csv(output_dir: Path, column: str) -> list[float]:
    with open(output_dir / "metrics.csv", encoding="utf-8") as f:
        return [float(row[column]) for row in csv.DictReader(f)]


@pytest.mark.timeout(300)
def test_two_data_parallel_ranks_train_the_same_dpo_run(
    tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    """Micro-batches of pairs split over two gloo ranks (torchrun): the same losses and
    rewards as one process, within float summation order."""
    args = {
        "base_model": str(tiny),
        "train_file": str(files["train"]),
        "method": "dpo",
        "n_epochs": 1,
        "batch_size": 4,
        "gradient_accumulation_steps": 2,  # 2 micro-batches (or more) per step: 1 per rank
        "learning_rate_multiplier": 10,
        "lora_dropout": 0.0,  # dropout masks would differ with the pairs each rank draws
        "seed": 7,
        "cpu_threads": 1,
    }
    alone, ranked = tmp_path / "alone", tmp_path / "ranked"
    # One process: this one (a child would only add its start-up to the test's time).
    assert train(TrainArgs(**args, output_dir=str(alone))).status == "succeeded"
    _train_in(
        [
            str(TORCHRUN),
            *("--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"),
            *("--master-port", str(_free_port())),
        ],
        {**args, "output_dir": str(ranked)},
        tmp_path / "ranked.json",
    )
    for column in ("train_loss", "train_reward_margin", "train_reward_accuracy"):
        one, two = _csv(alone, column), _csv(ranked, column)
        assert len(one) == 6  # 48 pairs / (4 x 2) per step
        assert two == pytest.approx(one, rel=1e-4, abs=1e-5), column
    assert _csv(alone, "train_loss")[-1] < _csv(alone, "train_loss")[0]


# --- through the API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing(server: Server) -> Iterator[Org]:
    """An org on the session server (queued jobs stay queued there)."""
    org = server.new_org("dpo-refusals")
    yield org
    org.close()


@pytest.fixture(scope="module")
def uploads(refusing: Org) -> dict[str, str]:
    return {
        "preference": refusing.upload(preference_lines(10, "refusals"), "pref.jsonl").id,
        "chat": refusing.upload(chat_lines(10, "dpo-refusals"), "chat.jsonl").id,
    }


def test_a_dpo_job_is_queued_with_its_method_and_beta(refusing: Org, uploads: dict[str, str]):
    job = refusing.create_job(
        uploads["preference"],
        validation_file=uploads["preference"],
        method=DPO,
        hyperparameters=jobs_pb2.Hyperparameters(beta=2),  # the top of (0, 2]
    )
    assert (job.state, job.method.type, job.hyperparameters.beta) == (
        Job.STATE_QUEUED,
        jobs_pb2.Method.TYPE_DPO,
        2,
    )


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (  # preference data in a supervised job (the default method)
            {"training_file": "preference"},
            "job.training_file",
            "holds preference examples (input, preferred_output, non_preferred_output), "
            "which train with method DPO",
        ),
        (
            {"training_file": "chat", "validation_file": "preference"},
            "job.validation_file",
            "which train with method DPO",
        ),
        (
            {"training_file": "chat", "method": DPO},
            "job.training_file",
            "holds chat examples; method DPO trains on preference examples",
        ),
        (
            {"training_file": "preference", "validation_file": "chat", "method": DPO},
            "job.validation_file",
            "holds chat examples; method DPO trains on preference examples",
        ),
        (
            {"training_file": "chat", "hyperparameters": jobs_pb2.Hyperparameters(beta=0.1)},
            "job.hyperparameters.beta",
            "beta is a DPO hyperparameter; this job's method is supervised",
        ),
        (
            {
                "training_file": "preference",
                "method": DPO,
                "hyperparameters": jobs_pb2.Hyperparameters(beta=0),
            },
            "job.hyperparameters.beta",
            "0 is out of range (0, 2]",
        ),
        (
            {
                "training_file": "preference",
                "method": DPO,
                "hyperparameters": jobs_pb2.Hyperparameters(beta=2.5),
            },
            "job.hyperparameters.beta",
            "2.5 is out of range (0, 2]",
        ),
    ],
)
def test_create_refuses_what_does_not_fit_the_method(
    refusing: Org, uploads: dict[str, str], fields: dict[str, Any], field: str, says: str
) -> None:
    fields = {k: uploads.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    job = make_job(**fields)
    violations = invalid(refusing.jobs.CreateJob, jobs_pb2.CreateJobRequest(job=job))
    assert set(violations) == {field}, violations
    assert says in violations[field]
    if field.endswith("_file"):  # the file is named
        assert fields[field.removeprefix("job.")] in violations[field]


def test_the_openai_route_refuses_in_its_envelope(rest: Stack) -> None:
    with rest.http() as http:
        chat = http.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("c.jsonl", io.BytesIO(chat_lines(10, "dpo-openai")))},
        ).json()["id"]
        preference = http.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("p.jsonl", io.BytesIO(preference_lines(10, "dpo-openai")))},
        ).json()["id"]
        for body, param, says in (
            (
                {"training_file": chat, "method": {"type": "dpo"}},
                "training_file",
                f"file {chat!r} holds chat examples; method DPO trains on preference",
            ),
            (
                {"training_file": preference},
                "training_file",
                f"file {preference!r} holds preference examples",
            ),
            (
                {
                    "training_file": preference,
                    "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}},
                },
                "hyperparameters.beta",
                "3 is out of range (0, 2]",
            ),
            (
                {
                    "training_file": chat,
                    "method": {
                        "type": "supervised",
                        "supervised": {"hyperparameters": {"beta": 1}},
                    },
                },
                "hyperparameters.beta",
                "beta is a DPO hyperparameter",
            ),
        ):
            reply = http.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", **body})
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
            assert says in error["message"], error
        # TrueFoundry's jobs take the same method.
        created = http.post(
            "/api/llm/fine_tuning/jobs",
            json={
                "model": "tiny-llama",
                "training_file": preference,
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5}}},
            },
        )
        assert created.status_code == 200, created.text
        shown = created.json()["method"]
        assert shown["type"] == "dpo" and shown["dpo"]["hyperparameters"]["beta"] == 0.5
        http.post(f"/api/llm/fine_tuning/jobs/{created.json()['id']}/cancel")


METRICS_MESSAGE = re.compile(
    r"Step \d+/\d+: training loss=\d+\.\d\d, reward accuracy=\d\.\d\d, margin=-?\d+\.\d\d"
    r"(, validation loss=\d+\.\d\d, validation reward accuracy=\d\.\d\d)?"
)


def test_a_dpo_job_trains_through_grpc_and_resumes_after_a_pause(live: Stack) -> None:
    org = live.server.default
    training = org.upload(TRAIN, "dpo-train.jsonl")
    held_out = org.upload(HELD_OUT, "dpo-held-out.jsonl")
    assert training.validation.format == held_out.validation.format == "preference"
    job = org.create_job(
        training.id,
        validation_file=held_out.id,
        method=DPO,
        seed=11,
        hyperparameters=jobs_pb2.Hyperparameters(
            # 72 steps: long enough that the pause lands mid-run even on a fast machine.
            n_epochs=6,
            batch_size=4,
            learning_rate_multiplier=10,
            checkpoint_every_steps=12,
        ),
    )
    for event in stream(org, job.id):
        if event.type == Event.TYPE_METRICS and int(event.data["step"]) == 3:
            assert org.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id)).state == (
                Job.STATE_PAUSING
            )
            break
    paused = wait_state(org, job.id, Job.STATE_PAUSED)
    step = paused.progress.step
    assert 3 <= step < 72
    org.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id))
    events = run_to_end(org, job.id)
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    assert done.method.type == jobs_pb2.Method.TYPE_DPO
    assert done.hyperparameters.beta == pytest.approx(0.1)  # "auto", resolved
    assert_clean_log(events)
    messages = [e.message for e in events]
    assert f"Resuming from checkpoint step {step} (attempt 1)" in messages
    plan = next(m for m in messages if m.startswith("Training plan"))
    assert "beta 0.1" in plan

    metrics = [e for e in events if e.type == Event.TYPE_METRICS]
    assert [int(e.data["step"]) for e in metrics] == list(range(1, 73))
    assert all(METRICS_MESSAGE.fullmatch(e.message) for e in metrics), metrics[0].message
    assert {f"train_{n}" for n in REWARDS} | {"train_loss"} <= set(metrics[0].data)
    assert metrics[-1].data["train_reward_accuracy"] >= 0.75
    # The last step validated: its figures are in its metrics event, as OpenAI's are.
    assert "validation reward accuracy=1.00" in metrics[-1].message
    assert metrics[-1].data["valid_reward_margin"] > 0.5
    request = jobs_pb2.ListCheckpointsRequest(job_id=job.id, page_size=1000)
    checkpoints_ = org.jobs.ListCheckpoints(request).checkpoints
    newest = checkpoints_[0]
    assert newest.step == 72 and newest.metrics.valid_loss < 0.6 * LN2
    # Marked best: each checkpoint whose validation loss was the lowest yet, across the
    # pause (the resumed run knows the best before it).
    lowest, marked = math.inf, []
    for checkpoint in reversed(checkpoints_):
        loss = checkpoint.metrics.valid_loss if checkpoint.metrics.HasField("valid_loss") else None
        marked.append(loss is not None and loss < lowest)
        lowest = min(lowest, loss if loss is not None else math.inf)
    assert [c.best for c in reversed(checkpoints_)] == marked and any(marked)


def test_the_openai_sdk_runs_a_dpo_fine_tune(live: Stack) -> None:
    with sdk(live) as client:
        training = client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune")
        held_out = client.files.create(file=("v.jsonl", HELD_OUT), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=training.id,
            validation_file=held_out.id,
            suffix="dpo",
            method={
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 8}
                },  # 6 steps; the learning rate multiplier left "auto"
            },
        )
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
        assert job.method.dpo.hyperparameters.learning_rate_multiplier == "auto"
        deadline = time.monotonic() + 240
        while job.status not in FINAL:
            assert time.monotonic() < deadline, job.status
            time.sleep(0.3)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:tiny-llama:default:dpo:{job.id}"
        shown = job.method.dpo.hyperparameters
        assert (shown.beta, shown.n_epochs, shown.batch_size) == (0.2, 1, 8)
        assert shown.learning_rate_multiplier == pytest.approx(1.41)  # "auto", resolved
        assert job.hyperparameters.n_epochs == 1

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        metrics = [e for e in events if e.type == "metrics"]
        assert metrics and all(METRICS_MESSAGE.fullmatch(e.message) for e in metrics)
        assert {f"train_{n}" for n in REWARDS} <= set(metrics[0].data)
        assert {"valid_loss", "valid_reward_accuracy"} <= set(metrics[0].data)  # newest first
        checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
        assert checkpoint.metrics.valid_loss is not None

        chat = client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": "Which city is the capital of Peru?"}],
            max_tokens=4,
        )
        assert chat.choices[0].message.role == "assistant"


def test_the_grpc_error_names_the_file_for_a_dpo_job_on_chat_data(
    refusing: Org, uploads: dict[str, str]
) -> None:
    """The same refusal as a Status with a BadRequest, for gRPC clients in any language."""
    job = make_job(training_file=uploads["chat"], method=DPO)
    failure = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        refusing.jobs.CreateJob,
        jobs_pb2.CreateJobRequest(job=job),
    )
    assert uploads["chat"] in failure.message
