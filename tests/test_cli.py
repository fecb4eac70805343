"""The CLI contracts: explain --json keys (DESIGN.md), eval output and gate, help texts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.config import PROJECT_ROOT
from tests.support import make_mail


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT
    )


def test_explain_json_contract(tmp_path: Path) -> None:
    eml = tmp_path / "mail.eml"
    eml.write_bytes(make_mail(subject="Widerspruch", body="Hiermit lege ich Widerspruch gegen den Bescheid ein."))
    result = run("rules", "explain", "--json", str(eml))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    for key in ("category", "channel", "rule", "reply", "suppressed", "language", "trace"):
        assert key in payload
    assert payload["category"] == "objection" and payload["priority"] == "high"
    assert payload["reply"] is True and payload["suppressed"] is None and payload["language"] == "de"
    matched = [t for t in payload["trace"] if t["matched"]]
    assert [t["rule"] for t in matched] == ["objection-explicit"]
    assert any("keyword" in c["detail"] for c in matched[0]["conditions"])
    assert all(not t["matched"] for t in payload["trace"][:-1])


def test_explain_text_shows_suppression(tmp_path: Path) -> None:
    eml = tmp_path / "bounce.eml"
    eml.write_bytes(
        make_mail(subject="Undelivered Mail Returned to Sender", body="...", sender="MAILER-DAEMON@mx.example.org")
    )
    result = run("rules", "explain", str(eml), "--from", "")
    assert "category:   automated" in result.stdout and "suppressed: null-sender" in result.stdout


def test_eval_gate(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(make_mail(subject="Krankmeldung", body="Ich bin krankgeschrieben."))
    (tmp_path / "b.eml").write_bytes(make_mail(subject="Hallo", body="Wann haben Sie geöffnet?"))
    (tmp_path / "labels.csv").write_text("file,category\na.eml,sick_note\nb.eml,payment_status\n")
    result = run("rules", "eval", str(tmp_path), "--min-accuracy", "0.9")
    assert result.returncode == 1
    assert "accuracy: 1/2 = 50.0%" in result.stdout and "b.eml: expected payment_status, got general" in result.stdout
    as_json = json.loads(run("rules", "eval", str(tmp_path), "--json").stdout)
    assert as_json["per_category"]["sick_note"]["recall"] == 1.0


def test_help_lists_every_command() -> None:
    result = run("--help")
    for command in ("serve", "gateway", "worker", "web", "inject", "rules", "db"):
        assert command in result.stdout
