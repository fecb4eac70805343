"""Outages, limits and hostile input on the real gateway and worker: nothing lost, nothing answered twice."""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlmodel import Session, select

from services.gateway.server import tls_context
from services.reply.send import MaildirSender, PermanentSendError, SmtpSender
from services.store.db import make_engine
from services.store.models import Decision, Delivery, JobState, Message, MessageState, Reply
from services.store.queries import load_message, opened_messages
from tests.support import (
    SERVED,
    Pipeline,
    clean_env,
    envelope_sender_of,
    free_port,
    make_mail,
    send,
    start_role,
    terminate,
    wait_for_smtp,
)


def _states(pipeline: Pipeline) -> Counter[str]:
    with Session(pipeline.deps.engine) as session:
        return Counter(m.state for m in session.exec(select(Message)).all())


async def _later(seconds: float, action: object) -> None:
    await asyncio.sleep(seconds)
    action()  # type: ignore[operator]


@pytest.mark.settings(retry_base_seconds=0.2)
async def test_relay_answering_4xx_is_retried_and_sent_once(pipeline: Pipeline) -> None:
    pipeline.relay.answer = "451 4.3.0 relay busy"
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    recover = asyncio.create_task(_later(1.5, lambda: setattr(pipeline.relay, "answer", "250 2.0.0 OK")))
    await pipeline.work()
    await recover
    assert len(pipeline.relay.received) == 1
    with Session(pipeline.deps.engine) as session:
        [reply] = session.exec(select(Reply)).all()
    assert reply.state == JobState.SENT and reply.attempts >= 2


@pytest.mark.settings(retry_base_seconds=0.2)
async def test_relay_down_then_back(pipeline: Pipeline) -> None:
    working = pipeline.deps.reply_sender
    pipeline.deps.reply_sender = SmtpSender(f"smtp://127.0.0.1:{free_port()}")  # nobody listens there
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    recover = asyncio.create_task(_later(1.5, lambda: setattr(pipeline.deps, "reply_sender", working)))
    await pipeline.work()
    await recover
    assert len(pipeline.relay.received) == 1 and len(pipeline.delivery.received) == 1


@pytest.mark.settings(retry_base_seconds=0.2)
async def test_staff_mailbox_full_is_retried(pipeline: Pipeline) -> None:
    pipeline.delivery.answer = "452 4.2.2 mailbox full"
    await pipeline.send(make_mail(subject="Widerspruch", body="Hiermit lege ich Widerspruch ein."))
    recover = asyncio.create_task(_later(1.5, lambda: setattr(pipeline.delivery, "answer", "250 2.0.0 OK")))
    await pipeline.work()
    await recover
    assert len(pipeline.delivery.received) == 1
    assert _states(pipeline) == Counter({MessageState.DELIVERED: 1})


@pytest.mark.settings(retry_base_seconds=0.2)
async def test_maildir_write_error_is_retried_not_lost(pipeline: Pipeline, tmp_path: Path) -> None:
    broken = tmp_path / "delivered"
    broken.mkdir()
    (broken / "new").write_text("a file where the maildir's new/ should be: every write fails")
    pipeline.deps.delivery_sender = MaildirSender(broken)
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    repair = asyncio.create_task(_later(1.5, lambda: (broken / "new").unlink()))
    await pipeline.work()
    await repair
    assert len(list((broken / "new").iterdir())) == 1
    with Session(pipeline.deps.engine) as session:
        [delivery] = session.exec(select(Delivery)).all()
    assert delivery.state == JobState.SENT and delivery.attempts >= 2


async def test_recipient_connection_and_line_limits(pipeline: Pipeline) -> None:
    recipients = [f"team-{i}@jobcenter-musterstadt.example" for i in range(101)]
    refused = await send(pipeline.smtp_port, "a@example.org", recipients, make_mail())
    assert list(refused.values()) == [(452, b"4.5.3 too many recipients")]

    def open_many() -> list[smtplib.SMTP | int]:
        sessions: list[smtplib.SMTP | int] = []
        for _ in range(21):
            try:
                sessions.append(smtplib.SMTP("127.0.0.1", pipeline.smtp_port, timeout=10))
            except smtplib.SMTPConnectError as exc:
                sessions.append(exc.smtp_code)
        return sessions

    sessions = await asyncio.to_thread(open_many)
    assert sessions[-1] == 421 and all(isinstance(s, smtplib.SMTP) for s in sessions[:-1])
    for session in sessions[:-1]:
        assert isinstance(session, smtplib.SMTP)
        await asyncio.to_thread(session.quit)

    long_line = b"From: a@example.org\r\nTo: " + SERVED.encode() + b"\r\nSubject: x\r\n\r\n" + b"x" * 150_000 + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as error:
        await pipeline.send(long_line)
    assert error.value.smtp_code == 500


