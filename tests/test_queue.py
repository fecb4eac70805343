"""Process jobs carry batches of ids: real arq workers run each batch once, and a batch is never queued twice."""

from __future__ import annotations

from typing import Any

from arq.worker import Worker, func

from services import queue


async def _run_burst(pool: Any, function: Any, name: str) -> None:
    worker = Worker(
        functions=[func(function, name=name)],
        redis_pool=pool,
        queue_name=queue.QUEUE_NAME,
        burst=True,
        handle_signals=False,
        keep_result=0,
        poll_delay=0.01,
    )
    try:
        await worker.main()
    finally:
        await worker.close()


async def test_a_group_commit_becomes_few_jobs_each_run_once_in_a_real_arq_worker(clean_redis: str) -> None:
    pool = await queue.connect(clean_redis)
    batches: list[list[str]] = []

    async def process(ctx: dict[str, Any], message_ids: list[str]) -> None:
        batches.append(message_ids)

    ids = [f"m{n}" for n in range(queue.PROCESS_BATCH + 10)]
    await queue.process_jobs_for(pool)(ids)
    assert await pool.zcard(queue.QUEUE_NAME) == 2
    # the same batch again (in another order) has the same job id: not queued twice
    assert not await queue.enqueue_batch(pool, queue.PROCESS, list(reversed(ids[: queue.PROCESS_BATCH])))
    assert await queue.enqueue_batch(pool, queue.PROCESS, ids[:3])
    assert await pool.zcard(queue.QUEUE_NAME) == 3
    ttl = await pool.pttl("arq:job:" + queue.batch_job_id(queue.PROCESS, ids[:3]))
    assert 0 < ttl <= pool.expires_extra_ms

    await _run_burst(pool, process, queue.PROCESS)
    assert sorted(len(batch) for batch in batches) == [3, 10, queue.PROCESS_BATCH]
    assert sorted(id_ for batch in batches for id_ in batch) == sorted(ids + ids[:3])
    await pool.aclose()


async def test_a_batch_of_one_is_the_per_message_job(clean_redis: str) -> None:
    """The sweep's jobs (one id each) and a group commit of one mail share the message's job id."""
    pool = await queue.connect(clean_redis)
    ran: list[Any] = []

    async def process(ctx: dict[str, Any], message_ids: Any) -> None:
        ran.append(message_ids)

    assert queue.batch_job_id(queue.PROCESS, ["m1"]) == queue.job_id(queue.PROCESS, "m1")
    await queue.process_jobs_for(pool)(["m1"])
    await queue.enqueue_each(pool, queue.PROCESS, [f"m{n}" for n in range(queue.ENQUEUES_AT_ONCE + 5)])
    assert await pool.zcard(queue.QUEUE_NAME) == queue.ENQUEUES_AT_ONCE + 5
    await _run_burst(pool, process, queue.PROCESS)
    assert ran.count(["m1"]) == 1 and "m1" not in ran
    assert len(ran) == queue.ENQUEUES_AT_ONCE + 5
    await pool.aclose()
