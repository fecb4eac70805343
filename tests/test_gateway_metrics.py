"""The gateway process's load on /metrics: bytes of unfinished DATA and its 452 answers, by reason."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.metrics import INSUFFICIENT_STORAGE_REASONS
from tests.support import (
    SERVED,
    gateway_process,
)
from tests.support import SmtpSocketClient as Client

KIB = 1024
LIMIT = 512 * KIB  # message size and in-flight cap of the gateway under test


@contextmanager
def small_gateway(tmp_path: Path, database: str, redis: str) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    limits = {"max_message_size": str(LIMIT), "max_inflight_bytes": str(LIMIT), "spool_threshold_bytes": str(64 * KIB)}
    with gateway_process(tmp_path, database, redis, **limits) as started:
        yield started


def scrape(health_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def inflight(health_port: int) -> float:
    return scrape(health_port)[("channelshift_gateway_inflight_bytes", ())]


def refused(health_port: int, reason: str) -> float:
    return scrape(health_port)[("channelshift_gateway_insufficient_storage_total", (("reason", reason),))]


def begin_data(port: int, size: int | None) -> Client:
    client = Client(port, "127.0.0.1")
    declared = b" SIZE=%d" % size if size is not None else b""
    client.command(b"MAIL FROM:<citizen@example.org>" + declared, 250)
    client.command(b"RCPT TO:<" + SERVED.encode() + b">", 250)
    return client


def wait_for(check: Callable[[], bool], deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, "metric did not reach the expected value"
        time.sleep(0.05)


def test_inflight_bytes_and_452_answers_are_on_the_gateways_metrics(
    tmp_path: Path, clean_database: str, clean_redis: str
) -> None:
    head = f"From: citizen@example.org\r\nTo: {SERVED}\r\nSubject: Unterlagen\r\n\r\n".encode()
    body = b"x" * 74 + b"\r\n"
    with small_gateway(tmp_path, clean_database, clean_redis) as (_process, port, health):
        assert inflight(health) == 0
        assert all(refused(health, reason) == 0 for reason in INSUFFICIENT_STORAGE_REASONS)
        # an open transaction holds its declared size
        holder = begin_data(port, 300 * KIB)
        holder.command(b"DATA", 354)
        holder.sock.sendall(head + body * 100)
        wait_for(lambda: inflight(health) == 300 * KIB)
        # a second declared mail does not fit: 452 at DATA
        declared = begin_data(port, 300 * KIB)
        assert declared.command(b"DATA", 452).startswith(b"452 4.3.1")
        declared.close()
        assert refused(health, "declared-size") == 1
        # an undeclared one is refused once its data crosses the cap
        crossing = begin_data(port, None)
        crossing.command(b"DATA", 354)
        crossing.sock.sendall(head + body * (300 * KIB // len(body)) + b".\r\n")
        assert crossing.expect(452).startswith(b"452 4.3.1")
        crossing.close()
        assert refused(health, "data-crossed-cap") == 1
        assert inflight(health) == 300 * KIB
        # the holder finishes: stored, and its reservation is given back
        holder.sock.sendall(b".\r\n")
        holder.expect(250)
        holder.close()
        wait_for(lambda: inflight(health) == 0)
        assert refused(health, "spool-write-failed") == 0
