"""`channelshift preview`: the worker's verdict and its exact reply for a mail file, without sending or storing."""

from __future__ import annotations

import csv
import email
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from email.policy import default as default_policy
from pathlib import Path

from services.config import PROJECT_ROOT
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules
from services.store.queries import opened_messages
from services.tools.explain import explain
from services.tools.preview import format_preview, preview
from tests.support import SERVED, Pipeline, make_mail

RULESET = load_rules(
    PROJECT_ROOT / "routing_rules",
    PROJECT_ROOT / "templates",
    cache_dir=Path(os.environ["CHANNELSHIFT_MODEL_CACHE_DIR"]),
)
RENDERER = ReplyRenderer(PROJECT_ROOT / "templates")
TUESDAY_1930 = datetime(2026, 12, 1, 18, 30, tzinfo=UTC)  # 19:30 in Berlin
_SKIP = re.compile(r"(LICENSE|COPYING|SOURCE_COMMIT|README|INDEX)|\.(ref|md|rst|json)$")


def _text(message: email.message.Message) -> str:
    parsed = email.message_from_bytes(message.as_bytes(), policy=default_policy)
    return str(parsed.get_body(("plain",)).get_content())  # type: ignore[union-attr]


def test_every_citizen_mail_previews_with_the_verdict_explain_gives(corpus_dir: Path) -> None:
    directory = corpus_dir / "citizen-mails"
    with open(directory / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 130
    replies = 0
    for row in rows:
        raw = (directory / row["file"]).read_bytes()
        result = preview(RULESET, RENDERER, raw, received_at=TUESDAY_1930, hostname="gateway.test")
        explained = explain(RULESET, raw, received_at=TUESDAY_1930)
        verdict = result.verdict
        assert (verdict.category, verdict.channel, verdict.template, verdict.suppressed, verdict.priority) == (
            explained["category"],
            explained["channel"],
            explained["template"],
            explained["suppressed"],
            explained["priority"],
        ), row["file"]
        shown = format_preview(result, "Europe/Berlin")
        assert f"category:   {verdict.category}\n" in shown and "received:   2026-12-01 19:30" in shown
        if row["reply_expected"] == "yes":
            assert result.reply is not None and result.reply_error is None, row["file"]
            assert result.reply["Auto-Submitted"] == "auto-replied"
            assert "Ihre E-Mail ist am 01.12.2026 um 19:30 Uhr" in _text(result.reply)
            assert "--- part 1: text/plain" in shown and "Auto-Submitted: auto-replied" in shown
            replies += 1
        else:
            assert result.reply is None, row["file"]
            assert "Auto-Submitted" not in shown
            if verdict.suppressed is None:  # partner mail: no reply template, nothing suppressed
                assert verdict.template is None and "reply:      no (no reply template for this category)" in shown
            else:
                assert f"reply:      no - suppressed: {verdict.suppressed}\n" in shown
    assert replies > 100


def test_every_thirdparty_mail_previews_as_suppressed_without_a_reply(corpus_dir: Path) -> None:
    files = sorted(p for p in (corpus_dir / "thirdparty").rglob("*") if p.is_file() and not _SKIP.search(p.name))
    assert len(files) > 1000
    reasons: set[str] = set()
    for path in files:
        result = preview(RULESET, RENDERER, path.read_bytes(), received_at=TUESDAY_1930, hostname="gateway.test")
        assert result.reply is None and result.verdict.suppressed is not None, path.name
        shown = format_preview(result, "Europe/Berlin")
        assert f"reply:      no - suppressed: {result.verdict.suppressed}" in shown
        reasons.add(result.verdict.suppressed)
    # bounces and auto-replies are recognised as such, not only as mail nobody addressed to us
    assert {"null-sender", "automated-sender"} & reasons or any("auto" in r for r in reasons), reasons


def test_emergency_preview_at_night_shows_the_after_hours_reply() -> None:
    raw = make_mail(subject="Hilfe", body="Wir haben nichts mehr zu essen und kein Geld für Lebensmittel.")
    result = preview(RULESET, RENDERER, raw, received_at=TUESDAY_1930, hostname="gateway.test")
    assert result.verdict.category == "emergency" and result.verdict.priority == "urgent"
    assert result.reply is not None
    text = _text(result.reply)
    assert "Unser Büro ist jetzt geschlossen" in text and "Mittwoch, 2. Dezember 2026, 08:00 Uhr" in text
    with_html = format_preview(result, "Europe/Berlin", html=True)
    assert "--- part 2: text/html" in with_html and "<!DOCTYPE html>" in with_html
    assert "<!DOCTYPE html>" not in format_preview(result, "Europe/Berlin")
    exact = format_preview(result, "Europe/Berlin", raw=True)
    assert exact.endswith(result.reply.as_bytes().decode("ascii")[-200:])


def _normalized(text: str, message_id: str) -> str:
    return text.replace(message_id[:12], "REFERENCE")


async def test_preview_shows_the_reply_the_worker_sends(tmp_path: Path, clean_database: str, clean_redis: str) -> None:
    from sqlmodel import Session

    from tests.support import start_pipeline

    pipeline: Pipeline = await start_pipeline(tmp_path, clean_database, clean_redis, track_clicks=False)
    try:
        raw = make_mail(subject="Termin", body="Ich kann meinen Termin morgen leider nicht wahrnehmen.")
        await pipeline.send(raw, sender="citizen@example.org")
        await pipeline.work()
        [sent] = pipeline.relay.received
        with Session(pipeline.deps.engine) as session:
            [stored] = opened_messages(session)
        result = preview(
            pipeline.deps.rules.current,
            RENDERER,
            stored.raw or b"",
            received_at=stored.received_at,
            hostname=pipeline.settings.hostname,
            mail_from="citizen@example.org",
            rcpt_to=[SERVED],
        )
    finally:
        await pipeline.close()
        await pipeline.pool.aclose()
        pipeline.deps.engine.dispose()
    assert result.reply is not None
    worker_reply = sent.message
    ours = email.message_from_bytes(result.reply.as_bytes(), policy=default_policy)
    for header in ("From", "To", "Subject", "In-Reply-To", "References", "Auto-Submitted", "Content-Language"):
        assert ours[header] == worker_reply[header], header
    preview_id = result.reply["Message-ID"].split(".", 1)[1].split("@")[0]
    worker_text = worker_reply.get_body(("plain",)).get_content()
    assert _normalized(_text(result.reply), preview_id) == _normalized(worker_text, stored.id)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", "preview", *args], capture_output=True, text=True, check=False, timeout=300
    )


def test_cli_preview_prints_verdict_and_reply(corpus_dir: Path) -> None:
    result = _cli(str(corpus_dir / "citizen-mails" / "001-documents.eml"), "--at", "2026-12-01T10:00")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "category:   documents" in result.stdout and "received:   2026-12-01 10:00 Europe/Berlin" in result.stdout
    assert "Content-Language: de" in result.stdout and "--- part 1: text/plain" in result.stdout


def test_cli_preview_errors_are_one_line(tmp_path: Path) -> None:
    for args, fragment in [
        ((str(tmp_path / "nope.eml"),), "nope.eml"),
        ((str(tmp_path),), str(tmp_path)),
        ((str(PROJECT_ROOT / "routing_rules" / "tests" / "001-documents.eml"), "--at", "tuesday"), "--at"),
    ]:
        result = _cli(*args)
        assert result.returncode == 1, args
        assert result.stdout == "" and fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
