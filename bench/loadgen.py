"""SMTP load generator: N concurrent sessions send fixed-size mails; reports msgs/s and per-mail latency."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

RECIPIENT = b"info@jobcenter-musterstadt.example"


def make_message(size: int, index: int = 0) -> bytes:
    head = (
        b"From: load@example.org\r\nTo: " + RECIPIENT + b"\r\nSubject: Frage %d\r\n"
        b"Message-ID: <load.%d@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ) % (index, index)
    line = b"Guten Tag, wann haben Sie geoeffnet? Ich habe eine Frage zu meinem Antrag.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


@dataclass
class LoadResult:
    sessions: int
    size: int
    sent: int
    failed: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, float | int]:
        return {
            "sessions": self.sessions,
            "size": self.size,
            "sent": self.sent,
            "failed": self.failed,
            "msgs_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(0.5) * 1000, 2),
            "p99_ms": round(self.percentile(0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else 0.0,
        }


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            if not line.startswith(code):
                raise RuntimeError(line.decode(errors="replace").strip())
            return


async def _session(
    host: str, port: int, data: bytes, count: int, latencies: list[float], stats: dict[str, int], deadline: float
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await _expect(reader, b"220")
        writer.write(b"EHLO loadgen\r\n")
        await _expect(reader, b"250")
        payload = data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            writer.write(b"MAIL FROM:<load@example.org>\r\nRCPT TO:<" + RECIPIENT + b">\r\nDATA\r\n")
            try:
                await _expect(reader, b"250")
                await _expect(reader, b"250")
                await _expect(reader, b"354")
                writer.write(payload)
                await _expect(reader, b"250")
            except RuntimeError:
                stats["failed"] += 1
                writer.write(b"RSET\r\n")
                await _expect(reader, b"250")
                continue
            latencies.append(time.perf_counter() - start)
            stats["sent"] += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def run_load(
    host: str, port: int, *, sessions: int, size: int, total: int, max_seconds: float = 60.0
) -> LoadResult:
    data = make_message(size)
    latencies: list[float] = []
    stats = {"sent": 0, "failed": 0}
    per_session = max(1, total // sessions)
    start = time.perf_counter()
    await asyncio.gather(
        *(_session(host, port, data, per_session, latencies, stats, start + max_seconds) for _ in range(sessions))
    )
    return LoadResult(sessions, size, stats["sent"], stats["failed"], time.perf_counter() - start, latencies)
