"""Text generation: many fine-tuned models of one base, served by one loaded base.

A `Generator` loads each base model once and keeps it. LoRA adapters are loaded into it by
peft, each under a name derived from its directory, and every forward pass first activates
the adapter of the request it serves (`set_adapter`), or none for the base itself
(`disable_adapter_layers`). Each request keeps its own KV cache, so requests for different
fine-tuned models of one base interleave token by token over a single copy of the base
weights; a lock per base makes switch-then-forward atomic. Adapters not used lately are
unloaded once more than `max_adapters` are loaded (never one a request is using), and an
adapter whose model was deleted is unloaded as soon as no request uses it (`unload`).

An ONNX export (see `trainer.onnx_export`) runs through onnxruntime instead, with the same
prompt rendering, sampling, stop handling and streaming.

Prompts are rendered as training rendered them (`trainer.data`): chat messages with the
tokenizer's chat template plus the assistant header, a raw prompt as BOS + its tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import jinja2
import numpy as np
import onnxruntime
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from trainer import models
from trainer.merge import attach_adapter
from trainer.onnx_export import ONNX_FILE

Messages = Sequence[Mapping[str, str]]
Prompt = str | Messages
"""A raw prompt, or chat messages (`role`, `content`)."""
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; the API checks the ranges."""

    max_tokens: int = 64
    """At most this many new tokens (fewer when the context runs out)."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the most likely tokens holding this much mass."""
    stop: tuple[str, ...] = ()
    """Generation ends before the first of these strings; it is not returned."""
    seed: int | None = None
    """Seeds sampling: the same seed, prompt and model give the same text."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated, the end-of-sequence token included."""


@dataclass(frozen=True)
class Chunk:
    """A piece of the stream. The last chunk has `finish_reason` and `usage` set."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


def coalesced(
    chunks: Iterator[Chunk], every: float, clock: Callable[[], float] = time.monotonic
) -> Iterator[Chunk]:
    """The same stream in fewer, longer chunks: the first text at once, then what came
    since at most every `every` seconds (with the next token after the interval), and
    the last chunk with whatever is still held. A stream sent over the network pays a
    send and a wake-up per chunk on the thread that generates; per token that was 8% of
    a small model's CPU time in the inference worker, where an interval of 20 ms is below
    what anyone reading the text can see."""
    held: list[str] = []
    due = float("-inf")
    for chunk in chunks:
        if chunk.finish_reason is not None:
            yield Chunk("".join([*held, chunk.text]), chunk.finish_reason, chunk.usage)
            return
        held.append(chunk.text)
        if (now := clock()) >= due:
            yield Chunk("".join(held))
            held.clear()
            due = now + every


class InvalidPrompt(ValueError):
    """The prompt cannot be generated from: empty, longer than the context, or rejected by
    the chat template."""


def _pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _eos_ids(config: GenerationConfig, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    # generation_config may list several (a chat model's end-of-turn besides its EOS).
    ids = config.eos_token_id
    found = set(ids) if isinstance(ids, list) else {ids} - {None}
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(found)


@dataclass
class LoadedBase:
    """A base model in memory with the adapters loaded into it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos: frozenset[int]
    context_length: int
    peft: PeftModel | None = None
    """The base wrapped by peft once the first adapter is loaded (same modules)."""
    adapters: OrderedDict[str, int] = field(default_factory=OrderedDict)
    """Adapter name -> requests using it, least recently used first."""
    active: str | None = ""
    """The adapter the model's layers apply; None: adapters disabled (the base itself);
    "" (no adapter's name): not known, after adapters were (un)loaded."""
    doomed: set[str] = field(default_factory=set)
    """Adapters to unload once idle: their models were deleted."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held for each adapter switch + forward pass, and while adapters are (un)loaded."""
    layers: list[BaseTunerLayer] = field(default_factory=list)
    """The adapter layers, found at the last switch through peft (which every (un)load
    forces, as it resets `active`)."""

    def activate(self, adapter: str | None) -> None:
        """Make the next forward pass apply `adapter` (None: none); call under `lock`.
        Switches only when needed, and between two adapters without peft's walk."""
        if self.peft is None or self.active == adapter:
            return
        if self.active and adapter is not None:
            # Adapter to adapter, each token while requests for several fine-tuned models
            # interleave. peft's switch walks every module and re-freezes the weights of
            # every loaded adapter (frozen already: loaded for inference), which costs
            # more than a small model's forward pass once a few are loaded (8 ms with 9
            # loaded on the benchmark Llama); all it changes besides is which adapter each
            # layer applies (`_active_adapter`, as `BaseTunerLayer.set_adapter` sets it)
            # and the model's `active_adapter`. Interleaved answers are tested.
            for layer in self.layers:
                layer._active_adapter = [adapter]
            self.peft.active_adapter = self.peft.base_model.active_adapter = adapter
        elif adapter is None:
            self.peft.base_model.disable_adapter_layers()
        else:
            self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(adapter, inference_mode=True)
            self.layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
        self.active = adapter

    def unload_idle(self, keep: int) -> None:
        """Unload the idle adapters that are doomed, then the least recently used idle ones
        past `keep` loaded; call under `lock`."""
        idle = [name for name, users in self.adapters.items() if users == 0]
        doomed = [name for name in idle if name in self.doomed]
        others = [name for name in idle if name not in self.doomed]
        excess = max(0, len(self.adapters) - len(doomed) - keep)
        for name in doomed + others[:excess]:
            assert self.peft is not None  # adapters are loaded into it
            self.peft.delete_adapter(name)
            del self.adapters[name]
            self.doomed.discard(name)
            self.active = ""


