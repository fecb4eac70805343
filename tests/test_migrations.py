"""Alembic migrations go up and down on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session, SQLModel

import services.store.models  # noqa: F401  (tables on the metadata)
from services.store.migrate import downgrade, upgrade
from services.store.queries import load_message


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


def test_0004_seals_stored_mail_and_0003_opens_it_again(empty_database: str) -> None:
    upgrade(empty_database, "0003")
    engine = create_engine(empty_database)
    row = {
        "id": "a" * 32,
        "protocol": "smtp",
        "mail_from": "max@example.org",
        "rcpt_tos": '["post@jobcenter.example"]',
        "mailbox": "post@jobcenter.example",
        "size": 5,
        "raw": b"Subject: Hallo\r\n\r\nText",
        "state": "received",
    }
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO message (id, protocol, mail_from, rcpt_tos, mailbox, size, raw, state, received_at,"
                " updated_at) VALUES (:id, :protocol, :mail_from, :rcpt_tos, :mailbox, :size, :raw, :state,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            row,
        )
    upgrade(empty_database)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT raw, mail_from FROM message")).one()
    assert b"Hallo" not in bytes(stored.raw) and "max@" not in stored.mail_from
    with Session(engine) as session:
        opened = load_message(session, row["id"])
    assert opened is not None and opened.raw == row["raw"] and opened.mail_from == row["mail_from"]
    downgrade(empty_database, "0003")
    with engine.connect() as connection:
        restored = connection.execute(text("SELECT raw, mail_from FROM message")).one()
    assert bytes(restored.raw) == row["raw"] and restored.mail_from == row["mail_from"]
    engine.dispose()
