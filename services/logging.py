"""structlog setup: one format for our lines and the libraries' (JSON off a terminal), personal data dropped."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from services.privacy import mask_addresses

# Keys that would carry addresses, subjects or bodies; they never reach a log line.
_PERSONAL_KEYS = frozenset(
    {"mail_from", "rcpt_to", "rcpt_tos", "sender", "recipient", "to", "from", "subject", "body", "address", "raw"}
)


def redact_personal_data(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _PERSONAL_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def mask_foreign_addresses(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's message is free text and may quote a peer's address (aiosmtpd's does): masked."""
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = mask_addresses(event)
    return event_dict


class _CurrentStderr:
    """sys.stderr as it is at each write: a redirected or captured stderr (pytest, a CLI called in-process)
    may be closed later, and a logger bound to it would fail then."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler on sys.stderr as it is at each record (see _CurrentStderr)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Our structlog lines and the stdlib lines of arq, aiosmtpd and aiohttp in one format, on stderr."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_personal_data,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    handler = _CurrentStderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, mask_foreign_addresses],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # arq, aiosmtpd and aiohttp log through stdlib logging; kept at WARNING so that their messages (which may
    # include peer data) stay out of normal operation logs
    root.setLevel(logging.WARNING)
    for noisy in ("mail.log", "arq", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