@dataclass
class _LoadedOnnx:
    session: onnxruntime.InferenceSession
    tokenizer: PreTrainedTokenizerBase
    eos: frozenset[int]
    context_length: int


def adapter_name(adapter: Path) -> str:
    """peft adapter names are module attribute keys: a digest of the path, no dots."""
    return "adapter_" + hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:16]


class Generator:
    """Generates from base models, adapters on them, and ONNX exports; thread-safe."""

    def __init__(self, max_adapters: int = 16, max_onnx: int = 2) -> None:
        # A server's log is no place for weight-loading progress bars.
        transformers_logging.disable_progress_bar()
        self.max_adapters = max_adapters
        self.max_onnx = max_onnx
        self.device = _pick_device()
        self.dtype = (
            torch.bfloat16
            if self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.float32
        )
        self.base_loads = 0
        """How many times a base model was read from disk (once per base)."""
        self._bases: dict[Path, LoadedBase] = {}
        self._onnx: OrderedDict[Path, _LoadedOnnx] = OrderedDict()
        self._lock = threading.Lock()

    def base(self, path: str | Path) -> LoadedBase:
        """The loaded base model at `path`, loading it on first use."""
        path = Path(path).resolve()
        with self._lock:
            if path not in self._bases:
                model = models.load_causal_lm(path, self.dtype).to(self.device).eval()
                tokenizer = models.load_tokenizer(path)
                self._bases[path] = LoadedBase(
                    model=model,
                    tokenizer=tokenizer,
                    eos=_eos_ids(model.generation_config, tokenizer),
                    context_length=model.config.max_position_embeddings,
                )
                self.base_loads += 1
            return self._bases[path]

    def generate(
        self,
        base: str | Path,
        adapter: str | Path | None,
        prompt: Prompt,
        params: SamplingParams,
    ) -> Iterator[Chunk]:
        """Stream text from the base with `adapter` (None: the base itself). Loading happens
        on the first `next()`, so callers can run the whole iteration off their event loop."""
        loaded = self.base(base)
        name = self._acquire(loaded, Path(adapter)) if adapter is not None else None
        try:
            ids = _render(loaded.tokenizer, prompt)
            step = _TorchSession(loaded, name, self.device)
            yield from _complete(
                step, loaded.tokenizer, ids, params, loaded.eos, loaded.context_length
            )
        finally:
            if name is not None:
                with loaded.lock:
                    loaded.adapters[name] -= 1
                    loaded.unload_idle(self.max_adapters)

    def unload(self, adapter: str | Path) -> None:
        """Unload `adapter` from every base it is loaded into (its model was deleted): at
        once where no request uses it, else when its last request ends."""
        name = adapter_name(Path(adapter))
        with self._lock:
            bases = list(self._bases.values())
        for loaded in bases:
            with loaded.lock:
                if name in loaded.adapters:
                    loaded.doomed.add(name)
                    loaded.unload_idle(self.max_adapters)

    def _acquire(self, loaded: LoadedBase, adapter: Path) -> str:
        """Load the adapter into `loaded` unless it is there; mark it in use; unload the least
        recently used idle adapters past `max_adapters`."""
        name = adapter_name(adapter)
        with loaded.lock:
            if name not in loaded.adapters:
                if loaded.peft is None:
                    loaded.peft = attach_adapter(loaded.model, adapter, name)
                else:
                    loaded.peft.load_adapter(adapter, adapter_name=name)
                loaded.adapters[name] = 0
                loaded.active = ""
            loaded.adapters[name] += 1
            loaded.adapters.move_to_end(name)
            loaded.unload_idle(self.max_adapters)
        return name

    def generate_onnx(
        self, export_dir: str | Path, prompt: Prompt, params: SamplingParams
    ) -> Iterator[Chunk]:
        """Stream text from an ONNX export directory through onnxruntime."""
        loaded = self._load_onnx(Path(export_dir).resolve())
        ids = _render(loaded.tokenizer, prompt)
        step = _OnnxSession(loaded.session)
        yield from _complete(step, loaded.tokenizer, ids, params, loaded.eos, loaded.context_length)

    def _load_onnx(self, path: Path) -> _LoadedOnnx:
        with self._lock:
            if path not in self._onnx:
                tokenizer = models.load_tokenizer(path)
                config = GenerationConfig.from_pretrained(path, local_files_only=True)
                context = models.describe(path, path.name).context_length
                self._onnx[path] = _LoadedOnnx(
                    session=onnxruntime.InferenceSession(
                        str(path / ONNX_FILE), providers=["CPUExecutionProvider"]
                    ),
                    tokenizer=tokenizer,
                    eos=_eos_ids(config, tokenizer),
                    context_length=context,
                )
                # A session being used keeps its own reference; dropping ours is safe.
                while len(self._onnx) > self.max_onnx:
                    self._onnx.popitem(last=False)
            self._onnx.move_to_end(path)
            return self._onnx[path]


