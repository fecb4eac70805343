"""schemathesis' stateless checks against /api/v1/openapi.json: every documented operation, authenticated."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig

from tests.support import ADMIN_TOKEN, AUTH, Served

MAX_EXAMPLES = 8  # per operation: the whole run stays well under a minute on this machine
# Schema-valid but contradictory parameters (a `from` after `to`) get the documented 400: OpenAPI cannot state a
# relation between two parameters. That a valid request is answered is checked below: a 2xx for each operation
# without path parameters.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]}}}
)


@pytest.fixture
def served_env() -> dict[str, str]:
    # schemathesis also sends requests without and with a wrong token; the login limit would then answer the
    # right one with 429 (documented, and seen by the checks) for the rest of the run
    return {"CHANNELSHIFT_ADMIN_TOKEN": ADMIN_TOKEN, "CHANNELSHIFT_LOGIN_MAX_FAILURES": "100000"}


def exercise(operation: Any, statuses: set[int]) -> None:
    """MAX_EXAMPLES generated requests to one operation, each answer through every stateless check."""

    @given(operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def answers_as_documented(case: Any) -> None:
        statuses.add(case.call_and_validate(headers=AUTH, timeout=30).status_code)

    answers_as_documented()


def test_every_operation_answers_as_documented(served: Served) -> None:
    url = f"http://127.0.0.1:{served.web_port}/api/v1/openapi.json"
    schema = schemathesis.openapi.from_url(url, config=CONFIG, headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    failures: dict[str, str] = {}
    statuses: dict[str, set[int]] = defaultdict(set)
    for operation in operations:
        try:
            exercise(operation, statuses[operation.label])
        except (Exception, BaseExceptionGroup) as failure:  # every operation is checked; all reported together
            failures[operation.label] = str(failure)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    # a generated id names no stored message or rule set (404, checked above); every other operation answers
    unanswered = [
        label
        for label, seen in statuses.items()
        if "{" not in label and not any(200 <= status < 300 for status in seen)
    ]
    assert not unanswered, unanswered
    assert all(statuses[label] for label in statuses), "an operation got no request"
