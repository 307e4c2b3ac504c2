"""Validation of uploaded training files: one streaming pass, every problem with its line.

Files can be a gigabyte, so the file is read in fixed-size blocks and never held whole; the
record rules themselves live in ``trainer.formats`` so the trainer reads exactly what passed.

Token estimate: ``ceil(chars / 4)`` over the text that would be trained (every message's
content, prompt and completion, text, and both preference outputs) of the valid examples.
Four characters per token is OpenAI's own rule of thumb for English; it needs no tokenizer,
so it is the same whatever base model the file is later trained on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import pickle
import select
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import msgspec
import numpy as np

from server.forks import Forks
from trainer.formats import Example, Format, Problem, is_plain_text, parse_record
from trainer.labels import LABELLED, LabelStat, LabelTally

_BLOCK_SIZE = 1 << 20
MAX_LINE_BYTES = 8 << 20
"""The longest line validated; a longer one is a problem of its line, and never held."""
_CHARS_PER_TOKEN = 4
_BOM = b"\xef\xbb\xbf"


@dataclass
class Report:
    """What validation found in one file."""

    format: Format | None  # fixed by the first valid record; None when there is none
    examples: int  # valid examples
    lines: int  # lines in the file, blank ones included
    token_estimate: int  # ceil(chars / 4) over the trained text of the valid examples
    problems: list[Problem] = field(default_factory=list)  # the first max_problems, by line
    problem_count: int = 0  # every problem, including those past the cap
    labels: list[LabelStat] = field(default_factory=list)  # classification data: by label

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


@dataclass(frozen=True)
class _Overlong:
    """A line past the length cap: only its length is kept, never its bytes."""

    length: int

    def __len__(self) -> int:  # offsets of later lines count its bytes
        return self.length


def _overlong(line: int, raw: _Overlong, cap: int) -> Problem:
    return Problem(
        line,
        "$",
        "line_too_long",
        f"line {line} is {raw.length} bytes long; a line may be at most {cap} bytes",
    )


class _Problems:
    """Counts every problem but keeps only the first ``cap``, so a bad 1 GB file stays cheap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept: list[Problem] = []
        self.count = 0

    @property
    def full(self) -> bool:
        """Past the cap a problem is only counted, so there is no need to describe it."""
        return len(self.kept) >= self.cap

    def add(self, problems: list[Problem]) -> None:
        self.count += len(problems)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept.extend(problems[:room])


