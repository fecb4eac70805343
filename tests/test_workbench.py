"""The managers' workbench: rule hits for a known history, the preview as `channelshift preview`, the replay table."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import Session, select

from services.store.models import Decision
from services.store.rulehits import rule_hits
from services.web.app import create_app
from services.web.auth import CSRF_FIELD
from tests.chromium import Page, chromium_or_skip, chromium_page
from tests.support import ADMIN_TOKEN, AUTH, Pipeline, add_decision, clean_env, make_mail
from tests.support import log_in as log_in_client

ROOT = Path(__file__).resolve().parent.parent
Client = TestClient[web.Request, web.Application]
PHONE = {"width": 390, "height": 844}
AT = "2026-12-01T10:30"  # a Tuesday morning in Europe/Berlin: office hours


def known_history(pipeline: Pipeline, now: datetime) -> str:
    """emergency: 2 in the last 7 days, 1 more within 30, 1 older; a model path and a retired rule."""
    version = pipeline.deps.rules.current.version
    day = timedelta(days=1)
    with Session(pipeline.deps.engine) as session:
        add_decision(session, 1, "emergency", now - day, version, "emergency")
        add_decision(session, 2, "emergency", now - 2 * day, "older-version", "emergency")
        add_decision(session, 3, "emergency", now - 10 * day, version, "emergency")
        add_decision(session, 4, "emergency", now - 40 * day, "older-version", "emergency")
        add_decision(session, 5, "model:documents", now - 3 * day, version, "documents")
        add_decision(session, 6, "retired-rule", now - 20 * day, "older-version")
        session.commit()
    return version


def decided_categories(pipeline: Pipeline) -> dict[str, str]:
    with Session(pipeline.deps.engine) as session:
        return {d.message_id: d.category for d in session.exec(select(Decision)).all()}


@pytest.fixture
async def client(pipeline: Pipeline) -> AsyncIterator[Client]:
    app = create_app(
        pipeline.settings_with(admin_token=ADMIN_TOKEN), pipeline.deps.engine, pipeline.pool, pipeline.deps.rules
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def cells(html: str, rule_id: str) -> dict[str, str]:
    """The data-field cells of the table row of one rule id."""
    row = re.search(rf'<tr data-rule="{re.escape(rule_id)}"[^>]*>(.*?)</tr>', html, re.S)
    assert row, rule_id
    return dict(re.findall(r'data-field="([a-z_0-9]+)"[^>]*>([^<]*)<', row.group(1)))


def test_rule_hits_of_a_known_history(pipeline: Pipeline) -> None:
    now = datetime.now(UTC)
    version = known_history(pipeline, now)
    hits = rule_hits(pipeline.deps.engine, now, version)
    emergency = hits["emergency"]
    assert (emergency.last_7d, emergency.last_30d, emergency.this_version, emergency.total) == (2, 3, 2, 4)
    assert emergency.last_hit is not None and abs(emergency.last_hit - (now - timedelta(days=1))) < timedelta(seconds=1)
    assert (hits["model:documents"].last_7d, hits["model:documents"].this_version) == (1, 1)
    retired = hits["retired-rule"]
    assert (retired.last_7d, retired.last_30d, retired.this_version, retired.total) == (0, 1, 0, 1)
    assert set(hits) == {"emergency", "model:documents", "retired-rule"}


async def test_workbench_page_lists_hits_and_the_rules_that_never_fired(pipeline: Pipeline, client: Client) -> None:
    known_history(pipeline, datetime.now(UTC))
    response = await client.get("/workbench", headers=AUTH)
    assert response.status == 200
    html = await response.text()
    assert cells(html, "emergency") == {"last_7d": "2", "last_30d": "3", "this_version": "2"}
    assert cells(html, "model:documents") == {"last_7d": "1", "last_30d": "1", "this_version": "1"}
    assert cells(html, "retired-rule") == {"last_7d": "0", "last_30d": "1", "this_version": "0"}
    never = re.search(r'<ul id="never-fired">(.*?)</ul>', html, re.S)
    assert never
    shipped = {compiled.rule.id for compiled in pipeline.deps.rules.current.rules}
    assert set(re.findall(r'data-rule="([^"]+)"', never.group(1))) == shipped - {"emergency"}
    # decisions but no staff answer yet: no precision figure (it would read 100 %), a note instead
    assert 'data-field="precision"' not in html and "Noch keine Rückmeldungen." in html
    # display names from settings.labels, German by default, English on request
    assert "Notlage" in html or "Notfall" in html
    english = await (await client.get("/workbench?lang=en", headers=AUTH)).text()
    assert "Never fired" in english and "Nie ausgelöst" not in english


async def test_workbench_needs_the_admin_session(client: Client) -> None:
    response = await client.get("/workbench", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/dashboard/login"
    assert (await client.get("/workbench/corrections.csv", allow_redirects=False)).status == 303
    # a bearer token is no session: it carries no CSRF token, and none is needed (no browser sends it)
    posted = await client.post("/workbench/try", data={"eml": "Subject: x\r\n\r\nHallo"}, headers=AUTH)
    assert posted.status == 200
    anonymous = await client.post("/workbench/try", data={"eml": "Subject: x\r\n\r\nHallo"}, allow_redirects=False)
    assert anonymous.status == 303
    # logged in, a form without the session's CSRF token is refused (a forged cross-site post)
    assert (await log_in_client(client)).status == 303
    forged = await client.post("/workbench/try", data={"eml": "Subject: x\r\n\r\nHallo"})
    assert forged.status == 403
    page = await (await client.get("/workbench")).text()
    token = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page)
    assert token
    with_token = await client.post(
        "/workbench/try", data={"eml": "Subject: x\r\n\r\nHallo", CSRF_FIELD: token.group(1)}
    )
    assert with_token.status == 200 and 'id="verdict"' in await with_token.text()


@pytest.mark.settings(workbench_max_upload_bytes=2048)
async def test_the_upload_limit_is_kept(pipeline: Pipeline, client: Client) -> None:
    big = make_mail(body="Guten Tag, " + "lang " * 1000)
    response = await client.post("/workbench/try", data={"eml": big.decode()}, headers=AUTH)
    assert response.status == 413
    assert 'id="preview-problem"' in await response.text()
    empty = await client.post("/workbench/try", data={"eml": "   "}, headers=AUTH)
    assert empty.status == 400


def cli_preview(path: Path, settings_env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "services", "preview", str(path), "--at", AT],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**clean_env(), **settings_env},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def cli_part(output: str, kind: str) -> str:
    """The decoded body of the first part of this type in `channelshift preview` output."""
    found = re.search(rf"--- part \d+: {re.escape(kind)}, [^\n]*decoded ---\n(.*?)(?=\n\n--- part |\Z)", output, re.S)
    assert found, output[-3000:]
    return found.group(1).rstrip()


async def serve(pipeline: Pipeline) -> tuple[web.AppRunner, str]:
    app = create_app(
        pipeline.settings_with(admin_token=ADMIN_TOKEN), pipeline.deps.engine, pipeline.pool, pipeline.deps.rules
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def log_in(page: Page, base: str, target: str) -> None:
    await page.call("Page.navigate", url=f"{base}{target}")
    await page.wait_for("location.pathname === '/dashboard/login' && document.readyState === 'complete'")
    await page.evaluate(
        f"document.querySelector('input[name=token]').value = {ADMIN_TOKEN!r};document.querySelector('form').submit()"
    )
    await page.wait_for("location.pathname === '/dashboard' && document.readyState === 'complete'")
    # the dashboard's navigation leads to the workbench
    await page.evaluate("document.getElementById('nav-workbench').click()")
    await page.wait_for("location.pathname === '/workbench' && document.readyState === 'complete'")


async def upload(page: Page, path: Path) -> None:
    document = await page.call("DOM.getDocument")
    node = await page.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#try input[type=file]")
    await page.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])
    await page.evaluate(f"document.querySelector('#try input[name=at]').value = {AT!r}")
    # the page before is already /workbench/try after the first mail: wait for a new document, not the old one
    await page.evaluate("window.__submitted = true; document.querySelector('#try form').submit()")
    await page.wait_for(
        "!window.__submitted && location.pathname === '/workbench/try' && document.readyState === 'complete'"
    )


async def no_overflow(page: Page) -> None:
    """Nothing sticks out sideways: wide tables and mail text scroll or wrap inside their cards."""
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


async def test_workbench_preview_in_chromium_shows_the_reply_channelshift_preview_prints(
    pipeline: Pipeline, corpus_dir: Path, tmp_path: Path
) -> None:
    chromium_or_skip()
    settings = pipeline.deps.settings
    env = {
        "CHANNELSHIFT_PUBLIC_URL": settings.public_url,
        "CHANNELSHIFT_HOSTNAME": settings.hostname,
        "CHANNELSHIFT_VAR_DIR": str(tmp_path / "cli-var"),
    }
    mails = [corpus_dir / "citizen-mails" / name for name in ("001-documents.eml", "007-documents.eml")]
    expected = await asyncio.gather(*(asyncio.to_thread(cli_preview, mail, env) for mail in mails))
    runner, base = await serve(pipeline)
    try:
        for width, height in ((1280, 1400), (PHONE["width"], PHONE["height"])):
            async with chromium_page(tmp_path / f"profile-{width}", width, height) as page:
                await page.call("DOM.enable")
                await log_in(page, base, "/workbench")
                await no_overflow(page)
                for mail, output in zip(mails, expected, strict=True):
                    await upload(page, mail)
                    shown = await page.evaluate(
                        "[...document.querySelectorAll('.reply-part')].map(p => [p.dataset.type, p.textContent])"
                    )
                    parts = dict(shown)
                    assert parts["text/plain"].rstrip() == cli_part(output, "text/plain")
                    assert "<!DOCTYPE html>" in parts["text/html"] or "<html" in parts["text/html"]
                    category = re.search(r"^category:\s+(\S+)", output, re.M)
                    assert category
                    assert await page.evaluate(
                        "document.querySelector('[data-field=category]').dataset.value"
                    ) == category.group(1)
                    assert await page.evaluate("document.querySelectorAll('#trace li[data-rule]').length") >= 1
                    await no_overflow(page)
                assert await page.evaluate("window.__csp") == []
    finally:
        await runner.cleanup()


def candidate_folder(root: Path) -> Path:
    """The shipped rule set plus one rule that sends every mail with 'Umzugskarton' in its subject to complaint."""
    folder = root / "candidates" / "karton"
    shutil.copytree(ROOT / "routing_rules", folder, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    (folder / "25-karton.yaml").write_text(
        "rules:\n"
        "  - id: karton\n"
        "    description: a what-if rule for the test\n"
        "    when:\n"
        "      subject:\n"
        "        keywords: [umzugskarton]\n"
        "    then:\n"
        "      category: complaint\n"
        "      channel: phone\n"
        "      reply: complaint\n",
        encoding="utf-8",
    )
    return folder


@pytest.mark.settings(workbench_candidates_dir=lambda tmp_path: tmp_path / "candidates")
async def test_replay_of_a_candidate_folder_shows_the_shift(pipeline: Pipeline, client: Client, tmp_path: Path) -> None:
    folder = candidate_folder(tmp_path)
    (tmp_path / "outside").mkdir()
    (folder.parent / "link-out").symlink_to(tmp_path / "outside")
    for n in range(3):
        await pipeline.send(make_mail(subject=f"Umzugskarton {n}", body="Ich bin umgezogen, neue Adresse folgt."))
    await pipeline.send(make_mail(subject="Termin", body="Ich kann meinen Termin morgen nicht wahrnehmen."))
    await pipeline.work()
    before = decided_categories(pipeline)
    page = await (await client.get("/workbench", headers=AUTH)).text()
    assert '<option value="karton">' in page
    response = await client.post("/workbench/replay", data={"candidate": "karton", "days": "7"}, headers=AUTH)
    assert response.status == 200
    html = await response.text()
    assert 'id="replay-result"' in html
    assert re.search(r'data-field="total">4<', html) and re.search(r'data-field="changed">3<', html)
    moves = re.search(r'<table class="categories" id="category-moves">(.*?)</table>', html, re.S)
    assert moves
    rows = re.findall(
        r'<tr><th scope="row">([^<]+)</th><td>([^<]+)</td><td data-field="count">(\d+)</td></tr>', moves.group(1)
    )
    labels = pipeline.deps.rules.current.settings.labels["de"].categories
    assert sum(int(n) for _, _, n in rows) == 3 and {to for _, to, _ in rows} == {labels.get("complaint", "complaint")}
    assert decided_categories(pipeline) == before and "complaint" not in before.values()  # nothing is written
    for refused in ("../outside", str(tmp_path / "outside"), "link-out", "", "karton/../../outside"):
        answer = await client.post("/workbench/replay", data={"candidate": refused, "days": "7"}, headers=AUTH)
        assert answer.status == 403, refused
        assert 'id="replay-problem"' in await answer.text()


async def test_replay_without_an_allowed_folder_is_refused(client: Client) -> None:
    page = await (await client.get("/workbench", headers=AUTH)).text()
    assert "CHANNELSHIFT_WORKBENCH_CANDIDATES_DIR" in page
    response = await client.post("/workbench/replay", data={"candidate": "/etc", CSRF_FIELD: "x"}, headers=AUTH)
    assert response.status == 403


@pytest.mark.settings(workbench_candidates_dir=lambda tmp_path: tmp_path / "candidates")
async def test_an_invalid_candidate_is_refused_with_its_file_and_line(
    pipeline: Pipeline, client: Client, tmp_path: Path
) -> None:
    folder = tmp_path / "candidates" / "broken"
    folder.mkdir(parents=True)
    (folder / "50-broken.yaml").write_text("rules:\n  - id: Bad Id\n    then: {category: general}\n")
    response = await client.post("/workbench/replay", data={"candidate": "broken"}, headers=AUTH)
    assert response.status == 422
    html = await response.text()
    assert 'id="replay-problem"' in html and "50-broken.yaml:" in html and 'id="replay-result"' not in html
