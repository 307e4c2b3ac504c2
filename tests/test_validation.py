"""The streaming file validator, on real files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.validation import Report, validate_file
from trainer.formats import Format, read_examples

USER = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT = {"role": "assistant", "content": "Paris."}
CHAT = {"messages": [USER, ASSISTANT]}
CHAT_LINE = json.dumps(CHAT)


def write(path: Path, lines: list[str | bytes], *, end: str = "\n") -> Path:
    """Write lines as given; bytes lines go in raw, so a test can plant bad UTF-8."""
    path.write_bytes(
        b"".join(
            (line if isinstance(line, bytes) else line.encode()) + end.encode() for line in lines
        )
    )
    return path


def where(report: Report) -> list[tuple[int, str, str]]:
    return [(p.line, p.path, p.code) for p in report.problems]


def test_valid_chat_file(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [CHAT_LINE] * 3)
    report = validate_file(path)
    assert report.ok
    assert (report.format, report.examples, report.lines, report.problems) == (
        Format.CHAT,
        3,
        3,
        [],
    )
    trained = len(USER["content"]) + len(ASSISTANT["content"])
    assert report.token_estimate == math.ceil(3 * trained / 4)


def test_every_format_validates(tmp_path: Path) -> None:
    records = {
        Format.COHERE_CHAT: {
            "messages": [{"role": "User", "content": "Hi"}, {"role": "Chatbot", "content": "Yo"}]
        },
        Format.SHAREGPT: {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
        },
        Format.ALPACA: {"instruction": "Greet.", "output": "Hi"},
        Format.PROMPT_COMPLETION: {"prompt": "Hi", "completion": "Yo"},
        Format.PREFERENCE: {
            "input": {"messages": [{"role": "user", "content": "Hi"}]},
            "preferred_output": [{"role": "assistant", "content": "Yo"}],
            "non_preferred_output": [{"role": "assistant", "content": "Go"}],
        },
        Format.TEXT: {"text": "Hi there"},
    }
    for fmt, record in records.items():
        path = write(tmp_path / f"{fmt}.jsonl", [json.dumps(record)] * 2)
        report = validate_file(path)
        assert (report.ok, report.format, report.examples) == (True, fmt, 2), fmt


def test_many_kinds_of_error_each_on_its_line(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        b'{"text": "caf\xe9"}',  # 1: Latin-1, not UTF-8; invalid, so it fixes no format
        CHAT_LINE,  # 2: the first valid record fixes the format: chat
        "",  # 3: blank lines are skipped
        '{"messages": [',  # 4
        json.dumps([CHAT]),  # 5
        json.dumps({"prompt": "a", "completion": "b"}),  # 6
        json.dumps({"messages": [USER]}),  # 7
        json.dumps({"messages": [USER, {"role": "robot", "content": "x"}]}),  # 8
        json.dumps({"messages": [USER, {"role": "assistant", "content": "x", "weight": 5}]}),  # 9
        json.dumps({"messages": [{"role": "user"}, ASSISTANT], "extra": True}),  # 10
        json.dumps({"messages": [USER, {**ASSISTANT, "id": 1}]}),  # 11
        json.dumps({}),  # 12
        "   ",  # 13
        CHAT_LINE,  # 14
    ]
    report = validate_file(write(tmp_path / "train.jsonl", lines))
    assert where(report) == [
        (1, "$", "invalid_utf8"),
        (4, "$", "invalid_json"),
        (5, "$", "data_type"),
        (6, "$", "mixed_formats"),
        (7, "$.messages", "example_missing_assistant_message"),
        (8, "$.messages[1].role", "unrecognized_role"),
        (8, "$.messages", "example_missing_assistant_message"),
        (9, "$.messages[1].weight", "invalid_weight"),
        (10, "$.extra", "unrecognized_key"),
        (10, "$.messages[0].content", "message_missing_key"),
        (11, "$.messages[1].id", "message_unrecognized_key"),
        (12, "$.messages", "missing_messages_list"),
    ]
    assert (report.format, report.examples, report.lines) == (Format.CHAT, 2, 14)
    assert report.problem_count == len(report.problems) == 12
    assert not report.ok


def test_first_valid_record_fixes_the_format(tmp_path: Path) -> None:
    lines = [
        json.dumps({"messages": [USER]}),  # chat, but invalid: fixes nothing
        json.dumps({"prompt": "a", "completion": "b"}),
        CHAT_LINE,
    ]
    report = validate_file(write(tmp_path / "train.jsonl", lines))
    assert report.format == Format.PROMPT_COMPLETION
    assert where(report) == [
        (1, "$.messages", "example_missing_assistant_message"),
        (3, "$", "mixed_formats"),
    ]


def test_invalid_utf8_names_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    first = (CHAT_LINE + "\n").encode()
    bad = b'{"text": "caf\xc3"}\n'
    path.write_bytes(first * 2 + bad + first)
    report = validate_file(path)
    assert where(report) == [(3, "$", "invalid_utf8")]
    assert (report.examples, report.lines) == (3, 4)
    offset = len(first) * 2 + bad.index(b"\xc3")
    assert report.problems[0].message == (
        f"line 3 is not valid UTF-8: byte 0xc3 at byte offset {offset} of the file "
        "(13 into the line)"
    )


def test_invalid_json_keeps_jsons_message(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [CHAT_LINE, "{'messages': []}", CHAT_LINE + " x"])
    report = validate_file(path)
    assert where(report) == [(2, "$", "invalid_json"), (3, "$", "invalid_json")]
    assert report.problems[0].message == (
        "line 2 is not valid JSON: Expecting property name enclosed in double quotes at column 2"
    )
    assert "Extra data" in report.problems[1].message


def test_json_that_python_refuses_is_invalid_json(tmp_path: Path) -> None:
    lines = [CHAT_LINE, "[" * 100_000 + "]" * 100_000, '{"text": ' + "9" * 5000 + "}"]
    report = validate_file(write(tmp_path / "train.jsonl", lines))
    assert where(report) == [(2, "$", "invalid_json"), (3, "$", "invalid_json")]
    assert report.problems[0].message == "line 2 is not valid JSON: it is nested too deeply"


def test_mixed_formats(tmp_path: Path) -> None:
    alpaca = json.dumps({"instruction": "Greet.", "output": "Hi"})
    path = write(tmp_path / "train.jsonl", [CHAT_LINE, alpaca, CHAT_LINE])
    report = validate_file(path)
    assert where(report) == [(2, "$", "mixed_formats")]
    assert (report.format, report.examples) == (Format.CHAT, 2)


def test_cap_keeps_the_first_problems_and_counts_all(tmp_path: Path) -> None:
    lines: list[str | bytes] = [CHAT_LINE, *["not json"] * 250, b"\xff"]
    report = validate_file(write(tmp_path / "train.jsonl", lines), max_problems=10, min_examples=2)
    # The file-level problem comes first: it is the one that matters most.
    assert where(report) == [(0, "$", "invalid_n_examples")] + [
        (line, "$", "invalid_json") for line in range(2, 11)
    ]
    assert report.problem_count == 1 + 250 + 1


def test_too_few_examples(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [CHAT_LINE] * 3)
    report = validate_file(path, min_examples=10)
    assert where(report) == [(0, "$", "invalid_n_examples")]
    assert report.problems[0].message == (
        "Training file has 3 example(s), but must have at least 10 examples"
    )


def test_empty_files(tmp_path: Path) -> None:
    for name, content in [("a.jsonl", b""), ("b.jsonl", b"\n  \n\r\n"), ("c.txt", b"\n\n")]:
        (tmp_path / name).write_bytes(content)
        report = validate_file(tmp_path / name)
        assert where(report) == [(0, "$", "empty_file")], name
        assert (report.format, report.examples, report.problem_count) == (None, 0, 1)


def test_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{CHAT_LINE}\r\n{CHAT_LINE}".encode())
    report = validate_file(path)
    assert (report.ok, report.examples, report.lines) == (True, 2, 2)
    assert len(list(read_examples(path))) == 2


def test_plain_text_document(tmp_path: Path) -> None:
    text = "# Manual\n\nPress the red button.\n"
    path = tmp_path / "manual.md"
    path.write_text(text, encoding="utf-8")
    report = validate_file(path, min_examples=10)  # a document is one example by definition
    assert (report.ok, report.format, report.examples, report.lines) == (True, Format.TEXT, 1, 3)
    assert report.token_estimate == math.ceil(len(text) / 4)
    stored = tmp_path / "file-abc"
    stored.write_bytes(b"line one\nline \xe9two\n")
    report = validate_file(stored, filename="notes.txt")
    assert where(report) == [(0, "$", "invalid_n_examples"), (2, "$", "invalid_utf8")]
    assert (report.format, report.examples) == (None, 0)


def test_lines_longer_than_a_read_block(tmp_path: Path) -> None:
    long = json.dumps({"messages": [USER, {"role": "assistant", "content": "a" * 3_000_000}]})
    path = write(tmp_path / "train.jsonl", [CHAT_LINE, long, "{bad", long], end="\n")
    report = validate_file(path)
    assert where(report) == [(3, "$", "invalid_json")]
    assert (report.examples, report.lines) == (3, 4)


def test_a_line_past_the_cap_is_its_own_problem_and_is_never_held(tmp_path: Path) -> None:
    cap = 1 << 20
    in_block = json.dumps({"text": "b" * 2000})  # past a small cap inside one read block
    across = json.dumps({"text": "a" * (3 << 20)})  # spans several read blocks
    bad = b'{"text": "caf\xc3"}'
    lines: list[str | bytes] = [CHAT_LINE, across, CHAT_LINE, bad, across]
    report = validate_file(write(tmp_path / "train.jsonl", lines, end="\n"), max_line_bytes=cap)
    assert where(report) == [
        (2, "$", "line_too_long"),
        (4, "$", "invalid_utf8"),
        (5, "$", "line_too_long"),
    ]
    assert report.problems[0].message == (
        f"line 2 is {len(across)} bytes long; a line may be at most {cap} bytes"
    )
    # The offsets of later lines still count the dropped bytes.
    offset = 2 * (len(CHAT_LINE) + 1) + len(across) + 1 + bad.index(b"\xc3")
    assert f"byte offset {offset} of the file" in report.problems[1].message
    assert (report.examples, report.lines) == (2, 5)

    small = validate_file(
        write(tmp_path / "small.jsonl", [CHAT_LINE, in_block]), max_line_bytes=len(CHAT_LINE)
    )
    assert where(small) == [(2, "$", "line_too_long")]
    (tmp_path / "last.jsonl").write_text(f"{CHAT_LINE}\n{across}")  # no final newline
    last = validate_file(tmp_path / "last.jsonl", max_line_bytes=cap)
    assert where(last) == [(2, "$", "line_too_long")] and last.lines == 2
    document = validate_file(
        write(tmp_path / "notes.md", ["# Notes", "a" * 5000]),
        filename="notes.md",
        max_line_bytes=100,
    )
    # As with bad UTF-8, a document with a bad line is no example at all.
    assert where(document) == [(0, "$", "invalid_n_examples"), (2, "$", "line_too_long")]


def test_large_file_in_one_pass(tmp_path: Path) -> None:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"Q{i}"}, ASSISTANT]})
        for i in range(50_000)
    ]
    lines[31_337] = "{broken"
    path = write(tmp_path / "train.jsonl", lines)
    report = validate_file(path)
    assert (report.examples, report.lines, report.format) == (49_999, 50_000, Format.CHAT)
    assert where(report) == [(31_338, "$", "invalid_json")]
    # The trainer reads exactly the examples that validated.
    lines.pop(31_337)
    write(path, lines)
    assert sum(1 for _ in read_examples(path)) == validate_file(path).examples == 49_999


@pytest.mark.parametrize("source", ["the chunks", "the file written"])
def test_validation_while_streaming_finds_what_the_stored_file_has(
    tmp_path: Path, source: str
) -> None:
    """StreamValidation, fed an upload's chunks as they come (of any size, split anywhere,
    a BOM's bytes and a multi-byte character included), reports exactly what validate_file
    finds in the stored file: problems, messages, lines and byte offsets. It reads either
    the chunks themselves (a remote blob store) or the file they are written to (a local
    one), a chunk's bytes in it before the chunk is fed."""
    import asyncio
    import contextlib
    import random

    from server.validation import StreamValidation

    @contextlib.contextmanager
    def upload(name: str) -> Iterator[tuple[StreamValidation, Callable[[bytes], None]]]:
        if source == "the chunks":
            yield StreamValidation("train.jsonl", max_line_bytes=cap), lambda chunk: None
            return
        path = tmp_path / name
        with open(path, "wb", buffering=0) as out:
            yield StreamValidation("train.jsonl", written=str(path), max_line_bytes=cap), out.write

    cap = 1 << 20
    lines: list[str | bytes] = [
        b"\xef\xbb\xbf" + CHAT_LINE.encode(),
        json.dumps({"text": "a" * (3 << 20)}),  # past the cap, across read blocks
        b'{"text": "caf\xc3"}',
        json.dumps({"messages": [{"role": "robot", "content": "h\u00e9"}]}),
        "",
        "{broken",
        *[CHAT_LINE] * 2000,
    ]
    path = write(tmp_path / "train.jsonl", lines, end="\n")
    data = path.read_bytes()
    expected = validate_file(path, max_line_bytes=cap)
    assert expected.problem_count == 5

    async def streamed(sizes: list[int]) -> Report:
        with upload("streamed.part") as (validation, write):
            start = 0
            for size in [*sizes, len(data)]:
                chunk = data[start : start + size]
                write(chunk)
                await validation.feed(chunk)
                start += len(chunk)
            return await validation.report()

    rng = random.Random(7)
    for sizes in ([1, 1, 1, 5], [rng.randint(1, 300_000) for _ in range(40)], [len(data)]):
        assert asyncio.run(streamed(sizes)) == expected

    async def cancelled() -> None:
        with upload("cancelled.part") as (validation, write):
            write(data[:1000])
            await validation.feed(data[:1000])
            validation.cancel()
        try:
            await validation.report()
        except Exception as error:
            assert type(error).__name__ == "Cancelled"
        else:
            raise AssertionError("a cancelled validation reported")

    asyncio.run(cancelled())