async def test_over_limit_mail_is_stored_delivered_flagged_and_not_answered(pipeline: Pipeline) -> None:
    huge_header = make_mail(
        subject="Frage", body="Wann haben Sie geöffnet?", headers={"X-Junk": " ".join(["y" * 70] * 2000)}
    )
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(100_000))
    bomb = (
        b"From: bomb@example.org\r\nTo: " + SERVED.encode() + b"\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    )
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n" % (i, i) for i in range(1000))
    nest = (
        b"From: nest@example.org\r\nTo: "
        + SERVED.encode()
        + b"\r\nSubject: nest\r\nMIME-Version: 1.0\r\n"
        + nested
        + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    )
    addresses = b",\r\n ".join(b"u%d@example.org" % i for i in range(50_000))  # folded, as clients do
    crowd = b"From: crowd@example.org\r\nTo: " + SERVED.encode() + b", " + addresses + b"\r\nSubject: x\r\n\r\nhi\r\n"
    for data, sender in (
        (huge_header, "a@example.org"),
        (bomb, "bomb@example.org"),
        (nest, "nest@example.org"),
        (crowd, "crowd@example.org"),
    ):
        await pipeline.send(data, sender=sender)
    await pipeline.send(
        make_mail(subject="Frage", body="Wann haben Sie geöffnet?", sender="ok@example.org"), sender="ok@example.org"
    )
    await pipeline.work()
    assert _states(pipeline) == Counter({MessageState.DELIVERED: 5})
    # headers only: the stdlib's own parser would recurse on the 1,000-deep message
    flags = [re.search(rb"^X-Channelshift-Flags: (.*)$", m.data, re.MULTILINE) for m in pipeline.delivery.received]
    assert sum(1 for f in flags if f and b"limit:" in f.group(1)) == 4
    assert [r.rcpt_tos for r in pipeline.relay.received] == [["ok@example.org"]]
    with Session(pipeline.deps.engine) as session:
        reasons = Counter(d.suppressed for d in session.exec(select(Decision)).all())
    assert reasons["parse-limit"] == 4


def _raw_session(port: int, chunks: list[bytes], tls: ssl.SSLContext | None = None) -> list[bytes]:
    """Talk SMTP by hand; returns the server's lines after each chunk."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        stream = raw.makefile("rb")
        stream.readline()
        for chunk in chunks:
            raw.sendall(chunk)
            lines = [stream.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(stream.readline())
            answers.append(b"".join(lines))
    return answers


async def test_smtp_smuggling_is_one_message(pipeline: Pipeline) -> None:
    smuggle = (
        b"From: a@example.org\r\nTo: " + SERVED.encode() + b"\r\nSubject: outer\r\n\r\nhello\n.\r\n"
        b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<" + SERVED.encode() + b">\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nx\r\n.\r\n"
    )
    answers = await asyncio.to_thread(
        _raw_session,
        pipeline.smtp_port,
        [
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<" + SERVED.encode() + b">\r\n",
            b"DATA\r\n",
            smuggle,
            b"QUIT\r\n",
        ],
    )
    assert answers[4].startswith(b"250 2.0.0")
    with Session(pipeline.deps.engine) as session:
        [stored] = opened_messages(session)
    assert stored.raw is not None and b"smuggled" in stored.raw  # it stayed inside the one message


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def send_after_starttls(port: int, context: ssl.SSLContext) -> bytes:
    """A mail over STARTTLS; returns the final DATA answer."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("c")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("c")
        client.mail("a@example.org")
        client.rcpt(SERVED)
        code, text = client.data(make_mail())
        assert code == 250, text
        return text


def answer_after_injected_plaintext(port: int, context: ssl.SSLContext) -> bytes:
    """A MAIL FROM pipelined behind STARTTLS must be discarded: the RCPT after the handshake gets 503."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        stream = raw.makefile("rb")
        stream.readline()
        raw.sendall(b"EHLO c\r\n")
        while stream.readline()[3:4] == b"-":
            pass
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")  # pipelined into the handshake
        assert stream.readline().startswith(b"220")
        with context.wrap_socket(raw, server_hostname="localhost") as secure:
            secure_stream = secure.makefile("rb")
            secure.sendall(b"EHLO c\r\n")
            while secure_stream.readline()[3:4] == b"-":
                pass
            secure.sendall(b"RCPT TO:<" + SERVED.encode() + b">\r\n")
            return secure_stream.readline()


async def test_starttls_and_no_command_injection(pipeline: Pipeline, certificate: tuple[Path, Path]) -> None:
    server, port = await pipeline.extra_gateway(hostname="localhost", tls=tls_context(*certificate))
    client_context = ssl.create_default_context(cafile=str(certificate[0]))
    await asyncio.to_thread(send_after_starttls, port, client_context)
    answer = await asyncio.to_thread(answer_after_injected_plaintext, port, client_context)
    assert answer.startswith(b"503"), answer  # the plaintext MAIL FROM was discarded, not executed
    server.close()


def test_starttls_in_the_gateway_role_on_uvloop(
    tmp_path: Path, clean_database: str, clean_redis: str, certificate: tuple[Path, Path]
) -> None:
    """The gateway role runs on uvloop; aiosmtpd's STARTTLS (asyncio's SSLProtocol) must hold there too."""
    port = free_port()
    env = clean_env()
    env.update(
        {
            "CHANNELSHIFT_DATABASE_URL": clean_database,
            "CHANNELSHIFT_REDIS_URL": clean_redis,
            "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{port}",
            "CHANNELSHIFT_LMTP_LISTEN": "",
            "CHANNELSHIFT_HOSTNAME": "localhost",
            "CHANNELSHIFT_TLS_CERT_FILE": str(certificate[0]),
            "CHANNELSHIFT_TLS_KEY_FILE": str(certificate[1]),
            "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
        }
    )
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        gateway = start_role("gateway", env, log, tmp_path)
        try:
            wait_for_smtp(port)
            context = ssl.create_default_context(cafile=str(certificate[0]))
            queued = send_after_starttls(port, context)
            answer = answer_after_injected_plaintext(port, context)
        finally:
            terminate([gateway])
    output = log_path.read_text()
    assert '"event_loop": "uvloop"' in output, output
    assert answer.startswith(b"503"), answer
    message_id = queued.decode().rsplit(" ", 1)[-1]
    engine = make_engine(clean_database)
    try:
        with Session(engine) as session:
            stored = load_message(session, message_id)
            assert stored is not None and stored.raw is not None and b"Subject:" in stored.raw
    finally:
        engine.dispose()


async def test_crlf_in_addresses_never_reaches_the_relay(pipeline: Pipeline) -> None:
    sender = SmtpSender(pipeline.deps.settings.relay_url or "")
    for bad in ("victim@example.org\r\nRCPT TO:<x@y>", "a@example.org\nDATA"):
        with pytest.raises(PermanentSendError):
            await sender.send("k", "", [bad], b"Subject: x\r\n\r\nx\r\n")
    assert pipeline.relay.received == []


@pytest.mark.slow
async def test_every_thirdparty_file_through_the_real_gateway(pipeline: Pipeline, corpus_dir: Path) -> None:
    files = sorted(
        p
        for p in (corpus_dir / "thirdparty").rglob("*")
        if p.is_file() and not re.search(r"(LICENSE|COPYING|SOURCE_COMMIT|README|INDEX)|\.(ref|md|rst)$", p.name)
    )
    outcome: dict[str, Counter[str]] = defaultdict(Counter)

    def send_all() -> None:
        for path in files:
            folder = path.relative_to(corpus_dir / "thirdparty").parts[0]
            # on the wire SMTP lines end in CRLF; a sending MTA converts LF-only and CR-only files like these
            raw = re.sub(rb"\r\n|\r|\n", b"\r\n", path.read_bytes())
            sender = envelope_sender_of(raw)
            options = [] if sender.isascii() else ["SMTPUTF8"]
            try:
                with smtplib.SMTP("127.0.0.1", pipeline.smtp_port, timeout=30) as client:
                    refused = client.sendmail(sender, [SERVED], raw, mail_options=options)
                outcome[folder]["accepted" if not refused else "refused-rcpt"] += 1
            except smtplib.SMTPResponseException as exc:
                outcome[folder][f"rejected-{exc.smtp_code}"] += 1

    await asyncio.to_thread(send_all)
    await pipeline.work()
    print("per folder:", {folder: dict(counts) for folder, counts in sorted(outcome.items())})
    accepted = sum(c["accepted"] for c in outcome.values())
    assert accepted + sum(sum(v for k, v in c.items() if k != "accepted") for c in outcome.values()) == len(files)
    assert accepted >= len(files) * 0.95
    assert all(k == "accepted" or re.fullmatch(r"rejected-5\d\d", k) for c in outcome.values() for k in c)
    states = _states(pipeline)
    assert sum(states.values()) == accepted
    assert set(states) <= {MessageState.DELIVERED, MessageState.HELD}
    assert pipeline.relay.received == []  # not one bounce, auto-reply or test mail got an automatic reply


async def test_control_characters_in_rcpt_are_refused(pipeline: Pipeline) -> None:
    answers = await asyncio.to_thread(
        _raw_session,
        pipeline.smtp_port,
        [
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<info\rBcc@jobcenter-musterstadt.example>\r\n",
            b"QUIT\r\n",
        ],
    )
    assert answers[2][:1] == b"5", answers[2]


async def test_idle_session_is_dropped(pipeline: Pipeline) -> None:
    async def enqueue(message_ids: list[str]) -> None:
        raise AssertionError("nothing is sent in this test")

    server, port = await pipeline.extra_gateway(enqueue, session_timeout=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220")
    # nothing sent: the server hangs up after the idle timeout (aiosmtpd closes without a reply line)
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    writer.close()
    server.close()


BAD_ENVELOPE_ADDRESSES = {
    "nul": b"a\x00b",
    "soh": b"a\x01b",
    "esc": b"a\x1bb",
    "del": b"a\x7fb",
    "c1-nel": b"a\xc2\x85b",
    "c1-csi": b"a\xc2\x9bb",
}


@pytest.mark.parametrize("local", list(BAD_ENVELOPE_ADDRESSES.values()), ids=list(BAD_ENVELOPE_ADDRESSES))
async def test_control_characters_in_envelope_get_553(pipeline: Pipeline, local: bytes) -> None:
    domain = b"@jobcenter-musterstadt.example"
    answers = await asyncio.to_thread(
        _raw_session,
        pipeline.smtp_port,
        [
            b"EHLO c\r\n",
            b"MAIL FROM:<" + local + b"@example.org> SMTPUTF8\r\n",
            b"MAIL FROM:<a@example.org> SMTPUTF8\r\n",
            b"RCPT TO:<" + local + domain + b">\r\n",
            b"QUIT\r\n",
        ],
    )
    assert answers[1].startswith(b"553 5.1.7 sender address contains a control character"), answers[1]
    assert answers[2].startswith(b"250"), answers[2]
    assert answers[3].startswith(b"553 5.1.3 recipient address contains a control character"), answers[3]
    assert _states(pipeline) == Counter()


async def test_terminal_escape_sequence_in_envelope_gets_5xx(pipeline: Pipeline) -> None:
    """`[` is not address syntax: aiosmtpd's own parser refuses it (501) before our check sees the ESC."""
    answers = await asyncio.to_thread(
        _raw_session,
        pipeline.smtp_port,
        [
            b"EHLO c\r\n",
            b"MAIL FROM:<a\x1b[31mb@example.org>\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<info\x1b[2J@jobcenter-musterstadt.example>\r\n",
            b"QUIT\r\n",
        ],
    )
    assert answers[1][:1] == b"5" and answers[3][:1] == b"5", answers
    assert answers[2].startswith(b"250"), answers[2]


