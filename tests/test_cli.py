"""The `tunewire` CLI's one output shape (tables, `-o json`, `-o FIELD`) and its job options,
which are the hyperparameter table's rows, against a real server."""

from __future__ import annotations

import json
import re

from conftest import Server, chat_lines


def test_an_upload_report_lists_each_problem_by_line(server: Server, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"oops": 1}\nnot json\n')
    done = server.cli("files", "upload", str(bad), check=False)
    assert done.returncode == 1, done.stderr
    assert re.search(r"│ state +│ error +│", done.stdout)
    assert "validation.problems (4)" in done.stdout
    rows = re.findall(r"│ (\d*) +│ (\S+) +│ (\w+) +│", done.stdout)
    assert ("2", "$.messages", "missing_messages_list") in rows
    assert ("3", "$", "invalid_json") in rows


def test_output_picks_json_or_one_field(server: Server, tmp_path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(chat_lines(10, "cli-output"))
    file_id = server.cli("files", "upload", str(good), "-o", "id").stdout.strip()
    assert re.fullmatch(r"file-[0-9a-f]{24}", file_id)
    assert file_id in server.cli("files", "list", "-o", "id").stdout.splitlines()
    shown = json.loads(server.cli("files", "get", file_id, "-o", "json").stdout)
    assert shown["validation"]["example_count"] == "10" and shown["state"] == "STATE_PROCESSED"
    assert server.cli("files", "get", file_id, "-o", "validation.format").stdout == "chat\n"
    listed = json.loads(server.cli("files", "list", "-o", "json").stdout)
    assert file_id in [f["id"] for f in listed]

    unknown = server.cli("files", "get", file_id, "-o", "nope", check=False)
    assert unknown.returncode == 2
    assert "no field 'nope'" in unknown.stderr and "validation" in unknown.stderr


def test_jobs_create_takes_every_hyperparameter(server: Server, tmp_path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(chat_lines(10, "cli-hyper"))
    file_id = server.cli("files", "upload", str(good), "-o", "id").stdout.strip()
    create = ("jobs", "create", "--model", "tiny-llama", "--training-file", file_id)

    job_id = server.cli(
        *create,
        *("--lora-rank", "64", "--lora-alpha", "32", "--lora-dropout", "0"),
        *("--target-modules", "qkvo_ffn", "--early-stopping-patience", "2", "-o", "id"),
    ).stdout.strip()
    hp = json.loads(server.cli("jobs", "get", job_id, "-o", "json").stdout)["hyperparameters"]
    assert hp == {
        "lora_rank": 64,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "target_modules": "TARGET_MODULES_QKVO_FFN",
        "early_stopping_patience": 2,
    }
    assert re.search(r"│ state +│ cancelled +│", server.cli("jobs", "cancel", job_id).stdout)

    # The server checks ranges, from the same table, and names the field.
    refused = server.cli(*create, "--lora-rank", "300", check=False)
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "lora_rank" in refused.stderr
    preset = server.cli(*create, "--target-modules", "all", check=False)
    assert preset.returncode == 2 and "QKVO_FFN" in preset.stderr
