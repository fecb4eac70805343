"""Test helpers: an aiosmtpd relay sink, a pipeline harness on ephemeral ports, smtplib in a thread."""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP
from arq.connections import ArqRedis
from sqlmodel import Session

from services import queue
from services.config import Settings
from services.gateway.handler import GatewayHandler
from services.gateway.server import start_listener
from services.ruleset.reload import RuleSetHolder
from services.runtime import start_gateway
from services.store.db import make_engine
from services.store.models import Decision
from services.store.models import Message as MessageRow
from services.web.auth import CSRF_FIELD
from services.worker.app import build_worker
from services.worker.deps import Deps

SERVED = "info@jobcenter-musterstadt.example"
ADMIN_TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return email.message_from_bytes(self.data, policy=default_policy)


@dataclass
class SinkHandler:
    """Stands in for the relay: records every transaction; `answer` can make it fail with 4xx/5xx."""

    received: list[Received] = field(default_factory=list)
    answer: str = "250 2.0.0 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.answer.startswith("250"):
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return self.answer


async def start_sink() -> tuple[SinkHandler, asyncio.Server, int]:
    handler = SinkHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink", loop=loop), "127.0.0.1", 0)
    return handler, server, server.sockets[0].getsockname()[1]


def make_mail(
    *,
    subject: str = "Frage",
    body: str = "Guten Tag, ich habe eine Frage.",
    sender: str = "citizen@example.org",
    to: str = SERVED,
    headers: dict[str, str] | None = None,
    attachment: tuple[str, str, bytes] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{abs(hash((subject, body, sender)))}@example.org>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    if attachment:
        filename, mime, data = attachment
        maintype, subtype = mime.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=SMTP_POLICY)


def start_role(role: str, env: dict[str, str], log: Any, cwd: Path) -> subprocess.Popen[bytes]:
    """`channelshift ROLE` (serve, gateway, worker, web) as a child process, output into the open file `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "services", role], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
    )


def clean_env() -> dict[str, str]:
    """This environment without the caller's CHANNELSHIFT_* settings, for a subprocess that gets its own.

    The model cache and the embeddings switch stay: every role of the run shares them (conftest.py).
    """
    kept = ("CHANNELSHIFT_MODEL_CACHE_DIR", "CHANNELSHIFT_EMBEDDINGS")
    return {k: v for k, v in os.environ.items() if not k.startswith("CHANNELSHIFT_") or k in kept}


def wait_until_ready(port: int, processes: list[subprocess.Popen[bytes]], log: Path, timeout: float = 60) -> None:
    """Until /readyz on the port answers 200; fails with the processes' log if one exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.2)
    raise AssertionError("processes did not become ready:\n" + log.read_text(errors="replace"))


def wait_for_smtp(port: int, timeout: float = 30) -> None:
    """Until something on the port answers an SMTP greeting (a process we started is still binding)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def terminate(processes: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM all, then wait; kill what does not stop in time."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def smtp_send(port: int, sender: str, recipients: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, recipients, data)


async def send(port: int, sender: str, recipients: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    return await asyncio.to_thread(smtp_send, port, sender, recipients, data)


@dataclass
class Pipeline:
    settings: Settings
    deps: Deps
    pool: ArqRedis
    smtp_port: int
    lmtp_port: int
    relay: SinkHandler
    delivery: SinkHandler
    servers: list[asyncio.Server]
    handlers: list[GatewayHandler]

    async def send(
        self, data: bytes, sender: str = "citizen@example.org", recipients: list[str] | None = None
    ) -> dict[str, tuple[int, bytes]]:
        return await send(self.smtp_port, sender, recipients or [SERVED], data)

    async def extra_gateway(
        self,
        enqueue: Callable[[list[str]], Awaitable[None]] | None = None,
        *,
        engine: Any = None,
        max_message_size: int = 1_000_000,
        demo_dates: bool = False,
        hostname: str = "t",
        session_timeout: float = 30,
        tls: Any = None,
    ) -> tuple[asyncio.Server, int]:
        """One more SMTP gateway on this pipeline (its own handler settings), on an ephemeral port."""
        handler = GatewayHandler(
            engine or self.deps.engine,
            self.deps.rules,
            enqueue or queue.process_jobs_for(self.pool),
            protocol="smtp",
            max_message_size=max_message_size,
            demo_dates=demo_dates,
        )
        self.handlers.append(handler)
        server = await start_listener(
            handler, "127.0.0.1:0", hostname=hostname, session_timeout=session_timeout, tls=tls
        )
        return server, server.sockets[0].getsockname()[1]

    def settings_with(self, **overrides: Any) -> Settings:
        """A copy of the pipeline's settings with `overrides`, for a web app of its own (Settings are frozen)."""
        return self.deps.settings.model_copy(update=overrides)

    def reconfigure(self, **overrides: Any) -> None:
        """What the worker reads from now on: for values known only once the pipeline runs (a port, a URL).

        The settings are swapped, not changed; the gateway keeps the ones it started with.
        """
        self.settings = self.deps.settings = self.settings_with(**overrides)

    async def work(self) -> None:
        """Run a burst worker until the queue is empty (follow-up jobs included)."""
        for handler in self.handlers:
            await handler.drain()
        for _ in range(3):
            worker = build_worker(self.deps, self.pool, burst=True, handle_signals=False)
            try:
                await worker.main()
            finally:
                await worker.close()
            if not await self.pool.zcard(queue.QUEUE_NAME):
                return

    async def close(self) -> None:
        for handler in self.handlers:
            await handler.drain()
        await self.deps.close()
        for server in self.servers:
            server.close()


