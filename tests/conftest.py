"""Shared fixtures: embedded Redis, SQLite and PostgreSQL databases (migrated), corpus location, pipeline."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlmodel import SQLModel

from services.config import PROJECT_ROOT
from services.embedded_redis import start_embedded_redis
from services.ruleset.loader import load_rules
from services.store import models as _models  # noqa: F401  (registers every table in SQLModel.metadata)
from services.store.db import make_engine
from services.store.migrate import upgrade
from services.web.app import create_app
from tests.support import (
    ADMIN_TOKEN,
    Pipeline,
    Served,
    clean_env,
    free_port,
    start_pipeline,
    start_role,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parent.parent
# Every process of the run (this one and the service roles tests start) shares one model cache, so the intent
# model is trained once per content of routing_rules/, not once per process.
os.environ.setdefault(
    "CHANNELSHIFT_MODEL_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"channelshift-test-model-cache-{os.getuid()}")
)
load_rules(ROOT / "routing_rules", ROOT / "templates", cache_dir=Path(os.environ["CHANNELSHIFT_MODEL_CACHE_DIR"]))
# The embedding model costs 0.1-0.3 s of CPU per unsure mail: the pipeline and reliability tests run the fast
# model alone; tests/test_classification.py switches it on for the gate and the model's own tests.
os.environ.setdefault("CHANNELSHIFT_EMBEDDINGS", "off")
# every table of the schema, children before parents, so a DELETE never trips a foreign key
TABLES = tuple(table.name for table in reversed(SQLModel.metadata.sorted_tables))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    directory = Path(os.environ.get("CHANNELSHIFT_CORPUS_DIR", ROOT.parent / "shared" / "corpus"))
    if not directory.is_dir():
        pytest.skip("test corpus absent; set CHANNELSHIFT_CORPUS_DIR to ../shared/corpus")
    return directory


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's own embedded redis-server (the same code path as `channelshift serve`)."""
    server = start_embedded_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def _postgres_database(base_url: str) -> tuple[str, str]:
    name = f"cs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    prefix, _slash, _db = base_url.rpartition("/")
    return name, f"{prefix}/{name}"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/channelshift.db"
        upgrade(url)
        yield url
        return
    base = os.environ.get("CHANNELSHIFT_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL tests need CHANNELSHIFT_TEST_POSTGRES_URL")
    name, url = _postgres_database(base)
    sa_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    upgrade(sa_url)
    yield sa_url
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clean_database(database_url: str) -> str:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        for table in TABLES:
            connection.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    return database_url


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture
async def client(pipeline: Pipeline) -> AsyncIterator[TestClient[object, object]]:
    """The web app over the pipeline's database and Redis, with ADMIN_TOKEN required."""
    app = create_app(
        pipeline.settings_with(admin_token=ADMIN_TOKEN), pipeline.deps.engine, pipeline.pool, pipeline.deps.rules
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.fixture
def pipeline_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """What `pipeline` starts with beyond start_pipeline's defaults: `@pytest.mark.settings(name=value)` on the
    test, its class or module (the closest wins); a value that is a callable gets the test's tmp_path.

    Settings are frozen, so a test says what it needs before the pipeline starts instead of changing it after.
    """
    overrides: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("settings"))):
        overrides.update(marker.kwargs)
    return {name: value(tmp_path) if callable(value) else value for name, value in overrides.items()}


@pytest.fixture
async def pipeline(
    tmp_path: Path, clean_database: str, clean_redis: str, pipeline_settings: dict[str, Any]
) -> AsyncIterator[Pipeline]:
    running = await start_pipeline(tmp_path, clean_database, clean_redis, **pipeline_settings)
    yield running
    await running.close()
    await running.pool.aclose()
    running.deps.engine.dispose()


# `channelshift serve` as a subprocess on its own ports and a copy of the rules (tests/support.Served)
@pytest.fixture(params=[2.0], ids=["polling"])
def reload_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.param)


@pytest.fixture
def served_env() -> dict[str, str]:
    """More settings for the `served` process; a test module overrides this fixture to add its own."""
    return {}


@pytest.fixture
def served(tmp_path: Path, reload_seconds: float, served_env: dict[str, str]) -> Iterator[Served]:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("tests"))
    smtp_port, lmtp_port, web_port = free_port(), free_port(), free_port()
    env = clean_env()
    env.update(
        {
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "CHANNELSHIFT_LMTP_LISTEN": f"127.0.0.1:{lmtp_port}",
            "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{web_port}",
            "CHANNELSHIFT_RULES_DIR": str(rules),
            "CHANNELSHIFT_LOG_FORMAT": "json",
            "CHANNELSHIFT_RULES_RELOAD_SECONDS": str(reload_seconds),
            **served_env,
        }
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in teardown
    process = start_role("serve", env, log, tmp_path)
    try:
        wait_until_ready(web_port, [process], tmp_path / "serve.log")
    except AssertionError:
        log.close()
        raise
    yield Served(process, tmp_path / "var", rules, smtp_port, web_port)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "citizen@example.org" not in output and "Zauberwort" not in output  # no personal data in logs
