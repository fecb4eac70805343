"""Shared bench helpers: free ports, starting and stopping target processes, writing results."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadgen import RECIPIENT

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Output is dropped unless CHANNELSHIFT_BENCH_LOG names a file to append it to."""
    log_file = os.environ.get("CHANNELSHIFT_BENCH_LOG")
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores together have spent busy so far: everything in /proc/stat but idle and iowait."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def channelshift_env(**values: str) -> dict[str, str]:
    # the model cache (a cold start trains for about 25 s) and the embeddings switch are the caller's choice
    kept = ("CHANNELSHIFT_MODEL_CACHE_DIR", "CHANNELSHIFT_EMBEDDINGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNELSHIFT_") or k in kept}
    env.update({f"CHANNELSHIFT_{k.upper()}": v for k, v in values.items()})
    env["CHANNELSHIFT_LOG_LEVEL"] = os.environ.get("CHANNELSHIFT_BENCH_LOG_LEVEL", "WARNING")
    return env


def python() -> str:
    return sys.executable


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def bench_mail(token: str) -> bytes:
    """The 3.5 KB German question the end-to-end and worker benches send; its sender and id carry `token`."""
    return (
        b"From: " + token.encode() + b"@example.org\r\nTo: " + RECIPIENT + b"\r\nSubject: Frage\r\n"
        b"Message-ID: <" + token.encode() + b"@example.org>\r\n\r\n"
        b"Guten Tag, wann haben Sie geoeffnet? Ich habe eine Frage zu meinem Antrag.\r\n" * 40
    )
