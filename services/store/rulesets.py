"""The rule-set history in the database: record an activated set once per version, read versions and files back."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from services.filediff import DIFFED, changes, sha256, text_diff
from services.store.db import session_scope
from services.store.models import RuleSetBlob, RuleSetFile, RuleSetVersion, utcnow

# blobs go in in small transactions of their own (content-addressed, so a leftover costs nothing), which keeps
# the SQLite writer lock short even when 2,000 examples are recorded for the first time
BLOB_BATCH_BYTES = 2_000_000


@dataclass(frozen=True)
class VersionInfo:
    version: str
    activated_at: datetime
    activated_by: str
    previous_version: str | None
    model_checked: bool
    file_count: int
    changed: list[dict[str, str]]
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "activated_at": self.activated_at.isoformat(),
            "activated_by": self.activated_by,
            "previous_version": self.previous_version,
            "model_checked": self.model_checked,
            "file_count": self.file_count,
            "changed": self.changed,
            "warnings": self.warnings,
        }


def _info(row: RuleSetVersion) -> VersionInfo:
    return VersionInfo(
        row.version,
        row.activated_at,
        row.activated_by,
        row.previous_version,
        row.model_checked,
        row.file_count,
        list(row.changed),
        list(row.warnings),
    )


def _insert_ignoring_duplicates(session: Session, table: Any, rows: Sequence[Mapping[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL: another process may record the same row."""
    if not rows:
        return 0
    target: Table = table.__table__
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    key = next(iter(target.primary_key.columns))
    # RETURNING, not rowcount: a driver may report -1 for a multi-row INSERT
    statement = insert(target).values(list(rows)).on_conflict_do_nothing().returning(key)
    return len(session.execute(statement).all())


