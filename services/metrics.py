"""Process-local Prometheus metrics (latencies); business counters come from the database rollup instead."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

JOB_SECONDS = Histogram(
    "channelshift_job_duration_seconds",
    "Duration of worker jobs in this process, by job.",
    ["job"],
    registry=PROCESS_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
STORE_SECONDS = Histogram(
    "channelshift_gateway_store_seconds",
    "Time from end of DATA to the durable write of a message, in this process.",
    registry=PROCESS_REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

DELIVERY_ATTEMPTS = Counter(
    "channelshift_delivery_attempts",
    "Attempts to hand a mail to staff in this process: the original or its wrapper, and how each ended.",
    ["form", "result"],
    registry=PROCESS_REGISTRY,
)


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(*labels) if labels else histogram).observe(time.perf_counter() - start)
