"""Your own base models: `tunewire models add PATH` imports a local model dir and
`tunewire models pull REPO_ID` downloads one through huggingface_hub, here from a hub
mirror on 127.0.0.1 (tests/hub_mirror.py) named by HF_ENDPOINT, as an offline site would.

Both take safetensors, config and tokenizer files only, verify the copy with transformers
and rename it into the models dir, where listing (what the control plane calls) finds it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import clean_env, tunewire_command
from hub_mirror import HubMirror
from tiny_models import write_tiny

from trainer import model_import, models
from trainer.model_import import ImportRefused

# What a tiny model written by save_pretrained holds: all of it is taken.
MODEL_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
# What a hub repo or a local dir often holds besides: never taken.
EXTRAS = {
    "pytorch_model.bin": None,  # a pickle of the same weights
    "README.md": b"# A model card\n",
    "modeling_custom.py": b"raise SystemExit('remote code ran')\n",
    "consolidated.safetensors": b"mistral-inference's copy",
    "onnx/model.safetensors": b"another format",
}


@pytest.fixture(scope="module")
def source(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3 written as save_pretrained writes it."""
    tokenizer = models.load_tokenizer(tiny)
    return write_tiny(tmp_path_factory.mktemp("src") / "tiny-qwen3", "qwen3", tokenizer)


def with_extras(model: Path, into: Path) -> Path:
    """A copy of `model` with a pickle, a model card, code and other formats beside it."""
    shutil.copytree(model, into)
    for name, data in EXTRAS.items():
        (into / name).parent.mkdir(exist_ok=True)
        if data is None:
            torch.save({"weight": torch.zeros(2)}, into / name)
        else:
            (into / name).write_bytes(data)
    return into


def entries(models_dir: Path) -> set[str]:
    """Everything in the models dir, hidden staging dirs included."""
    return {p.relative_to(models_dir).as_posix() for p in models_dir.rglob("*")}


def tunewire(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tunewire_command(), *args],
        env=clean_env(home, home / "models", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- add --------------------------------------------------------------------------------


def test_add_imports_a_model_dir_that_listing_then_offers(source: Path, tmp_path: Path) -> None:
    src = with_extras(source, tmp_path / "download")
    done = tunewire(tmp_path / "home", "models", "add", str(src), "--name", "acme/qwen3-tiny")
    assert done.returncode == 0, done.stderr
    assert "verifying" in done.stdout  # the copy's progress bar, at its end
    assert (
        "left behind: README.md, consolidated.safetensors, modeling_custom.py, pytorch_model.bin"
        in done.stdout
    )
    assert "added acme/qwen3-tiny: Qwen3ForCausalLM, 336,256 parameters" in done.stdout
    assert "«Paris.<|im_end|>\n»" in done.stdout  # the sample chat through its template
    assert "warning" not in done.stderr

    models_dir = tmp_path / "home" / "models"
    # Exactly the model's files, renamed into place: no staging dir left, no pickle taken.
    assert entries(models_dir) == {"acme", "acme/qwen3-tiny"} | {
        f"acme/qwen3-tiny/{name}" for name in MODEL_FILES
    }
    for name in MODEL_FILES:
        assert (models_dir / "acme/qwen3-tiny" / name).read_bytes() == (source / name).read_bytes()
    [listed] = [m for m in models.list_base_models(models_dir) if m.name != models.MINILM]
    assert (listed.name, listed.architecture, listed.model_type) == (
        "acme/qwen3-tiny",
        "Qwen3ForCausalLM",
        "qwen3",
    )
    assert models.resolve_model(models_dir, "acme/qwen3-tiny") == listed.path

    again = tunewire(tmp_path / "home", "models", "add", str(src), "--name", "acme/qwen3-tiny")
    assert again.returncode == 1
    assert "model 'acme/qwen3-tiny' is already in the models dir" in " ".join(again.stderr.split())


def test_add_follows_links_as_a_hub_cache_snapshot_has_them(source: Path, tmp_path: Path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for path in source.iterdir():
        (snapshot / path.name).symlink_to(path)
    imported = model_import.import_dir(snapshot, tmp_path / "models", "linked")
    assert imported.model.path == tmp_path / "models" / "linked"
    assert all(p.is_file() and not p.is_symlink() for p in imported.model.path.iterdir())
    assert imported.example.warnings == imported.example.problems == ()


def _only_pickles(path: Path) -> None:
    (path / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2)}, path / "pytorch_model.bin")


def _config(**fields: object):
    def change(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **fields}))

    return change


