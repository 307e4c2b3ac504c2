"""Training-data record formats: detection, checking and normalization.

The upload validator (``server/validation.py``) and the trainer both read data through this
module, so a file that validates is exactly a file the trainer can read. Chat-like formats are
normalized to ``Message`` tuples with roles ``system|user|assistant|tool``.

OpenAI's formats (chat, prompt/completion, preference) are checked strictly, as OpenAI does:
an unknown top-level key is a problem. The community formats (Cohere chat and classification,
Alpaca, ShareGPT, text) ignore unknown top-level keys, because public datasets in those shapes
routinely carry metadata such as ``id`` or ``source``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class Format(enum.StrEnum):
    """The shape of every record in one training file."""

    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"
    TEXT = "text"
    COHERE_CHAT = "cohere_chat"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    # Cohere's classification data, {"text", "label"}: one label (a string) per example, or
    # a list of labels, possibly empty. The values are Hugging Face's `problem_type`s.
    SINGLE_LABEL = "single_label_classification"
    MULTI_LABEL = "multi_label_classification"
    # Reinforcement fine-tuning prompts (OpenAI's RFT data): chat messages that end before
    # the answer (the last is not the assistant's), beside the reference fields a grader
    # reads as {{item.*}}. Told from a chat example missing its answer by those fields.
    REINFORCEMENT = "reinforcement"


@dataclass(frozen=True, slots=True)
class Message:
    """One normalized chat turn."""

    role: str  # system | user | assistant | tool
    content: str  # an assistant's tool calls are appended as their JSON text
    weight: int = 1  # 0 = no loss on this assistant message


@dataclass(frozen=True, slots=True)
class Example:
    """One normalized training example; which fields are set depends on ``format``."""

    format: Format
    messages: tuple[Message, ...] = ()  # chat-like formats; PREFERENCE: input + preferred output
    prompt: str = ""  # PROMPT_COMPLETION
    completion: str = ""
    text: str = ""  # TEXT
    rejected: tuple[Message, ...] = ()  # PREFERENCE: the non-preferred output
    chosen: tuple[Message, ...] = ()  # PREFERENCE: the preferred output (what messages ends with)
    labels: tuple[str, ...] = ()  # SINGLE_LABEL (exactly one), MULTI_LABEL; `text` is the input


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a training file, located precisely enough to fix it."""

    line: int  # 1-based line number; 0 for the file as a whole
    path: str  # JSON path inside the line, e.g. "$.messages[2].role"; "$" for the whole line
    code: str  # snake_case, OpenAI's codes where OpenAI has one
    message: str  # a sentence naming the field


# A frozen dataclass's __init__ sets every field through object.__setattr__, which made building
# the Messages and Example of a typical chat record cost more than parsing its JSON. The
# validator builds them for every record of files up to a gigabyte, so the chat hot path writes
# the slots directly: the same objects, just as immutable, built in half the time.
def _slot_setters(cls: type) -> tuple[Callable[[object, object], None], ...]:
    return tuple(getattr(cls, f.name).__set__ for f in fields(cls))


_new = object.__new__
_set_role, _set_content, _set_weight = _slot_setters(Message)
(
    _set_format,
    _set_messages,
    _set_prompt,
    _set_completion,
    _set_text,
    _set_rejected,
    _set_chosen,
    _set_labels,
) = _slot_setters(Example)


def _message(role: str, content: str) -> Message:
    """Message(role, content), fast."""
    message = _new(Message)
    _set_role(message, role)
    _set_content(message, content)
    _set_weight(message, 1)
    return message


def _chat_example(fmt: Format, messages: tuple[Message, ...]) -> Example:
    """Example(fmt, messages=messages), fast."""
    example = _new(Example)
    _set_format(example, fmt)
    _set_messages(example, messages)
    _set_prompt(example, "")
    _set_completion(example, "")
    _set_text(example, "")
    _set_rejected(example, ())
    _set_chosen(example, ())
    _set_labels(example, ())
    return example


PLAIN_TEXT_SUFFIXES = (".txt", ".md")


def is_plain_text(filename: str) -> bool:
    """Whether an upload is a plain-text document (one TEXT example) rather than JSONL."""
    return filename.lower().endswith(PLAIN_TEXT_SUFFIXES)


