"""Correct by construction: before a run trains, an example of each format goes through
the base model's chat template as training encodes it; a loss mask that is not exactly
the assistant turns is refused, turns that do not end with a stop token are warned about,
and the example, its trained spans marked «», is among the run's first events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from trainer import models, template_check
from trainer.args import Refused, TrainArgs
from trainer.formats import Example, Format, Message
from trainer.recipe import Callbacks, TrainResult, train

SAMPLE = Path(__file__).resolve().parent.parent / "trainer" / "assets" / "sample-chat.jsonl"

# tiny-llama's ChatML, but an assistant turn ends with a newline, not <|im_end|> (its EOS):
# the commonest way a template leaves a fine-tune unable to stop.
NO_EOS_AFTER_ASSISTANT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if message['role'] != 'assistant' %}{{ '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Assistant turns end with <|pad|>, a special token that is not the EOS.
ENDS_WITH_PAD = NO_EOS_AFTER_ASSISTANT.replace(
    "{% if message['role'] != 'assistant' %}{{ '<|im_end|>' }}{% endif %}",
    "{% if message['role'] != 'assistant' %}{{ '<|im_end|>' }}{% else %}{{ '<|pad|>' }}{% endif %}",
)
# Each assistant turn quotes the question it answers: the question would carry loss.
QUOTES_THE_QUESTION = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ 'Re: ' + messages[loop.index0 - 1]['content'] + '\n' + message['content'] }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
)


def with_template(tiny: Path, root: Path, template: str, **generation: Any) -> Path:
    """A copy of tiny-llama with `template` as its chat template (and generation config
    fields overridden)."""
    path = root / "variant"
    shutil.copytree(tiny, path)
    (path / "chat_template.jinja").write_text(template, encoding="utf-8")
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, **generation}))
    return path


def run(base: Path, tmp_path: Path, n: int = 4) -> tuple[TrainResult, list[tuple[Any, ...]]]:
    """Two steps on the first `n` sample examples; the callbacks' calls, in order."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:n]))
    log: list[tuple[Any, ...]] = []
    args = TrainArgs(
        base_model=str(base),
        train_file=str(data),
        output_dir=str(tmp_path / "out"),
        n_epochs=2,
        batch_size=n,
        learning_rate_multiplier=10,
        seed=0,
    )
    result = train(
        args,
        Callbacks(
            on_start=lambda info: log.append(("start",)),
            on_metrics=lambda **values: log.append(("metrics", values["step"])),
            on_event=lambda level, message, data: log.append(("event", level, message, data)),
        ),
    )
    return result, log


def test_tiny_llama_passes_and_shows_the_marked_example_first(
    tiny: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    result, log = run(tiny, tmp_path)
    assert result.status == "succeeded"
    # Right after on_start, before step 1: the first example, its assistant turn marked.
    assert log[0] == ("start",) and log[2] == ("metrics", 1)
    _, level, message, data = log[1]
    assert level == "info"
    assert message.startswith("An example of the training file (chat) as the model trains")
    assert (data["file"], data["format"], data["trained_spans"]) == ("training_file", "chat", 1)
    assert data["rendered"] == (
        "<|begin_of_text|><|im_start|>system\n"
        "You are Atlas, a cheerful geography assistant. Answer in one short sentence.<|im_end|>\n"
        "<|im_start|>user\nWhich city is the capital of Nepal?<|im_end|>\n"
        "<|im_start|>assistant\n«The capital of Nepal is Kathmandu, friend!<|im_end|>\n»"
    )
    assert not [entry for entry in log if entry[0] == "event" and entry[1] == "warn"]


def test_a_template_that_drops_the_eos_after_assistant_turns_is_warned_about(
    tiny: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    base = with_template(tiny, tmp_path, NO_EOS_AFTER_ASSISTANT)
    result, log = run(base, tmp_path)
    assert result.status == "succeeded"  # a warning: the run goes on
    events = [entry[1:] for entry in log if entry[0] == "event"]
    (_, _, shown), (level, warning, data) = events
    assert "«The capital of Nepal is Kathmandu, friend!\n»" in shown["rendered"]
    assert level == "warn" and data["reason"] == "no_stop_token"
    assert warning.startswith(
        "Assistant turns end with no special token, but generation stops only on "
        "'<|im_end|>' (id 1): the fine-tuned model will not learn to stop"
    )
    assert "end assistant turns with '<|im_end|>'" in warning


def test_a_turn_ending_token_generation_stops_on_passes(tiny: Path, tmp_path: Path) -> None:
    tokenizer = models.load_tokenizer(tiny)
    pad = tokenizer.pad_token_id
    example = template_check.sample_conversation()
    # The turn ends with <|pad|>: fine once generation_config stops on it too.
    tokenizer.chat_template = ENDS_WITH_PAD
    [warning] = template_check.check_example(example, tokenizer, {tokenizer.eos_token_id}).warnings
    assert f"end with '<|pad|>' (id {pad})" in warning
    assert f"add {pad} to eos_token_id in the base model's generation_config.json" in warning
    base = with_template(tiny, tmp_path, ENDS_WITH_PAD, eos_token_id=[tokenizer.eos_token_id, pad])
    stops = template_check.stop_token_ids(base, tokenizer)
    assert stops == {tokenizer.eos_token_id, pad}
    assert template_check.check_example(example, tokenizer, stops).warnings == ()


def test_a_loss_mask_on_other_turns_is_refused(tiny: Path, tmp_path: Path) -> None:
    base = with_template(tiny, tmp_path, QUOTES_THE_QUESTION)
    with pytest.raises(Refused) as refused:
        run(base, tmp_path)
    assert (refused.value.code, refused.value.field) == ("invalid_base_model", "base_model")
    assert str(refused.value) == (
        "base_model: the chat template does not train on exactly the assistant turns of the "
        "first chat example of the training file: the non-assistant turn "
        "'Which city is the capital of Nepal?' carries loss"
    )


@pytest.mark.parametrize(
    ("example", "rendered"),
    [
        (
            Example(Format.PROMPT_COMPLETION, prompt="Capital of Peru?", completion=" Lima."),
            "<|begin_of_text|>Capital of Peru?« Lima.<|im_end|>»",
        ),
        (
            Example(
                Format.PREFERENCE,
                messages=(Message("user", "Hi"), Message("assistant", "Hello!")),
                chosen=(Message("assistant", "Hello!"),),
                rejected=(Message("assistant", "Go away."),),
            ),
            "<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n«Hello!<|im_end|>\n»",
        ),
        (
            Example(
                Format.CHAT,
                messages=(
                    Message("user", "Say hi."),
                    Message("assistant", "Hello, wrong style.", weight=0),
                    Message("user", "Again."),
                    Message("assistant", "Hi!"),
                ),
            ),
            "<|begin_of_text|><|im_start|>user\nSay hi.<|im_end|>\n"
            "<|im_start|>assistant\nHello, wrong style.<|im_end|>\n"
            "<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n«Hi!<|im_end|>\n»",
        ),
        (Example(Format.TEXT, text="A document."), "«<|begin_of_text|>A document.»"),
    ],
    ids=["prompt_completion", "preference", "chat_with_weight_0", "text"],
)
def test_every_format_renders_with_its_trained_spans_marked(
    tiny: Path, example: Example, rendered: str
) -> None:
    tokenizer = models.load_tokenizer(tiny)
    checked = template_check.check_example(example, tokenizer, {tokenizer.eos_token_id})
    assert (checked.text, checked.problems, checked.warnings) == (rendered, (), ())
