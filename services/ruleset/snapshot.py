"""The files of a rule set as one snapshot (path -> bytes): taken for the history, written back as a last good set."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.filediff import EXAMPLES, RULES, TEMPLATES
from services.ruleset.loader import list_files, rule_files, template_files


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
