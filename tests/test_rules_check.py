"""`rules check`: each broken rule file is reported with the right file:line and field; the good set loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from services.config import PROJECT_ROOT
from services.ruleset.loader import RuleSetInvalid, load_rules
from services.ruleset.reload import RuleSetHolder

RULES = PROJECT_ROOT / "routing_rules"
TEMPLATES = PROJECT_ROOT / "templates"

GOOD_RULE = """rules:
  - id: extra
    when:
      subject: {keywords: [probe]}
    then: {category: general, channel: overview, reply: general}
"""

# (file content, expected line, expected field fragment, expected message fragment)
BROKEN = [
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [xyz]\n    then: {category: general, channel: overview}\n",
        5,
        "(yaml)",
        "",
    ),
    (
        "rules:\n  - id: a\n    then:\n      category: general\n      chanel: overview\n",
        5,
        "rules[0].then.chanel",
        "unknown key 'chanel' (did you mean 'channel'?)",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject:\n        keyword: [miete]\n    then: {category: general, channel: overview}\n",
        5,
        "rules[0].when.subject.keyword",
        "unknown key 'keyword' (did you mean 'keywords'?)",
    ),
    (
        "rules:\n  - id: Miete Alt\n    when:\n      subject: {keywords: [miete]}\n    then: {category: general, channel: overview}\n",
        2,
        "rules[0].id",
        "'Miete Alt' is not allowed here: use only lowercase letters",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when.subject.keywords",
        "keyword 'x' is shorter than 3 letters",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject:\n        regex: ['(unclosed']\n    then: {category: general, channel: overview}\n",
        5,
        "rules[0].when.subject.regex",
        "bad regex",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subjekt: {keywords: [xyz]}\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when",
        "exactly one key",
    ),
    (
        # an empty value once matched every mail without counting as the catch-all
        "rules:\n  - id: a\n    when:\n      any:\n        - body: {keywords: [xyz]}\n        - subject:\n"
        "    then: {category: general, channel: overview}\n",
        6,
        "rules[0].when.any[1].subject",
        "'subject' needs a value",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: fax}\n",
        2,
        "rules[0].then.channel",
        "unknown channel 'fax'",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: overview, reply: nosuch}\n",
        5,
        "rules[0].then.reply",
        "unknown reply template 'nosuch'",
    ),
    (
        "rules:\n  - id: emergency\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: overview}\n",
        2,
        "rules[0].id",
        "duplicate rule id 'emergency'",
    ),
    (
        "rules:\n  - id: a\n    when:\n      sender: {list: nosuch_list}\n    then: {category: partner, channel: none}\n",
        2,
        "rules[0].when",
        "unknown list 'nosuch_list'",
    ),
    (
        "rules:\n  - id: Bad Id\n    then: {category: general, channel: overview}\n",
        2,
        "rules[0].id",
        "use only lowercase letters",
    ),
    (
        "rules:\n  - id: a\n    when:\n      language: [fr]\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when.language[0]",
        "",
    ),
    (
        "rules:\n  - id: a\n    priority: high\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: overview}\n",
        3,
        "rules[0].priority",
        "integer",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: overview, priority: asap}\n",
        5,
        "rules[0].then.priority",
        "",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: overview, priority: urgnt}\n",
        5,
        "rules[0].then.priority",
        "did you mean 'urgent'",
    ),
    (
        "rules:\n  - id: a\n    when:\n      time: {hours: '8-18'}\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when.time.hours",
        "08:00-18:00",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [xyz]}\n    then: {category: general, channel: overview, deliver_to: nowhere}\n",
        2,
        "rules[0].then.deliver_to",
        "unknown delivery target",
    ),
]


def _rule_dir(tmp_path: Path, name: str, content: str) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(RULES, directory, ignore=shutil.ignore_patterns("tests"))
    (directory / name).write_text(content, encoding="utf-8")
    return directory


def test_shipped_rules_are_valid() -> None:
    ruleset = load_rules(RULES, TEMPLATES)
    assert ruleset.rules[-1].rule.id == "general"
    assert len(ruleset.version) == 16


@pytest.mark.parametrize(("content", "line", "field", "message"), BROKEN)
def test_broken_file_reports_file_line_field(tmp_path: Path, content: str, line: int, field: str, message: str) -> None:
    directory = _rule_dir(tmp_path, "60-broken.yaml", content)
    with pytest.raises(RuleSetInvalid) as invalid:
        load_rules(directory, TEMPLATES)
    errors = [e for e in invalid.value.errors if e.file.endswith("60-broken.yaml")]
    assert errors, invalid.value.errors
    assert any(e.line == line and field in e.field and message in e.message for e in errors), [str(e) for e in errors]


def test_rule_after_catch_all_is_unreachable(tmp_path: Path) -> None:
    directory = _rule_dir(tmp_path, "95-late.yaml", GOOD_RULE)
    with pytest.raises(RuleSetInvalid) as invalid:
        load_rules(directory, TEMPLATES)
    [error] = invalid.value.errors
    assert error.file.endswith("95-late.yaml") and error.line == 2 and "unreachable" in error.message


def test_missing_catch_all(tmp_path: Path) -> None:
    directory = _rule_dir(tmp_path, "90-general.yaml", GOOD_RULE)
    with pytest.raises(RuleSetInvalid) as invalid:
        load_rules(directory, TEMPLATES)
    assert any("no catch-all" in e.message for e in invalid.value.errors)


def test_cli_check_prints_errors_and_exits_1(tmp_path: Path) -> None:
    directory = _rule_dir(tmp_path, "60-broken.yaml", next(b[0] for b in BROKEN if "channel: fax" in b[0]))
    result = subprocess.run(
        [sys.executable, "-m", "services", "rules", "check", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"{directory}/60-broken.yaml:2: rules[0].then.channel: unknown channel 'fax'" in result.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "services", "rules", "check", "--json", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    payload = json.loads(as_json.stdout)
    assert payload["ok"] is False and payload["errors"][0]["line"] == 2


def test_hot_reload_swaps_only_valid_sets(tmp_path: Path) -> None:
    directory = _rule_dir(tmp_path, "45-extra.yaml", GOOD_RULE)
    holder = RuleSetHolder(directory, TEMPLATES)
    first = holder.current.version
    assert not holder.refresh()
    (directory / "45-extra.yaml").write_text(GOOD_RULE.replace("probe", "probe2"), encoding="utf-8")
    assert holder.refresh() and holder.current.version != first
    good = holder.current.version
    (directory / "45-extra.yaml").write_text(GOOD_RULE.replace("overview", "fax"), encoding="utf-8")
    assert not holder.refresh()
    assert holder.current.version == good
    assert holder.errors and "unknown channel 'fax'" in str(holder.errors[0])
    (directory / "45-extra.yaml").write_text(GOOD_RULE, encoding="utf-8")
    holder.refresh()
    assert holder.errors == [] and holder.current.version == first


# Templates are part of the rule set: a broken one refuses the set at the template's own file and line.


def _template_dir(tmp_path: Path, relative: str, edit: Callable[[str], str]) -> Path:
    directory = tmp_path / "templates"
    shutil.copytree(TEMPLATES, directory)
    path = directory / "replies" / relative
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return directory


def _line_of(text: str, fragment: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if fragment in line)


BROKEN_TEMPLATES = [
    # (template file, replace this, with that, message fragment)
    ("emergency/de.txt.j2", "{%- else -%}", "{%- else %}{% if %}", "template syntax"),
    (
        "appointment/en.txt.j2",
        "{{ a.link }}",
        "{{ a.link }} {{ case_number }}",
        "'case_number' is not a template variable",
    ),
    (
        "general/uk.txt.j2",
        "{{ channels.portal.link }}",
        "{{ channels.kitaportal.link }}",
        "unknown channel 'kitaportal'",
    ),
    (
        "payment_status/tr.txt.j2",
        "{{ channels.phone.phone }}",
        "{{ channels.phone.fax }}",
        "channel 'phone' has no 'fax'",
    ),
    ("_common/de.j2", "Mit freundlichen Grüßen", "Mit freundlichen Grüßen {{ signature }}", "'signature' is not"),
]


@pytest.mark.parametrize(("relative", "old", "new", "message"), BROKEN_TEMPLATES)
def test_broken_template_refuses_the_set_at_its_line(
    tmp_path: Path, relative: str, old: str, new: str, message: str
) -> None:
    source = (TEMPLATES / "replies" / relative).read_text(encoding="utf-8")
    assert old in source
    templates = _template_dir(tmp_path, relative, lambda text: text.replace(old, new, 1))
    with pytest.raises(RuleSetInvalid) as invalid:
        load_rules(RULES, templates, with_model=False)
    wanted = str(templates / "replies" / relative)
    found = [e for e in invalid.value.errors if e.file == wanted]
    assert found, [str(e) for e in invalid.value.errors]
    assert all(e.line == _line_of(source, old) and message in e.message for e in found), [str(e) for e in found]


def test_missing_settings_key_a_template_uses_is_an_error(tmp_path: Path) -> None:
    directory = _rule_dir(tmp_path, "80-none.yaml", "")
    settings = directory / "00-settings.yaml"
    text = settings.read_text(encoding="utf-8")
    assert "crisis_phone:" in text
    settings.write_text("\n".join(line for line in text.splitlines() if "crisis_phone:" not in line), encoding="utf-8")
    with pytest.raises(RuleSetInvalid) as invalid:
        load_rules(directory, TEMPLATES, with_model=False)
    errors = invalid.value.errors
    # every language of the emergency reply uses it, in both the open and the closed branch
    assert {Path(e.file).name for e in errors} == {f"{lang}.txt.j2" for lang in ("de", "en", "uk", "ar", "ru", "tr")}
    for error in errors:
        source = Path(error.file).read_text(encoding="utf-8")
        assert "crisis_phone" in source.splitlines()[error.line - 1]
        assert "channel 'emergency' has no 'crisis_phone'" in error.message


def test_missing_language_is_a_warning_shown_by_check(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "replies" / "sick_note" / "uk.txt.j2").unlink()
    ruleset = load_rules(RULES, templates, with_model=False)
    [warning] = ruleset.warnings
    assert "sick_note" in warning and "no uk.txt.j2" in warning and "English and German" in warning
    assert load_rules(RULES, TEMPLATES, with_model=False).warnings == ()
    result = subprocess.run(
        [sys.executable, "-m", "services", "rules", "check", "--templates", str(templates), str(RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"warning: {warning}" in result.stdout and "1 warning(s)" in result.stdout


def test_cli_check_names_the_template_line_and_exits_1(tmp_path: Path) -> None:
    templates = _template_dir(tmp_path, "emergency/en.txt.j2", lambda t: t.replace("{{ e.phone }}", "{{ e.phone }", 1))
    result = subprocess.run(
        [sys.executable, "-m", "services", "rules", "check", "--json", "--templates", str(templates), str(RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    [error] = json.loads(result.stdout)["errors"]
    source = (TEMPLATES / "replies" / "emergency" / "en.txt.j2").read_text(encoding="utf-8")
    assert error["file"] == str(templates / "replies" / "emergency" / "en.txt.j2")
    assert error["line"] == _line_of(source, "{{ e.phone }}") and "template syntax" in error["message"]


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ('hours: {mon-fri: "08:00-12:00"}', 'hours: {mon-fr: "08:00-12:00"}', "emergency.hours", "not a weekday"),
        ('hours: {mon-fri: "08:00-12:00"}', 'hours: {fri-mon: "08:00-12:00"}', "emergency.hours", "week order"),
        ('hours: {mon-fri: "08:00-12:00"}', 'hours: {mon-fri: "8-12"}', "emergency.hours", "08:00-12:00"),
        ('hours: {mon-fri: "08:00-12:00"}', 'hours: {mon-fri: "12:00-08:00"}', "emergency.hours", "time range"),
        (
            'hours: {mon-fri: "08:00-12:00"}',
            'hours: {mon-fri: "08:00-12:00, 11:00-13:00"}',
            "emergency.hours",
            "overlap",
        ),
        ('hours: {mon-fri: "08:00-12:00"}', 'hours: "Mo-Fr 8-12"', "emergency.hours", "not free text"),
        ("timezone: Europe/Berlin", "timezone: Europe/Berln", "settings.timezone", "unknown time zone"),
        ("2026-01-01, 2026-04-03", "2026-01-01, 2026-13-03", "settings.holidays", "date"),
    ],
)
def test_office_hours_settings_are_validated(tmp_path: Path, old: str, new: str, field: str, message: str) -> None:
    directory = _rule_dir(tmp_path, "80-none.yaml", "")
    settings = directory / "00-settings.yaml"
    text = settings.read_text(encoding="utf-8")
    assert old in text
    settings.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(RuleSetInvalid) as invalid:
        load_rules(directory, TEMPLATES, with_model=False)
    [error] = invalid.value.errors
    assert field in error.field and message in error.message, str(error)
    assert error.line == _line_of(text, old)


def test_template_edits_reload_as_a_new_version_with_their_warnings(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    holder = RuleSetHolder(RULES, templates, with_model=False)
    first = holder.current.version
    assert holder.current.warnings == ()
    (templates / "replies" / "documents" / "ar.txt.j2").unlink()
    assert holder.refresh() and holder.current.version != first
    assert ["documents" in w and "no ar.txt.j2" in w for w in holder.current.warnings] == [True]
    broken = templates / "replies" / "documents" / "de.txt.j2"
    broken.write_text(broken.read_text(encoding="utf-8") + "{% endif %}\n", encoding="utf-8")
    assert not holder.refresh()
    assert holder.errors and str(broken) in str(holder.errors[0])


def test_a_short_whole_word_is_allowed_under_exact(tmp_path: Path) -> None:
    rule = GOOD_RULE.replace("{keywords: [probe]}", "{exact: [BG]}")
    directory = _rule_dir(tmp_path, "45-extra.yaml", rule)
    ruleset = load_rules(directory, TEMPLATES)
    assert any(compiled.rule.id == "extra" for compiled in ruleset.rules)
