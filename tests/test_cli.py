"""The CLI contracts: explain --json keys (DESIGN.md), eval output and gate, help texts."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.config import PROJECT_ROOT
from tests.support import Pipeline, clean_env, make_mail


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


async def test_replay_shows_shift_and_changes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    import shutil
    from datetime import UTC, datetime

    from sqlmodel import Session, select

    from services.ruleset.loader import load_rules
    from services.store.models import Decision
    from services.tools.replay import replay

    await pipeline.send(make_mail(subject="Zauberwort", body="Nur eine Frage."))
    await pipeline.send(make_mail(subject="Termin", body="Ich muss den Termin absagen.", sender="b@example.org"))
    await pipeline.work()
    candidate = tmp_path / "candidate"
    shutil.copytree(PROJECT_ROOT / "routing_rules", candidate, ignore=shutil.ignore_patterns("tests"))
    (candidate / "35-probe.yaml").write_text(
        "rules:\n  - id: probe\n    when:\n      subject: {keywords: [zauberwort]}\n"
        "    then: {category: complaint, channel: feedback, reply: complaint}\n"
    )
    ruleset = load_rules(candidate, PROJECT_ROOT / "templates")
    report = replay(pipeline.deps.engine, ruleset, datetime(2000, 1, 1, tzinfo=UTC))
    assert report.total == 2 and report.changed == 1
    assert report.categories[("general", "complaint")] == 1 and report.categories[("appointment", "appointment")] == 1
    assert "general -> complaint: 1" in report.format()
    with Session(pipeline.deps.engine) as session:
        assert sorted(d.category for d in session.exec(select(Decision)).all()) == ["appointment", "general"]
    assert len(pipeline.relay.received) == 2

    if pipeline.settings.effective_database_url.startswith("sqlite"):
        env_run = subprocess.run(
            [sys.executable, "-m", "services", "replay", "--since", "2000-01-01", "--rules", str(candidate), "--json"],
            capture_output=True,
            text=True,
            check=False,
            cwd=PROJECT_ROOT,
            env={**os.environ, "CHANNELSHIFT_DATABASE_URL": pipeline.settings.effective_database_url},
        )
        assert env_run.returncode == 0, env_run.stderr
        assert json.loads(env_run.stdout)["category_shift"] == [{"from": "general", "to": "complaint", "count": 1}]


def test_expected_failures_are_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    assert main(["rules", "explain", str(tmp_path / "missing.eml")]) == 1
    assert capsys.readouterr().err.strip() == f"no such file: {tmp_path / 'missing.eml'}"
    (tmp_path / "a.eml").write_bytes(b"Subject: x\r\n\r\nhallo\r\n")
    assert main(["rules", "eval", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"no such file: {tmp_path / 'labels.csv'}"
    broken = tmp_path / "rules"
    broken.mkdir()
    (broken / "00-settings.yaml").write_text("settings: [\n")
    assert main(["rules", "explain", "--rules", str(broken), str(tmp_path / "a.eml")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the rule set does not validate" in err and "00-settings.yaml:" in err


def test_port_in_use_is_one_line(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "services", "gateway"],
            env={
                **clean_env(),
                "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{port}",
                "CHANNELSHIFT_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
                "CHANNELSHIFT_REDIS_URL": redis_url,
                "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "address already in use" in result.stderr.lower(), result.stderr


async def test_inject_needs_no_rule_set(pipeline: Pipeline, tmp_path: Path) -> None:
    broken = tmp_path / "rules"
    broken.mkdir()
    (broken / "00-settings.yaml").write_text("settings: [\n")
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services", "inject", str(mail), "--server", f"127.0.0.1:{pipeline.smtp_port}"],
        env={**clean_env(), "CHANNELSHIFT_RULES_DIR": str(broken)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "accepted for 1 recipient(s)"
