"""Originals a strict staff relay refuses reach staff in a wrapper, or end as a counted, visible failure."""

from __future__ import annotations

import asyncio
import collections
import email
import re
import smtplib
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import Session, select

from services.metrics import PROCESS_REGISTRY
from services.reply.wrapper import is_clean
from services.store.models import Counter, Decision, Delivery, JobState, Message, MessageState
from services.store.queries import opened_messages
from tests.relays import use_staff_relay
from tests.support import AUTH, SERVED, Pipeline, envelope_sender_of, make_mail

UTF8_MAILBOX = "bürgerbüro@jobcenter-musterstadt.example"
FALLBACK = "poststelle@jobcenter-musterstadt.example"


def _send_utf8(port: int, recipients: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("citizen@example.org", recipients, data, mail_options=["SMTPUTF8"])


def _only(pipeline: Pipeline) -> tuple[Message, Delivery]:
    with Session(pipeline.deps.engine) as session:
        [message] = session.exec(select(Message)).all()
        [delivery] = session.exec(select(Delivery)).all()
    return message, delivery


def _outcomes(pipeline: Pipeline) -> dict[str, int]:
    with Session(pipeline.deps.engine) as session:
        counters = session.exec(select(Counter)).all()
    totals: dict[str, int] = {}
    for counter in counters:
        totals[counter.outcome] = totals.get(counter.outcome, 0) + counter.count
    return totals


def _stored_raw(pipeline: Pipeline) -> bytes:
    with Session(pipeline.deps.engine) as session:
        [message] = opened_messages(session)
    assert message.raw is not None
    return message.raw


def _attempts(form: str, result: str) -> float:
    labels = {"form": form, "result": result}
    return PROCESS_REGISTRY.get_sample_value("channelshift_delivery_attempts_total", labels) or 0.0


def _attachment(wrapper: EmailMessage) -> EmailMessage:
    [part] = list(wrapper.iter_attachments())
    assert isinstance(part, EmailMessage)
    return part


async def test_overlong_header_line_reaches_staff_in_a_wrapper(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline)
    words = [f"w{i:05d}" for i in range(15_000)]  # one 99,990-byte line: the gateway takes it, RFC 5322 does not
    data = make_mail(subject="Widerspruch", body="Hiermit lege ich Widerspruch ein.").replace(
        b"\r\n\r\n", b"\r\nX-Long: " + " ".join(words).encode()[:99_982] + b"\r\n\r\n", 1
    )
    assert max(len(line) for line in data.split(b"\r\n")) == 99_990
    await pipeline.send(data)
    await pipeline.work()

    [received] = staff.received
    wrapper = received.message
    assert isinstance(wrapper, EmailMessage)
    message, delivery = _only(pipeline)
    with Session(pipeline.deps.engine) as session:
        decision = session.get(Decision, message.id)
    assert decision is not None and decision.priority in ("high", "urgent")  # a Widerspruch: routing matters
    assert wrapper["X-Channelshift-Id"] == message.id and wrapper["X-Channelshift-Category"] == decision.category
    assert wrapper["X-Channelshift-Priority"] == decision.priority and wrapper["Importance"] == "high"
    assert wrapper["X-Channelshift-Wrapped"] == "message/rfc822 (re-encoded)"
    assert wrapper["X-Channelshift-Refused"] == "relay answered 500"
    inner = _attachment(wrapper).get_content()
    assert inner["X-Long"].split() == " ".join(words)[:99_982].split()  # folded, not cut
    assert inner.get_content().strip() == "Hiermit lege ich Widerspruch ein."
    assert all(len(line) <= 998 for line in received.data.split(b"\r\n")) and received.data.isascii()
    assert received.rcpt_tos == [SERVED]
    assert message.state == MessageState.DELIVERED
    assert delivery.state == JobState.SENT and delivery.attempts == 1
    assert "delivered as a wrapper" in (delivery.error or "")
    outcomes = _outcomes(pipeline)
    assert outcomes["delivered"] == 1 and outcomes["delivered-wrapped"] == 1


async def test_overlong_body_line_and_8bit_parts_are_reencoded(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline)
    html = "<p>" + "Sehr geehrte Damen und Herren, " * 400 + "</p>"  # 12,000 bytes on one line, 8-bit
    mail = EmailMessage()
    mail["From"] = "citizen@example.org"
    mail["To"] = SERVED
    mail["Subject"] = "Frage zu Öffnungszeiten"
    mail.set_content("Wann haben Sie geöffnet?", cte="8bit")
    mail.add_alternative(html, subtype="html", cte="8bit")
    await pipeline.send(mail.as_bytes(policy=default_policy.clone(linesep="\r\n", max_line_length=0)))
    await pipeline.work()

    [received] = staff.received
    wrapper = received.message
    assert isinstance(wrapper, EmailMessage)
    inner = _attachment(wrapper).get_content()
    assert inner["Subject"] == "Frage zu Öffnungszeiten"
    bodies = {part.get_content_type(): part.get_content() for part in inner.walk() if not part.is_multipart()}
    assert bodies["text/plain"].strip() == "Wann haben Sie geöffnet?"
    assert bodies["text/html"].strip() == html
    _message, delivery = _only(pipeline)
    assert delivery.state == JobState.SENT


async def test_unfoldable_original_goes_as_octet_stream(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline)
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n" % (i, i) for i in range(1000))
    data = (
        (b"From: nest@example.org\r\nTo: " + SERVED.encode() + b"\r\nSubject: nest\r\nMIME-Version: 1.0\r\n" + nested)
        + b"Content-Type: text/plain\r\n\r\n"
        + b"x" * 5000
        + b"\r\n"
    )
    await pipeline.send(data, sender="nest@example.org")
    await pipeline.work()

    [received] = staff.received
    wrapper = email.message_from_bytes(received.data, policy=default_policy)
    assert isinstance(wrapper, EmailMessage)
    part = _attachment(wrapper)
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_content().endswith(b"x" * 5000 + b"\r\n")
    assert wrapper["X-Channelshift-Wrapped"] == "application/octet-stream"
    assert "application/octet-stream" in wrapper.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_utf8_recipient_goes_to_a_relay_offering_smtputf8_as_it_is(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline, smtputf8=True)
    refused = await asyncio.to_thread(_send_utf8, pipeline.smtp_port, [UTF8_MAILBOX], make_mail(to=UTF8_MAILBOX))
    assert refused == {}
    await pipeline.work()

    [received] = staff.received
    assert received.rcpt_tos == [UTF8_MAILBOX] and "SMTPUTF8" in staff.mail_options[0]
    assert "X-Channelshift-Wrapped" not in received.message
    message, delivery = _only(pipeline)
    assert message.state == MessageState.DELIVERED and delivery.error is None


@pytest.mark.settings(delivery_fallback_to=FALLBACK)
async def test_utf8_recipient_to_a_relay_without_smtputf8_goes_to_the_ascii_fallback(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline, smtputf8=False)
    await asyncio.to_thread(_send_utf8, pipeline.smtp_port, [UTF8_MAILBOX], make_mail(to=UTF8_MAILBOX))
    await pipeline.work()

    [received] = staff.received
    assert received.rcpt_tos == [FALLBACK]
    wrapper = received.message
    assert "SMTPUTF8" in str(wrapper["X-Channelshift-Refused"])
    assert wrapper["X-Channelshift-Wrapped"] == "message/rfc822"  # the original is 7-bit already: unchanged
    assert _stored_raw(pipeline) in received.data  # byte for byte
    message, delivery = _only(pipeline)
    assert message.state == MessageState.DELIVERED and delivery.attempts == 1


async def test_utf8_and_ascii_recipients_wrapper_goes_to_the_ascii_one(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline, smtputf8=False)
    await asyncio.to_thread(_send_utf8, pipeline.smtp_port, [UTF8_MAILBOX, SERVED], make_mail(to=UTF8_MAILBOX))
    await pipeline.work()

    [received] = staff.received
    assert received.rcpt_tos == [SERVED] and "X-Channelshift-Wrapped" in received.message


@pytest.mark.settings(delivery_fallback_to=FALLBACK)
async def test_utf8_and_ascii_recipients_with_fallback_set_both_get_the_wrapper(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline, smtputf8=False)
    await asyncio.to_thread(_send_utf8, pipeline.smtp_port, [UTF8_MAILBOX, SERVED], make_mail(to=UTF8_MAILBOX))
    await pipeline.work()

    [received] = staff.received
    assert received.rcpt_tos == [SERVED, FALLBACK]  # the fallback stands in for the UTF-8 mailbox


async def test_utf8_recipient_without_any_ascii_target_is_a_visible_failure(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline, smtputf8=False)
    await asyncio.to_thread(_send_utf8, pipeline.smtp_port, [UTF8_MAILBOX], make_mail(to=UTF8_MAILBOX))
    await pipeline.work()

    assert staff.received == []
    message, delivery = _only(pipeline)
    assert message.state == MessageState.FAILED and delivery.state == JobState.FAILED
    assert "SMTPUTF8" in (delivery.error or "") and "FALLBACK_TO" in (delivery.error or "")
    assert _outcomes(pipeline)["delivery-failed"] == 1


async def test_relay_refusing_everything_is_counted_and_shown(
    pipeline: Pipeline, client: TestClient[object, object]
) -> None:
    staff = await use_staff_relay(pipeline)
    staff.refuse = "554 5.7.1 no thanks"
    refused_wrappers = _attempts("wrapper", "permanent")
    await pipeline.send(make_mail(subject="Widerspruch", body="Hiermit lege ich Widerspruch ein."))
    await pipeline.work()

    assert staff.received == [] and len(staff.answers) == 2  # the original, then the wrapper
    message, delivery = _only(pipeline)
    assert message.state == MessageState.FAILED
    assert delivery.state == JobState.FAILED and delivery.attempts == 1
    assert delivery.error == "original refused (relay answered 554); wrapper: relay answered 554"

    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["checks"]["deliveries"] == {"failed": 1, "failed_ids": [message.id]}
    detail = await (await client.get(f"/api/v1/messages/{message.id}", headers=AUTH)).json()
    assert detail["state"] == "failed" and detail["delivery"]["state"] == "failed"
    assert detail["delivery"]["error"] == delivery.error
    metrics = await (await client.get("/metrics")).text()
    assert 'channelshift_deliveries_total{state="failed"} 1.0' in metrics
    assert _attempts("wrapper", "permanent") == refused_wrappers + 1


@pytest.mark.settings(retry_base_seconds=0.2)
async def test_wrapper_refused_for_now_is_retried_with_the_original(pipeline: Pipeline) -> None:
    staff = await use_staff_relay(pipeline)
    staff.refuse_data = ["451 4.3.0 busy"]  # the original fails on its long line first, then the wrapper on this
    data = make_mail(subject="Frage", body="Wann?").replace(
        b"\r\n\r\n", b"\r\nX-Long: " + b"a " * 3000 + b"\r\n\r\n", 1
    )
    await pipeline.send(data)
    await pipeline.work()

    [received] = staff.received
    assert "X-Channelshift-Wrapped" in received.message
    _message, delivery = _only(pipeline)
    assert delivery.state == JobState.SENT and delivery.attempts == 2


class _BrokenSender:
    """A sender with a bug: neither kind of send error, the case that used to leave a delivery `sending`."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, key: str, envelope_from: str, recipients: list[str], data: bytes) -> None:
        self.calls += 1
        raise UnicodeEncodeError("ascii", "ü", 0, 1, "ordinal not in range(128)")

    async def close(self) -> None:
        """Nothing held."""


async def test_an_unforeseen_exception_is_permanent_never_stuck(pipeline: Pipeline) -> None:
    broken = _BrokenSender()
    pipeline.deps.delivery_sender = broken
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    await pipeline.work()

    assert broken.calls == 2  # the original, then the wrapper; no retry loop
    message, delivery = _only(pipeline)
    assert delivery.state == JobState.FAILED and message.state == MessageState.FAILED
    assert delivery.error == (
        "original refused (message cannot be sent to this relay: UnicodeEncodeError); "
        "wrapper: message cannot be sent to this relay: UnicodeEncodeError"
    )


@pytest.mark.slow
async def test_every_thirdparty_file_reaches_a_strict_staff_relay(pipeline: Pipeline, corpus_dir: Path) -> None:
    """The hostile corpus (8-bit headers and bodies, odd MIME) against a relay taking only 7-bit, 998-byte lines."""
    staff = await use_staff_relay(pipeline, smtputf8=False)
    staff.seven_bit = True
    files = sorted(
        p
        for p in (corpus_dir / "thirdparty").rglob("*")
        if p.is_file() and not re.search(r"(LICENSE|COPYING|SOURCE_COMMIT|README|INDEX)|\.(ref|md|rst)$", p.name)
    )

    def send_all() -> int:
        accepted = 0
        for path in files:
            raw = re.sub(rb"\r\n|\r|\n", b"\r\n", path.read_bytes())
            sender = envelope_sender_of(raw)
            try:
                with smtplib.SMTP("127.0.0.1", pipeline.smtp_port, timeout=30) as client:
                    client.sendmail(sender, [SERVED], raw, mail_options=[] if sender.isascii() else ["SMTPUTF8"])
                accepted += 1
            except smtplib.SMTPResponseException:
                pass
        return accepted

    accepted = await asyncio.to_thread(send_all)
    await pipeline.work()
    with Session(pipeline.deps.engine) as session:
        states = collections.Counter(m.state for m in session.exec(select(Message)).all())
        deliveries = session.exec(select(Delivery)).all()
    forms = collections.Counter(
        "original" if d.error is None else d.error.rsplit("wrapper (", 1)[-1].rstrip(")") for d in deliveries
    )
    print("accepted", accepted, "states", dict(states), "delivered as", dict(forms))
    assert sum(states.values()) == accepted
    assert set(states) <= {MessageState.DELIVERED, MessageState.HELD}  # not one failed
    assert len(staff.received) == states[MessageState.DELIVERED]
    assert all(is_clean(r.data) for r in staff.received if "X-Channelshift-Wrapped" in r.message)
