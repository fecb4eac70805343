"""Build the arq Worker: functions, cron sweep, start-up that builds deps, rule hot reload and SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog
from arq import cron
from arq.connections import ArqRedis
from arq.worker import Worker, func

from services import queue
from services.worker.deps import Deps
from services.worker.jobs import deliver_original, process_message, send_reply, sweep

log = structlog.get_logger(__name__)
RELOAD_INTERVAL_SECONDS = 2.0


async def _watch_rules(deps: Deps) -> None:
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
        try:
            await asyncio.to_thread(deps.rules.refresh)
        except Exception as exc:
            log.error("rules.watch_failed", error=type(exc).__name__)


def build_worker(
    deps: Deps,
    pool: ArqRedis,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    max_jobs: int = 20,
    watch_rules: bool = True,
) -> Worker:
    tasks: list[asyncio.Task[None]] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["deps"] = deps
        if watch_rules:
            tasks.append(asyncio.create_task(_watch_rules(deps)))
        if handle_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: deps.rules.refresh(force=True))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    many_tries = 1000  # transient failures retry with backoff; the sweep covers anything beyond
    return Worker(
        functions=[
            func(process_message, name=queue.PROCESS, max_tries=10),
            func(send_reply, name=queue.SEND_REPLY, max_tries=many_tries),
            func(deliver_original, name=queue.DELIVER, max_tries=many_tries),
        ],
        cron_jobs=[cron(sweep, second={0, 30}, run_at_startup=True, unique=True)] if not burst else [],
        redis_pool=pool,
        queue_name=queue.QUEUE_NAME,
        burst=burst,
        handle_signals=handle_signals,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        ctx={"deps": deps},
        keep_result=0,
        max_jobs=max_jobs,
        job_timeout=300,
        poll_delay=0.05,
        log_results=False,
    )
