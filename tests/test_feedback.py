"""Staff feedback on misroutes: the signed link on delivered originals, the /f/ page, corrections in the store."""

from __future__ import annotations

import asyncio
import csv
import email
import io
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import Session

from services.reply.feedback import FEEDBACK_HEADER, make_token, read_token, with_footer_part
from services.store.corrections import (
    correction_pairs,
    newest_corrections,
    precision_by_category,
    record_correction,
)
from services.web.app import create_app
from services.web.auth import CSRF_FIELD
from tests.chromium import chromium_or_skip, chromium_page
from tests.support import (
    ADMIN_TOKEN,
    AUTH,
    SERVED,
    Pipeline,
    add_decision,
    clean_env,
    free_port,
    make_mail,
    smtp_send,
    start_role,
    terminate,
    wait_until_ready,
)

KEY = b"test-key"
MESSAGE_ID = "0123456789abcdef0123456789abcdef"
Client = TestClient[web.Request, web.Application]


def test_tokens_round_trip_and_refuse_anything_else() -> None:
    later = int(time.time()) + 3600
    token = make_token(KEY, MESSAGE_ID, "documents", later)
    read = read_token(KEY, token)
    assert read is not None and (read.message_id, read.category, read.expires_at) == (MESSAGE_ID, "documents", later)
    assert not read.expired() and read.expired(later)
    assert read_token(b"other-key", token) is None
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    assert read_token(KEY, flipped) is None
    assert read_token(KEY, token + "=") is None and read_token(KEY, token.replace("-", "+")) in (None, read)
    assert read_token(KEY, "x" * 60) is None and read_token(KEY, "") is None
    # the click-token key and the feedback key differ: a token of one kind is never valid as the other
    from services.links import make_token as click_token

    assert read_token(KEY, click_token(KEY, MESSAGE_ID, "portal") + "A" * 30) is None


def test_the_footer_is_a_part_of_its_own_and_the_citizens_bytes_stay() -> None:
    plain = make_mail(subject="Umzug", body="Guten Tag,\nich bin umgezogen. Grüße")
    mixed = make_mail(body="Anbei der Bescheid.", attachment=("bescheid.pdf", "application/pdf", b"%PDF-1.4 data"))
    for raw in (plain, mixed):
        out = with_footer_part(raw, "Falsch zugeordnet? https://jc.example/f/abc")
        body = raw.split(b"\r\n\r\n", 1)[1]
        assert body in out  # every byte of the citizen's body, as it came
        parsed = email.message_from_bytes(out, policy=default_policy)
        original = email.message_from_bytes(raw, policy=default_policy)
        assert parsed.get_content_type() == "multipart/mixed" and not parsed.defects
        first, footer = list(parsed.iter_parts())
        assert first.get_content_type() == original.get_content_type()
        for ours, theirs in zip(first.walk(), original.walk(), strict=True):
            assert ours.get_content_type() == theirs.get_content_type()
            if not ours.is_multipart():
                assert ours.get_payload(decode=True) == theirs.get_payload(decode=True)
        assert footer.get_content() == "Falsch zugeordnet? https://jc.example/f/abc"
        assert parsed["Subject"] == original["Subject"] and parsed["From"] == original["From"]


def test_precision_and_the_export_count_the_newest_answer(pipeline: Pipeline) -> None:
    now = datetime.now(UTC)
    version = pipeline.deps.rules.current.version
    with Session(pipeline.deps.engine) as session:
        for n in range(4):
            add_decision(session, 10 + n, "model:documents", now - timedelta(days=1), version, "documents")
        add_decision(session, 20, "general", now - timedelta(days=2), version, "general")
        add_decision(session, 30, "general", now - timedelta(days=45), version, "general")  # outside 30 days
        session.commit()
    engine = pipeline.deps.engine
    ids = [f"{n:032x}" for n in (10, 11, 12, 20, 30)]
    assert record_correction(engine, ids[0], "documents", "change_notice")
    assert record_correction(engine, ids[1], "documents", "sick_note")
    assert record_correction(engine, ids[1], "documents", "appointment")  # changed their mind: the newest counts
    assert record_correction(engine, ids[2], "documents", "documents")  # a confirmation
    assert record_correction(engine, ids[3], "general", "documents")
    assert record_correction(engine, ids[4], "general", "payment_status")
    assert not record_correction(engine, "f" * 32, "general", "documents")
    figures = precision_by_category(engine, now - timedelta(days=30))
    documents = figures["documents"]
    assert (documents.decided, documents.corrected_away, documents.confirmed, documents.corrected_in) == (4, 2, 1, 1)
    assert documents.precision == 0.5
    assert (figures["general"].decided, figures["general"].corrected_away) == (1, 1)
    assert figures["general"].precision == 0.0
    assert correction_pairs(engine) == {
        ("documents", "change_notice"): 1,
        ("documents", "sick_note"): 1,
        ("documents", "appointment"): 1,
        ("general", "documents"): 1,
        ("general", "payment_status"): 1,
    }
    exported = {(c.message_id, c.corrected_category) for c in newest_corrections(engine)}
    assert exported == {
        (ids[0], "change_notice"),
        (ids[1], "appointment"),
        (ids[3], "documents"),
        (ids[4], "payment_status"),
    }


