"""Versions of a set of files compared: which paths were added, removed or modified, and their text diff."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

RULES, TEMPLATES, EXAMPLES = "rules", "templates", "examples"
# what `--diff` shows as text; examples are mails (listed as changed, never printed)
DIFFED = (RULES, TEMPLATES)


@dataclass(frozen=True)
class Change:
    path: str
    change: str  # added | removed | modified

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "change": self.change}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def changes(previous: Mapping[str, str] | None, current: Mapping[str, str]) -> list[Change]:
    """Files added, removed or modified between two snapshots given as path -> content hash."""
    before = previous or {}
    found = [Change(p, "added") for p in current if p not in before]
    found += [Change(p, "removed") for p in before if p not in current]
    found += [Change(p, "modified") for p in current if p in before and before[p] != current[p]]
    return sorted(found, key=lambda c: c.path)


def summarise(changed: list[dict[str, str]], limit: int = 8) -> str:
    """One line for a list: rule and template files by name, examples as a count (there can be thousands)."""
    named = [f"{c['path']} ({c['change']})" for c in changed if not c["path"].startswith(f"{EXAMPLES}/")]
    examples = [c for c in changed if c["path"].startswith(f"{EXAMPLES}/")]
    parts = named[:limit] + ([f"+{len(named) - limit} more"] if len(named) > limit else [])
    if examples:
        parts.append(f"{len(examples)} example file(s)")
    return ", ".join(parts) or "-"


def text_diff(previous: Mapping[str, bytes], current: Mapping[str, bytes], previous_name: str, name: str) -> str:
    """Unified diff of the rule and template files of two versions (examples left out)."""

    def shown(files: Mapping[str, bytes]) -> dict[str, bytes]:
        return {p: data for p, data in files.items() if p.split("/", 1)[0] in DIFFED}

    before, after = shown(previous), shown(current)
    out: list[str] = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        out.extend(
            difflib.unified_diff(
                (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True),
                (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True),
                fromfile=f"{previous_name}/{path}" if old is not None else "/dev/null",
                tofile=f"{name}/{path}" if new is not None else "/dev/null",
            )
        )
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
    return "".join(out)
