"""Hostile mails of a given size (MIME parser bombs, malformed HTML) and a measurement of them in a fresh process.

`python -m tests.mime_bombs SHAPE:BYTES ... [--cache MODEL_CACHE_DIR]` builds each mail, parses and classifies
it and adds the routing headers for staff, as the worker does, and prints one JSON line per mail: seconds of
CPU and wall time, and the peak RSS all that added (the peak is reset through /proc/self/clear_refs first).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

SERVED = b"info@jobcenter-musterstadt.example"
_HEAD = b"From: bomb@example.org\r\nTo: " + SERVED + b"\r\nSubject: Frage\r\nMIME-Version: 1.0\r\n"


# Every shape keeps its SMTP lines (up to CRLF) under the gateway's 100,000-byte limit, so it can be sent.
SMTP_LINE = 990


def _crlf_every(data: bytes, width: int = SMTP_LINE) -> bytes:
    return b"\r\n".join(data[start : start + width] for start in range(0, len(data), width))


def bare_cr_boundaries(size: int) -> bytes:
    """Parts separated by bare CR (the stdlib splits lines at every CR); an LF after every 1,000th part only."""
    head = _HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    part = b"--b\rContent-Type: text/plain\r\rpart\r"
    block = part * 999 + part + b"\n"
    count = (size - len(head)) // len(block)
    return head + block * count + part * ((size - len(head) - count * len(block) - 8) // len(part)) + b"--b--\r\n"


def many_headers(size: int) -> bytes:
    """Millions of tiny header fields (about 4 million in 25 MB)."""
    field = b"a:b\r\n"
    return _HEAD + field * ((size - len(_HEAD) - 20) // len(field)) + b"\r\nHallo\r\n"


def long_to_lines(size: int) -> bytes:
    """`To:` fields of 64 KB of addresses each, up to the size."""
    addresses = b",".join(b"u%05d@example.org" % i for i in range(64 * 1024 // 18))
    field = b"To: " + addresses + b"\r\n"
    return _HEAD + field * ((size - len(_HEAD) - 20) // len(field)) + b"\r\nHallo\r\n"


def long_lines(size: int) -> bytes:
    """A plain-text body of lines just under the gateway's line-length limit."""
    head = _HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    line = b"Wort " * 19_990 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


def _html(shape: bytes, size: int) -> bytes:
    head = _HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    return head + _crlf_every(shape * ((size - len(head)) * SMTP_LINE // (SMTP_LINE + 2) // len(shape))) + b"\r\n"


def html_open_a(size: int) -> bytes:
    return _html(b"<a", size)


def html_open_attribute(size: int) -> bytes:
    return _html(b"<p x='", size)


def html_deep(size: int) -> bytes:
    return _html(b"<div><b>", size)


def attachment(size: int) -> bytes:
    """An ordinary mail with one base64 attachment filling the size: the bound ordinary mail must keep."""
    head = (
        _HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"anbei meine Unterlagen\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    line = b"QUJDRA" * 12 + b"QUJD\r\n"
    return head + line * ((size - len(head) - 10) // len(line)) + b"--b--\r\n"


SHAPES: dict[str, Callable[[int], bytes]] = {
    "bare-cr-boundaries": bare_cr_boundaries,
    "many-headers": many_headers,
    "long-to-lines": long_to_lines,
    "long-lines": long_lines,
    "html-open-a": html_open_a,
    "html-open-attribute": html_open_attribute,
    "html-deep": html_deep,
    "attachment": attachment,
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _give_back_freed_memory() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        ctypes.CDLL(name).malloc_trim(0)


def measure(cases: list[tuple[str, int]], cache_dir: Path | None = None) -> list[dict[str, object]]:
    """Parse and classify each bomb as the worker does, one after the other in this process.

    Before each, freed memory is given back to the system and the peak (VmHWM) is reset, so a bomb's peak is
    measured from the RSS after its mail was built; loading the rules and the model does not count.
    """
    from datetime import UTC, datetime

    from services.classify.engine import MailFacts
    from services.config import PROJECT_ROOT
    from services.mail import parse_mail
    from services.reply.original import with_routing_headers
    from services.ruleset.loader import load_rules

    ruleset = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", cache_dir=cache_dir)
    # a citizen's question, so that the model's lazy parts are loaded before the measurement
    warm = parse_mail(_HEAD + b"\r\nGuten Tag, ich habe eine Frage zu meinem Antrag auf Weiterbewilligung.\r\n")
    ruleset.classify(MailFacts.of(warm, "citizen@example.org", (SERVED.decode(),), datetime.now(UTC)))
    results = []
    for shape, size in cases:
        raw = SHAPES[shape](size)
        _give_back_freed_memory()
        before = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
        cpu, wall = time.process_time(), time.perf_counter()
        mail = parse_mail(raw)
        parse_cpu, parse_peak = time.process_time() - cpu, _rss_kib("VmHWM")
        facts = MailFacts.of(mail, "bomb@example.org", (SERVED.decode(),), datetime.now(UTC))
        category = ruleset.classify(facts).action.category
        # and the original for staff with its routing headers, as the worker delivers it
        delivered = with_routing_headers(raw, {"X-Channelshift-Flags": "parse-problems: " + ", ".join(mail.defects)})
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak = _rss_kib("VmHWM")
        results.append(
            {
                "shape": shape,
                "bytes": len(raw),
                "cpu_seconds": round(cpu, 3),
                "wall_seconds": round(wall, 3),
                "peak_extra_mib": round((peak - before) / 1024, 1),
                "parse_cpu_seconds": round(parse_cpu, 3),
                "parse_peak_extra_mib": round((parse_peak - before) / 1024, 1),
                "category": category,
                "defects": list(mail.defects),
            }
        )
        del raw, mail, facts, delivered
    return results


if __name__ == "__main__":
    # SHAPE:BYTES ... [--cache DIR]
    arguments = sys.argv[1:]
    cache = Path(arguments[arguments.index("--cache") + 1]) if "--cache" in arguments else None
    wanted = [a.split(":") for a in arguments if ":" in a]
    for result in measure([(shape, int(size)) for shape, size in wanted], cache):
        print(json.dumps(result))
