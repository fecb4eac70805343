"""Process-local Prometheus metrics (latencies); business counters come from the database rollup instead."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

# The gateway's DATA budget (services/gateway/spool.py); a gateway process serves them on its health listener.
INFLIGHT_BYTES = Gauge(
    "channelshift_gateway_inflight_bytes",
    "Bytes of unfinished DATA reserved in this process (in RAM or spooled), against CHANNELSHIFT_MAX_INFLIGHT_BYTES.",
    registry=PROCESS_REGISTRY,
)
COMMIT_BYTES = Gauge(
    "channelshift_gateway_commit_bytes",
    "Bytes of spooled mail read back into RAM for their durable write now, against CHANNELSHIFT_MAX_COMMIT_BYTES.",
    registry=PROCESS_REGISTRY,
)
INSUFFICIENT_STORAGE = Counter(
    "channelshift_gateway_insufficient_storage",
    "452 4.3.1 answers of this process: declared SIZE did not fit, the data crossed the cap, or the spool failed.",
    ["reason"],
    registry=PROCESS_REGISTRY,
)
INSUFFICIENT_STORAGE_REASONS = ("declared-size", "data-crossed-cap", "spool-write-failed")
for _reason in INSUFFICIENT_STORAGE_REASONS:
    INSUFFICIENT_STORAGE.labels(_reason)  # present at 0 from the start, so rate() sees the first one


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(*labels) if labels else histogram).observe(time.perf_counter() - start)
