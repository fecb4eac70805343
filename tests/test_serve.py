"""`channelshift serve` as a real subprocess on the embedded default, with rule hot reload."""

from __future__ import annotations

import email
import json
import re
import shutil
import signal
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.policy import default as default_policy
from pathlib import Path

import pytest

from services.config import PROJECT_ROOT
from tests.support import SERVED, clean_env, free_port, make_mail, start_role, wait_until_ready

PROBE_RULE = """rules:
  - id: probe
    description: test rule added while the service runs
    when:
      subject: {keywords: [zauberwort]}
    then: {category: complaint, channel: feedback, reply: complaint}
"""


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    var: Path
    rules: Path
    smtp_port: int
    web_port: int

    def send(self, data: bytes) -> str:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.ehlo()
            assert client.mail("citizen@example.org")[0] == 250
            assert client.rcpt(SERVED)[0] == 250
            code, text = client.data(data)
        assert code == 250
        found = re.search(rb"queued as ([0-9a-f]{32})", text)
        assert found
        return found.group(1).decode()

    def rules_version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=5) as response:
            return str(json.loads(response.read())["checks"]["rules"]["version"])

    def wait_for_rules_other_than(self, version: str, timeout: float = 30) -> None:
        """Until the running rule set is a new one (a changed rule re-checks the model against the examples)."""
        deadline = time.monotonic() + timeout
        while self.rules_version() == version:
            if time.monotonic() > deadline:
                raise AssertionError(f"rule set still {version} after {timeout}s")
            time.sleep(0.2)

    def delivered(self, message_id: str, timeout: float = 20) -> email.message.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in (self.var / "delivered" / "new").glob(f"{message_id}.original.*"):
                return email.message_from_bytes(path.read_bytes(), policy=default_policy)
            time.sleep(0.1)
        raise AssertionError(f"{message_id} not delivered within {timeout}s")


@pytest.fixture(params=[2.0], ids=["polling"])
def reload_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.param)


@pytest.fixture
def served(tmp_path: Path, reload_seconds: float) -> Iterator[Served]:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("tests"))
    smtp_port, lmtp_port, web_port = free_port(), free_port(), free_port()
    env = clean_env()
    env.update(
        {
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "CHANNELSHIFT_LMTP_LISTEN": f"127.0.0.1:{lmtp_port}",
            "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{web_port}",
            "CHANNELSHIFT_RULES_DIR": str(rules),
            "CHANNELSHIFT_LOG_FORMAT": "json",
            "CHANNELSHIFT_RULES_RELOAD_SECONDS": str(reload_seconds),
        }
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in teardown
    process = start_role("serve", env, log, tmp_path)
    try:
        wait_until_ready(web_port, [process], tmp_path / "serve.log")
    except AssertionError:
        log.close()
        raise
    yield Served(process, tmp_path / "var", rules, smtp_port, web_port)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "citizen@example.org" not in output and "Zauberwort" not in output  # no personal data in logs


def test_serve_replies_and_delivers(served: Served) -> None:
    message_id = served.send(
        make_mail(
            subject="Kontoauszüge",
            body="Anbei meine Kontoauszüge.",
            attachment=("k.pdf", "application/pdf", b"%PDF-1.4 test"),
        )
    )
    original = served.delivered(message_id)
    assert original["X-Channelshift-Category"] == "documents"
    deadline = time.monotonic() + 20  # reply and delivery are separate jobs; either may finish first
    while not list((served.var / "outbox" / "new").glob(f"{message_id}.reply.*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [reply_file] = list((served.var / "outbox" / "new").glob(f"{message_id}.reply.*"))
    reply = email.message_from_bytes(reply_file.read_bytes(), policy=default_policy)
    assert reply["Auto-Submitted"] == "auto-replied" and reply["To"] == "citizen@example.org"
    assert (served.var / "redis" / "redis.log").exists()  # the embedded redis-server ran under var/


def test_rule_edit_applies_without_restart_and_broken_edit_is_refused(served: Served) -> None:
    first = served.send(make_mail(subject="Zauberwort", body="Wann haben Sie am Freitag geöffnet?"))
    assert served.delivered(first)["X-Channelshift-Category"] == "general"

    version = served.rules_version()
    (served.rules / "35-probe.yaml").write_text(PROBE_RULE, encoding="utf-8")
    served.wait_for_rules_other_than(version)  # the worker polls rule files every 2 seconds
    second = served.send(make_mail(subject="Zauberwort", body="Wann haben Sie am Freitag geöffnet?"))
    assert served.delivered(second)["X-Channelshift-Category"] == "complaint"
    assert served.delivered(second)["X-Channelshift-Rule"] == "probe"

    (served.rules / "35-probe.yaml").write_text(PROBE_RULE.replace("feedback", "fax"), encoding="utf-8")
    time.sleep(3)
    third = served.send(make_mail(subject="Zauberwort", body="Wann haben Sie am Freitag geöffnet?"))
    assert served.delivered(third)["X-Channelshift-Category"] == "complaint"
    with urllib.request.urlopen(f"http://127.0.0.1:{served.web_port}/readyz", timeout=5) as response:
        body = response.read().decode()
    assert "35-probe.yaml:2: rules[0].then.channel: unknown channel 'fax'" in body


@pytest.mark.parametrize("reload_seconds", [0.0], ids=["sighup-only"])
def test_sighup_reloads_rules(served: Served) -> None:
    (served.rules / "35-probe.yaml").write_text(PROBE_RULE, encoding="utf-8")
    time.sleep(1)
    before = served.send(make_mail(subject="Zauberwort", body="Wann haben Sie am Freitag geöffnet?"))
    assert served.delivered(before)["X-Channelshift-Category"] == "general"  # polling is off
    version = served.rules_version()
    served.process.send_signal(signal.SIGHUP)
    served.wait_for_rules_other_than(version)
    after = served.send(make_mail(subject="Zauberwort", body="Wann haben Sie am Freitag geöffnet?"))
    assert served.delivered(after)["X-Channelshift-Category"] == "complaint"
