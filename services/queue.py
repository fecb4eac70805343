"""arq plumbing shared by gateway, worker and sweep: Redis settings, job names, deterministic job ids."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript

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


# arq's enqueue_job for many jobs in one round trip, with the same effect per job: skipped if its job or result
# key exists, else job key (with arq's expiry) and queue entry written together (atomic, as arq's MULTI is).
_ENQUEUE_MANY = """
local added = 0
for n = 1, (#KEYS - 1) / 2 do
  local job_key, result_key = KEYS[2 * n], KEYS[2 * n + 1]
  if redis.call('EXISTS', job_key, result_key) == 0 then
    redis.call('PSETEX', job_key, ARGV[1], ARGV[2 + 2 * n])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1 + 2 * n])
    added = added + 1
  end
end
return added
"""


_scripts: weakref.WeakKeyDictionary[ArqRedis, AsyncScript] = weakref.WeakKeyDictionary()


async def enqueue_many(pool: ArqRedis, function: str, message_ids: list[str]) -> int:
    """Enqueue one job per message id (deterministic ids, as `enqueue`) in one Redis call; returns how many were new.

    The job payload is arq's own serialisation, so arq workers run these jobs exactly like enqueue_job's.
    """
    if not message_ids:
        return 0
    now = timestamp_ms()
    keys: list[str] = [QUEUE_NAME]
    args: list[Any] = [pool.expires_extra_ms, now]
    for message_id in message_ids:
        identifier = job_id(function, message_id)
        keys += [job_key_prefix + identifier, result_key_prefix + identifier]
        args += [identifier, serialize_job(function, (message_id,), {}, None, now, serializer=pool.job_serializer)]
    script = _scripts.get(pool)
    if script is None:
        script = _scripts[pool] = pool.register_script(_ENQUEUE_MANY)
    # EVALSHA (redis-py loads the script again after NOSCRIPT): the script text is not resent per batch
    added = await script(keys=keys, args=args)
    return int(added)


def process_jobs_for(pool: ArqRedis) -> Callable[[list[str]], Awaitable[None]]:
    """The gateway's enqueue callback: a process job per committed message id, one Redis call per group commit."""

    async def enqueue(message_ids: list[str]) -> None:
        await enqueue_many(pool, PROCESS, message_ids)

    return enqueue
