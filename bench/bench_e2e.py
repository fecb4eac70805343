"""End to end: accept -> steering reply handed to the relay, at a fixed offered load and at saturation.

Gateway and workers run as separate processes (SQLite by default, or --database postgresql://...). The relay
is Postfix's smtp-sink dumping each mail to a file whose modification time is the reply's arrival (or, with
--relay aiosmtpd, a sink in this process). CPU per mail and RSS of gateway and workers are sampled throughout.

    .venv/bin/python bench/bench_e2e.py [--rate 100] [--seconds 20] [--saturation 3000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from aiosmtpd.controller import Controller
from common import bench_mail as mail
from common import (
    channelshift_env,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    python,
    rss_kib,
    save,
    start,
    stop,
    wait_port,
)
from loadgen import RECIPIENT

from services.embedded_redis import start_embedded_redis
from services.store.migrate import upgrade


def reply_token(data: bytes) -> str | None:
    marker = data.find(b"In-Reply-To:")
    if marker < 0:
        return None
    return data[marker : marker + 200].split(b"<", 1)[1].split(b">", 1)[0].decode()


class ReplySink:
    """aiosmtpd relay in this process (the harness then competes with channelshift for the CPU)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        token = reply_token(envelope.original_content)
        if token:
            with self.lock:
                self.arrived.setdefault(token, time.time())
        return "250 2.0.0 OK"

    def poll(self) -> None:
        pass


