"""The files of a rule set as one snapshot (path -> bytes): taken for the history, written back as a last good set."""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.classify.loader import list_files, rule_files, template_files

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


def take_snapshot(rules_dir: Path, templates_dir: Path, examples_dir: Path | None) -> dict[str, bytes]:
    """Every file the loader reads: rule YAML and lists, reply templates, and (when given) the examples folder."""
    files: dict[str, bytes] = {}
    for path in [*rule_files(rules_dir), *list_files(rules_dir)]:
        files[f"{RULES}/{path.relative_to(rules_dir).as_posix()}"] = path.read_bytes()
    for path in template_files(templates_dir):
        files[f"{TEMPLATES}/{path.relative_to(templates_dir).as_posix()}"] = path.read_bytes()
    if examples_dir is not None and examples_dir.is_dir():
        for path in sorted(examples_dir.iterdir()):
            if path.is_file():  # labels.csv and the mails; a ConfigMap's files are symlinks, so not lstat
                files[f"{EXAMPLES}/{path.name}"] = path.read_bytes()
    return files


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


@dataclass(frozen=True)
class Materialised:
    rules_dir: Path
    templates_dir: Path
    examples_dir: Path | None


def materialise(files: Mapping[str, bytes], target: Path) -> Materialised:
    """Write a snapshot into `target`, through a staging folder of this process, so no half-written set is loaded.

    A version's files never change, so a folder already written for it (by this or another process sharing
    the var folder) is used as it is; of two processes writing it at once, the first rename wins.
    """
    if target.is_dir():
        return _materialised(target)
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for path, data in files.items():
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts or relative.parts[0] not in (RULES, TEMPLATES, EXAMPLES):
            raise ValueError(f"refusing to write {path!r} outside the rule-set folder")
        destination = staging.joinpath(*relative.parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
    for part in (RULES, TEMPLATES):
        (staging / part).mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another process renamed the same version in first
    return _materialised(target)


def _materialised(target: Path) -> Materialised:
    examples = target / EXAMPLES
    return Materialised(target / RULES, target / TEMPLATES, examples if examples.is_dir() else None)
