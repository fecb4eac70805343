"""arq plumbing shared by gateway, worker and sweep: Redis settings, job names, deterministic job ids."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool

PROCESS = "process_message"
SEND_REPLY = "send_reply"
DELIVER = "deliver_original"
QUEUE_NAME = "channelshift:queue"


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


async def enqueue(pool: ArqRedis, function: str, message_id: str, *, defer: float | None = None) -> None:
    """Enqueue with a deterministic id: a job already queued or running under that id is not duplicated."""
    await pool.enqueue_job(
        function, message_id, _job_id=job_id(function, message_id), _queue_name=QUEUE_NAME, _defer_by=defer
    )
