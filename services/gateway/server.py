"""Start the SMTP and LMTP listeners on the running event loop."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from services.config import split_host_port
from services.gateway.handler import GatewayHandler


@dataclass
class Listeners:
    servers: list[asyncio.Server]

    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers if s.sockets]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()


async def start_listener(
    handler: GatewayHandler,
    listen: str,
    *,
    hostname: str,
    session_timeout: float,
    tls_context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    host, port = split_host_port(listen)
    loop = asyncio.get_running_loop()
    session_class = LMTP if handler.protocol == "lmtp" else SMTP
    # aiosmtpd enforces the size limit while reading DATA (552 without buffering more than the limit).
    size_limit = handler.max_message_size

    def factory() -> SMTP:
        return session_class(
            handler,
            data_size_limit=size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="channelshift",
            timeout=session_timeout,
            tls_context=tls_context,
            loop=loop,
        )

    return await loop.create_server(factory, host=host, port=port, reuse_address=True)
