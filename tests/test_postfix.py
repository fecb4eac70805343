"""A real Postfix (private instance on loopback ports) in front of the gateway, and for the reply going out."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from services.reply.send import SmtpSender
from services.store.models import Message, MessageState
from services.store.queries import opened_messages
from tests.support import SERVED, Pipeline, free_port, make_mail, wait_for_smtp

POSTFIX = shutil.which("postfix") or ("/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None)

MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup    fifo  n - n 60  1 pickup
cleanup   unix  n - n -   0 cleanup
qmgr      fifo  n - n 300 1 qmgr
rewrite   unix  - - n -   - trivial-rewrite
bounce    unix  - - n -   0 bounce
defer     unix  - - n -   0 bounce
trace     unix  - - n -   0 bounce
verify    unix  - - n -   1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -   - proxymap
smtp      unix  - - n -   - smtp
relay     unix  - - n -   - smtp
showq     unix  n - n -   - showq
error     unix  - - n -   - error
retry     unix  - - n -   - error
discard   unix  - - n -   - discard
lmtp      unix  - - n -   - lmtp
anvil     unix  - - n -   1 anvil
scache    unix  - - n -   1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def _log(tmp_path: Path) -> str:
    log = tmp_path / "maillog"
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


@pytest.fixture
def postfix(pipeline: Pipeline) -> Iterator[int]:
    if POSTFIX is None:
        if os.environ.get("CI"):
            pytest.fail("postfix missing in CI (.ci/run installs Debian's postfix)")
        pytest.skip("postfix not installed")
    # Postfix's unprivileged daemons must be able to reach their queue: pytest's tmp dirs are 0700
    tmp_path = Path(tempfile.mkdtemp(prefix="cs-postfix-"))
    tmp_path.chmod(0o755)
    config = tmp_path / "postfix"
    config.mkdir()
    smtp_port = free_port()
    sink_port = pipeline.deps.settings.relay_url.rsplit(":", 1)[1]  # type: ignore[union-attr]
    (config / "main.cf").write_text(
        textwrap.dedent(f"""\
        compatibility_level = 3.6
        queue_directory = {tmp_path}/queue
        data_directory = {tmp_path}/data
        mail_owner = postfix
        setgid_group = postdrop
        inet_interfaces = 127.0.0.1
        inet_protocols = ipv4
        myhostname = mx.channelshift.test
        mydestination =
        alias_maps =
        alias_database =
        local_transport = error:5.1.1 no local delivery in this test
        mynetworks = 127.0.0.0/8
        relay_domains = jobcenter-musterstadt.example
        smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
        transport_maps = inline:{{ jobcenter-musterstadt.example=lmtp:inet:127.0.0.1:{pipeline.lmtp_port}, example.org=smtp:[127.0.0.1]:{sink_port} }}
        smtp_tls_security_level = none
        smtpd_tls_security_level = none
        maillog_file = {tmp_path}/maillog
        maillog_file_prefixes = {tmp_path}
        syslog_name = postfix-channelshift-test
        queue_run_delay = 1s
        minimal_backoff_time = 1s
        maximal_backoff_time = 2s
        """)
    )
    (config / "master.cf").write_text(MASTER_CF.format(smtp_port=smtp_port))
    (tmp_path / "queue").mkdir()
    (tmp_path / "data").mkdir()
    shutil.chown(tmp_path / "data", user="postfix")
    run = [POSTFIX, "-c", str(config)]
    checked = subprocess.run([*run, "check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr + _log(tmp_path)
    started = subprocess.run([*run, "start"], capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr + _log(tmp_path)
    try:
        wait_for_smtp(smtp_port, timeout=20)
        yield smtp_port
    finally:
        subprocess.run([*run, "stop"], capture_output=True, check=False)
        print(_log(tmp_path))
        shutil.rmtree(tmp_path, ignore_errors=True)


async def test_mail_in_through_postfix_and_reply_out_through_postfix(pipeline: Pipeline, postfix: int) -> None:
    pipeline.deps.reply_sender = SmtpSender(f"smtp://127.0.0.1:{postfix}")
    data = make_mail(subject="Neue Adresse", body="Ich bin umgezogen, meine neue Adresse ist ...")

    def submit() -> None:
        with smtplib.SMTP("127.0.0.1", postfix, timeout=10) as client:
            client.sendmail("citizen@example.org", [SERVED], data)

    await asyncio.to_thread(submit)
    deadline = time.monotonic() + 30
    while True:  # Postfix queues it and hands it to the gateway over LMTP
        with Session(pipeline.deps.engine) as session:
            stored = opened_messages(session)
        if stored or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    [message] = stored
    assert message.protocol == "lmtp" and message.mail_from == "citizen@example.org"
    assert message.raw is not None and b"Received: from" in message.raw and b"mx.channelshift.test" in message.raw

    await pipeline.work()
    deadline = time.monotonic() + 30
    while not pipeline.relay.received and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # the reply went to Postfix, which relays it to the sink
    [reply] = pipeline.relay.received
    assert reply.mail_from == "<>" and reply.rcpt_tos == ["citizen@example.org"]
    assert reply.message["Auto-Submitted"] == "auto-replied"
    assert "mx.channelshift.test" in str(reply.message["Received"])
    with Session(pipeline.deps.engine) as session:
        assert session.get(Message, message.id).state == MessageState.DELIVERED  # type: ignore[union-attr]
