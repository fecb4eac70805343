"""Load a rule directory into a compiled RuleSet, or report every problem as file:line: field: message."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.classify.conditions import BY_KEY, CONDITION_KEYS, referenced_lists
from services.classify.engine import SETTINGS_HOLIDAYS, CompiledRule, RuleSet, compile_condition
from services.classify.examples import RULE_ONLY_CATEGORIES, load_examples
from services.classify.keywords import KeywordIndex
from services.classify.rulefiles import MAX_LIST_FILE_BYTES, MAX_RULE_FILE_BYTES, UnsafeFile, read_capped
from services.classify.schema import Condition, Rule, RuleFile, RuleSettings
from services.classify.wording import plain_message
from services.classify.yamlsource import Path_, YamlSyntaxError, line_for, load_with_lines
from services.domain import Channel
from services.reply.render import ReplyRenderer


@dataclass(frozen=True)
class RuleError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class RuleSetInvalid(Exception):
    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(map(str, errors)))
        self.errors = errors


def rule_files(directory: Path) -> list[Path]:
    """Rule files in merge order: every *.yaml / *.yml at the top level, sorted by name."""
    # not only regular files: a FIFO or a dangling link named *.yaml is reported by the reader, not skipped
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.is_dir())


def list_files(directory: Path) -> list[Path]:
    """lists/<name>.txt (a Kubernetes ConfigMap mounts them there too: deploy/k8s/tree-volumes-patch.yaml)."""
    lists_dir = directory / "lists"
    return sorted(lists_dir.glob("*.txt")) if lists_dir.is_dir() else []


def list_name(path: Path) -> str:
    return path.stem


def fingerprint(
    directory: Path, templates_dir: Path | None = None, examples_dir: Path | None = None
) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector for hot reload: names, sizes and mtimes of every file that matters."""
    paths = [*rule_files(directory), *list_files(directory)] if directory.is_dir() else []
    if templates_dir is not None:
        paths.extend(template_files(templates_dir))
    examples = examples_dir or directory / "examples"
    if examples.is_dir():
        paths.extend(sorted(examples.iterdir()))  # labels.csv and the mails: a changed example retrains
    result = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        result.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(result)


def template_files(templates_dir: Path) -> list[Path]:
    """Every reply template file: layouts, shared macros and the templates."""
    paths: list[Path] = []
    replies = templates_dir / "replies"
    if replies.is_dir():
        paths.extend(sorted(replies.glob("*.j2")))  # _base and _page layouts
        paths.extend(sorted(replies.glob("*/*.j2")))
    return paths


def available_templates(templates_dir: Path) -> frozenset[str]:
    """A template exists when it has at least the German text version."""
    replies = templates_dir / "replies"
    if not replies.is_dir():
        return frozenset()
    return frozenset(p.name for p in replies.iterdir() if (p / "de.txt.j2").is_file())


def _read_list(data: bytes) -> tuple[str, ...]:
    entries = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        entry = line.split("#", 1)[0].strip().lower()
        if entry:
            entries.append(entry)
    return tuple(entries)


def _precise_location(location: tuple[Any, ...], given: Any) -> tuple[Any, ...]:
    """For a condition with a wrong, extra or empty key, point at that key's own line, not its parent's."""
    in_condition = bool(location) and (
        location[-1] == "when"
        or _holds_conditions(location[-1], "Condition")
        or (len(location) > 1 and _holds_conditions(location[-2], "list[Condition]"))
    )
    if in_condition and isinstance(given, dict) and len(given) >= 1:
        keys = [str(key) for key in given]
        unknown = [key for key in keys if key not in CONDITION_KEYS]
        offending = unknown or keys[1:] or [str(key) for key, value in given.items() if value is None]
        if offending:
            return (*location, offending[0])
    return location


def _holds_conditions(part: Any, schema: str) -> bool:
    """Whether a location part is a condition key whose value is a condition (`not`) or a list of them."""
    kind = BY_KEY.get(part) if isinstance(part, str) else None
    return kind is not None and kind.schema == schema