@dataclass(frozen=True, slots=True)
class _ChatSpec:
    """How one chat-like format spells its message list and messages."""

    list_key: str
    role_key: str
    content_key: str
    roles: dict[str, str]  # role as written -> normalized role
    keys: frozenset[str]  # keys a message may have
    tool_calls: bool  # an assistant may carry tool_calls/function_call instead of content


_CHAT = _ChatSpec(
    list_key="messages",
    role_key="role",
    content_key="content",
    roles={"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"},
    # tool_call_id is not in OpenAI's documented list, but every tool message in OpenAI's own
    # tool-calling examples carries one, so rejecting it would reject real OpenAI files.
    keys=frozenset(
        {"role", "content", "name", "tool_calls", "function_call", "weight", "tool_call_id"}
    ),
    tool_calls=True,
)
# Preference outputs are the assistant's reply only; a loss weight means nothing there.
_PREFERENCE_OUTPUT = replace(
    _CHAT, roles={"assistant": "assistant"}, keys=_CHAT.keys - {"weight", "tool_call_id"}
)
_COHERE = _ChatSpec(
    list_key="messages",
    role_key="role",
    content_key="content",
    roles={"System": "system", "User": "user", "Chatbot": "assistant"},
    keys=frozenset({"role", "content"}),
    tool_calls=False,
)
_SHAREGPT = _ChatSpec(
    list_key="conversations",
    role_key="from",
    content_key="value",
    roles={"system": "system", "human": "user", "gpt": "assistant"},
    keys=frozenset({"from", "value"}),
    tool_calls=False,
)

_CHAT_TOP_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_PREFERENCE_TOP_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
_PREFERENCE_INPUT_KEYS = _CHAT_TOP_KEYS
_PROMPT_COMPLETION_KEYS = frozenset({"prompt", "completion"})
_OPENAI_ROLES = frozenset(_CHAT.roles)
_COHERE_ROLES = frozenset(_COHERE.roles)
_CHAT_FAMILY = frozenset({Format.CHAT, Format.COHERE_CHAT})
_LABELLED = frozenset({Format.SINGLE_LABEL, Format.MULTI_LABEL})
_MISSING: Any = object()


def detect_format(record: object) -> Format | None:
    """The format a record is written in, judged by its keys; None when it matches none.

    Only the shape is judged, not validity: a chat record with a bad role is still CHAT.
    """
    if not isinstance(record, dict):
        return None
    if "messages" in record and _is_prompt(record):
        return Format.REINFORCEMENT
    if "messages" in record:
        return Format.COHERE_CHAT if _has_cohere_roles(record["messages"]) else Format.CHAT
    if (
        "preferred_output" in record
        or "non_preferred_output" in record
        or isinstance(record.get("input"), dict)
    ):
        return Format.PREFERENCE
    if "prompt" in record or "completion" in record:
        return Format.PROMPT_COMPLETION
    if "instruction" in record or "output" in record:
        return Format.ALPACA
    if "conversations" in record:
        return Format.SHAREGPT
    if "label" in record:
        return Format.MULTI_LABEL if isinstance(record["label"], list) else Format.SINGLE_LABEL
    if "text" in record:
        return Format.TEXT
    return None


def _has_cohere_roles(messages: object) -> bool:
    """Cohere's capitalized roles, with no OpenAI role beside them to say otherwise."""
    if not isinstance(messages, list):
        return False
    roles = {m.get("role") for m in messages if isinstance(m, dict)}
    roles = {r for r in roles if isinstance(r, str)}
    return bool(roles & _COHERE_ROLES) and not roles & _OPENAI_ROLES


def parse_record(
    record: object, line: int, fmt: Format | None = None
) -> tuple[Example | None, list[Problem]]:
    """Check one decoded JSONL record and normalize it.

    ``fmt`` is the file's format once known; a record of another format is then a
    ``mixed_formats`` problem. Without it the record's own format is used, and a record that
    matches no format is checked as OpenAI chat, so its problems read as OpenAI's would.
    Every problem is collected; the Example is returned only when there are none.
    """
    if not isinstance(record, dict):
        return None, [
            Problem(line, "$", "data_type", f"line must be a JSON object, not {_kind(record)}")
        ]
    if fmt is None:
        fmt = detect_format(record) or Format.CHAT
    # Chat and Cohere chat share a shape; a record of either in a file of either is checked by
    # the file's rules, so a typo in a role reads as a bad role, not as another format. So is
    # a classification record that lacks its label: it reads as a missing label.
    elif not ((fmt in _CHAT_FAMILY or fmt == Format.REINFORCEMENT) and "messages" in record) and (
        (detected := detect_format(record)) is not None
        and detected != fmt
        and not (fmt in _LABELLED and detected == Format.TEXT)
    ):
        if {fmt, detected} == _LABELLED:
            return None, [_mixed_labels(line, fmt)]
        return None, [
            Problem(
                line,
                "$",
                "mixed_formats",
                f"record is in {detected} format but the file is in {fmt} format; "
                "a file must use one format throughout",
            )
        ]
    problems: list[Problem] = []
    example = _PARSERS[fmt](record, line, problems)
    return (None if problems else example), problems


