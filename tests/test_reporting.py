"""Channel metrics: API numbers equal what was sent, repeat senders, clicks, Prometheus, purge, dashboard."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import Session

from services.demo import run_demo
from services.store.purge import purge
from services.store.queries import opened_messages
from services.web.app import CLICKS, create_app
from tests.chromium import chromium_dom
from tests.support import AUTH, SERVED, Pipeline, clean_env, make_mail, send, start_pipeline

BERLIN = ZoneInfo("Europe/Berlin")  # the shipped rule set's time zone: the API counts its local days
TODAY = datetime.now(BERLIN).date().isoformat()


async def demo_gateway(pipeline: Pipeline) -> tuple[asyncio.Server, int]:
    return await pipeline.extra_gateway(demo_dates=True)


async def send_at(port: int, moment: datetime, sender: str, subject: str, body: str) -> None:
    data = make_mail(
        subject=subject, body=body, sender=sender, headers={"X-Channelshift-Demo-Received": moment.isoformat()}
    )
    await send(port, sender, [SERVED], data)


async def test_api_numbers_match_the_mails_sent(pipeline: Pipeline, client: TestClient[object, object]) -> None:
    mails = [
        ("Termin verschieben", "Kann ich den Termin verschieben?", "a@example.org", {}),
        ("Neue Adresse", "Ich bin umgezogen.", "b@example.org", {}),
        ("Frage", "Wann haben Sie geöffnet?", "c@example.org", {}),
        ("Frage", "Wann haben Sie geöffnet? Nochmal.", "c@example.org", {}),
        ("Urlaub", "Bin weg.", "d@example.org", {"Auto-Submitted": "auto-replied"}),
    ]
    for subject, body, sender, headers in mails:
        await pipeline.send(make_mail(subject=subject, body=body, sender=sender, headers=headers), sender=sender)
    await pipeline.work()

    for path in ("/api/v1/summary", "/api/v1/volumes", "/api/v1/volumes.csv", "/api/v1/compare", "/dashboard"):
        response = await client.get(path, allow_redirects=False)
        assert response.status in (401, 303), path

    summary = await (await client.get("/api/v1/summary", headers=AUTH)).json()
    assert summary["received"] == 5
    assert summary["replied"] == 3 and summary["replies_sent"] == 3
    assert summary["suppressed_by_reason"] == {"already-replied": 1, "auto-submitted": 1}
    assert summary["held"] == 0 and summary["delivered"] == 5  # an auto-reply is not held: staff read it
    assert summary["by_category"]["general"]["received"] == 2
    assert summary["reply_rate"] == 0.6

    volumes = await (await client.get(f"/api/v1/volumes?by=category&from={TODAY}&to={TODAY}", headers=AUTH)).json()
    assert {row["key"]: row["count"] for row in volumes["series"]} == {
        "appointment": 1,
        "change_notice": 1,
        "general": 2,
        "automated": 1,
    }
    by_outcome = await (
        await client.get("/api/v1/volumes?by=none&outcome=suppressed:&group_by=month", headers=AUTH)
    ).json()
    assert sum(row["count"] for row in by_outcome["series"]) == 2
    csv_text = await (await client.get("/api/v1/volumes.csv?by=channel", headers=AUTH)).text()
    assert csv_text.splitlines()[0] == "period,channel,outcome,count"
    assert sum(int(line.rsplit(",", 1)[1]) for line in csv_text.splitlines()[1:]) == 5

    yesterday = (datetime.now(BERLIN).date() - timedelta(days=1)).isoformat()
    compared = await (
        await client.get(
            f"/api/v1/compare?before_from={yesterday}&before_to={yesterday}&after_from={TODAY}&after_to={TODAY}",
            headers=AUTH,
        )
    ).json()
    assert compared["before"]["received"] == 0 and compared["after"]["received"] == 5
    bad = await client.get("/api/v1/volumes?group_by=year", headers=AUTH)
    assert bad.status == 400


async def test_metrics_are_open_and_pass_promtool(pipeline: Pipeline, client: TestClient[object, object]) -> None:
    await pipeline.send(make_mail(subject="Frage", body="Wann haben Sie geöffnet?"))
    await pipeline.work()
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'channelshift_mail_received_total{category="general",channel="overview"} 1.0' in text
    assert 'channelshift_replies_total{category="general",channel="overview",state="sent"} 1.0' in text
    assert "channelshift_ruleset_info{version=" in text and "channelshift_queue_depth 0.0" in text
    assert re.search(r'channelshift_job_duration_seconds_count\{job="process"\} [1-9]', text)
    assert re.search(r'channelshift_job_duration_seconds_count\{job="reply"\} [1-9]', text)
    assert re.search(r"channelshift_gateway_store_seconds_count [1-9]", text)
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI (.ci/run installs Debian's prometheus package)")
        pytest.skip("promtool not installed")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_click_redirect_counts_without_personal_data(
    pipeline: Pipeline, client: TestClient[object, object]
) -> None:
    await pipeline.send(
        make_mail(
            subject="Unterlagen", body="Anbei die Nachweise.", attachment=("n.pdf", "application/pdf", b"%PDF-1.4")
        )
    )
    await pipeline.work()
    [reply] = pipeline.relay.received
    text = reply.message.get_body(("plain",)).get_content()
    tokens = re.findall(r"/r/([A-Za-z0-9_-]+)", text)
    assert tokens and "jobcenter.digital" not in text  # links go through the redirect
    for _ in range(2):
        response = await client.get(f"/r/{tokens[0]}", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "https://www.jobcenter.digital/dokumente-hochladen"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    tampered = await client.get(f"/r/{tokens[0][:-2]}xx", allow_redirects=False)
    assert tampered.status == 302 and tampered.headers["Location"] == "https://www.jobcenter.digital"
    await client.app[CLICKS].flush()  # clicks are written in batches off the request path
    summary = await (await client.get("/api/v1/summary", headers=AUTH)).json()
    assert summary["clicks"] == 2 and summary["replies_clicked"] == 1 and summary["click_through"] == 1.0
    assert summary["by_channel"]["upload"]["links_opened"] == 1


async def test_repeat_senders_within_7_and_30_days(pipeline: Pipeline, client: TestClient[object, object]) -> None:
    server, port = await demo_gateway(pipeline)
    # local noon, so that the day asked for below is the day of the mails at any time of day
    start = datetime.combine(datetime.now(BERLIN).date() - timedelta(days=40), time(12), BERLIN)
    await send_at(port, start, "first@example.org", "Neue Adresse", "Ich bin umgezogen.")
    await send_at(port, start, "second@example.org", "Termin", "Ich muss den Termin absagen.")
    await send_at(port, start, "third@example.org", "Frage", "Wann haben Sie geöffnet?")
    await pipeline.work()
    await send_at(port, start + timedelta(days=2), "first@example.org", "Nochmal", "Haben Sie meine Adresse?")
    await send_at(port, start + timedelta(days=20), "second@example.org", "Nochmal", "Ist der Termin abgesagt?")
    await pipeline.work()
    server.close()
    day = start.date().isoformat()
    summary = await (await client.get(f"/api/v1/summary?from={day}&to={day}", headers=AUTH)).json()
    assert summary["replied"] == 3
    assert summary["repeat_7d"] == 1 and summary["repeat_30d"] == 2
    assert summary["by_category"]["change_notice"]["repeat_7d"] == 1
    assert summary["by_category"]["appointment"]["repeat_30d"] == 1
    assert summary["by_category"]["appointment"]["repeat_7d"] == 0
    assert summary["repeat_rate_30d"] == round(2 / 3, 4)


async def test_purge_drops_bodies_of_finished_old_mail_only(pipeline: Pipeline) -> None:
    server, port = await demo_gateway(pipeline)
    old = datetime.now(UTC) - timedelta(days=45)
    await send_at(port, old, "old@example.org", "Frage", "Alt.")
    await send_at(port, datetime.now(UTC), "new@example.org", "Frage", "Neu.")
    server.close()
    assert purge(pipeline.deps.engine, 30).messages == 0  # not processed yet: nothing in flight loses its body
    await pipeline.work()
    assert purge(pipeline.deps.engine, 30, dry_run=True).messages == 1
    assert purge(pipeline.deps.engine, 30).messages == 1
    with Session(pipeline.deps.engine) as session:
        rows = {m.received_at.date() < date.today() - timedelta(days=30): m for m in opened_messages(session)}
    assert rows[True].raw is None and rows[True].mail_from == "" and rows[True].purged_at is not None
    assert rows[False].raw is not None and rows[False].mail_from == "new@example.org"
    assert purge(pipeline.deps.engine, 30).messages == 0


@pytest.fixture
async def outbox_pipeline(tmp_path: Path, clean_database: str, clean_redis: str) -> AsyncIterator[Pipeline]:
    """A pipeline that writes replies to the maildir outbox, where `demo-traffic` finds the links it opens."""
    running = await start_pipeline(tmp_path, clean_database, clean_redis, relay_url=None)
    yield running
    await running.close()
    await running.pool.aclose()
    running.deps.engine.dispose()


IDENTIFIERS = ("continued_benefits", "payment_status", "change_notice", "first_application", "sick_note")


async def test_demo_traffic_and_dashboard_in_chromium(outbox_pipeline: Pipeline, tmp_path: Path) -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    pipeline = outbox_pipeline
    today = datetime.now(BERLIN).date()
    cutover = today - timedelta(days=10)
    rules = pipeline.deps.rules
    rules.current = dataclasses.replace(
        rules.current, settings=rules.current.settings.model_copy(update={"cutover": cutover})
    )
    # headless Chromium cannot send a bearer header
    app = create_app(pipeline.settings_with(admin_token=None), pipeline.deps.engine, pipeline.pool, rules)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    web_port = runner.addresses[0][1]
    pipeline.reconfigure(public_url=f"http://127.0.0.1:{web_port}")  # the demo opens the replies' links here
    server, port = await demo_gateway(pipeline)
    try:
        demo = asyncio.ensure_future(
            asyncio.to_thread(
                run_demo,
                host="127.0.0.1",
                port=port,
                days=21,
                per_day=14,
                cutoff_day=None,
                cutover=cutover,
                concurrency=4,
                click_share=0.3,
                outbox=pipeline.deps.settings.outbox_dir,
                today=today,
            )
        )
        while not demo.done():  # the worker answers while the demo waits for its replies to open them
            await pipeline.work()
            await asyncio.sleep(0.3)
        result = demo.result()
        await pipeline.work()
        await app[CLICKS].flush()  # the demo's clicks are written in batches, off the request path
        server.close()
        assert result["accepted"] == result["sent"] > 0 and result["cutoff"] == cutover.isoformat()
        assert float(str(result["per_day_after"])) < float(str(result["per_day_before"]))
        share = float(str(result["opened_share"]))
        assert 0.27 <= share <= 0.33 and int(str(result["clicks"])) > 20

        client = TestClient(TestServer(app))
        first = result["first_day"]
        async with client:
            volumes = await (await client.get(f"/api/v1/volumes?by=none&from={first}&to={today}")).json()
            compared = await (await client.get("/api/v1/compare")).json()
            english = await (await client.get("/dashboard?lang=en")).text()
        api_per_day = {row["period"]: row["count"] for row in volumes["series"]}
        sent_per_day = {d: n for d, n in dict(result["per_day"]).items() if n}  # type: ignore[call-overload]
        assert api_per_day == sent_per_day  # the API counts exactly what was sent, day by day
        assert compared["after"]["period"]["from"] == cutover.isoformat()
        assert compared["before"]["period"]["days"] == compared["after"]["period"]["days"] == 11
        assert compared["change"]["received_per_working_day"] < -0.2  # the shift across the cut-over shows
        for side in ("before", "after"):
            figures = compared[side]
            groups = [("all", figures)] + [
                (name, f) for by in ("by_category", "by_channel") for name, f in figures[by].items()
            ]
            for name, group in groups:
                if group["click_through"] is None:
                    continue
                assert 0 <= group["click_through"] <= 1, (side, name)
                if group["replies_with_link"] >= 10:  # a handful of replies cannot hit 30 % closely
                    assert abs(group["click_through"] - share) <= 0.05, (side, name, group["click_through"], share)
            emergency = figures["by_category"].get("emergency", {"click_through": None})
            assert emergency["click_through"] is None  # its reply has no link to open: no share, not 0 %
        assert "General question" in english and "Mails per working day" in english

        for width, height, name in ((1280, 2600, "desktop"), (390, 2400, "phone")):
            url = f"http://127.0.0.1:{web_port}/dashboard"
            dom = await chromium_dom(url, tmp_path / f"profile-{name}", width, height, tmp_path / f"{name}.png")
            drawn = re.search(r'data-charts-drawn="(\d+)"', dom)
            expected = re.search(r'data-charts-expected="(\d+)"', dom)
            assert drawn and expected and drawn.group(1) == expected.group(1) == "5", name
            max_share = re.search(r'data-max-share="([0-9.]+)"', dom)
            assert max_share and 0 < float(max_share.group(1)) <= 100, name
            shares = [float(v) for v in re.findall(r'data-kind="share" data-value="([-0-9.e]+)"', dom)]
            changes = [float(v) for v in re.findall(r'data-kind="change" data-value="([-0-9.e]+)"', dom)]
            assert len(shares) > 10 and all(0 <= v <= 1 for v in shares), name
            assert changes and all(v >= -1 for v in changes), name
            click_card = re.findall(r'class="value" data-kind="share" data-value="([0-9.]+)"', dom)[-1]
            assert abs(float(click_card) - share) <= 0.05
            assert "Dokumenten-Upload" in dom and "Unterlagen" in dom and "Übersicht aller Wege" in dom
            assert not [word for word in IDENTIFIERS if word in dom], name
            assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    finally:
        await runner.cleanup()


async def test_empty_dashboard_says_how_to_send_a_first_mail(client: TestClient[object, object]) -> None:
    page = await (await client.get("/dashboard", headers=AUTH)).text()
    assert 'id="empty-state"' in page and "channelshift demo-traffic --days 60" in page
    assert "info@jobcenter-musterstadt.example" in page and "<canvas" not in page


def test_cli_purge_dry_run(tmp_path: Path) -> None:
    env = {
        **clean_env(),
        "CHANNELSHIFT_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
    }
    subprocess.run([sys.executable, "-m", "services", "db", "upgrade"], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "services", "purge", "--dry-run"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "would purge 0 message bodies older than 30 days" in result.stdout
