"""Hostile rule files are refused with file:line and never block or exhaust a load; rule regexes are time-bounded."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from services.classify.patterns import RegexTimeout, SafePattern, catastrophic
from services.classify.rulefiles import MAX_RULE_FILE_BYTES
from services.config import PROJECT_ROOT
from services.ruleset.loader import RuleSetInvalid, load_rules
from services.ruleset.reload import RuleSetHolder

RULES = PROJECT_ROOT / "routing_rules"
TEMPLATES = PROJECT_ROOT / "templates"
EXAMPLES = RULES / "examples"

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)
REDOS_RULE = """rules:
  - id: redos
    when:
      body:
        regex: ['^(\\w+\\s?)+$']
    then: {category: general, channel: overview, reply: general}
"""


def _rules(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(RULES, directory, ignore=shutil.ignore_patterns("tests", "examples"))
    return directory


def _refused(directory: Path) -> list[str]:
    """Load in a thread, so a load that blocks fails the test instead of hanging it."""
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_rules(directory, TEMPLATES, with_model=False, examples_dir=EXAMPLES)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, "the load blocked"
    [error] = outcome
    assert isinstance(error, RuleSetInvalid), error
    return [str(e) for e in error.errors]


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        (BILLION_LAUGHS, 2, "alias *a is not allowed"),
        ("rules: &loop\n  - *loop\n", 2, "alias *loop is not allowed"),
        ("rules:\n" + "  " + "[" * 200 + "]" * 200 + "\n", 2, "nested more than 50 levels"),
        (REDOS_RULE, 5, "exponential time"),
    ],
    ids=["billion-laughs", "recursive-alias", "deep-nesting", "redos-regex"],
)
def test_hostile_rule_file_is_refused_at_its_line(tmp_path: Path, content: str, line: int, fragment: str) -> None:
    directory = _rules(tmp_path)
    (directory / "60-hostile.yaml").write_text(content, encoding="utf-8")
    errors = _refused(directory)
    assert any(f"60-hostile.yaml:{line}:" in e and fragment in e for e in errors), errors


def test_fifo_list_is_refused_without_blocking(tmp_path: Path) -> None:
    directory = _rules(tmp_path)
    os.mkfifo(directory / "lists" / "fifo.txt")
    errors = _refused(directory)
    assert any("fifo.txt:1:" in e and "not a regular file" in e for e in errors), errors


def test_link_out_of_the_rule_folder_is_refused(tmp_path: Path) -> None:
    directory = _rules(tmp_path)
    (directory / "lists" / "zero.txt").symlink_to("/dev/zero")
    errors = _refused(directory)
    assert any("zero.txt:1:" in e and "outside" in e for e in errors), errors


def test_oversized_rule_file_is_refused(tmp_path: Path) -> None:
    directory = _rules(tmp_path)
    (directory / "60-huge.yaml").write_text("# padding\n" * (MAX_RULE_FILE_BYTES // 10 + 1), encoding="utf-8")
    errors = _refused(directory)
    assert any("60-huge.yaml:1:" in e and "at most" in e for e in errors), errors


def test_hot_reload_keeps_serving_through_hostile_edits(tmp_path: Path) -> None:
    directory = _rules(tmp_path)
    holder = RuleSetHolder(directory, TEMPLATES, with_model=False, examples_dir=EXAMPLES)
    good = holder.current.version
    for name, content in (("60-a.yaml", BILLION_LAUGHS), ("60-b.yaml", REDOS_RULE)):
        (directory / name).write_text(content, encoding="utf-8")
        assert not holder.refresh()
        assert holder.current.version == good and holder.errors
        (directory / name).unlink()
    os.mkfifo(directory / "lists" / "fifo.txt")
    assert not holder.refresh() and holder.current.version == good and holder.errors


def test_a_search_that_ran_out_of_wall_clock_while_waiting_for_a_core_is_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A preempted search is not a slow pattern: only CPU spent on it counts against the pattern."""
    import services.classify.patterns as patterns

    calls: list[float] = []
    monkeypatch.setattr(patterns, "SEARCH_TIMEOUT", 1e-9)  # every real search runs out of time
    # a thread that never got the CPU: its clock stands still while the wall clock runs out
    monkeypatch.setattr(patterns.time, "thread_time", lambda: calls.append(0.0) or 0.0)
    slow = SafePattern(r"(strom|gas)\w*\s+(\S+\s+){0,6}(abgestellt|gesperrt)")
    with pytest.raises(RegexTimeout):
        slow.search("wir haben kein gas mehr " * 20_000)
    # retried (a clock reading before and after each), then the last attempt's timeout counts whatever its clock
    assert len(calls) == 2 * patterns.PREEMPTED_RETRIES + 1
    calls.clear()
    monkeypatch.setattr(patterns.time, "thread_time", lambda: calls.append(0.0) or len(calls) * 1.0)
    with pytest.raises(RegexTimeout):  # a search that used its time on the CPU is not retried
        slow.search("wir haben kein gas mehr " * 20_000)
    assert len(calls) == 2


def test_a_search_that_runs_away_stops_and_counts_as_no_match() -> None:
    assert catastrophic(r"(a|aa)+$") and not catastrophic(r"\bmiet\w*schulden")
    runaway = SafePattern(r"(a|aa)+$")  # refused at load; here built directly, as a pattern that slipped through
    with pytest.raises(RegexTimeout):
        runaway.search("a" * 31 + "!")
    assert SafePattern(r"k\w+ndigung").search("Ihre KÜNDIGUNG") is not None  # same semantics as re for umlauts
