"""Production shape: `gateway`, `worker` and `web` as separate processes on one database and one Redis."""

from __future__ import annotations

import email
import json
import re
import smtplib
import subprocess
import sys
import time
import urllib.request
from email.policy import default as default_policy
from pathlib import Path

from services.config import PROJECT_ROOT
from tests.support import SERVED, clean_env, free_port, make_mail, start_role, terminate, wait_until_ready


def test_separate_processes_share_the_work(tmp_path: Path, clean_database: str, clean_redis: str) -> None:
    smtp_port, web_port = free_port(), free_port()
    env = clean_env()
    env.update(
        {
            "CHANNELSHIFT_DATABASE_URL": clean_database,
            "CHANNELSHIFT_REDIS_URL": clean_redis,
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "CHANNELSHIFT_LMTP_LISTEN": "",
            "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{web_port}",
            "CHANNELSHIFT_ADMIN_TOKEN": "tok",
            "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
            "CHANNELSHIFT_PSEUDONYM_KEY": "shared-key",
        }
    )
    log_path = tmp_path / "processes.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    processes = [start_role(role, env, log, tmp_path) for role in ("gateway", "worker", "web")]
    try:
        wait_until_ready(web_port, processes, log_path)
        deadline = time.monotonic() + 30
        while True:  # the gateway may still be binding its port
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                    client.ehlo()
                    client.mail("citizen@example.org")
                    client.rcpt(SERVED)
                    code, text = client.data(make_mail(subject="Neue Adresse", body="Ich bin umgezogen."))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert code == 250
        found = re.search(rb"queued as ([0-9a-f]{32})", text)
        assert found
        message_id = found.group(1).decode()
        state = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                f"http://127.0.0.1:{web_port}/api/v1/messages/{message_id}", headers={"Authorization": "Bearer tok"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                state = json.loads(response.read())
            if state["state"] == "delivered" and state["reply"] and state["reply"]["state"] == "sent":
                break
            time.sleep(0.2)
        assert state["decision"]["category"] == "change_notice"
        assert state["state"] == "delivered" and state["reply"]["state"] == "sent"
        [reply] = list((tmp_path / "var" / "outbox" / "new").iterdir())
        assert email.message_from_bytes(reply.read_bytes(), policy=default_policy)["Auto-Submitted"] == "auto-replied"
    finally:
        terminate(processes)
        log.close()
    assert all(p.returncode == 0 for p in processes), log_path.read_text()


def test_roles_refuse_to_start_without_shared_redis(tmp_path: Path) -> None:
    env = clean_env()
    result = subprocess.run(
        [sys.executable, "-m", "services", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "CHANNELSHIFT_REDIS_URL" in result.stderr
    assert PROJECT_ROOT.is_dir()