class RuleSetStore:
    """Every rule set that became active in any process; the newest of them is the last good set."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        version: str,
        snapshot: Callable[[], Mapping[str, bytes] | None],
        *,
        activated_by: str,
        warnings: Sequence[str] = (),
        model_checked: bool = False,
    ) -> bool:
        """Record `version` unless it is recorded already; True when this call added it.

        `snapshot` reads the set's files only when the version is new (None: they changed meanwhile, skip).

        Safe when several processes activate the same version at once: every insert ignores a row that
        another process has just written, and a version's row and its file list are one transaction.
        """
        with Session(self.engine) as session:
            existing = session.get(RuleSetVersion, version)
            if existing is not None:
                if model_checked and not existing.model_checked:
                    self._mark_model_checked(version)
                return False
        files = snapshot()
        if files is None:
            return False
        hashes = {path: sha256(data) for path, data in files.items()}
        self._store_blobs(files, hashes)
        with session_scope(self.engine) as uow:
            previous = uow.session.exec(
                select(RuleSetVersion).order_by(col(RuleSetVersion.activated_at).desc()).limit(1)
            ).first()
            previous_hashes = self._hashes(uow.session, previous.version) if previous is not None else None
            row = {
                "version": version,
                "activated_at": utcnow(),
                "activated_by": activated_by[:32],
                "previous_version": previous.version if previous is not None else None,
                "model_checked": model_checked,
                "file_count": len(files),
                "changed": [c.as_dict() for c in changes(previous_hashes, hashes)],
                "warnings": list(warnings),
            }
            if not _insert_ignoring_duplicates(uow.session, RuleSetVersion, [row]):
                return False  # another process recorded it between our check and now, with its files
            file_rows = [
                {"version": version, "path": path, "sha256": digest, "size": len(files[path])}
                for path, digest in sorted(hashes.items())
            ]
            _insert_ignoring_duplicates(uow.session, RuleSetFile, file_rows)
        return True

    def _mark_model_checked(self, version: str) -> None:
        with session_scope(self.engine) as uow:
            uow.session.execute(
                update(RuleSetVersion).where(col(RuleSetVersion.version) == version).values(model_checked=True)
            )

    def _store_blobs(self, files: Mapping[str, bytes], hashes: Mapping[str, str]) -> None:
        wanted: dict[str, bytes] = {hashes[path]: data for path, data in files.items()}
        with Session(self.engine) as session:
            known: set[str] = set()
            digests = list(wanted)
            for start in range(0, len(digests), 500):
                chunk = digests[start : start + 500]
                known.update(session.exec(select(RuleSetBlob.sha256).where(col(RuleSetBlob.sha256).in_(chunk))).all())
        batch: list[dict[str, Any]] = []
        size = 0
        for digest, data in wanted.items():
            if digest in known:
                continue
            batch.append({"sha256": digest, "content": data})
            size += len(data)
            if size >= BLOB_BATCH_BYTES:
                self._insert_blobs(batch)
                batch, size = [], 0
        self._insert_blobs(batch)

    def _insert_blobs(self, batch: list[dict[str, Any]]) -> None:
        if batch:
            with session_scope(self.engine) as uow:
                _insert_ignoring_duplicates(uow.session, RuleSetBlob, batch)

    @staticmethod
    def _hashes(session: Session, version: str) -> dict[str, str]:
        rows = session.exec(select(RuleSetFile.path, RuleSetFile.sha256).where(RuleSetFile.version == version)).all()
        return dict(rows)

    def versions(self, limit: int = 100) -> list[VersionInfo]:
        """Newest first."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(RuleSetVersion).order_by(col(RuleSetVersion.activated_at).desc()).limit(limit)
            ).all()
            return [_info(row) for row in rows]

    def version(self, version: str) -> VersionInfo | None:
        with Session(self.engine) as session:
            row = session.get(RuleSetVersion, version)
            return _info(row) if row is not None else None

    def latest_good(self, *, model_checked: bool) -> VersionInfo | None:
        """The newest recorded set; with `model_checked`, the newest one a model-training process has loaded."""
        with Session(self.engine) as session:
            query = select(RuleSetVersion)
            if model_checked:
                query = query.where(col(RuleSetVersion.model_checked).is_(True))
            row = session.exec(query.order_by(col(RuleSetVersion.activated_at).desc()).limit(1)).first()
            return _info(row) if row is not None else None

    def file_list(self, version: str) -> list[dict[str, Any]]:
        """A version's files without their contents: path, hash, size."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(RuleSetFile.path, RuleSetFile.sha256, RuleSetFile.size)
                .where(RuleSetFile.version == version)
                .order_by(col(RuleSetFile.path))
            ).all()
        return [{"path": path, "sha256": digest, "size": size} for path, digest, size in rows]

    def files(self, version: str, prefixes: Sequence[str] | None = None) -> dict[str, bytes]:
        """A version's files with their contents; `prefixes` ("rules", "templates", ...) to read only those."""
        with Session(self.engine) as session:
            query = (
                select(RuleSetFile.path, RuleSetBlob.content)
                .join(RuleSetBlob, col(RuleSetBlob.sha256) == col(RuleSetFile.sha256))
                .where(RuleSetFile.version == version)
            )
            rows = session.exec(query).all()
        wanted = tuple(f"{p}/" for p in prefixes) if prefixes else None
        return {path: content for path, content in rows if wanted is None or path.startswith(wanted)}

    def activations(self, since: datetime, until: datetime) -> list[VersionInfo]:
        """Versions first activated within [since, until), oldest first (the dashboard's chart markers)."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(RuleSetVersion)
                .where(col(RuleSetVersion.activated_at) >= since, col(RuleSetVersion.activated_at) < until)
                .order_by(col(RuleSetVersion.activated_at))
            ).all()
            return [_info(row) for row in rows]


def diff_against_previous(store: RuleSetStore, info: VersionInfo) -> str:
    """The unified text diff of a version's rule and template files against the set active before it."""
    current = store.files(info.version, DIFFED)
    previous = store.files(info.previous_version, DIFFED) if info.previous_version else {}
    return text_diff(previous, current, info.previous_version or "(none)", info.version)
