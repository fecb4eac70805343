"""Outbound senders: an SMTP relay through aiosmtplib, or a maildir; both tell transient from permanent failure."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SmtpSender:
    """smtp://host:port (STARTTLS if offered with ?starttls=require), smtps://host:port, user:pass@ optional."""

    url: str
    timeout: float = 60.0

    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("smtp", "smtps"):
            raise PermanentSendError(f"unsupported relay scheme {parsed.scheme!r}")
        starttls: bool | None = None
        if "starttls=require" in parsed.query:
            starttls = True
        elif "starttls=off" in parsed.query:
            starttls = False
        for address in [envelope_from, *recipients]:
            # CR/LF or controls in an address would let it inject SMTP commands (cf. aiosmtplib CVE-2026-53533).
            if any(ch < " " or ch == "\x7f" for ch in address) or len(address) > 320:
                raise PermanentSendError("address with control characters refused")
        if not recipients:
            raise PermanentSendError("no recipients")
        client = aiosmtplib.SMTP(
            hostname=parsed.hostname or "127.0.0.1",
            port=parsed.port or (465 if parsed.scheme == "smtps" else 25),
            use_tls=parsed.scheme == "smtps",
            start_tls=starttls,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            timeout=self.timeout,
            local_hostname=socket.getfqdn(),
        )
        try:
            async with client:
                # sendmail() rather than aiosmtplib.send(): only it accepts the null reverse-path MAIL FROM:<>.
                errors, _response = await client.sendmail(envelope_from, recipients, data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            if all(500 <= code < 600 for code in codes):
                raise PermanentSendError(f"all recipients refused: {codes}") from exc
            raise TransientSendError(f"recipients refused: {codes}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentSendError(f"relay answered {exc.code}") from exc
            raise TransientSendError(f"relay answered {exc.code}") from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise TransientSendError(f"relay unreachable: {type(exc).__name__}") from exc
        if errors:
            codes = [code for code, _msg in errors.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentSendError(f"some recipients refused: {codes}")
            raise TransientSendError(f"some recipients refused: {codes}")


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


def make_sender(url: str | None, maildir: Path) -> Sender:
    if url:
        return SmtpSender(url)
    return MaildirSender(maildir)
