"""The relay sender: reused connections, SMTPUTF8 where offered, and every failure transient or permanent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from services.config import Settings
from services.reply.send import (
    PermanentSendError,
    SmtpSender,
    TransientSendError,
    UnsendableAddressError,
    make_sender,
    send_failure,
)
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


@dataclass
class _Connections:
    opened: int = 0
    open_now: int = 0
    most_open: int = 0


@dataclass
class _FlakySink(SinkHandler):
    """Answers 451 to every `fail_every`-th DATA: the sender must drop that connection and the mail be retried."""

    fail_every: int = 0
    transactions: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.transactions += 1
        if self.fail_every and self.transactions % self.fail_every == 0:
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


async def _counting_sink(handler: SinkHandler) -> tuple[asyncio.Server, int, _Connections]:
    """A relay that counts the connections made to it and how many were open at once."""
    counts = _Connections()

    class Counted(SMTP):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            counts.opened += 1
            counts.open_now += 1
            counts.most_open = max(counts.most_open, counts.open_now)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            counts.open_now -= 1
            super().connection_lost(error)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Counted(handler, hostname="sink", loop=loop), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], counts


async def _send_all(sender: SmtpSender, mails: int, concurrency: int) -> int:
    """`concurrency` jobs sending `mails` mails between them, each retrying a transient failure; the retries."""
    numbers = iter(range(mails))
    retries = 0

    async def job() -> None:
        nonlocal retries
        for number in numbers:
            while True:
                try:
                    await sender.send(f"m{number}", "", ["citizen@example.org"], _mail(number))
                    break
                except TransientSendError:
                    retries += 1

    await asyncio.gather(*(job() for _ in range(concurrency)))
    return retries


async def test_a_pool_as_large_as_the_concurrency_opens_one_connection_per_job_for_2000_mails() -> None:
    sink = _FlakySink(fail_every=250)
    server, port, counts = await _counting_sink(sink)
    sender = SmtpSender(f"smtp://127.0.0.1:{port}", pool_size=40)
    retries = await _send_all(sender, 2000, concurrency=40)
    assert len(sink.received) == 2000 and retries == 2000 // 250
    # each failed transaction costs its connection; every other mail went over one of the 40 pooled ones
    assert counts.opened <= 40 + retries
    assert sender.connections_opened == counts.opened
    await sender.close()
    server.close()


async def test_more_concurrent_sends_than_the_pool_wait_for_a_connection() -> None:
    sink = SinkHandler()
    server, port, counts = await _counting_sink(sink)
    sender = SmtpSender(f"smtp://127.0.0.1:{port}", pool_size=3)
    assert await _send_all(sender, 60, concurrency=12) == 0
    assert len(sink.received) == 60
    assert counts.most_open <= 3 and counts.opened == 3
    await sender.close()
    server.close()


def test_the_worker_pool_is_its_concurrency_unless_set() -> None:
    assert Settings(worker_concurrency=40, relay_url="smtp://relay.example:25").effective_relay_pool_size == 40
    assert Settings(worker_concurrency=40, relay_pool_size=10).effective_relay_pool_size == 10
    sender = make_sender(
        "smtp://relay.example:25", Path("unused"), Settings(worker_concurrency=7).effective_relay_pool_size
    )
    assert isinstance(sender, SmtpSender) and sender.pool_size == 7


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (aiosmtplib.SMTPResponseException(451, "busy"), TransientSendError),
        (aiosmtplib.SMTPResponseException(500, "line too long"), PermanentSendError),
        (aiosmtplib.SMTPDataError(554, "no"), PermanentSendError),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no", "x@y")]), PermanentSendError),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(450, "later", "x@y")]), TransientSendError),
        (aiosmtplib.SMTPServerDisconnected("gone"), TransientSendError),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8"), UnsendableAddressError),
        (ConnectionRefusedError(), TransientSendError),
        (TimeoutError(), TransientSendError),
        (UnicodeEncodeError("ascii", "ä", 0, 1, "no"), PermanentSendError),
        (ValueError("bad address"), PermanentSendError),
        (KeyError("surprise"), PermanentSendError),
    ],
)
def test_every_exception_is_transient_or_permanent(error: Exception, kind: type[Exception]) -> None:
    failure = send_failure(error)
    assert type(failure) is kind
    assert "ä" not in str(failure) and "x@y" not in str(failure)  # codes and type names only, no personal data


async def _utf8_sink(smtputf8: bool) -> tuple[SinkHandler, asyncio.Server, int]:
    handler = SinkHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink", enable_SMTPUTF8=smtputf8, loop=loop), "127.0.0.1", 0
    )
    return handler, server, server.sockets[0].getsockname()[1]


async def test_utf8_recipient_uses_smtputf8_where_offered() -> None:
    sink, server, port = await _utf8_sink(smtputf8=True)
    sender = SmtpSender(f"smtp://127.0.0.1:{port}")
    await sender.send("a", "", ["bürgerbüro@jobcenter.example"], _mail(1))
    assert [r.rcpt_tos for r in sink.received] == [["bürgerbüro@jobcenter.example"]]
    await sender.close()
    server.close()


async def test_utf8_recipient_to_a_relay_without_smtputf8_is_permanent_and_the_connection_stays_usable() -> None:
    sink, server, port = await _utf8_sink(smtputf8=False)
    sender = SmtpSender(f"smtp://127.0.0.1:{port}")
    with pytest.raises(UnsendableAddressError, match="SMTPUTF8"):
        await sender.send("a", "", ["bürgerbüro@jobcenter.example"], _mail(1))
    await sender.send("b", "", ["staff@jobcenter.example"], _mail(2))
    assert [r.rcpt_tos for r in sink.received] == [["staff@jobcenter.example"]]
    assert sender.connections_opened == 1  # nothing was sent on it: no reason to drop it
    await sender.close()
    server.close()


@pytest.mark.parametrize("address", ["a\x00b@x.example", "a\x1bb@x.example", "a\x85b@x.example", "a\udcffb@x.example"])
async def test_control_characters_and_invalid_utf8_are_refused_before_connecting(address: str) -> None:
    sender = SmtpSender("smtp://127.0.0.1:9")  # nothing listens: a connection attempt would be transient
    with pytest.raises(UnsendableAddressError):
        await sender.send("a", "", [address], _mail(1))
    assert sender.connections_opened == 0
