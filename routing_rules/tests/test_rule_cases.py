"""Regression cases of the shipped rule set: each mail here must get the category in labels.csv.

Service managers add a case (an .eml file and a line in labels.csv) whenever they fix a rule; `make test`
runs them all. `channelshift rules eval routing_rules/tests` shows the same as a report.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from services.config import PROJECT_ROOT
from services.ruleset.loader import load_rules
from services.tools.explain import explain

HERE = Path(__file__).resolve().parent
RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
with open(HERE / "labels.csv", encoding="utf-8") as handle:
    CASES = list(csv.DictReader(handle))


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_case(case: dict[str, str]) -> None:
    result = explain(RULESET, (HERE / case["file"]).read_bytes())
    assert result["category"] == case["category"], f"rule {result['rule']}"
    assert result["language"] == case["language"]
    assert result["reply"] is (case["reply_expected"] == "yes"), result["suppressed"]
