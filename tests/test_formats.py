"""Training-data formats: detection, normalization and the problems each rule reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.formats import (
    Example,
    Format,
    Message,
    Problem,
    detect_format,
    parse_record,
    read_examples,
)

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT]}
COHERE = {
    "messages": [
        {"role": "System", "content": "Be brief."},
        {"role": "User", "content": "Hi"},
        {"role": "Chatbot", "content": "Hello!"},
    ]
}
SHAREGPT = {
    "id": "abc",
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
    ],
}
ALPACA = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
PROMPT_COMPLETION = {"prompt": "2+2=", "completion": "4"}
PREFERENCE = {
    "input": {"messages": [USER]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}
TEXT = {"text": "Once upon a time."}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (CHAT, Format.CHAT),
        (COHERE, Format.COHERE_CHAT),
        (SHAREGPT, Format.SHAREGPT),
        (ALPACA, Format.ALPACA),
        ({"instruction": "Say hi.", "output": "hi"}, Format.ALPACA),
        (PROMPT_COMPLETION, Format.PROMPT_COMPLETION),
        (PREFERENCE, Format.PREFERENCE),
        (TEXT, Format.TEXT),
        # Shape, not validity: a broken chat record is still a chat record.
        ({"messages": "nope"}, Format.CHAT),
        ({"messages": [{"role": "User", "content": "x"}, ASSISTANT]}, Format.CHAT),
        ({}, None),
        ({"foo": 1}, None),
        ([CHAT], None),
        ("text", None),
    ],
)
def test_detect_format(record: object, expected: Format | None) -> None:
    assert detect_format(record) == expected


NORMALIZED = [
    (
        CHAT,
        Example(
            Format.CHAT,
            messages=(
                Message("system", "Be brief."),
                Message("user", "Hi"),
                Message("assistant", "Hello!"),
            ),
        ),
    ),
    (
        COHERE,
        Example(
            Format.COHERE_CHAT,
            messages=(
                Message("system", "Be brief."),
                Message("user", "Hi"),
                Message("assistant", "Hello!"),
            ),
        ),
    ),
    (
        SHAREGPT,
        Example(
            Format.SHAREGPT,
            messages=(
                Message("system", "Be brief."),
                Message("user", "Hi"),
                Message("assistant", "Hello!"),
            ),
        ),
    ),
    (
        ALPACA,
        Example(
            Format.ALPACA,
            messages=(
                Message("user", "Translate to French.\n\ncat"),
                Message("assistant", "chat"),
            ),
        ),
    ),
    (
        {"instruction": "Say hi.", "input": "", "output": "hi", "system": "Be kind."},
        Example(
            Format.ALPACA,
            messages=(
                Message("system", "Be kind."),
                Message("user", "Say hi."),
                Message("assistant", "hi"),
            ),
        ),
    ),
    (PROMPT_COMPLETION, Example(Format.PROMPT_COMPLETION, prompt="2+2=", completion="4")),
    (
        PREFERENCE,
        Example(
            Format.PREFERENCE,
            messages=(Message("user", "Hi"), Message("assistant", "Hello!")),
            rejected=(Message("assistant", "Go away."),),
            chosen=(Message("assistant", "Hello!"),),
        ),
    ),
    (TEXT, Example(Format.TEXT, text="Once upon a time.")),
]


@pytest.mark.parametrize(("record", "expected"), NORMALIZED)
def test_parse_record_normalizes(record: dict[str, object], expected: Example) -> None:
    assert parse_record(record, 1) == (expected, [])
    assert parse_record(record, 1, expected.format) == (expected, [])


def test_chat_weight_name_and_tool_calls() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    record = {
        "messages": [
            {"role": "user", "content": "Weather?", "name": "ann"},
            {"role": "assistant", "content": "Let me think.", "weight": 0},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny.", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "parallel_tool_calls": False,
    }
    example, problems = parse_record(record, 1)
    assert problems == []
    assert example is not None
    assert example.messages == (
        Message("user", "Weather?"),
        Message("assistant", "Let me think.", weight=0),
        Message("assistant", json.dumps({"tool_calls": [call]})),
        Message("tool", "sunny"),
        Message("assistant", "Sunny."),
    )


def test_assistant_function_call_without_content() -> None:
    call = {"name": "f", "arguments": "{}"}
    record = {"messages": [USER, {"role": "assistant", "function_call": call}], "functions": []}
    example, problems = parse_record(record, 1)
    assert problems == []
    assert example is not None
    assert example.messages[-1] == Message("assistant", json.dumps({"function_call": call}))


def where(problems: list[Problem]) -> list[tuple[int, str, str]]:
    return [(p.line, p.path, p.code) for p in problems]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([1, 2], [("$", "data_type")]),
        ({}, [("$.messages", "missing_messages_list")]),
        ({"messages": []}, [("$.messages", "missing_messages_list")]),
        ({"messages": {"role": "user"}}, [("$.messages", "data_type")]),
        (
            {"messages": [USER, ASSISTANT], "model": "gpt-4o"},
            [("$.model", "unrecognized_key")],
        ),
        ({"messages": [USER, "hi", ASSISTANT]}, [("$.messages[1]", "data_type")]),
        (
            {"messages": [{"content": "Hi"}, ASSISTANT]},
            [("$.messages[0].role", "message_missing_key")],
        ),
        (
            {"messages": [{"role": "user"}, ASSISTANT]},
            [("$.messages[0].content", "message_missing_key")],
        ),
        (
            {"messages": [{"role": "user", "content": "Hi", "mood": "ok"}, ASSISTANT]},
            [("$.messages[0].mood", "message_unrecognized_key")],
        ),
        (
            {"messages": [{"role": "bot", "content": "Hi"}, ASSISTANT]},
            [("$.messages[0].role", "unrecognized_role")],
        ),
        (
            {"messages": [{"role": "user", "content": ""}, ASSISTANT]},
            [("$.messages[0].content", "missing_content")],
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": None}]},
            [("$.messages[1].content", "missing_content")],
        ),
        (
            {"messages": [{"role": "user", "content": ["Hi"]}, ASSISTANT]},
            [("$.messages[0].content", "data_type")],
        ),
        ({"messages": [USER]}, [("$.messages", "example_missing_assistant_message")]),
        (
            {"messages": [USER, {"role": "assistant", "content": "x", "weight": 2}]},
            [("$.messages[1].weight", "invalid_weight")],
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": "x", "weight": True}]},
            [("$.messages[1].weight", "invalid_weight")],
        ),
        (
            {"messages": [{"role": "user", "content": "Hi", "weight": 0}, ASSISTANT]},
            [("$.messages[0].weight", "invalid_weight")],
        ),
        (
            {"messages": [USER, {"role": "assistant", "tool_calls": {"id": "x"}}]},
            [
                ("$.messages[1].tool_calls", "data_type"),
                ("$.messages[1].content", "message_missing_key"),
            ],
        ),
        (
            {"messages": [USER, ASSISTANT], "tools": "f", "parallel_tool_calls": "yes"},
            [("$.tools", "data_type"), ("$.parallel_tool_calls", "data_type")],
        ),
        # Every problem of a record is reported, not just the first.
        (
            {"messages": [{"role": "bot", "content": None, "x": 1}, {"role": "user"}], "y": 2},
            [
                ("$.y", "unrecognized_key"),
                ("$.messages[0].x", "message_unrecognized_key"),
                ("$.messages[0].role", "unrecognized_role"),
                ("$.messages[0].content", "missing_content"),
                ("$.messages[1].content", "message_missing_key"),
                ("$.messages", "example_missing_assistant_message"),
            ],
        ),
        (
            {"messages": [{"role": "User", "content": "Hi"}, {"role": "Bot", "content": "x"}]},
            [
                ("$.messages[1].role", "unrecognized_role"),
                ("$.messages", "example_missing_assistant_message"),
            ],
        ),
        (
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]},
            [("$.conversations[1].value", "message_missing_key")],
        ),
        (
            {"conversations": [{"from": "human", "value": "Hi"}]},
            [("$.conversations", "example_missing_assistant_message")],
        ),
        ({"instruction": "Say hi."}, [("$.output", "missing_key")]),
        (
            {"instruction": "", "output": 3},
            [("$.instruction", "missing_content"), ("$.output", "data_type")],
        ),
        (
            {"prompt": "x", "completion": "", "extra": 1},
            [("$.extra", "unrecognized_key"), ("$.completion", "missing_content")],
        ),
        ({"completion": "4"}, [("$.prompt", "missing_key")]),
        ({"text": 7}, [("$.text", "data_type")]),
        (
            {"input": {"messages": [USER]}, "preferred_output": []},
            [
                ("$.preferred_output", "example_missing_assistant_message"),
                ("$.non_preferred_output", "missing_key"),
            ],
        ),
        (
            {
                "input": {"messages": [], "seed": 1},
                "preferred_output": [USER],
                "non_preferred_output": [ASSISTANT],
            },
            [
                ("$.input.seed", "unrecognized_key"),
                ("$.input.messages", "missing_messages_list"),
                ("$.preferred_output[0].role", "unrecognized_role"),
            ],
        ),
    ],
)
def test_parse_record_problems(record: object, expected: list[tuple[str, str]]) -> None:
    example, problems = parse_record(record, 7)
    assert example is None
    assert where(problems) == [(7, path, code) for path, code in expected]
    assert all(p.message for p in problems)


def test_problem_messages_name_the_field() -> None:
    _, problems = parse_record({"messages": [{"role": "bot", "content": "Hi"}, ASSISTANT]}, 1)
    assert problems[0].message == (
        '$.messages[0].role is "bot"; it must be one of system, user, assistant, tool'
    )
    _, problems = parse_record({"messages": [{"role": "x" * 500, "content": "Hi"}]}, 1)
    assert len(problems[0].message) < 120  # a huge value is cut short, not echoed whole


def test_record_of_another_format_is_mixed() -> None:
    example, problems = parse_record(PROMPT_COMPLETION, 4, Format.CHAT)
    assert example is None
    assert where(problems) == [(4, "$", "mixed_formats")]
    assert "prompt_completion" in problems[0].message


def test_chat_shapes_follow_the_file_format() -> None:
    """In a Cohere file an OpenAI role is a bad role, not another format (and vice versa)."""
    _, problems = parse_record(CHAT, 2, Format.COHERE_CHAT)
    assert [p.code for p in problems] == ["unrecognized_role"] * 3 + [
        "example_missing_assistant_message"
    ]
    _, problems = parse_record(COHERE, 2, Format.CHAT)
    assert [p.code for p in problems] == ["unrecognized_role"] * 3 + [
        "example_missing_assistant_message"
    ]


def test_unknown_record_checked_against_file_format() -> None:
    _, problems = parse_record({"foo": 1}, 3, Format.PROMPT_COMPLETION)
    assert where(problems) == [
        (3, "$.foo", "unrecognized_key"),
        (3, "$.prompt", "missing_key"),
        (3, "$.completion", "missing_key"),
    ]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_read_examples_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps(CHAT) + "\r\n", encoding="utf-8")
    examples = list(read_examples(path))
    assert len(examples) == 2
    assert all(e.format == Format.CHAT and len(e.messages) == 3 for e in examples)


def test_read_examples_plain_text(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# Title\n\nBody.\n", encoding="utf-8")
    assert list(read_examples(tmp_path / "notes.md")) == [
        Example(Format.TEXT, text="# Title\n\nBody.\n")
    ]
    (tmp_path / "file-123").write_text("Body.", encoding="utf-8")
    assert list(read_examples(tmp_path / "file-123", filename="book.TXT")) == [
        Example(Format.TEXT, text="Body.")
    ]


def test_read_examples_raises_on_bad_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [CHAT, {"messages": [USER]}])
    with pytest.raises(ValueError, match=r"data\.jsonl:2: .*example_missing_assistant_message"):
        list(read_examples(path))
    path.write_text(json.dumps(CHAT) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: invalid JSON"):
        list(read_examples(path))


def test_read_examples_rejects_mixed_formats(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [CHAT, PROMPT_COMPLETION])
    with pytest.raises(ValueError, match="mixed_formats"):
        list(read_examples(path))
