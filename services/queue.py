"""arq plumbing shared by gateway, worker and sweep: Redis settings, job names, deterministic job ids."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from arq.connections import ArqRedis, RedisSettings, create_pool

PROCESS = "process_message"
SEND_REPLY = "send_reply"
DELIVER = "deliver_original"
QUEUE_NAME = "channelshift:queue"
# Message ids per process job: arq's own cost (about 0.25 ms per job in worker and Redis) is shared by the
# batch, while the worker still decides them one by one (services/worker/jobs.py)
PROCESS_BATCH = 50
# enqueue_job calls in flight at once (each holds a Redis connection for its WATCH/MULTI)
ENQUEUES_AT_ONCE = 20


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = 2
    settings.conn_timeout = 2
    return settings


async def connect(url: str) -> ArqRedis:
    pool: ArqRedis = await create_pool(redis_settings(url), default_queue_name=QUEUE_NAME)
    return pool


def job_id(function: str, message_id: str) -> str:
    return f"{function}:{message_id}"


def batch_job_id(function: str, message_ids: list[str]) -> str:
    """The same ids give the same job id in any order; a batch of one has the message's own job id."""
    if len(message_ids) == 1:
        return job_id(function, message_ids[0])
    digest = hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()[:32]
    return f"{function}:batch:{digest}"


async def enqueue(pool: ArqRedis, function: str, message_id: str, *, defer: float | None = None) -> None:
    """Enqueue with a deterministic id: a job already queued or running under that id is not duplicated."""
    await pool.enqueue_job(
        function, message_id, _job_id=job_id(function, message_id), _queue_name=QUEUE_NAME, _defer_by=defer
    )


async def enqueue_batch(pool: ArqRedis, function: str, message_ids: list[str]) -> bool:
    """One job carrying a list of message ids, under the batch's deterministic id; False if it already exists."""
    job = await pool.enqueue_job(
        function, message_ids, _job_id=batch_job_id(function, message_ids), _queue_name=QUEUE_NAME
    )
    return job is not None


async def enqueue_each(pool: ArqRedis, function: str, message_ids: list[str]) -> None:
    """A job per message id (as `enqueue`), a few at a time."""
    for start in range(0, len(message_ids), ENQUEUES_AT_ONCE):
        chunk = message_ids[start : start + ENQUEUES_AT_ONCE]
        await asyncio.gather(*(enqueue(pool, function, message_id) for message_id in chunk))


def process_jobs_for(pool: ArqRedis) -> Callable[[list[str]], Awaitable[None]]:
    """The gateway's enqueue callback: a group commit's message ids as process jobs of up to PROCESS_BATCH ids."""

    async def enqueue(message_ids: list[str]) -> None:
        batches = [message_ids[start : start + PROCESS_BATCH] for start in range(0, len(message_ids), PROCESS_BATCH)]
        await asyncio.gather(*(enqueue_batch(pool, PROCESS, batch) for batch in batches))

    return enqueue
