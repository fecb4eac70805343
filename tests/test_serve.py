"""`channelshift serve` as a real subprocess on the embedded default, with rule hot reload."""

from __future__ import annotations

import email
import signal
import time
import urllib.request
from email.policy import default as default_policy

import pytest

from tests.support import PROBE_RULE, Served, make_mail


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
