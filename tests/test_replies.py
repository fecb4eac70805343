"""Replies: every template in six languages renders into valid MIME, German always included, nothing injected."""

from __future__ import annotations

import email
import re
import shutil
from datetime import UTC, datetime
from email.policy import compat32
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import Session, select

from services.config import PROJECT_ROOT
from services.domain import REPLY_LANGUAGES
from services.mail import parse_mail
from services.reply.compose import REPLY_POLICY, compose_reply, threading_headers
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules
from services.store.models import JobState, Message, Reply
from services.web.app import create_app
from tests.support import Pipeline, make_mail, start_pipeline

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
RENDERER = ReplyRenderer(PROJECT_ROOT / "templates")
TEMPLATES = sorted(
    {r.rule.then.reply for r in RULESET.rules if r.rule.then.reply}
    | {c.reply for c in RULESET.settings.categories.values() if c.reply}
)
LANGUAGES = list(REPLY_LANGUAGES)
SCRIPT = {"uk": "[іїєґ]", "ru": "[ыэъё]|[а-я]", "ar": "[\u0600-\u06ff]", "tr": "[ğışçöü]", "en": "[a-z]"}
RECEIVED = datetime(2026, 3, 16, 7, 42, tzinfo=UTC)


def test_every_template_exists_in_all_languages() -> None:
    assert len(TEMPLATES) == 11
    for template in TEMPLATES:
        for language in LANGUAGES:
            assert RENDERER.has(template, language), f"{template}/{language}"
            assert (PROJECT_ROOT / "templates" / "replies" / template / f"{language}.html.j2").is_file()


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_reply_renders_and_parses(template: str, language: str) -> None:
    rendered = RENDERER.render(template, language, RULESET.settings, RECEIVED, reference="abc123")
    inbound = parse_mail(make_mail())
    in_reply_to, references = threading_headers(inbound)
    message = compose_reply(
        rendered,
        in_reply_to=in_reply_to,
        references=references,
        from_name="Jobcenter Musterstadt",
        from_address="info@jobcenter-musterstadt.example",
        to_address="citizen@example.org",
        reply_message_id="<reply.x@gateway.test>",
    )
    parsed = email.message_from_bytes(message.as_bytes(), policy=default_policy)
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    # receipt confirmed with date and local time (Berlin: 08:42 in March)
    assert "16.03.2026" in text and "08:42" in text
    # German is always there, and it is the legally binding text
    assert "Ihre E-Mail ist am 16.03.2026 um 08:42 Uhr" in text
    if language != "de":
        assert re.search(SCRIPT[language], text.split("Deutsche Fassung")[0] if language != "en" else text)
        assert "German version (legally binding)" in text or "Deutsche Fassung" in text
        assert parsed["Content-Language"] == f"{language}, de"
    assert "{{" not in text and "{%" not in text
    if language == "ar":
        assert 'dir="rtl"' in html
    assert "<script" not in html


def test_objection_reply_says_email_does_not_keep_deadline() -> None:
    text = RENDERER.render("objection", "de", RULESET.settings, RECEIVED, reference="r").text
    assert "kein wirksamer Widerspruch" in text and "einem Monat" in text
    assert "Unterschrift" in text and "Niederschrift" in text


def test_emergency_reply_gives_phone_and_in_person_today() -> None:
    text = RENDERER.render("emergency", "en", RULESET.settings, RECEIVED, reference="r").text
    assert RULESET.settings.channels["emergency"].phone in text
    assert "in person today" in text and "persönlich vorbei" in text


def test_html_part_escapes_everything() -> None:
    settings = RULESET.settings.model_copy(update={"organisation": "<b>Amt</b> & Co"})
    html = RENDERER.render("general", "de", settings, RECEIVED, reference="r").html
    assert "<b>Amt</b>" not in html and "&lt;b&gt;Amt&lt;/b&gt; &amp; Co" in html


def test_first_application_reply_says_mail_counts_as_received() -> None:
    text = RENDERER.render("first_application", "de", RULESET.settings, RECEIVED, reference="r").text
    assert "gilt bereits als Antrag" in text and "16.03.2026" in text


INJECTED = (
    b"From: =?UTF-8?Q?Eve=0D=0ABcc:_victim@example.net?= <eve@example.org>\r\n"
    b"To: info@jobcenter-musterstadt.example\r\n"
    b"Subject: =?UTF-8?Q?a=0ABcc:_x@y?= =?UTF-8?Q?=0D=0AX-Evil:_1?=\r\n"
    b"Message-ID: <id1@example.org>=?UTF-8?Q?=0ABcc:_evil@example.net?=\r\n"
    b"References: <r1@example.org> =?UTF-8?Q?=0D=0ABcc:_refs@example.net?=\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Wann haben Sie ge\xc3\xb6ffnet?\r\n"
)


async def test_encoded_word_header_injection_cannot_reach_the_reply(pipeline: Pipeline) -> None:
    await pipeline.send(INJECTED, sender="eve@example.org")
    await pipeline.work()
    [reply] = pipeline.relay.received
    assert reply.rcpt_tos == ["eve@example.org"]
    header_block = reply.data.split(b"\r\n\r\n", 1)[0]
    for line in header_block.split(b"\r\n"):
        assert not line.lower().startswith((b"bcc:", b"x-evil:")), line
    parsed = reply.message
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["In-Reply-To"] == "<id1@example.org>"
    assert parsed["References"] == "<r1@example.org> <id1@example.org>"
    body = parsed.get_body(("plain",)).get_content()
    assert "victim@example.net" not in body and "Bcc" not in body


