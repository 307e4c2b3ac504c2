"""An incremental multipart/form-data parser: feed it the body as it arrives and
it hands back part starts, data and ends, holding no more than one chunk.

Line ends may be CRLF (RFC 7578) or bare LF: clients that build a form with a
shell heredoc (Helix's documented example) send LF, and Go's mime/multipart,
which those servers use, accepts both. python-multipart does not, hence this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

from python_multipart.multipart import parse_options_header

MAX_HEADER_BYTES = 16 * 1024
CR, LF = 0x0D, 0x0A
# RFC 2046 allows whitespace between a boundary and its line end; senders write a
# few bytes of it at most. More is refused, so no boundary line is held or rescanned
# for long.
MAX_PADDING_BYTES = 1024
_PADDING = re.compile(rb"[ \t]{0,%d}" % (MAX_PADDING_BYTES + 1))


class MultipartError(ValueError):
    """The body is not a well-formed multipart body."""


class _NotABoundary(Exception):
    """The boundary text is followed by more text: it is data, not a boundary line."""


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = auto()
    HEADERS = auto()
    BODY = auto()
    DONE = auto()


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` Content-Type, or None for anything else."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return None
    return options.get(b"boundary") or None


class MultipartParser:
    def __init__(self, boundary: bytes) -> None:
        self._dash_boundary = b"--" + boundary
        # A part's data ends at LF + dash-boundary (the CR before it, if any, too).
        self._delimiter = b"\n" + self._dash_boundary
        # A virtual line end before the body, so a first boundary at its very
        # start is found like every other one.
        self._buffer = bytearray(b"\n")
        self._state = _State.PREAMBLE
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse the next bytes of the body; returns the events they completed."""
        if self._state is _State.DONE:
            return []  # the epilogue is ignored
        self._buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended: it must have ended with the closing boundary."""
        if self._state is not _State.DONE:
            raise MultipartError("the body ended before the closing boundary")

    def _step(self, events: list[Event]) -> bool:
        """Advance once; False when more bytes are needed."""
        if self._state is _State.PREAMBLE:
            return self._preamble()
        if self._state is _State.HEADERS:
            return self._header_line(events)
        if self._state is _State.BODY:
            return self._body(events)
        return False

    def _after_boundary(self, end: int) -> tuple[int, bool] | None:
        """What follows a dash-boundary ending at `end`: (where the next part's
        headers start, whether it was the closing one); None when more bytes are
        needed. Raises _NotABoundary when it is not a boundary line after all."""
        rest = self._buffer[end : end + 2]
        if len(rest) < 2:
            return None
        if rest == b"--":
            return end + 2, True
        # Transport padding, matched in C: it is scanned again as each chunk comes.
        i = _PADDING.match(self._buffer, end).end()
        if i - end > MAX_PADDING_BYTES:
            raise MultipartError(f"more than {MAX_PADDING_BYTES} bytes of padding after a boundary")
        # Indexes, not slices: a slice to the end would copy the rest of the buffer
        # for every boundary-like text in it.
        last = len(self._buffer) - 1
        if i > last or (i == last and self._buffer[i] == CR):
            return None
        if self._buffer[i] == LF:
            return i + 1, False
        if self._buffer[i] == CR and self._buffer[i + 1] == LF:
            return i + 2, False
        raise _NotABoundary

    def _preamble(self) -> bool:
        start = 0
        while True:
            found = self._buffer.find(self._delimiter, start)
            if found < 0:
                # Keep a tail that may be the start of the first boundary.
                del self._buffer[: max(0, len(self._buffer) - len(self._delimiter) + 1)]
                return False
            try:
                after = self._after_boundary(found + len(self._delimiter))
            except _NotABoundary:
                start = found + 1
                continue
            if after is None:
                del self._buffer[:found]
                return False
            position, final = after
            del self._buffer[:position]
            self._state = _State.DONE if final else _State.HEADERS
            return not final

    def _header_line(self, events: list[Event]) -> bool:
        end = self._buffer.find(b"\n")
        if end < 0:
            if self._header_bytes + len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError(f"part headers are longer than {MAX_HEADER_BYTES} bytes")
            return False
        raw = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[: end + 1]
        self._header_bytes += end + 1
        if self._header_bytes > MAX_HEADER_BYTES:
            raise MultipartError(f"part headers are longer than {MAX_HEADER_BYTES} bytes")
        if raw:
            line = _decode(raw)
            if line[0] in " \t" and self._headers:  # obsolete line folding
                name, value = self._headers[-1]
                self._headers[-1] = (name, value + " " + line.strip())
            else:
                name, sep, value = line.partition(":")
                if not sep:
                    raise MultipartError(f"malformed part header {line[:80]!r}")
                self._headers.append((name.strip().lower(), value.strip()))
            return True
        events.append(self._part_start())
        self._headers, self._header_bytes = [], 0
        self._state = _State.BODY
        return True

    def _part_start(self) -> PartStart:
        headers = dict(self._headers)
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise MultipartError("a part has no Content-Disposition header")
        # As UTF-8 bytes: given a str, the parser encodes it as Latin-1 and fails on
        # the UTF-8 filenames browsers send.
        kind, options = parse_options_header(disposition.encode())
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise MultipartError("a part's Content-Disposition must be form-data with a name")
        filename = options.get(b"filename")
        return PartStart(
            name=_decode(name),
            filename=None if filename is None else _decode(filename),
            content_type=headers.get("content-type"),
        )

    def _body(self, events: list[Event]) -> bool:
        start = 0
        while True:
            found = self._buffer.find(self._delimiter, start)
            if found < 0:
                # All but a tail that may hold the start of the delimiter (and its CR).
                keep = len(self._delimiter)
                self._emit(events, len(self._buffer) - keep)
                return False
            data_end = found - 1 if found > 0 and self._buffer[found - 1] == CR else found
            try:
                after = self._after_boundary(found + len(self._delimiter))
            except _NotABoundary:
                start = found + 1  # data that happens to contain the boundary text
                continue
            if after is None:
                self._emit(events, data_end)
                return False
            position, final = after
            self._emit(events, data_end)
            events.append(PartEnd())
            del self._buffer[: position - data_end]
            self._state = _State.DONE if final else _State.HEADERS
            return not final

    def _emit(self, events: list[Event], end: int) -> None:
        if end > 0:
            events.append(PartData(bytes(self._buffer[:end])))
            del self._buffer[:end]


def _decode(raw: bytes) -> str:
    # Browsers send raw UTF-8 in part headers; anything else is read as Latin-1.
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")
