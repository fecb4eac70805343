"""A linear pre-scan of raw mail that caps what the stdlib parser is given: header block, lines, boundaries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import compat32

# Header fields of the top-level header block and its bytes; Postfix's header_size_limit is 100 KiB, real mail
# has a few dozen fields. The decoded view stops at MAX_HEADER_BYTES (services.mail); this caps what is parsed.
MAX_HEADER_LINES = 10_000
MAX_HEADER_BLOCK_BYTES = 1024 * 1024
# The stdlib keeps every line of a part as its own str (about 50 bytes each besides the text), so millions of
# short lines cost gigabytes. Ordinary mail has lines of 76 characters (base64, quoted-printable) or more.
MIN_LINE_BUDGET = 100_000
BYTES_PER_LINE_BUDGET = 32
# More MIME boundary lines than this and only the start of the message is parsed (CPU bomb guard).
MAX_BOUNDARY_LINES = 5_000
PARSE_PREFIX_BYTES = 1024 * 1024
FEED_CHUNK_BYTES = 64 * 1024

# what the stdlib's feedparser counts as a line end, and as the start of a header line (email.feedparser)
_EOL = re.compile(rb"\r\n|\r|\n")
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
# a line end followed by an empty line; `\r(?!\n)` so that one CRLF is not read as two line ends
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(\r\n|\n|\r)")


@dataclass(frozen=True)
class Bounded:
    """The bytes the parser is given and what was left out of them (`limit:...` defects)."""

    raw: bytes
    defects: tuple[str, ...] = ()


def line_count(raw: bytes) -> int:
    """Lines as the stdlib splits them: at CRLF, bare LF and bare CR."""
    return raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")


def boundary_lines(raw: bytes) -> int:
    """Lines starting with `--`, after any line end (a bare CR ends a line for the stdlib too)."""
    return raw.count(b"\n--") + raw.count(b"\r--")


def bound(raw: bytes) -> Bounded:
    """Cap the header block, then parse only a prefix if there are too many lines or boundaries.

    Mail within the limits is returned unchanged (the same object), so it parses exactly as without this.
    """
    defects: list[str] = []
    raw = _cap_header_block(raw, defects)
    lines = line_count(raw)
    line_budget = max(MIN_LINE_BUDGET, len(raw) // BYTES_PER_LINE_BUDGET)
    boundaries = boundary_lines(raw)
    if boundaries > MAX_BOUNDARY_LINES:
        defects.append(f"limit:parts>{MAX_BOUNDARY_LINES}")
    if lines > line_budget:
        defects.append(f"limit:lines>{line_budget}")
    if boundaries > MAX_BOUNDARY_LINES or lines > line_budget:
        raw = _prefix(raw)
    return Bounded(raw, tuple(defects))


def _prefix(raw: bytes) -> bytes:
    """The first PARSE_PREFIX_BYTES, shortened further so that they hold at most MIN_LINE_BUDGET lines."""
    prefix = raw[:PARSE_PREFIX_BYTES]
    lines = line_count(prefix)
    if lines > MIN_LINE_BUDGET:
        prefix = prefix[: len(prefix) * MIN_LINE_BUDGET // lines]
    return prefix


def _cap_header_block(raw: bytes, defects: list[str]) -> bytes:
    """Keep at most MAX_HEADER_LINES lines and MAX_HEADER_BLOCK_BYTES of the top-level header block.

    The block ends where the stdlib ends it: at an empty line or at the first line that is no header line.
    Past a cap, whole lines are kept up to it and the rest of the block is dropped up to its empty line, so
    the body still follows the kept headers.
    """
    window = min(len(raw), MAX_HEADER_BLOCK_BYTES)
    position = 0
    for number in range(MAX_HEADER_LINES + 1):
        end = _EOL.search(raw, position, window)
        if end is None:
            if window == len(raw):
                return raw  # headers only, within the cap
            defects.append(f"limit:header-block>{MAX_HEADER_BLOCK_BYTES}")
            break
        line_start = position
        if end.start() == line_start or not _HEADER_LINE.match(raw, line_start, end.start()):
            return raw  # the block ended within the caps
        if number == MAX_HEADER_LINES:
            defects.append(f"limit:header-lines>{MAX_HEADER_LINES}")
            break
        position = end.end()
    blank = _BLANK_LINE.search(raw, position)
    if blank is None:
        return raw[:position]
    return raw[:position] + raw[blank.start(1) :]


def _chunks(raw: bytes) -> Iterator[bytes]:
    view = memoryview(raw)
    for start in range(0, len(raw), FEED_CHUNK_BYTES):
        yield bytes(view[start : start + FEED_CHUNK_BYTES])


def parse_bytes(raw: bytes) -> Message:
    """The stdlib's parse (compat32), fed in pieces as `email.parser.Parser` does itself.

    `message_from_bytes` first decodes the whole mail into one str and a StringIO (up to 4 bytes a
    character, 100 MiB and more for a 25 MB mail); the feed parser's result does not depend on the pieces.
    """
    parser = BytesFeedParser(policy=compat32)
    for chunk in _chunks(raw):
        parser.feed(chunk)
    return parser.close()
