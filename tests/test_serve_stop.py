"""SIGTERM of `channelshift serve` while mail streams in, then a restart: nothing lost, uncertain or sent twice."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlmodel import Session

from services.store.db import make_engine
from services.store.queries import opened_messages
from tests.support import SERVED, Recorder, clean_env, free_port, make_mail, start_role, wait_until_ready

pytestmark = pytest.mark.slow

CLIENTS = 4
SHUTDOWN_SECONDS = 20  # the default of CHANNELSHIFT_SHUTDOWN_TIMEOUT_SECONDS
FINAL_WITHIN = 60.0  # issue 18: every accepted mail final within 60 s of the restart


def _stream(index: int, port: int, results: dict[str, str], stop: threading.Event) -> None:
    """Sends mail after mail, as an MTA would: a refused or dropped session is tried again shortly after."""
    number = 0
    client: smtplib.SMTP | None = None
    while not stop.is_set():
        token = f"stop-{index}-{number}"
        number += 1
        sender = f"{token}@example.org"
        data = make_mail(subject=f"Frage {token}", body=f"Wann haben Sie geöffnet? {token}", sender=sender)
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            client.sendmail(sender, [SERVED], data)
            results[token] = "250"
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused) as exc:
            results[token] = f"refused-{getattr(exc, 'smtp_code', 0)}"
            client = None  # a 421 closes the session
            time.sleep(0.2)
        except (OSError, smtplib.SMTPException):
            results.setdefault(token, "no-answer")
            client = None
            time.sleep(0.2)
    if client is not None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()


def _stop_timeline(log_path: Path) -> dict[str, object]:
    """From the JSON log of the first run: how long the drain took, and how many jobs finished or were cut."""
    events: dict[str, dict[str, object]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") in ("worker.drained", "shutdown.drained"):
                events.setdefault(str(entry["event"]), entry)
    worker = events.get("worker.drained", {})
    return {
        "drain_seconds": events.get("shutdown.drained", {}).get("seconds"),
        "jobs_finished_in_drain": worker.get("finished"),
        "jobs_cut_at_deadline": worker.get("cancelled"),
    }


def test_sigterm_mid_stream_then_restart(tmp_path: Path) -> None:
    relay, delivery = Recorder(), Recorder()
    relay_port, delivery_port, smtp_port, web_port = free_port(), free_port(), free_port(), free_port()
    relay_ctl = Controller(relay, hostname="127.0.0.1", port=relay_port)
    delivery_ctl = Controller(delivery, hostname="127.0.0.1", port=delivery_port)
    relay_ctl.start()
    delivery_ctl.start()
    env = clean_env()
    env.update(
        {
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "CHANNELSHIFT_LMTP_LISTEN": "",
            "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{web_port}",
            "CHANNELSHIFT_RELAY_URL": f"smtp://127.0.0.1:{relay_port}",
            "CHANNELSHIFT_DELIVERY_URL": f"smtp://127.0.0.1:{delivery_port}",
            "CHANNELSHIFT_PSEUDONYM_KEY": "k",
            "CHANNELSHIFT_LOG_FORMAT": "json",
            "CHANNELSHIFT_MAX_CONNECTIONS_PER_CLIENT": "50",
        }
    )
    log_path = tmp_path / "serve.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    served = start_role("serve", env, log, tmp_path)
    results: dict[str, str] = {}
    stop = threading.Event()
    clients = [threading.Thread(target=_stream, args=(i, smtp_port, results, stop)) for i in range(CLIENTS)]
    try:
        wait_until_ready(web_port, [served], log_path, timeout=120)
        for thread in clients:
            thread.start()
        time.sleep(4)
        accepted_before_stop = sum(outcome == "250" for outcome in results.values())
        signalled = time.monotonic()
        served.send_signal(signal.SIGTERM)
        assert served.wait(timeout=SHUTDOWN_SECONDS + 15) == 0
        stop_seconds = time.monotonic() - signalled
        engine = make_engine(f"sqlite:///{(tmp_path / 'var' / 'channelshift.db').resolve()}")
        with engine.connect() as connection:
            # left for the restart: stored but not final (the embedded Redis kept none of their jobs)
            open_at_stop = connection.execute(
                text("SELECT count(*) FROM message WHERE state NOT IN ('delivered', 'held')")
            ).scalar_one()

        served = start_role("serve", env, log, tmp_path)
        wait_until_ready(web_port, [served], log_path, timeout=120)
        restarted = time.monotonic()
        time.sleep(2)  # mail keeps coming after the restart
        stop.set()
        for thread in clients:
            thread.join()

        while True:
            with engine.connect() as connection:
                open_count = connection.execute(
                    text("SELECT count(*) FROM message WHERE state NOT IN ('delivered', 'held')")
                ).scalar_one()
            if open_count == 0 or time.monotonic() - restarted > FINAL_WITHIN:
                break
            time.sleep(0.5)
        final_seconds = time.monotonic() - restarted
        with Session(engine) as session:  # stored mail is sealed at rest: read it opened
            rows = [(m.raw, m.state) for m in opened_messages(session)]
        with engine.connect() as connection:
            reply_states = Counter(r[0] for r in connection.execute(text("SELECT state FROM reply")).all())
        engine.dispose()
    finally:
        stop.set()
        for thread in clients:
            if thread.is_alive():
                thread.join()
        if served.poll() is None:
            served.send_signal(signal.SIGTERM)
            try:
                served.wait(timeout=SHUTDOWN_SECONDS + 15)
            except Exception:
                served.kill()
        relay_ctl.stop()
        delivery_ctl.stop()
        log.close()

    stored: Counter[str] = Counter()
    for raw, _state in rows:
        found = re.search(rb"Subject: Frage (stop-\d+-\d+)", raw or b"")
        assert found, "a stored message is incomplete"
        stored[found.group(1).decode()] += 1
    accepted = [token for token, outcome in results.items() if outcome == "250"]
    not_final = [state for _raw, state in rows if state not in ("delivered", "held")]
    duplicate_replies = sum(n - 1 for n in relay.header_counts("Message-ID").values() if n > 1)
    duplicate_deliveries = sum(n - 1 for n in delivery.header_counts("X-Channelshift-Id").values() if n > 1)
    figures = {
        "accepted_before_sigterm": accepted_before_stop,
        "accepted_250": len(accepted),
        "refused_421": sum(o == "refused-421" for o in results.values()),
        "no_answer": sum(o == "no-answer" for o in results.values()),
        "stored": len(rows),
        "stop_seconds": round(stop_seconds, 1),
        "open_at_stop": open_at_stop,
        "final_after_restart_seconds": round(final_seconds, 1),
        "not_final": len(not_final),
        "replies": sum(reply_states.values()),
        "replies_uncertain": reply_states.get("uncertain", 0),
        "duplicate_replies": duplicate_replies,
        "duplicate_deliveries": duplicate_deliveries,
    }
    figures.update(_stop_timeline(log_path))
    print("shutdown figures:", figures)
    assert accepted_before_stop > 0 and len(accepted) > accepted_before_stop
    assert [token for token in accepted if token not in stored] == []  # every 250 was stored
    assert not_final == [], log_path.read_text(errors="replace")[-6000:]
    assert final_seconds <= FINAL_WITHIN
    assert reply_states.get("uncertain", 0) == 0
    assert duplicate_replies == 0 and duplicate_deliveries == 0
    assert stop_seconds <= SHUTDOWN_SECONDS + 10
    logs = log_path.read_text(errors="replace")
    assert "@example.org" not in logs and "Frage stop-" not in logs
    assert '"shutdown.drained"' in logs or "shutdown.drained" in logs
