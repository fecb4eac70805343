"""Outbound senders: an SMTP relay through aiosmtplib, or a maildir; both tell transient from permanent failure."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import aiosmtplib


class TransientSendError(Exception):
    """Try again later: connection refused, 4xx, disk trouble."""


class PermanentSendError(Exception):
    """Will never work for this message: 5xx from the relay."""


class Sender(Protocol):
    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None: ...

    async def close(self) -> None: ...


class SmtpSender:
    """smtp://host:port (STARTTLS if offered with ?starttls=require), smtps://host:port, user:pass@ optional.

    Connections are kept open and reused, as Postfix's SMTP client connection cache does: an idle connection is
    reused for the next mail, one idle for more than `PROBE_AFTER` seconds is first checked with NOOP, and a
    connection is closed after `MAX_MESSAGES` mails or `MAX_AGE` seconds. A connection that saw any error is
    dropped, never reused.
    """

    PROBE_AFTER = 1.0
    MAX_MESSAGES = 100
    MAX_AGE = 300.0
    MAX_IDLE = 8
    IDLE_CLOSE = 30.0

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url
        self.timeout = timeout
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
        return _Connection(client, opened=time.monotonic())

    async def _release(self, connection: _Connection) -> None:
        connection.messages += 1
        connection.last_used = time.monotonic()
        if connection.messages >= self.MAX_MESSAGES or len(self._idle) >= self.MAX_IDLE:
            await connection.close()
            return
        self._idle.append(connection)
        # connections nobody needed for a while are closed rather than held against the relay's limits
        while self._idle and connection.last_used - self._idle[0].last_used > self.IDLE_CLOSE:
            await self._idle.popleft().close()

    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None:
        for address in [envelope_from, *recipients]:
            # CR/LF or controls in an address would let it inject SMTP commands (cf. aiosmtplib CVE-2026-53533).
            if any(ch < " " or ch == "\x7f" for ch in address) or len(address) > 320:
                raise PermanentSendError("address with control characters refused")
        if not recipients:
            raise PermanentSendError("no recipients")
        connection: _Connection | None = None
        try:
            connection = await self._acquire()
            # sendmail() rather than aiosmtplib.send(): only it accepts the null reverse-path MAIL FROM:<>.
            errors, _response = await connection.client.sendmail(envelope_from, recipients, data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await _discard(connection)
            codes = [r.code for r in exc.recipients]
            if all(500 <= code < 600 for code in codes):
                raise PermanentSendError(f"all recipients refused: {codes}") from exc
            raise TransientSendError(f"recipients refused: {codes}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            await _discard(connection)
            if 500 <= exc.code < 600:
                raise PermanentSendError(f"relay answered {exc.code}") from exc
            raise TransientSendError(f"relay answered {exc.code}") from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            await _discard(connection)
            raise TransientSendError(f"relay unreachable: {type(exc).__name__}") from exc
        except BaseException:
            await _discard(connection)
            raise
        await self._release(connection)
        if errors:
            codes = [code for code, _msg in errors.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentSendError(f"some recipients refused: {codes}")
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


def make_sender(url: str | None, maildir: Path) -> Sender:
    if url:
        return SmtpSender(url)
    return MaildirSender(maildir)
