"""MIME parser bombs and malformed HTML parse and classify within the time and memory budget (issue 19).

Budget: 100 ms of CPU per MB and 4 times the mail's size in memory, for a mail at the size limit; asserted
with a margin of 2, each bomb measured in its own process (tests/mime_bombs.py). Then the same bombs go
through `channelshift serve` while an ordinary mail is answered.
Regenerate the figures of docs/reliability.md with `python -m tests.mime_bombs SHAPE:BYTES ...`.
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from services.config import PROJECT_ROOT, Settings
from tests.mime_bombs import SHAPES
from tests.support import SERVED, Served, make_mail

SIZE_LIMIT = Settings().max_message_size
MB = 1_000_000
MIB = 1024 * 1024
MARGIN = 2
SECONDS_PER_MB = 0.1
MEMORY_FACTOR = 4
HTML_SIZE = 200 * 1024
MIME_BOMBS = ("bare-cr-boundaries", "many-headers", "long-to-lines")
HTML_BOMBS = ("html-open-a", "html-open-attribute", "html-deep")
CASES = [
    *((shape, SIZE_LIMIT) for shape in SHAPES),
    *((shape, HTML_SIZE) for shape in HTML_BOMBS),
]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """Every case measured in one process that loads the rules and trains the model once."""
    cache = tmp_path_factory.mktemp("model-cache")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.mime_bombs",
            *(f"{shape}:{size}" for shape, size in CASES),
            "--cache",
            str(cache),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith(b"{")]
    return {case: result for case, result in zip(CASES, results, strict=True)}


@pytest.mark.parametrize(("shape", "size"), CASES, ids=[f"{shape}-{size // 1024}k" for shape, size in CASES])
def test_bomb_parses_and_classifies_within_budget(
    shape: str, size: int, measured: dict[tuple[str, int], dict[str, Any]]
) -> None:
    result = measured[(shape, size)]
    # small mails are measured against the budget of one MB: below that, fixed costs dominate
    megabytes = max(result["bytes"], MB) / MB
    assert result["cpu_seconds"] <= MARGIN * SECONDS_PER_MB * megabytes, result
    assert result["peak_extra_mib"] * MIB <= MARGIN * MEMORY_FACTOR * max(result["bytes"], MB), result
    defects = result["defects"]
    assert all(isinstance(defect, str) for defect in defects)
    if shape in MIME_BOMBS:
        assert any(defect.startswith("limit:") for defect in defects), result
    if shape == "attachment":
        assert defects == [] and result["category"] == "documents"


def _send(service: Served, data: bytes, sender: str) -> str:
    with smtplib.SMTP("127.0.0.1", service.smtp_port, timeout=120) as client:
        client.ehlo()
        assert client.mail(sender, [f"SIZE={len(data)}"])[0] == 250
        assert client.rcpt(SERVED)[0] == 250
        code, text = client.data(data)
    assert code == 250, text
    found = re.search(rb"queued as ([0-9a-f]{32})", text)
    assert found
    return found.group(1).decode()


def _reply_file(service: Served, message_id: str, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (service.var / "outbox" / "new").glob(f"{message_id}.reply.*"):
            return path
        time.sleep(0.1)
    raise AssertionError(f"no reply to {message_id} within {timeout} s")


def _delivered_head(service: Served, message_id: str, timeout: float) -> bytes:
    """The start of the original delivered to staff, where our routing headers are.

    Not parsed with the email package: the stdlib's parser is what the bombs attack (70 s each, with
    `default` policy).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (service.var / "delivered" / "new").glob(f"{message_id}.original.*"):
            with open(path, "rb") as delivered:
                return delivered.read(4096)
        time.sleep(0.1)
    raise AssertionError(f"{message_id} not delivered within {timeout} s")


def test_bombs_through_serve_are_delivered_flagged_while_other_mail_is_answered(served: Served) -> None:
    started = time.monotonic()
    bombs = {shape: _send(served, SHAPES[shape](SIZE_LIMIT), "bomb@example.org") for shape in MIME_BOMBS}
    bombs |= {shape: _send(served, SHAPES[shape](HTML_SIZE), "html@example.org") for shape in HTML_BOMBS}
    sent = time.monotonic()
    ordinary = _send(
        served,
        make_mail(subject="Kontoauszüge", body="Anbei meine Kontoauszüge.", sender="citizen@example.org"),
        "citizen@example.org",
    )
    _reply_file(served, ordinary, timeout=60)
    answered_after = time.monotonic() - sent
    for shape, message_id in bombs.items():
        head = _delivered_head(served, message_id, timeout=120)
        flags = re.search(rb"^X-Channelshift-Flags: (.*)$", head, re.MULTILINE)
        if shape in MIME_BOMBS:
            assert flags and b"limit:" in flags.group(1), (shape, head[:600])
            assert not list((served.var / "outbox" / "new").glob(f"{message_id}.reply.*"))  # never auto-answered
    print(
        f"\nbombs sent in {sent - started:.1f} s, all delivered {time.monotonic() - started:.1f} s after the first; "
        f"an ordinary mail sent after them answered in {answered_after:.1f} s"
    )
