"""API queries over a rollup equivalent to 10 million decisions (one year): volumes and summary latency.

Measured twice in one run: from the hourly counters alone (the baseline) and with the daily rollup built, with
a few late changes pending as a running system has between two rollup runs.

.venv/bin/python bench/bench_api.py [--decisions 10000000] [--postgres postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from common import save
from sqlalchemy import insert

from services.store import reports
from services.store.db import make_engine, session_scope
from services.store.migrate import upgrade
from services.store.models import Counter
from services.store.rollup import refresh_daily_rollup

CATEGORIES = {
    "documents": "upload",
    "change_notice": "portal",
    "continued_benefits": "portal",
    "first_application": "portal",
    "appointment": "appointment",
    "sick_note": "upload",
    "objection": "legal",
    "payment_status": "phone",
    "emergency": "emergency",
    "complaint": "feedback",
    "partner": "none",
    "automated": "none",
    "general": "overview",
}
MAILBOXES = [
    "info@jobcenter-musterstadt.example",
    "leistung@jobcenter-musterstadt.example",
    "team-412@jobcenter-musterstadt.example",
]


def fill(url: str, decisions: int, end: date) -> int:
    engine = make_engine(url)
    rng = random.Random(1)
    hours = 365 * 24
    per_hour_cell = decisions / (hours * len(MAILBOXES) * len(CATEGORIES))
    start = datetime.combine(end - timedelta(days=364), datetime.min.time(), UTC)
    rows, batch = 0, []
    with engine.begin() as connection:
        for hour_index in range(hours):
            hour = start + timedelta(hours=hour_index)
            for mailbox in MAILBOXES:
                for category, channel in CATEGORIES.items():
                    received = max(0, round(rng.gauss(per_hour_cell, per_hour_cell / 3)))
                    if not received:
                        continue
                    replied = int(received * 0.85)
                    for outcome, count in (
                        ("received", received),
                        ("replied", replied),
                        ("reply-sent", replied),
                        ("delivered", received),
                        ("suppressed:already-replied", received - replied),
                    ):
                        if count:
                            batch.append(
                                {
                                    "hour": hour,
                                    "mailbox": mailbox,
                                    "category": category,
                                    "channel": channel,
                                    "outcome": outcome,
                                    "count": count,
                                }
                            )
            if len(batch) > 20_000:
                connection.execute(insert(Counter), batch)
                rows += len(batch)
                batch = []
        if batch:
            connection.execute(insert(Counter), batch)
            rows += len(batch)
    engine.dispose()
    return rows


def measure(url: str, end: date) -> dict[str, float]:
    engine = make_engine(url)
    zone = ZoneInfo("Europe/Berlin")
    month = reports.Period(end - timedelta(days=29), end, zone)
    year = reports.Period(end - timedelta(days=364), end, zone)
    cases = {
        "volumes_30d_by_category": lambda: reports.volumes(engine, month, by="category"),
        "volumes_365d_by_category_weekly": lambda: reports.volumes(engine, year, by="category", group_by="week"),
        "volumes_365d_by_channel_daily": lambda: reports.volumes(engine, year, by="channel"),
        "summary_30d": lambda: reports.summary(engine, month),
        "summary_365d": lambda: reports.summary(engine, year),
    }
    results = {}
    for name, case in cases.items():
        case()  # warm the cache, as a dashboard's second visit would
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            case()
            timings.append(time.perf_counter() - started)
        results[name] = round(statistics.median(timings) * 1000, 1)
    engine.dispose()
    return results


def with_daily_rollup(url: str, end: date) -> dict[str, object]:
    """Build the daily rollup, leave late changes pending (today, a repeat sender 20 days back), measure again."""
    engine = make_engine(url)
    started = time.perf_counter()
    refresh_daily_rollup(engine, "Europe/Berlin")
    build_s = time.perf_counter() - started
    if url.startswith("postgresql"):
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE counter_day")
    now = datetime.now(UTC)
    with session_scope(engine) as uow:
        for hour in (now, now - timedelta(days=20), now - timedelta(days=3, hours=5)):
            uow.count(hour=hour, mailbox=MAILBOXES[0], category="documents", channel="upload", outcome="repeat-7d")
    queries = measure(url, end)
    started = time.perf_counter()
    refresh_daily_rollup(engine, "Europe/Berlin")
    refresh_s = time.perf_counter() - started
    engine.dispose()
    return {"full_build_s": round(build_s, 1), "refresh_3_days_s": round(refresh_s, 3), "ms": queries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--postgres", help="base URL; a scratch database is created and dropped")
    args = parser.parse_args()
    end = date.today()
    output = {"decisions": args.decisions}
    sqlite_url = f"sqlite:///{tempfile.mkdtemp()}/api.db"
    upgrade(sqlite_url)
    started = time.perf_counter()
    output["counter_rows"] = fill(sqlite_url, args.decisions, end)
    print(
        f"filled {output['counter_rows']} counter rows for {args.decisions} decisions in "
        f"{time.perf_counter() - started:.0f} s"
    )
    output["sqlite_ms"] = measure(sqlite_url, end)
    print("SQLite, hourly counters only (ms):", output["sqlite_ms"])
    output["sqlite_daily"] = with_daily_rollup(sqlite_url, end)
    print("SQLite, with the daily rollup:", output["sqlite_daily"])
    if args.postgres:
        name = f"cs_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        url = "postgresql+psycopg://" + args.postgres.split("://", 1)[1].rpartition("/")[0] + f"/{name}"
        try:
            upgrade(url)
            fill(url, args.decisions, end)
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
                connection.execute("ANALYZE counter")
            output["postgresql_ms"] = measure(url, end)
            print("PostgreSQL, hourly counters only (ms):", output["postgresql_ms"])
            output["postgresql_daily"] = with_daily_rollup(url, end)
            print("PostgreSQL, with the daily rollup:", output["postgresql_daily"])
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(save("api", output))


if __name__ == "__main__":
    main()
