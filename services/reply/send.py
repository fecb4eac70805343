"""Outbound senders: an SMTP relay through aiosmtplib, or a maildir; both tell transient from permanent failure."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import aiosmtplib


class TransientSendError(Exception):
    """Try again later: relay unreachable or misconfigured, 4xx, disk or database trouble."""


class PermanentSendError(Exception):
    """Will never work for this message as it is: a 5xx, or an address or content the relay cannot take.

    `recipients` names the refused ones when the relay accepted the others (None: the failure concerns all).
    """

    def __init__(self, reason: str, recipients: list[str] | None = None) -> None:
        super().__init__(reason)
        self.recipients = recipients


class UnsendableAddressError(PermanentSendError):
    """An address this relay cannot take (UTF-8 without SMTPUTF8, control characters): an ASCII one might work."""


def is_plain_address(address: str) -> bool:
    """ASCII without control characters: what every relay takes without SMTPUTF8."""
    return address.isascii() and address.isprintable() and len(address) <= 320


def _has_control_characters(address: str) -> bool:
    # C0, DEL and C1 controls, and lone surrogates (invalid UTF-8 decoded with surrogateescape)
    return not address.isprintable() and any(unicodedata.category(ch) in ("Cc", "Cs") for ch in address)


def send_failure(exc: Exception) -> TransientSendError | PermanentSendError:
    """The one classification of an exception from a send attempt: transient or permanent, never a third kind.

    Network, TLS and timeout errors and 4xx are transient; 5xx, and addresses or data that cannot be encoded
    for the relay, are permanent. Anything unforeseen is permanent too: it would fail the same way on every
    retry, and a permanent failure is visible (wrapper, then `failed`) where an endless retry is not.
    """
    if isinstance(exc, TransientSendError | PermanentSendError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        if all(500 <= code < 600 for code in codes):
            return PermanentSendError(f"all recipients refused: {codes}")
        return TransientSendError(f"recipients refused: {codes}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if 500 <= exc.code < 600:
            return PermanentSendError(f"relay answered {exc.code}")
        return TransientSendError(f"relay answered {exc.code}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # raised by sendmail only for SMTPUTF8, which send() checks first; kept here so it can never loop
        return UnsendableAddressError("relay does not support what this message needs (SMTPUTF8)")
    if isinstance(exc, ValueError):
        # UnicodeEncodeError and aiosmtplib's address checks: the same bytes would fail on every retry
        return PermanentSendError(f"message cannot be sent to this relay: {type(exc).__name__}")
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPException | OSError):
        return TransientSendError(f"relay unreachable: {type(exc).__name__}")
    return PermanentSendError(f"unexpected error: {type(exc).__name__}")


class Sender(Protocol):
    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None: ...

    async def close(self) -> None: ...


class SmtpSender:
    """smtp://host:port (STARTTLS if offered with ?starttls=require), smtps://host:port, user:pass@ optional.

    Connections are pooled and reused, as Postfix's SMTP client connection cache does: at most `pool_size` are
    open at once (a send beyond waits for one), so a worker whose `pool_size` concurrent jobs send at once keeps
    one connection per job instead of opening new ones. An idle connection is reused for the next mail, one idle
    for more than `PROBE_AFTER` seconds is first checked with NOOP, and a connection is closed after
    `MAX_MESSAGES` mails, `MAX_AGE` seconds or `IDLE_CLOSE` seconds unused. A connection that saw any error or
    that the relay closed is dropped, never reused.
    """

    PROBE_AFTER = 1.0
    MAX_MESSAGES = 100
    MAX_AGE = 300.0
    IDLE_CLOSE = 30.0

    def __init__(self, url: str, timeout: float = 60.0, pool_size: int = 20) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.url = url
        self.timeout = timeout
        self.pool_size = pool_size
        self._slots = asyncio.Semaphore(pool_size)  # held from taking a connection until it is idle or closed
        self._idle: deque[_Connection] = deque()
        self.connections_opened = 0

    def _client(self) -> aiosmtplib.SMTP:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("smtp", "smtps"):
            raise PermanentSendError(f"unsupported relay scheme {parsed.scheme!r}")
        starttls: bool | None = None
        if "starttls=require" in parsed.query:
            starttls = True
        elif "starttls=off" in parsed.query:
            starttls = False
        return aiosmtplib.SMTP(
            hostname=parsed.hostname or "127.0.0.1",
            port=parsed.port or (465 if parsed.scheme == "smtps" else 25),
            use_tls=parsed.scheme == "smtps",
            start_tls=starttls,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            timeout=self.timeout,
            local_hostname=_local_hostname(),
        )

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.client.is_connected or now - connection.opened > self.MAX_AGE:
                await connection.close()
                continue
            if now - connection.last_used > self.PROBE_AFTER:
                try:
                    await connection.client.noop()
                except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError):
                    await connection.close()
                    continue
            return connection
        client = self._client()
        await client.connect()
        self.connections_opened += 1
        connection = _Connection(client, opened=time.monotonic())
        try:
            if client.is_ehlo_or_helo_needed:
                # the extensions (SMTPUTF8, 8BITMIME) must be known before MAIL FROM is built
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            await _discard(connection)
            raise
        return connection

    async def _release(self, connection: _Connection) -> None:
        connection.messages += 1
        connection.last_used = time.monotonic()
        if connection.messages >= self.MAX_MESSAGES:
            await connection.close()
            return
        self._idle.append(connection)
        # connections nobody needed for a while are closed rather than held against the relay's limits
        while self._idle and connection.last_used - self._idle[0].last_used > self.IDLE_CLOSE:
            await self._idle.popleft().close()

    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None:
        for address in [envelope_from, *recipients]:
            # CR/LF or controls in an address would let it inject SMTP commands (cf. aiosmtplib CVE-2026-53533).
            if _has_control_characters(address) or len(address) > 320:
                raise UnsendableAddressError("address with control characters or invalid UTF-8 refused")
        if not recipients:
            raise PermanentSendError("no recipients")
        async with self._slots:
            await self._send_pooled(envelope_from, recipients, data)

    async def _send_pooled(self, envelope_from: str, recipients: list[str], data: bytes) -> None:
        try:
            connection = await self._acquire()
        except PermanentSendError:
            raise
        except Exception as exc:
            # connecting, TLS, EHLO and AUTH do not depend on the message: a refusal there is the relay's or
            # its configuration's problem, retried until it is fixed
            raise TransientSendError(f"relay unreachable: {type(exc).__name__}") from exc
        client = connection.client
        options: list[str] = []
        if not all(address.isascii() for address in [envelope_from, *recipients]):
            if not client.supports_extension("smtputf8"):
                await self._release(connection)
                raise UnsendableAddressError("UTF-8 address and the relay does not offer SMTPUTF8")
            options.append("SMTPUTF8")
        if not data.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            # sendmail() rather than aiosmtplib.send(): only it accepts the null reverse-path MAIL FROM:<>.
            errors, _response = await client.sendmail(envelope_from, recipients, data, mail_options=options)
        except BaseException as exc:
            await _discard(connection)
            if isinstance(exc, Exception):
                raise send_failure(exc) from exc
            raise
        await self._release(connection)
        if errors:
            codes = [code for code, _msg in errors.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentSendError(f"some recipients refused: {codes}", recipients=list(errors))
            raise TransientSendError(f"some recipients refused: {codes}")

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    opened: float
    last_used: float = field(default_factory=time.monotonic)
    messages: int = 0

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.quit(), timeout=5)
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError):
            self.client.close()


async def _discard(connection: _Connection | None) -> None:
    if connection is not None:
        connection.client.close()


@functools.cache
def _local_hostname() -> str:
    return socket.getfqdn()


@dataclass(frozen=True)
class MaildirSender:
    """Writes each message once into DIR/new (tmp + fsync + rename); the key makes a retry a no-op."""

    directory: Path

    def _write(self, key: str, data: bytes) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        name = f"{key}.{socket.gethostname().replace('/', '_').replace(':', '_')}"
        final = self.directory / "new" / name
        if final.exists() or (self.directory / "cur" / name).exists():
            return
        temporary = self.directory / "tmp" / name
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory_fd = os.open(self.directory / "new", os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, key, data)
        except OSError as exc:
            raise TransientSendError(f"maildir write failed: {exc.strerror or type(exc).__name__}") from exc

    async def close(self) -> None:
        """Nothing held open."""


def make_sender(url: str | None, maildir: Path, pool_size: int = 20) -> Sender:
    """`pool_size`: relay connections open at once (one per concurrent job of the worker)."""
    if url:
        return SmtpSender(url, pool_size=pool_size)
    return MaildirSender(maildir)