def read_examples(path: str | Path, *, filename: str = "") -> Iterator[Example]:
    """Stream the examples of a training file.

    ``filename`` is the name the file was uploaded as, when it is stored under another; a
    ``.txt``/``.md`` name makes the whole file one TEXT example, anything else is JSONL. Meant
    for files that already passed validation, so the first bad line raises ValueError rather
    than being collected.
    """
    path = Path(path)
    # utf-8-sig: editors on Windows often start files with a byte-order mark.
    if is_plain_text(filename or path.name):
        yield Example(Format.TEXT, text=path.read_text(encoding="utf-8-sig"))
        return
    fmt: Format | None = None
    # newline="\n" splits lines exactly where the validator does.
    with path.open(encoding="utf-8-sig", newline="\n") as f:
        for line, raw in enumerate(f, 1):
            if raw.isspace():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line}: invalid JSON: {e.msg}") from e
            example, problems = parse_record(record, line, fmt)
            if example is None:
                first = problems[0]
                raise ValueError(f"{path}:{line}: {first.path}: {first.message} ({first.code})")
            fmt = example.format
            yield example


# --- one parser per format; each appends to `problems` and returns its Example ---------------


def _parse_chat(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    if len(record) > 1:  # most records are {"messages": [...]} alone; skip the key checks
        _check_top_keys(record, _CHAT_TOP_KEYS, "$", line, problems)
        _check_tools(record, "$", line, problems)
    messages, has_assistant = _parse_message_list(record, "$", _CHAT, line, problems)
    if messages is not None and not has_assistant:
        problems.append(_no_assistant(line, "$.messages"))
    return _chat_example(Format.CHAT, tuple(messages or ()))


_PROMPT = replace(_CHAT, roles={**_CHAT.roles, "developer": "system"})


def _is_prompt(record: dict[str, Any]) -> bool:
    """A reinforcement prompt: reference fields beside the messages, and a last message
    with text that is not the assistant's."""
    messages = record["messages"]
    if record.keys() <= _CHAT_TOP_KEYS or not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    return (
        isinstance(last, dict)
        and last.get("role") in ("user", "developer", "system", "tool")
        and isinstance(last.get("content"), str)
    )


def _parse_reinforcement(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    # Every key besides the messages is a reference field the grader may read.
    messages, _ = _parse_message_list(record, "$", _PROMPT, line, problems)
    if messages and messages[-1].role == "assistant":
        problems.append(
            Problem(
                line,
                "$.messages",
                "prompt_ends_with_answer",
                "a reinforcement prompt's last message must not be the assistant's: the "
                "model samples the answer",
            )
        )
    return _chat_example(Format.REINFORCEMENT, tuple(messages or ()))


def _parse_cohere_chat(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    messages, has_assistant = _parse_message_list(record, "$", _COHERE, line, problems)
    if messages is not None and not has_assistant:
        problems.append(_no_assistant(line, "$.messages", "Chatbot message"))
    return _chat_example(Format.COHERE_CHAT, tuple(messages or ()))


def _parse_sharegpt(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    messages, has_assistant = _parse_message_list(record, "$", _SHAREGPT, line, problems)
    if messages is not None and not has_assistant:
        problems.append(_no_assistant(line, "$.conversations", '"gpt" turn'))
    return _chat_example(Format.SHAREGPT, tuple(messages or ()))


def _parse_preference(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    _check_top_keys(record, _PREFERENCE_TOP_KEYS, "$", line, problems)
    messages: list[Message] = []
    prompt = record.get("input", _MISSING)
    if prompt is _MISSING:
        problems.append(_missing_key(line, "$.input", "an object with a messages list"))
    elif not isinstance(prompt, dict):
        problems.append(_data_type(line, "$.input", "an object", prompt))
    else:
        _check_top_keys(prompt, _PREFERENCE_INPUT_KEYS, "$.input", line, problems)
        _check_tools(prompt, "$.input", line, problems)
        messages = _parse_message_list(prompt, "$.input", _CHAT, line, problems)[0] or []
    preferred = _parse_output(record, "preferred_output", line, problems)
    rejected = _parse_output(record, "non_preferred_output", line, problems)
    return Example(
        Format.PREFERENCE,
        messages=(*messages, *preferred),
        rejected=tuple(rejected),
        chosen=tuple(preferred),
    )


def _parse_output(
    record: dict[str, Any], key: str, line: int, problems: list[Problem]
) -> list[Message]:
    path = f"$.{key}"
    value = record.get(key, _MISSING)
    if value is _MISSING:
        problems.append(_missing_key(line, path, "a list of assistant messages"))
        return []
    if not isinstance(value, list):
        problems.append(_data_type(line, path, "a list of assistant messages", value))
        return []
    if not value:
        problems.append(_no_assistant(line, path))
        return []
    return _parse_messages(value, path, _PREFERENCE_OUTPUT, line, problems)[0]


def _parse_prompt_completion(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    _check_top_keys(record, _PROMPT_COMPLETION_KEYS, "$", line, problems)
    # An empty prompt is legitimate (OpenAI's legacy guide used them); an empty completion
    # would teach nothing.
    prompt = _string_field(record, "prompt", line, problems, required=True, nonempty=False)
    completion = _string_field(record, "completion", line, problems, required=True)
    return Example(Format.PROMPT_COMPLETION, prompt=prompt, completion=completion)


def _parse_alpaca(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    instruction = _string_field(record, "instruction", line, problems, required=True)
    extra = _string_field(record, "input", line, problems, required=False, nonempty=False)
    output = _string_field(record, "output", line, problems, required=True)
    system = _string_field(record, "system", line, problems, required=False, nonempty=False)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = (Message("system", system),) if system else ()
    return Example(
        Format.ALPACA,
        messages=(*messages, Message("user", user), Message("assistant", output)),
    )


def _parse_text(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    text = _string_field(record, "text", line, problems, required=True)
    return Example(Format.TEXT, text=text)


def _parse_labelled(record: dict[str, Any], line: int, problems: list[Problem]) -> Example:
    """Cohere's classification row: a non-empty text and its label, or its list of labels."""
    text = _string_field(record, "text", line, problems, required=True)
    if text and text.isspace():
        problems.append(Problem(line, "$.text", "missing_content", "$.text is only whitespace"))
    value = record.get("label", _MISSING)
    multi = isinstance(value, list)
    labels: list[str] = []
    if value is _MISSING:
        problems.append(_missing_key(line, "$.label", "a string, or a list of strings"))
    elif multi:
        for i, label in enumerate(value):
            path = f"$.label[{i}]"
            if not isinstance(label, str):
                problems.append(_data_type(line, path, "a string", label))
            elif not label.strip():
                problems.append(Problem(line, path, "missing_label", f"{path} is empty"))
            elif label in labels:
                problems.append(
                    Problem(line, path, "duplicate_label", f"{path} repeats the label {label!r}")
                )
            else:
                labels.append(label)
    elif not isinstance(value, str):
        problems.append(_data_type(line, "$.label", "a string, or a list of strings", value))
    elif not value.strip():
        problems.append(Problem(line, "$.label", "missing_label", "$.label is empty"))
    else:
        labels.append(value)
    fmt = Format.MULTI_LABEL if multi else Format.SINGLE_LABEL
    return Example(fmt, text=text, labels=tuple(labels))


def _mixed_labels(line: int, fmt: Format) -> Problem:
    """A multi-label row in a single-label file, or the other way round."""
    if fmt == Format.SINGLE_LABEL:
        found, kind, other = "a list of labels (multi-label)", "single-label", "a string"
    else:
        found, kind, other = "a single label (a string)", "multi-label", "a list"
    return Problem(
        line,
        "$.label",
        "mixed_label_types",
        f"$.label is {found}, but the file's earlier examples are {kind}, each label "
        f"{other}; a file is single-label or multi-label throughout",
    )


_PARSERS = {
    Format.CHAT: _parse_chat,
    Format.PROMPT_COMPLETION: _parse_prompt_completion,
    Format.PREFERENCE: _parse_preference,
    Format.TEXT: _parse_text,
    Format.COHERE_CHAT: _parse_cohere_chat,
    Format.ALPACA: _parse_alpaca,
    Format.SHAREGPT: _parse_sharegpt,
    Format.SINGLE_LABEL: _parse_labelled,
    Format.MULTI_LABEL: _parse_labelled,
    Format.REINFORCEMENT: _parse_reinforcement,
}


# --- shared checks ---------------------------------------------------------------------------


def _parse_message_list(
    record: dict[str, Any], base: str, spec: _ChatSpec, line: int, problems: list[Problem]
) -> tuple[list[Message] | None, bool]:
    """The record's message list, or None when there is no usable list at all."""
    path = f"{base}.{spec.list_key}"
    items = record.get(spec.list_key, _MISSING)
    if items is _MISSING:
        problems.append(
            Problem(line, path, "missing_messages_list", f"{path} is missing; it must be a list")
        )
        return None, False
    if not isinstance(items, list):
        problems.append(_data_type(line, path, "a list of messages", items))
        return None, False
    if not items:
        problems.append(
            Problem(line, path, "missing_messages_list", f"{path} is empty; it needs messages")
        )
        return None, False
    return _parse_messages(items, path, spec, line, problems)


def _parse_messages(
    items: list[Any], path: str, spec: _ChatSpec, line: int, problems: list[Problem]
) -> tuple[list[Message], bool]:
    """Check every message; returns the valid ones and whether any has the assistant role.

    The assistant check looks at roles even of otherwise broken messages, so a bad weight on
    the only assistant message is reported as that, not also as a missing assistant.
    """
    messages: list[Message] = []
    has_assistant = False
    role_key, content_key, roles = spec.role_key, spec.content_key, spec.roles
    for i, msg in enumerate(items):
        # Fast path for the overwhelmingly common message, exactly {role, content} with text:
        # validation of large files spends most of its time here.
        if type(msg) is dict and len(msg) == 2:
            raw_role, content = msg.get(role_key), msg.get(content_key)
            if type(raw_role) is str and type(content) is str and content:
                role = roles.get(raw_role)
                if role is not None:
                    has_assistant = has_assistant or role == "assistant"
                    messages.append(_message(role, content))
                    continue
        message, role = _parse_message(msg, f"{path}[{i}]", spec, line, problems)
        has_assistant = has_assistant or role == "assistant"
        if message is not None:
            messages.append(message)
    return messages, has_assistant


def _parse_message(
    msg: object, at: str, spec: _ChatSpec, line: int, problems: list[Problem]
) -> tuple[Message | None, str | None]:
    """Every check on one message; returns it (None if broken) and its role (None if unknown)."""
    if not isinstance(msg, dict):
        problems.append(_data_type(line, at, "a message object", msg))
        return None, None
    before = len(problems)
    if not msg.keys() <= spec.keys:
        for key in sorted(msg.keys() - spec.keys):
            problems.append(
                Problem(
                    line,
                    f"{at}.{key}",
                    "message_unrecognized_key",
                    f"{at} has the unrecognized key {key!r}; allowed keys are "
                    f"{', '.join(sorted(spec.keys))}",
                )
            )
    role = _role(msg, at, spec, line, problems)
    calls = _tool_calls(msg, at, line, problems) if spec.tool_calls else ""
    if role != "assistant":
        calls = ""  # only an assistant's calls are trained on; others need real content
    content = _content(msg.get(spec.content_key, _MISSING), calls, at, spec, line)
    if isinstance(content, Problem):
        problems.append(content)
    weight = _weight(msg, role, at, line, problems) if "weight" in msg else 1
    if len(problems) > before or role is None or not isinstance(content, str):
        return None, role
    return Message(role, content, weight), role


def _role(
    msg: dict[str, Any], at: str, spec: _ChatSpec, line: int, problems: list[Problem]
) -> str | None:
    raw = msg.get(spec.role_key, _MISSING)
    if raw is _MISSING:
        problems.append(
            Problem(
                line,
                f"{at}.{spec.role_key}",
                "message_missing_key",
                f"{at} is missing the key {spec.role_key!r}",
            )
        )
        return None
    role = spec.roles.get(raw) if isinstance(raw, str) else None
    if role is None:
        problems.append(
            Problem(
                line,
                f"{at}.{spec.role_key}",
                "unrecognized_role",
                f"{at}.{spec.role_key} is {_show(raw)}; it must be one of {', '.join(spec.roles)}",
            )
        )
    return role


def _tool_calls(msg: dict[str, Any], at: str, line: int, problems: list[Problem]) -> str:
    """An assistant's tool calls as JSON text, which is what the model learns to emit."""
    parts = []
    for key, kind, ok in (("tool_calls", "a list", list), ("function_call", "an object", dict)):
        value = msg.get(key)
        if value is None:
            continue
        if not isinstance(value, ok):
            problems.append(_data_type(line, f"{at}.{key}", kind, value))
            continue
        parts.append(json.dumps({key: value}, ensure_ascii=False))
    return "\n".join(parts)


def _content(value: Any, calls: str, at: str, spec: _ChatSpec, line: int) -> str | Problem:
    path = f"{at}.{spec.content_key}"
    if isinstance(value, str):
        if value:
            return f"{value}\n{calls}" if calls else value
        if calls:
            return calls
        return Problem(line, path, "missing_content", f"{path} is empty")
    if calls and (value is _MISSING or value is None):
        return calls
    if value is _MISSING:
        return Problem(
            line, path, "message_missing_key", f"{at} is missing the key {spec.content_key!r}"
        )
    if value is None:
        return Problem(
            line,
            path,
            "missing_content",
            f"{path} is null; only an assistant message with tool calls may omit content",
        )
    return Problem(line, path, "data_type", f"{path} must be a string, not {_kind(value)}")


def _weight(
    msg: dict[str, Any], role: str | None, at: str, line: int, problems: list[Problem]
) -> int:
    value = msg["weight"]
    path = f"{at}.weight"
    if role is not None and role != "assistant":
        problems.append(
            Problem(
                line,
                path,
                "invalid_weight",
                f"{path} is set, but only assistant messages may have a weight",
            )
        )
    # bool is an int in Python, but JSON true/false is not a valid weight.
    elif type(value) is not int or value not in (0, 1):
        problems.append(
            Problem(line, path, "invalid_weight", f"{path} is {_show(value)}; it must be 0 or 1")
        )
    else:
        return value
    return 1


def _check_top_keys(
    record: dict[str, Any], allowed: frozenset[str], base: str, line: int, problems: list[Problem]
) -> None:
    if record.keys() <= allowed:
        return
    for key in sorted(record.keys() - allowed):
        problems.append(
            Problem(
                line,
                f"{base}.{key}",
                "unrecognized_key",
                f"{base} has the unrecognized key {key!r}; allowed keys are "
                f"{', '.join(sorted(allowed))}",
            )
        )


def _check_tools(record: dict[str, Any], base: str, line: int, problems: list[Problem]) -> None:
    for key, kind, ok in (
        ("tools", "a list", list),
        ("functions", "a list", list),
        ("parallel_tool_calls", "a boolean", bool),
    ):
        if key in record and not isinstance(record[key], ok):
            problems.append(_data_type(line, f"{base}.{key}", kind, record[key]))


def _string_field(
    record: dict[str, Any],
    key: str,
    line: int,
    problems: list[Problem],
    *,
    required: bool,
    nonempty: bool = True,
) -> str:
    path = f"$.{key}"
    value = record.get(key, _MISSING)
    if value is _MISSING:
        if required:
            problems.append(_missing_key(line, path, "a string"))
        return ""
    if not isinstance(value, str):
        problems.append(_data_type(line, path, "a string", value))
        return ""
    if nonempty and not value:
        problems.append(Problem(line, path, "missing_content", f"{path} is empty"))
    return value


def _missing_key(line: int, path: str, expected: str) -> Problem:
    return Problem(line, path, "missing_key", f"{path} is missing; it must be {expected}")


def _data_type(line: int, path: str, expected: str, value: object) -> Problem:
    return Problem(line, path, "data_type", f"{path} must be {expected}, not {_kind(value)}")


def _no_assistant(line: int, path: str, what: str = "assistant message") -> Problem:
    return Problem(
        line, path, "example_missing_assistant_message", f"{path} has no {what} to learn from"
    )


def _show(value: object, limit: int = 40) -> str:
    """A value as JSON, cut short: problem messages must stay readable whatever the data."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: object) -> str:
    """A JSON value's type in JSON's own words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