class DumpSink:
    """Postfix's smtp-sink as the relay, dumping each mail to a file; arrival is the file's modification time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self._seen: set[str] = set()

    def poll(self) -> None:
        # one scandir, no stat of files already done: the harness shares the CPU with what it measures
        with os.scandir(self.directory) as entries:
            fresh = [entry for entry in entries if entry.name not in self._seen and entry.is_file()]
        for entry in fresh:
            stat = entry.stat()
            age = time.time() - stat.st_mtime
            if age < 0.05:
                continue  # maybe still being written
            # smtp-sink creates the file at MAIL FROM: only a file with its headers or one left alone is done
            token = reply_token(Path(entry.path).read_bytes())
            if token or age > 5:
                self._seen.add(entry.name)
            if token:
                with self.lock:
                    self.arrived.setdefault(token, stat.st_mtime)


async def send_paced(port: int, tokens: list[str], rate: float, sessions: int, sent_at: dict[str, float]) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    start_time = time.perf_counter()

    async def pacer() -> None:
        for index, token in enumerate(tokens):
            if rate > 0:
                delay = start_time + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await queue.put(token)
        for _ in range(sessions):
            await queue.put("")

    async def session() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"EHLO bench\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        while token := await queue.get():
            sent_at[token] = time.time()
            writer.write(b"MAIL FROM:<" + token.encode() + b"@example.org>\r\nRCPT TO:<" + RECIPIENT + b">\r\nDATA\r\n")
            for _ in range(3):
                await reader.readline()
            writer.write(mail(token) + b".\r\n")
            await reader.readline()
        writer.write(b"QUIT\r\n")
        writer.close()

    await asyncio.gather(pacer(), *(session() for _ in range(sessions)))


def run_phase(
    port: int,
    sink: ReplySink | DumpSink,
    tokens: list[str],
    rate: float,
    sessions: int,
    pids: list[int],
    timeout: float,
) -> dict[str, Any]:
    sent_at: dict[str, float] = {}
    rss: list[int] = []
    sampling = True

    def sample() -> None:
        while sampling:
            rss.append(sum(rss_kib(pid) for pid in pids))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    cpu_before = [cpu_seconds(pid) for pid in pids]
    machine_before = machine_busy_seconds()
    started_wall = time.time()
    asyncio.run(send_paced(port, tokens, rate, sessions, sent_at))
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        sink.poll()
        with sink.lock:
            if all(f"{t}@example.org" in sink.arrived for t in tokens):
                break
        # arrival times are the files' own modification times, so polling slowly loses no precision
        time.sleep(0.5)
    cpu_used = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
    machine_used = machine_busy_seconds() - machine_before
    elapsed = time.time() - started_wall
    sampling = False
    sampler.join()
    with sink.lock:
        latencies = sorted(
            sink.arrived[f"{t}@example.org"] - sent_at[t] for t in tokens if f"{t}@example.org" in sink.arrived
        )
        last = max((sink.arrived.get(f"{t}@example.org", 0.0) for t in tokens), default=0.0)
    return {
        "mails": len(tokens),
        "replied": len(latencies),
        "offered_per_s": rate or None,
        "throughput_per_s": round(len(latencies) / max(1e-9, last - started_wall), 1),
        "p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 3) if latencies else None,
        "mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
        # CPU per mail: pids[0] is the gateway, the rest are workers
        "gateway_cpu_ms_per_mail": round(cpu_used[0] * 1000 / max(1, len(tokens)), 2),
        "workers_cpu_ms_per_mail": round(sum(cpu_used[1:]) * 1000 / max(1, len(tokens)), 2),
        # the rest of the machine: load generator, relay, Redis, the kernel's loopback and disk work
        "others_cpu_ms_per_mail": round((machine_used - sum(cpu_used)) * 1000 / max(1, len(tokens)), 2),
        "machine_busy_share": round(machine_used / (elapsed * (os.cpu_count() or 1)), 2),
        "rss_kib_start": rss[0] if rss else None,
        "rss_kib_max": max(rss) if rss else None,
        "rss_kib_end": rss[-1] if rss else None,
    }


def wait_until_ready(port: int, sink: ReplySink | DumpSink, pids: list[int], workers: int) -> None:
    """Until every worker has loaded its rule set and models: a warm-up reply per worker, then the processes idle.

    The gateway listens long before a worker has trained or loaded its model (seconds with a cached model, about
    25 s without one); a phase started at the open port would measure that start-up as queueing.
    """
    warm_up = run_phase(port, sink, [f"warmup{i}" for i in range(4 * workers)], 0, 1, pids, timeout=600)
    if warm_up["replied"] < warm_up["mails"]:
        raise SystemExit(f"workers did not answer the warm-up mails: {warm_up}")
    deadline = time.perf_counter() + 300
    while time.perf_counter() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(1.0)
        if all(cpu_seconds(pid) - used < 0.05 for pid, used in zip(pids, before, strict=True)):
            return
    raise SystemExit("gateway and workers did not become idle within 300 s of the warm-up")


def _postfix_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postfix")
    return entry.pw_uid, entry.pw_gid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--saturation", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20, help="jobs per worker process at once")
    parser.add_argument("--database", help="PostgreSQL base URL (a scratch database is used); default: a SQLite file")
    parser.add_argument(
        "--relay",
        choices=["smtp-sink", "aiosmtpd"],
        default="smtp-sink",
        help="smtp-sink (Postfix, C) keeps the harness off the CPU channelshift is measured on",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cs-e2e-"))
    scratch = f"cs_e2e_{uuid.uuid4().hex[:8]}"
    if args.database:
        # a scratch database beside the given one, dropped afterwards: nothing is left behind
        with psycopg.connect(args.database, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{scratch}"')
        database = args.database.rpartition("/")[0] + f"/{scratch}"
    else:
        database = f"sqlite:///{work}/e2e.db"
    upgrade(database.replace("postgresql://", "postgresql+psycopg://"))
    redis = start_embedded_redis(work / "redis")
    relay_port, smtp_port = free_port(), free_port()
    sink: ReplySink | DumpSink
    relay_process = None
    if args.relay == "smtp-sink":
        sink = DumpSink(work / "relay")
        sink.directory.mkdir()
        smtp_sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        os.chown(sink.directory, *_postfix_ids())
        work.chmod(0o755)  # smtp-sink drops to the postfix user, which must reach the dump directory
        relay_process = start(
            [smtp_sink, "-u", "postfix", "-d", f"{sink.directory}/%H%M%S.", f"127.0.0.1:{relay_port}", "256"]
        )
        wait_port(relay_port)
    else:
        sink = ReplySink()
    # replies and originals both go to the relay sink (production sends originals over SMTP, not to a maildir)
    controller = Controller(sink, hostname="127.0.0.1", port=relay_port) if isinstance(sink, ReplySink) else None
    if controller is not None:
        controller.start()
    env = channelshift_env(
        database_url=database,
        redis_url=redis.url,
        smtp_listen=f"127.0.0.1:{smtp_port}",
        lmtp_listen="",
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        delivery_url=f"smtp://127.0.0.1:{relay_port}",
        var_dir=str(work / "var"),
        pseudonym_key="bench",
        track_clicks="false",
        max_connections_per_client="200",
        reply_daily_cap="1000",
        worker_concurrency=str(args.concurrency),
    )
    processes = [start([python(), "-m", "services", "gateway"], env=env, cwd=work)]
    processes += [start([python(), "-m", "services", "worker"], env=env, cwd=work) for _ in range(args.workers)]
    try:
        wait_port(smtp_port, timeout=180)  # gateway and workers start together: slow on a busy machine
        pids = [p.pid for p in processes]
        wait_until_ready(smtp_port, sink, pids, args.workers)
        steady_tokens = [f"steady{i}" for i in range(int(args.rate * args.seconds))]
        steady = run_phase(smtp_port, sink, steady_tokens, args.rate, 10, pids, timeout=120)
        print(f"offered {args.rate:.0f}/s for {args.seconds:.0f} s: {steady}", flush=True)
        burst_tokens = [f"burst{i}" for i in range(args.saturation)]
        saturation = run_phase(smtp_port, sink, burst_tokens, 0, 20, pids, timeout=300)
        print(f"saturation ({args.saturation} mails at once): {saturation}", flush=True)
    finally:
        for process in processes:
            stop(process)
        if controller is not None:
            controller.stop()
        if relay_process is not None:
            stop(relay_process)
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.database:
            with psycopg.connect(args.database, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    database_name = "postgresql" if args.database else "sqlite"
    print(
        save(
            f"e2e-{database_name}",
            {
                "database": database_name,
                "workers": args.workers,
                "relay": args.relay,
                "steady": steady,
                "saturation": saturation,
            },
        )
    )


if __name__ == "__main__":
    main()
