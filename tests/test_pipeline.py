"""End to end on real parts: smtplib -> gateway -> database -> arq on Redis -> worker -> relay sink."""

from __future__ import annotations

import asyncio
import re
import smtplib

import pytest
from sqlmodel import Session, select

from services import queue
from services.links import read_token
from services.store.models import Decision, Delivery, JobState, Message, MessageState, Reply
from services.store.queries import mark_transmitting, opened_messages
from services.store.records import SendRecord
from services.worker.jobs import deliver_original, process_message, send_reply, sweep
from tests.support import SERVED, Pipeline, make_mail

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _messages(pipeline: Pipeline) -> list[Message]:
    with Session(pipeline.deps.engine) as session:
        return opened_messages(session)


async def test_documents_mail_gets_steering_reply_and_reaches_staff(pipeline: Pipeline) -> None:
    data = make_mail(
        subject="Unterlagen",
        body="Anbei meine Kontoauszüge wie angefordert.",
        attachment=("kontoauszug.pdf", "application/pdf", PDF),
    )
    await pipeline.send(data)
    [stored] = _messages(pipeline)
    assert stored.raw == data  # byte for byte what the client sent
    assert stored.state == MessageState.RECEIVED

    await pipeline.work()

    [reply] = pipeline.relay.received
    assert reply.mail_from == "<>"  # MAIL FROM:<> as aiosmtpd records it
    assert reply.rcpt_tos == ["citizen@example.org"]
    message = reply.message
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["Precedence"] == "bulk"
    assert message["In-Reply-To"] and message["In-Reply-To"] in message["References"]
    assert message["Message-ID"].startswith("<reply.")
    text = message.get_body(("plain",)).get_content()
    link = re.search(r"http://127\.0\.0\.1:8080/r/([A-Za-z0-9_-]+)", text)
    assert link, text  # the upload link, routed through the click counter
    assert read_token(pipeline.deps.settings.effective_pseudonym_key, link.group(1)) == (stored.id, "upload")
    html = message.get_body(("html",)).get_content()
    assert f'<a href="{link.group(0)}">' in html

    [original] = pipeline.delivery.received
    assert original.rcpt_tos == [SERVED]
    delivered = original.message
    assert delivered["X-Channelshift-Category"] == "documents"
    assert delivered["X-Channelshift-Channel"] == "upload"
    assert delivered["X-Channelshift-Rule"] == "model:documents"  # the intent model decided, no rule
    assert delivered["X-Channelshift-Priority"] == "normal"
    assert delivered["X-Channelshift-Confidence"] == "high"
    # the body as it came, byte for byte; the feedback footer is a part of its own (tests/test_feedback.py)
    assert (stored.raw or b"").split(b"\r\n\r\n", 1)[1] in original.data
    assert delivered["X-Channelshift-Feedback"].startswith(pipeline.deps.settings.public_url + "/f/")

    [final] = _messages(pipeline)
    assert final.state == MessageState.DELIVERED


async def test_duplicate_and_retried_jobs_send_nothing_twice(pipeline: Pipeline) -> None:
    await pipeline.send(make_mail(subject="Termin verschieben", body="Kann ich den Termin verschieben?"))
    await pipeline.work()
    [stored] = _messages(pipeline)
    ctx = {"deps": pipeline.deps, "redis": pipeline.pool}
    # every job again, as a crashed worker or a sweep might run them
    assert await process_message(ctx, stored.id) == "decided"
    assert await send_reply(ctx, stored.id) == "skipped"
    assert await deliver_original(ctx, stored.id) == "skipped"
    for function in (queue.PROCESS, queue.SEND_REPLY, queue.DELIVER):
        await queue.enqueue(pipeline.pool, function, stored.id)
    await pipeline.work()
    assert len(pipeline.relay.received) == 1
    assert len(pipeline.delivery.received) == 1


async def test_concurrent_workers_decide_once(pipeline: Pipeline) -> None:
    await pipeline.send(make_mail(subject="Frage zum Bildungspaket", body="Wo beantrage ich das Bildungspaket?"))
    [stored] = _messages(pipeline)
    ctx = {"deps": pipeline.deps, "redis": pipeline.pool}
    await asyncio.gather(*(process_message(ctx, stored.id) for _ in range(4)))
    await asyncio.gather(
        *(send_reply(ctx, stored.id) for _ in range(4)), *(deliver_original(ctx, stored.id) for _ in range(4))
    )
    assert len(pipeline.relay.received) == 1
    assert len(pipeline.delivery.received) == 1
    with Session(pipeline.deps.engine) as session:
        assert len(session.exec(select(Decision)).all()) == 1