def validate_file(
    path: str | Path | BinaryIO,
    *,
    filename: str = "",
    max_problems: int = 100,
    min_examples: int = 1,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Report:
    """Validate a training file in one pass.

    ``filename`` is the name the user uploaded (the stored blob has a generated name); a
    ``.txt``/``.md`` name makes the file one plain-text document instead of JSONL.
    File-level problems (line 0) come first in ``problems``; the cap applies to all of them.
    """
    found = _Problems(max_problems)
    if hasattr(path, "read"):  # an open blob of the store
        stream: BinaryIO = path  # type: ignore[assignment]
        document = is_plain_text(filename)
    else:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the with below
        document = is_plain_text(filename or Path(path).name)
    tally = LabelTally()
    with stream as f:
        blocks = _blocks(f, max_line_bytes)
        if document:
            fmt, examples, lines, chars, records = _scan_document(blocks, found)
        else:
            scan = _Scan()
            _scan_jsonl(blocks, found, tally, scan)
            # The last of an upload, scanned by other processes (`_Growing`), in order.
            for piece in f.pieces if isinstance(f, _Growing) else ():
                if not scan.absorb(piece.scanned()):
                    _scan_jsonl(_blocks(piece, max_line_bytes, piece.start), found, tally, scan)
            fmt, examples, lines, chars, records = astuple(scan)
    # A document is one example by definition (the trainer chunks it), so a minimum number of
    # examples only means something for JSONL.
    file_problems = _file_problems(records, examples, 1 if document else min_examples)
    if too_many := tally.too_many():
        file_problems.append(Problem(0, "$.label", "too_many_labels", too_many))
    problem_count = found.count + len(file_problems)
    return Report(
        format=fmt,
        examples=examples,
        lines=lines,
        token_estimate=-(-chars // _CHARS_PER_TOKEN),
        problems=(file_problems + found.kept)[:max_problems],
        problem_count=problem_count,
        labels=tally.sorted(),
    )


class Cancelled(Exception):
    """The upload being validated ended without its last chunk."""


_PROCESSES = Forks(f"{__name__}:_validate_piped")


class StreamValidation:
    """`validate_file` run on an upload while it arrives: `feed` each chunk (in order) from
    the event loop, then `report()`. The report is the stored file's, and it is ready as
    soon as the last chunk is in: validation overlaps the transfer instead of following it.

    The pass runs in a process of its own (`server.forks`). It is CPU work under a GIL: in
    the control plane's process it would take turns with the event loop receiving the
    upload, where in its own it runs beside it. Given `written`, the path of the file the
    chunks are being written to (the blob's, in a local store), the process reads them
    there, and the event loop only tells it, down a pipe, how far the file goes: no copy,
    and the upload never waits for validation, which runs at a lower priority and catches
    up from the page cache. Otherwise the chunks themselves go down the pipe, which holds
    a block: an upload then waits (without blocking the loop) while the process is a
    block behind, and holds no more than that in memory."""

    def __init__(
        self, filename: str, *, written: str | None = None, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self._filename = filename
        self._written = written
        self._max_line_bytes = max_line_bytes
        self._sink: int | None = None  # the pipe's end the chunks (or lengths) go into
        self._result: int | None = None  # and the one the process's report comes back on
        self._length = 0  # bytes fed
        self._cancelled = False

    def _start(self) -> int:
        source, self._sink = os.pipe()
        self._result, result = os.pipe()
        try:
            _PROCESSES.run([source, result], self._filename, self._max_line_bytes, self._written)
        finally:
            os.close(source)
            os.close(result)
        os.set_blocking(self._sink, False)
        if self._written is None:
            with contextlib.suppress(OSError):  # 64 KiB unless asked: a ping-pong of pages
                fcntl.fcntl(self._sink, fcntl.F_SETPIPE_SZ, _BLOCK_SIZE)
        return self._sink

    async def feed(self, chunk: bytes) -> None:
        if self._cancelled:
            return
        sink = self._start() if self._sink is None else self._sink
        self._length += len(chunk)
        if self._written is None:
            await _write(sink, chunk)
            return
        # The pipe is full only while the process is thousands of lengths behind, and the
        # next length (or the last, which `report` sends) says all this one would have.
        with contextlib.suppress(BlockingIOError):
            os.write(sink, _length_bytes(self._length))

    async def report(self) -> Report:
        """The report, once the last chunk is read and validated."""
        if self._cancelled:
            raise Cancelled
        sink = self._start() if self._sink is None else self._sink
        if self._written is not None:
            await _write(sink, _length_bytes(self._length))
        os.close(sink)  # the end of the file, for the process
        self._sink = None
        with open(self._result, "rb") as result:  # type: ignore[arg-type]
            self._result = None
            outcome = await asyncio.to_thread(result.read)
        if not outcome:
            raise RuntimeError("the validation process ended without a report")
        report = pickle.loads(outcome)
        if isinstance(report, BaseException):
            raise report
        return report

    def cancel(self) -> None:
        """The upload failed: its process reads the end of its pipe and is gone."""
        self._cancelled = True
        for fd in (self._sink, self._result):
            if fd is not None:
                os.close(fd)
        self._sink = self._result = None


_LENGTH = 8  # bytes of a length down the pipe: less than PIPE_BUF, so written whole


def _length_bytes(length: int) -> bytes:
    return length.to_bytes(_LENGTH, "little")


async def _write(fd: int, data: bytes) -> None:
    """All of `data` into the non-blocking pipe `fd`, waiting for room without blocking."""
    rest = memoryview(data)
    while rest:
        try:
            rest = rest[os.write(fd, rest) :]
        except BlockingIOError:
            await _writable(fd)


async def _writable(fd: int) -> None:
    """Until the pipe `fd` has room again."""
    loop = asyncio.get_running_loop()
    room = loop.create_future()
    loop.add_writer(fd, room.set_result, None)
    try:
        await room
    finally:
        loop.remove_writer(fd)


def _pread(path: str, size: int, offset: int) -> bytes:
    """`size` bytes of the file at `path` from `offset`; nothing once the file is gone. The
    file is opened for each read only: a failed upload's file is deleted at once, and its
    space must come back then, not when a validation process next gets the CPU to close it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


class _Growing:
    """A file another process is writing, read to the length it last said (each length
    down the pipe `lengths`) and ended where the pipe ends. `read` waits in the pipe while
    it is caught up, so it never spins.

    Validation may fall behind the upload, and once the upload has ended its caller waits
    on what is left. Then, when two pieces or more are left (`_PIECE_BYTES` each), all
    but the first go to processes of their own, one each (`pieces`), so the cores the
    upload has left idle share the rest; this stream ends where they begin."""

    def __init__(self, path: str, lengths: int, split: bool, cap: int) -> None:
        self._path = path
        self._lengths = lengths
        self._split = split
        self._cap = cap
        os.set_blocking(lengths, False)
        self._said = select.poll()  # poll, not select: a descriptor's number may be any
        self._said.register(lengths, select.POLLIN)
        self._position = 0
        self._known = 0
        self._ended = False
        self.pieces: list[_Piece] = []

    def read(self, size: int) -> bytes:
        self._hear(wait=False)
        while self._position >= self._known and not self._ended:
            self._hear(wait=True)
        size = min(size, self._known - self._position)
        if size <= 0:
            return b""
        data = _pread(self._path, size, self._position)
        if not data:
            self._ended = True  # the file is gone: the upload failed
        self._position += len(data)
        return data

    def _hear(self, wait: bool) -> None:
        """Take in the lengths said since last time, waiting for one if `wait`."""
        if wait:
            self._said.poll()
        try:
            said = os.read(self._lengths, 512 * _LENGTH)  # whole lengths: each written whole
        except BlockingIOError:
            return
        if said:
            self._known = int.from_bytes(said[-_LENGTH:], "little")
            return
        self._ended = True
        if self._split:
            self._split = False
            self._known = self._hand_out(self._known)

    def _hand_out(self, end: int) -> int:
        """Start a process for each piece of what is left after the first, each starting
        after a newline; returns where the first ends."""
        count = min(_cores(), (end - self._position) // _PIECE_BYTES)
        starts = []
        for i in range(1, count):
            nominal = self._position + (end - self._position) * i // count
            newline = _pread(self._path, _BLOCK_SIZE, nominal).find(b"\n")
            if newline >= 0 and nominal + newline + 1 < end:
                starts.append(nominal + newline + 1)
        bounds = [*sorted(set(starts)), end]
        self.pieces = [_Piece(self._path, *span, self._cap) for span in itertools.pairwise(bounds)]
        return bounds[0]

    def __enter__(self) -> _Growing:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self._lengths)


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_PIECE_BYTES = 16 << 20
"""The least a piece handed to a process of its own holds: a fork costs milliseconds."""


class _Piece:
    """Bytes `start` to `end` of the file at `path`, starting after a newline, scanned
    (`_scan_jsonl`) from no format by a process forked for it. `read` reads them again,
    for a scan here when the piece's own cannot be added."""

    def __init__(self, path: str, start: int, end: int, cap: int) -> None:
        self._path = path
        self.start = start
        self._end = end
        self._position = start
        outcome, sink = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:  # the child: scan, say, and go
            os.close(outcome)
            code = 0
            try:
                found = _Problems(0)
                scan = _Scan()
                _scan_jsonl(_blocks(self, cap, start), found, LabelTally(), scan)
                with contextlib.suppress(BrokenPipeError), open(sink, "wb") as out:
                    pickle.dump(None if found.count else scan, out)
            except BaseException:  # noqa: BLE001 - no report: the piece is scanned again
                code = 1
            finally:
                os._exit(code)
        os.close(sink)
        self._outcome = outcome

    def scanned(self) -> _Scan | None:
        """The piece's scan, or None when it found a problem (or failed)."""
        with open(self._outcome, "rb") as outcome:
            said = outcome.read()
        os.waitpid(self._pid, 0)
        return pickle.loads(said) if said else None

    def read(self, size: int) -> bytes:
        data = _pread(self._path, min(size, self._end - self._position), self._position)
        self._position += len(data)
        return data


def _validate_piped(
    source: int, result: int, filename: str, max_line_bytes: int, written: str | None
) -> None:
    """In a validation process: `validate_file` of what the pipe `source` gives up to its
    end, or, given the path `written`, of that file to the lengths the pipe gives. The
    report (or what was raised) goes back, pickled, down the pipe `result`."""
    if written:
        # Reading the file, it may fall behind without holding the upload up, so it gives
        # way to the control plane and the upload it validates. On 2 cores fine-tune
        # uploads ran at 390-460 MB/s with it, 360-400 without (python -m bench uploads).
        os.nice(10)
    stream = (
        _Growing(written, source, split=not is_plain_text(filename), cap=max_line_bytes)
        if written
        else open(source, "rb")  # noqa: SIM115 - closed by validate_file
    )
    try:
        outcome: Report | BaseException = validate_file(
            stream,  # type: ignore[arg-type]
            filename=filename,
            max_line_bytes=max_line_bytes,
        )
    except Exception as error:  # noqa: BLE001 - raised again where the upload waits
        outcome = error
    with contextlib.suppress(BrokenPipeError), open(result, "wb") as out:
        pickle.dump(outcome, out)


def describe(line: int, path: str, message: str) -> str:
    """A problem (a Problem, or its ValidationReport.Problem) as a sentence for people:
    `Line 3: $.messages[0].role is 'robot'; …`, `Line 2 is not valid JSON: …`, and for
    the file as a whole (line 0) just the message, `The file is empty; it has no
    examples.`: never `line 0 $:`. Messages name their path already when they have one."""
    text = message.strip().rstrip(".")
    if line > 0:
        said = text.lower()
        if said.startswith(f"line {line} ") or said == f"line {line}":
            text = text[len("line") :]  # "line 2 is not valid JSON" says the line itself
        elif said.startswith("line ") and not said[5:6].isdigit():
            text = f" {line}{text[len('line') :]}"  # "line must be a JSON object" -> "Line 2 must"
        elif path in ("", "$") or path in text:
            text = f" {line}: {text}"
        else:
            text = f" {line}, {path}: {text}"
        text = "Line" + text
    return text[:1].upper() + text[1:] + "."


class _Body:
    """The complete lines of a block read after its first, `raw[start:end]`, each ending
    in a newline; split into lines only when asked, since a block of plain chat records is
    validated whole (`plain_chats`)."""

    def __init__(self, raw: bytes, start: int, end: int, cap: int) -> None:
        self.raw = raw
        self.start = start
        self.end = end
        self.cap = cap

    def lines(self) -> list[bytes | _Overlong]:
        lines: list[bytes | _Overlong] = list(self.raw.split(b"\n")[1:-1])
        if self.cap < _BLOCK_SIZE:  # only then can a line inside one block be past the cap
            lines = [_Overlong(len(x)) if len(x) > self.cap else x for x in lines]
        return lines

    def plain_chats(self) -> tuple[int, int] | None:
        """(lines, trained chars) when every line is a plain chat record (`_plain_chats`),
        else None: decoded in one call, with no bytes object made per line.

        msgspec's `decode_lines` reads whitespace-separated values, so first each line is
        checked to be one JSON object alone: every newline has "}" before it and, but the
        last, "{" after it, and the body starts with "{". A value cannot go on past "}" into
        a "{", so each value ends at the end of its line; then as many values as lines
        means one each. A blank, padded or CRLF line fails the check: the line path
        takes the block."""
        if self.cap < len(self.raw):
            return None  # a line may be past the cap
        data = np.frombuffer(self.raw, np.uint8)
        ends = self.start + np.flatnonzero(data[self.start : self.end] == _NEWLINE)
        if (
            data[self.start] != _OPEN
            or (data[ends - 1] != _CLOSE).any()
            or (data[ends[:-1] + 1] != _OPEN).any()
        ):
            return None
        try:
            chats = _decode_plain_chat_lines(memoryview(self.raw)[self.start : self.end])
        except msgspec.MsgspecError:
            return None
        count, chars = _answered(chats)
        return (count, chars) if count == len(ends) == len(chats) else None


_NEWLINE, _OPEN, _CLOSE = b"\n{}"

Blocks = Iterator[tuple[int, list[bytes | _Overlong] | _Body, int]]
"""Each block's offset, its lines and the line-length cap."""


@dataclass
class _Scan:
    """What a scan of JSONL lines has counted."""

    fmt: Format | None = None  # fixed by the first valid record
    examples: int = 0  # valid ones
    lines: int = 0
    chars: int = 0  # trained, of the valid examples
    records: int = 0  # non-blank lines

    def absorb(self, later: _Scan | None) -> bool:
        """Add the scan of the lines that come next, made from no format by another
        process; False when it cannot be added, and those lines must be scanned here.

        It is exact when that scan found no problem, in this scan's format (or either has
        none yet): the format is all a scan carries from one line to the next, and a
        record valid as the first of its format reads the same after others. Labelled data
        is scanned here, where its labels are counted."""
        if later is None or later.fmt in LABELLED:
            return False
        if later.fmt is not None and self.fmt is not None and later.fmt is not self.fmt:
            return False
        self.fmt = self.fmt or later.fmt
        self.examples += later.examples
        self.lines += later.lines
        self.chars += later.chars
        self.records += later.records
        return True


def _scan_jsonl(blocks: Blocks, found: _Problems, tally: LabelTally, scan: _Scan) -> None:
    """Scans on from `scan`, counting into it; counts the labels of classification data
    in `tally`."""
    fmt, examples, line, chars, records = astuple(scan)
    for start, block, cap in blocks:
        if isinstance(block, _Body):
            if (fmt is None or fmt is Format.CHAT) and (whole := block.plain_chats()):
                count, trained = whole
                fmt = Format.CHAT
                examples += count
                records += count
                chars += trained
                line += count
                continue
            block = block.lines()
        first = line + 1
        i = 0
        while i < len(block):
            if fmt is None or fmt is Format.CHAT:
                end, trained = _plain_chats(block, i)
                if end > i:
                    fmt = Format.CHAT
                    examples += end - i
                    records += end - i
                    chars += trained
                    line += end - i
                    i = end
                    if i == len(block):
                        break
            raw = block[i]
            i += 1
            line += 1
            if isinstance(raw, _Overlong):
                records += 1
                found.add([_overlong(line, raw, cap)])
                continue
            try:
                text = raw.decode()
            except UnicodeDecodeError as e:
                records += 1
                if found.full:
                    found.count += 1
                else:
                    found.add([_invalid_utf8(line, start, block, first, e)])
                continue
            if not text or text.isspace():
                continue
            records += 1
            try:
                record = _loads(text)
            # Besides JSONDecodeError (a ValueError), json raises a plain ValueError for an
            # integer of over 4300 digits and RecursionError for absurdly deep nesting.
            except (ValueError, RecursionError) as e:
                found.add([_invalid_json(line, e)])
                continue
            example, problems = parse_record(record, line, fmt)
            if example is None:
                found.add(problems)
                continue
            fmt = example.format
            examples += 1
            chars += _trained_chars(example)
            if fmt in LABELLED:
                tally.add(example, line)
    scan.fmt, scan.examples, scan.lines = fmt, examples, line
    scan.chars, scan.records = chars, records


def _scan_document(blocks: Blocks, found: _Problems) -> tuple[Format | None, int, int, int, int]:
    """A plain-text upload: one TEXT example, so only its encoding (and a line too long
    to read) can be wrong."""
    chars = records = 0
    line = 0
    for start, block, cap in blocks:
        if isinstance(block, _Body):
            block = block.lines()
        first = line + 1
        for raw in block:
            line += 1
            if isinstance(raw, _Overlong):
                records += 1
                found.add([_overlong(line, raw, cap)])
                continue
            try:
                text = raw.decode()
            except UnicodeDecodeError as e:
                records += 1
                found.add([_invalid_utf8(line, start, block, first, e)])
                continue
            if text and not text.isspace():
                records += 1
            chars += len(text) + 1  # its newline is trained text too
    if found.count or not records:
        return None, 0, line, 0, records
    return Format.TEXT, 1, line, chars, records


# gc=False: they hold only strings, so the garbage collector need not track them.
class _PlainMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, msgspec.Meta(min_length=1)]


class _PlainChat(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    messages: list[_PlainMessage]


_decode_plain_chat = msgspec.json.Decoder(_PlainChat).decode
_decode_plain_chat_lines = msgspec.json.Decoder(_PlainChat).decode_lines


def _plain_chats(lines: list[bytes | _Overlong], start: int) -> tuple[int, int]:
    """How far from `start` the lines are plain, valid OpenAI chat records (only
    `messages`, each exactly {role, content} with text, one of them the assistant's), and
    their trained characters. The first other line, and every line after it in a file not
    in chat format, takes the full path: `json` and `parse_record`.

    Nearly every line of a real fine-tune file is such a record, and msgspec decodes one
    and checks it against this schema in C several times as fast as that full path, so an
    upload is validated about as fast as it arrives. It only ever accepts: every line it
    accepts, the full path accepts too, as the same example (a duplicated key takes its
    last value in both), and every problem is found and worded by the full path alone.
    """
    decode = _decode_plain_chat

    def decoded() -> Iterator[_PlainChat]:
        for raw in itertools.islice(lines, start, None):
            if type(raw) is not bytes:  # an _Overlong line
                return
            try:
                yield decode(raw)
            except msgspec.MsgspecError:
                return

    count, chars = _answered(decoded())
    return start + count, chars


def _answered(chats: Iterable[_PlainChat]) -> tuple[int, int]:
    """How many of `chats`, from the first, have an assistant's message, and their
    trained characters."""
    count = chars = 0
    for chat in chats:
        trained = 0
        answered = False
        for message in chat.messages:
            trained += len(message.content)
            if message.role == "assistant":
                answered = True
        if not answered:
            break
        count += 1
        chars += trained
    return count, chars


_raw_decode = json.JSONDecoder().raw_decode


def _loads(text: str) -> object:
    """json.loads, minus its two whitespace regex matches on the common, well-formed line."""
    try:
        value, end = _raw_decode(text)
    except json.JSONDecodeError:
        return json.loads(text)  # leading whitespace, or a real error with json's own message
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)  # raises "Extra data" with json's own message and position
    return value


def _blocks(f: BinaryIO | _Piece, cap: int, offset: int = 0) -> Blocks:
    """Each block read, as its first line (ending the line the blocks before left open)
    and then a `_Body` of its other complete lines, each with its offset in the file and
    `cap`. A line longer than `cap` bytes comes as an `_Overlong`: its bytes are dropped
    as they are read, so one huge line costs no more memory than a short one.

    Splitting 1 MiB blocks is far faster than reading line by line, and handing out whole
    blocks spares a generator step per line. `offset`: where in the file `f` starts.
    """
    partial: list[bytes] = []  # a line still waiting for its newline, possibly many blocks long
    held = 0  # bytes in `partial`
    dropped = 0  # bytes of the current line dropped: it is past the cap
    while block := f.read(_BLOCK_SIZE):
        if not offset and not partial and not dropped and block.startswith(_BOM):
            # Editors on Windows often start files with a byte-order mark; it is not content.
            block = block[len(_BOM) :]
            offset = len(_BOM)
        first = block.find(b"\n")
        if first < 0:
            if dropped or held + len(block) > cap:
                dropped, partial, held = dropped + held + len(block), [], 0
            else:
                partial.append(block)
                held += len(block)
            continue
        head: bytes | _Overlong
        if dropped or held + first > cap:
            head = _Overlong(dropped + held + first)
        else:
            head = b"".join([*partial, block[:first]])
        yield offset, [head], cap
        offset += len(head) + 1
        last = block.rfind(b"\n")
        if last > first:
            yield offset, _Body(block, first + 1, last + 1, cap), cap
            offset += last - first
        tail = block[last + 1 :]
        if len(tail) > cap:
            partial, held, dropped = [], 0, len(tail)
        else:
            partial, held, dropped = [tail], len(tail), 0
    if dropped:
        yield offset, [_Overlong(dropped)], cap
    elif last := b"".join(partial):
        yield offset, [last], cap


def _invalid_utf8(
    line: int, start: int, block: list[bytes], first: int, error: UnicodeDecodeError
) -> Problem:
    """Names the bad byte and its offset in the file, for a hex editor."""
    index = line - first  # offsets are worked out only here, so good lines never pay for them
    offset = start + sum(map(len, block[:index])) + index + error.start
    return Problem(
        line,
        "$",
        "invalid_utf8",
        f"line {line} is not valid UTF-8: byte 0x{error.object[error.start]:02x} at byte "
        f"offset {offset} of the file ({error.start} into the line)",
    )


def _invalid_json(line: int, error: ValueError | RecursionError) -> Problem:
    if isinstance(error, json.JSONDecodeError):
        reason = f"{error.msg} at column {error.colno}"
    elif isinstance(error, RecursionError):
        reason = "it is nested too deeply"
    else:
        reason = str(error)
    return Problem(line, "$", "invalid_json", f"line {line} is not valid JSON: {reason}")


def _trained_chars(example: Example) -> int:
    chars = len(example.prompt) + len(example.completion) + len(example.text)
    for message in example.messages:
        chars += len(message.content)
    for message in example.rejected:
        chars += len(message.content)
    return chars


def _file_problems(records: int, examples: int, min_examples: int) -> list[Problem]:
    if not records:
        return [Problem(0, "$", "empty_file", "The file is empty; it has no examples")]
    if examples < min_examples:
        return [
            Problem(
                0,
                "$",
                "invalid_n_examples",
                f"Training file has {examples} example(s), but must have at least "
                f"{min_examples} examples",
            )
        ]
    return []
