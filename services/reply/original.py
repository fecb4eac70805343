"""The original for staff: raw bytes with our X-Channelshift-* headers; forged ones from outside are removed."""

from __future__ import annotations

import re

from services.domain import SAFETY_WORDS_TAG, Priority, Verdict

_HEADER_END = re.compile(rb"(\r?\n)\r?\n")
# a field whose line starts with x-channelshift- (lines end at CRLF, LF or a bare CR, as bytes.splitlines
# splits them) and the folded continuation lines after it; found by one scan, not a list of every line
# (that cost 735 MiB for a header block of 5 million fields)
_OUR_FIELD = re.compile(
    rb"(?:\A|(?<=[\r\n]))x-channelshift-[^\r\n]*(?:\r\n|\r|\n)?(?:[ \t][^\r\n]*(?:\r\n|\r|\n)?)*", re.IGNORECASE
)


def strip_our_headers(raw: bytes) -> bytes:
    """Drop X-Channelshift-* header fields (and their folded continuation lines) from the header block."""
    match = _HEADER_END.search(raw)
    # the last field keeps its line end, so dropping it leaves exactly one empty line before the body
    head, rest = (raw[: match.end(1)], raw[match.end(1) :]) if match else (raw, b"")
    stripped = _OUR_FIELD.sub(b"", head)
    return raw if len(stripped) == len(head) else stripped + rest


def with_routing_headers(raw: bytes, headers: dict[str, str]) -> bytes:
    lines = b"".join(f"{name}: {value}\r\n".encode("ascii", "replace") for name, value in headers.items())
    return lines + strip_our_headers(raw)


def routing_headers(message_id: str, verdict: Verdict) -> dict[str, str]:
    """What staff read at a glance on a delivered original: the stored verdict as X-Channelshift-* headers."""
    reply = "sent" if verdict.reply else f"suppressed ({verdict.suppressed or 'no template'})"
    headers = {
        "X-Channelshift-Category": verdict.category,
        "X-Channelshift-Channel": verdict.channel,
        "X-Channelshift-Rule": verdict.rule_id,
        "X-Channelshift-Priority": verdict.priority,
        "X-Channelshift-Language": verdict.language,
        "X-Channelshift-Reply": reply,
        "X-Channelshift-Ruleset": verdict.ruleset_version,
        "X-Channelshift-Confidence": verdict.confidence,
        "X-Channelshift-Id": message_id,
    }
    flags = [tag.replace(":", ": ", 1) for tag in verdict.tags if tag.startswith(SAFETY_WORDS_TAG + ":")]
    if verdict.defects:
        flags.append("parse-problems: " + ", ".join(verdict.defects)[:300])
    if flags:
        headers["X-Channelshift-Flags"] = "; ".join(flags)
    if verdict.priority in (Priority.HIGH, Priority.URGENT):
        headers["X-Priority"] = "1 (Highest)" if verdict.priority == Priority.URGENT else "2 (High)"
        headers["Importance"] = "high"
    return headers
