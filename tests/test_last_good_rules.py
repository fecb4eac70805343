"""A broken rule file at start: the service runs on the last good set from the database, or answers 451 until fixed."""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import text

from services.config import PROJECT_ROOT
from services.ruleset.reload import Fallback, RuleSetHolder
from services.store.db import make_engine
from services.store.rulesets import RuleSetStore
from tests.support import (
    PROBE_RULE,
    SERVED,
    clean_env,
    free_port,
    make_mail,
    start_role,
    terminate,
    wait_for_smtp,
    wait_until_ready,
)

BROKEN_RULE = PROBE_RULE.replace("feedback", "fax")
BROKEN_AT = "35-probe.yaml:2: rules[0].then.channel: unknown channel 'fax'"
SENDER = "citizen@example.org"


def _readyz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def _send(port: int, subject: str = "Kontoauszüge", body: str = "Anbei meine Kontoauszüge.") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(SERVED)[0] == 250
        code, answer = client.data(make_mail(subject=subject, body=body))
    assert code == 250
    found = re.search(rb"queued as ([0-9a-f]{32})", answer)
    assert found
    return found.group(1).decode()


def _reply_in_outbox(var: Path, message_id: str) -> None:
    _wait_for(lambda: list((var / "outbox" / "new").glob(f"{message_id}.reply.*")), f"reply to {message_id}")


class Serve:
    """`channelshift serve` in `home` (var/ beside it), restartable on the same var folder and database."""

    def __init__(self, home: Path, rules: Path) -> None:
        self.home, self.rules = home, rules
        self.smtp_port, self.web_port = free_port(), free_port()
        self.log_path = home / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = clean_env()
        env.update(
            {
                "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
                "CHANNELSHIFT_LMTP_LISTEN": "",
                "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{self.web_port}",
                "CHANNELSHIFT_RULES_DIR": str(self.rules),
                "CHANNELSHIFT_LOG_FORMAT": "json",
                "CHANNELSHIFT_RULES_RELOAD_SECONDS": "1",
            }
        )
        with open(self.log_path, "ab") as log:
            self.process = start_role("serve", env, log, self.home)
        wait_until_ready(self.web_port, [self.process], self.log_path)
        wait_for_smtp(self.smtp_port)

    def stop(self) -> None:
        assert self.process is not None
        terminate([self.process])
        assert self.process.wait() == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _rules_copy(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("tests"))
    return rules


def test_serve_restarted_with_a_broken_file_serves_on_the_last_good_set(tmp_path: Path) -> None:
    rules = _rules_copy(tmp_path)
    serve = Serve(tmp_path, rules)
    serve.start()
    try:
        good = _readyz(serve.web_port)["checks"]["rules"]
        assert good["source"] == "files" and good["reload_errors"] == []
    finally:
        serve.stop()

    (rules / "35-probe.yaml").write_text(BROKEN_RULE, encoding="utf-8")
    serve.start()
    try:
        check = _readyz(serve.web_port)["checks"]["rules"]
        assert check["version"] == good["version"] and check["source"] == "last-good"
        assert any(BROKEN_AT in error for error in check["reload_errors"])
        assert "last good set" in check["problem"]
        assert (tmp_path / "var" / "rules-last-good" / good["version"] / "rules" / "90-general.yaml").is_file()
        message_id = _send(serve.smtp_port)
        _reply_in_outbox(tmp_path / "var", message_id)

        # hot reload still watches the real folder: the fix becomes a new recorded version with its diff
        (rules / "35-probe.yaml").write_text(PROBE_RULE, encoding="utf-8")
        _wait_for(lambda: _readyz(serve.web_port)["checks"]["rules"]["source"] == "files", "switch to the files")
        fixed = _readyz(serve.web_port)["checks"]["rules"]
        assert fixed["version"] != good["version"] and fixed["reload_errors"] == []
        [newest, first] = _get(serve.web_port, "/api/v1/rulesets")["versions"]
        assert newest["version"] == fixed["version"] and first["version"] == good["version"]
        assert newest["previous_version"] == good["version"] and newest["activated_by"] == "serve"
        assert newest["changed"] == [{"path": "rules/35-probe.yaml", "change": "added"}]
        diff = _get(serve.web_port, f"/api/v1/rulesets/{newest['version']}")["diff"]
        assert "+++ " + newest["version"] + "/rules/35-probe.yaml" in diff and "+  - id: probe" in diff
        second = _send(serve.smtp_port, subject="Zauberwort", body="Wann haben Sie am Freitag geöffnet?")
        _reply_in_outbox(tmp_path / "var", second)
    finally:
        serve.stop()
    log = serve.log()
    assert '"event": "rules.started_on_last_good"' in log and BROKEN_AT in log
    assert SENDER not in log and "Kontoauszüge" not in log and "Zauberwort" not in log


