"""One SQLite writer at a time across our processes, through a lock file that wakes the next writer at once."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine


class WriteLock:
    """An exclusive flock on `<database>-writer.lock`, held around a whole write transaction.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so with gateway and workers writing at once
    a third of the CPU sat idle while the lock was already free. flock() waiters are woken by the kernel the
    moment it is released. Processes that do not take this lock (another tool) are still serialised by SQLite
    itself; this lock only decides the order among those that do. The kernel releases it when its holder
    dies, even by kill -9; a holder that is stopped (SIGSTOP) holds up the others' writes, as it would hold
    SQLite's own lock.

    flock belongs to an open file description, which the threads of a process share: a re-entrant thread
    lock orders them. A forked child starts with new locks (see `_forget_after_fork`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            if self._depth == 0:
                fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._descriptor(), fcntl.LOCK_UN)


_locks: dict[str, WriteLock | None] = {}  # by the engine's database as written; None: no lock
_by_file: dict[Path, WriteLock] = {}  # one per file: two descriptors of one process would exclude each other
_locks_guard = threading.Lock()


def _forget_after_fork() -> None:
    # the inherited descriptors share the parent's lock, and a lock held at fork time would look held
    global _locks_guard
    _locks.clear()
    _by_file.clear()
    _locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


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
    key = f"{engine.dialect.name}:{engine.url.database}"
    lock = _locks.get(key)
    if lock is None and key not in _locks:
        # resolving the path costs system calls: once per database, not once per transaction
        database = sqlite_file(engine)
        with _locks_guard:
            if database is not None and database not in _by_file:
                _by_file[database] = WriteLock(database.with_name(database.name + "-writer.lock"))
            lock = _locks.setdefault(key, _by_file[database] if database is not None else None)
    return lock.held() if lock is not None else nullcontext()
