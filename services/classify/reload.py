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

    def __init__(self, rules_dir: Path, templates_dir: Path) -> None:
        self.rules_dir = rules_dir
        self.templates_dir = templates_dir
        self._fingerprint = fingerprint(rules_dir, templates_dir)
        self.current: RuleSet = load_rules(rules_dir, templates_dir)
        self.errors: list[RuleError] = []
        self.loaded_at = time.time()
        self.reload_failures = 0

    def refresh(self, force: bool = False) -> bool:
        """Reload if files changed (or forced). Returns True when a new set was installed."""
        current_fingerprint = fingerprint(self.rules_dir, self.templates_dir)
        if not force and current_fingerprint == self._fingerprint:
            return False
        self._fingerprint = current_fingerprint
        try:
            candidate = load_rules(self.rules_dir, self.templates_dir)
        except RuleSetInvalid as exc:
            self.errors = exc.errors
            self.reload_failures += 1
            log.error(
                "rules.reload_refused", errors=[str(e) for e in exc.errors[:20]], running_version=self.current.version
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