def test_serve_without_any_good_set_answers_451_until_the_file_is_fixed(tmp_path: Path) -> None:
    rules = _rules_copy(tmp_path)
    (rules / "35-probe.yaml").write_text(BROKEN_RULE, encoding="utf-8")
    serve = Serve(tmp_path, rules)
    serve.start()  # starts (the listener answers), instead of exiting on the broken file
    try:
        check = _readyz(serve.web_port)["checks"]["rules"]
        assert check["version"] is None and "no rule set loaded" in check["problem"]
        assert any(BROKEN_AT in error for error in check["reload_errors"])
        with smtplib.SMTP("127.0.0.1", serve.smtp_port, timeout=30) as client:
            client.ehlo()
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(SERVED) == (451, b"4.3.0 rules not loaded, try again later")
            assert client.rcpt("someone@elsewhere.example")[0] == 451  # never a 5xx while nothing is loaded
        assert _status(serve.web_port, "/api/v1/summary") == 503  # what needs the rule set says so

        (rules / "35-probe.yaml").write_text(PROBE_RULE, encoding="utf-8")
        _wait_for(lambda: _readyz(serve.web_port)["checks"]["rules"]["version"] is not None, "rules loaded")
        assert _status(serve.web_port, "/api/v1/summary") == 200
        message_id = _send(serve.smtp_port)
        _reply_in_outbox(tmp_path / "var", message_id)  # the waiting worker has started
        [recorded] = _get(serve.web_port, "/api/v1/rulesets")["versions"]
        assert recorded["version"] == _readyz(serve.web_port)["checks"]["rules"]["version"]
    finally:
        serve.stop()
    log = serve.log()
    assert '"event": "rules.no_good_set"' in log and '"event": "worker.waiting_for_rules"' in log
    assert SENDER not in log and "Kontoauszüge" not in log


def test_separate_roles_start_on_the_last_good_set(tmp_path: Path, clean_database: str, clean_redis: str) -> None:
    """gateway, worker and web, each with a broken file, on SQLite and PostgreSQL: every role serves."""
    rules = _rules_copy(tmp_path)
    engine = make_engine(clean_database)
    with engine.begin() as connection:
        for table in ("ruleset_file", "ruleset_version", "ruleset_blob"):
            connection.execute(text(f"DELETE FROM {table}"))
    # a worker validated this set earlier (model trained), so it is a last good set for every role
    fallback = Fallback(RuleSetStore(engine), tmp_path / "earlier", "worker")
    good = RuleSetHolder(rules, PROJECT_ROOT / "templates", fallback=fallback).current.version
    engine.dispose()
    (rules / "35-probe.yaml").write_text(BROKEN_RULE, encoding="utf-8")

    smtp_port, web_port = free_port(), free_port()
    health = {"gateway": free_port(), "worker": free_port()}
    log_path = tmp_path / "roles.log"
    processes = []
    with open(log_path, "wb") as log:
        for role in ("gateway", "worker", "web"):
            env = clean_env()
            env.update(
                {
                    "CHANNELSHIFT_DATABASE_URL": clean_database,
                    "CHANNELSHIFT_REDIS_URL": clean_redis,
                    "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
                    "CHANNELSHIFT_LMTP_LISTEN": "",
                    "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{web_port}",
                    "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
                    "CHANNELSHIFT_PSEUDONYM_KEY": "shared-key",
                    "CHANNELSHIFT_RULES_DIR": str(rules),
                    "CHANNELSHIFT_LOG_FORMAT": "json",
                }
            )
            if role in health:
                env["CHANNELSHIFT_HEALTH_LISTEN"] = f"127.0.0.1:{health[role]}"
            processes.append(start_role(role, env, log, tmp_path))
    try:
        for port in (web_port, *health.values()):
            wait_until_ready(port, processes, log_path)
            check = _readyz(port)["checks"]["rules"]
            assert check["version"] == good and check["source"] == "last-good"
            assert any(BROKEN_AT in error for error in check["reload_errors"])
        wait_for_smtp(smtp_port)
        message_id = _send(smtp_port)
        _reply_in_outbox(tmp_path / "var", message_id)
    finally:
        terminate(processes)
    assert log_path.read_text().count('"event": "rules.started_on_last_good"') == 3
