"""Start the SMTP and LMTP listeners: per-client connection limit, line-length limit, optional STARTTLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from services.config import Settings, split_host_port
from services.gateway.addresses import with_quick_addresses
from services.gateway.handler import GatewayHandler
from services.gateway.replies import TEMPFAIL_SHUTTING_DOWN, TEMPFAIL_TOO_MANY_CONNECTIONS
from services.gateway.spool import DataLimits, return_large_blocks_to_the_system, shared_limits, with_spooled_data

log = structlog.get_logger(__name__)


def tls_context(cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    if cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


class ConnectionLimiter:
    """Counts open sessions per client IP across a listener (Postfix smtpd_client_connection_count_limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def admit(self, peer: str) -> bool:
        if self.open[peer] >= self.limit:
            return False
        self.open[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


class OpenSessions:
    """The sessions of a listener, so that a stop can refuse new ones and wait for open transactions.

    Once `closing`, a new connection gets `421` instead of a greeting, and a session outside a transaction
    gets `421` and is closed: at once if it is idle, else after its current transaction (DATA answered, RSET).
    """

    def __init__(self) -> None:
        self.closing = False
        self.sessions: set[SMTP] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def opened(self, session: SMTP) -> None:
        self.sessions.add(session)
        self._empty.clear()

    def closed(self, session: SMTP) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._empty.set()

    async def close(self, grace: float) -> int:
        """Refuse new sessions, end idle ones, wait up to `grace` s for open transactions; returns how many
        were still open then (dropped without an answer to DATA, so their sender retries)."""
        self.closing = True
        for session in list(self.sessions):
            if not in_transaction(session):
                say_goodbye(session)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), grace)
        left = list(self.sessions)
        for session in left:
            if session.transport is not None:
                session.transport.close()
        return len(left)


def in_transaction(session: SMTP) -> bool:
    """Between MAIL FROM and the answer to DATA (aiosmtpd resets the envelope after that answer)."""
    envelope = session.envelope
    return envelope is not None and envelope.mail_from is not None


def say_goodbye(session: SMTP) -> None:
    transport: asyncio.Transport | None = session.transport  # type: ignore[assignment]
    if transport is not None and not transport.is_closing():
        transport.write((TEMPFAIL_SHUTTING_DOWN + "\r\n").encode())
        transport.close()


def _session_class(
    protocol: str, limiter: ConnectionLimiter, line_length: int, open_sessions: OpenSessions
) -> type[SMTP]:
    base: type[SMTP] = LMTP if protocol == "lmtp" else SMTP

    class LimitedSession(base):  # type: ignore[misc, valid-type]
        line_length_limit = line_length
        _admitted_peer: str | None = None
        _smtp_methods: dict[str, Any]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # every command but QUIT first checks for a stop; inside a transaction the command goes on
            self._smtp_methods = {
                name: method if name == "QUIT" else self._unless_closing(method)
                for name, method in self._smtp_methods.items()
            }

        def _unless_closing(self, method: Any) -> Any:
            async def command(arg: str | None) -> None:
                if open_sessions.closing and not in_transaction(self):
                    say_goodbye(self)
                    return
                await method(arg)
                if open_sessions.closing and not in_transaction(self):
                    say_goodbye(self)  # the transaction it was in is answered: no need to wait for the next command

            return command

        def connection_made(self, transport: Any) -> None:
            if open_sessions.closing:
                transport.write((TEMPFAIL_SHUTTING_DOWN + "\r\n").encode())
                transport.close()
                return
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if peer else "?"
            if not limiter.admit(host):
                transport.write((TEMPFAIL_TOO_MANY_CONNECTIONS + "\r\n").encode())
                transport.close()
                log.warning("gateway.too_many_connections")
                return
            self._admitted_peer = host
            open_sessions.opened(self)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if self._admitted_peer is not None:
                limiter.release(self._admitted_peer)
                self._admitted_peer = None
                open_sessions.closed(self)
                super().connection_lost(error)

    return LimitedSession


async def start_listener(
    handler: GatewayHandler,
    listen: str,
    *,
    hostname: str,
    session_timeout: float,
    tls: ssl.SSLContext | None = None,
    max_line_length: int = 100_000,
    max_connections_per_client: int = 20,
    open_sessions: OpenSessions | None = None,
    data_limits: DataLimits | None = None,
) -> asyncio.Server:
    """`open_sessions`: pass one to stop the listener gracefully later (OpenSessions.close)."""
    host, port = split_host_port(listen)
    loop = asyncio.get_running_loop()
    session_class = _session_class(
        handler.protocol,
        ConnectionLimiter(max_connections_per_client),
        max_line_length,
        open_sessions or OpenSessions(),
    )
    # DATA read with bounded memory (services/gateway/spool.py); without limits given, the defaults in /tmp
    limits = data_limits or DataLimits(Path(tempfile.gettempdir()))
    if limits.max_inflight_bytes < handler.max_message_size:
        raise ValueError("CHANNELSHIFT_MAX_INFLIGHT_BYTES must be at least CHANNELSHIFT_MAX_MESSAGE_SIZE")
    session_class = with_quick_addresses(with_spooled_data(session_class, limits))
    return_large_blocks_to_the_system()

    def factory() -> SMTP:
        # aiosmtpd enforces the size limit while reading DATA (552) and announces it with SIZE
        return session_class(
            handler,
            data_size_limit=handler.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="channelshift",
            timeout=session_timeout,
            tls_context=tls,
            loop=loop,
        )

    return await loop.create_server(factory, host=host, port=port, reuse_address=True)


def listener_options(settings: Settings) -> dict[str, Any]:
    return {
        "hostname": settings.hostname,
        "session_timeout": settings.smtp_timeout,
        "tls": tls_context(settings.tls_cert_file, settings.tls_key_file),
        "max_line_length": settings.max_line_length,
        "max_connections_per_client": settings.max_connections_per_client,
        "data_limits": shared_limits(
            settings.var_dir / "spool",
            settings.spool_threshold_bytes,
            settings.max_inflight_bytes,
            settings.max_commit_bytes,
            settings.smtp_transaction_timeout,
        ),
    }
