"""Fully sharded data parallelism (FSDP2) for the recipe: each rank holds 1/world of every
weight, frozen base and LoRA alike, gathers a layer's weights for its forward and backward,
and keeps only its shard of the adapter's gradients and optimizer state.

It trains the same run as replicated ranks (`trainer.distributed`): gradients are summed
over the ranks, not averaged, because each micro-batch's loss is already divided by the
step's loss tokens; clipping takes the global norm over every shard. Checkpoints gather
the adapter and its optimizer state whole, in the very files a one-process run writes, so
a checkpoint resumes on any world size and under either sharding.

On GPUs each rank shards onto its own device over NCCL; on CPUs over gloo.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from trainer import batching

# Whole tensors on every rank (each rank writes its own copy, as replicated ranks do);
# frozen base weights are never gathered: a checkpoint holds the adapter alone.
_FULL = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)


def shard(model: PeftModel, world: int, device: torch.device) -> PeftModel:
    """Shard `model` (still on the CPU, so no rank ever holds it whole on its device) over
    `world` ranks: each decoder layer its own FSDP unit, then the root (embeddings, norm,
    head). Gradients are reduced by plain sum."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))
    # No mixed-precision policy: weights keep their dtypes (bf16 base beside float32
    # adapters on CUDA, all-gathered as bytes), autocast computes as in a replicated run,
    # and the adapters' float32 gradients are reduced in float32.
    layer_types = set(getattr(model.get_base_model(), "_no_split_modules", None) or ())
    for layer in [module for module in model.modules() if type(module).__name__ in layer_types]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def weights_held(model: torch.nn.Module) -> tuple[int, int]:
    """(elements of weights this rank holds, elements of the whole model)."""
    local = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        local += (
            parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
        )
    return local, total


def passes(
    micro_batches: list[batching.Batch], rank: int, world: int
) -> list[batching.Batch | None]:
    """This rank's share of a step's micro-batches, padded with None to the busiest rank's
    count: under FSDP every forward and backward is a collective, so every rank runs as
    many as the others (the recipe runs a None pass on another micro-batch, its loss
    times 0: the same gathers and reductions, zero gradients)."""
    mine: list[batching.Batch | None] = list(micro_batches[rank::world])
    return mine + [None] * (math.ceil(len(micro_batches) / world) - len(mine))


def _trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters, in the order the optimizer holds them."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's weights, whole, under peft's file keys (a collective when sharded)."""
    if not is_sharded(model):
        return get_peft_model_state_dict(model)
    return get_peft_model_state_dict(model, state_dict=get_model_state_dict(model, options=_FULL))


def load_adapter_state(model: PeftModel, weights: dict[str, torch.Tensor]) -> list[str]:
    """Put whole adapter `weights` (peft's file keys) into a sharded model, each rank
    keeping its shard; returns the model's adapter keys that `weights` lacks."""
    named = dict(model.named_parameters())
    trainable = {name: named[name] for name in _trainable_names(model)}
    # peft's own key mapping, read back through the identity of the tensors it returns.
    file_key = {
        id(tensor): key
        for key, tensor in get_peft_model_state_dict(model, state_dict=trainable).items()
    }
    by_name = {name: file_key[id(parameter)] for name, parameter in trainable.items()}
    missing = [name for name, key in by_name.items() if key not in weights]
    if not missing:
        full = {name: weights[key] for name, key in by_name.items()}
        set_model_state_dict(model, full, options=_FULL)
    return missing


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` as one process holds it (states keyed by parameter index,
    tensors whole), gathered over the shards when the model is sharded."""
    if not is_sharded(model):
        return optimizer.state_dict()
    full = get_optimizer_state_dict(model, optimizer, options=_FULL)
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    return {
        "state": {index[name]: state for name, state in full["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in full["param_groups"]
        ],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a one-process `optimizer.state_dict()`, sharding it when the model is."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    names = _trainable_names(model)
    full = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, full, options=_FULL)
