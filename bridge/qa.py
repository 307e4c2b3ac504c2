"""Question-answer pairs from documents, as Helix prepares a text fine-tune: each
document is cut into chunks, a generator model is asked for pairs about each chunk,
and the pairs it answers with are parsed, checked and kept, to be trained on as chat
examples (user: the question, assistant: the answer).

The generator is an OpenAI-compatible chat endpoint the admin configures, or a model of
this server run by its Generate (the bridge reaches it over gRPC like any client).
Everything is bounded: the bytes read of each document, chunks per document and per
session, pairs per chunk, the length of each question and answer, each call's time and
all calls' time together. A chunk whose call fails, runs over or answers nothing
parseable yields no pairs, and why is kept; the caller decides what too few pairs means.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from bridge.backend import Backend, Metadata
from bridge.settings import BridgeSettings
from tunewire.v1 import files_pb2, models_pb2

# Longer ones are dropped, not cut: a cut answer teaches a wrong one.
MAX_QUESTION_CHARS = 1000
MAX_ANSWER_CHARS = 4000
MAX_ERROR_CHARS = 200
# UTF-8 takes at most 4 bytes a character: what to read of a document for its chunks.
BYTES_PER_CHAR = 4
CONCURRENT_CALLS = 4
TOKENS_PER_PAIR = 160  # what a pair's JSON costs, roughly, to size max_tokens
MAX_TOKENS = 4096  # Generate's own limit

SYSTEM_PROMPT = (
    "You write question-and-answer pairs that teach a language model what a document "
    "says. From the text the user gives, write up to {pairs} pairs: each a question a "
    "reader could ask about the text, and its answer, taken from the text alone. Reply "
    'with JSON only: a list of objects, each with the keys "question" and "answer".'
)

Ask = Callable[[list[dict[str, str]]], Awaitable[str]]
"""One generator call: chat messages in, the reply's text out."""


@dataclass(frozen=True)
class Chunk:
    document: str
    index: int
    text: str


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    document: str
    chunk: int


@dataclass
class Prepared:
    """What generation gave: the pairs, the chunks asked about, and what went wrong."""

    generator: str
    pairs: list[Pair] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    errors: dict[tuple[str, int], str] = field(default_factory=dict)
    limited: bool = False
    """Some of the documents' text was not asked about (a limit on chunks or bytes)."""


def configured(settings: BridgeSettings) -> bool:
    return bool(settings.qa_generator_url or settings.qa_generator_model)


# --- documents and chunks -----------------------------------------------------------------


async def read_documents(
    backend: Backend,
    auth: Metadata,
    file_id: str,
    names: Sequence[str],
    sizes: Sequence[int],
    separator: int,
    budget: int,
    total: int,
) -> tuple[list[tuple[str, str]], bool]:
    """The start of each document stored one after another in `file_id` (`sizes` bytes
    each, `separator` bytes between), as text: at most `budget` bytes of each and `total`
    of all, in order; and whether any text was left unread. Reading stops once the last
    start needed has arrived, so the bridge holds at most `total` bytes."""
    spans, offset, left = [], 0, total
    for size in sizes:
        take = min(size, budget, left)
        spans.append((offset, offset + take))
        offset, left = offset + size + separator, left - take
    kept = [bytearray() for _ in sizes]
    end = max((stop for _, stop in spans), default=0)
    call = backend.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=file_id), metadata=auth)
    try:
        async for reply in call:
            start, data = reply.chunk.offset, reply.chunk.data
            for held, (first, stop) in zip(kept, spans, strict=True):
                low, high = max(first, start), min(stop, start + len(data))
                if low < high:
                    held += data[low - start : high - start]
            if start + len(data) >= end:
                break
    finally:
        call.cancel()  # the rest is not needed (a no-op once the stream has ended)
    texts = [
        (name, bytes(held).decode("utf-8", errors="ignore"))
        for name, held in zip(names, kept, strict=True)
    ]
    return texts, sum(stop - start for start, stop in spans) < sum(sizes)


def cut_chunks(text: str, size: int) -> list[str]:
    """`text` in pieces of at most `size` characters, each cut at the last paragraph,
    line, sentence or word end before the limit when there is one in its second half."""
    pieces = []
    text = text.strip()
    while text:
        if len(text) <= size:
            pieces.append(text)
            break
        window = text[:size]
        cut = size
        for mark in ("\n\n", "\n", ". ", " "):
            at = window.rfind(mark)
            if at >= size // 2:
                cut = at + len(mark)
                break
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    return [piece for piece in pieces if piece]


def plan_chunks(
    documents: Sequence[tuple[str, str]], size: int, per_document: int, total: int
) -> tuple[list[Chunk], bool]:
    """The chunks to ask about, in document order, and whether any text was left out."""
    chunks: list[Chunk] = []
    limited = False
    for name, text in documents:
        pieces = cut_chunks(text, size)
        if len(pieces) > per_document:
            pieces, limited = pieces[:per_document], True
        room = total - len(chunks)
        if len(pieces) > room:
            pieces, limited = pieces[:room], True
        chunks += [Chunk(name, i, piece) for i, piece in enumerate(pieces)]
    return chunks, limited


# --- parsing what the generator says --------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_LINES = re.compile(
    r"^\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]\s*(?P<q>.+?)\s*\n\s*(?:A|Answer)\s*[:.]\s*(?P<a>.+?)\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_KEYS = ("pairs", "questions", "qa_pairs", "items", "data")


