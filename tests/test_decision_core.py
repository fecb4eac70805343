"""One decision core: what the worker stores for a mail is what `rules explain` says for it, mail by mail."""

from __future__ import annotations

import asyncio
import re
import smtplib
from pathlib import Path

import pytest
from sqlmodel import Session, select

from services.domain import STORED_FIELDS, Verdict
from services.reply.decide import TIMEOUT_DEFECT
from services.store.models import Decision
from services.store.queries import opened_messages
from services.tools.explain import explain
from tests.support import SERVED, Pipeline, envelope_sender_of, make_mail

_SKIP = re.compile(r"(LICENSE|COPYING|SOURCE_COMMIT|README|INDEX)|\.(ref|md|rst|json|csv)$")
# the store's part of the reply decision (reply window and caps), which explain cannot see
_STORE_REASONS = {"already-replied", "daily-cap", "domain-daily-cap"}
# everything the decision table stores but what is compared on its own (reply, suppressed) or that explain
# does not give (the pseudonym; scores it gives as a list)
_COMPARED = tuple(name for name in STORED_FIELDS if name not in {"reply", "suppressed", "sender_pseudonym", "scores"})


def _corpus_mails(corpus: Path) -> list[Path]:
    citizen = sorted((corpus / "citizen-mails").glob("*.eml"))
    thirdparty = sorted(p for p in (corpus / "thirdparty").rglob("*") if p.is_file() and not _SKIP.search(p.name))
    return citizen + thirdparty


def _send_all(port: int, files: list[Path]) -> int:
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for path in files:
            raw = path.read_bytes()
            sender = envelope_sender_of(raw)
            if not sender.isascii():
                sender = ""
            try:
                client.sendmail(sender, [SERVED], raw)
                sent += 1
            except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused):
                client.rset()  # refused at the door (e.g. 553 for control characters): nothing to decide
    return sent


async def test_every_corpus_mail_gets_the_same_verdict_from_the_worker_and_from_explain(
    pipeline: Pipeline, corpus_dir: Path
) -> None:
    if "postgresql" in pipeline.settings.effective_database_url:
        pytest.skip("the verdict does not depend on the database; SQLite runs the corpus once")
    files = _corpus_mails(corpus_dir)
    sent = await asyncio.to_thread(_send_all, pipeline.smtp_port, files)
    assert sent > 1000
    await pipeline.work()
    with Session(pipeline.deps.engine) as session:
        messages = {m.id: m for m in opened_messages(session)}
        decisions = list(session.exec(select(Decision)))
    assert len(decisions) == len(messages) == sent
    ruleset = pipeline.deps.rules.current
    mismatches = []
    for decision in decisions:
        message = messages[decision.message_id]
        stored = Verdict.of_row(decision.model_dump())
        said = explain(
            ruleset,
            message.raw or b"",
            mail_from=message.mail_from,
            rcpt_to=list(message.rcpt_tos),
            received_at=message.received_at,
            policy=pipeline.deps.policy,
        )
        differing = [name for name in _COMPARED if _plain(getattr(stored, name)) != _plain(said[name])]
        reply_agrees = (stored.reply, stored.suppressed) == (said["reply"], said["suppressed"]) or (
            said["reply"] and not stored.reply and stored.suppressed in _STORE_REASONS
        )
        if differing or not reply_agrees:
            mismatches.append((decision.message_id, differing, stored.suppressed, said["suppressed"]))
    assert mismatches == []


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple | list) else value


# 1 ms: no 900 KB mail parses that fast, so the limit is reached without a slowed-down double
@pytest.mark.settings(classify_timeout_seconds=0.001)
async def test_a_mail_past_the_classification_time_limit_goes_to_staff_flagged_unanswered(
    pipeline: Pipeline,
) -> None:
    if "postgresql" in pipeline.settings.effective_database_url:
        pytest.skip("the limit does not depend on the database")
    body = "Sehr geehrte Damen und Herren, ich schicke meine Unterlagen. " * 15_000
    await pipeline.send(make_mail(subject="Unterlagen", body=body))
    await pipeline.work()
    assert pipeline.relay.received == []  # nothing was decided, so nothing is answered
    [original] = pipeline.delivery.received
    assert original.message["X-Channelshift-Priority"] == "high"
    assert TIMEOUT_DEFECT in original.message["X-Channelshift-Flags"]
    assert original.message["X-Channelshift-Rule"].startswith("limit:")
    with Session(pipeline.deps.engine) as session:
        [decision] = session.exec(select(Decision))
        assert (decision.path, decision.reply, decision.suppressed) == ("limit", False, "classify-timeout")
