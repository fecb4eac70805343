"""Categories whose replies carry no tracked link: their click-through is undefined, not 0 %."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from services.classify.engine import RuleSet

_cache: dict[int, tuple[RuleSet, frozenset[str]]] = {}


def _has_link(templates_dir: Path, template: str) -> bool:
    # the renderer offers every channel's tracked URL as `channels.<name>.link`; a template without one
    # (the emergency reply gives phone numbers and an address) cannot be clicked
    return any(
        ".link" in path.read_text(encoding="utf-8") for path in (templates_dir / "replies" / template).glob("*.j2")
    )


def unlinked_categories(rules: RuleSet, templates_dir: Path) -> frozenset[str]:
    """Categories all of whose reply templates (from `settings.categories` and the rules' `then`) lack a link."""
    cached = _cache.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1]
    templates: dict[str, set[str]] = defaultdict(set)
    for category, action in rules.settings.categories.items():
        if action.reply:
            templates[category].add(action.reply)
    for compiled in rules.rules:
        if compiled.rule.then.reply:
            templates[compiled.rule.then.category].add(compiled.rule.then.reply)
    result = frozenset(
        category for category, names in templates.items() if not any(_has_link(templates_dir, n) for n in names)
    )
    _cache.clear()  # only the running rule set matters
    _cache[id(rules)] = (rules, result)
    return result
