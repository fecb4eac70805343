"""Batched enqueue: arq workers run the jobs exactly like enqueue_job's, and a job id is never queued twice."""

from __future__ import annotations

from typing import Any

from arq.worker import Worker, func

from services import queue


async def test_enqueue_many_jobs_run_once_each_in_a_real_arq_worker(clean_redis: str) -> None:
    pool = await queue.connect(clean_redis)
    ran: list[str] = []

    async def process(ctx: dict[str, Any], message_id: str) -> None:
        ran.append(message_id)

    ids = [f"m{n}" for n in range(50)]
    assert await queue.enqueue_many(pool, queue.PROCESS, ids[:30]) == 30
    # a restarted Redis has lost its script cache: the script is loaded again, nothing fails
    await pool.script_flush()
    # already queued ids are skipped, as arq's enqueue_job skips an existing job id
    assert await queue.enqueue_many(pool, queue.PROCESS, ids) == 20
    await queue.enqueue(pool, queue.PROCESS, "m0")
    assert await pool.zcard(queue.QUEUE_NAME) == 50
    ttl = await pool.pttl("arq:job:" + queue.job_id(queue.PROCESS, "m1"))
    assert 0 < ttl <= pool.expires_extra_ms

    worker = Worker(
        functions=[func(process, name=queue.PROCESS)],
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
    assert sorted(ran) == sorted(ids)
    assert await queue.enqueue_many(pool, queue.PROCESS, []) == 0
    await pool.aclose()