async def test_invalid_utf8_in_envelope_gets_553_not_451(pipeline: Pipeline) -> None:
    data = make_mail()
    answers = await asyncio.to_thread(
        _raw_session,
        pipeline.smtp_port,
        [
            b"EHLO c\r\n",
            b"MAIL FROM:<b\xfcrger@example.org>\r\n",  # Latin-1, not UTF-8
            b"MAIL FROM:<b\xc3\xbcrger@example.org> SMTPUTF8\r\n",  # the same name in UTF-8 is fine
            b"RCPT TO:<info\xff@jobcenter-musterstadt.example>\r\n",
            b"RCPT TO:<" + SERVED.encode() + b">\r\n",
            b"DATA\r\n",
            data + b".\r\n",
            b"QUIT\r\n",
        ],
    )
    assert answers[1].startswith(b"553 5.1.7 sender address is not valid UTF-8"), answers[1]
    assert answers[2].startswith(b"250"), answers[2]
    assert answers[3].startswith(b"553 5.1.3 recipient address is not valid UTF-8"), answers[3]
    assert answers[6].startswith(b"250 2.0.0"), answers[6]
    with Session(pipeline.deps.engine) as session:
        [stored] = opened_messages(session)
    assert stored.mail_from == "bürger@example.org" and stored.rcpt_tos == [SERVED]
