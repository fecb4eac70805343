"""Purge cost per run against the purged history: 0 and 1 M purged rows, with and without ix_message_unpurged.

Each measured run purges `--batch-runs` x 1,000 fresh rows (old, delivered, not purged) through
services.store.purge.purge. The baseline is the same code on the schema as at migration 0008 (the partial index
dropped), measured in the same invocation on the same database, so only the ratio carries over.

.venv/bin/python bench/bench_purge.py [--history 1000000] [--runs 5] [--postgres postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, bindparam, text
from sqlmodel import SQLModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.store.db import make_engine  # noqa: E402
from services.store.models import Message  # noqa: E402
from services.store.purge import BATCH, purge  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
RETENTION_DAYS = 30
RECENT_ROWS = 20_000  # within retention: not purged, never candidates
_MOMENT = Message.__table__.c.received_at.type  # type: ignore[attr-defined]  # as the models write it


def _series(engine: Engine, count: int) -> str:
    """A FROM clause yielding `n` = 1..count, set-based on both databases."""
    if engine.dialect.name == "postgresql":
        return f"generate_series(1, {count}) AS s(n)"
    return f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) SELECT n FROM s)"


def _insert(engine: Engine, count: int, *, received_at: datetime, purged: bool, tag: str) -> None:
    """`count` delivered messages; ids are unique per tag and random-looking like the gateway's."""
    if count == 0:
        return
    hexid = "md5(:tag || n::text)" if engine.dialect.name == "postgresql" else "lower(hex(randomblob(16)))"
    raw = "NULL" if purged else ("decode('00', 'hex')" if engine.dialect.name == "postgresql" else "x'00'")
    rcpt = "'[]'::json" if engine.dialect.name == "postgresql" else "'[]'"
    statement = text(
        "INSERT INTO message (id, received_at, updated_at, protocol, mail_from, rcpt_tos, mailbox, size, raw, state,"
        f" purged_at) SELECT {hexid}, :received, :received, 'smtp', '', {rcpt}, 'info@example.org', 1, {raw},"
        f" 'delivered', :purged_at FROM {_series(engine, count)}"
    ).bindparams(bindparam("received", type_=_MOMENT), bindparam("purged_at", type_=_MOMENT))
    with engine.begin() as connection:
        connection.execute(
            statement, {"tag": f"{tag}-", "received": received_at, "purged_at": received_at if purged else None}
        )


def _analyze(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))


def _set_index(engine: Engine, present: bool) -> None:
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX IF EXISTS ix_message_unpurged"))
        if present:
            connection.execute(
                text("CREATE INDEX ix_message_unpurged ON message (state, received_at) WHERE purged_at IS NULL")
            )
    _analyze(engine)


def _measure(engine: Engine, runs: int, batch_runs: int, tag: str) -> list[float]:
    seconds = []
    for run in range(runs):
        _insert(engine, BATCH * batch_runs, received_at=NOW - timedelta(days=60), purged=False, tag=f"{tag}{run}")
        start = time.perf_counter()
        result = purge(engine, RETENTION_DAYS, now=NOW)
        seconds.append(time.perf_counter() - start)
        assert result.messages == BATCH * batch_runs, result
    return seconds


def bench(engine: Engine, history: int, runs: int, batch_runs: int) -> dict[str, Any]:
    SQLModel.metadata.drop_all(engine)
    SQLModel.metadata.create_all(engine)
    _insert(engine, RECENT_ROWS, received_at=NOW - timedelta(days=1), purged=False, tag="recent")
    figures: dict[str, Any] = {}
    for rows in (0, history):
        if rows:
            start = time.perf_counter()
            _insert(engine, rows, received_at=NOW - timedelta(days=90), purged=True, tag="history")
            print(f"  {rows:,} purged rows inserted in {time.perf_counter() - start:.1f} s", flush=True)
        for present in (False, True):
            _set_index(engine, present)
            name = "unpurged index" if present else "baseline (0008)"
            seconds = _measure(engine, runs, batch_runs, f"{rows}-{present}-")
            median = statistics.median(seconds)
            figures[f"{rows}/{'new' if present else 'baseline'}"] = {"median_s": median, "runs_s": seconds}
            print(f"  {rows:>9,} purged, {name:<16}: {median * 1000:8.1f} ms per run (median of {runs})", flush=True)
    for variant in ("baseline", "new"):
        figures[f"growth/{variant}"] = figures[f"{history}/{variant}"]["median_s"] / figures[f"0/{variant}"]["median_s"]
    figures["ratio_at_history"] = figures[f"{history}/baseline"]["median_s"] / figures[f"{history}/new"]["median_s"]
    print(
        f"  growth 0 -> {history:,}: baseline {figures['growth/baseline']:.2f}x, new {figures['growth/new']:.2f}x;"
        f" at {history:,} the new index is {figures['ratio_at_history']:.1f}x faster",
        flush=True,
    )
    return figures


def _postgres_scratch(base: str) -> tuple[str, str]:
    name = f"cs_bench_purge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name, "postgresql+psycopg://" + base.split("://", 1)[1].rpartition("/")[0] + f"/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=1_000_000, help="purged rows already in the table")
    parser.add_argument("--runs", type=int, default=5, help="measured purge runs per variant")
    parser.add_argument("--batch-runs", type=int, default=2, help="batches of 1,000 rows each run purges")
    parser.add_argument("--postgres", help="also on PostgreSQL (a scratch database is created beside this one)")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": platform.node(),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "history": args.history,
        "rows_per_run": BATCH * args.batch_runs,
    }
    with tempfile.TemporaryDirectory() as scratch:
        print("SQLite", flush=True)
        engine = make_engine(f"sqlite:///{scratch}/purge.sqlite")
        results["sqlite"] = bench(engine, args.history, args.runs, args.batch_runs)
        engine.dispose()
    if args.postgres:
        print("PostgreSQL", flush=True)
        name, url = _postgres_scratch(args.postgres)
        try:
            engine = make_engine(url)
            results["postgresql"] = bench(engine, args.history, args.runs, args.batch_runs)
            engine.dispose()
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "purge.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
