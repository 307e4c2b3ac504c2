"""Checkpoints: everything needed to continue a run exactly, written so a kill never
leaves a half-written checkpoint that looks complete.

Layout of `<output_dir>/checkpoints/step-000123/`:

- `adapter_model.safetensors`, `adapter_config.json`: the LoRA adapter in peft's own file
  names, so `PeftModel.from_pretrained(base, path)` loads a checkpoint like any adapter.
- `state.pt`: optimizer and scheduler state dicts and the RNG states (python, torch CPU,
  CUDA); tensors and plain containers only, loaded with `weights_only=True`.
- `trainer_state.json`: step, fractional epoch, data position (the epoch and the index of
  the next optimizer step within it), resolved hyperparameters, metrics, early-stopping
  state and the metrics history, readable without torch.

Each directory is built under a temporary name, fsynced, then renamed into place: a
`step-*` directory is complete or absent. Its `checksums.json` lists every other file's
size and sha256, so a checkpoint damaged later (truncated, overwritten, half copied) is
refused by `verify_checkpoint` before a run resumes from it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from trainer import sharding

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
STATE = "state.pt"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "checksums.json"
_CHECKSUMMED = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, STATE, TRAINER_STATE)
CHECKPOINT_FILES = (*_CHECKSUMMED, MANIFEST)

_STEP_DIR = re.compile(r"step-(\d{6,})")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    trainer_state: dict[str, Any]
    state: dict[str, Any]
    """`optimizer`, `scheduler` and `rng` as saved."""

    @property
    def step(self) -> int:
        return int(self.trainer_state["step"])


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging dir beside `final`; when the block succeeds, fsync its files
    and rename it to `final` (replacing an older `final`). On error nothing is published."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                _fsync(path)
        _fsync(staging)
        if final.exists():
            # A directory cannot be renamed over a non-empty one: move the old aside first.
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(staging, final)
            shutil.rmtree(old)
        else:
            os.replace(staging, final)
        _fsync(final.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_adapter(model: PeftModel, directory: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the adapter's two peft files (what `PeftModel.save_pretrained` writes, minus
    its README model card); whole, from a sharded model too (then every rank must call).
    `metadata` goes into the weights' header (a classifier's labels, which so travel
    wherever the adapter's two files go)."""
    weights = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in sharding.adapter_state(model).items()
    }
    save_file(weights, directory / ADAPTER_WEIGHTS, metadata={"format": "pt", **(metadata or {})})
    config = copy.deepcopy(model.peft_config["default"])
    # peft marks saved configs for inference; loading for training flips it back.
    config.inference_mode = True
    config.save_pretrained(str(directory))


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save_checkpoint(
    root: Path,
    step: int,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
    adapter_metadata: dict[str, str] | None = None,
) -> Path:
    """Write `root/step-{step:06d}` atomically and return its path. A sharded model's
    checkpoint is gathered whole, the same files one process writes."""
    final = root / checkpoint_name(step)
    with atomic_dir(final) as staging:
        save_adapter(model, staging, adapter_metadata)
        torch.save(
            {
                "optimizer": sharding.optimizer_state(model, optimizer),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
            },
            staging / STATE,
        )
        (staging / TRAINER_STATE).write_text(
            json.dumps(trainer_state, indent=1, sort_keys=True), encoding="utf-8"
        )
        manifest = {name: file_digest(staging / name) for name in _CHECKSUMMED}
        (staging / MANIFEST).write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
    return final


class CorruptCheckpoint(ValueError):
    """A checkpoint that is missing, or whose files are not those it was saved with."""


def file_digest(path: Path) -> dict[str, Any]:
    """`{"bytes": ..., "sha256": ...}` of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The checkpoint's `checksums.json`; CorruptCheckpoint when it is missing or unreadable."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CorruptCheckpoint(f"{MANIFEST} is missing or unreadable: {error}") from None
    if not isinstance(manifest, dict) or set(manifest) != set(_CHECKSUMMED):
        raise CorruptCheckpoint(f"{MANIFEST} does not list the checkpoint's files")
    return manifest


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Raise CorruptCheckpoint unless every file of the checkpoint at `path` has the size
    and sha256 it was saved with."""
    path = Path(path)
    if not path.is_dir():
        raise CorruptCheckpoint(f"checkpoint {path.name} is missing")
    for name, expected in sorted(read_manifest(path).items()):
        try:
            found = file_digest(path / name)
        except OSError as error:
            raise CorruptCheckpoint(f"{name} cannot be read: {error.strerror}") from None
        if found != expected:
            raise CorruptCheckpoint(
                f"{name} has {found['bytes']} bytes (sha256 {found['sha256'][:12]}…), "
                f"saved with {expected['bytes']} (sha256 {expected['sha256'][:12]}…)"
            )


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint's state files (the adapter weights are read by `restore`)."""
    path = Path(path)
    return Checkpoint(
        path=path,
        trainer_state=json.loads((path / TRAINER_STATE).read_text(encoding="utf-8")),
        state=torch.load(path / STATE, map_location="cpu", weights_only=True),
    )


def restore(
    checkpoint: Checkpoint,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Put adapter weights, optimizer, scheduler and RNG back as they were at the checkpoint.
    RNG last: anything before it (model init) may draw random numbers. A sharded model
    takes its shard of the whole weights and optimizer state (every rank must call)."""
    weights = load_file(checkpoint.path / ADAPTER_WEIGHTS)
    if sharding.is_sharded(model):
        missing = sharding.load_adapter_state(model, weights)
    else:
        result = set_peft_model_state_dict(model, weights)
        missing = [key for key in result.missing_keys if "lora_" in key]
    if missing:
        raise ValueError(f"checkpoint {checkpoint.path} lacks adapter weights: {missing[:3]}")
    sharding.load_optimizer_state(model, optimizer, checkpoint.state["optimizer"])
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    rng = checkpoint.state["rng"]
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under `root` (a run's `checkpoints/` dir), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if _STEP_DIR.fullmatch(path.name) and (path / TRAINER_STATE).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name.removeprefix("step-")))


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under `root` (a run's `checkpoints/` dir), if any."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune(root: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` checkpoints (never `protect`, the best one), and
    staging dirs left behind by a killed write."""
    for path in list_checkpoints(root)[:-keep]:
        if path != protect:
            # Renamed out of sight first: a kill mid-delete must leave no `step-N`
            # that looks complete but has lost its adapter files.
            doomed = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=root))
            os.replace(path, doomed / path.name)
            shutil.rmtree(doomed)
    for path in root.iterdir():
        if path.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(path, ignore_errors=True)
