"""Purged means unreadable: after purge, neither database's files hold the addresses, words or keys of that mail."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from services.store.models import MessageKey
from services.store.purge import purge
from services.store.queries import opened_messages
from tests.support import SERVED, Pipeline, make_mail, send


def _database_files(engine: Engine) -> tuple[list[Path], list[Path]]:
    """(the database's own files, its write-ahead log files), after everything reached them."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            path = Path(str(engine.url.database))
            return [path], [p for p in (Path(f"{path}-wal"),) if p.exists()]
        connection.execute(text("VACUUM"))
        connection.execute(text("CHECKPOINT"))
        data_directory = Path(connection.execute(text("SHOW data_directory")).scalar_one())
        oid = connection.execute(text("SELECT oid FROM pg_database WHERE datname = current_database()")).scalar_one()
    heap = [p for p in (data_directory / "base" / str(oid)).iterdir() if p.is_file()]
    wal = [p for p in (data_directory / "pg_wal").iterdir() if p.is_file()]
    return heap, wal


def _found(needles: list[bytes], files: list[Path]) -> list[bytes]:
    contents = [path.read_bytes() for path in files]
    return [needle for needle in needles if any(needle in content for content in contents)]


async def test_purge_leaves_no_readable_personal_data(pipeline: Pipeline) -> None:
    engine = pipeline.deps.engine
    server, port = await pipeline.extra_gateway(demo_dates=True)
    old = datetime.now(UTC) - timedelta(days=45)
    marks: list[bytes] = []
    for _ in range(12):
        sender = f"qz{secrets.token_hex(5)}@example.org"
        word = f"kontoauszug{secrets.token_hex(5)}"
        data = make_mail(
            subject=f"Unterlagen {word}",
            body=f"Anbei die Unterlagen {word}, bitte bestaetigen.",
            sender=sender,
            headers={"X-Channelshift-Demo-Received": old.isoformat()},
        )
        await send(port, sender, [SERVED], data)
        marks += [sender.encode(), word.encode()]
    server.close()
    await pipeline.work()
    with Session(engine) as session:
        keys = [row.data_key for row in session.exec(select(MessageKey))]
        opened = opened_messages(session)
    assert len(keys) == 12 and all(m.raw and m.mail_from for m in opened)  # readable before

    # the check can fail: a value written in clear is found in the same files
    probe = f"probe{secrets.token_hex(6)}".encode()
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE purge_probe (value VARCHAR(64))"))
        connection.execute(text("INSERT INTO purge_probe VALUES (:value)"), {"value": probe.decode()})
    heap, wal = _database_files(engine)
    assert _found([probe], heap) == [probe]

    assert purge(engine, 30).messages == 12
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE purge_probe"))
    heap, wal = _database_files(engine)
    assert _found(marks, heap + wal) == []  # never written in clear, not even to the log
    assert _found(keys, heap) == []  # and the keys that opened them are gone from the tables' files
    with Session(engine) as session:
        assert all(m.raw is None and m.mail_from == "" for m in opened_messages(session))
