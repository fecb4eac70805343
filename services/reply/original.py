"""The original for staff: raw bytes with our X-Channelshift-* headers; forged ones from outside are removed."""

from __future__ import annotations

import re

_HEADER_END = re.compile(rb"(\r?\n)\r?\n")
_OURS = re.compile(rb"^x-channelshift-", re.IGNORECASE)
_MENTIONS_OURS = re.compile(rb"x-channelshift-", re.IGNORECASE)


def strip_our_headers(raw: bytes) -> bytes:
    """Drop X-Channelshift-* header fields (and their folded continuation lines) from the header block."""
    match = _HEADER_END.search(raw)
    # the last field keeps its line end, so dropping it leaves exactly one empty line before the body
    head, rest = (raw[: match.end(1)], raw[match.end(1) :]) if match else (raw, b"")
    if not _MENTIONS_OURS.search(head):
        # nothing to drop: a list of every header line cost 735 MiB for a header block of 5 million fields
        return raw
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = bool(_OURS.match(line))
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest


def with_routing_headers(raw: bytes, headers: dict[str, str]) -> bytes:
    lines = b"".join(f"{name}: {value}\r\n".encode("ascii", "replace") for name, value in headers.items())
    return lines + strip_our_headers(raw)