async def test_unserved_recipient_is_rejected_never_relayed(pipeline: Pipeline) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await pipeline.send(make_mail(), recipients=["someone@elsewhere.example"])
    code, text = refused.value.recipients["someone@elsewhere.example"]
    assert code == 550 and b"5.1.1" in text
    assert _messages(pipeline) == []


async def test_oversized_mail_gets_552(pipeline: Pipeline) -> None:
    for server in pipeline.servers[2:]:
        server.close()

    server, port = await pipeline.extra_gateway(max_message_size=10_000)
    from tests.support import send

    # announced with SIZE, refused at MAIL FROM; the same limit holds at DATA for clients that do not announce
    with pytest.raises(smtplib.SMTPSenderRefused) as error:
        await send(port, "citizen@example.org", [SERVED], make_mail(body="x" * 20_000))
    assert error.value.smtp_code == 552
    server.close()
    assert _messages(pipeline) == []


async def test_lmtp_answers_once_per_recipient(pipeline: Pipeline) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pipeline.lmtp_port)

    async def command(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        await writer.drain()
        return await reader.readline()

    assert (await reader.readline()).startswith(b"220")
    writer.write(b"LHLO client.test\r\n")
    await writer.drain()
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-")
    assert (await command(b"MAIL FROM:<citizen@example.org>")).startswith(b"250")
    assert (await command(b"RCPT TO:<info@jobcenter-musterstadt.example>")).startswith(b"250")
    assert (await command(b"RCPT TO:<leistung@jobcenter-musterstadt.example>")).startswith(b"250")
    assert (await command(b"RCPT TO:<x@elsewhere.example>")).startswith(b"550")
    assert (await command(b"DATA")).startswith(b"354")
    writer.write(make_mail().replace(b"\n", b"\r\n") + b"\r\n.\r\n")
    await writer.drain()
    first, second = await reader.readline(), await reader.readline()
    assert first.startswith(b"250 2.0.0") and second.startswith(b"250 2.0.0")
    writer.write(b"QUIT\r\n")
    writer.close()
    [stored] = _messages(pipeline)
    assert stored.protocol == "lmtp" and len(stored.rcpt_tos) == 2


async def test_database_unreachable_answers_451_never_250(pipeline: Pipeline) -> None:
    from services.store.db import make_engine
    from tests.support import send

    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")

    async def enqueue(message_ids: list[str]) -> None:
        raise AssertionError("must not enqueue what was not stored")

    server, port = await pipeline.extra_gateway(enqueue, engine=dead)
    with pytest.raises(smtplib.SMTPDataError) as error:
        await send(port, "citizen@example.org", [SERVED], make_mail())
    assert error.value.smtp_code == 451
    server.close()
    dead.dispose()


@pytest.mark.settings(sweep_after_seconds=0)
async def test_redis_down_at_arrival_mail_is_stored_and_swept_later(pipeline: Pipeline) -> None:
    from tests.support import send

    async def broken_enqueue(message_ids: list[str]) -> None:
        await queue.connect("unix:///nonexistent/redis.sock")

    server, port = await pipeline.extra_gateway(broken_enqueue)
    await send(
        port,
        "citizen@example.org",
        [SERVED],
        make_mail(subject="Neue Adresse", body="Ich bin umgezogen, meine neue Adresse ist ..."),
    )
    server.close()
    [stored] = _messages(pipeline)
    assert stored.state == MessageState.RECEIVED
    counts = await sweep({"deps": pipeline.deps, "redis": pipeline.pool})
    assert counts["received"] == 1
    await pipeline.work()
    [final] = _messages(pipeline)
    assert final.state == MessageState.DELIVERED
    assert len(pipeline.relay.received) == 1


async def test_relay_5xx_marks_reply_failed_original_still_delivered(pipeline: Pipeline) -> None:
    pipeline.relay.answer = "550 5.7.1 refused"
    await pipeline.send(make_mail(subject="Öffnungszeiten", body="Wann haben Sie geöffnet?"))
    await pipeline.work()
    [stored] = _messages(pipeline)
    with Session(pipeline.deps.engine) as session:
        reply = session.get(Reply, stored.id)
        delivery = session.get(Delivery, stored.id)
        assert reply is not None and reply.state == JobState.FAILED and "550" in (reply.error or "")
        assert delivery is not None and delivery.state == JobState.SENT
    assert len(pipeline.delivery.received) == 1


async def test_automated_mail_gets_no_reply_but_reaches_staff_flagged(pipeline: Pipeline) -> None:
    data = make_mail(
        subject="Automatische Antwort: Ihr Termin",
        body="Ich bin im Urlaub.",
        headers={"Auto-Submitted": "auto-replied"},
    )
    await pipeline.send(data)
    await pipeline.work()
    assert pipeline.relay.received == []
    [original] = pipeline.delivery.received  # an auto-reply can carry a citizen's words: not held
    assert original.message["X-Channelshift-Category"] == "automated"
    [stored] = _messages(pipeline)
    assert stored.state == MessageState.DELIVERED
    with Session(pipeline.deps.engine) as session:
        decision = session.get(Decision, stored.id)
        assert decision is not None and decision.category == "automated"
        assert decision.suppressed == "auto-submitted" and decision.rule_id == "automated"


async def test_null_sender_never_gets_reply(pipeline: Pipeline) -> None:
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"), sender="")
    await pipeline.work()
    assert pipeline.relay.received == []
    assert len(pipeline.delivery.received) == 1


async def test_second_mail_in_window_gets_no_second_reply(pipeline: Pipeline) -> None:
    await pipeline.send(make_mail(subject="Frage 1", body="Wann haben Sie geöffnet?"))
    await pipeline.work()
    await pipeline.send(make_mail(subject="Frage 2", body="Und am Samstag, haben Sie da auch geöffnet?"))
    await pipeline.work()
    assert len(pipeline.relay.received) == 1
    assert len(pipeline.delivery.received) == 2
    with Session(pipeline.deps.engine) as session:
        reasons = sorted(str(d.suppressed) for d in session.exec(select(Decision)).all())
    assert reasons == ["None", "already-replied"]


async def test_daily_cap_across_templates(pipeline: Pipeline) -> None:
    bodies = [
        ("Termin verschieben", "Kann ich meinen Termin verschieben?"),
        ("Neue Adresse", "Ich bin umgezogen."),
        ("Wo bleibt mein Geld", "Das Geld ist nicht angekommen."),
        ("Frage", "Wann haben Sie geöffnet?"),
    ]
    for subject, body in bodies:
        await pipeline.send(make_mail(subject=subject, body=body))
    await pipeline.work()
    assert len(pipeline.relay.received) == pipeline.settings.reply_daily_cap == 3
    with Session(pipeline.deps.engine) as session:
        assert [d.suppressed for d in session.exec(select(Decision)).all()].count("daily-cap") == 1


async def test_emergency_goes_to_staff_with_urgent_priority(pipeline: Pipeline) -> None:
    await pipeline.send(
        make_mail(subject="bitte helfen", body="Morgen wird mein Strom abgestellt und ich habe ein Baby.")
    )
    await pipeline.work()
    [original] = pipeline.delivery.received
    assert original.message["X-Channelshift-Category"] == "emergency"
    assert original.message["X-Channelshift-Priority"] == "urgent"
    [reply] = pipeline.relay.received
    text = reply.message.get_body(("plain",)).get_content()
    assert "+49 0000 0000000" in text and "persönlich" in text


async def test_forged_routing_headers_from_outside_are_replaced(pipeline: Pipeline) -> None:
    data = make_mail(
        subject="Frage",
        body="Wann haben Sie geöffnet?",
        headers={"X-Channelshift-Priority": "urgent", "X-Channelshift-Category": "emergency"},
    )
    await pipeline.send(data)
    await pipeline.work()
    [original] = pipeline.delivery.received
    assert original.message.get_all("X-Channelshift-Priority") == ["normal"]
    assert original.message.get_all("X-Channelshift-Category") == ["general"]


SAFETY_TEXT = (
    "Widerspruch gegen den Bescheid vom 3. März. Wir haben seit Tagen nichts zu essen und keinen Strom mehr, "
    "bitte helfen Sie uns."
)
AUTOMATED_VARIANTS = {
    "contact-form": {"headers": {"Auto-Submitted": "auto-generated"}, "subject": "Kontaktformular"},
    "spam-false-positive": {"headers": {"X-Spam-Flag": "YES"}, "subject": "Bescheid"},
    "precedence-bulk": {"headers": {"Precedence": "bulk"}, "subject": "Bescheid"},
    "list-unsubscribe": {"headers": {"List-Unsubscribe": "<mailto:x@example.org>"}, "subject": "Bescheid"},
    "admin-sender": {"sender": "praxis-admin@example.org", "subject": "Bescheid"},
    "bounce-subject": {"subject": "WG: Unzustellbar: Bescheid"},
}


@pytest.mark.parametrize("variant", AUTOMATED_VARIANTS, ids=list(AUTOMATED_VARIANTS))
async def test_safety_mail_with_an_automated_signal_reaches_staff_without_reply(
    pipeline: Pipeline, variant: str
) -> None:
    spec = AUTOMATED_VARIANTS[variant]
    await pipeline.send(
        make_mail(
            subject=str(spec["subject"]),
            body=SAFETY_TEXT,
            sender=str(spec.get("sender", "citizen@example.org")),
            headers=dict(spec.get("headers", {})),  # type: ignore[arg-type]
        )
    )
    await pipeline.work()
    [original] = pipeline.delivery.received
    assert original.message["X-Channelshift-Category"] in ("emergency", "objection")
    assert original.message["X-Channelshift-Priority"] in ("urgent", "high")
    assert pipeline.relay.received == []  # the automated signal still suppresses the reply
    [message] = _messages(pipeline)
    assert message.state == MessageState.DELIVERED


NEWSLETTER_TEXT = (
    "Stromsperre droht? In unserem Ratgeber erfahren Sie, wie Sie eine Stromsperre vermeiden und wo Sie Hilfe "
    "bekommen. Sie erhalten diese Mail, weil Sie unseren Newsletter abonniert haben."
)


@pytest.mark.parametrize("text", [NEWSLETTER_TEXT, SAFETY_TEXT], ids=["advice", "first-person"])
async def test_a_newsletter_with_safety_words_stays_automated_but_reaches_staff_urgent(
    pipeline: Pipeline, text: str
) -> None:
    """List headers and bulk precedence together: a newsletter. Its safety words raise the priority (someone
    reads it first) without counting it as a citizen's emergency; it is never answered."""
    headers = {"List-Id": "<tipps.verbraucher.example>", "Precedence": "bulk"}
    await pipeline.send(make_mail(subject="Aktuell: Stromsperren vermeiden", body=text, headers=headers))
    await pipeline.work()
    [original] = pipeline.delivery.received
    assert original.rcpt_tos == [SERVED]
    assert original.message["X-Channelshift-Category"] == "automated"
    assert original.message["X-Channelshift-Priority"] == "urgent"
    assert original.message["X-Channelshift-Flags"] == "safety-words: emergency"
    assert pipeline.relay.received == []
    with Session(pipeline.deps.engine) as session:
        [decision] = session.exec(select(Decision)).all()
    assert decision.category == "automated" and decision.priority == "urgent"


async def test_a_newsletter_without_safety_words_is_not_flagged(pipeline: Pipeline) -> None:
    headers = {"List-Id": "<tipps.verbraucher.example>", "Precedence": "bulk"}
    await pipeline.send(make_mail(subject="Neue Regelsätze", body="Die Regelsätze steigen im Januar.", headers=headers))
    await pipeline.work()
    [original] = pipeline.delivery.received
    assert original.message["X-Channelshift-Priority"] == "normal"
    assert original.message["X-Channelshift-Flags"] is None


async def test_a_delivery_report_quoting_an_emergency_is_still_held(pipeline: Pipeline) -> None:
    """Held, not silent: without a postmaster target it reaches staff flagged automated, not as an emergency."""
    report = make_mail(
        subject="Undelivered Mail Returned to Sender",
        body="This is the mail system. Your message could not be delivered: wir haben nichts zu essen.",
        sender="MAILER-DAEMON@example.org",
    )
    await pipeline.send(report)
    await pipeline.work()
    assert pipeline.relay.received == []
    [original] = pipeline.delivery.received
    assert original.rcpt_tos == [SERVED]
    assert original.message["X-Channelshift-Category"] == "automated"
    assert original.message["X-Channelshift-Rule"] == "automated-report"
    assert original.message["X-Channelshift-Priority"] == "normal"
    [message] = _messages(pipeline)
    assert message.state == MessageState.DELIVERED


async def test_a_reply_whose_claim_was_taken_over_is_not_transmitted(pipeline: Pipeline) -> None:
    """A worker that stalled past its lease finds its claim taken (the next attempt): it must not send."""
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    await pipeline.work()
    with Session(pipeline.deps.engine) as session:
        [message] = opened_messages(session)
        reply = session.get(Reply, message.id)
        assert reply is not None
        reply.state, reply.attempts = JobState.SENDING, 3  # another worker's claim, attempt 3
        session.add(reply)
        session.commit()
    with Session(pipeline.deps.engine) as session:
        assert not mark_transmitting(session, SendRecord(Reply, message.id, 2))  # the stalled worker held attempt 2
        session.commit()
        assert session.get(Reply, message.id).state == JobState.SENDING  # type: ignore[union-attr]
        assert mark_transmitting(session, SendRecord(Reply, message.id, 3))
        session.commit()
        assert session.get(Reply, message.id).state == JobState.TRANSMITTING  # type: ignore[union-attr]