async def start_pipeline(tmp_path: Path, database_url: str, redis_url: str, **overrides: Any) -> Pipeline:
    relay, relay_server, relay_port = await start_sink()
    delivery, delivery_server, delivery_port = await start_sink()
    values: dict[str, Any] = {
        "var_dir": tmp_path / "var",
        "database_url": database_url,
        "redis_url": redis_url,
        "relay_url": f"smtp://127.0.0.1:{relay_port}",
        "delivery_url": f"smtp://127.0.0.1:{delivery_port}",
        "pseudonym_key": "test-key",
        "hostname": "gateway.test",
        "smtp_listen": "127.0.0.1:0",
        "lmtp_listen": "127.0.0.1:0",
        "smtp_timeout": 30,
    }
    values.update(overrides)
    settings = Settings(**values)
    engine = make_engine(settings.effective_database_url)
    deps = Deps.build(settings, engine=engine, rules=RuleSetHolder(settings.rules_dir, settings.templates_dir))
    pool = await queue.connect(redis_url)

    # the gateway as the gateway role builds it (handlers, limits, spool, session class), on ephemeral ports
    gateway = await start_gateway(settings, deps, pool)
    servers = [relay_server, delivery_server, *gateway.servers]
    handlers = list(gateway.handlers)
    ports = [server.sockets[0].getsockname()[1] for server in gateway.servers]
    return Pipeline(settings, deps, pool, ports[0], ports[1], relay, delivery, servers, handlers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def envelope_sender_of(raw: bytes) -> str:
    """What the sending MTA would have said in MAIL FROM: the archived Return-Path, else the From address."""
    found = re.search(rb"^Return-Path:\s*<([^>\r\n]*)>", raw[:20000], re.MULTILINE | re.IGNORECASE)
    if found:
        return found.group(1).decode("latin-1")
    sender = re.search(rb"^From:.*?([^\s<>\"]+@[^\s<>\"]+)", raw[:20000], re.MULTILINE | re.IGNORECASE)
    return sender.group(1).decode("latin-1") if sender else ""


class Recorder:
    """An aiosmtpd sink in its own thread (it must outlive the processes we kill)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(envelope.original_content)
        return "250 2.0.0 OK"

    def header_counts(self, name: str) -> Counter[str]:
        with self.lock:
            values = [email.message_from_bytes(m, policy=default_policy)[name] for m in self.messages]
        return Counter(str(v) for v in values if v)


async def login_form(client: TestClient[Any, Any], headers: dict[str, str] | None = None) -> str:
    """GET the login page (sets the pre-login cookie in the client's jar); the form's CSRF token."""
    response = await client.get("/dashboard/login", headers=headers or {})
    assert response.status == 200
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', await response.text())
    assert found
    return found.group(1)


async def log_in(
    client: TestClient[Any, Any], token: str = ADMIN_TOKEN, headers: dict[str, str] | None = None
) -> object:
    csrf = await login_form(client, headers)
    return await client.post(
        "/dashboard/login", data={"token": token, CSRF_FIELD: csrf}, allow_redirects=False, headers=headers or {}
    )


def add_decision(
    session: Session, number: int, rule_id: str, decided_at: datetime, version: str, category: str = "general"
) -> None:
    """A stored decision (its message already purged: the hit counts need no mail content)."""
    message_id = f"{number:032x}"
    session.add(
        MessageRow(
            id=message_id,
            received_at=decided_at,
            protocol="smtp",
            mail_from="",
            rcpt_tos=[],
            mailbox="info@jobcenter-musterstadt.example",
            size=1,
            raw=None,
            state="delivered",
            purged_at=decided_at,
        )
    )
    session.flush()
    session.add(
        Decision(
            message_id=message_id,
            decided_at=decided_at,
            category=category,
            channel="phone",
            rule_id=rule_id,
            ruleset_version=version,
            language="de",
            reply=True,
        )
    )


PROBE_RULE = """rules:
  - id: probe
    description: test rule added while the service runs
    when:
      subject: {keywords: [zauberwort]}
    then: {category: complaint, channel: feedback, reply: complaint}
"""


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    var: Path
    rules: Path
    smtp_port: int
    web_port: int

    def send(self, data: bytes) -> str:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.ehlo()
            assert client.mail("citizen@example.org")[0] == 250
            assert client.rcpt(SERVED)[0] == 250
            code, text = client.data(data)
        assert code == 250
        found = re.search(rb"queued as ([0-9a-f]{32})", text)
        assert found
        return found.group(1).decode()

    def rules_version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=5) as response:
            return str(json.loads(response.read())["checks"]["rules"]["version"])

    def wait_for_rules_other_than(self, version: str, timeout: float = 30) -> None:
        """Until the running rule set is a new one (a changed rule re-checks the model against the examples)."""
        deadline = time.monotonic() + timeout
        while self.rules_version() == version:
            if time.monotonic() > deadline:
                raise AssertionError(f"rule set still {version} after {timeout}s")
            time.sleep(0.2)

    def delivered(self, message_id: str, timeout: float = 20) -> email.message.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in (self.var / "delivered" / "new").glob(f"{message_id}.original.*"):
                return email.message_from_bytes(path.read_bytes(), policy=default_policy)
            time.sleep(0.1)
        raise AssertionError(f"{message_id} not delivered within {timeout}s")


class SmtpSocketClient:
    """A minimal SMTP client over a socket: sends a prepared body without copying it (smtplib copies it twice)."""

    def __init__(self, port: int, source: str, timeout: float = 60) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.reader = self.sock.makefile("rb")
        self.expect(220)
        self.command(b"EHLO client.example", 250)

    def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    def expect(self, code: int) -> bytes:
        got, text = self.reply()
        assert got == code, text
        return text

    def command(self, line: bytes, code: int) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.expect(code)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@contextmanager
def gateway_process(
    tmp_path: Path, database: str, redis: str, **settings: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """A `channelshift gateway` process on ephemeral SMTP and health ports; settings as CHANNELSHIFT_<NAME>."""
    smtp_port, health_port = free_port(), free_port()
    env = clean_env()
    env.update(
        {
            "CHANNELSHIFT_DATABASE_URL": database,
            "CHANNELSHIFT_REDIS_URL": redis,
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "CHANNELSHIFT_LMTP_LISTEN": "",
            "CHANNELSHIFT_HEALTH_LISTEN": f"127.0.0.1:{health_port}",
            "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
            "CHANNELSHIFT_PSEUDONYM_KEY": "k",
            **{f"CHANNELSHIFT_{name.upper()}": value for name, value in settings.items()},
        }
    )
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        process = start_role("gateway", env, log, tmp_path)
        try:
            wait_until_ready(health_port, [process], log_path)
            wait_for_smtp(smtp_port)
            yield process, smtp_port, health_port
        finally:
            terminate([process])
    assert process.returncode == 0, log_path.read_text(errors="replace")