def test_streaming_validation_runs_in_a_process_of_its_own_that_comes_back() -> None:
    """Off the control plane's GIL: forked by a helper process (server.forks), which a
    kill only replaces, and the report still comes back."""
    import asyncio

    from server import validation

    data = (CHAT_LINE + "\n").encode() * 20

    async def validate() -> Report:
        streamed = validation.StreamValidation("train.jsonl")
        await streamed.feed(data)
        return await streamed.report()

    assert asyncio.run(validate()).examples == 20
    helper = validation._PROCESSES._helper
    assert helper is not None and helper.poll() is None
    helper.kill()
    helper.wait()
    assert asyncio.run(validate()).examples == 20
    assert validation._PROCESSES._helper.pid != helper.pid


def _rest(kind: str) -> tuple[list[str], list[str]]:
    """The two halves of a 40 MB file: one read as it arrived, one still to read when
    the upload ended. Long lines, so that it takes few."""
    text = "The capital of France is Paris. " * 128
    chat = json.dumps({"messages": [USER, {"role": "assistant", "content": text}]})
    completion = json.dumps({"prompt": "Capital of France?", "completion": text})
    labelled = json.dumps({"text": text, "label": "geography"})
    half = 5000
    if kind == "plain chats":
        return [chat] * half, [chat] * half
    if kind == "a problem late":
        return [chat] * half, [*[chat] * (half // 2), "{broken", *[chat] * (half // 2)]
    if kind == "another format late":
        return [chat] * half, [completion] * half
    if kind == "completions only":
        return [completion] * half, [completion] * half
    if kind == "labelled":
        return [labelled] * half, [labelled] * half
    return ["{broken", "", *[""] * half], [chat] * 2 * half  # no format until the second


@pytest.mark.parametrize(
    "kind",
    [
        "plain chats",
        "a problem late",
        "another format late",
        "completions only",
        "labelled",
        "no format first",
    ],
)
def test_the_rest_of_an_ended_upload_is_validated_in_pieces_exactly(
    tmp_path: Path, kind: str
) -> None:
    """Validation still behind when an upload ends hands what is left out, a piece to a
    process per core, and reports exactly what one pass finds: a piece's own scan is added
    when that is exact, and otherwise its lines are scanned again in order."""
    import os

    from server.validation import MAX_LINE_BYTES, _Growing

    first, second = _rest(kind)
    path = write(tmp_path / "train.jsonl", [*first, *second])
    size = path.stat().st_size
    lengths, say = os.pipe()
    os.write(say, size.to_bytes(8, "little"))
    os.close(say)  # the upload has ended, and all of it is still to validate
    stream = _Growing(str(path), lengths, split=True, cap=MAX_LINE_BYTES)
    assert validate_file(stream) == validate_file(path)
    assert len(stream.pieces) == min(len(os.sched_getaffinity(0)), 2) - 1


def test_an_upload_ended_ahead_of_its_validation_reports_what_the_file_has(
    tmp_path: Path,
) -> None:
    """The same through StreamValidation: the validation process, reading the file
    written, hands out the rest once the upload has ended."""
    import asyncio

    from server.validation import StreamValidation

    first, second = _rest("plain chats")
    path = write(tmp_path / "train.jsonl", [*first, *second])

    async def streamed() -> Report:
        validation = StreamValidation("train.jsonl", written=str(path))
        await validation.feed(path.read_bytes())  # all of it written before it is read
        return await validation.report()

    assert asyncio.run(streamed()) == validate_file(path)