def _truncate(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _missing_shard(path: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            _only_pickles,
            "has only pickled weights (pytorch_model.bin); Tunewire loads safetensors only",
        ),
        (lambda p: (p / "config.json").unlink(), "has no config.json"),
        (
            _config(auto_map={"AutoModelForCausalLM": "modeling_custom.Custom"}),
            "config.json asks for remote code (auto_map), which Tunewire never runs",
        ),
        (
            _config(model_type="opt", architectures=["OPTForCausalLM"]),
            "model type 'opt' is not one Tunewire can fine-tune: no LoRA preset names its modules",
        ),
        (
            _config(architectures=["NoSuchForCausalLM"]),
            "config.json's architecture 'NoSuchForCausalLM' is not one transformers has",
        ),
        (_config(model_type="no-such-type"), "config.json does not load with transformers"),
        (_config(vocab_size=100), "the tokenizer has 2048 tokens but the model embeds only 100"),
        (_truncate, "model.safetensors is truncated"),
        (_missing_shard, "names shards that are missing: ['model-00002-of-00002.safetensors']"),
        (
            lambda p: (p / "tokenizer.json").write_text("{"),
            "the tokenizer does not load",
        ),
    ],
    ids=[
        "pickles",
        "no-config",
        "remote-code",
        "no-lora-preset",
        "unknown-architecture",
        "unknown-model-type",
        "vocab-too-small",
        "truncated",
        "missing-shard",
        "broken-tokenizer",
    ],
)
def test_add_refuses_what_cannot_be_fine_tuned_and_leaves_nothing(
    source: Path, tmp_path: Path, change, reason: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    change(src)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with pytest.raises(ImportRefused) as refused:
        model_import.import_dir(src, models_dir, "acme/model")
    assert reason in str(refused.value)
    assert entries(models_dir) == set()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../escape", "use NAME or ORG/NAME"),
        ("a/b/c", "use NAME or ORG/NAME"),
        (".hidden", "use NAME or ORG/NAME"),
        ("/abs", "use NAME or ORG/NAME"),
        ("", "use NAME or ORG/NAME"),
        (models.MINILM, "is the packaged encoder's"),
        ("taken", "is already in the models dir"),
    ],
)
def test_add_refuses_a_bad_or_taken_name(
    source: Path, tmp_path: Path, name: str, reason: str
) -> None:
    models_dir = tmp_path / "models"
    (models_dir / "taken").mkdir(parents=True)
    with pytest.raises(ImportRefused, match=reason):
        model_import.import_dir(source, models_dir, name)
    assert entries(models_dir) == {"taken"}


# --- pull -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(
    tiny: Path, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[HubMirror, str]]:
    """A mirror serving acme/tiny-gpt2 (main, and v1 with other weights) with the extras a
    hub repo has, and acme/pickled with only a pickle."""
    root = tmp_path_factory.mktemp("hub")
    mirror = HubMirror()
    tokenizer = models.load_tokenizer(tiny)
    main = with_extras(write_tiny(root / "built", "gpt2", tokenizer), root / "main")
    mirror.add_dir("acme/tiny-gpt2", main)
    mirror.add_dir(
        "acme/tiny-gpt2",
        write_tiny(root / "v1", "gpt2", tokenizer, seed=1),
        revision="v1",
    )
    pickled = with_extras(source, root / "pickled")
    (pickled / "model.safetensors").unlink()
    mirror.add_dir("acme/pickled", pickled)
    endpoint = mirror.start()
    yield mirror, endpoint
    mirror.stop()


def test_pull_downloads_only_what_a_base_model_needs_through_hf_endpoint(
    hub: tuple[HubMirror, str], tmp_path: Path
) -> None:
    mirror, endpoint = hub
    mirror.downloaded.clear()
    home = tmp_path / "home"
    done = tunewire(
        home,
        "models",
        "pull",
        "acme/tiny-gpt2",
        "--revision",
        "v1",
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    assert done.returncode == 0, done.stderr
    assert "Fetching 6 files" in done.stdout  # huggingface_hub's progress, drawn by rich
    assert "added acme/tiny-gpt2: GPT2LMHeadModel, 214,528 parameters, context 256" in done.stdout
    # allow_patterns: the pickle, the card, the code and the other formats never left the hub.
    assert sorted(mirror.downloaded) == sorted(("acme/tiny-gpt2", f) for f in MODEL_FILES)
    models_dir = home / "models"
    assert entries(models_dir) == {"acme", "acme/tiny-gpt2"} | {
        f"acme/tiny-gpt2/{name}" for name in MODEL_FILES
    }
    served = mirror.repos["acme/tiny-gpt2"]["v1"].files
    for name in MODEL_FILES:
        assert (models_dir / "acme/tiny-gpt2" / name).read_bytes() == served[name]
    [listed] = [m for m in models.list_base_models(models_dir) if m.name != models.MINILM]
    assert (listed.name, listed.architecture) == ("acme/tiny-gpt2", "GPT2LMHeadModel")


@pytest.mark.parametrize(
    ("repo", "revision", "reason"),
    [
        ("acme/none", None, "cannot download 'acme/none' from {endpoint}: no such model"),
        ("acme/tiny-gpt2", "v9", "it has no revision 'v9'"),
        ("acme/pickled", None, "acme/pickled has no *.safetensors weights"),
        ("not a repo id", None, "'not a repo id' is not a repo id"),
    ],
)
def test_pull_refuses_with_a_clear_reason(
    hub: tuple[HubMirror, str], tmp_path: Path, repo: str, revision: str | None, reason: str
) -> None:
    _, endpoint = hub
    models_dir = tmp_path / "models"
    with pytest.raises(ImportRefused) as refused:
        model_import.pull(repo, models_dir, revision=revision, endpoint=endpoint, name="x")
    assert reason.format(endpoint=endpoint) in str(refused.value)
    assert entries(models_dir) == set()


def test_pull_without_a_reachable_hub_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = tunewire(home, "models", "pull", "acme/x", HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "cannot download 'acme/x' from http://127.0.0.1:9" in said
    assert "set HF_ENDPOINT to a mirror" in said
    assert not os.listdir(home / "models")


GEMMA_LIKE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}"
)


@pytest.mark.parametrize(
    ("template", "shown", "warning"),
    [
        (GEMMA_LIKE, "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n", ""),
        ("{{ raise_exception('no chat here') }}", "", "the chat template fails on a sample chat"),
    ],
    ids=["refuses-system", "always-fails"],
)
def test_add_checks_the_template_on_a_sample_chat(
    source: Path, tmp_path: Path, template: str, shown: str, warning: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    (src / "chat_template.jinja").write_text(template)
    imported = model_import.import_dir(src, tmp_path / "models", "templated")
    assert imported.example.text.startswith(shown)
    assert imported.example.problems == ()
    if warning:
        [said] = imported.example.warnings
        assert warning in said
    else:
        assert imported.example.warnings == ()
