"""Build the arq Worker: job functions with retry limits, the cron sweep, and the start-up that injects deps."""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.worker import Worker, func

from services import queue
from services.worker.deps import Deps
from services.worker.jobs import deliver_original, process_message, purge_expired, refresh_rollup, send_reply, sweep

# Transient send failures retry with backoff this often; the sweep re-enqueues anything beyond.
MANY_TRIES = 1000


def build_worker(deps: Deps, pool: ArqRedis, *, burst: bool = False, handle_signals: bool = True) -> Worker:
    """Rule hot reload (polling and SIGHUP) is run by services.runtime for every role, not by the worker."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["deps"] = deps

    return Worker(
        functions=[
            func(process_message, name=queue.PROCESS, max_tries=10),
            func(send_reply, name=queue.SEND_REPLY, max_tries=MANY_TRIES),
            func(deliver_original, name=queue.DELIVER, max_tries=MANY_TRIES),
        ],
        cron_jobs=[]
        if burst
        else [
            cron(
                sweep, second=set(range(0, 60, deps.settings.sweep_interval_seconds)), run_at_startup=True, unique=True
            ),
            cron(purge_expired, hour={3}, minute={17}, second={0}, unique=True, timeout=3600),
            cron(refresh_rollup, second={30}, unique=True, timeout=3600),
        ],
        redis_pool=pool,
        queue_name=queue.QUEUE_NAME,
        burst=burst,
        handle_signals=handle_signals,
        on_startup=on_startup,
        ctx={"deps": deps},
        keep_result=0,
        max_jobs=deps.settings.worker_concurrency,
        job_timeout=deps.settings.job_timeout_seconds,
        poll_delay=0.05,
        log_results=False,
    )
