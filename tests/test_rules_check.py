"""`rules check`: each broken rule file is reported with the right file:line and field; the good set loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.classify.loader import RuleSetInvalid, load_rules
from services.classify.reload import RuleSetHolder
from services.config import PROJECT_ROOT

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
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [x]\n    then: {category: general, channel: overview}\n",
        5,
        "(yaml)",
        "",
    ),
    (
        "rules:\n  - id: a\n    then:\n      category: general\n      chanel: overview\n",
        5,
        "rules[0].then.chanel",
        "Extra inputs",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject:\n        regex: ['(unclosed']\n    then: {category: general, channel: overview}\n",
        5,
        "rules[0].when.subject.regex",
        "bad regex",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subjekt: {keywords: [x]}\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when",
        "exactly one key",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: fax}\n",
        2,
        "rules[0].then.channel",
        "unknown channel 'fax'",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: overview, reply: nosuch}\n",
        2,
        "rules[0].then.reply",
        "unknown reply template 'nosuch'",
    ),
    (
        "rules:\n  - id: emergency\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: overview}\n",
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
    ("rules:\n  - id: Bad Id\n    then: {category: general, channel: overview}\n", 2, "rules[0].id", "pattern"),
    (
        "rules:\n  - id: a\n    when:\n      language: [fr]\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when.language[0]",
        "",
    ),
    (
        "rules:\n  - id: a\n    priority: high\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: overview}\n",
        3,
        "rules[0].priority",
        "integer",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: overview, priority: asap}\n",
        5,
        "rules[0].then.priority",
        "",
    ),
    (
        "rules:\n  - id: a\n    when:\n      time: {hours: '8-18'}\n    then: {category: general, channel: overview}\n",
        4,
        "rules[0].when.time.hours",
        "08:00-18:00",
    ),
    (
        "rules:\n  - id: a\n    when:\n      subject: {keywords: [x]}\n    then: {category: general, channel: overview, deliver_to: nowhere}\n",
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
    directory = _rule_dir(tmp_path, "60-broken.yaml", BROKEN[4][0])
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