def _render(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of the prompt, rendered the way `trainer.data` renders training examples."""
    if isinstance(prompt, str):
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = [*bos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    else:
        turns = [{"role": m["role"], "content": m["content"]} for m in prompt]
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError as error:
            raise InvalidPrompt(f"the chat template rejected the messages: {error}") from error
        # Special tokens come from the template, never implicitly.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidPrompt("the prompt is empty")
    return ids


class _TorchSession:
    """One request's forward passes on a shared base: its adapter, its own KV cache."""

    def __init__(self, loaded: LoadedBase, adapter: str | None, device: torch.device) -> None:
        self.loaded = loaded
        self.adapter = adapter
        self.device = device
        self.cache = None

    def __call__(self, ids: list[int]) -> torch.Tensor:
        loaded = self.loaded
        # The last position's logits alone, not a vocabulary's worth per prompt token.
        last = {"logits_to_keep": 1} if models.keeps_logits(loaded.model) else {}
        with loaded.lock, torch.inference_mode():
            loaded.activate(self.adapter)
            out = (loaded.peft or loaded.model)(
                input_ids=torch.tensor([ids], device=self.device),
                past_key_values=self.cache,
                use_cache=True,
                **last,
            )
        self.cache = out.past_key_values
        return out.logits[0, -1].float().cpu()


class _OnnxSession:
    """One request's calls of an ONNX export: feeds its own past back in."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        self.past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key")]
        self.past = [np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in self.past_inputs]
        self.length = 0

    def __call__(self, ids: list[int]) -> torch.Tensor:
        total = self.length + len(ids)
        logits, *self.past = self.session.run(
            None,
            {
                "input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64),
                "position_ids": np.arange(self.length, total, dtype=np.int64)[None],
                **{i.name: p for i, p in zip(self.past_inputs, self.past, strict=True)},
            },
        )
        self.length = total
        return torch.from_numpy(logits[0, -1].astype(np.float32))


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    if temperature == 0:
        return int(logits.argmax())
    # Shifted so the largest logit is 0: a tiny temperature then sends the others to -inf,
    # never the largest to inf (inf - inf is NaN), so it tends to greedy as it should.
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if top_p < 1:
        probs, order = probs.sort(descending=True)
        # Keep each token whose predecessors hold less than top_p, and always the first
        # (a top_p below float32's smallest value would otherwise keep none).
        keep = probs.cumsum(0) - probs < top_p
        keep[0] = True
        probs = probs * keep
        return int(order[torch.multinomial(probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


class _TextStream:
    """Token ids in, text deltas out: never splits a character across deltas, never sends
    text that may turn out to begin a stop sequence, and ends at the first stop sequence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        # Decoding a window around the new tokens (as TGI does) keeps each step's cost
        # independent of the length so far while merging tokens that form one character.
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns (text to send now, whether a stop sequence was reached)."""
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        # A trailing U+FFFD is a character whose bytes have not all arrived.
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.text += text[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> tuple[str, bool]:
        """The text still held back, at the end of generation."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        self.text += self._decode(self.ids[self.prefix_offset :])[len(prefix) :]
        self.read_offset = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> tuple[str, bool]:
        # Text before `sent` held no stop sequence and no prefix of one at its end, so a
        # stop sequence can only start at or after it.
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            end, stopped = min(hits), True
        else:
            end, stopped = len(self.text), False
            if not final:
                end -= self._stop_prefix()
        delta = self.text[self.sent : end]
        self.sent = end
        return delta, stopped

    def _stop_prefix(self) -> int:
        """Length of the longest unsent tail of the text that begins some stop sequence."""
        tail = self.text[self.sent :]
        return max(
            (
                k
                for s in self.stop
                for k in range(min(len(s) - 1, len(tail)), 0, -1)
                if s.startswith(tail[-k:])
            ),
            default=0,
        )


def _complete(
    step: Callable[[list[int]], torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    params: SamplingParams,
    eos: frozenset[int],
    context_length: int,
) -> Iterator[Chunk]:
    """The decoding loop shared by torch and onnxruntime: `step(new_ids)` runs the model on
    the new tokens (keeping its own cache) and returns the last position's logits."""
    room = context_length - len(prompt_ids)
    if room <= 0:
        raise InvalidPrompt(
            f"the prompt is {len(prompt_ids)} tokens; the model's context is {context_length}"
        )
    budget = min(params.max_tokens, room)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    generator = torch.Generator().manual_seed(seed)
    text = _TextStream(tokenizer, params.stop)
    generated = 0
    logits = step(prompt_ids)
    while True:
        if generated == budget:
            tail, stopped = text.finish()
            finish: FinishReason = "stop" if stopped else "length"
            break
        token = _sample(logits, params.temperature, params.top_p, generator)
        generated += 1
        if token in eos:
            tail, _ = text.finish()
            finish = "stop"
            break
        delta, stopped = text.push(token)
        if stopped:
            tail, finish = delta, "stop"
            break
        if delta:
            yield Chunk(delta)
        # The last token's logits would never be used.
        if generated < budget:
            logits = step([token])
    yield Chunk(tail, finish, Usage(len(prompt_ids), generated))
