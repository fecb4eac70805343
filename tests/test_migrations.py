"""Alembic migrations go up and down on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import services.store.models  # noqa: F401  (tables on the metadata)
from services.store.migrate import downgrade, upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('migrate')}/db.sqlite"
        return
    base = os.environ.get("CHANNELSHIFT_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL tests need CHANNELSHIFT_TEST_POSTGRES_URL")
    name = f"cs_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield "postgresql+psycopg://" + base.split("://", 1)[1].rpartition("/")[0] + f"/{name}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_up_down_up_matches_models(empty_database: str) -> None:
    upgrade(empty_database)
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
    downgrade(empty_database, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(empty_database)
    assert {"message", "decision", "reply", "delivery", "counter", "reply_ledger", "link_click"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()