async def serve(pipeline: Pipeline) -> tuple[web.AppRunner, str]:
    app = create_app(
        pipeline.settings_with(admin_token=ADMIN_TOKEN), pipeline.deps.engine, pipeline.pool, pipeline.deps.rules
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
            if found and ",".join(sorted(found.group(1).split(","))) == wanted:
                return float(found.group(2))
    return None


async def test_a_delivered_originals_link_records_a_correction_seen_on_workbench_and_metrics(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    chromium_or_skip()
    runner, base = await serve(pipeline)
    pipeline.reconfigure(feedback_base_url=base)  # staff reach this web process
    body = "Guten Tag,\r\nanbei meine Kontoauszüge für März.\r\nMit freundlichen Grüßen"
    raw = make_mail(subject="Kontoauszüge", body=body)
    try:
        await pipeline.send(raw)
        await pipeline.work()
        [delivered] = pipeline.delivery.received
        message = delivered.message
        link = message[FEEDBACK_HEADER]
        assert link and link.startswith(f"{base}/f/")
        parts = list(message.iter_parts())
        assert parts[-1].get_content().endswith(link)  # the footer names the same link
        assert raw.split(b"\r\n\r\n", 1)[1] in delivered.data  # the citizen's text, byte for byte
        decided = message["X-Channelshift-Category"]
        token = read_token(pipeline.deps.settings.effective_pseudonym_key, link.rsplit("/", 1)[1])
        assert token is not None and token.category == decided and token.message_id == message["X-Channelshift-Id"]
        first, second = ("sick_note", "appointment") if decided != "sick_note" else ("documents", "appointment")
        for (width, height), chosen in (((1280, 1000), first), ((390, 844), second)):
            async with chromium_page(tmp_path / f"profile-{width}", width, height) as page:
                await page.call("Page.navigate", url=link)
                await page.wait_for("document.readyState === 'complete' && !!document.getElementById('feedback-form')")
                assert await page.evaluate("document.getElementById('decided').dataset.category") == decided
                assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
                await page.evaluate(
                    f"document.querySelector('select[name=category]').value = {chosen!r};"
                    "document.getElementById('feedback-form').submit()"
                )
                await page.wait_for("document.readyState === 'complete' && !!document.getElementById('saved')")
                assert await page.evaluate("document.getElementById('saved').dataset.category") == chosen
                assert await page.evaluate("window.__csp") == []
        async with TestClient(TestServer(runner.app)) as client:
            metrics = await (await client.get("/metrics")).text()
            page = await (await client.get("/workbench", headers=AUTH)).text()
            exported = await (await client.get("/workbench/corrections.csv", headers=AUTH)).text()
    finally:
        await runner.cleanup()
    # every submission counts in /metrics; precision and the export take the newest answer
    assert metric(metrics, "channelshift_corrections_total", **{"from": decided, "to": first}) == 1.0
    assert metric(metrics, "channelshift_corrections_total", **{"from": decided, "to": second}) == 1.0
    labels = pipeline.deps.rules.current.settings.labels["de"].categories
    row = re.search(rf'<tr data-category="{re.escape(labels.get(decided, decided))}">(.*?)</tr>', page, re.S)
    assert row, page
    shown = dict(re.findall(r'data-field="([a-z_]+)"[^>]*>([^<]*)<', row.group(1)))
    assert shown["decided"] == "1" and shown["corrected_away"] == "1" and shown["precision"] == "0,0\u00a0%"
    [exported_row] = list(csv.DictReader(io.StringIO(exported)))
    assert exported_row["message_id"] == token.message_id and exported_row["corrected_category"] == second
    assert exported_row["decided_category"] == decided


async def feedback_form(client: Client, link: str) -> str:
    response = await client.get(link)
    assert response.status == 200
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', await response.text())
    assert found
    return found.group(1)


async def test_the_feedback_page_needs_no_login_but_a_valid_link_csrf_and_keeps_a_rate(pipeline: Pipeline) -> None:
    now = datetime.now(UTC)
    with Session(pipeline.deps.engine) as session:
        add_decision(session, 40, "general", now, pipeline.deps.rules.current.version)
        session.commit()
    settings = pipeline.settings_with(admin_token=ADMIN_TOKEN, feedback_max_per_hour=4)
    message_id = f"{40:032x}"
    key = settings.effective_pseudonym_key
    link = "/f/" + make_token(key, message_id, "general", int(time.time()) + 600)
    app = create_app(settings, pipeline.deps.engine, pipeline.pool, pipeline.deps.rules)
    async with TestClient(TestServer(app)) as client:
        csrf = await feedback_form(client, link)  # no session, no bearer: the signed link is the pass
        assert (await client.post(link, data={"category": "documents"})).status == 403  # no CSRF token
        assert (await client.post(link, data={"category": "no-such", CSRF_FIELD: csrf})).status == 400
        saved = await client.post(link, data={"category": "documents", CSRF_FIELD: csrf}, allow_redirects=False)
        assert saved.status == 303
        expired = "/f/" + make_token(key, message_id, "general", int(time.time()) - 1)
        assert (await client.get(expired)).status == 410
        unknown = "/f/" + make_token(key, "e" * 32, "general", int(time.time()) + 600)
        assert (await client.post(unknown, data={"category": "documents", CSRF_FIELD: csrf})).status == 404
        # three submissions reached the page (bad category, saved, unknown message); a guessed link is the fourth
        assert (await client.get("/f/" + "A" * 60)).status == 404
        limited = await client.get(link)
        assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    assert correction_pairs(pipeline.deps.engine) == {("general", "documents"): 1}


def _get(url: str, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def _delivered(var: Path, deadline: float) -> Path:
    while time.monotonic() < deadline:
        found = list((var / "delivered" / "new").glob("*.original.*"))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no original delivered to the staff maildir")


async def test_the_link_of_an_original_a_real_serve_run_delivered_records_a_correction(tmp_path: Path) -> None:
    chromium_or_skip()
    smtp_port, lmtp_port, web_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{web_port}"
    env = {
        **clean_env(),
        "CHANNELSHIFT_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
        "CHANNELSHIFT_LMTP_LISTEN": f"127.0.0.1:{lmtp_port}",
        "CHANNELSHIFT_WEB_LISTEN": f"127.0.0.1:{web_port}",
        "CHANNELSHIFT_FEEDBACK_BASE_URL": base,
        "CHANNELSHIFT_ADMIN_TOKEN": ADMIN_TOKEN,
        "CHANNELSHIFT_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = start_role("serve", env, log, tmp_path)
        try:
            await asyncio.to_thread(wait_until_ready, web_port, [process], log_path)
            raw = make_mail(subject="Kontoauszüge", body="Anbei meine Kontoauszüge für März.")
            await asyncio.to_thread(smtp_send, smtp_port, "citizen@example.org", [SERVED], raw)
            path = await asyncio.to_thread(_delivered, tmp_path / "var", time.monotonic() + 60)
            original = email.message_from_bytes(path.read_bytes(), policy=default_policy)
            link, decided = original[FEEDBACK_HEADER], original["X-Channelshift-Category"]
            assert link.startswith(f"{base}/f/") and list(original.iter_parts())[-1].get_content().endswith(link)
            chosen = "change_notice" if decided != "change_notice" else "documents"
            async with chromium_page(tmp_path / "profile") as page:
                await page.call("Page.navigate", url=link)
                await page.wait_for("document.readyState === 'complete' && !!document.getElementById('feedback-form')")
                await page.evaluate(
                    f"document.querySelector('select[name=category]').value = {chosen!r};"
                    "document.getElementById('feedback-form').submit()"
                )
                await page.wait_for("document.readyState === 'complete' && !!document.getElementById('saved')")
            metrics = await asyncio.to_thread(_get, f"{base}/metrics")
            workbench = await asyncio.to_thread(_get, f"{base}/workbench", AUTH)
        finally:
            terminate([process])
    assert metric(metrics, "channelshift_corrections_total", **{"from": decided, "to": chosen}) == 1.0
    assert 'data-field="corrected_away">1<' in workbench
    output = log_path.read_text()
    assert "citizen@example.org" not in output and "Kontoausz" not in output  # no personal data in logs
