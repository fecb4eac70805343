"""Strict staff relays for the delivery tests: aiosmtpd sinks that refuse as real relays do."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP

from services.reply.send import SmtpSender
from tests.support import Pipeline, Received


@dataclass
class StrictRelay:
    """Records what it accepts; `refuse` answers every MAIL FROM (e.g. 554), `refuse_data` the next DATAs (4xx)."""

    received: list[Received] = field(default_factory=list)
    mail_options: list[list[str]] = field(default_factory=list)
    refuse: str | None = None
    refuse_data: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    seven_bit: bool = False  # refuse 8-bit content, as a relay without 8BITMIME may

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.refuse:
            self.answers.append(self.refuse)
            return self.refuse
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_data:
            answer = self.refuse_data.pop(0)
            self.answers.append(answer)
            return answer
        if self.seven_bit and not envelope.original_content.isascii():
            self.answers.append("554 5.6.1")
            return "554 5.6.1 8-bit content not accepted"
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        self.mail_options.append(list(envelope.mail_options))
        return "250 2.0.0 OK"


class _RfcLineLimit(SMTP):  # type: ignore[misc]
    # RFC 5322's 998 characters plus CRLF; aiosmtpd answers "500 Line too long" after DATA for any longer line
    line_length_limit = 1000


async def start_strict_relay(*, smtputf8: bool) -> tuple[StrictRelay, asyncio.Server, str]:
    """A relay enforcing 998-byte lines; with `smtputf8=False` it neither offers SMTPUTF8 nor takes 8-bit addresses."""
    relay = StrictRelay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _RfcLineLimit(relay, hostname="strict", enable_SMTPUTF8=smtputf8, loop=loop), "127.0.0.1", 0
    )
    return relay, server, f"smtp://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def use_staff_relay(pipeline: Pipeline, *, smtputf8: bool = False) -> StrictRelay:
    """Point the pipeline's deliveries to staff at a new strict relay (closed with the pipeline)."""
    relay, server, url = await start_strict_relay(smtputf8=smtputf8)
    pipeline.servers.append(server)
    await pipeline.deps.delivery_sender.close()
    pipeline.deps.delivery_sender = SmtpSender(url)
    pipeline.reconfigure(delivery_url=url)
    return relay
