"""Build the arq Worker: job functions with retry limits, the cron sweep, leases renewed while jobs run, a drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from arq import cron
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func

from services import queue
from services.store.queries import renew_claims
from services.worker.deps import Deps
from services.worker.jobs import deliver_original, process_message, purge_expired, refresh_rollup, send_reply, sweep

log = structlog.get_logger(__name__)

# Transient send failures retry with backoff this often; the sweep re-enqueues anything beyond.
MANY_TRIES = 1000
# How often within one lease a running worker renews it: a crash is noticed within a lease, a slow renewal
# (a busy database) still has four more chances before the lease runs out.
RENEWALS_PER_LEASE = 5


class LeasedWorker(Worker):
    """arq's Worker whose running jobs hold short leases, renewed from the poll loop, and which can drain.

    arq keeps a job's in-progress key for the longest timeout of *any* function plus 10 s (here the cron jobs'
    hour), and nobody else may run the job meanwhile: a killed worker's mails waited an hour. Here the key
    lives `lease_seconds` and is renewed while the job runs, as are the reply/delivery claims its jobs hold
    (claimed_at; deps.held), so a stopped worker's work is taken over after one lease, a running one's never.
    Job timeouts stay per function (arq's `job_timeout`, the cron jobs' own).
    """

    def __init__(self, *args: Any, deps: Deps, lease_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lease_seconds
        self._deps = deps
        self._lease_ms = int(lease_seconds * 1000)
        self._renew_every = lease_seconds / RENEWALS_PER_LEASE
        self._next_renewal = 0.0

    async def heart_beat(self) -> None:
        await super().heart_beat()
        now = time.monotonic()
        if now < self._next_renewal:
            return
        self._next_renewal = now + self._renew_every
        # Claims first, keys second: after a crash the claims go stale no later than the keys expire, so the
        # job arq then runs again can take its claims over at once instead of waiting for the next sweep.
        held = self._deps.held.records()
        if held:
            try:
                await asyncio.wait_for(
                    self._deps.batcher.run(lambda uow: renew_claims(uow.session, held)), self._renew_every
                )
            except Exception as exc:  # a slow database must not let the keys run out meanwhile
                log.warning("worker.renew_failed", error=type(exc).__name__)
        running = [job_id for job_id, task in self.tasks.items() if not task.done()]
        if not running:
            return
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in running:
                # PEXPIRE leaves a key alone that finish_job deleted meanwhile
                pipe.pexpire(in_progress_key_prefix + job_id, self._lease_ms)
            await pipe.execute()

    async def drain(self, grace: float) -> tuple[int, int]:
        """Stop taking jobs; let running ones finish for up to `grace` s, then cancel the rest.

        Returns (finished, cancelled). A cancelled job gives back the claims it had not begun to transmit
        (services/worker/jobs.py), and arq queues it again with its in-progress key deleted, so the next
        worker runs it at once. The poll loop keeps running meanwhile: it renews the leases.
        """
        self.allow_pick_jobs = False
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        started = {job_id for job_id, task in self.tasks.items() if not task.done()}
        while running := [task for task in self.tasks.values() if not task.done()]:
            left = end - loop.time()
            if left <= 0:
                break
            await asyncio.wait(running, timeout=left)
        stopped = [task for task in self.tasks.values() if not task.done()]
        for task in stopped:
            task.cancel()
        await asyncio.gather(*stopped, return_exceptions=True)
        return len(started) - len(stopped), len(stopped)


def build_worker(deps: Deps, pool: ArqRedis, *, burst: bool = False, handle_signals: bool = True) -> LeasedWorker:
    """Rule hot reload (polling and SIGHUP) is run by services.runtime for every role, not by the worker."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["deps"] = deps
        if burst:
            return
        # at once, not at the first cron sweep (which only takes work older than sweep_after_seconds)
        try:
            counts = await sweep(ctx, everything=True)
            log.info("worker.startup_sweep", **counts)
        except Exception as exc:
            log.error("worker.startup_sweep_failed", error=type(exc).__name__)

    settings = deps.settings
    return LeasedWorker(
        functions=[
            func(process_message, name=queue.PROCESS, max_tries=10),
            func(send_reply, name=queue.SEND_REPLY, max_tries=MANY_TRIES),
            func(deliver_original, name=queue.DELIVER, max_tries=MANY_TRIES),
        ],
        cron_jobs=[]
        if burst
        else [
            cron(sweep, second=set(range(0, 60, settings.sweep_interval_seconds)), run_at_startup=True, unique=True),
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
        max_jobs=settings.worker_concurrency,
        job_timeout=settings.job_timeout_seconds,
        poll_delay=0.05,
        log_results=False,
        deps=deps,
        lease_seconds=settings.stale_after_seconds,
    )
