"""Backscatter and held mail end to end: forged senders, the per-domain cap, plus-addressing, the postmaster target."""

from __future__ import annotations

import asyncio
import collections
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from services.store.models import Decision, Message, MessageState
from tests.support import SERVED, Pipeline, make_mail, start_pipeline

MX = "mx01.jobcenter-musterstadt.example"  # the authserv-id of the corpus' MX
QUESTION = ("Öffnungszeiten", "Wann haben Sie am Donnerstag geöffnet?")

PipelineFactory = Callable[..., Awaitable[Pipeline]]


@pytest.fixture
async def make_pipeline(tmp_path: Path, clean_database: str, clean_redis: str) -> AsyncIterator[PipelineFactory]:
    started: list[Pipeline] = []

    async def make(**overrides: Any) -> Pipeline:
        running = await start_pipeline(tmp_path, clean_database, clean_redis, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.close()
        await running.pool.aclose()
        running.deps.engine.dispose()


def with_headers(data: bytes, *lines: str) -> bytes:
    """Prepend header lines as the hops above us would: the first line is the topmost (nearest) hop."""
    return "".join(line + "\r\n" for line in lines).encode() + data


def _decisions(pipeline: Pipeline) -> list[Decision]:
    with Session(pipeline.deps.engine) as session:
        return list(session.exec(select(Decision)).all())


def _send_many(port: int, mails: list[tuple[str, bytes]]) -> None:
    """One SMTP session for many mails, as a sending MTA reuses its connection."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for sender, data in mails:
            client.sendmail(sender, [SERVED], data)


async def test_forged_sender_gets_no_reply_but_the_original_reaches_staff(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline(trusted_authserv_ids=MX)  # reply_auth unset: not-failed
    victim = "victim@example.org"
    forged = with_headers(
        make_mail(subject=QUESTION[0], body=QUESTION[1], sender=victim),
        f"Authentication-Results: {MX}; spf=fail smtp.mailfrom=example.org; dkim=none; "
        "dmarc=fail (p=reject dis=reject) header.from=example.org",
    )
    await pipeline.send(forged, sender=victim)
    await pipeline.work()
    assert pipeline.relay.received == []
    [original] = pipeline.delivery.received
    assert original.message["X-Channelshift-Reply"] == "suppressed (auth-failed)"
    assert original.message["X-Channelshift-Category"] == "general"
    [decision] = _decisions(pipeline)
    assert decision.suppressed == "auth-failed" and decision.reply is False


async def test_only_the_topmost_trusted_results_count(make_pipeline: PipelineFactory) -> None:
    """A forged 'pass' under our MX's name below the real result, and a real one below a foreign hop."""
    pipeline = await make_pipeline(trusted_authserv_ids=MX, reply_auth="aligned")
    forged_pass = (
        f"Authentication-Results: {MX}; spf=pass smtp.mailfrom=example.org; dmarc=pass header.from=example.org"
    )
    mails = {
        "a@example.org": with_headers(
            make_mail(subject="Frage A", body=QUESTION[1], sender="a@example.org"),
            f"Authentication-Results: {MX}; spf=softfail smtp.mailfrom=example.org; dmarc=fail header.from=example.org",
            forged_pass,
        ),
        "b@example.org": with_headers(
            make_mail(subject="Frage B", body=QUESTION[1], sender="b@example.org"),
            "Authentication-Results: relay.elsewhere.example; dmarc=pass header.from=example.org",
            forged_pass,
        ),
        "c@example.org": with_headers(
            make_mail(subject="Frage C", body=QUESTION[1], sender="c@example.org"),
            f"Authentication-Results: {MX}; dkim=pass header.d=example.org header.s=s1",
            "Authentication-Results: relay.elsewhere.example; dkim=fail header.d=example.org",
        ),
    }
    # a: a forged pass under our MX's name below the real result; b: below a foreign hop; c: a real pass
    for sender, data in mails.items():
        await pipeline.send(data, sender=sender)
    await pipeline.work()
    assert [r.rcpt_tos for r in pipeline.relay.received] == [["c@example.org"]]
    assert len(pipeline.delivery.received) == 3
    assert sorted(str(d.suppressed) for d in _decisions(pipeline)) == ["None", "unauthenticated", "unauthenticated"]


async def test_per_domain_cap_holds_under_300_forged_senders(make_pipeline: PipelineFactory) -> None:
    """A victim domain without SPF, DKIM or DMARC records: nothing fails, nothing authenticates."""
    pipeline = await make_pipeline(trusted_authserv_ids=MX)
    cap = pipeline.settings.reply_domain_daily_cap
    results = f"Authentication-Results: {MX}; spf=none smtp.mailfrom=victim.example; dkim=none; dmarc=none"
    mails = [
        (
            f"user{n}@victim.example",
            with_headers(make_mail(subject=QUESTION[0], body=QUESTION[1], sender=f"user{n}@victim.example"), results),
        )
        for n in range(300)
    ]
    await asyncio.to_thread(_send_many, pipeline.smtp_port, mails)
    await pipeline.work()
    print(f"replies into victim.example under 300 forged senders: {len(pipeline.relay.received)} (cap {cap})")
    assert cap == 20 and len(pipeline.relay.received) == cap
    assert len({r.rcpt_tos[0] for r in pipeline.relay.received}) == cap
    assert len(pipeline.delivery.received) == 300  # every original still reaches staff
    reasons = collections.Counter(d.suppressed for d in _decisions(pipeline))
    assert reasons == {None: cap, "domain-daily-cap": 300 - cap}


async def test_plus_addressing_and_case_fold_into_one_sender(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline()
    senders = [f"plus+{n}@example.org" for n in range(8)] + ["PLUS+x@Example.ORG", "plus@example.org"]
    mails = [(s, make_mail(subject=QUESTION[0], body=QUESTION[1], sender=s)) for s in senders]
    await asyncio.to_thread(_send_many, pipeline.smtp_port, mails)
    await pipeline.work()
    assert len(pipeline.relay.received) == 1
    assert len(pipeline.delivery.received) == len(senders)
    assert collections.Counter(d.suppressed for d in _decisions(pipeline)) == {None: 1, "already-replied": 9}


async def test_authenticated_senders_are_not_domain_capped(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline(trusted_authserv_ids=MX, reply_domain_daily_cap=2)
    mails = []
    for n in range(4):
        signed = f"signed{n}@example.org"
        mails.append(
            (
                signed,
                with_headers(
                    make_mail(subject=QUESTION[0], body=QUESTION[1], sender=signed),
                    f"Authentication-Results: {MX}; dkim=pass header.d=example.org; dmarc=pass header.from=example.org",
                ),
            )
        )
        unsigned = f"plain{n}@example.org"
        mails.append((unsigned, make_mail(subject=QUESTION[0], body=QUESTION[1], sender=unsigned)))
    await asyncio.to_thread(_send_many, pipeline.smtp_port, mails)
    await pipeline.work()
    replied = sorted(r.rcpt_tos[0] for r in pipeline.relay.received)
    assert [r for r in replied if r.startswith("signed")] == [f"signed{n}@example.org" for n in range(4)]
    assert len([r for r in replied if r.startswith("plain")]) == 2
    assert len(pipeline.delivery.received) == 8


async def test_without_authentication_results_no_domain_is_capped(make_pipeline: PipelineFactory) -> None:
    """reply_auth off: nothing can authenticate, so a cap would hit every citizen of a big mail provider."""
    pipeline = await make_pipeline(reply_domain_daily_cap=2)
    mails = [
        (f"c{n}@example.org", make_mail(subject=QUESTION[0], body=QUESTION[1], sender=f"c{n}@example.org"))
        for n in range(4)
    ]
    await asyncio.to_thread(_send_many, pipeline.smtp_port, mails)
    await pipeline.work()
    assert len(pipeline.relay.received) == 4


@pytest.mark.parametrize(
    "lines",
    [
        ("Auto-Submitted: no", "Auto-Submitted: auto-generated"),
        ("Precedence: first-class", "Precedence: bulk"),
        ("X-Spam-Flag: NO", "X-Spam-Flag: YES"),
        ("X-Spam-Status: Yes, score=15.2 required=5.0 tests=FORGED",),
        ("X-Spamd-Result: default: True [15.20 / 15.00]; FORGED_SENDER(0.30)[]",),
        ("X-Rspamd-Action: add header",),
        ("X-Loop: info@jobcenter-musterstadt.example",),
        ("X-Ack: no",),
        ("Feedback-ID: 1234:campaign:esp",),
    ],
    ids=[
        "auto-submitted",
        "precedence",
        "spam-flag",
        "spam-status",
        "spamd-result",
        "rspamd-action",
        "x-loop",
        "x-ack",
        "feedback-id",
    ],
)
async def test_every_header_instance_and_filter_verdict_is_read(
    make_pipeline: PipelineFactory, lines: tuple[str, ...]
) -> None:
    pipeline = await make_pipeline()
    await pipeline.send(with_headers(make_mail(subject=QUESTION[0], body=QUESTION[1]), *lines))
    await pipeline.work()
    assert pipeline.relay.received == []
    [original] = pipeline.delivery.received  # no reply, but staff read it
    assert original.message["X-Channelshift-Category"] == "automated"


def _delivery_report() -> bytes:
    return (
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        b"To: " + SERVED.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <dsn.1@mx.example.org>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.example.org.\r\n"
        b"--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\n"
        b"--b1--\r\n"
    )


async def test_held_mail_goes_to_the_postmaster_target(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline()
    holder = pipeline.deps.rules
    settings = holder.current.settings
    postmaster = "postmaster-team@jobcenter-musterstadt.example"
    holder.current = replace(
        holder.current, settings=settings.model_copy(update={"targets": {**settings.targets, "postmaster": postmaster}})
    )
    list_mail = make_mail(
        subject="[sgb2-forum] Neue Weisung",
        body="Liebe Liste, hier die neue Weisung.",
        sender="kollegin@example.net",
        to="sgb2-forum@lists.example.net",
        headers={
            "List-Id": "SGB II Forum <sgb2-forum.lists.example.net>",
            "List-Post": "<mailto:sgb2-forum@lists.example.net>",
        },
    )
    auto_reply = make_mail(
        subject="Abwesenheitsnotiz", body="Ich bin bis Montag nicht da.", headers={"Auto-Submitted": "auto-replied"}
    )
    await pipeline.send(_delivery_report(), sender="")
    await pipeline.send(list_mail, sender="sgb2-forum-bounces@lists.example.net")
    await pipeline.send(auto_reply)
    await pipeline.work()
    assert pipeline.relay.received == []
    delivered = sorted((r.message["X-Channelshift-Rule"], tuple(r.rcpt_tos)) for r in pipeline.delivery.received)
    # the report and the list traffic are held (to the postmaster); the auto-reply may carry a citizen's words
    assert delivered == [
        ("automated", (SERVED,)),
        ("automated-report", (postmaster,)),
        ("automated-report", (postmaster,)),
    ]
    with Session(pipeline.deps.engine) as session:
        states = [m.state for m in session.exec(select(Message)).all()]
    assert states == [MessageState.DELIVERED] * 3
