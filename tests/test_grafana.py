"""The Grafana dashboard only queries metrics that /metrics really exposes, with valid PromQL (promtool)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.config import PROJECT_ROOT

EXPOSED = {
    "channelshift_mail_received_total",
    "channelshift_replies_total",
    "channelshift_replies_suppressed_total",
    "channelshift_mail_held_total",
    "channelshift_deliveries_total",
    "channelshift_smtp_rejected_total",
    "channelshift_clicks_total",
    "channelshift_unique_clicks_total",
    "channelshift_replies_clicked_total",
    "channelshift_links_opened_total",
    "channelshift_click_through_ratio",
    "channelshift_repeat_rate_ratio",
    "channelshift_repeat_senders_total",
    "channelshift_ruleset_info",
    "channelshift_rules_valid",
    "channelshift_rules_reload_failures_total",
    "channelshift_rules",
    "channelshift_queue_depth",
    "channelshift_job_duration_seconds_bucket",
    "channelshift_gateway_store_seconds_bucket",
}


def test_dashboard_panels_use_exposed_metrics() -> None:
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "channelshift.json").read_text())
    assert dashboard["uid"] == "channelshift" and len(dashboard["panels"]) >= 8
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"channelshift_[a-z0-9_]+", target["expr"]):
                assert name in EXPOSED, (panel["title"], name)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI")
        pytest.skip("promtool not installed")
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "channelshift.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = {
        "groups": [
            {
                "name": "grafana",
                "rules": [{"record": f"channelshift:panel_{i}", "expr": expr} for i, expr in enumerate(exprs)],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