def _field(location: tuple[Any, ...]) -> str:
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or str(part) in ("list[...]",):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def load_rules(
    directory: Path,
    templates_dir: Path,
    *,
    cache_dir: Path | None = None,
    with_model: bool = True,
    examples_dir: Path | None = None,
) -> RuleSet:
    """Validate and compile, and train the intent model on the examples; raise RuleSetInvalid with all errors.

    `cache_dir` keeps trained models and example embeddings between processes (keyed by content hash);
    `with_model=False` loads the rules alone (for tools that only need mailboxes and settings);
    `examples_dir` replaces `settings.model.examples` (a Kubernetes ConfigMap cannot hold the examples).
    """
    errors: list[RuleError] = []
    if not directory.is_dir():
        raise RuleSetInvalid([RuleError(str(directory), 1, "(dir)", "rule directory does not exist")])
    digest = hashlib.sha256()
    lists: dict[str, tuple[str, ...]] = {}
    for path in list_files(directory):
        try:
            data = read_capped(path, directory, MAX_LIST_FILE_BYTES)
        except UnsafeFile as exc:
            errors.append(RuleError(str(path), 1, "(file)", f"list file {exc}"))
            continue
        digest.update(path.name.encode() + b"\0" + data)
        lists[list_name(path)] = _read_list(data)

    settings: RuleSettings | None = None
    settings_file = ""
    settings_lines: dict[Path_, int] = {}
    # every `reply:`: (template, file, line, field), so an unknown template is reported where it is named
    reply_uses: list[tuple[str, str, int, str]] = []
    ordered: list[tuple[int, int, Rule, str, int]] = []
    seen_ids: dict[str, str] = {}
    files = rule_files(directory)
    if not files:
        errors.append(RuleError(str(directory), 1, "(dir)", "no *.yaml rule files"))
    for file_index, path in enumerate(files):
        name = str(path)
        try:
            text = read_capped(path, directory, MAX_RULE_FILE_BYTES).decode("utf-8", errors="replace")
        except UnsafeFile as exc:
            errors.append(RuleError(name, 1, "(file)", f"rule file {exc}"))
            continue
        digest.update(path.name.encode() + b"\0" + text.encode())
        try:
            data, lines = load_with_lines(text)
        except YamlSyntaxError as exc:
            errors.append(RuleError(name, exc.line, "(yaml)", exc.message))
            continue
        if data is None:
            continue
        try:
            parsed = RuleFile.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                location = _precise_location(tuple(error["loc"]), error.get("input"))
                message = plain_message(dict(error), RuleFile)
                errors.append(RuleError(name, line_for(lines, location), _field(location), message))
            continue
        if parsed.settings is not None:
            if settings is not None:
                errors.append(
                    RuleError(
                        name, line_for(lines, ("settings",)), "settings", f"settings already defined in {settings_file}"
                    )
                )
            else:
                settings, settings_file, settings_lines = parsed.settings, name, lines
        for rule_index, rule in enumerate(parsed.rules):
            line = line_for(lines, ("rules", rule_index))
            if rule.then.reply is not None:
                key: Path_ = ("rules", rule_index, "then", "reply")
                reply_uses.append((rule.then.reply, name, line_for(lines, key), f"rules[{rule_index}].then.reply"))
            if rule.id in seen_ids:
                errors.append(
                    RuleError(
                        name,
                        line_for(lines, ("rules", rule_index, "id")),
                        f"rules[{rule_index}].id",
                        f"duplicate rule id {rule.id!r} (first in {seen_ids[rule.id]})",
                    )
                )
            seen_ids.setdefault(rule.id, f"{name}:{line}")
            ordered.append((file_index, rule_index, rule, name, line))

    if settings is None and not errors:
        errors.append(RuleError(str(directory), 1, "settings", "no file defines settings"))
    templates = available_templates(templates_dir)
    ordered.sort(key=lambda item: (-item[2].priority, item[0], item[1]))
    warnings: list[str] = []
    renderer = ReplyRenderer(templates_dir, auto_reload=False)  # fresh: nothing cached hides an edit
    if settings is not None:
        errors.extend(_semantic_errors(ordered, settings, settings_file, lists))
        for category, spec in settings.categories.items():
            if spec.reply is not None:
                key = ("settings", "categories", category, "reply")
                field = f"settings.categories.{category}.reply"
                reply_uses.append((spec.reply, settings_file, line_for(settings_lines, key), field))
        template_errors, warnings = _template_errors(reply_uses, settings, renderer, templates)
        errors.extend(template_errors)
    if errors:
        raise RuleSetInvalid(errors)
    assert settings is not None
    # `time:` conditions without a `holidays:` list of their own close on the settings' public holidays
    condition_lists = {**lists, SETTINGS_HOLIDAYS: tuple(day.isoformat() for day in settings.holidays)}
    index = KeywordIndex()
    always = Condition.model_validate({"always": True})
    compiled = tuple(
        CompiledRule(rule, compile_condition(rule.when if rule.when is not None else always, condition_lists, index))
        for _f, _r, rule, _n, _l in ordered
    )
    index.build()
    rules_only = RuleSet(
        version="", settings=settings, rules=compiled, lists=lists, templates=templates, keywords=index
    )
    intent = None
    if settings.model.enabled and settings.categories:
        # read and hashed even when the model is not needed here (the gateway), so every process reports the
        # same version and the same errors for the same folder
        examples_dir = examples_dir or directory / settings.model.examples
        example_set = load_examples(examples_dir, set(settings.categories) | RULE_ONLY_CATEGORIES)
        rules_digest = digest.hexdigest()
        digest.update(b"examples\0" + example_set.digest.encode())
        if example_set.problems:
            raise RuleSetInvalid([RuleError(p.file, p.line, p.field, p.message) for p in example_set.problems])
        if with_model:
            from services.classify.training import train_intent  # scikit-learn: only for processes that classify

            trained = train_intent(
                examples_dir,
                settings.model,
                example_set,
                cache_dir,
                rule_verdict=rules_only.certain_category,
                context=rules_digest,
            )
            if isinstance(trained, list):
                raise RuleSetInvalid([RuleError(p.file, p.line, p.field, p.message) for p in trained])
            intent = trained
    # after the model's context was taken: a template edit is a new rule-set version, not a new model
    for path in template_files(templates_dir):
        digest.update(b"template\0" + str(path.relative_to(templates_dir)).encode() + b"\0" + path.read_bytes())
    return RuleSet(
        version=digest.hexdigest()[:16],
        settings=settings,
        rules=compiled,
        lists=lists,
        templates=templates,
        intent=intent,
        warnings=tuple(warnings),
        renderer=renderer,
        keywords=index,
    )


