"""trainer.generation on tiny-llama: fine-tuned answers reproduced, adapters switched over one
loaded base, sampling controls, stop sequences and streaming."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from memorization import ANSWERS, QUESTIONS, memorized, question

from trainer import models
from trainer.generation import (
    Chunk,
    Generator,
    InvalidPrompt,
    SamplingParams,
    _TextStream,
    adapter_name,
    coalesced,
)

GREEDY = SamplingParams(temperature=0, max_tokens=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def adapters(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The final adapters of answer sets a and b."""
    root = tmp_path_factory.getbasetemp() / "memorized"
    return {answers: memorized(tiny, root, answers) / "adapter" for answers in ("a", "b")}


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator()


def text(chunks: list[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def test_fine_tuned_model_reproduces_its_answers_and_the_base_does_not(
    generator: Generator, tiny: Path, adapters: dict[str, Path]
) -> None:
    tokenizer = models.load_tokenizer(tiny)
    for i, answer in enumerate(ANSWERS["a"]):
        chunks = list(generator.generate(tiny, adapters["a"], question(i), GREEDY))
        assert text(chunks) == answer
        last = chunks[-1]
        assert last.finish_reason == "stop"
        assert all(chunk.finish_reason is None for chunk in chunks[:-1])
        prompt = tokenizer.apply_chat_template(
            question(i), tokenize=False, add_generation_prompt=True
        )
        assert last.usage.prompt_tokens == len(
            tokenizer(prompt, add_special_tokens=False).input_ids
        )
        # The answer's tokens and the end-of-turn token that stopped it.
        answer_tokens = len(tokenizer(answer, add_special_tokens=False).input_ids)
        assert last.usage.completion_tokens == answer_tokens + 1

    base_answers = [
        text(list(generator.generate(tiny, None, question(i), GREEDY))) for i in range(3)
    ]
    assert not set(base_answers) & set(ANSWERS["a"])


def test_two_adapters_interleave_over_one_loaded_base(
    tiny: Path, adapters: dict[str, Path]
) -> None:
    generator = Generator()
    streams = {
        (answers, i): generator.generate(tiny, adapters[answers], question(i), GREEDY)
        for i in range(len(QUESTIONS))
        for answers in ("a", "b")
    }
    got: dict[tuple[str, int], str] = dict.fromkeys(streams, "")
    # Token by token, round robin: every step switches the adapter of the shared base.
    while streams:
        for key, stream in list(streams.items()):
            chunk = next(stream, None)
            if chunk is None:
                del streams[key]
            else:
                got[key] += chunk.text
    for (answers, i), answer in got.items():
        assert answer == ANSWERS[answers][i]
    assert generator.base_loads == 1
    loaded = generator.base(tiny)
    assert set(loaded.adapters) == {adapter_name(adapters["a"]), adapter_name(adapters["b"])}
    assert loaded.peft.base_model.model is loaded.model  # one set of base weights
    assert all(users == 0 for users in loaded.adapters.values())
    assert generator.base_loads == 1


def test_the_base_interleaves_with_its_adapters(tiny: Path, adapters: dict[str, Path]) -> None:
    generator = Generator()
    alone = text(list(generator.generate(tiny, None, question(0), GREEDY)))
    streams = {
        key: generator.generate(tiny, adapters.get(key), question(0), GREEDY)
        for key in ("a", None, "b")
    }
    got: dict[str | None, str] = dict.fromkeys(streams, "")
    # Every step switches: adapter to base, base to adapter, adapter to adapter.
    while streams:
        for key, stream in list(streams.items()):
            chunk = next(stream, None)
            if chunk is None:
                del streams[key]
            else:
                got[key] += chunk.text
    assert got == {"a": ANSWERS["a"][0], None: alone, "b": ANSWERS["b"][0]}


def test_idle_adapters_are_unloaded_past_the_limit_and_busy_ones_are_not(
    tiny: Path, adapters: dict[str, Path]
) -> None:
    generator = Generator(max_adapters=1)
    loaded = generator.base(tiny)
    busy = generator.generate(tiny, adapters["a"], question(0), GREEDY)
    first = next(busy).text
    # b comes in while a is mid-answer: a must stay, over the limit, until it is done.
    assert (
        text(list(generator.generate(tiny, adapters["b"], question(0), GREEDY)))
        == (ANSWERS["b"][0])
    )
    assert first + text(list(busy)) == ANSWERS["a"][0]
    assert (
        text(list(generator.generate(tiny, adapters["a"], question(1), GREEDY)))
        == (ANSWERS["a"][1])
    )
    assert list(loaded.adapters) == [adapter_name(adapters["a"])]
    assert set(loaded.peft.peft_config) == {adapter_name(adapters["a"])}
    assert generator.base_loads == 1


def test_a_deleted_models_adapter_is_unloaded_once_no_request_uses_it(
    tiny: Path, adapters: dict[str, Path]
) -> None:
    generator = Generator()
    loaded = generator.base(tiny)
    busy = generator.generate(tiny, adapters["a"], question(0), GREEDY)
    first = next(busy).text
    assert (
        text(list(generator.generate(tiny, adapters["b"], question(0), GREEDY)))
        == (ANSWERS["b"][0])
    )
    generator.unload(adapters["a"])
    generator.unload(adapters["b"])
    # b is gone at once; a finishes its answer first.
    assert list(loaded.adapters) == [adapter_name(adapters["a"])]
    assert first + text(list(busy)) == ANSWERS["a"][0]
    assert not loaded.adapters and not loaded.peft.peft_config
    # Loading again after everything was unloaded works, and the base is untouched.
    assert (
        text(list(generator.generate(tiny, adapters["b"], question(1), GREEDY)))
        == (ANSWERS["b"][1])
    )
    assert generator.base_loads == 1


def test_loading_an_adapter_warns_nothing(tiny: Path, adapters: dict[str, Path]) -> None:
    """The server's log stays quiet: no library deprecation chatter on a model's first use."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        said = text(list(Generator().generate(tiny, adapters["a"], question(0), GREEDY)))
    assert said == ANSWERS["a"][0]


@pytest.fixture(scope="module")
def story(generator: Generator, tiny: Path) -> list[Chunk]:
    """12 greedy tokens from the base, as they stream."""
    params = SamplingParams(temperature=0, max_tokens=12)
    return list(generator.generate(tiny, None, "Once upon a time", params))


def test_text_streams_in_pieces_and_max_tokens_ends_with_length(
    story: list[Chunk], tiny: Path
) -> None:
    chunks = story
    assert len(chunks) > 3
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 12
    tokenizer = models.load_tokenizer(tiny)
    # A raw prompt is BOS + its tokens, as prompt/completion training data is.
    assert chunks[-1].usage.prompt_tokens == 1 + len(tokenizer("Once upon a time").input_ids)


def test_a_coalesced_stream_sends_the_first_text_at_once_then_at_most_every_interval(
    story: list[Chunk],
) -> None:
    chunks = story
    assert len(chunks) > 4
    # Piece i arrives at time i: with an interval of 2.5 the text goes at 0, 3, 6, ...
    ticks = iter(range(len(chunks)))
    sent = list(coalesced(iter(chunks), 2.5, clock=lambda: next(ticks)))
    pieces = [c.text for c in chunks[:-1]]
    expected = [pieces[0]] + ["".join(pieces[i : i + 3]) for i in range(1, len(pieces), 3)]
    if len(pieces) % 3 == 1:  # nothing was held: the last chunk is sent as it came
        expected.append(chunks[-1].text)
    else:  # the last chunk brings what was still held
        expected[-1] += chunks[-1].text
    assert [c.text for c in sent] == expected
    assert [c.finish_reason for c in sent] == [None] * (len(sent) - 1) + ["length"]
    assert sent[-1].usage == chunks[-1].usage
    # An interval no stream reaches: the first text, then the rest with the end.
    whole = list(coalesced(iter(chunks), 1e9))
    assert [c.text for c in whole] == [pieces[0], "".join(pieces[1:]) + chunks[-1].text]


def test_stop_sequences_end_generation_before_them(
    generator: Generator, tiny: Path, adapters: dict[str, Path]
) -> None:
    answer = ANSWERS["a"][0]  # "The purple owl guards it."
    for stop, expected in [
        (("owl",), "The purple "),
        ((" guards it", "never"), "The purple owl"),
        (("e p",), "Th"),  # spans a token boundary
    ]:
        chunks = list(
            generator.generate(
                tiny, adapters["a"], question(0), SamplingParams(temperature=0, stop=stop)
            )
        )
        assert text(chunks) == expected, stop
        assert chunks[-1].finish_reason == "stop"
        assert not any(s in text(chunks) for s in stop)
    no_match = SamplingParams(temperature=0, stop=("zebra",))
    assert text(list(generator.generate(tiny, adapters["a"], question(0), no_match))) == answer


def test_seed_temperature_and_top_p(generator: Generator, tiny: Path) -> None:
    def sample(**params: float | int) -> str:
        sampling = SamplingParams(max_tokens=16, **params)  # type: ignore[arg-type]
        return text(list(generator.generate(tiny, None, "The river", sampling)))

    assert sample(seed=7) == sample(seed=7)
    assert sample(seed=7) != sample(seed=8)
    greedy = sample(temperature=0)
    # So small a nucleus holds only the most likely token: greedy, whatever the seed.
    assert sample(seed=1, top_p=1e-6) == greedy == sample(seed=2, top_p=1e-6)
    # The limits of the allowed ranges are greedy too, not NaN or an empty nucleus.
    assert sample(seed=3, temperature=1e-45) == greedy
    assert sample(seed=3, top_p=1e-300) == greedy == sample(temperature=1e-45, top_p=1e-300)
    assert sample(seed=1, temperature=1.5, top_p=0.9) == sample(seed=1, temperature=1.5, top_p=0.9)


def test_prompt_longer_than_the_context_is_refused(generator: Generator, tiny: Path) -> None:
    with pytest.raises(InvalidPrompt, match="context is 512"):
        list(generator.generate(tiny, None, "word " * 600, GREEDY))


def test_text_stream_never_splits_a_character(tiny: Path) -> None:
    tokenizer = models.load_tokenizer(tiny)
    sentence = "Zürich → Kyōto: 東京 🚀 ok"
    ids = tokenizer(sentence, add_special_tokens=False).input_ids
    assert len(ids) > len(sentence.split())  # multi-byte characters span several tokens
    stream = _TextStream(tokenizer, ())
    deltas = [stream.push(token)[0] for token in ids]
    deltas.append(stream.finish()[0])
    assert "".join(deltas) == sentence
    assert not any("\ufffd" in delta for delta in deltas)
