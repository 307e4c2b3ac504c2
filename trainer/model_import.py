"""Your own base models: import a local Hugging Face model directory (`tunewire models add
PATH`) or download one from a hub (`tunewire models pull REPO_ID`) into the models dir.

A base model is usable once it is a directory in the models dir: the control plane lists
the dir on every call, so an imported model is offered at once, with no restart. Importing
runs where the models dir is, in the process of whoever administers it (the CLI, like
`tunewire keys`, which works on the data dir directly); the API has no call that adds a
base model, so no API key can, and the control plane, which never imports transformers,
has nothing to check.

An import:

1. takes from the source's top level only what a base model needs (`ALLOW_PATTERNS`):
   safetensors weights and their index, config.json, generation_config.json, tokenizer
   files and chat templates. Pickled weights (.bin, .pt, ...) are never taken, and a
   source whose weights are all pickles is refused, saying so; code is never taken, and a
   config that asks for it (auto_map) is refused;
2. copies them into a staging dir inside the models dir (hidden, `.import-…`, so listing
   never offers it) and verifies the copy: safetensors headers whole, the config loads
   with transformers' AutoConfig (no remote code), its architecture is one transformers
   has and a LoRA preset names its modules, the tokenizer loads and fits the embeddings;
3. renames the staging dir into place: the model appears whole or not at all.

`pull` downloads with `huggingface_hub.snapshot_download` (the same patterns as its
allow_patterns; `HF_ENDPOINT` picks a mirror, `HF_TOKEN` a token for gated or private
repos) into a staging dir of its own in the models dir, then imports that as `add` does,
moving the files instead of copying them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import models

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",  # sentencepiece: a protobuf, not a pickle
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
ALLOW_PATTERNS = [*WEIGHT_PATTERNS, *CONFIG_FILES, *TOKENIZER_FILES]
"""The files an import takes, and `pull` downloads (its allow_patterns)."""
IGNORE_PATTERNS = ["*/*", "consolidated*.safetensors"]
"""Never taken: files in subfolders (other formats, originals), and Mistral's
`consolidated` weights, a second copy in mistral-inference's names."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

Progress = Callable[[int, int], None]
"""(bytes done, bytes in all), as an import copies."""


class ImportRefused(ValueError):
    """Why a model dir cannot become a base model, or a name cannot be given to one."""


@dataclass(frozen=True)
class Imported:
    model: models.BaseModel
    example: Any = None
    """For a causal LM, `template_check.Rendered`: a sample chat through its template,
    with the warnings a job on it would get."""


