"""structlog setup: JSON off a terminal, and a processor that drops personal-data keys."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys that would carry addresses, subjects or bodies; they never reach a log line.
_PERSONAL_KEYS = frozenset(
    {"mail_from", "rcpt_to", "rcpt_tos", "sender", "recipient", "to", "from", "subject", "body", "address", "raw"}
)


def redact_personal_data(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _PERSONAL_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_personal_data,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # arq, aiosmtpd and aiohttp log through stdlib logging; keep them at WARNING so that
    # their messages (which may include peer data) stay out of normal operation logs.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("mail.log", "arq", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
