"""The SQLite writer lock: one write transaction at a time across processes and threads, none on PostgreSQL."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import Engine, text

from services.store.db import make_engine, session_scope
from services.store.models import Message
from services.store.writelock import sqlite_file, write_lock

HOLD_WRITE = """
import sys
from sqlalchemy import Engine, text
from services.store.db import make_engine, session_scope
engine = make_engine(sys.argv[1])
with session_scope(engine) as uow:
    uow.session.execute(text("UPDATE message SET state = 'held-by-child' WHERE id = 'm1'"))
    print("holding", flush=True)
    sys.stdin.readline()
"""


def _database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cs.db'}"
    engine = make_engine(url)
    Message.metadata.create_all(engine)
    with session_scope(engine) as uow:
        uow.session.execute(
            text(
                "INSERT INTO message (id, protocol, mailbox, mail_from, rcpt_tos, size, received_at, state, updated_at)"
                " VALUES ('m1', 'smtp', 'a@b', '', '[]', 0, '2026-01-01', 'received', '2026-01-01')"
            )
        )
    engine.dispose()
    return url


def test_a_writer_in_another_process_makes_ours_wait_for_the_lock_not_for_sqlite(tmp_path: Path) -> None:
    url = _database(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "holding"
        engine = make_engine(url)
        done = threading.Event()
        seen: list[str] = []

        def write() -> None:
            with session_scope(engine) as uow:
                seen.append(uow.session.execute(text("SELECT state FROM message WHERE id = 'm1'")).scalar_one())
                uow.session.execute(text("UPDATE message SET state = 'ours' WHERE id = 'm1'"))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        # our transaction has not even begun: it would otherwise have read the row before the child's commit
        assert not done.wait(0.5) and seen == []
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    assert done.wait(30)
    writer.join()
    # it began after the child committed, so it saw the child's write and overwrote it, no busy error
    assert seen == ["held-by-child"]
    with session_scope(engine) as uow:
        assert uow.session.execute(text("SELECT state FROM message WHERE id = 'm1'")).scalar_one() == "ours"
    engine.dispose()


def test_threads_of_one_process_take_turns_and_one_thread_may_nest(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cs.db'}")
    inside = threading.Event()
    leave = threading.Event()
    order: list[str] = []

    def first() -> None:
        with write_lock(engine), write_lock(engine):  # nested in one thread: no self-deadlock
            order.append("first in")
            inside.set()
            leave.wait(30)
            order.append("first out")

    def second() -> None:
        with write_lock(engine):
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(30)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.3)
    assert two.is_alive(), "the second thread got the lock while the first held it"
    leave.set()
    one.join(30)
    two.join(30)
    assert order == ["first in", "first out", "second in"]


def test_a_forked_child_does_not_share_the_parents_lock(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cs.db'}")
    read_end, write_end = os.pipe()
    with write_lock(engine):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                with write_lock(engine):
                    os.write(write_end, b"x")
            finally:
                os._exit(0)
        ready, _, _ = select.select([read_end], [], [], 0.5)
        assert ready == [], "the child took the lock while the parent held it"
    ready, _, _ = select.select([read_end], [], [], 30)
    assert ready == [read_end] and os.read(read_end, 1) == b"x"
    os.waitpid(pid, 0)
    os.close(read_end)
    os.close(write_end)


def test_only_sqlite_files_have_a_writer_lock(tmp_path: Path) -> None:
    assert sqlite_file(make_engine(f"sqlite:///{tmp_path / 'cs.db'}")) == (tmp_path / "cs.db").resolve()
    assert sqlite_file(make_engine("sqlite://")) is None
    assert sqlite_file(make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")) is None
    with write_lock(make_engine("sqlite://")):
        pass
    assert not list(tmp_path.glob("*.lock"))
    with write_lock(make_engine(f"sqlite:///{tmp_path / 'cs.db'}")):
        assert (tmp_path / "cs.db-writer.lock").exists()


def test_two_engines_on_one_file_exclude_each_other_like_two_processes(tmp_path: Path) -> None:
    one = make_engine(f"sqlite:///{tmp_path / 'cs.db'}")
    other = make_engine(f"sqlite:///{tmp_path / 'sub' / '..' / 'cs.db'}")
    taken = threading.Event()
    with write_lock(one):
        waiter = threading.Thread(target=lambda: _take(other, taken), daemon=True)
        waiter.start()
        assert not taken.wait(0.3), "the other engine got the lock while this one held it"
    assert taken.wait(30)
    waiter.join(30)


def _take(engine: Engine, taken: threading.Event) -> None:
    with write_lock(engine):
        taken.set()


HOLD_AND_FORK = """
import os, sys, time
from services.store.db import make_engine
from services.store.writelock import write_lock
engine = make_engine(sys.argv[1])
with write_lock(engine):
    if os.fork() == 0:
        # the child writes once the parent is gone: it must not keep the parent's lock through the descriptor
        # it inherited
        with write_lock(engine):
            print("child wrote", flush=True)
        os._exit(0)
    print("holding", flush=True)
    time.sleep(300)
"""


def test_a_killed_holders_lock_is_free_even_though_its_forked_child_inherited_the_descriptor(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cs.db'}"
    with subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, url], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        engine = make_engine(url)
        taken = threading.Event()
        waiter = threading.Thread(target=lambda: _take(engine, taken), daemon=True)
        waiter.start()
        assert not taken.wait(0.3)
        holder.kill()  # SIGKILL: the kernel releases its flock, unless another process still has the descriptor
        holder.wait(30)
        assert taken.wait(30), "the lock stayed held after its holder was killed"
        assert holder.stdout.readline().strip() == "child wrote"
    waiter.join(30)