def target_dir(models_dir: str | os.PathLike[str], name: str) -> Path:
    """Where base model `name` goes: `name` or `org/name` (as hub ids are), each part
    letters, digits, `.`, `_` and `-`, and not yet taken."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or not all(_NAME_PART.fullmatch(p) for p in parts):
        raise ImportRefused(
            f"model name {name!r}: use NAME or ORG/NAME, each part letters, digits, "
            "'.', '_' and '-', not starting with '.' or '-'"
        )
    if name == models.MINILM:
        raise ImportRefused(f"model name {name!r} is the packaged encoder's; pick another")
    target = Path(models_dir) / name
    if target.exists() or target.is_symlink():
        raise ImportRefused(f"model {name!r} is already in the models dir; delete it first")
    return target


def select_files(source: Path, label: str = "") -> list[Path]:
    """The files of `source` an import takes; refuses a source with no safetensors.
    `label` names the source in messages (default: its path)."""
    label = label or str(source)
    if not source.is_dir():
        raise ImportRefused(f"{label} is not a directory")
    files = sorted(p for p in source.iterdir() if p.is_file())
    taken = [
        p
        for p in files
        if any(fnmatch.fnmatch(p.name, pattern) for pattern in ALLOW_PATTERNS)
        and not any(fnmatch.fnmatch(p.name, pattern) for pattern in IGNORE_PATTERNS)
    ]
    if not any(p.name.endswith(".safetensors") for p in taken):
        pickles = [p.name for p in files if p.name.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise ImportRefused(
                f"{label} has only pickled weights ({', '.join(pickles[:3])}); Tunewire "
                "loads safetensors only, since unpickling runs code. Convert them where you "
                "trust the file (load it, then save_pretrained(dir, safe_serialization=True))"
            )
        raise ImportRefused(
            f"{label} has no *.safetensors weights (Tunewire loads no other format; "
            "pickled .bin/.pt weights never)"
        )
    if not (source / "config.json").is_file():
        raise ImportRefused(f"{label} has no config.json")
    if (why := models.remote_code(source)) is not None:
        raise ImportRefused(why)
    return taken


def skipped_files(source: Path) -> list[str]:
    """The top-level files of `source` an import leaves behind (pickles, code, docs)."""
    taken = {p.name for p in select_files(source)}
    return sorted(p.name for p in source.iterdir() if p.is_file() and p.name not in taken)


def import_dir(
    source: str | os.PathLike[str],
    models_dir: str | os.PathLike[str],
    name: str,
    *,
    move: bool = False,
    progress: Progress | None = None,
    label: str = "",
) -> Imported:
    """Import the model dir `source` into `models_dir` as `name` (see the module
    docstring); `move` moves the files (a download staged on the same filesystem);
    `label` names the source in messages."""
    source, root = Path(source), Path(models_dir)
    target = target_dir(root, name)
    files = select_files(source, label)
    root.mkdir(parents=True, exist_ok=True)
    # Hidden, at the top of the models dir: listing skips it whatever `name` is.
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        total = sum(p.stat().st_size for p in files)
        done = 0
        for path in files:
            if move:
                size = path.stat().st_size
                os.replace(path, staging / path.name)
                done += size
            else:
                done = _copy(path, staging / path.name, done, total, progress)
        if progress is not None:
            progress(total, total)
        imported = verify(staging, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise ImportRefused(f"model {name!r} appeared in the models dir meanwhile")
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Imported(models.describe(target, name), imported.example)


def verify(path: Path, name: str) -> Imported:
    """Check that the model dir at `path` loads as a base model Tunewire can fine-tune;
    raise ImportRefused naming what does not."""
    import transformers

    from trainer import lora

    if (why := models.remote_code(path)) is not None:
        raise ImportRefused(why)
    try:
        base = models.describe(path, name)
    except models.BrokenModel as error:
        raise ImportRefused(str(error)) from None
    _check_shards(path)
    try:
        config = transformers.AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ImportRefused(f"config.json does not load with transformers: {error}") from None
    if config.model_type not in lora.TARGET_MODULES:
        known = ", ".join(sorted(lora.TARGET_MODULES))
        raise ImportRefused(
            f"model type {config.model_type!r} is not one Tunewire can fine-tune: no LoRA "
            f"preset names its modules (known: {known})"
        )
    architecture = (config.architectures or [""])[0]
    if not architecture or not hasattr(transformers, architecture):
        raise ImportRefused(
            f"config.json's architecture {architecture!r} is not one transformers has"
        )
    try:
        tokenizer = models.load_tokenizer(path)
    except Exception as error:  # whatever breaks, the tokenizer is unusable
        raise ImportRefused(f"the tokenizer does not load: {error}") from None
    vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        raise ImportRefused(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}"
        )
    example = None
    if models.is_causal_lm(architecture):
        if tokenizer.eos_token_id is None:
            raise ImportRefused("the tokenizer has no EOS token, so no fine-tune could stop")
        example = _sample_chat(path, tokenizer)
    return Imported(base, example)


def _sample_chat(path: Path, tokenizer: Any) -> Any:
    """A sample chat through the model's template (`template_check`), with a system
    message and, where the template refuses one (Gemma's), without; a template that
    fails on both is a warning, not a refusal: text and prompt/completion data need none."""
    from trainer import template_check

    stops = template_check.stop_token_ids(path, tokenizer)
    failure = ""
    for system in (True, False):
        try:
            sample = template_check.sample_conversation(system=system)
            return template_check.check_example(sample, tokenizer, stops)
        except Exception as error:  # a template is code: whatever it raises, it fails
            failure = str(error) or type(error).__name__
    return template_check.Rendered(
        file="",
        format="chat",
        text="",
        trained_spans=0,
        problems=(),
        warnings=(f"the chat template fails on a sample chat ({failure}): chat jobs would fail",),
    )


def pull(
    repo_id: str,
    models_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    tqdm_class: type | None = None,
    progress: Progress | None = None,
) -> Imported:
    """Download `repo_id` (at `revision`) from `endpoint` (default: the hub, or the
    `HF_ENDPOINT` mirror) and import it as `name` (default: the repo id)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = name or repo_id
    root = Path(models_dir)
    target_dir(root, name)  # a bad or taken name fails before the download
    root.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix=".pull-", dir=root))
    where = f"{repo_id!r} from {endpoint or constants.ENDPOINT}"
    try:
        try:
            snapshot_download(
                repo_id,
                revision=revision,
                endpoint=endpoint,
                local_dir=download,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
                tqdm_class=tqdm_class,
            )
        except GatedRepoError:
            raise ImportRefused(
                f"cannot download {where}: the repo is gated; accept its terms on the hub "
                "and set HF_TOKEN"
            ) from None
        except RepositoryNotFoundError:
            raise ImportRefused(
                f"cannot download {where}: no such model (a private one needs HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise ImportRefused(
                f"cannot download {where}: it has no revision {revision!r}"
            ) from None
        except HFValidationError as error:
            raise ImportRefused(f"{repo_id!r} is not a repo id: {error}") from None
        except (LocalEntryNotFoundError, HfHubHTTPError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ImportRefused(
                f"cannot download {where}: {first}. Where the hub is out of reach, set "
                "HF_ENDPOINT to a mirror"
            ) from None
        return import_dir(download, root, name, move=True, progress=progress, label=repo_id)
    finally:
        shutil.rmtree(download, ignore_errors=True)


def _copy(source: Path, target: Path, done: int, total: int, progress: Progress | None) -> int:
    """Copy one file (following links: a hub cache's snapshot is links), durably."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        dst.flush()
        os.fsync(dst.fileno())
    return done


def _check_shards(path: Path) -> None:
    """Every shard a safetensors index names is there."""
    for index in path.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ImportRefused(f"{index.name} is not a safetensors index") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ImportRefused(f"{index.name} names shards that are missing: {missing[:3]}")