async def test_reply_in_senders_language_with_german(pipeline: Pipeline) -> None:
    data = make_mail(
        subject="Питання",
        body="Добрий день! Я хотів би дізнатися, коли ви працюєте і чи можна прийти без запису. Дякую за відповідь.",
    )
    await pipeline.send(data)
    await pipeline.work()
    [reply] = pipeline.relay.received
    text = reply.message.get_body(("plain",)).get_content()
    assert text.startswith("Добрий день!")
    assert "Guten Tag," in text


@pytest.mark.parametrize("address", ["jürgen@example.org", "a b@example.org", "x@example.org\r\nBcc: y@z"])
def test_reply_to_an_address_that_cannot_be_a_header_is_refused(address: str) -> None:
    rendered = RENDERER.render("general", "de", RULESET.settings, RECEIVED, reference="r")
    with pytest.raises(ValueError):
        compose_reply(
            rendered,
            in_reply_to=None,
            references=None,
            from_name="Jobcenter",
            from_address="info@jobcenter-musterstadt.example",
            to_address=address,
            reply_message_id="<reply.x@gateway.test>",
        )


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_reply_headers_fold_as_compat32_does(template: str, language: str) -> None:
    """The quick header path writes exactly what compat32's Header folding writes; subjects are proper words."""
    rendered = RENDERER.render(template, language, RULESET.settings, RECEIVED, reference="abc123")
    message = compose_reply(
        rendered,
        in_reply_to="<original@example.org>",
        references="<first@example.org> <original@example.org>",
        from_name="Jobcenter Musterstädt",
        from_address="info@jobcenter-musterstadt.example",
        to_address="citizen@example.org",
        reply_message_id="<reply.x@gateway.test>",
    )
    data = message.as_bytes()
    assert data == message.as_bytes(policy=compat32.clone(linesep="\r\n"))
    head = data.split(b"\r\n\r\n")[0].decode("ascii")
    assert all(len(line) <= 78 for line in head.split("\r\n"))
    assert all(len(word) <= 75 for word in re.findall(r"=\?[^?]+\?[qQbB]\?[^?]*\?=", head))
    parsed = email.message_from_bytes(data, policy=default_policy)
    assert parsed["Subject"] == rendered.subject


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=120))
def test_quick_fold_equals_compat32(value: str) -> None:
    stock = compat32.clone(linesep="\r\n")
    for name in ("To", "Content-Language", "X-Auto-Response-Suppress"):
        assert REPLY_POLICY.fold(name, value) == stock.fold(name, value)


async def test_template_edit_that_does_not_validate_never_reaches_a_reply(
    tmp_path: Path, clean_database: str, clean_redis: str
) -> None:
    """Replies render the templates as the running set validated them, not a broken edit on disk."""
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", templates)
    pipeline = await start_pipeline(tmp_path, clean_database, clean_redis, templates_dir=templates)
    try:
        general = templates / "replies" / "general" / "de.txt.j2"
        general.write_text(general.read_text(encoding="utf-8") + "{{ case_number }}\n", encoding="utf-8")
        assert not pipeline.deps.rules.refresh() and pipeline.deps.rules.errors
        await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
        await pipeline.work()
        [reply] = pipeline.relay.received
        assert "Guten Tag," in reply.message.get_body(("plain",)).get_content()
    finally:
        await pipeline.close()
        await pipeline.pool.aclose()
        pipeline.deps.engine.dispose()


async def test_render_failure_at_send_time_fails_the_reply_for_good_and_counts_it(
    tmp_path: Path, clean_database: str, clean_redis: str
) -> None:
    """A failure only the live context triggers: the reply fails (counted, in the API), never stays sending."""
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", templates)
    general = templates / "replies" / "general" / "de.txt.j2"
    # validation renders with the sample reference, so only a real message reaches the missing key
    trap = '{% if reference != "SAMPLE123456" %}{{ channels.portal.nosuch }}{% endif %}\n'
    general.write_text(general.read_text(encoding="utf-8") + trap, encoding="utf-8")
    pipeline = await start_pipeline(tmp_path, clean_database, clean_redis, templates_dir=templates)
    try:
        await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
        await pipeline.work()
        assert pipeline.relay.received == [] and len(pipeline.delivery.received) == 1
        with Session(pipeline.deps.engine) as session:
            [message] = session.exec(select(Message)).all()
            reply = session.get(Reply, message.id)
            assert reply is not None and reply.state == JobState.FAILED
            assert "cannot be rendered" in (reply.error or "") and "'nosuch'" in (reply.error or "")
        app = create_app(pipeline.deps.settings, pipeline.deps.engine, pipeline.pool, pipeline.deps.rules)
        async with TestClient(TestServer(app)) as client:
            view = await (await client.get(f"/api/v1/messages/{message.id}")).json()
            assert view["reply"]["state"] == "failed" and "cannot be rendered" in view["reply"]["error"]
            metrics = await (await client.get("/metrics")).text()
        assert 'channelshift_replies_total{category="general",channel="overview",state="failed"} 1.0' in metrics
    finally:
        await pipeline.close()
        await pipeline.pool.aclose()
        pipeline.deps.engine.dispose()


async def test_readyz_shows_missing_language_warnings(tmp_path: Path, clean_database: str, clean_redis: str) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", templates)
    (templates / "replies" / "complaint" / "tr.txt.j2").unlink()
    pipeline = await start_pipeline(tmp_path, clean_database, clean_redis, templates_dir=templates)
    try:
        app = create_app(pipeline.deps.settings, pipeline.deps.engine, pipeline.pool, pipeline.deps.rules)
        async with TestClient(TestServer(app)) as client:
            ready = await (await client.get("/readyz")).json()
        [warning] = ready["checks"]["rules"]["warnings"]
        assert "complaint" in warning and "no tr.txt.j2" in warning
    finally:
        await pipeline.close()
        await pipeline.pool.aclose()
        pipeline.deps.engine.dispose()
