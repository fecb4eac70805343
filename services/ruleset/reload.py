"""Hot reload: keep the last good RuleSet, swap in a new one only when it validates; fall back on the archive."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from services.classify.engine import RuleSet
from services.ruleset.loader import RuleError, RuleSetInvalid, fingerprint, load_rules
from services.ruleset.snapshot import materialise, take_snapshot

log = structlog.get_logger(__name__)

FILES, LAST_GOOD = "files", "last-good"


class RulesNotLoaded(RuntimeError):
    """No rule set is running: the files did not validate at start and no good set was ever recorded."""


class RecordedSet(Protocol):
    @property
    def version(self) -> str: ...


class RuleSetArchive(Protocol):
    """Where activated sets are recorded and the last good one is found (services/store/rulesets.py)."""

    def record(
        self,
        version: str,
        snapshot: Callable[[], Mapping[str, bytes] | None],
        *,
        activated_by: str,
        warnings: Sequence[str] = (),
        model_checked: bool = False,
    ) -> bool: ...

    def latest_good(self, *, model_checked: bool) -> RecordedSet | None: ...

    def files(self, version: str, prefixes: Sequence[str] | None = None) -> dict[str, bytes]: ...


@dataclass(frozen=True)
class Fallback:
    """What a holder with an archive needs: the archive, where to write a last good set, and who it is."""

    archive: RuleSetArchive
    directory: Path
    role: str


def _as_errors(exc: Exception, where: Path) -> list[RuleError]:
    # anything a broken edit can raise (RecursionError, OSError, ...) is a refused set, never a crash
    if isinstance(exc, RuleSetInvalid):
        return exc.errors
    return [RuleError(str(where), 1, "(load)", f"{type(exc).__name__}: {exc}")]


class RuleSetHolder:
    """The running rule set; `refresh()` is cheap when nothing changed and never raises on a bad edit.

    Without a `fallback`, files that do not validate at start raise RuleSetInvalid (tools, tests). With one,
    the holder never raises: it records every set it activates, starts on the newest recorded good set when
    the files are broken, or on none at all (`loaded` is False) until the files are fixed.
    """

    def __init__(
        self,
        rules_dir: Path,
        templates_dir: Path,
        cache_dir: Path | None = None,
        *,
        with_model: bool = True,
        examples_dir: Path | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.rules_dir = rules_dir
        self.templates_dir = templates_dir
        self.cache_dir = cache_dir
        self.with_model = with_model
        self.examples_dir = examples_dir
        self.fallback = fallback
        self.errors: list[RuleError] = []
        self.reload_failures = 0
        self.source: str | None = None  # FILES, LAST_GOOD, or None while nothing runs
        self._current: RuleSet | None = None
        self._unrecorded = False
        self._fingerprint = fingerprint(rules_dir, templates_dir, examples_dir)
        try:
            candidate = self._load()
        except Exception as exc:
            if fallback is None:
                raise
            self.errors = _as_errors(exc, rules_dir)
            log.error("rules.start_refused", errors=[str(e) for e in self.errors[:20]])
            self._start_on_last_good(fallback)
        else:
            self._install(candidate, FILES, fingerprint_at_load=self._fingerprint)
        self.loaded_at = time.time()

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> RuleSet:
        if self._current is None:
            raise RulesNotLoaded("no rule set loaded: " + "; ".join(str(e) for e in self.errors[:3]))
        return self._current

    @current.setter
    def current(self, ruleset: RuleSet) -> None:
        self._current = ruleset

    def _load(
        self, rules_dir: Path | None = None, templates_dir: Path | None = None, examples_dir: Path | None = None
    ) -> RuleSet:
        return load_rules(
            rules_dir or self.rules_dir,
            templates_dir or self.templates_dir,
            cache_dir=self.cache_dir,
            with_model=self.with_model,
            examples_dir=examples_dir if rules_dir is not None else self.examples_dir,
        )

    def _install(self, ruleset: RuleSet, source: str, *, fingerprint_at_load: tuple[tuple[str, int, int], ...]) -> None:
        if self.with_model:
            ruleset.warm_up()
        if source == FILES:  # recorded before it runs: a decision's version is always in the history
            self._unrecorded = not self._record(ruleset, fingerprint_at_load)
        self._current = ruleset
        self.source = source
        self.loaded_at = time.time()

    def _examples_of(self, ruleset: RuleSet) -> Path | None:
        if not ruleset.settings.model.enabled:
            return None
        return self.examples_dir or self.rules_dir / ruleset.settings.model.examples

    def _record(self, ruleset: RuleSet, fingerprint_at_load: tuple[tuple[str, int, int], ...]) -> bool:
        """Archive the files of a set just activated from the real folder; False to try again at the next refresh."""
        if self.fallback is None:
            return True
        examples = self._examples_of(ruleset)

        def snapshot() -> dict[str, bytes] | None:
            files = take_snapshot(self.rules_dir, self.templates_dir, examples)
            if fingerprint(self.rules_dir, self.templates_dir, self.examples_dir) != fingerprint_at_load:
                return None  # edited while loading: the next refresh loads and records that edit instead
            return files

        try:
            added = self.fallback.archive.record(
                ruleset.version,
                snapshot,
                activated_by=self.fallback.role,
                warnings=ruleset.warnings,
                model_checked=self.with_model,
            )
        except Exception as exc:
            log.error("rules.record_failed", version=ruleset.version, error=type(exc).__name__)
            return False
        if added:
            log.info("rules.recorded", version=ruleset.version)
        return True

    def _start_on_last_good(self, fallback: Fallback, *, again: bool = False) -> None:
        try:
            good = fallback.archive.latest_good(model_checked=self.with_model)
            if good is None:
                if not again:
                    log.error("rules.no_good_set", role=fallback.role)
                return
            where = materialise(fallback.archive.files(good.version), fallback.directory / good.version)
            ruleset = self._load(where.rules_dir, where.templates_dir, where.examples_dir)
        except Exception as exc:
            if not again:
                log.error("rules.last_good_failed", error=type(exc).__name__)
            return
        log.warning("rules.started_on_last_good", version=ruleset.version, recorded=good.version)
        self._install(ruleset, LAST_GOOD, fingerprint_at_load=())

    def refresh(self, force: bool = False) -> bool:
        """Reload if files changed (or forced). Returns True when a new set was installed."""
        current_fingerprint = fingerprint(self.rules_dir, self.templates_dir, self.examples_dir)
        if self._unrecorded and self._current is not None and self.source == FILES:
            # the database was away when this set became active
            self._unrecorded = not self._record(self._current, self._fingerprint)
        if not force and current_fingerprint == self._fingerprint:
            if self._current is None and self.fallback is not None:
                # nothing runs yet: a good set may have been recorded since (another process, or the database
                # was not reachable at start)
                self._start_on_last_good(self.fallback, again=True)
                return self._current is not None
            return False
        self._fingerprint = current_fingerprint
        try:
            candidate = self._load()
        except Exception as exc:
            self.errors = _as_errors(exc, self.rules_dir)
            self.reload_failures += 1
            log.error(
                "rules.reload_refused",
                errors=[str(e) for e in self.errors[:20]],
                running_version=self._current.version if self._current is not None else None,
            )
            return False
        self.errors = []
        if self._current is not None and candidate.version == self._current.version and self.source == FILES:
            return False
        log.info(
            "rules.reloaded",
            old_version=self._current.version if self._current is not None else None,
            new_version=candidate.version,
            rules=len(candidate.rules),
        )
        self._install(candidate, FILES, fingerprint_at_load=current_fingerprint)
        return True
