"""Ingestion: channelshift gateway vs a bare aiosmtpd handler vs Postfix's smtp-sink, in one run.

.venv/bin/python bench/bench_ingest.py [--mails 3000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ROOT, channelshift_env, free_port, python, save, start, stop, wait_port
from loadgen import run_load

from services.embedded_redis import start_embedded_redis
from services.store.migrate import upgrade


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="fewer mails and configurations")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    redis = start_embedded_redis(work / "redis")
    database = f"sqlite:///{work}/bench.db"
    upgrade(database)
    ports = {name: free_port() for name in ("smtp-sink", "aiosmtpd", "aiosmtpd-uvloop", "channelshift")}
    processes = {}
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if Path(sink).exists():
        processes["smtp-sink"] = start([sink, "-u", "postfix", f"127.0.0.1:{ports['smtp-sink']}", "256"])
    bare = str(ROOT / "bench" / "bare_aiosmtpd.py")
    processes["aiosmtpd"] = start([python(), bare, str(ports["aiosmtpd"])])
    # the gateway runs on uvloop: the same handler on uvloop shows what the event loop alone gives
    processes["aiosmtpd-uvloop"] = start([python(), bare, str(ports["aiosmtpd-uvloop"]), "--uvloop"])
    processes["channelshift"] = start(
        [python(), "-m", "services", "gateway"],
        env=channelshift_env(
            database_url=database,
            redis_url=redis.url,
            smtp_listen=f"127.0.0.1:{ports['channelshift']}",
            lmtp_listen="",
            var_dir=str(work / "var"),
            max_connections_per_client="100",
        ),
        cwd=work,
    )
    rows = []
    try:
        for name in processes:
            wait_port(ports[name])
        configurations = [(1, 3_000), (10, 3_000), (50, 3_000), (10, 50_000), (50, 50_000)]
        if args.quick:
            configurations = [(10, 3_000), (50, 3_000)]
        for sessions, size in configurations:
            mails = args.mails if size < 10_000 else args.mails // 3
            if sessions == 1:
                mails = min(mails, 1000)
            row = {"sessions": sessions, "size": size}
            for name in processes:
                result = asyncio.run(run_load("127.0.0.1", ports[name], sessions=sessions, size=size, total=mails))
                row[name] = result.as_dict()
            base = row["aiosmtpd"]["msgs_per_s"]
            row["ratio_vs_aiosmtpd"] = round(row["channelshift"]["msgs_per_s"] / base, 3) if base else None
            base_uvloop = row["aiosmtpd-uvloop"]["msgs_per_s"]
            row["ratio_vs_aiosmtpd_uvloop"] = (
                round(row["channelshift"]["msgs_per_s"] / base_uvloop, 3) if base_uvloop else None
            )
            if "smtp-sink" in row:
                row["ratio_vs_smtp_sink"] = round(row["channelshift"]["msgs_per_s"] / row["smtp-sink"]["msgs_per_s"], 3)
            rows.append(row)
            cells = []
            for name in processes:
                figures = row[name]
                cells.append(
                    f"{name} {figures['msgs_per_s']:>7.0f}/s p50 {figures['p50_ms']:.1f} p99 {figures['p99_ms']:.1f} ms"
                )
            print(f"{sessions:>3} sessions {size // 1000:>3} KB: " + "  ".join(cells), flush=True)
    finally:
        for process in processes.values():
            stop(process)
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    storage = "SQLite synchronous=FULL, WAL, group commit; one Redis enqueue per commit"
    print(save("ingest", {"storage": storage, "rows": rows}))


if __name__ == "__main__":
    main()