def _decoded(text: str) -> Any:
    """The first JSON value that `text` is, holds in a code fence, or holds as a list or
    object between its first opening and last closing bracket."""
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for opening, closing in (("[", "]"), ("{", "}")):
        first, last = text.find(opening), text.rfind(closing)
        if 0 <= first < last:
            candidates.append(text[first : last + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _field(item: dict[str, Any], *names: str) -> str:
    for key, value in item.items():
        if key.lower() in names and isinstance(value, str):
            return value.strip()
    return ""


def parse_pairs(text: str, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` distinct (question, answer) pairs from a generator's reply: JSON (a
    list of objects, or an object holding one, fenced or not), else `Q: … / A: …` lines.
    Pairs with an empty or overlong side are dropped."""
    value = _decoded(text)
    if isinstance(value, dict):
        value = next((value[k] for k in _KEYS if isinstance(value.get(k), list)), [value])
    found: list[tuple[str, str]] = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                found.append((_field(item, "question", "q"), _field(item, "answer", "a")))
    if not found:
        found = [(m.group("q").strip(), m.group("a").strip()) for m in _LINES.finditer(text)]
    pairs, seen = [], set()
    for question, answer in found:
        fits = 0 < len(question) <= MAX_QUESTION_CHARS and 0 < len(answer) <= MAX_ANSWER_CHARS
        if fits and question not in seen:
            seen.add(question)
            pairs.append((question, answer))
        if len(pairs) == limit:
            break
    return pairs


# --- generators ---------------------------------------------------------------------------


@asynccontextmanager
async def generator(
    settings: BridgeSettings, backend: Backend, auth: Metadata
) -> AsyncIterator[tuple[str, Ask]]:
    """The configured generator: its description (for the session) and its call."""
    max_tokens = min(MAX_TOKENS, TOKENS_PER_PAIR * settings.qa_max_pairs_per_chunk)
    if settings.qa_generator_url:
        url = settings.qa_generator_url.rstrip("/") + "/chat/completions"
        headers = {}
        if settings.qa_generator_key:
            headers["Authorization"] = f"Bearer {settings.qa_generator_key}"
        async with httpx.AsyncClient(timeout=settings.qa_timeout_seconds) as client:

            async def ask_endpoint(messages: list[dict[str, str]]) -> str:
                body = {
                    "model": settings.qa_generator_model,
                    "messages": messages,
                    "temperature": 0,
                    "max_tokens": max_tokens,
                }
                reply = await client.post(url, json=body, headers=headers)
                if reply.status_code >= 400:
                    raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:100]}")
                return reply.json()["choices"][0]["message"]["content"] or ""

            where = f"{settings.qa_generator_model} at {settings.qa_generator_url}"
            yield where, ask_endpoint
        return

    async def ask_server(messages: list[dict[str, str]]) -> str:
        request = models_pb2.GenerateRequest(
            model_id=settings.qa_generator_model,
            messages=[models_pb2.ChatMessage(**m) for m in messages],
            max_tokens=max_tokens,
            temperature=0,
        )
        text = ""
        async for reply in backend.models.Generate(request, metadata=auth):
            text += reply.text
        return text

    yield f"{settings.qa_generator_model} (this server's Generate)", ask_server


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "the generator did not answer in time"
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"[:MAX_ERROR_CHARS]
    return (str(error) or type(error).__name__)[:MAX_ERROR_CHARS]


async def generate(
    ask: Ask, description: str, chunks: Sequence[Chunk], settings: BridgeSettings
) -> Prepared:
    """Ask about every chunk (a few calls at a time), each call limited to
    qa_timeout_seconds and all of them to qa_deadline_seconds; pairs in chunk order."""
    prepared = Prepared(description, chunks=list(chunks))
    limit = settings.qa_max_pairs_per_chunk
    system = SYSTEM_PROMPT.format(pairs=limit)
    gate = asyncio.Semaphore(CONCURRENT_CALLS)

    async def one(chunk: Chunk) -> list[tuple[str, str]]:
        async with gate, asyncio.timeout(settings.qa_timeout_seconds):
            reply = await ask(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Document: {chunk.document}\n\n{chunk.text}"},
                ]
            )
        return parse_pairs(reply, limit)

    tasks = [asyncio.create_task(one(chunk)) for chunk in chunks]
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=settings.qa_deadline_seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for chunk, task in zip(chunks, tasks, strict=True):
        key = (chunk.document, chunk.index)
        if task.cancelled():
            prepared.errors[key] = "not done within the session's deadline"
        elif (error := task.exception()) is not None:
            prepared.errors[key] = _why(error)
        elif not (found := task.result()):
            prepared.errors[key] = "no question-answer pairs could be read from the reply"
        else:
            prepared.pairs += [Pair(q, a, chunk.document, chunk.index) for q, a in found]
    return prepared


def chat_examples(pairs: Sequence[Pair]) -> bytes:
    """The pairs as a chat-format JSONL training file: one conversation each."""
    lines = (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": pair.question},
                    {"role": "assistant", "content": pair.answer},
                ]
            },
            ensure_ascii=False,
        )
        for pair in pairs
    )
    return "".join(line + "\n" for line in lines).encode()
