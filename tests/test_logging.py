"""One log format: our structlog lines and the libraries' stdlib lines are the same JSON, addresses masked."""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import logging, structlog
from services.logging import configure_logging
configure_logging("INFO", "json")
structlog.contextvars.bind_contextvars(smtp_transaction="t1")
structlog.get_logger("services.gateway").info("gateway.stored", size=12, subject="Hilfe")
logging.getLogger("mail.log").warning("peer sent MAIL FROM:<max.mustermann@example.org>")
logging.getLogger("mail.log").info("below the libraries' level: not shown")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("arq.worker").exception("job failed")
"""


def test_library_lines_share_our_json_format_and_mask_addresses() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in lines] == [
        "gateway.stored",
        "peer sent MAIL FROM:<<address>>",
        "job failed",
    ]
    for line in lines:
        assert line["smtp_transaction"] == "t1" and line["timestamp"].endswith("Z") and "level" in line
    assert lines[0]["subject"] == "[redacted]"
    assert lines[1]["logger"] == "mail.log" and lines[1]["level"] == "warning"
    assert "ZeroDivisionError" in lines[2]["exception"]
    assert "max.mustermann" not in done.stderr
