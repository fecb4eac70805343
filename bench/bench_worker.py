"""Worker CPU per mail in one process: stored bench mails through process_message, relay replaced by a no-op.

No network, no arq, no other process on the CPU: the figure moves only with the worker's own code (parse,
classify, decide, record, compose, the outcome writes), so it shows what a change to that code is worth.
With --against REV the same measurement runs alternately on a checkout of REV (a temporary git worktree),
and the result is the ratio between the two in this one run.

    .venv/bin/python bench/bench_worker.py [--mails 1000] [--against 97abed0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import ROOT, bench_mail, channelshift_env, python, save  # noqa: E402
from loadgen import RECIPIENT  # noqa: E402


def child(mails: int, concurrency: int) -> None:
    """Runs with PYTHONPATH at the tree under test; prints one JSON line.

    Nothing imported here may put this tree on sys.path (bench_e2e does): `services` must come from PYTHONPATH.
    """
    import structlog
    import uvloop

    from services.config import Settings
    from services.store.migrate import upgrade
    from services.store.models import utcnow
    from services.store.queries import store_messages
    from services.worker.deps import Deps
    from services.worker.jobs import process_message

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    lock_held = _time_the_write_lock()

    class NullSender:
        async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None:
            return None

        async def close(self) -> None:
            return None

    async def run() -> dict[str, float]:
        work = Path(tempfile.mkdtemp(prefix="cs-worker-"))
        try:
            url = f"sqlite:///{work}/worker.db"
            upgrade(url)
            settings = Settings(
                database_url=url,
                var_dir=str(work / "var"),
                pseudonym_key="bench",
                track_clicks=False,
                reply_daily_cap=1_000_000,
                hostname="gateway.bench",
            )
            deps = Deps.build(settings)
            deps.reply_sender = deps.delivery_sender = NullSender()
            warm_up = 200
            now = utcnow()
            rows = [
                {
                    "id": os.urandom(16).hex(),
                    "received_at": now,
                    "updated_at": now,
                    "protocol": "smtp",
                    "mail_from": f"sender{index}@example.org",
                    "rcpt_tos": [RECIPIENT.decode()],
                    "mailbox": RECIPIENT.decode(),
                    "size": 3000,
                    "raw": bench_mail(f"sender{index}"),
                    "state": "received",
                    "purged_at": None,
                }
                for index in range(mails + warm_up)
            ]
            store_messages(deps.engine, rows)
            context: dict[str, Any] = {"deps": deps, "redis": None}
            slots = asyncio.Semaphore(concurrency)

            async def one(message_id: str) -> None:
                async with slots:
                    await process_message(context, message_id)

            ids = [str(row["id"]) for row in rows]
            await asyncio.gather(*(one(message_id) for message_id in ids[:warm_up]))
            cpu, wall, held = time.process_time(), time.perf_counter(), lock_held[0]
            await asyncio.gather(*(one(message_id) for message_id in ids[warm_up:]))
            cpu, wall, held = time.process_time() - cpu, time.perf_counter() - wall, lock_held[0] - held
            await deps.close()
            return {
                "cpu_ms_per_mail": round(1000 * cpu / mails, 3),
                "wall_ms_per_mail": round(1000 * wall / mails, 3),
                "lock_ms_per_mail": round(1000 * held / mails, 3),
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)

    uvloop.install()
    print(json.dumps(asyncio.run(run())), flush=True)


def _time_the_write_lock() -> list[float]:
    """CPU seconds of the threads holding the SQLite writer lock, while they hold it, summed.

    The holder's own CPU (thread_time), not the wall time: on a busy machine a holder is descheduled at random,
    so wall time measures the machine. Every tree since the lock file has `WriteLock.held`.
    """
    from services.store import writelock

    held_s = [0.0]
    hold = writelock.WriteLock.held

    @contextlib.contextmanager
    def timed(self: Any) -> Iterator[None]:
        with hold(self):
            started = time.thread_time()
            try:
                yield
            finally:
                held_s[0] += time.thread_time() - started

    writelock.WriteLock.held = timed  # type: ignore[method-assign]
    return held_s


def measure(tree: Path, mails: int, concurrency: int) -> dict[str, float]:
    env = channelshift_env()
    env["PYTHONPATH"] = str(tree)
    output = subprocess.run(
        [python(), str(BENCH / "bench_worker.py"), "--child", "--mails", str(mails), "--concurrency", str(concurrency)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20, help="jobs at once, as a worker's max_jobs")
    parser.add_argument("--against", help="git revision to measure alternately as the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.mails, args.concurrency)
        return
    baseline_tree = None
    if args.against:
        baseline_tree = Path(tempfile.mkdtemp(prefix="cs-baseline-")) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline_tree), args.against], check=True
        )
    try:
        current: list[float] = []
        baseline: list[float] = []
        current_lock: list[float] = []
        baseline_lock: list[float] = []
        for round_number in range(1, args.rounds + 1):
            ours = measure(ROOT, args.mails, args.concurrency)
            current.append(ours["cpu_ms_per_mail"])
            current_lock.append(ours["lock_ms_per_mail"])
            line = f"round {round_number}: this tree {current[-1]:.2f} ms (lock {current_lock[-1]:.2f} ms)"
            if baseline_tree is not None:
                theirs = measure(baseline_tree, args.mails, args.concurrency)
                baseline.append(theirs["cpu_ms_per_mail"])
                baseline_lock.append(theirs["lock_ms_per_mail"])
                line += f", {args.against} {baseline[-1]:.2f} ms (lock {baseline_lock[-1]:.2f} ms)"
            print(line + " of CPU per mail (lock: the holder's CPU while it holds the writer lock)", flush=True)
    finally:
        if baseline_tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)], check=False)
            shutil.rmtree(baseline_tree.parent, ignore_errors=True)
    payload: dict[str, Any] = {
        "mails": args.mails,
        "concurrency": args.concurrency,
        "cpu_ms_per_mail": current,
        "lock_ms_per_mail": current_lock,
    }
    summary = f"median {statistics.median(current):.2f} ms of CPU per mail"
    summary += f", the SQLite writer lock held for {statistics.median(current_lock):.2f} ms of CPU per mail"
    if baseline:
        ratio = statistics.median(baseline) / statistics.median(current)
        lock_ratio = statistics.median(baseline_lock) / statistics.median(current_lock)
        payload |= {
            "against": args.against,
            "baseline_cpu_ms_per_mail": baseline,
            "baseline_lock_ms_per_mail": baseline_lock,
            "speedup": round(ratio, 2),
            "lock_ratio": round(lock_ratio, 2),
        }
        summary += f"; against {statistics.median(baseline):.2f} ms at {args.against}: {ratio:.2f}x as fast"
        summary += f", for {statistics.median(baseline_lock):.2f} ms there: {lock_ratio:.2f}x as short"
    print(summary)
    print(save("worker", payload))


if __name__ == "__main__":
    main()
