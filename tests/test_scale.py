"""Two gateways and two workers (separate processes) on one database and one Redis: no duplicate reply."""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text

from services.store.db import make_engine
from tests.support import SERVED, Recorder, clean_env, free_port, make_mail, start_role, terminate, wait_for_smtp

pytestmark = pytest.mark.slow
MAILS = 400


def test_two_gateways_two_workers_one_stream(tmp_path: Path, clean_database: str, clean_redis: str) -> None:
    relay, delivery = Recorder(), Recorder()
    relay_port, delivery_port = free_port(), free_port()
    controllers = [
        Controller(relay, hostname="127.0.0.1", port=relay_port),
        Controller(delivery, hostname="127.0.0.1", port=delivery_port),
    ]
    for controller in controllers:
        controller.start()
    base = clean_env()
    base.update(
        {
            "CHANNELSHIFT_DATABASE_URL": clean_database,
            "CHANNELSHIFT_REDIS_URL": clean_redis,
            "CHANNELSHIFT_RELAY_URL": f"smtp://127.0.0.1:{relay_port}",
            "CHANNELSHIFT_DELIVERY_URL": f"smtp://127.0.0.1:{delivery_port}",
            "CHANNELSHIFT_LMTP_LISTEN": "",
            "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
            "CHANNELSHIFT_PSEUDONYM_KEY": "k",
            "CHANNELSHIFT_LOG_FORMAT": "json",
        }
    )
    gateway_ports = [free_port(), free_port()]
    log = open(tmp_path / "scale.log", "ab")  # noqa: SIM115 - closed below
    processes = []
    for port in gateway_ports:
        env = {
            **base,
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{port}",
            "CHANNELSHIFT_HEALTH_LISTEN": f"127.0.0.1:{free_port()}",
        }
        processes.append(start_role("gateway", env, log, tmp_path))
    for _ in range(2):
        processes.append(start_role("worker", base, log, tmp_path))
    accepted: Counter[str] = Counter()
    try:
        for port in gateway_ports:
            wait_for_smtp(port)

        def client(number: int) -> None:
            port = gateway_ports[number % 2]
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                for i in range(number, MAILS, 4):
                    # a quarter of the senders write twice: the second mail may only be answered once
                    sender = f"s{i % (MAILS * 3 // 4)}@example.org"
                    smtp.sendmail(
                        sender,
                        [SERVED],
                        make_mail(subject=f"Frage {i}", body="Wann haben Sie geöffnet?", sender=sender),
                    )
                    accepted[sender] += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        engine = make_engine(clean_database)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                open_count = connection.execute(
                    text("SELECT count(*) FROM message WHERE state NOT IN ('delivered', 'held')")
                ).scalar_one()
                total = connection.execute(text("SELECT count(*) FROM message")).scalar_one()
            if total == MAILS and open_count == 0 and len(delivery.messages) >= MAILS:
                break
            time.sleep(0.5)
        engine.dispose()
    finally:
        terminate(processes)
        for controller in controllers:
            controller.stop()
        log.close()
    assert total == MAILS and open_count == 0
    replies_per_recipient: Counter[str] = Counter()
    for raw in relay.messages:
        to = raw.split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0].decode()
        replies_per_recipient[to] += 1
    assert max(replies_per_recipient.values()) == 1  # the same sender never got the same reply twice
    assert len(replies_per_recipient) == len(accepted)  # and every sender got one
    assert len(relay.header_counts("Message-ID")) == len(relay.messages)
    assert len(delivery.header_counts("X-Channelshift-Id")) == MAILS
