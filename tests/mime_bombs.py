"""Hostile mails of a given size (MIME parser bombs, malformed HTML) and a measurement of one in a fresh process.

`python -m tests.mime_bombs SHAPE BYTES` builds the mail, then parses and classifies it as the worker does and
prints one JSON line: seconds of CPU and wall time, and the peak RSS the parse added (the peak is reset first
through /proc/self/clear_refs, so loading the rules and the model does not count).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

SERVED = b"info@jobcenter-musterstadt.example"
_HEAD = b"From: bomb@example.org\r\nTo: " + SERVED + b"\r\nSubject: Frage\r\nMIME-Version: 1.0\r\n"


def bare_cr_boundaries(size: int) -> bytes:
    """Parts separated by bare CR: no `\\n--` in the whole mail, and the stdlib splits lines at every CR."""
    head = _HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    part = b"--b\rContent-Type: text/plain\r\rpart\r"
    return head + part * ((size - len(head)) // len(part)) + b"--b--\r"


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
    """A plain-text body that is one line of the whole size."""
    head = _HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    return head + b"Wort " * ((size - len(head)) // 5) + b"\r\n"


def _html(shape: bytes, size: int) -> bytes:
    head = _HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    return head + shape * ((size - len(head)) // len(shape)) + b"\r\n"


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


def measure(shape: str, size: int) -> dict[str, object]:
    """Parse and classify one bomb as the worker does; the peak is taken from after the mail was built."""
    from datetime import UTC, datetime

    from services.classify.engine import MailFacts
    from services.classify.loader import load_rules
    from services.config import PROJECT_ROOT
    from services.mail import parse_mail

    ruleset = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
    ruleset.classify(MailFacts.of(parse_mail(b"Subject: warm\r\n\r\nwarm"), "a@example.org", (), datetime.now(UTC)))
    raw = SHAPES[shape](size)
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    cpu, wall = time.process_time(), time.perf_counter()
    mail = parse_mail(raw)
    parse_cpu, parse_peak = time.process_time() - cpu, _rss_kib("VmHWM")
    category = ruleset.classify(MailFacts.of(mail, "bomb@example.org", (SERVED.decode(),), datetime.now(UTC)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = _rss_kib("VmHWM")
    return {
        "shape": shape,
        "bytes": len(raw),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "peak_extra_mib": round((peak - before) / 1024, 1),
        "parse_cpu_seconds": round(parse_cpu, 3),
        "parse_peak_extra_mib": round((parse_peak - before) / 1024, 1),
        "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "category": category.action.category,
        "defects": list(mail.defects),
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
