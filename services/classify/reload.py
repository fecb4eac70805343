"""Hot reload: keep the last good RuleSet, swap in a new one only when it validates."""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from services.classify.engine import RuleSet
from services.classify.loader import RuleError, RuleSetInvalid, fingerprint, load_rules

log = structlog.get_logger(__name__)


class RuleSetHolder:
    """The running rule set; `refresh()` is cheap when nothing changed and never raises on a bad edit."""

    def __init__(
        self,
        rules_dir: Path,
        templates_dir: Path,
        cache_dir: Path | None = None,
        *,
        with_model: bool = True,
        examples_dir: Path | None = None,
    ) -> None:
        self.rules_dir = rules_dir
        self.templates_dir = templates_dir
        self.cache_dir = cache_dir
        self.with_model = with_model
        self.examples_dir = examples_dir
        self._fingerprint = fingerprint(rules_dir, templates_dir, examples_dir)
        self.current: RuleSet = self._load()
        if with_model:
            self.current.warm_up()
        self.errors: list[RuleError] = []
        self.loaded_at = time.time()
        self.reload_failures = 0

    def _load(self) -> RuleSet:
        return load_rules(
            self.rules_dir,
            self.templates_dir,
            cache_dir=self.cache_dir,
            with_model=self.with_model,
            examples_dir=self.examples_dir,
        )

    def refresh(self, force: bool = False) -> bool:
        """Reload if files changed (or forced). Returns True when a new set was installed."""
        current_fingerprint = fingerprint(self.rules_dir, self.templates_dir, self.examples_dir)
        if not force and current_fingerprint == self._fingerprint:
            return False
        self._fingerprint = current_fingerprint
        try:
            candidate = self._load()
        except Exception as exc:
            # anything a broken edit can raise (RecursionError, OSError, ...) is a refused set, never a crash
            errors = (
                exc.errors
                if isinstance(exc, RuleSetInvalid)
                else [RuleError(str(self.rules_dir), 1, "(load)", f"{type(exc).__name__}: {exc}")]
            )
            self.errors = errors
            self.reload_failures += 1
            log.error(
                "rules.reload_refused", errors=[str(e) for e in errors[:20]], running_version=self.current.version
            )
            return False
        self.errors = []
        if candidate.version == self.current.version:
            return False
        log.info(
            "rules.reloaded",
            old_version=self.current.version,
            new_version=candidate.version,
            rules=len(candidate.rules),
        )
        self.current = candidate
        self.loaded_at = time.time()
        return True
