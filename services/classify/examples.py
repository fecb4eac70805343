"""Labelled example mails (labels.csv + .eml files), read and validated with file:line errors."""

from __future__ import annotations

import csv
import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from services.classify.features import model_text
from services.mail import InboundMail, parse_mail

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("file", "category")
MAX_EXAMPLE_BYTES = 2 * 1024 * 1024
# The model never decides these: rules do (automated signals, partner domains).
AUTOMATED = "automated"
RULE_ONLY_CATEGORIES = frozenset({AUTOMATED, "partner"})


@dataclass(frozen=True)
class Example:
    """One labelled mail as read; parsed only when the model is trained (a cached model needs just the hash)."""

    file: str
    category: str
    language: str
    line: int  # its line in labels.csv
    raw: bytes = field(compare=False, repr=False)

    def mail(self) -> InboundMail:
        return parse_mail(self.raw)


@dataclass(frozen=True)
class ExampleProblem:
    file: str
    line: int
    field: str
    message: str


@dataclass(frozen=True)
class ExampleSet:
    examples: tuple[Example, ...]
    digest: str
    problems: tuple[ExampleProblem, ...]

    @property
    def trainable(self) -> tuple[Example, ...]:
        return tuple(e for e in self.examples if e.category not in RULE_ONLY_CATEGORIES)


def _suggest(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_examples(directory: Path, categories: set[str]) -> ExampleSet:
    """Every row of labels.csv with its mail; a row that cannot be used is a problem at its line."""
    labels = directory / LABELS_FILE
    problems: list[ExampleProblem] = []
    examples: list[Example] = []
    digest = hashlib.sha256()
    if not labels.is_file():
        problems.append(ExampleProblem(str(labels), 1, "(file)", "labels.csv is missing: one line per example mail"))
        return ExampleSet((), "", tuple(problems))
    try:
        text = labels.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ExampleProblem(str(labels), 1, "(file)", f"cannot read labels.csv: {exc}"))
        return ExampleSet((), "", tuple(problems))
    digest.update(text.encode())
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        problems.append(
            ExampleProblem(str(labels), 1, "(header)", f"labels.csv needs the columns {', '.join(missing)}")
        )
        return ExampleSet((), "", tuple(problems))
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        name = (row.get("file") or "").strip()
        category = (row.get("category") or "").strip()
        if not name:
            problems.append(ExampleProblem(str(labels), line, "file", "empty file name"))
            continue
        if name in seen:
            problems.append(
                ExampleProblem(str(labels), line, "file", f"{name} is listed twice (first at line {seen[name]})")
            )
            continue
        seen[name] = line
        if category not in categories:
            problems.append(
                ExampleProblem(
                    str(labels), line, "category", f"unknown category {category!r}{_suggest(category, categories)}"
                )
            )
            continue
        path = directory / name
        if Path(name).name != name or not path.is_file():
            problems.append(ExampleProblem(str(labels), line, "file", f"no mail file {name} beside labels.csv"))
            continue
        try:
            raw = path.read_bytes()[:MAX_EXAMPLE_BYTES]
        except OSError as exc:
            problems.append(ExampleProblem(str(labels), line, "file", f"cannot read {name}: {exc.strerror}"))
            continue
        digest.update(name.encode() + b"\0" + raw)
        examples.append(Example(name, category, (row.get("language") or "").strip(), line, raw))
    return ExampleSet(tuple(examples), digest.hexdigest()[:16], tuple(problems))


class ExampleRefused(Exception):
    pass


def add_example(
    directory: Path, raw: bytes, category: str, categories: set[str], language: str = "", notes: str = ""
) -> str:
    """Copy a mail into the examples folder with its label (a manager's own act); returns the new file name.

    The mail is stored as given (it becomes training material, so a manager decides which mail may be kept);
    a mail whose bytes are already an example is refused, as is an unknown category.
    """
    if category not in categories:
        raise ExampleRefused(f"unknown category {category!r}{_suggest(category, categories)}")
    if len(raw) > MAX_EXAMPLE_BYTES:
        raise ExampleRefused(f"the mail is larger than {MAX_EXAMPLE_BYTES // 1024 // 1024} MiB")
    if not model_text(parse_mail(raw)).replace("\x00", "").strip():
        raise ExampleRefused("the mail has no text to learn from")
    labels = directory / LABELS_FILE
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(raw).hexdigest()
    for existing in directory.glob("*.eml"):
        if existing.stat().st_size == len(raw) and hashlib.sha256(existing.read_bytes()).hexdigest() == digest:
            raise ExampleRefused(f"this mail is already the example {existing.name}")
    name = f"m{digest[:10]}-{category}.eml"
    (directory / name).write_bytes(raw)
    new_file = not labels.is_file()
    with labels.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["file", "category", "language", "reply_expected", "notes"])
        writer.writerow([name, category, language, "no" if category in RULE_ONLY_CATEGORIES else "yes", notes])
    return name
