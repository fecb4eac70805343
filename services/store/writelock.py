"""One SQLite writer at a time across our processes, through a lock file that wakes the next writer at once."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine


class _ProcessSide:
    """The lock as one process holds it: its own descriptor, and a re-entrant thread lock ordering its threads."""

    def __init__(self) -> None:
        self.threads = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


class WriteLock:
    """An exclusive flock on `<database>-writer.lock`, held around a whole write transaction.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so with gateway and workers writing at once
    a third of the CPU sat idle while the lock was already free. flock() waiters are woken by the kernel the
    moment it is released. Processes that do not take this lock (another tool) are still serialised by SQLite
    itself; this lock only decides the order among those that do. The kernel releases it when its holder
    dies, even by kill -9; a holder that is stopped (SIGSTOP) holds up the others' writes, as it would hold
    SQLite's own lock.

    flock belongs to an open file description, which the threads of a process share: a re-entrant thread
    lock orders them, and one thread may nest. Each engine has its own lock (`attach_write_lock`), so two
    engines on one file exclude each other like two processes (a thread must not nest their transactions,
    which SQLite would refuse as well). A forked child inherits the parent's descriptor, which shares the
    parent's flock, and maybe a thread lock held at the fork: the first time it writes it opens its own
    descriptor and closes the inherited ones (an inherited one left open would keep a killed parent's lock).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sides: dict[int, _ProcessSide] = {}

    def _side(self) -> _ProcessSide:
        pid = os.getpid()
        side = self._sides.get(pid)
        if side is None:
            # setdefault is atomic: of two threads of a new child arriving at once, both get the same side
            side = self._sides.setdefault(pid, _ProcessSide())
        return side

    def _descriptor(self, side: _ProcessSide) -> int:
        if side.fd is None:
            for pid in [pid for pid in list(self._sides) if pid != os.getpid()]:
                inherited = self._sides.pop(pid)
                if inherited.fd is not None:
                    os.close(inherited.fd)
            side.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return side.fd

    def close(self) -> None:
        """Close the descriptors (when the engine is gone: nothing can hold the lock through it any more)."""
        for side in list(self._sides.values()):
            if side.fd is not None:
                os.close(side.fd)
        self._sides = {}

    @contextmanager
    def held(self) -> Iterator[None]:
        side = self._side()
        with side.threads:
            if side.depth == 0:
                fcntl.flock(self._descriptor(side), fcntl.LOCK_EX)
            side.depth += 1
            try:
                yield
            finally:
                side.depth -= 1
                if side.depth == 0:
                    fcntl.flock(self._descriptor(side), fcntl.LOCK_UN)


# an engine cannot carry an attribute of ours; the lock lives as long as its engine
_ENGINE_LOCKS: weakref.WeakKeyDictionary[Engine, WriteLock] = weakref.WeakKeyDictionary()


def attach_write_lock(engine: Engine) -> None:
    """Give a file-backed SQLite engine its writer lock (`make_engine` does); other engines need none."""
    database = sqlite_file(engine)
    if database is not None:
        lock = _ENGINE_LOCKS[engine] = WriteLock(database.with_name(database.name + "-writer.lock"))
        weakref.finalize(engine, lock.close)


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a file-backed SQLite engine, else None (PostgreSQL has row locks, not one lock)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def write_lock(engine: Engine) -> AbstractContextManager[None]:
    """Hold this around a write transaction; a no-op where the database has no single write lock."""
    lock = _ENGINE_LOCKS.get(engine)
    return lock.held() if lock is not None else nullcontext()