def _template_errors(
    uses: list[tuple[str, str, int, str]], settings: RuleSettings, renderer: ReplyRenderer, templates: frozenset[str]
) -> tuple[list[RuleError], list[str]]:
    """Templates are part of the rule set: an unknown one at its `reply:` line, a broken one at its own line.

    Every referenced template is rendered in every language it has with the settings being loaded (a missing
    `crisis_phone` or an unknown channel is an error here, not a reply stuck at send time). The renderer keeps
    the compiled templates it checked (no auto-reload), so the set's replies use exactly those.
    """
    errors: list[RuleError] = []
    for template, file, line, field in uses:
        if template not in templates:
            missing = f"unknown reply template {template!r} (no templates/replies/{template}/de.txt.j2)"
            errors.append(RuleError(file, line, field, missing))
    problems, warnings = renderer.check({t for t, _f, _l, _w in uses if t in templates}, settings)
    errors.extend(RuleError(p.file, p.line, "template", p.message) for p in problems)
    return errors, warnings


def _semantic_errors(
    ordered: list[tuple[int, int, Rule, str, int]],
    settings: RuleSettings,
    settings_file: str,
    lists: dict[str, tuple[str, ...]],
) -> list[RuleError]:
    errors: list[RuleError] = []
    seen_conditions: dict[str, str] = {}
    catch_all: str | None = None
    for _f, index, rule, name, line in ordered:
        where = f"rules[{index}]"
        if catch_all is not None:
            errors.append(
                RuleError(
                    name, line, f"{where}.when", f"rule {rule.id!r} is unreachable: catch-all {catch_all} matches first"
                )
            )
        action = rule.then
        if action.channel != Channel.NONE and action.channel not in settings.channels:
            errors.append(
                RuleError(
                    name,
                    line,
                    f"{where}.then.channel",
                    f"unknown channel {action.channel!r} (known: {', '.join(sorted(settings.channels))}, none)",
                )
            )
        if action.deliver and action.deliver_to not in settings.targets:
            errors.append(
                RuleError(name, line, f"{where}.then.deliver_to", f"unknown delivery target {action.deliver_to!r}")
            )
        if rule.when is not None:
            for list_name in referenced_lists(rule.when):
                if list_name not in lists:
                    errors.append(
                        RuleError(name, line, f"{where}.when", f"unknown list {list_name!r} (no lists/{list_name}.txt)")
                    )
            key = rule.when.model_dump_json(by_alias=True, exclude_none=True)
            if key in seen_conditions:
                errors.append(
                    RuleError(
                        name,
                        line,
                        f"{where}.when",
                        f"rule {rule.id!r} is unreachable: same condition as {seen_conditions[key]}",
                    )
                )
            seen_conditions.setdefault(key, f"{rule.id!r}")
        if rule.is_catch_all and catch_all is None:
            catch_all = f"{rule.id!r} ({name}:{line})"
    for category, spec in settings.categories.items():
        where = f"settings.categories.{category}"
        if spec.channel != Channel.NONE and spec.channel not in settings.channels:
            errors.append(RuleError(settings_file, 1, f"{where}.channel", f"unknown channel {spec.channel!r}"))
        if spec.deliver and spec.deliver_to not in settings.targets:
            errors.append(
                RuleError(settings_file, 1, f"{where}.deliver_to", f"unknown delivery target {spec.deliver_to!r}")
            )
    if ordered and catch_all is None:
        _f, _i, _rule, name, line = ordered[-1]
        errors.append(RuleError(name, line, "rules", "no catch-all rule (a last rule without `when`)"))
    return errors
