"""The relay sender keeps SMTP connections open, reuses them, and replaces one the relay has closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from services.reply.send import PermanentSendError, SmtpSender
from tests.support import SinkHandler


async def _sink(idle_timeout: float = 300) -> tuple[SinkHandler, asyncio.Server, int, list[Any]]:
    handler = SinkHandler()
    sessions: list[Any] = []
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        smtp = SMTP(handler, hostname="sink", loop=loop, timeout=idle_timeout)
        sessions.append(smtp)
        return smtp

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    return handler, server, server.sockets[0].getsockname()[1], sessions


def _mail(number: int) -> bytes:
    return f"Subject: reply {number}\r\nMessage-ID: <r{number}@test>\r\n\r\nHallo\r\n".encode()


async def test_sequential_and_concurrent_mails_reuse_connections() -> None:
    sink, server, port, sessions = await _sink()
    sender = SmtpSender(f"smtp://127.0.0.1:{port}")
    for number in range(5):
        await sender.send(f"k{number}", "", ["citizen@example.org"], _mail(number))
    assert sender.connections_opened == 1 and len(sessions) == 1
    await asyncio.gather(*(sender.send(f"c{n}", "", ["citizen@example.org"], _mail(10 + n)) for n in range(4)))
    assert len(sink.received) == 9
    assert sender.connections_opened <= 4  # one per mail in flight at once, the idle one reused
    assert all(received.mail_from == "<>" for received in sink.received)
    await sender.close()
    server.close()


async def test_a_connection_closed_by_the_relay_is_noticed_without_a_probe() -> None:
    sink, server, port, _sessions = await _sink(idle_timeout=0.3)
    sender = SmtpSender(f"smtp://127.0.0.1:{port}")
    sender.PROBE_AFTER = 60  # no NOOP: the client saw the relay close the connection (421, then EOF)
    await sender.send("a", "", ["citizen@example.org"], _mail(1))
    await asyncio.sleep(0.8)
    await sender.send("b", "", ["citizen@example.org"], _mail(2))
    assert sender.connections_opened == 2
    assert [r.data.split(b"\r\n", 1)[0] for r in sink.received] == [b"Subject: reply 1", b"Subject: reply 2"]
    await sender.close()
    server.close()


async def test_a_connection_that_saw_an_error_is_not_reused() -> None:
    sink, server, port, _sessions = await _sink()
    sender = SmtpSender(f"smtp://127.0.0.1:{port}")
    sink.answer = "554 5.7.1 rejected"
    with pytest.raises(PermanentSendError):
        await sender.send("a", "", ["citizen@example.org"], _mail(1))
    sink.answer = "250 2.0.0 OK"
    await sender.send("b", "", ["citizen@example.org"], _mail(2))
    assert sender.connections_opened == 2 and len(sink.received) == 1
    await sender.close()
    server.close()
