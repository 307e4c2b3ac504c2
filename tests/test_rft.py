"""Reinforcement fine-tuning (method.type REINFORCEMENT, `trainer.rft`) end to end on
tiny-llama: the mean reward of a toy task rises from its untrained value to well above it,
in the recipe and through the official `openai` SDK; python graders that break their
sandbox's rules become grader-error events while the job goes on; a paused run resumes
to the very rewards of an uninterrupted one.

The toy task: "Say a word." and a multi grader that scores 1 when the 8-token completion
contains any of four words the random-init model samples rarely (about 6% of completions
at the start). tiny-llama's output layer is fixed and its logits are small, so what moves
the reward is a LoRA on every projection (QKVO_FFN): with QV alone it does not learn this
in a bounded number of steps (measured: 0.05 -> 0.13 in 48 steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_bridge import FINAL, Stack
from test_bridge_openai import sdk

from trainer.args import TrainArgs
from trainer.recipe import Callbacks, TrainResult, train

pytest_plugins = ["test_bridge"]

WORDS = ["chose", "carefully", "expla", "ofia"]
ANY_WORD = {
    "type": "multi",
    "name": "any_word",
    "graders": {
        f"w{i}": {
            "type": "string_check",
            "name": f"w{i}",
            "input": "{{sample.output_text}}",
            "reference": f"{{{{item.words[{i}]}}}}",
            "operation": "like",
        }
        for i in range(len(WORDS))
    },
    "calculate_output": "max(w0, w1, w2, w3)",
}
PROMPT = {"messages": [{"role": "user", "content": "Say a word."}], "words": WORDS}
REWARD_METRICS = (
    "train_reward_mean",
    "train_reward_std",
    "train_kl",
    "train_completion_length",
    "train_grader_errors",
    "train_grader_latency_p50",
    "train_grader_latency_p95",
    *(f"train_score_w{i}" for i in range(len(WORDS))),
)


def prompts(n: int, record: dict[str, Any] = PROMPT) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for _ in range(n))


def toy_args(tmp_path: Path, tiny: Path, **more: Any) -> TrainArgs:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "train.jsonl"
    data.write_bytes(prompts(16))
    values: dict[str, Any] = {
        "base_model": str(tiny),
        "train_file": str(data),
        "output_dir": str(tmp_path / "out"),
        "method": "reinforcement",
        "reinforcement": {"grader": ANY_WORD, "max_completion_tokens": 8},
        "n_epochs": 12,  # 16 prompts, 4 a step: 48 steps of 32 graded completions
        "batch_size": 4,
        "learning_rate_multiplier": 50,
        "target_modules": "QKVO_FFN",
        "seed": 1,
        **more,
    }
    return TrainArgs(**values)


def record(args: TrainArgs, **callbacks: Any) -> tuple[TrainResult, list[dict[str, Any]]]:
    steps: list[dict[str, Any]] = []
    result = train(args, Callbacks(on_metrics=lambda **m: steps.append(m), **callbacks))
    return result, steps


def test_the_mean_reward_rises_well_above_its_untrained_value(
    tmp_path: Path, tiny: Path, one_torch_thread: None
) -> None:
    started = time.monotonic()
    result, steps = record(toy_args(tmp_path, tiny))
    rewards = [step["train_reward_mean"] for step in steps]
    # Step 1 samples from the untrained policy (LoRA's B starts at zero).
    untrained, trained = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    print(
        f"reward: first 4 steps {untrained:.3f}, last 4 steps {trained:.3f}, "
        f"{len(steps)} steps in {time.monotonic() - started:.1f} s"
    )
    assert result.status == "succeeded" and len(steps) == 48
    assert untrained < 0.2, rewards
    assert trained > 0.5 and trained > 3 * untrained, rewards
    assert set(REWARD_METRICS) <= set(steps[-1])
    assert steps[-1]["train_kl"] > 0 and steps[-1]["train_grader_errors"] == 0
    assert 0 < steps[-1]["train_completion_length"] <= 8
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_config.json").exists()


def test_a_paused_run_resumes_to_the_same_rewards(
    tmp_path: Path, tiny: Path, one_torch_thread: None
) -> None:
    whole = toy_args(tmp_path / "whole", tiny, n_epochs=2)
    _, uninterrupted = record(whole)
    first = toy_args(tmp_path / "parts", tiny, n_epochs=2)
    polls = iter(range(1000))
    paused, before = record(first, control=lambda: "pause" if next(polls) == 5 else "continue")
    assert paused.status == "paused" and paused.last_checkpoint is not None
    rest = toy_args(tmp_path / "parts", tiny, n_epochs=2, resume_from=str(paused.last_checkpoint))
    resumed, after = record(rest)
    assert resumed.status == "succeeded"
    assert [s["train_reward_mean"] for s in before + after] == [
        s["train_reward_mean"] for s in uninterrupted
    ]


ATTACKS = {
    "network": "socket.create_connection(('1.1.1.1', 80), 1)",
    "write": "open('/tmp/tunewire-rft-escape.txt', 'w').write('x')",
    "cpu": "while True: pass",
    "memory": "bytearray(2 * 1024 ** 3)",
}
ATTACKER = {
    "type": "python",
    "name": "attacker",
    "source": "import socket\n\ndef grade(sample, item):\n"
    + "".join(
        f"    if item['attack'] == {name!r}:\n        {body}\n" for name, body in ATTACKS.items()
    )
    + "    return 1.0\n",
}


def test_sandbox_violations_are_grader_error_events_and_the_job_goes_on(
    tmp_path: Path, tiny: Path, one_torch_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEWIRE_GRADER_PYTHON_TIMEOUT", "2")
    monkeypatch.setenv("TUNEWIRE_GRADER_PYTHON_MEMORY_MB", "256")
    data = tmp_path / "attacks.jsonl"
    data.write_bytes(
        b"".join(prompts(1, {**PROMPT, "attack": name}) for name in [*ATTACKS, "none"])
    )
    events: list[tuple[str, str, dict[str, Any]]] = []
    args = toy_args(
        tmp_path,
        tiny,
        train_file=str(data),
        reinforcement={"grader": ATTACKER, "max_completion_tokens": 2, "compute_multiplier": 0.25},
        n_epochs=1,
        batch_size=5,
    )
    result, steps = record(args, on_event=lambda *event: events.append(event))
    assert result.status == "succeeded" and len(steps) == 1
    errors = " | ".join(message for level, message, _ in events if "Grader error" in message)
    assert "network access is not allowed in the python grader sandbox" in errors, errors
    assert "writing '/tmp/tunewire-rft-escape.txt' is not allowed" in errors, errors
    assert "timeout" in errors and "memory_limit" in errors, errors
    assert not Path("/tmp/tunewire-rft-escape.txt").exists()
    # Two completions per prompt: the four attacks fail, the harmless row scores 1.
    assert steps[0]["train_grader_errors"] == 8
    assert steps[0]["train_reward_mean"] == pytest.approx(2 / 10)


def test_the_openai_sdk_runs_a_reinforcement_fine_tune(live: Stack) -> None:
    with sdk(live) as client:
        # 48 prompts, 4 epochs: the toy's 48 steps with 4 checkpoints rather than 12.
        training = client.files.create(file=("rft.jsonl", prompts(48)), purpose="fine-tune")
        held_out = client.files.create(file=("held.jsonl", prompts(4)), purpose="fine-tune")
        assert training.status == "processed"
        job = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=training.id,
            validation_file=held_out.id,
            suffix="rft",
            seed=1,
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "grader": ANY_WORD,
                    "hyperparameters": {
                        "n_epochs": 4,
                        "batch_size": 4,
                        "learning_rate_multiplier": 50,
                        "eval_interval": 16,
                        "eval_samples": 2,
                        "compute_multiplier": 1,
                        "reasoning_effort": "low",  # accepted; not applicable here
                        # Tunewire's own, beside OpenAI's (auto would be 64 tokens):
                        "target_modules": "QKVO_FFN",
                        "max_completion_tokens": 8,
                    },
                },
            },
        )
        assert job.method.type == "reinforcement"
        assert job.method.reinforcement.grader.type == "multi"
        assert job.method.reinforcement.hyperparameters.eval_interval == 16
        deadline = time.monotonic() + 300
        while job.status not in FINAL:
            assert time.monotonic() < deadline, job.status
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:tiny-llama:default:rft:{job.id}"
        assert job.hyperparameters.n_epochs == 4

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
        metrics = sorted(
            (e.data for e in events if e.type == "metrics" and "train_reward_mean" in e.data),
            key=lambda data: data["step"],
        )
        assert len(metrics) == 48 and set(REWARD_METRICS) <= set(metrics[0])
        rewards = [m["train_reward_mean"] for m in metrics]
        untrained, trained = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
        print(f"SDK job reward: first 4 steps {untrained:.3f}, last 4 steps {trained:.3f}")
        assert untrained < 0.2 and trained > 0.5, rewards
        validations = [
            e for e in events if e.message.startswith("Step") and "validation" in e.message
        ]
        assert validations and all("valid_reward_mean" in e.data for e in validations)
        assert any("reward=" in e.message for e in events if e.type == "metrics")


def test_the_contract_states_the_reinforcement_table() -> None:
    """Reinforcement's own hyperparameters are declared once (`REINFORCEMENT`); the
    contract's comments say the same ranges and "auto"."""
    import re

    from trainer.hyperparameters import REINFORCEMENT

    proto = (Path(__file__).resolve().parent.parent / "protos/tunewire/v1/jobs.proto").read_text()
    message = proto[proto.index("message Reinforcement {") :].split("\n}\n")[0]
    for row in REINFORCEMENT:
        found = re.search(rf"((?:  //[^\n]*\n)+)  optional \w+ {row.name} = ", message)
        assert found, row.name
        comment = " ".join(line.strip("/ ") for line in found.group(1).splitlines())
        assert row.range in comment and "Unset: auto" in comment, (row.name, comment)
